"""QA images of a mesh run: what an engineer looks at before anything is printed.

Slices (axial, coronal, sagittal) through the resection region: the CT in a
bone window, the bone labels as a translucent overlay, the fitted pelvis
shape model's outline, each resection plane as its trace line and the
removed bone (the implant) outlined. 3D views
(anterior, lateral and oblique from the affected side, superior): the host
bone in a neutral colour, the implant in a distinct one, the cut planes as
translucent patches; with ``implant.source = "mirrored"``, one more view with
the mirrored template over the affected side.

Pure: MeshResult + Volume + Config in, RGB arrays out; the CLI encodes and
the exporter writes them. Every image carries orientation letters and a
millimetre scale bar, and no patient identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import trimesh
from scipy import ndimage

from .annotate import annotate
from ..config import Config, Plane
from ..bones import LABEL_NAMES
from ..parallel import parallel
from ..segment import PelvisFit
from ..segment.voxelise import inside_mesh
from .render import SLICE_AXES, overlay, sample_slice, slice_points
from .view3d import camera_along, camera_for, render
from ..volume import Volume

if TYPE_CHECKING:  # run imports the whole chain; the QA only reads its result
    from ..run import MeshResult

# Every image a run may write, as qa/<name>.png (the exporter clears the others).
QA_IMAGES = ("slice_axial", "slice_coronal", "slice_sagittal", "view_anterior", "view_lateral",
             "view_superior", "view_oblique", "view_mirrored", "view_fixation", "view_fixation_posterior",
             *(f"slice_screw_{k}" for k in range(1, 5)))
# Fixation views: the fixed implant and the screws solid, the host translucent over them.
FIXED_RGB = (236, 150, 60)
SCREW_RGB = (40, 70, 160)
HOST_OVERLAY_OPACITY = 0.4
IMPLANT_OVERLAY_OPACITY = 0.4
SCREW_OPACITY = 0.85
# Slices along an iliosacral screw reach this far beyond it (mm), and are
# SLICE_LONGEST_PX wide (a 76 mm screw's was 272 pixels at 0.5 mm, its
# caption cut off at the edge).
SCREW_SLICE_MARGIN_MM = 30.0
# The mirrored template mesh (LPS mm), when the run built one: read from this
# MeshResult attribute, so the QA shows it as soon as the run provides it.
TEMPLATE_ATTRIBUTE = "mirrored_template"
SLICE_LONGEST_PX = 512
# The shorter side of a slice image is at least this many pixels (widened
# with black beyond the scan): a 40 mm slab of slices seen from the side
# made a 512 x 40 image whose caption, letters and scale bar overlapped.
SLICE_SHORTEST_PX = 200
# 3D views are square; their cost grows with the triangles, not the pixels
# (CT meshes have sub-pixel triangles): ~0.3 s per view on a 760k-triangle bone.
VIEW_PX = 400
HOST_RGB, CONTEXT_RGB = (214, 204, 180), (236, 236, 232)
IMPLANT_RGB, TEMPLATE_RGB = (235, 120, 30), (60, 170, 90)
MODEL_RGB = (255, 255, 255)
# Cutting guides (a printed resin blue) and their K-wires (steel).
GUIDE_RGB, KWIRE_RGB = (70, 120, 215), (120, 120, 130)
# A guide's view: bone within this distance (mm) of the guide is drawn, seen
# from the approach tilted this way along the cut line and to the host side.
GUIDE_VIEW_REACH_MM = 30.0
GUIDE_VIEW_TILT = (0.55, -0.35)
# In the view along the cut line the bone is drawn this opaque over the guide.
GUIDE_SIDE_BONE_OPACITY = 0.45
PLANE_RGB = ((255, 230, 0), (0, 220, 255), (255, 60, 200), (120, 255, 80))
PLANE_OPACITY = 0.35
# A plane patch in the 3D views reaches this far beyond the implant's contact face (mm).
PLANE_MARGIN_MM = 15.0
PLANE_PATCH_CELLS = 8
# Bone within this distance (mm) of a cut face, on the side that stays, is
# where the implant is fixed; its median HU below LOW_DENSITY_HU is flagged.
# A screening number only: the band holds cortex as well as cancellous bone
# and filled marrow (healthy cancellous bone is ~200-400 HU; below ~110 HU
# in a vertebral body suggests osteoporosis), so the flag is set low.
CUT_BAND_MM = 5.0
LOW_DENSITY_HU = 150.0
# Implant vertices this close to a plane (mm) belong to its contact face (cuts are exact to ~1e-12 mm).
ON_PLANE_MM = 1e-6


@dataclass(frozen=True, eq=False)
class QAImage:
    name: str        # one of QA_IMAGES
    title: str       # what it shows, for the report page
    rgb: np.ndarray  # (H, W, 3) uint8


def qa_images(volume: Volume, result: MeshResult, config: Config) -> list[QAImage]:
    """All QA images of a run, in display order."""
    planes = config.resection.planes
    centre = resection_centre(result)
    removed_labels = structure_labels(config)
    template = getattr(result, TEMPLATE_ATTRIBUTE, None) if implant_source(config) == "mirrored" else None
    fit = getattr(result, "pelvis_fit", None)
    calls = [lambda o=o: slice_image(volume, result.labels, o, centre, planes, removed_labels, fit)
             for o in SLICE_AXES]
    calls += [lambda v=v: view_image(result, planes, v) for v in ("anterior", "lateral", "superior", "oblique")]
    if template is not None:
        calls.append(lambda: view_image(result, planes, "mirrored", template=template))
    kwire_mm = config.guides.kwire_diameter_mm if hasattr(config, "guides") else 2.0
    calls += [lambda g=g: guide_image(result, g, kwire_mm) for g in getattr(result, "guides", ())]
    fixation = getattr(result, "fixation", None)
    if fixation is not None:
        calls += [lambda v=v: fixation_view(result, v) for v in ("oblique", "posterior")]
        screws = [s for s in fixation.screws if s.kind == "iliosacral"][:4]
        calls += [lambda k=k, s=s: screw_slice(volume, result.labels, s, k) for k, s in enumerate(screws, 1)]
    return parallel(*calls)


def fixation_view(result: MeshResult, view: str) -> QAImage:
    """The host bone, the implant with its flanges and the screws, each
    drawn shaded and translucent, in that order (the screws nearly opaque,
    over both): the screws show where they run through the flanges and in
    the bone. Framed on the host and the implant."""
    side = affected_side(result)
    camera_view = {"oblique": f"oblique_{side}"}.get(view, view)
    fixation = result.fixation
    fixed = fixation.implant_fixed
    implant = (fixed, FIXED_RGB, "implant with flanges") if fixed is not None else (result.implant, IMPLANT_RGB,
                                                                                     "implant")
    see_through = [(result.host, HOST_RGB, HOST_OVERLAY_OPACITY), (implant[0], implant[1], IMPLANT_OVERLAY_OPACITY)]
    legend = []
    if fixation.screws_mesh is not None:   # last, nearly opaque: over the bone and the flange they run in
        see_through.append((fixation.screws_mesh, SCREW_RGB, SCREW_OPACITY))
        legend.append(("screws", SCREW_RGB))
    legend += [(f"{implant[2]} (translucent)", implant[1]), ("host (translucent)", HOST_RGB)]
    bounds = np.vstack([np.asarray(result.host.bounds), np.asarray(implant[0].bounds)])
    camera = camera_for(camera_view, np.array([bounds.min(axis=0), bounds.max(axis=0)]), (VIEW_PX, VIEW_PX))
    rgb = render([], camera, see_through=see_through)
    rgb = annotate(rgb, right_lps=camera.right, up_lps=camera.up, mm_per_pixel=camera.mm_per_pixel,
                   caption=f"3D {view} ({side}): fixation", legend=legend)
    name = "view_fixation" if view == "oblique" else f"view_fixation_{view}"
    return QAImage(name, f"3D {view} view: screws through the implant with flanges and the host, both translucent",
                   rgb)


def screw_slice(volume: Volume, labels: np.ndarray, screw, number: int) -> QAImage:
    """The CT in the plane through an iliosacral screw's axis and the
    horizontal across it (an axial slice tilted to hold the screw), with
    the labels and the screw's outline."""
    u = screw.direction_lps
    across = np.cross([0.0, 0.0, 1.0], u)
    across = across / np.linalg.norm(across) if np.linalg.norm(across) > 1e-6 else np.array([0.0, 1.0, 0.0])
    # Radiological habit: patient left on the image right, so "right" follows +L where it can.
    right = u if u[0] >= 0 else -u
    down = np.cross(right, across)
    down = across if down[2] > 0 else -across  # keep the image's up pointing anterior-ish
    length = float(np.linalg.norm(screw.tip_lps_mm - screw.head_lps_mm))
    centre = (screw.head_lps_mm + screw.tip_lps_mm) / 2
    half_w = length / 2 + SCREW_SLICE_MARGIN_MM
    pixel_mm = 2 * half_w / SLICE_LONGEST_PX
    cols = -half_w + pixel_mm * (np.arange(SLICE_LONGEST_PX) + 0.5)
    rows = np.arange(-SCREW_SLICE_MARGIN_MM * 1.5, SCREW_SLICE_MARGIN_MM * 1.5, pixel_mm)
    points = centre + cols[None, :, None] * right + rows[:, None, None] * down
    hu, lab = sample_slice(volume, labels, points)
    rgb = overlay(hu, lab)
    rel = points - screw.head_lps_mm
    t = np.clip(rel @ u, 0.0, length)
    off = np.linalg.norm(rel - t[..., None] * u, axis=-1)
    rgb[_thick(_edges(off <= screw.diameter_mm / 2), 1)] = SCREW_RGB
    caption = (f"iliosacral screw {number}: {screw.diameter_mm:g} x {screw.length_mm:.0f} mm, "
               f"{screw.length_in_bone_mm:.0f} mm in bone, margin {screw.min_margin_mm:.1f} mm")
    rgb = annotate(rgb, right_lps=right, up_lps=-down, mm_per_pixel=pixel_mm, caption=caption,
                   legend=[("screw", SCREW_RGB)])
    return QAImage(f"slice_screw_{number}", f"Slice along iliosacral screw {number} (the plane of its axis "
                   "and the horizontal across it): labels and the screw's outline", rgb)


