"""Fixation: flanges on the host bone and screws in safe bone corridors.

Per contact face (one per resection plane):

- **flange**: the outer surface of the bone that plane cuts, within
  ``flange_width_mm`` of the cut edge on the host side and on the accessible
  side (a hip bone's outer table: lateral; the sacrum's dorsal surface:
  posterior), offset by ``flange_clearance_mm`` and thickened by
  ``flange_thickness_mm`` (:func:`pipeline.design.plate.plate_solid`); over
  the resected region it reaches down into the bone the implant replaces,
  so it is united with the implant into one solid. Other bones are
  subtracted from it: it never enters them;
- **screws**: entry points spread over the flange's bone-facing side,
  directions within ``max_screw_angle_deg`` of the bone's inward normal; a
  trajectory is valid when the capsule of radius screw radius +
  ``min_bone_margin_mm`` around its axis stays inside the host bone from
  the depth where it has passed the entry cortex (radius + margin + 1 mm
  below the entry surface along its normal) to its tip (so the screw
  with its margin does), for at least ``min_length_in_bone_mm``, and never
  comes nearer than the screw radius + margin to a forbidden zone: the
  sacral canal and foramina (holes of the sacrum's label and of the fitted
  sacrum model in axial sections), and every other bone (the other side's,
  the femoral heads, the spine). The set maximises length in bone and
  margin, spread over the flange (entries at least 2.5 diameters apart,
  axes at least a diameter + margin apart);
- **iliosacral screws** (``iliosacral = true``, a contact face on the
  sacrum): from the implant's outer surface through the contact face into
  the S1 body (its tip between the S1 endplate and 35 mm below it, along
  the fitted sacrum's axis), its in-host part valid as above.

The search reads two fields on a 1 mm grid (inside depth of the host from
a distance transform, the forbidden zones' distance on the CT grid); the
chosen screws are then measured exactly (point-to-triangle distances every
0.5 mm along the axis) and those are the margins reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import manifold3d
import numpy as np
import trimesh
from scipy import ndimage
from scipy.spatial import cKDTree

from ..bones import LABEL_IDS, LABEL_NAMES
from ..config import FixationConfig, Plane
from ..geometry.caps import outline_loops
from ..geometry.distance import NearSurface
from ..geometry.meshes import corner_max, mesh_facts, reader_defects, to_manifold
from ..geometry.resect import Resection
from ..segment.distance_map import distance_to_false
from ..segment.voxelise import inside_mesh
from ..parallel import parallel
from ..volume import apply_affine
from .fit import outline_points
from .plate import EmptyPlate, PlateContact, band, facing, manifold_mesh, plate_contact, plate_solid, solid_mesh

SEARCH_GRID_MM = 1.0
SAMPLE_MM = 1.0          # along a candidate axis in the search
CHECK_SAMPLE_MM = 0.5    # along a chosen screw, measured exactly
CIRCLE_SEGMENTS = 32
HOLE_TURNS = (0.0, 0.37, 0.71)
ENTRY_SPACING_DIAMETERS = 2.5
# Iliosacral screw tips lie between the S1 endplate and this far below it.
S1_DEPTH_MM = 35.0
# Hole cylinders reach this far beyond the surfaces they pass through (mm).
HOLE_OVERSHOOT_MM = 2.0
# A screw's angle is measured from the bone's normal averaged over this radius
# about its entry (mm): about a screw head's reach, the surface a surgeon aims from.
NORMAL_RADIUS_MM = 5.0
# Entry-cortex lengths divide by the cosine of the screw's angle to the normal; at most 60 degrees are searched.
COS_FLOOR = 0.5


@dataclass(frozen=True)
class Screw:
    kind: str                 # "flange" or "iliosacral"
    plane: str                # the contact face's plane
    bone: str                 # the host bone it holds in
    diameter_mm: float
    head_lps_mm: np.ndarray   # where it leaves the implant's outer surface
    entry_lps_mm: np.ndarray  # where it enters the host bone
    tip_lps_mm: np.ndarray
    length_in_bone_mm: float
    min_margin_mm: float      # smallest bone around the screw, past the entry cortex
    forbidden_distance_mm: float  # nearest forbidden zone, from the screw's surface

    @property
    def direction_lps(self) -> np.ndarray:
        d = self.tip_lps_mm - self.head_lps_mm
        return d / np.linalg.norm(d)

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(self.tip_lps_mm - self.head_lps_mm))

    def as_dict(self) -> dict:
        r = lambda v: [round(float(x), 2) for x in v]  # noqa: E731
        return {"kind": self.kind, "plane": self.plane, "bone": self.bone, "diameter_mm": self.diameter_mm,
                "head_lps_mm": r(self.head_lps_mm), "entry_lps_mm": r(self.entry_lps_mm),
                "tip_lps_mm": r(self.tip_lps_mm), "direction_lps": [round(float(x), 4) for x in self.direction_lps],
                "length_mm": round(self.length_mm, 1), "length_in_bone_mm": round(self.length_in_bone_mm, 1),
                "min_bone_margin_mm": round(self.min_margin_mm, 2),
                "nearest_forbidden_mm": round(self.forbidden_distance_mm, 2)}


@dataclass(frozen=True, eq=False)
class Fixation:
    implant_fixed: trimesh.Trimesh | None   # None: booleans left slivers no clean-up removed (warned)
    screws_mesh: trimesh.Trimesh | None
    flanges: dict[str, trimesh.Trimesh]   # plane name -> flange (before the union)
    screws: tuple[Screw, ...]
    report: dict
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True, eq=False)
class BoneScene:
    """What the search needs to know about the patient: every bone whole
    (label meshes), the label map on the CT grid, and the fitted model."""
    bones: dict[str, trimesh.Trimesh]
    labels: np.ndarray
    affine: np.ndarray
    sacrum_model: trimesh.Trimesh | None = None   # the fitted sacrum (canal, foramina as tunnels)
    s1_centre_lps_mm: np.ndarray | None = None
    s1_axis_lps: np.ndarray | None = None          # caudal -> cranial along the sacrum


def fix_implant(cut: Resection, planes: tuple[Plane, ...], scene: BoneScene,
                config: FixationConfig) -> Fixation:
    """Flanges and screws for the implant of ``cut`` (see the module docstring)."""
    warnings: list[str] = []
    flanges: dict[str, trimesh.Trimesh] = {}
    midline_x = _midline_x(scene)
    where = {}
    for i, plane in enumerate(planes):
        faces = cut.host_cut_faces[i]
        bone = _cut_bone(cut.host, faces, scene, plane.structures)
        if bone is None:
            warnings.append(f"fixation: no labelled bone under the cut face of {plane.name}: no flange there")
            continue
        centre = cut.host.triangles_center[faces].mean(axis=0)
        where[i] = (bone, centre, _accessible(bone, centre, midline_x))
    if config.iliosacral and "sacrum" not in {w[0] for w in where.values()}:
        warnings.append("fixation: iliosacral = true, but no cut face lies on the sacrum: no iliosacral screw")
    # The flanges and the search's fields are independent: made side by side.
    made = parallel(lambda: _Fields(cut, scene, config),
                    *[(lambda i=i, w=w: _flange(cut, planes[i], cut.host_cut_faces[i], *w, scene, config)) for i, w in where.items()])
    fields, made = made[0], dict(zip(where, made[1:]))
    for i in list(where):
        if made[i] is None:
            warnings.append(f"fixation: no surface of the {where[i][0]} faces the {planes[i].name} flange's side "
                            "within its footprint: no flange there")
            del where[i]
        elif made[i][3].area_mm2 <= 0.0:
            # Fused in, it would be a block of metal beside the bone, holding nothing.
            warnings.append(f"fixation: the {planes[i].name} flange touches no bone ({where[i][0]}): left out")
            del where[i]
    implant_m = to_manifold(cut.implant, "implant").as_original()
    flange_m = manifold3d.Manifold.batch_boolean([made[i][4] for i in where], manifold3d.OpType.Add)
    # manifold3d releases the GIL: the union is made while the screws are searched.
    solid, (flange_reports, screws) = parallel(
        lambda: _evaluated(implant_m + flange_m),
        lambda: _screws(cut, planes, where, made, fields, scene, config, warnings))
    # A flange wholly apart from the implant holds nothing to it: left out with its screws.
    solid, apart = _joined_flanges(solid, implant_m.original_id(), {i: made[i][4] for i in where})
    for i in apart:
        warnings.append(f"fixation: the {planes[i].name} flange ({where[i][0]}) does not reach the implant: "
                        "left out, with its screws")
        screws = [s for s in screws if not (s.kind == "flange" and s.plane == planes[i].name)]
        flange_reports = [r for r in flange_reports if r["plane"] != planes[i].name]
        del where[i]
    for i, plane in enumerate(planes):
        if i in where:
            flanges[plane.name] = made[i][0]
    # What the flanges add to the implant: the union less the implant (a
    # second boolean, flanges less implant, gave the same to 1e-10 mm3).
    outside = solid.volume() - implant_m.volume()
    # Booleans where surfaces nearly meet can leave slivers no clean-up turns
    # into a valid STL; the holes turned by a fraction of a facet meet the
    # flanges elsewhere: the first clean result is kept.
    for turn in HOLE_TURNS:
        holes = [_hole(s, config, turn) for s in screws]
        drilled = manifold3d.Manifold.batch_boolean([solid] + holes, manifold3d.OpType.Subtract) if holes else solid
        dropped: list[str] = []
        implant_fixed = _largest_with_implant(drilled, implant_m.original_id(), dropped)
        if not any(reader_defects(implant_fixed).values()):
            break
    else:
        defects = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in reader_defects(implant_fixed).items() if n)
        warnings.append(f"fixation: the implant with flanges is no clean solid as an STL reader reads it "
                        f"({defects}): implant_fixed.stl is not written; screws.stl and the report are")
        implant_fixed = None
    warnings += dropped
    screws_mesh = None
    if screws:
        screws_mesh = solid_mesh(manifold3d.Manifold.batch_boolean(
            [_cylinder(s.head_lps_mm, s.tip_lps_mm, s.diameter_mm / 2) for s in screws], manifold3d.OpType.Add))
    report = {
        "settings": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "flanges": flange_reports,
        "screws": [s.as_dict() for s in screws],
        "implant_volume_mm3": round(implant_m.volume(), 1),
        "flanges_volume_mm3": round(float(sum(made[i][4].volume() for i in where)), 1),
        # The flanges reach into the implant's bone to join it: what they add.
        "flanges_outside_implant_mm3": round(float(outside), 1),
        "holes_volume_mm3": round(float(sum(h.volume() for h in holes)), 1),
        # As read back: the sum of the shells' volumes its check measured.
        "implant_fixed_volume_mm3": (round(float(mesh_facts(implant_fixed)["shell_volumes_mm3"].sum()), 1)
                                     if implant_fixed is not None else None),
    }
    return Fixation(implant_fixed=implant_fixed, screws_mesh=screws_mesh, flanges=flanges,
                    screws=tuple(screws), report=report, warnings=tuple(warnings))


def _screws(cut: Resection, planes: tuple[Plane, ...], where: dict, made: dict, fields: "_Fields",
            scene: BoneScene, config: FixationConfig, warnings: list[str]) -> tuple[list[dict], list[Screw]]:
    """(flange reports, screws): each flange's screws, then the iliosacral
    screws through a sacral contact face; warnings when fewer fit than asked."""
    flange_reports, screws = [], []
    for i, plane in enumerate(planes):
        if i not in where:
            continue
        bone = where[i][0]
        flange, report, footprint, contact, _ = made[i]
        wanted = config.screws_per_flange
        found, why = _flange_screws(flange, contact, footprint, plane, bone, fields, config, wanted) \
            if wanted else ([], "")
        if len(found) < wanted:
            hint = ("; iliosacral = true adds a screw through the contact face into S1"
                    if bone == "sacrum" and not config.iliosacral else "")
            warnings.append(f"fixation: {len(found)} of {wanted} screws fit in the {plane.name} flange "
                            f"({bone}; {config.screw_diameter_mm:g} mm, margin {config.min_bone_margin_mm:g} mm, "
                            f"at least {config.min_length_in_bone_mm:g} mm in bone): {why}{hint}")
        report["screws"] = len(found)
        flange_reports.append(report)
        screws += found
        if config.iliosacral and bone == "sacrum":
            screws += _iliosacral_screws(cut, i, plane, fields, scene, config, warnings, screws)
    for s in screws:
        if s.min_margin_mm < config.min_bone_margin_mm:
            warnings.append(f"fixation: a {s.kind} screw in the {s.plane} {s.bone} keeps {s.min_margin_mm:.2f} mm "
                            f"of bone, under min_bone_margin_mm = {config.min_bone_margin_mm:g}")
    return flange_reports, screws


def _evaluated(m: manifold3d.Manifold) -> manifold3d.Manifold:
    """``m`` with its (lazy) booleans carried out."""
    m.num_tri()
    return m


# --- flanges -------------------------------------------------------------------

def _flange(cut: Resection, plane: Plane, faces: np.ndarray, bone: str, centre: np.ndarray, side: np.ndarray,
            scene: BoneScene, config: FixationConfig):
    c, t = config.flange_clearance_mm, config.flange_thickness_mm
    footprint = band(plane, -config.flange_width_mm, c + t) + (facing(centre, side),)
    others = [b for n, b in scene.bones.items() if n != bone]
    # Within the width of the cut's edge, not only of its plane: where the
    # bone's surface runs along the plane or on past the cut's end, a strip
    # along the plane would follow it (its margin: a plate corner over a
    # square edge lies c + t off the edge, W off the plane).
    loops = [cut.host.vertices[loop] for loop in outline_loops(cut.host.faces[faces])]
    near = (outline_points(loops, config.flange_grid_mm / 4)[0], config.flange_width_mm + c + t)
    # Only the united implant is written: the flange stays the booleans' exact mesh.
    try:
        solid = plate_solid(scene.bones[bone], footprint, c, t, spacing_mm=config.flange_grid_mm,
                            fill_beyond=cut.implant_planes, keep_off=tuple(others), near=near)
    except EmptyPlate:
        return None
    flange = manifold_mesh(solid)
    contact = plate_contact(flange, cut.host, c, t, behind=(plane,))
    report = {"plane": plane.name, "bone": bone, "accessible_side_lps": [round(float(v), 3) for v in side],
              **contact.as_dict(), "thickness_mm": t, "clearance_mm": c,
              "volume_mm3": round(float(solid.volume()), 1)}
    return flange, report, footprint, contact, solid


def _cut_bone(host: trimesh.Trimesh, faces: np.ndarray, scene: BoneScene,
              structures: tuple[str, ...] = ()) -> str | None:
    """The labelled bone under a host cut face: the label under most of its
    area (at its triangles' centres), among the plane's ``structures`` when
    it names them. (By triangle count, the sacral cut of a 3 mm CT, 1277 mm2
    on the sacrum and 1519 mm2 on a loose fragment of ilium, put its flange
    on the fragment.)"""
    if faces.size == 0:
        return None
    centres = host.triangles_center[faces]
    index = np.round(apply_affine(np.linalg.inv(scene.affine), centres)).astype(np.int64)
    ok = np.all((index >= 0) & (index < scene.labels.shape), axis=1)
    values = scene.labels[tuple(index[ok].T)].astype(np.int64)
    areas = host.area_faces[faces][ok]
    wanted = values > 0
    if structures:
        wanted &= np.isin(values, [LABEL_IDS[n] for n in structures if n in LABEL_IDS])
    if not wanted.any():
        return None
    name = LABEL_NAMES[int(np.bincount(values[wanted], weights=areas[wanted]).argmax())]
    return name if name in scene.bones else None


def _midline_x(scene: BoneScene) -> float:
    sacrum = scene.bones.get("sacrum")
    if sacrum is not None:
        return float(sacrum.vertices[:, 0].mean())
    bounds = np.array([b.bounds for b in scene.bones.values()])
    return float((bounds[:, 0, 0].min() + bounds[:, 1, 0].max()) / 2)


def _accessible(bone: str, centre: np.ndarray, midline_x: float) -> np.ndarray:
    """The side a flange on ``bone`` lies on: a hip bone's outer table
    (lateral), otherwise the dorsal surface (posterior, +P)."""
    if bone.startswith("hip"):
        return np.array([1.0 if centre[0] >= midline_x else -1.0, 0.0, 0.0])
    return np.array([0.0, 1.0, 0.0])


def _largest_with_implant(solid: manifold3d.Manifold, implant_id: int, warnings: list[str]):
    """Pieces of flange that ended up apart from the implant (a flange over a
    separate bump) are dropped, with a warning; inner cavities are filled. A
    piece is the implant's when some of its surface comes from the implant
    (manifold3d keeps, per triangle, the solid it came from: ``implant_id``).
    The booleans leave a few cavities between flange and implant: alone, a
    cavity's inward shell is a piece of negative volume; left out, the
    cavity is filled, as a printed part and the STL check want."""
    pieces = solid.decompose()
    if len(pieces) > 1:
        pieces = [p for p in pieces if p.volume() > 0]
        keep = [_has_surface_of(p, implant_id) for p in pieces]
        dropped = [p.volume() for p, k in zip(pieces, keep) if not k]
        if dropped:
            warnings.append(f"fixation: {len(dropped)} flange piece(s) apart from the implant dropped "
                            f"({sum(dropped):.0f} mm3)")
        # Disjoint pieces: put together as they are, no boolean needed.
        solid = manifold3d.Manifold.compose([p for p, k in zip(pieces, keep) if k])
    return solid_mesh(solid)


def _joined_flanges(solid: manifold3d.Manifold, implant_id: int,
                    flanges: dict[int, manifold3d.Manifold]) -> tuple[manifold3d.Manifold, list[int]]:
    """(``solid`` less the flanges that lie wholly in pieces apart from the
    implant, those flanges). A piece is the implant's when some of its
    surface comes from it (see :func:`_largest_with_implant`, which drops
    what is left apart after the holes, flanges in part among it)."""
    pieces = solid.decompose()
    if len(pieces) < 2:
        return solid, []
    joined = manifold3d.Manifold.compose([p for p in pieces if _has_surface_of(p, implant_id)])
    gone = [i for i, f in flanges.items() if (f ^ joined).volume() <= 0.0]
    if not gone:
        return solid, []
    theirs = manifold3d.Manifold.batch_boolean([flanges[i] for i in gone], manifold3d.OpType.Add)
    kept = [p for p in pieces if _has_surface_of(p, implant_id) or p.volume() <= 0.0
            or (p ^ theirs).volume() <= 0.0]
    return manifold3d.Manifold.compose(kept), gone


def _has_surface_of(piece: manifold3d.Manifold, original_id: int) -> bool:
    mesh = piece.to_mesh()
    ids, starts = np.asarray(mesh.run_original_id), np.asarray(mesh.run_index)
    return bool(np.any((ids == original_id) & (np.diff(starts) > 0)))


# --- fields for the search -----------------------------------------------------

class _Fields:
    """The host's inside depth on a 1 mm grid (distance transform of the
    inside voxels: within a grid step of the true depth) and, per bone, the
    forbidden zones' distance on the CT grid, made when first asked for."""

    def __init__(self, cut: Resection, scene: BoneScene, config: FixationConfig) -> None:
        host = cut.host
        self.host, self.scene = host, scene
        # Screws start within a flange's width of the implant and reach at most max_length_mm.
        reach = config.max_length_mm + config.flange_width_mm
        lo = np.maximum(host.bounds[0], cut.implant.bounds[0] - reach) - 2 * SEARCH_GRID_MM
        hi = np.minimum(host.bounds[1], cut.implant.bounds[1] + reach) + 2 * SEARCH_GRID_MM
        shape = tuple(int(s) for s in np.ceil((hi - lo) / SEARCH_GRID_MM).astype(int) + 1)
        self.origin = lo
        affine = np.diag([SEARCH_GRID_MM] * 3 + [1.0])
        affine[:3, 3] = lo
        inside = inside_mesh(host.vertices, host.faces, affine, tuple(slice(0, s) for s in shape))
        # Depth of a voxel centre: its distance to the nearest outside centre,
        # less half a step (the surface lies between them).
        self.depth = (distance_to_false(inside) - 0.5) * SEARCH_GRID_MM
        # The CT grid's box over the same region, for the forbidden zones.
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        index = apply_affine(np.linalg.inv(scene.affine), corners)
        self.ct_lo = np.clip(np.floor(index.min(axis=0)).astype(int) - 1, 0, None)
        self.ct_hi = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 2, scene.labels.shape)
        self._forbidden: dict[str, np.ndarray] = {}
        self._holes: np.ndarray | None = None
        self._box = (lo, hi)

    @cached_property
    def surface(self) -> NearSurface:
        """The host's surface over the search's box, for exact distances
        (made when the screws are searched, not beside the flanges)."""
        return NearSurface(self.host, *self._box)

    def host_depth(self, points: np.ndarray) -> np.ndarray:
        index = (points.reshape(-1, 3) - self.origin) / SEARCH_GRID_MM
        d = ndimage.map_coordinates(self.depth, index.T, order=1, mode="constant", cval=-1.0)
        return d.reshape(points.shape[:-1])

    def forbidden(self, points: np.ndarray, bone: str) -> np.ndarray:
        """Distance (mm) from each point to the nearest forbidden voxel centre for a screw in ``bone``."""
        if bone not in self._forbidden:
            box = tuple(slice(a, b) for a, b in zip(self.ct_lo, self.ct_hi))
            if self._holes is None:
                self._holes = _sacral_holes(self.scene, box)
            self._forbidden[bone] = _forbidden_distance(self.scene, bone, box, self._holes)
        index = apply_affine(np.linalg.inv(self.scene.affine), points.reshape(-1, 3)) - self.ct_lo
        d = ndimage.map_coordinates(self._forbidden[bone], index.T, order=1, mode="nearest")
        return d.reshape(points.shape[:-1])

    def exact_depth(self, points: np.ndarray) -> np.ndarray:
        """Exact distance to the host surface, signed by the grid's inside (for
        points more than a grid step from the surface the sign is certain)."""
        d, _ = self.surface.distance(points)
        return np.where(self.host_depth(points) > -0.5 * SEARCH_GRID_MM, d, -d)


