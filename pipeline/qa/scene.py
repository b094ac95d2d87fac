"""What the interactive 3D view shows: a list of named, coloured meshes in LPS mm.

One entry per object a user may want to turn, hide or identify: the host
bone, the implant, every bone the plan does not cut (by name), the cut
planes as translucent discs, and with ``implant.source = "mirrored"`` the
mirrored template (hidden at first: it overlaps the implant; a click on its
legend entry shows it). Without planes, every labelled bone by name. A run
that makes more objects (fixation, guides) adds entries to
:func:`scene_objects`; the view takes any list of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import trimesh

from ..config import Config, Plane
from .images import (FIXED_RGB, GUIDE_RGB, HOST_RGB, IMPLANT_RGB, KWIRE_RGB, PLANE_MARGIN_MM, PLANE_OPACITY,
                     PLANE_RGB, SCREW_RGB, TEMPLATE_ATTRIBUTE, TEMPLATE_RGB, implant_source)

if TYPE_CHECKING:
    from ..run import MeshResult

# Bones shown for context (or, without planes, every bone): light, distinct shades.
BONE_RGB = {"hip_left": (226, 212, 172), "hip_right": (170, 216, 216), "sacrum": (228, 186, 186),
            "femur_left": (172, 212, 182), "femur_right": (168, 200, 228), "lumbar": (204, 184, 228)}
OTHER_RGB = (200, 200, 200)
TEMPLATE_OPACITY = 0.6
# Segments of a plane disc's rim: at 72 the rim of a 100 mm disc is within 0.1 mm of a circle.
DISC_SEGMENTS = 72


@dataclass(frozen=True, eq=False)
class SceneObject:
    """A mesh of the view: its legend entry and hover text, colour and opacity.
    ``visible=False`` starts it hidden (its legend entry shows it)."""

    name: str
    mesh: trimesh.Trimesh  # LPS mm
    rgb: tuple[int, int, int]
    opacity: float = 1.0
    visible: bool = True


def scene_objects(result: MeshResult, config: Config) -> list[SceneObject]:
    """The objects of a run, in legend order."""
    if result.implant is None:
        return [SceneObject(name, mesh, BONE_RGB.get(name, OTHER_RGB)) for name, mesh in result.label_meshes.items()]
    objects = [SceneObject("host", result.host, HOST_RGB), SceneObject("implant", result.implant, IMPLANT_RGB)]
    fixation = getattr(result, "fixation", None)
    if fixation is not None and fixation.implant_fixed is not None:
        # The fixed implant holds the implant: shown instead of it, the implant alone a click away.
        objects[1] = SceneObject("implant", result.implant, IMPLANT_RGB, visible=False)
        objects.append(SceneObject("implant with flanges", fixation.implant_fixed, FIXED_RGB))
    if fixation is not None:
        if fixation.screws_mesh is not None:
            objects.append(SceneObject("screws", fixation.screws_mesh, SCREW_RGB))
    objects += [SceneObject(name, mesh, BONE_RGB.get(name, OTHER_RGB)) for name, mesh in result.context.items()]
    template = getattr(result, TEMPLATE_ATTRIBUTE, None)
    if template is not None and implant_source(config) == "mirrored":
        objects.append(SceneObject("mirrored template", template, TEMPLATE_RGB, TEMPLATE_OPACITY, visible=False))
    objects += guide_objects(result, config)
    clearance_mm = float(getattr(getattr(config, "implant", None), "clearance_mm", 0.0))
    for i, plane in enumerate(config.resection.planes):
        disc = plane_disc(plane.cut_plane(), result.implant, clearance_mm)
        objects.append(SceneObject(f"plane {plane.name or i + 1}", disc, PLANE_RGB[i % len(PLANE_RGB)], PLANE_OPACITY))
    return objects


def guide_objects(result: MeshResult, config: Config) -> list[SceneObject]:
    """Each cutting guide, and its K-wires, by plane name."""
    from ..design.guides import kwire_mesh

    objects = []
    for guide in getattr(result, "guides", ()):
        objects.append(SceneObject(f"guide {guide.plane_name}", guide.mesh, GUIDE_RGB))
        wires = kwire_mesh(guide, config.guides.kwire_diameter_mm)
        if wires is not None:
            objects.append(SceneObject(f"K-wires {guide.plane_name}", wires, KWIRE_RGB))
    return objects


def plane_disc(plane: Plane, implant: trimesh.Trimesh, clearance_mm: float = 0.0) -> trimesh.Trimesh:
    """A flat disc in ``plane`` around the implant's contact face on it (the
    implant's vertices within the clearance of the plane), reaching
    ``PLANE_MARGIN_MM`` beyond the face's farthest point."""
    vertices = np.asarray(implant.vertices, dtype=np.float64)
    near = vertices[np.abs(plane.signed_distance_mm(vertices)) <= clearance_mm + 1e-6]
    if len(near) == 0:  # the plane does not touch the implant: around its projection
        near = vertices
    n = np.asarray(plane.normal_lps)
    u, v = plane.in_plane_axes()
    on_plane = near - plane.signed_distance_mm(near)[:, None] * n
    a, b = on_plane @ u, on_plane @ v
    centre_uv = np.array([(a.min() + a.max()) / 2, (b.min() + b.max()) / 2])
    radius_mm = float(np.hypot(a - centre_uv[0], b - centre_uv[1]).max()) + PLANE_MARGIN_MM
    centre = centre_uv[0] * u + centre_uv[1] * v + plane.offset_mm * n
    angle = np.linspace(0.0, 2.0 * np.pi, DISC_SEGMENTS, endpoint=False)
    rim = centre + radius_mm * (np.cos(angle)[:, None] * u + np.sin(angle)[:, None] * v)
    fan = np.stack([np.zeros(DISC_SEGMENTS, int), np.arange(1, DISC_SEGMENTS + 1),
                    np.roll(np.arange(1, DISC_SEGMENTS + 1), -1)], axis=1)
    return trimesh.Trimesh(np.vstack([centre, rim]), fan, process=False)