def structure_labels(config: Config) -> list[int]:
    """Label values of the bones the plan may cut (``resection.structures``)."""
    return [k for k, name in LABEL_NAMES.items() if name in config.resection.structures]


def implant_source(config: Config) -> str:
    """``implant.source`` ("resected" for configs without an implant section)."""
    return getattr(getattr(config, "implant", None), "source", "resected")


def resection_centre(result: MeshResult) -> np.ndarray:
    """LPS point the slices pass through: the implant's bounding-box centre
    (the bone's when nothing is cut)."""
    mesh = result.implant if result.implant is not None else result.bone
    return np.asarray(mesh.bounds, dtype=np.float64).mean(axis=0)


def slice_image(volume: Volume, labels: np.ndarray, orientation: str, centre_lps_mm: np.ndarray,
                planes: tuple[Plane, ...], removed_labels: list[int], fit: PelvisFit | None = None) -> QAImage:
    corners = volume.index_to_lps(np.array(np.meshgrid(*[(0, n - 1) for n in volume.shape],
                                                       indexing="ij")).reshape(3, -1).T)
    right, up = (np.asarray(v) for v in SLICE_AXES[orientation])
    pixel_mm = max(np.ptp(corners @ right), np.ptp(corners @ up)) / (SLICE_LONGEST_PX - 1)
    points = slice_points(volume, orientation, centre_lps_mm, pixel_mm, SLICE_SHORTEST_PX)
    hu, lab = sample_slice(volume, labels, points)
    rgb = overlay(hu, lab)
    if fit is not None:  # the shape model's outline: the prior that decided membership
        for bone in fit.faces:
            rgb[_edges(model_section(fit, bone, points))] = MODEL_RGB
    removed = np.isin(lab, removed_labels) if planes else np.zeros(lab.shape, bool)
    for i, plane in enumerate(planes):
        side = plane.signed_distance_mm(points.reshape(-1, 3)).reshape(lab.shape) > 0
        removed &= side
        rgb[_thick(_edges(side), 1)] = PLANE_RGB[i % len(PLANE_RGB)]
    rgb[_edges(removed, px=2)] = IMPLANT_RGB
    axis = int(np.argmax(np.abs(np.cross(right, up))))
    caption = f"{orientation} {'xyz'[axis]} = {centre_lps_mm[axis]:.1f} mm (LPS)"
    legend = [(p.name or f"plane {i + 1}", PLANE_RGB[i % len(PLANE_RGB)]) for i, p in enumerate(planes)]
    if planes:
        legend.append(("removed bone", IMPLANT_RGB))
    if fit is not None:
        legend.append(("shape model", MODEL_RGB))
    rgb = annotate(rgb, right_lps=right, up_lps=up, mm_per_pixel=pixel_mm, caption=caption, legend=legend)
    return QAImage(f"slice_{orientation}", f"{orientation.capitalize()} slice through the resection region: "
                   "bone labels, fitted shape model outline, plane traces, removed bone outlined", rgb)