def _forbidden_distance(scene: BoneScene, bone: str, box: tuple[slice, ...], holes: np.ndarray) -> np.ndarray:
    """Distance (mm) on the CT grid's ``box`` to the forbidden zones of a
    screw in ``bone``: every other bone, and the sacrum's canal and foramina."""
    labels = scene.labels[box]
    forbidden = ((labels > 0) & (labels != LABEL_IDS[bone])) | holes
    spacing = np.linalg.norm(scene.affine[:3, :3], axis=0)
    if not forbidden.any():
        return np.full(labels.shape, 1e3, dtype=np.float32)
    return distance_to_false(~forbidden, spacing)


def _sacral_holes(scene: BoneScene, box: tuple[slice, ...]) -> np.ndarray:
    """Canal and foramina: what the sacrum's label and the fitted sacrum model
    enclose without holding it, section by section across the array axis
    nearest the body's long axis (S)."""
    labels = scene.labels[box]
    holes = np.zeros(labels.shape, dtype=bool)
    masks = [labels == LABEL_IDS["sacrum"]]
    if scene.sacrum_model is not None:
        masks.append(inside_mesh(scene.sacrum_model.vertices, scene.sacrum_model.faces, scene.affine, box))
    axis = int(np.argmax(np.abs(scene.affine[2, :3]) / np.linalg.norm(scene.affine[:3, :3], axis=0)))
    for mask in masks:
        if not mask.any():
            continue
        filled = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)])
        holes |= np.moveaxis(filled, 0, axis) & ~mask
    return holes


