"""Quality assurance: what an engineer looks at before anything is printed.

- ``images``: the QA images of a run (slices through the resection with the
  labels and plane traces, 3D views of host, implant and planes);
- ``render``: CT slices in a bone window with the labels over them;
- ``view3d``: shaded 3D views of meshes on the CPU (no display, no OpenGL);
- ``scene``: the named, coloured meshes of the interactive view (planes as discs);
- ``interactive``: the interactive 3D view of report.html (plotly, embedded whole);
- ``annotate``: orientation letters, scale bar, caption, legend;
- ``report_html``: the self-contained report page and the run's warnings.
"""

from .images import QA_IMAGES, TEMPLATE_ATTRIBUTE, cut_bone_density, implant_source, qa_images, structure_labels
from .interactive import interactive_view
from .report_html import report_html, report_warnings
from .scene import scene_objects

__all__ = ["QA_IMAGES", "TEMPLATE_ATTRIBUTE", "cut_bone_density", "implant_source", "qa_images",
           "structure_labels", "report_html", "report_warnings", "interactive_view", "scene_objects"]