def model_section(fit: PelvisFit, bone: str, points_lps_mm: np.ndarray) -> np.ndarray:
    """bool (H, W): the display pixels (``points_lps_mm``, a planar grid)
    inside one bone of the fitted shape model.

    The rays that count crossings run down the image's columns, in the
    plane: only the triangles the plane cuts meet them (run along the
    plane's normal, every triangle of the bone did: 7 times the time, the
    same pixels)."""
    origin = points_lps_mm[0, 0]
    down, right = points_lps_mm[1, 0] - origin, points_lps_mm[0, 1] - origin
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 2], affine[:3, 3] = down, right, origin
    affine[:3, 1] = np.cross(down, right) / np.linalg.norm(right)  # along the plane's normal
    box = (slice(0, points_lps_mm.shape[0]), slice(0, 1), slice(0, points_lps_mm.shape[1]))
    return inside_mesh(fit.vertices_lps_mm, fit.faces[bone], affine, box, ray_axis=0)[:, 0]


def view_image(result: MeshResult, planes: tuple[Plane, ...], view: str,
               template: trimesh.Trimesh | None = None) -> QAImage:
    """A named 3D view: ``"anterior"``, ``"superior"``, ``"lateral"`` and
    ``"oblique"`` (from the affected side), or ``"mirrored"`` (the template
    over the affected side, seen obliquely)."""
    side = affected_side(result)
    camera_view = {"lateral": side, "oblique": f"oblique_{side}", "mirrored": f"oblique_{side}"}.get(view, view)
    camera = camera_for(camera_view, np.asarray(result.bone.bounds), (VIEW_PX, VIEW_PX))
    if result.implant is None:
        parts = [(m, HOST_RGB) for m in result.label_meshes.values()]
        legend = [("bone", HOST_RGB)]
    else:
        parts = [(result.host, HOST_RGB)] + [(m, CONTEXT_RGB) for m in result.context.values()]
        legend = [("host", HOST_RGB)]
        if view != "mirrored":
            parts.append((result.implant, IMPLANT_RGB))
            legend.append(("implant", IMPLANT_RGB))
    if template is not None:
        parts.append((template, TEMPLATE_RGB))
        legend.append(("mirrored template", TEMPLATE_RGB))
    overlays = [(plane_patch(p, result), PLANE_RGB[i % len(PLANE_RGB)], PLANE_OPACITY)
                for i, p in enumerate(planes) if result.implant is not None]
    legend += [(p.name or f"plane {i + 1}", PLANE_RGB[i % len(PLANE_RGB)]) for i, p in enumerate(planes)]
    rgb = render(parts, camera, overlays)
    rgb = annotate(rgb, right_lps=camera.right, up_lps=camera.up, mm_per_pixel=camera.mm_per_pixel,
                   caption=f"3D {view}" + (f" ({side})" if view in ("lateral", "oblique", "mirrored") else ""),
                   legend=legend)
    what = {"mirrored": "mirrored template over the affected side"}.get(view, "host, implant and cut planes")
    return QAImage(f"view_{view}", f"3D {view} view: {what}", rgb)