# --- screw search --------------------------------------------------------------

def _cone(axis: np.ndarray, max_angle_deg: float) -> np.ndarray:
    """Unit directions within ``max_angle_deg`` of ``axis``: the axis and
    rings at a third, two thirds and all of the angle, 8 per ring."""
    axis = axis / np.linalg.norm(axis)
    a = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(axis, a)
    out = [axis]
    for frac in (1 / 3, 2 / 3, 1.0):
        theta = np.radians(max_angle_deg) * frac
        if theta == 0:
            continue
        for phi in np.arange(8) * np.pi / 4:
            out.append(np.cos(theta) * axis + np.sin(theta) * (np.cos(phi) * a + np.sin(phi) * b))
    return np.array(out)


def _valid_lengths(starts: np.ndarray, dirs: np.ndarray, skip_mm: np.ndarray, max_len_mm: np.ndarray,
                   bone: str, fields: _Fields, radius: float, config: FixationConfig):
    """Per candidate (start on the bone, unit direction): the longest valid
    length in bone (0 if under the minimum), the smallest margin of the
    grid depth over it past ``skip_mm`` (the entry cortex), and whether its
    run ended where a forbidden zone came too near (else it left the bone,
    or reached ``max_len_mm``)."""
    need = radius + config.min_bone_margin_mm
    z = np.arange(0.0, float(max_len_mm.max()) + SAMPLE_MM, SAMPLE_MM)
    pts = starts[:, None, :] + dirs[:, None, :] * z[None, :, None]
    depth = fields.host_depth(pts)
    clear = fields.forbidden(pts, bone)
    past = z[None, :] >= skip_mm[:, None]
    # Conservative by half a search step: the grid depth is within one of the truth.
    clear_ok = clear >= need
    ok = clear_ok & np.where(past, depth >= need + 0.5 * SEARCH_GRID_MM, depth > -SEARCH_GRID_MM)
    ok &= z[None, :] <= max_len_mm[:, None]
    run = np.cumprod(ok, axis=1).astype(bool)
    length = np.where(run.any(axis=1), z[np.maximum(run.sum(axis=1) - 1, 0)], 0.0)
    within = run & past
    margin = np.where(within, depth - radius, np.inf).min(axis=1)
    length[(length < config.min_length_in_bone_mm) | ~within.any(axis=1)] = 0.0
    stop = run.sum(axis=1)   # the first sample past the run
    ended = stop < len(z)
    blocked = ended & ~clear_ok[np.arange(len(stop)), np.minimum(stop, len(z) - 1)]
    return length, margin, blocked


