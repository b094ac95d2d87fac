"""Quality assurance: what an engineer looks at before anything is printed.

- ``images``: the QA images of a run (slices through the resection with the
  labels and plane traces, 3D views of host, implant and planes);
- ``render``: CT slices in a bone window with the labels over them;
- ``view3d``: shaded 3D views of meshes on the CPU (no display, no OpenGL);
- ``annotate``: orientation letters, scale bar, caption, legend;
- ``report_html``: the self-contained report page and the run's warnings.
"""

from .images import QA_IMAGES, TEMPLATE_ATTRIBUTE, cut_bone_density, implant_source, qa_images, structure_labels
from .report_html import report_html, report_warnings

__all__ = ["QA_IMAGES", "TEMPLATE_ATTRIBUTE", "cut_bone_density", "implant_source", "qa_images",
           "structure_labels", "report_html", "report_warnings"]