def guide_image(result: MeshResult, guide, kwire_diameter_mm: float) -> QAImage:
    """A cutting guide seated on the intact bone (host and implant), its
    K-wires in place, in two views side by side: from its approach tilted
    along the cut line and towards the host side, so the slot and the seat's
    edge both show; and along the cut line, the approach up and the bone
    see-through, so how deep the guide reaches along the approach and where
    it stands on the bone show too."""
    from ..config import guide_stem
    from ..design.guides import kwire_mesh

    a, n, z = (guide.frame.axes[:, i] for i in range(3))
    lo, hi = np.asarray(guide.mesh.bounds) + [[-GUIDE_VIEW_REACH_MM], [GUIDE_VIEW_REACH_MM]]
    near = [(_crop(m, lo, hi), rgb) for m, rgb in [(result.host, HOST_RGB), (result.implant, IMPLANT_RGB)]
            + [(m, CONTEXT_RGB) for m in result.context.values()]]
    bone = [(m, rgb) for m, rgb in near if m is not None]
    own = [(guide.mesh, GUIDE_RGB)]
    wires = kwire_mesh(guide, kwire_diameter_mm)
    if wires is not None:
        own.append((wires, KWIRE_RGB))
    legend = [("host", HOST_RGB), ("implant", IMPLANT_RGB), ("guide", GUIDE_RGB), ("K-wires", KWIRE_RGB)]
    name = guide.plane_name
    toward = z + GUIDE_VIEW_TILT[0] * a + GUIDE_VIEW_TILT[1] * n
    superior = np.array([0.0, 0.0, 1.0])
    up = superior if abs(float(superior @ toward) / np.linalg.norm(toward)) < 0.9 else np.array([0.0, -1.0, 0.0])
    box = np.array([lo, hi])
    front = camera_along(toward, up, box, (VIEW_PX, VIEW_PX))
    along = camera_along(a, z, box, (VIEW_PX, VIEW_PX))
    seated, side = parallel(lambda: render(bone + own, front),
                            lambda: render(own, along,
                                           see_through=[(m, rgb, GUIDE_SIDE_BONE_OPACITY) for m, rgb in bone]))
    panels = [annotate(rgb, right_lps=camera.right, up_lps=camera.up, mm_per_pixel=camera.mm_per_pixel,
                       caption=caption, legend=legend)
              for rgb, camera, caption in ((seated, front, f"guide {name}"), (side, along, "along the cut line"))]
    return QAImage(f"guide_{guide_stem(name)}", f"Cutting guide {name} seated on the bone with its K-wires: seen "
                   "from its approach (tilted along the cut line, towards the host side) and along the cut line "
                   "(the approach up, the bone see-through)", np.concatenate(panels, axis=1))