def _flange_screws(flange: trimesh.Trimesh, contact: PlateContact, footprint: tuple[Plane, ...], plane: Plane,
                   bone: str, fields: _Fields, config: FixationConfig, wanted: int) -> tuple[list[Screw], str]:
    """(Up to ``wanted`` screws through the flange; what stopped the
    trajectories that hold none, for the warning when fewer fit)."""
    c, t = config.flange_clearance_mm, config.flange_thickness_mm
    radius = config.screw_diameter_mm / 2
    hole = radius + config.hole_clearance_mm / 2
    none_inside = f"the flange has no place for a hole {hole + 1.0:g} mm inside its walls"
    if contact.faces.size == 0:
        return [], none_inside
    faces = contact.faces
    centres = flange.triangles_center[faces]
    # Holes stay a millimetre inside the flange's walls.
    inner = np.all([p.signed_distance_mm(centres) <= -(hole + 1.0) for p in footprint], axis=0)
    faces, centres = faces[inner], centres[inner]
    if len(centres) == 0:
        return [], none_inside
    picks = _spread(centres, 2.0, 60)
    _, entries = fields.surface.distance(centres[picks])
    normals = _bone_normals(flange, faces, picks)
    starts, dirs, skip, max_len = [], [], [], []
    for e, n in zip(entries, normals):
        cone = _cone(-n, config.max_screw_angle_deg)
        cos = np.clip(cone @ -n, COS_FLOOR, 1.0)
        starts.append(np.repeat(e[None], len(cone), axis=0))
        dirs.append(cone)
        skip.append(_entry_cortex_mm(radius, config) / cos)
        max_len.append(config.max_length_mm - (c + t) / cos)
    starts, dirs = np.concatenate(starts), np.concatenate(dirs)
    skip, max_len = np.concatenate(skip), np.concatenate(max_len)
    length, margin, blocked = _valid_lengths(starts, dirs, skip, max_len, bone, fields, radius, config)
    order = np.argsort(-(length + 10.0 * np.minimum(margin, 3.0)))
    chosen: list[Screw] = []
    for j in order:
        if length[j] <= 0 or len(chosen) == wanted:
            break
        if any(np.linalg.norm(starts[j] - s.entry_lps_mm) < ENTRY_SPACING_DIAMETERS * config.screw_diameter_mm
               or _segments_apart(starts[j], starts[j] + dirs[j] * length[j], s.entry_lps_mm, s.tip_lps_mm)
               < config.screw_diameter_mm + config.min_bone_margin_mm for s in chosen):
            continue
        head = _exit_point(flange, starts[j], -dirs[j], (c + t) / COS_FLOOR + 5.0)
        screw = _measured("flange", plane.name, bone, config.screw_diameter_mm, head, starts[j],
                          starts[j] + dirs[j] * length[j], skip[j], fields, config)
        if _holds(screw, config):
            chosen.append(screw)
    failed = length <= 0
    held = int((~failed).sum())
    why = f"{held} of {len(length)} trajectories searched hold one"
    if held:
        why += f", none more {ENTRY_SPACING_DIAMETERS:g} diameters from those chosen and clear of them"
    if failed.any():
        met = int(round(100 * np.mean(blocked[failed])))
        stops = sorted([(met, "came too near the sacral canal, a foramen or another bone"),
                        (100 - met, "ran out of bone around the screw")], reverse=True)
        why += "; the rest " + " or ".join(f"{text} ({share} %)" for share, text in stops)
    return chosen, why