def _crop(mesh: trimesh.Trimesh, lo: np.ndarray, hi: np.ndarray) -> trimesh.Trimesh | None:
    """The faces of ``mesh`` with a corner inside the box (for a close view only)."""
    v = np.asarray(mesh.vertices)
    inside = np.all((v >= lo) & (v <= hi), axis=1)
    faces = np.asarray(mesh.faces)[inside[np.asarray(mesh.faces)].any(axis=1)]
    return trimesh.Trimesh(v, faces, process=False) if len(faces) else None


def affected_side(result: MeshResult) -> str:
    """``"left"`` or ``"right"``: the patient side the implant lies on (left without one)."""
    if result.implant is None:
        return "left"
    return "left" if float(np.asarray(result.implant.bounds).mean(axis=0)[0]) >= 0 else "right"


def plane_patch(plane: Plane, result: MeshResult) -> np.ndarray:
    """Triangles (n, 3, 3), LPS: the rectangle of the plane around the
    implant's contact face on it, ``PLANE_MARGIN_MM`` wider on each side."""
    n = np.asarray(plane.normal_lps)
    u, v = plane.in_plane_axes()
    vertices = np.asarray(result.implant.vertices)
    on_plane = vertices[np.abs(plane.signed_distance_mm(vertices)) < ON_PLANE_MM]
    if len(on_plane) == 0:  # the plane does not touch the implant: around its projection
        on_plane = vertices
    origin = np.asarray(plane.point_lps_mm) - plane.signed_distance_mm(np.asarray(plane.point_lps_mm)[None])[0] * n
    a, b = (on_plane - origin) @ u, (on_plane - origin) @ v
    # Cells small enough to be sampled without holes (view3d caps samples per triangle edge).
    sa = np.linspace(a.min() - PLANE_MARGIN_MM, a.max() + PLANE_MARGIN_MM, PLANE_PATCH_CELLS + 1)
    sb = np.linspace(b.min() - PLANE_MARGIN_MM, b.max() + PLANE_MARGIN_MM, PLANE_PATCH_CELLS + 1)
    grid = origin + sa[:, None, None] * u + sb[None, :, None] * v
    p, q, r, t = grid[:-1, :-1], grid[1:, :-1], grid[1:, 1:], grid[:-1, 1:]
    return np.concatenate([np.stack([p, q, r], axis=2), np.stack([p, r, t], axis=2)]).reshape(-1, 3, 3)


def cut_bone_density(volume: Volume, labels: np.ndarray, planes: tuple[Plane, ...],
                     structure_labels: list[int], implant: trimesh.Trimesh) -> list[dict]:
    """Per plane: the median HU of the bone that stays, within ``CUT_BAND_MM``
    of the cut face (where the implant is fixed), and a ``low_density`` flag
    below ``LOW_DENSITY_HU``. Only the implant's box (plus the band) is read."""
    lo, hi = np.asarray(implant.bounds) + [[-CUT_BAND_MM], [CUT_BAND_MM]]
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    index = volume.lps_to_index(corners)
    start = np.clip(np.floor(index.min(axis=0)).astype(int), 0, volume.shape)
    stop = np.clip(np.ceil(index.max(axis=0)).astype(int) + 1, 0, volume.shape)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    wanted = np.zeros(256, dtype=bool)
    wanted[structure_labels] = True
    bone = np.argwhere(wanted[labels[box]])
    hu = volume.hu[box][tuple(bone.T)]
    points = volume.index_to_lps(bone + start)
    distance = [p.signed_distance_mm(points) for p in planes]
    out = []
    for i, plane in enumerate(planes):
        near = (distance[i] <= 0) & (distance[i] >= -CUT_BAND_MM)
        for j, d in enumerate(distance):
            if j != i:
                near &= d > 0  # beside this plane's face, not beside another's
        median = float(np.median(hu[near])) if near.any() else None
        out.append({"name": plane.name or f"plane {i + 1}", "band_mm": CUT_BAND_MM,
                    "bone_voxels": int(near.sum()), "median_hu": None if median is None else round(median, 1),
                    "low_density": median is not None and median < LOW_DENSITY_HU})
    return out


def _edges(mask: np.ndarray, px: int = 1) -> np.ndarray:
    """Pixels of ``mask`` within ``px`` 4-steps of its outside (not of the image border)."""
    return mask & ~ndimage.binary_erosion(mask, iterations=px, border_value=1)


def _thick(mask: np.ndarray, px: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=px) if mask.any() else mask