def _bone_normals(flange: trimesh.Trimesh, faces: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """The bone's outward unit normal under each of ``faces[picks]`` (the
    flange's faces that face the bone): minus the area-weighted mean normal
    of those faces within ``NORMAL_RADIUS_MM`` of it. The flange lies on
    the bone at its clearance, so its faces follow the bone's surface.
    (From the face's centre to the nearest point of the bone, 0.06-2 mm
    away, the direction was the grids' error as much as the surface's: on
    Pelvic-Ref-003's sacral flange a quarter of the "inward" directions
    pointed out of the bone, and an iliac screw was chosen 35 degrees off
    the bone's normal, past ``max_screw_angle_deg``.)"""
    centres = flange.triangles_center[faces]
    weighted = flange.face_normals[faces] * flange.area_faces[faces][:, None]
    near = cKDTree(centres).query_ball_point(centres[picks], NORMAL_RADIUS_MM)
    normals = -np.array([weighted[i].sum(axis=0) for i in near])
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def _entry_cortex_mm(radius: float, config: FixationConfig) -> float:
    """Depth below the entry surface (along its normal) over which a screw
    passes the entry cortex: until the surface it entered through lies the
    screw radius + margin + one search step away, the margin is not asked."""
    return radius + config.min_bone_margin_mm + SEARCH_GRID_MM


def _holds(screw: Screw, config: FixationConfig) -> bool:
    """The exact measure confirms the search's (which reads a grid)."""
    return (screw.min_margin_mm >= config.min_bone_margin_mm
            and screw.forbidden_distance_mm >= config.min_bone_margin_mm)


def _iliosacral_screws(cut: Resection, i: int, plane: Plane, fields: _Fields, scene: BoneScene,
                       config: FixationConfig, warnings: list[str], others: list[Screw]) -> list[Screw]:
    if scene.s1_centre_lps_mm is None:
        warnings.append("fixation: no fitted sacrum model, so no S1 level: no iliosacral screw")
        return []
    radius = config.iliosacral_diameter_mm / 2
    faces = cut.host_cut_faces[i]
    tri = cut.host.triangles[faces]
    # Points on the cut face, about every 2 mm, that lie on the host (a hair
    # inside it); the margin to the bone's rim is measured along each screw.
    samples = _face_samples(tri, 2.0)
    samples = samples[fields.exact_depth(samples + np.asarray(plane.normal_lps) * -1e-3) >= 0]
    into_host = -np.asarray(plane.normal_lps)
    cone = _cone(into_host, min(config.max_screw_angle_deg, 25.0))
    starts = np.repeat(samples, len(cone), axis=0)
    dirs = np.tile(cone, (len(samples), 1))
    cos = np.clip(dirs @ into_host, COS_FLOOR, 1.0)
    skip = _entry_cortex_mm(radius, config) / cos
    max_len = np.full(len(starts), config.max_length_mm)
    length, margin, _ = _valid_lengths(starts, dirs, skip, max_len, "sacrum", fields, radius, config)
    tip = starts + dirs * length[:, None]
    level = (tip - scene.s1_centre_lps_mm) @ scene.s1_axis_lps
    in_s1 = (level <= 0) & (level >= -S1_DEPTH_MM)
    length[~in_s1] = 0.0
    order = np.argsort(-(length + 10.0 * np.minimum(margin, 3.0)))
    chosen: list[Screw] = []
    for j in order:
        if length[j] <= 0 or len(chosen) == config.iliosacral_screws:
            break
        if any(_segments_apart(starts[j], tip[j], s.entry_lps_mm, s.tip_lps_mm)
               < config.iliosacral_diameter_mm + config.min_bone_margin_mm for s in chosen + others):
            continue
        head = _exit_point(cut.implant, starts[j] - dirs[j] * 1e-3, -dirs[j], config.max_length_mm)
        if np.linalg.norm(tip[j] - head) > config.max_length_mm:
            continue
        screw = _measured("iliosacral", plane.name, "sacrum", config.iliosacral_diameter_mm, head,
                          starts[j], tip[j], skip[j], fields, config)
        if _holds(screw, config):
            chosen.append(screw)
    if len(chosen) < config.iliosacral_screws:
        warnings.append(f"fixation: {len(chosen)} of {config.iliosacral_screws} iliosacral screws fit through "
                        f"the {plane.name} contact face into S1")
    return chosen


def _measured(kind, plane, bone, diameter, head, entry, tip, skip, fields: _Fields, config) -> Screw:
    """The screw with its margins measured exactly along its axis."""
    radius = diameter / 2
    length = float(np.linalg.norm(tip - entry))
    u = (tip - entry) / length
    z = np.arange(skip, length + 1e-9, CHECK_SAMPLE_MM)
    z = np.append(z, length) if z.size == 0 or z[-1] < length else z
    pts = entry + u * z[:, None]
    depth = fields.exact_depth(pts)
    all_pts = entry + u * np.arange(0.0, length + 1e-9, CHECK_SAMPLE_MM)[:, None]
    clear = fields.forbidden(all_pts, bone)
    return Screw(kind=kind, plane=plane, bone=bone, diameter_mm=diameter, head_lps_mm=np.asarray(head, float),
                 entry_lps_mm=np.asarray(entry, float), tip_lps_mm=np.asarray(tip, float),
                 length_in_bone_mm=length, min_margin_mm=float(depth.min() - radius),
                 forbidden_distance_mm=float(clear.min() - radius))


def _spread(points: np.ndarray, min_mm: float, most: int) -> np.ndarray:
    """Farthest-point sampling: up to ``most`` indices, at least ``min_mm`` apart."""
    chosen = [int(np.argmin(np.linalg.norm(points - points.mean(axis=0), axis=1)))]
    d = np.linalg.norm(points - points[chosen[0]], axis=1)
    while len(chosen) < most:
        j = int(np.argmax(d))
        if d[j] < min_mm:
            break
        chosen.append(j)
        d = np.minimum(d, np.linalg.norm(points - points[j], axis=1))
    return np.array(chosen)


def _face_samples(tri: np.ndarray, step_mm: float) -> np.ndarray:
    """Points on triangles about ``step_mm`` apart (barycentric lattices)."""
    out = [tri.mean(axis=1)]
    for t in tri:
        n = int(np.ceil(np.linalg.norm(t - np.roll(t, 1, axis=0), axis=1).max() / step_mm))
        if n < 2:
            continue
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = i + j <= n
        a, b = i[keep] / n, j[keep] / n
        out.append(t[0] + a[:, None] * (t[1] - t[0]) + b[:, None] * (t[2] - t[0]))
    pts = np.concatenate(out)
    return pts[_spread(pts, step_mm, len(pts))]


def _segments_apart(p0, p1, q0, q1) -> float:
    """Smallest distance between segments p0p1 and q0q1 (sampled finely)."""
    s = np.linspace(0.0, 1.0, 41)
    a = p0 + (p1 - p0) * s[:, None]
    b = q0 + (q1 - q0) * s[:, None]
    return float(np.linalg.norm(a[:, None] - b[None], axis=2).min())


def _exit_point(mesh: trimesh.Trimesh, origin: np.ndarray, direction: np.ndarray, reach_mm: float) -> np.ndarray:
    """Where the ray from ``origin`` along ``direction`` last leaves ``mesh``
    within ``reach_mm`` (its farthest crossing with an outward face)."""
    tri = mesh.triangles
    near = _ray_triangles(tri, origin, direction, reach_mm)
    t, facing_out = _ray_hits(tri[near], origin, direction)
    leaving = (t > 0) & (t <= reach_mm) & facing_out
    if not leaving.any():
        return origin + direction * 0.0
    return origin + direction * float(t[leaving].max())


def _ray_triangles(tri: np.ndarray, origin, direction, reach_mm: float) -> np.ndarray:
    centres = tri.mean(axis=1)
    r = corner_max(np.linalg.norm(tri - centres[:, None], axis=2))
    rel = centres - origin
    along = rel @ direction
    off = np.linalg.norm(rel - along[:, None] * direction, axis=1)
    return np.flatnonzero((off <= r) & (along >= -r) & (along <= reach_mm + r))


def _ray_hits(tri: np.ndarray, origin, direction):
    """Möller-Trumbore: ray parameter of each triangle's hit (inf if none)
    and whether the triangle faces along the ray (the ray leaves there)."""
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    p = np.cross(direction, e2)
    det = np.einsum("ij,ij->i", e1, p)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = origin - tri[:, 0]
    u = np.einsum("ij,ij->i", s, p) * inv
    q = np.cross(s, e1)
    v = (q @ direction) * inv
    t = np.einsum("ij,ij->i", e2, q) * inv
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1)
    normal_along = np.cross(e1, e2) @ direction > 0
    return np.where(hit, t, np.inf), normal_along


# --- solids --------------------------------------------------------------------

def _cylinder(a: np.ndarray, b: np.ndarray, radius: float, turn: float = 0.0) -> manifold3d.Manifold:
    """A closed cylinder from ``a`` to ``b`` (LPS mm), its facets turned by
    ``turn`` of one facet about its axis."""
    axis = b - a
    height = float(np.linalg.norm(axis))
    w = axis / height
    u = np.cross(w, [1.0, 0.0, 0.0] if abs(w[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(w, u)
    angle = 2 * np.pi * turn / CIRCLE_SEGMENTS
    u, v = np.cos(angle) * u + np.sin(angle) * v, -np.sin(angle) * u + np.cos(angle) * v
    matrix = np.column_stack([u, v, w, a])
    cyl = manifold3d.Manifold.cylinder(height, radius, radius, CIRCLE_SEGMENTS)
    return cyl.transform(matrix)


def _hole(s: Screw, config: FixationConfig, turn: float = 0.0) -> manifold3d.Manifold:
    """The screw's hole through the implant: from beyond its head to just
    past where it enters the bone; its facets turned by ``turn`` of one."""
    u = s.direction_lps
    radius = (s.diameter_mm + config.hole_clearance_mm) / 2
    return _cylinder(s.head_lps_mm - u * HOLE_OVERSHOOT_MM, s.entry_lps_mm + u * 0.5, radius, turn)
