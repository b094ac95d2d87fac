"""Patient-specific cutting guides: one printed block per resection plane.

A guide is placed on the intact bone before the cut and lifted off along
the surgeon's approach after the K-wires are out. It is built in the frame
of its plane (``GuideFrame``): ``b`` along the plane normal (positive into
the removed part), ``z`` along the approach projected onto the plane (so a
blade that enters the slot along it stays in the plane), ``a`` along the
cut line. Its parts, combined by exact manifold3d booleans:

- the **seat**: the bone surface seen from the approach over the footprint
  (within ``footprint_mm`` of the plane on both sides, along the cut line),
  offset by the contact clearance and thickened by the wall: the slab
  between the bone's upper envelope along ``z`` dilated by the clearance
  and by clearance + wall (:class:`Terrain`), a height field that cannot
  hook under bone. Its underside, the contact, follows the envelope's
  fine grid; its top, which touches nothing, a coarser one;
- the **slot block**: a box standing on the seat around the plane, as long
  as the cut line plus a wall at each end, its top ``slot_depth_mm`` above
  the slot walls' lower rim, following it along the cut line (:func:`_roof`);
  less the **clearance terrain**: everything below the bone's upper
  envelope along ``z`` (all bones, the uncut ones too), dilated by the
  clearance and half a wall (on the coarser grid, under the block only),
  so the block's underside follows the bone inside the seat and cannot
  hook under it;
- minus the **slot**: a slab of the printed slot width whose mid-plane is
  the cut plane, through block and seat and open to the bone, over the cut
  line's length plus ``SLOT_END_MM`` at each end, closed by the end walls;
- plus a **sleeve** about each K-wire's axis, rising from the seat so that
  its hole guides the wire over ``kwire_guide_mm``;
- minus the **K-wire holes**: along ``-z`` through the seat on the host
  side, where the wire runs at least ``kwire_depth_mm`` in host bone.

Everything reported is measured on the finished mesh, independently of how
it was built: the slot's walls against the cut plane, the gap from the
underside to the bone (exact point-to-triangle distances), the intersection
with the bone (a manifold3d intersection), the lift-off along the approach
(exact column heights of guide and bone, :mod:`pipeline.geometry.columns`),
and whether the blade reaches the whole cut face through the slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import manifold3d
import numpy as np
import trimesh
from scipy import ndimage

from ..config import GuidesConfig, Plane
from ..errors import PlanError
from ..geometry.columns import cell_bounds, cell_of, column_extremes, facing_up
from ..parallel import parallel
from ..geometry.distance import NearSurface, face_boxes
from ..geometry.meshes import corner_max, corner_min
from ..geometry.meshes import to_manifold as _to_manifold
from .fit import wall_figures
from .plate import manifold_mesh, solid_mesh

# The slot runs this far beyond each end of the cut line (mm), so the blade
# reaches the ends of the cut face.
SLOT_END_MM = 1.0
# Spacing of the clearance terrain's grid (mm). The terrain follows the
# bone's envelope at its nodes exactly; between them it is linear. Every
# part of a guide's making and measuring scales with its nodes: at 0.25 mm
# Pelvic-Ref-003's two guides took 1.3x the time, for 1.7 % more seat on
# bone and a mean gap 0.02-0.03 mm nearer the clearance.
TERRAIN_GRID_MM = 0.3
# The slot block's top follows the walls' rim along the cut line: at each
# node it is the slot depth above the highest rim within this distance (mm).
TOP_SPAN_MM = 5.0
# Spacing of the surfaces that touch nothing (mm): the seat's top and the
# slot block's underside beside the seat take every third node. Between
# nodes a linear terrain drops below the dilated envelope by at most its
# sagitta, diagonal² / (8 R) with R at least the dilation's radius (the
# block's c + wall/2: 0.10 mm at 0.9 mm for a 2 mm radius), far less than
# the half wall that keeps the block clear of the bone.
COARSE_GRID_MM = 0.9
# The terrain reaches this far beyond the guide on every side (mm).
TERRAIN_MARGIN_MM = 2.0
# A bone face is seen from the approach when no bone lies above it by more than this (mm).
VISIBLE_MM = 0.01
# Underside faces: their normal within 60 degrees of pointing down the approach.
UNDERSIDE_COS = 0.5
# The underside is judged in triangles no longer than this (mm).
UNDER_EDGE_MM = 1.0
# Seat area on bone: underside within this much of the contact clearance (mm).
CONTACT_BAND_MM = 0.25
# A lift-off collision: bone above guide in the same column by more than this (mm).
LIFT_TOL_MM = 1e-6
# Cells of the lift-off check's coarse bound (mm).
LIFT_CELL_MM = 1.0
# K-wire candidates along the cut line (mm apart); a wire stops this far
# (mm) before it would leave the host bone.
KWIRE_STEP_MM = 1.0
KWIRE_TIP_MARGIN_MM = 1.0
# Bone kept around a K-wire (mm): the wire's radius plus this, on four
# sides, must be bone along its whole depth.
KWIRE_BONE_MARGIN_MM = 1.0
# Seat left between a K-wire hole and the slot block (mm).
KWIRE_BLOCK_GAP_MM = 1.0
# Where no place along the cut line has the depth asked for, the wires go
# where the bone is at least this share of its deepest there (and are reported).
KWIRE_FALLBACK = 0.8
# A K-wire enters the host bone within this of the seat's underside beyond
# the contact clearance (mm): where the seat passes over a dip, another bone
# or soft tissue, a wire there would run unguided through tens of mm of it
# (a sacral guide's wires 16-24 mm through a dorsal foramen's fat; a supra-
# acetabular one through the femur and 40 mm of fat) and is taken only when
# no other place is left, with a warning.
KWIRE_SEAT_GAP_MM = 2.0
# Sides of a K-wire hole's polygon: at 24 its flats lie within 0.9 % of the
# radius inside the circle (0.01 mm for a 2.5 mm hole).
KWIRE_HOLE_SEGMENTS = 24
# Slot wall faces: facing the plane, every corner within this of the
# nominal wall (mm); other faces touching the wall (the bottom's facets)
# are not walls. Also how near the top and the end walls a rim corner may
# lie and still be theirs (float32 corners of a written guide).
WALL_SELECT_MM = 1e-3
# A guide that overlaps the bone by more than this (mm3) is reported.
INTERSECTION_TOL_MM3 = 1e-3
# A seat with less area on bone than this (mm2) is reported: it may rock.
MIN_SEAT_AREA_MM2 = 150.0
# A guide with 5 % of its surface over walls thinner than this (mm) is
# reported: a printed resin fin that thin breaks off.
THIN_WALL_MM = 1.0
# The scale (mm) over which the seat's slope is taken (its thickness's cap
# and its squared ends) and its edges' direction (:func:`_top_gradient`).
SLOPE_SMOOTH_MM = 1.0



@dataclass(frozen=True)
class GuideFrame:
    """Local frame of a guide: columns of ``axes`` are a (along the cut
    line), b (the plane normal) and z (the approach in the plane)."""

    origin_lps_mm: np.ndarray
    axes: np.ndarray  # (3, 3), columns a, b, z; right-handed

    def local(self, points_lps_mm: np.ndarray) -> np.ndarray:
        return (np.asarray(points_lps_mm, dtype=np.float64) - self.origin_lps_mm) @ self.axes

    def lps(self, points_local: np.ndarray) -> np.ndarray:
        return np.asarray(points_local, dtype=np.float64) @ self.axes.T + self.origin_lps_mm

    def to_lps_matrix(self) -> np.ndarray:
        """3 x 4 affine local -> LPS (manifold3d's transform)."""
        return np.hstack([self.axes, self.origin_lps_mm[:, None]])

    def to_local_matrix(self) -> np.ndarray:
        return np.hstack([self.axes.T, (-self.axes.T @ self.origin_lps_mm)[:, None]])


def guide_frame(plane: Plane, approach_lps, origin_lps_mm) -> tuple[GuideFrame, float]:
    """The frame, and the angle (degrees) between the given approach and
    its projection onto the plane."""
    n = np.asarray(plane.normal_lps, dtype=np.float64)
    d = np.asarray(approach_lps, dtype=np.float64)
    d = d / np.linalg.norm(d)
    z = d - np.dot(d, n) * n
    z /= np.linalg.norm(z)
    a = np.cross(n, z)
    origin = np.asarray(origin_lps_mm, dtype=np.float64)
    origin = origin - plane.signed_distance_mm(origin[None])[0] * n
    tilt = math.degrees(math.asin(min(1.0, abs(float(np.dot(d, n))))))
    return GuideFrame(origin, np.stack([a, n, z], axis=1)), tilt


@dataclass(frozen=True, eq=False)
class Guide:
    plane_name: str
    mesh: trimesh.Trimesh            # LPS mm, closed
    frame: GuideFrame
    kwires: tuple[tuple[np.ndarray, np.ndarray], ...]  # (entry, tip) LPS mm per wire
    report: dict
    warnings: tuple[str, ...]


def cutting_guide(plane: Plane, approach_lps, settings: GuidesConfig, *, bones: trimesh.Trimesh,
                  cut_bone: trimesh.Trimesh, host: trimesh.Trimesh, cut_faces: np.ndarray,
                  bones_solid: manifold3d.Manifold | None = None,
                  host_solid: manifold3d.Manifold | None = None) -> Guide:
    """The guide for ``plane`` (the cut plane, margins applied).

    ``bones``: every bone, intact (the guide touches none of them);
    ``cut_bone``: the bones the plan cuts, intact (the footprint's area on them is reported);
    ``host``: the remainder after the cut and ``cut_faces`` its faces on this
    plane (the cut face the blade must reach, the bone the K-wires go into);
    ``bones_solid``, ``host_solid``: ``bones`` and ``host`` as manifold3d
    solids, when the caller has them (made here otherwise).
    """
    name = plane.name
    bones_solid = bones_solid if bones_solid is not None else to_manifold(bones, "bone")
    host_solid = host_solid if host_solid is not None else to_manifold(host, "host")
    section = host.vertices[np.unique(host.faces[cut_faces])]
    if len(section) == 0:
        raise PlanError(f"guides: plane {name!r} leaves no cut face on the host to guide")
    frame, tilt_deg = guide_frame(plane, approach_lps, section.mean(axis=0))
    s = settings
    half_slot = s.slot_width_mm / 2.0
    block_half = half_slot + s.wall_mm
    sec = frame.local(section)
    window = (float(sec[:, 0].min()) - SLOT_END_MM, float(sec[:, 0].max()) + SLOT_END_MM)
    block_a = (window[0] - s.wall_mm, window[1] + s.wall_mm)
    reach = s.contact_clearance_mm + s.wall_mm + TERRAIN_MARGIN_MM
    region = np.array([[block_a[0] - reach, -s.footprint_mm - reach], [block_a[1] + reach, s.footprint_mm + reach]])

    # The guide works from the approach side down to the cut face's far end:
    # bone deeper than that (a reach beyond it) is across the body, seen past
    # the cut bone's edge, and to the guide it is no bone (before, the slot
    # block reached down to it, through the pelvis to the other hip).
    deepest = float(sec[:, 2].min()) - reach
    bone_tri = _local_triangles(bones, frame, region)
    envelope = bone_envelope(bone_tri, region, deepest)
    # The block stands on the bone half a wall above the seat's underside, so
    # where the seat is, the block's bottom lies inside it (no two nearly
    # coincident surfaces to unite); beside the bone it keeps that much clear.
    terrain = envelope.dilated(s.contact_clearance_mm + s.wall_mm / 2.0, widen=True)
    band = (terrain.a >= window[0]) & (terrain.a <= window[1])
    wall_cols = (np.abs(terrain.b) <= block_half)
    under_block = terrain.height[np.ix_(band, wall_cols)]
    if not np.isfinite(under_block).any():
        raise PlanError(f"guides: plane {name!r}: no bone under the slot seen from guides.approach_lps")
    # Where no bone lies under the block (a notch, past the bone's ends) it
    # bridges at the height of the bone on either side along the cut line
    # rather than hanging down to the cut face's far end.
    terrain = Terrain(terrain.a, terrain.b, _bridged(terrain.height, terrain.a))
    in_block = terrain.height[np.ix_((terrain.a >= block_a[0]) & (terrain.a <= block_a[1]), wall_cols)]
    z_low = max(float(np.min(in_block[np.isfinite(in_block)])) - s.wall_mm, deepest + s.contact_clearance_mm)
    seat, seat_under = _seat(envelope, block_a, s)
    # The slot's walls reach down to the guide's underside: the seat's where
    # there is seat, else the block's. The block is built taller than needed,
    # then its top is lowered to the slot depth above the walls' rim nearby.
    bottom = np.fmin(seat_under, terrain.height)[np.ix_(band, np.abs(terrain.b) <= block_half)]
    z_top = float(np.max(bottom[np.isfinite(bottom)])) + s.slot_depth_mm + s.wall_mm
    block = _box((block_a[0], -block_half, z_low), (block_a[1], block_half, z_top))
    slot = _box((window[0], -half_slot, z_low - 2.0), (window[1], half_slot, z_top + 2.0))
    # Only the part under the block cuts it.
    below_block = terrain.coarse(COARSE_GRID_MM, (block_a[0], -block_half), (block_a[1], block_half))
    solid = ((block - below_block.manifold(z_low - 3.0)) + seat) - slot
    solid, dropped_mm3 = _largest_piece(solid)
    built = manifold_mesh(solid)
    local = np.asarray(built.vertices)
    faces_built = np.asarray(built.faces)
    walls = _slot_walls(local[:, 1], faces_built, np.asarray(built.face_normals), half_slot)
    solid = solid - _roof([local[faces_built[w]] for w in walls.values()], block_a, block_half,
                          s.slot_depth_mm, z_top)
    faces = footprint_faces(cut_bone, frame, block_a, s.footprint_mm)

    wires, wire_report, wire_warnings = kwire_holes(solid, frame, host_solid, s, block_a, block_half, z_top)
    hole_r = s.kwire_diameter_mm / 2.0 + s.slot_tolerance_mm
    solid, top = kwire_sleeves(solid, [entry for entry, _ in wires], terrain, z_low, hole_r, s)
    top = max(top, z_top)
    for row, (entry, _) in zip(wire_report, wires):
        row["guided_length_mm"] = round(_inside_along_z(solid, entry[0], entry[1], top + 5.0, z_low - 5.0), 3)
    for entry, _ in wires:   # from just under the bone surface to above the block and the sleeves
        hole = manifold3d.Manifold.cylinder(top + 3.0 - entry[2], hole_r, hole_r, KWIRE_HOLE_SEGMENTS)
        solid = solid - hole.translate((entry[0], entry[1], entry[2] - 1.0))
    mesh = solid_mesh(solid.transform(frame.to_lps_matrix()))
    kwires = tuple((frame.lps(e[None])[0], frame.lps(t[None])[0]) for e, t in wires)

    report = {"plane": name, "approach_lps": [round(float(v), 6) for v in frame.axes[:, 2]],
              "approach_tilt_from_plane_deg": round(tilt_deg, 3),
              **guide_measures(mesh, plane, frame, settings, bones=bones, bones_solid=bones_solid, host=host,
                               cut_bone=cut_bone,
                               cut_faces=cut_faces, window=window),
              "kwires": wire_report,
              "footprint": {"width_each_side_mm": s.footprint_mm, "length_mm": round(block_a[1] - block_a[0], 3),
                            "bone_area_seen_from_approach_mm2": round(float(cut_bone.area_faces[faces].sum()), 3),
                            "seat_volume_mm3": round(seat.volume(), 3),
                            "pieces_dropped_volume_mm3": round(dropped_mm3, 3)}}
    warnings = list(wire_warnings) + guide_warnings(report, settings)
    return Guide(name, mesh, frame, kwires, report, tuple(warnings))


def to_manifold(mesh: trimesh.Trimesh, what: str) -> manifold3d.Manifold:
    """As :func:`pipeline.geometry.resect.to_manifold`, from a writable copy
    (a mesh made by manifold3d holds read-only arrays, which it refuses back)."""
    copy = trimesh.Trimesh(np.array(mesh.vertices, dtype=np.float64), np.array(mesh.faces, dtype=np.int64),
                           process=False)
    return _to_manifold(copy, what)


def _seat(envelope: Terrain, block_a: tuple[float, float], s: GuidesConfig
          ) -> tuple[manifold3d.Manifold, np.ndarray]:
    """The seat in the local frame: between the bone's envelope dilated by
    the contact clearance (its underside) and by clearance + wall (its top),
    over the footprint (within ``footprint_mm`` of the plane, along the slot
    block). Seen along the approach it is a height field: it cannot reach
    under bone, so it lifts off, and its underside keeps the clearance from
    every bone it passes over (widened sideways by half a grid diagonal, as
    the terrain: where the bone slopes, the gap grows by up to that times
    the slope's sine). It ends where the underside's ball no longer meets
    bone, and is nowhere thicker than about two walls across its surface.
    Also the underside's height at each node of the grid (+inf where there
    is no seat)."""
    c, w = s.contact_clearance_mm, s.wall_mm
    top = envelope.dilated(c + w, widen=True).height
    clear = envelope.dilated(c, widen=True).height
    # At most two walls thick across its surface (not along the approach:
    # on bone sloping at 75 degrees to it, two walls along the approach were
    # half a wall across, the underside floating off the bone), the slope
    # taken at a wall's scale: node by node, over a groove the top bridges
    # with a cusp it was steep, and the seat lined the groove's walls down
    # to where they are a clearance apart, a tongue tapering to nothing.
    gradient = _top_gradient(top)
    slope = np.hypot(*gradient)
    under = np.maximum(clear, top - 2.0 * w * np.sqrt(1.0 + slope ** 2))
    # Where the underside has no bone under it (beyond the bone's outline,
    # where only the top's wider ball reaches) there is no seat.
    inside = (np.isfinite(clear) & ((envelope.a >= block_a[0]) & (envelope.a <= block_a[1]))[:, None]
              & (np.abs(envelope.b) <= s.footprint_mm)[None, :])
    if not inside.any():
        raise PlanError("guides: no bone within the footprint seen from guides.approach_lps")
    seen = np.isfinite(top)
    under = _square_ends(under, top, inside, gradient)
    floor = float(min(under[inside].min(), top[seen].min())) - 2.0
    # Outside the seat the underside lies a millimetre above the top as
    # meshed, so nothing is left there, and never lower than inside: no
    # sheet hangs from the seat's edge into the bone. Where no bone is
    # within reach the top drops to the floor, and the underside with it
    # only as the coarse top does (at the floor on the fine grid, each fine
    # node under the top's slope from a coarse node with bone to one without
    # held a needle as tall as that drop: 45 mm on the sample's sacral guide).
    # Both are meshed over the seat's nodes and one beyond (the top, which
    # touches nothing, coarse, and the underside outside the seat a
    # millimetre above that coarse top), over the same extent.
    ia, ib = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    last = np.array(inside.shape) - 1
    lo = envelope.a[max(ia[0] - 1, 0)], envelope.b[max(ib[0] - 1, 0)]
    hi = envelope.a[min(ia[-1] + 1, last[0])], envelope.b[min(ib[-1] + 1, last[1])]
    top = Terrain(envelope.a, envelope.b, np.where(seen, top, floor + 1.0)).coarse(COARSE_GRID_MM, lo, hi)
    ka = (envelope.a >= top.a[0]) & (envelope.a <= top.a[-1])
    kb = (envelope.b >= top.b[0]) & (envelope.b <= top.b[-1])
    box = np.ix_(ka, kb)
    outside = top.heights_at(envelope.a[ka], envelope.b[kb]) + 1.0
    under_mesh = Terrain(envelope.a[ka], envelope.b[kb], np.where(inside[box], under[box], outside))
    solid = top.manifold(floor) - under_mesh.manifold(floor - 1.0)
    return solid, np.where(inside, under, np.inf)


def _top_gradient(top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The gradient of ``top`` (a ball of clearance + wall rolled over the
    bone, -inf where it reaches no bone) at the scale of the seat's
    thickness (Gaussian, ``SLOPE_SMOOTH_MM``), nodes without bone taking
    their nearest's height (taken as 0 they made the slope at the bone's
    outline as steep as the bone is high)."""
    seen = np.isfinite(top)
    if not seen.any():
        return np.zeros_like(top), np.zeros_like(top)
    filled = np.where(seen, top, top[tuple(ndimage.distance_transform_edt(
        ~seen, return_distances=False, return_indices=True))])
    ga, gb = np.gradient(ndimage.gaussian_filter(filled, SLOPE_SMOOTH_MM / TERRAIN_GRID_MM), TERRAIN_GRID_MM)
    return ga, gb


def _square_ends(under: np.ndarray, top: np.ndarray, inside: np.ndarray,
                 gradient: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``under`` raised where the seat ends downhill, so that it ends square
    to itself rather than along the approach. Where the bone falls away
    past the seat's edge, an end along the approach meets the underside at
    90 degrees less the slope: a lip tapering to nothing, which breaks off
    in printing or in the wound. A point of the seat is kept only if its foot
    on the top (along the top's normal, across the seat's thickness) lies
    over the seat (``inside``): with the slope s along the direction of
    steepest rise, a point h under the top has its foot h s / (1 + s^2)
    downhill of it, so the underside rises to top - D (s + 1/s), D the
    distance from the node to the seat's edge downhill of it. The end is a
    face square to the seat through the top's edge, never nearer the bone;
    flat seats (s = 0) and ends uphill keep theirs (``gradient``: the
    top's, :func:`_top_gradient`). (Lowering the top where
    the seat ends uphill, the same rule on the underside's foot, left fins
    on the coarse top and more thin wall than it removed.)"""
    if not inside.any():
        return under
    # The top's slope (smoother than the underside's), from ``gradient``.
    ga, gb = gradient
    slope = np.hypot(ga, gb)
    smooth = SLOPE_SMOOTH_MM / TERRAIN_GRID_MM
    # Distance to the seat's edge (half a node short of the first node off
    # it) and the direction away from it.
    edge = np.maximum(ndimage.distance_transform_edt(inside) - 0.5, 0.0) * TERRAIN_GRID_MM
    ea, eb = np.gradient(ndimage.gaussian_filter(edge, smooth), TERRAIN_GRID_MM)
    cos = (ea * ga + eb * gb) / np.maximum(np.hypot(ea, eb) * slope, 1e-9)   # > 0: the edge lies downhill
    s_, c_ = slope[inside], cos[inside]
    down = np.where(c_ > 1e-3, edge[inside] / np.maximum(c_, 1e-3), np.inf)   # to the edge, downhill
    out = under.copy()
    out[inside] = np.maximum(under[inside], top[inside] - down * (s_ + 1.0 / np.maximum(s_, 1e-9)))
    return out


def _box(lo, hi) -> manifold3d.Manifold:
    lo = np.asarray(lo, dtype=np.float64)
    return manifold3d.Manifold.cube(tuple(np.asarray(hi, dtype=np.float64) - lo)).translate(tuple(lo))


def _local_triangles(mesh: trimesh.Trimesh, frame: GuideFrame, region: np.ndarray) -> np.ndarray:
    """The triangles of ``mesh`` whose (a, b) extent meets ``region``, in the local frame."""
    return _local_faces(mesh, frame, region)[1]


def _local_faces(mesh: trimesh.Trimesh, frame: GuideFrame, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, local-frame triangles) of the faces of ``mesh`` whose (a, b) extent meets ``region``."""
    lo, hi = face_boxes(mesh)
    # A first, wider choice from each face's LPS box (its centre and half
    # sizes projected on a and b), without moving every vertex.
    ab = frame.local((lo + hi) / 2)[:, :2]
    spread = (hi - lo) / 2 @ np.abs(frame.axes[:, :2])
    spread += 1e-9 * (1.0 + np.abs(ab))   # the halving's rounding
    near = np.flatnonzero(np.all(ab + spread >= region[0], axis=1) & np.all(ab - spread <= region[1], axis=1))
    tri = frame.local(np.asarray(mesh.vertices)[np.asarray(mesh.faces)[near]].reshape(-1, 3)).reshape(-1, 3, 3)
    lo, hi = corner_min(tri[:, :, :2]), corner_max(tri[:, :, :2])
    keep = np.all(hi >= region[0], axis=1) & np.all(lo <= region[1], axis=1)
    return near[keep], tri[keep]


def _largest_piece(solid: manifold3d.Manifold) -> tuple[manifold3d.Manifold, float]:
    """The largest connected piece, and the volume of the others (seat
    pieces that the trimming cut off the block)."""
    pieces = solid.decompose()
    if not pieces:
        raise PlanError("guides: the guide is empty after trimming")
    volumes = [p.volume() for p in pieces]
    best = int(np.argmax(volumes))
    return pieces[best], float(sum(volumes) - volumes[best])


@dataclass(frozen=True, eq=False)
class Terrain:
    """The bone's upper envelope along z (or a dilation of it) on a grid."""

    a: np.ndarray        # node coordinates along a (mm)
    b: np.ndarray        # node coordinates along b (mm)
    height: np.ndarray   # (len(a), len(b)) z of the dilated envelope; -inf where no bone

    def dilated(self, radius_mm: float, *, widen: bool) -> "Terrain":
        """The envelope of the bone dilated by a ball of ``radius_mm``, on
        the grid. ``widen``: the ball is widened sideways (not upwards) by
        half a grid diagonal, the farthest a point of the bone lies from the
        node that holds it (:func:`bone_envelope`), so every node around it
        is raised and the linear terrain between nodes keeps clear of a steep
        bone edge; flat tops stay exactly ``radius_mm`` above the bone."""
        slack = TERRAIN_GRID_MM * math.sqrt(0.5) if widen else 0.0
        r = int(math.ceil((radius_mm + slack) / TERRAIN_GRID_MM))
        out = np.full_like(self.height, -np.inf)
        for i in range(-r, r + 1):
            for j in range(-r, r + 1):
                dist = max(0.0, TERRAIN_GRID_MM * math.hypot(i, j) - slack)
                if dist <= radius_mm:
                    out = np.maximum(out, _shifted(self.height, i, j) + math.sqrt(radius_mm ** 2 - dist ** 2))
        return Terrain(self.a, self.b, out)

    def coarse(self, step_mm: float, lo=(-np.inf, -np.inf), hi=(np.inf, np.inf)) -> "Terrain":
        """The terrain on every k-th node (k = ``step_mm`` / grid; the last
        node kept too), over the nodes within [``lo``, ``hi``] in (a, b) and
        one coarse node beyond on each side (:func:`_coarse_nodes`)."""
        k = max(1, int(round(step_mm / TERRAIN_GRID_MM)))
        a, b = (_coarse_nodes(x, k, l, h) for x, l, h in zip((self.a, self.b), lo, hi))
        return Terrain(self.a[a], self.b[b], self.height[np.ix_(a, b)])

    def heights_at(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The height of the terrain as :meth:`manifold` meshes it (each grid
        cell split along its (i, j)-(i+1, j+1) diagonal, linear on each half)
        at the nodes ``a`` x ``b`` (within the terrain's extent)."""
        i = np.clip(np.searchsorted(self.a, a, side="right") - 1, 0, len(self.a) - 2)
        j = np.clip(np.searchsorted(self.b, b, side="right") - 1, 0, len(self.b) - 2)
        u = ((a - self.a[i]) / (self.a[i + 1] - self.a[i]))[:, None]
        v = ((b - self.b[j]) / (self.b[j + 1] - self.b[j]))[None, :]
        h = self.height
        h0, h1 = h[np.ix_(i, j)], h[np.ix_(i + 1, j)]
        h2, h3 = h[np.ix_(i + 1, j + 1)], h[np.ix_(i, j + 1)]
        return np.where(u >= v, h0 + u * (h1 - h0) + v * (h2 - h1), h0 + v * (h3 - h0) + u * (h2 - h3))

    def manifold(self, floor_z: float) -> manifold3d.Manifold:
        """The solid below the envelope down to ``floor_z`` (columns without
        bone 1 mm above the floor), closed: a height-field top, flat bottom."""
        top = np.where(np.isfinite(self.height), self.height, floor_z + 1.0)
        top = np.maximum(top, floor_z + 1.0)
        na, nb = top.shape
        aa, bb = np.meshgrid(self.a, self.b, indexing="ij")
        upper = np.column_stack([aa.ravel(), bb.ravel(), top.ravel()])
        idx = np.arange(na * nb).reshape(na, nb)
        q0, q1, q2, q3 = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
        top_f = np.concatenate([np.column_stack([q0, q1, q2]), np.column_stack([q0, q2, q3])])
        ring = np.concatenate([idx[:, 0], idx[-1, 1:], idx[-2::-1, -1], idx[0, -2:0:-1]])
        # The bottom is flat: the ring's nodes at the floor, fanned from the
        # rectangle's centre (a grid of triangles there doubled the solid).
        lower = np.vstack([upper[ring, :2], [upper[:, :2].mean(axis=0)]])
        lower = np.column_stack([lower, np.full(len(lower), floor_z)])
        below = na * nb + np.arange(len(ring))
        centre = na * nb + len(ring)
        # The ring runs counter-clockwise seen from +z; each side quad faces outward.
        nxt, below_nxt = np.roll(ring, -1), np.roll(below, -1)
        sides = np.concatenate([np.column_stack([ring, below, below_nxt]),
                                np.column_stack([ring, below_nxt, nxt])])
        bottom_f = np.column_stack([np.full(len(ring), centre), below_nxt, below])
        mesh = manifold3d.Mesh64(vert_properties=np.ascontiguousarray(np.vstack([upper, lower])),
                                 tri_verts=np.ascontiguousarray(np.vstack([top_f, bottom_f, sides]), dtype=np.uint64))
        solid = manifold3d.Manifold(mesh)
        if solid.status() != manifold3d.Error.NoError or solid.volume() <= 0:
            raise RuntimeError(f"clearance terrain is not a valid solid ({solid.status().name})")
        return solid


def bone_envelope(bone_tri: np.ndarray, region: np.ndarray, deepest: float = -np.inf) -> Terrain:
    """The upper envelope of ``bone_tri`` (local frame) over ``region``
    ([[a0, b0], [a1, b1]]) on a grid: exact at the nodes, and at least as
    high as any point of the surface (its corners, and its edges sampled a
    grid step apart) at the node nearest to it. Bone seen edge-on (a thin
    wall along the approach) can fall between nodes; it is kept, half a grid
    diagonal off at most, which the sideways widening of
    :meth:`Terrain.dilated` covers. Nodes whose envelope lies below
    ``deepest`` have no bone (-inf)."""
    bone_tri = bone_tri[corner_max(bone_tri[:, :, 2]) >= deepest]   # none of them could reach a node
    a = np.arange(region[0, 0], region[1, 0] + TERRAIN_GRID_MM, TERRAIN_GRID_MM)
    b = np.arange(region[0, 1], region[1, 1] + TERRAIN_GRID_MM, TERRAIN_GRID_MM)
    aa, bb = np.meshgrid(a, b, indexing="ij")
    high, _ = column_extremes(np.column_stack([aa.ravel(), bb.ravel()]), bone_tri[facing_up(bone_tri)])
    samples = _edge_samples(bone_tri, TERRAIN_GRID_MM)
    node = np.round((samples[:, :2] - region[0]) / TERRAIN_GRID_MM).astype(np.int64)
    ok = np.all((node >= 0) & (node < aa.shape), axis=1)
    np.maximum.at(high, node[ok, 0] * aa.shape[1] + node[ok, 1], samples[ok, 2])
    high[high < deepest] = -np.inf
    return Terrain(a, b, high.reshape(aa.shape))


def _edge_samples(tri: np.ndarray, step_mm: float) -> np.ndarray:
    """Points along the edges of the triangles ``tri``, corners included, at most ``step_mm`` apart."""
    start = tri.reshape(-1, 3)
    edge = np.roll(tri, -1, axis=1).reshape(-1, 3) - start
    count = np.maximum(1, np.ceil(np.linalg.norm(edge, axis=1) / step_mm).astype(np.int64))
    which = np.repeat(np.arange(len(start)), count)
    t = (np.arange(which.size) - np.repeat(np.cumsum(count) - count, count)) / count[which]
    return start[which] + edge[which] * t[:, None]


def _bridged(height: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``height`` (nodes along ``a`` x b) with each column's nodes without
    bone (-inf) given the height straight between its nearest nodes with
    bone along ``a`` (level beyond the last); columns without any bone stay so."""
    out = height.copy()
    for j in np.flatnonzero(np.isfinite(height).any(axis=0) & ~np.isfinite(height).all(axis=0)):
        seen = np.isfinite(height[:, j])
        out[~seen, j] = np.interp(a[~seen], a[seen], height[seen, j])
    return out


def _coarse_nodes(x: np.ndarray, k: int, lo: float, hi: float) -> np.ndarray:
    """Indices of every k-th of the nodes ``x`` (and the last), from the last
    one below ``lo`` to the first one above ``hi`` (strictly: the solid's side
    walls never lie in the faces of a box cropped to)."""
    nodes = np.unique(np.r_[np.arange(0, len(x), k), len(x) - 1])
    first = max(int(np.searchsorted(x[nodes], lo, side="left")) - 1, 0)
    last = min(int(np.searchsorted(x[nodes], hi, side="right")), len(nodes) - 1)
    return nodes[first:max(last, first + 1) + 1]


def _shifted(grid: np.ndarray, i: int, j: int) -> np.ndarray:
    """``out[x, y] = grid[x + i, y + j]``, -inf beyond the grid."""
    out = np.full_like(grid, -np.inf)
    n0, n1 = grid.shape
    out[max(0, -i):n0 - max(0, i), max(0, -j):n1 - max(0, j)] = grid[max(0, i):n0 - max(0, -i),
                                                                      max(0, j):n1 - max(0, -j)]
    return out


def footprint_faces(bone: trimesh.Trimesh, frame: GuideFrame, block_a: tuple[float, float],
                    footprint_mm: float) -> np.ndarray:
    """bool per face of ``bone``: the seat's footprint. Within
    ``footprint_mm`` of the plane, along the guide's length, facing the
    approach and seen from it (no bone above): the surface a guide lowered
    along the approach lands on. Faces under an overhang or turned away
    would hook the guide under the bone; they are left out."""
    centres = frame.local(bone.triangles_center)
    normals = np.asarray(bone.face_normals) @ frame.axes
    near = ((np.abs(centres[:, 1]) <= footprint_mm) & (centres[:, 0] >= block_a[0])
            & (centres[:, 0] <= block_a[1]) & (normals[:, 2] > 0.0))
    which = np.flatnonzero(near)
    region = np.array([centres[which, :2].min(axis=0) - 1.0, centres[which, :2].max(axis=0) + 1.0]) \
        if len(which) else np.zeros((2, 2))
    over = _local_triangles(bone, frame, region)
    high, _ = column_extremes(centres[which, :2], over[facing_up(over)])
    seen = high <= centres[which, 2] + VISIBLE_MM
    out = np.zeros(len(bone.faces), dtype=bool)
    out[which[seen]] = True
    return out


def kwire_holes(solid: manifold3d.Manifold, frame: GuideFrame, host: manifold3d.Manifold, s: GuidesConfig,
                block_a: tuple[float, float], block_half: float, z_top: float):
    """Where the K-wires go: along ``-z`` through the seat on the host side
    (anywhere from ``KWIRE_BLOCK_GAP_MM`` beside the slot block to the
    footprint's edge), spread along the cut line, each running ``kwire_depth_mm`` in the first
    stretch of host bone it meets (it never crosses a canal or a foramen to
    reach more), with ``KWIRE_BONE_MARGIN_MM`` of bone around it and
    ``KWIRE_TIP_MARGIN_MM`` beyond its tip.

    Returns ((entry, tip) per wire in the local frame, report rows, warnings)."""
    hole_r = s.kwire_diameter_mm / 2.0 + s.slot_tolerance_mm
    nearest_b = s.slot_width_mm / 2.0 + s.wall_mm + hole_r + KWIRE_BLOCK_GAP_MM
    host_local = host.transform(frame.to_local_matrix())
    lowest = float(host_local.bounding_box()[2]) - 1.0
    need = s.kwire_depth_mm + KWIRE_TIP_MARGIN_MM
    # A wire holds nothing with less than its own diameter in bone.
    least = s.kwire_diameter_mm + KWIRE_TIP_MARGIN_MM
    max_gap = s.contact_clearance_mm + KWIRE_SEAT_GAP_MM
    m = s.kwire_diameter_mm / 2.0 + KWIRE_BONE_MARGIN_MM
    best: dict[float, tuple] = {}   # a -> the best candidate there: on the seat first, then the deepest
    for a in np.arange(block_a[0] + hole_r, block_a[1] - hole_r + 1e-9, KWIRE_STEP_MM):
        for b in -np.arange(nearest_b, s.footprint_mm - hole_r - KWIRE_BONE_MARGIN_MM + 1e-9, KWIRE_STEP_MM):
            a, b = float(a), float(b)
            guide_hits = solid.ray_cast((a, b, z_top + 5.0), (a, b, lowest))
            if not guide_hits:
                continue   # no guide here: trimmed, or beyond the bone
            start_z = float(guide_hits[-1].position[2])
            centre = _chord(host_local, a, b, start_z, lowest)
            if centre is None:
                continue
            entry, chord = centre
            seated = start_z - entry[2] <= max_gap
            if a in best and (seated, chord) <= (best[a][4], best[a][2]):
                continue
            # The bone around the wire too: rays a radius plus a margin off its axis.
            for da, db in ((m, 0.0), (-m, 0.0), (0.0, m), (0.0, -m)):
                around = _chord(host_local, a + da, b + db, start_z, lowest)
                chord = min(chord, 0.0 if around is None else around[1] - max(0.0, entry[2] - around[0][2]))
                if chord <= 0.0:
                    break
            if chord >= least and (a not in best or (seated, chord) > (best[a][4], best[a][2])):
                best[a] = (a, entry, chord, float(start_z - entry[2]), seated)
    rows = [best[a] for a in sorted(best)]
    depth, k = s.kwire_depth_mm, s.kwires
    good = [r for r in rows if r[2] >= need and r[4]]
    warnings = []
    if len(good) < k and rows:   # the best bone there is, and say so
        pool = [r for r in rows if r[4]] if sum(r[4] for r in rows) >= k else rows
        deepest = max(r[2] for r in pool)
        good = [r for r in pool if r[2] >= min(need, KWIRE_FALLBACK * deepest)]
    chosen = _spread(good, k, 2 * hole_r + s.wall_mm)
    for r in chosen:
        where = _fmt(frame.lps(r[1][None])[0])
        if r[2] < need:
            warnings.append(f"K-wire at {where} LPS mm runs only {max(0.0, r[2] - KWIRE_TIP_MARGIN_MM):.1f} mm "
                            f"in host bone (guides.kwire_depth_mm = {depth:g})")
        if not r[4]:
            warnings.append(f"K-wire at {where} LPS mm enters host bone {r[3]:.1f} mm below the guide's seat, "
                            "unguided through what lies between")
    if len(chosen) < k:
        warnings.append(f"only {len(chosen)} of guides.kwires = {k} K-wires find host bone under the seat")
    chosen.sort(key=lambda r: r[0])
    wires, report = [], []
    for a, entry, chord, gap, _ in chosen:
        length = min(depth, max(0.0, chord - KWIRE_TIP_MARGIN_MM))
        tip = entry - np.array([0.0, 0.0, length])
        wires.append((entry, tip))
        report.append({"entry_lps_mm": _fmt(frame.lps(entry[None])[0]), "tip_lps_mm": _fmt(frame.lps(tip[None])[0]),
                       "direction_lps": [round(float(v), 6) for v in -frame.axes[:, 2]],
                       "length_in_bone_mm": round(length, 3), "host_bone_along_wire_mm": round(chord, 3),
                       "below_seat_mm": round(gap, 3),
                       "hole_diameter_mm": round(2 * hole_r, 3)})
    return wires, report, warnings


def kwire_sleeves(solid: manifold3d.Manifold, entries: list[np.ndarray], terrain: Terrain, z_low: float,
                  hole_r: float, s: GuidesConfig) -> tuple[manifold3d.Manifold, float]:
    """(``solid`` with a sleeve around each K-wire's axis, the highest
    sleeve's top): a tube ``wall_mm`` thick rising from the seat's underside
    at the axis to ``kwire_guide_mm`` above it, so the hole guides its wire
    over that length. Below the bone's envelope dilated by the clearance
    and half a wall (``terrain``, as under the slot block) it is cut away:
    its foot lies inside the seat, never nearer the bone than the seat's
    underside. It stands along the approach, as the guide is lifted off:
    nothing is over it."""
    outer = hole_r + s.wall_mm
    sleeves, top = [], -np.inf
    for entry in entries:
        a, b = float(entry[0]), float(entry[1])
        hits = solid.ray_cast((a, b, entry[2] + 1e3), (a, b, z_low - 5.0))
        if not hits or _inside(hits) >= s.kwire_guide_mm:
            continue
        foot = float(hits[-1].position[2])   # the seat's underside
        tube = manifold3d.Manifold.cylinder(s.kwire_guide_mm, outer, outer, KWIRE_HOLE_SEGMENTS)
        below = terrain.coarse(COARSE_GRID_MM, (a - outer - 1.0, b - outer - 1.0), (a + outer + 1.0, b + outer + 1.0))
        sleeves.append(tube.translate((a, b, foot)) - below.manifold(z_low - 3.0))
        top = max(top, foot + s.kwire_guide_mm)
    if not sleeves:
        return solid, top
    return manifold3d.Manifold.batch_boolean([solid] + sleeves, manifold3d.OpType.Add), top


def _inside_along_z(solid: manifold3d.Manifold, a: float, b: float, z_from: float, z_to: float) -> float:
    """Length of the line (a, b) from ``z_from`` down to ``z_to`` inside ``solid``."""
    return _inside(solid.ray_cast((a, b, z_from), (a, b, z_to)))


def _inside(hits) -> float:
    """Length inside a closed solid along a ray down ``z`` from outside, from its hits (entering, leaving, ...)."""
    return float(sum(hits[i].position[2] - hits[i + 1].position[2] for i in range(0, len(hits) - 1, 2)))


def _chord(solid: manifold3d.Manifold, a: float, b: float, z_from: float, z_to: float):
    """(entry point, length inside) of the first stretch of ``solid`` that
    the line (a, b) meets going down from ``z_from``; None if it meets none."""
    hits = solid.ray_cast((a, b, z_from), (a, b, z_to))
    if len(hits) < 2 or hits[0].normal[2] <= 0:
        return None
    entry = np.asarray(hits[0].position, dtype=np.float64)
    return entry, float(entry[2] - hits[1].position[2])


def _spread(rows: list, k: int, min_apart_mm: float) -> list:
    """Up to ``k`` rows (sorted along the cut line) spread evenly over its
    length, at least ``min_apart_mm`` apart."""
    chosen: list = []
    if not rows:
        return chosen
    targets = np.linspace(rows[0][0], rows[-1][0], k)
    for target in targets:
        free = [r for r in rows if all(abs(r[0] - c[0]) >= min_apart_mm for c in chosen)]
        if free:
            chosen.append(min(free, key=lambda r: abs(r[0] - target)))
    return chosen


def _fmt(point) -> list[float]:
    return [round(float(v), 3) for v in point]


def guide_measures(mesh: trimesh.Trimesh, plane: Plane, frame: GuideFrame, s: GuidesConfig, *,
                   bones: trimesh.Trimesh, bones_solid: manifold3d.Manifold, host: trimesh.Trimesh,
                   cut_faces: np.ndarray, window: tuple[float, float], cut_bone: trimesh.Trimesh | None = None) -> dict:
    """What the finished guide measures (see the module docstring)."""
    local = frame.local(mesh.vertices)
    tri = local[np.asarray(mesh.faces)]
    normals = np.asarray(mesh.face_normals) @ frame.axes
    return {"slot": _slot_measures(mesh, plane, local, normals, s),
            **_contact_measures(mesh, normals, bones, s, plane.signed_distance_mm, cut_bone),
            "intersection_with_bone_mm3": round(_intersection_mm3(mesh, bones_solid), 6),
            "lift_off": _lift_off(tri, local, np.asarray(mesh.faces), frame, bones),
            "blade_reach": _blade_reach(tri, frame, host, cut_faces, window),
            "walls": wall_figures(mesh, THIN_WALL_MM),
            "volume_mm3": round(float(mesh.volume), 3), "triangles": int(len(mesh.faces))}


def _slot_measures(mesh, plane, local, normals, s: GuidesConfig) -> dict:
    """The slot's walls as built: the faces facing the plane from
    ``slot_width/2`` either side. Their mid-plane's distance and angle to the
    cut plane are the design error; the flatness is how far any corner of a
    wall lies from it (float32 rounding and needle repairs)."""
    d = plane.signed_distance_mm(mesh.vertices)
    faces = np.asarray(mesh.faces)
    walls = _slot_walls(d, faces, normals, s.slot_width_mm / 2.0)
    if not all(len(w) for w in walls.values()):
        return {"found": False}
    plus, minus = (np.unique(faces[walls[side]]) for side in (1.0, -1.0))
    mid = (d[plus].mean() + d[minus].mean()) / 2.0
    n = np.asarray(plane.normal_lps)
    # The walls' common normal: the least-squares plane through both walls'
    # corners, each wall about its own centre (a tiny triangle's own normal
    # says more about float32 than about the wall).
    v = np.asarray(mesh.vertices)
    centred = np.vstack([v[plus] - v[plus].mean(axis=0), v[minus] - v[minus].mean(axis=0)])
    fitted = np.linalg.svd(centred, full_matrices=False)[2][-1]
    sine = np.linalg.norm(np.cross(fitted, n))
    return {"found": True, "width_mm": round(float(d[plus].mean() - d[minus].mean()), 9),
            "depth_mm": round(_slot_depth(local, faces, walls), 3),
            "midplane_distance_mm": float(abs(mid)),
            "midplane_angle_deg": float(math.degrees(math.asin(min(1.0, float(sine))))),
            "wall_flatness_mm": float(max(np.ptp(d[plus]), np.ptp(d[minus]))),
            "length_mm": round(float(np.ptp(local[plus, 0])), 3)}


def _slot_walls(b: np.ndarray, faces: np.ndarray, normals_local: np.ndarray, half: float) -> dict[float, np.ndarray]:
    """The slot's wall faces on either side (+1: the removed side), from the
    corners' distances ``b`` to the cut plane: facing the plane, every corner
    half a slot width from it."""
    walls = {}
    for side in (1.0, -1.0):
        facing = normals_local[:, 1] * side < -0.5
        walls[side] = np.flatnonzero(facing & np.all(np.abs(b[faces] - side * half) < WALL_SELECT_MM, axis=1))
    return walls


def _slot_depth(local: np.ndarray, faces: np.ndarray, walls: dict[float, np.ndarray]) -> float:
    """The slot's guiding length: the least height of its walls, from their
    lower rim to the top, across the cut line at every corner of the walls
    between the end walls (a hair inside them): rim and top are straight
    between corners, so the least height lies at one of them."""
    depth = np.inf
    for side in walls.values():
        tri = local[faces[side]]
        ends = tri[:, :, 0].min() + WALL_SELECT_MM, tri[:, :, 0].max() - WALL_SELECT_MM
        corners = tri[:, :, 0].ravel()
        low, high = _wall_span(tri, np.unique(np.r_[ends, corners[(corners > ends[0]) & (corners < ends[1])]]))
        depth = min(depth, float(np.nanmin(high - low)))
    return depth


def _wall_span(tri: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) z of the triangles ``tri`` (local frame) on the line
    across the cut line at each of ``a`` (sorted): where the line crosses
    their edges. NaN where no triangle reaches."""
    low, high = np.full(len(a), np.inf), np.full(len(a), -np.inf)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        p, q = tri[:, i], tri[:, j]
        first = np.searchsorted(a, np.minimum(p[:, 0], q[:, 0]), side="left")
        count = np.searchsorted(a, np.maximum(p[:, 0], q[:, 0]), side="right") - first
        edge = np.repeat(np.arange(len(tri)), count)
        at = np.arange(edge.size) - np.repeat(np.cumsum(count) - count, count) + np.repeat(first, count)
        run = q[edge, 0] - p[edge, 0]
        t = np.divide(a[at] - p[edge, 0], run, out=np.zeros(edge.size), where=run != 0)
        z = p[edge, 2] + t * (q[edge, 2] - p[edge, 2])
        # An edge across the line at one a (along z) holds both its ends.
        for value in (z, np.where(run == 0, q[edge, 2], z)):
            np.minimum.at(low, at, value)
            np.maximum.at(high, at, value)
    missing = ~np.isfinite(low)
    low[missing], high[missing] = np.nan, np.nan
    return low, high


def _roof(walls: list[np.ndarray], block_a: tuple[float, float], block_half: float, depth_mm: float,
          z_top: float) -> manifold3d.Manifold:
    """What is cut off the block's top so that it stands ``depth_mm`` above
    the slot walls' lower rim (``walls``: each wall's triangles as built,
    local frame; the higher of the two rims), following it along the cut
    line: at each node (``COARSE_GRID_MM`` apart) the depth above the
    highest rim within ``TOP_SPAN_MM``, straight between nodes (so at least
    the depth above every point of the rim), and beyond the walls' ends
    level with their last node. The block's top was flat, the depth above
    the highest rim: where the bone under the slot falls away along the cut
    line, the block stood tens of millimetres taller than the slot needs."""
    # The rim is straight between the walls' corners: its highest points
    # within any stretch lie at a corner or at the stretch's ends.
    nodes = np.append(np.arange(block_a[0], block_a[1], COARSE_GRID_MM), block_a[1])
    fine = np.unique(np.concatenate([nodes - TOP_SPAN_MM, nodes + TOP_SPAN_MM]
                                    + [tri[:, :, 0].ravel() for tri in walls]))
    rim = np.fmax(*[_wall_span(tri, fine)[0] for tri in walls])
    near = np.abs(fine[None, :] - nodes[:, None]) <= TOP_SPAN_MM
    top = np.max(np.where(near, np.nan_to_num(rim, nan=-np.inf)[None, :], -np.inf), axis=1) + depth_mm
    seen = np.isfinite(top)
    if not seen.any():
        return manifold3d.Manifold()
    top = np.interp(nodes, nodes[seen], top[seen])   # level beyond the walls' ends
    top = np.minimum(top, z_top)
    ceiling = z_top + 1.0
    # A millimetre past the block's ends, level.
    outline = np.vstack([[[nodes[0] - 1.0, top[0]]], np.column_stack([nodes, top]),
                         [[nodes[-1] + 1.0, top[-1]], [nodes[-1] + 1.0, ceiling], [nodes[0] - 1.0, ceiling]]])
    width = 2.0 * block_half + 2.0
    prism = manifold3d.Manifold.extrude(manifold3d.CrossSection([outline]), width)
    # (x, y, Z) of the extrusion -> (a, b, z): a = x, z = y, b = width / 2 - Z (a rotation).
    return prism.transform(np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, width / 2.0],
                                     [0.0, 1.0, 0.0, 0.0]]))


def _contact_measures(mesh, normals, bones, s: GuidesConfig, removed, cut_bone=None) -> dict:
    """The seat's underside against the bone: the guide's faces looking down
    the approach whose nearest bone point lies straight along that bone
    face's normal (not on an edge or a corner of the bone: beside an edge the
    gap is larger by design). Gap: exact distances from their corners and
    centres; seat area: those within ``CONTACT_BAND_MM`` of the clearance.
    Also the closest approach of the whole guide to the bone, at the corners
    and centres of its faces that do not look up (the underside's cut into
    the pieces it is judged in). ``removed``: points -> signed distance to
    the cut plane (positive on the removed side). With ``cut_bone`` (the
    bones the plan cuts), also the seat area on them: the rest rests on
    other bones (a femur, which moves)."""
    reach = s.contact_clearance_mm + s.wall_mm
    lo, hi = np.asarray(mesh.bounds) + [[-reach - 1.0], [reach + 1.0]]
    v = np.asarray(bones.vertices)
    face_lo, face_hi = face_boxes(bones)
    overlaps = np.all(face_hi >= lo, axis=1) & np.all(face_lo <= hi, axis=1)
    near_faces = np.asarray(bones.faces)[overlaps]
    if not len(near_faces):
        return {"seat_area_on_bone_mm2": 0.0, "contact_gap_mm": None, "closest_to_bone_mm": None}
    bones = NearSurface(vertices=v, faces=near_faces)
    faces_all, vertices = np.asarray(mesh.faces), np.asarray(mesh.vertices)
    # The underside, cut into triangles no longer than UNDER_EDGE_MM so
    # that a large flat face is judged piece by piece (faces with no longer
    # edge stay as they are). The pieces are used as the subdivision returns
    # them, vertices and faces together: how it numbers its vertices differs
    # between trimesh releases (4.x keeps only those its faces use).
    is_under = normals[:, 2] <= -UNDERSIDE_COS
    used, index = np.unique(faces_all[is_under], return_inverse=True)
    uv, uf = trimesh.remesh.subdivide_to_size(vertices[used], index.reshape(-1, 3), max_edge=UNDER_EDGE_MM)
    uv, uf = np.asarray(uv, dtype=np.float64), np.asarray(uf, dtype=np.int64).reshape(-1, 3)
    fine = trimesh.Trimesh(uv, uf, process=False)
    fine_normals = np.asarray(fine.face_normals) if len(uf) else np.zeros((0, 3))
    centres = fine.triangles_center
    # The closest approach lies on a face that does not look up (the top of
    # the block and of the seat look away from the bone): the underside's
    # pieces, and the other such faces (side walls) at their corners and centres.
    side = (normals[:, 2] < UNDERSIDE_COS) & ~is_under
    probe = np.vstack([vertices[np.unique(faces_all[side])], mesh.triangles_center[side]])
    # Every piece's centre and corner, and the probes, measured in one query,
    # all of them: nearly all lie within reach of the bone (the seat), and
    # bounding each point's distance first to skip the few that do not cost
    # more than it saved (0.42 s against 0.28 s for 200k points).
    measured = bones.query(np.vstack([centres, uv, probe]))
    split = np.cumsum([len(centres), len(uv)])
    at_centre, at_corner, _ = zip(*(np.split(m, split) for m in measured))
    closest = round(float(measured[0].min()), 4)
    gap_c, facing_c = _facing_gap(centres, fine_normals, bones, at_centre)
    faces = np.flatnonzero((gap_c <= reach) & facing_c)
    if not len(faces):
        return {"seat_area_on_bone_mm2": 0.0, "contact_gap_mm": None, "closest_to_bone_mm": closest}
    # Each corner judged with each of its faces' normals.
    corner = uf[faces].ravel()
    gap_v, facing_v = _facing_gap(uv[corner], np.repeat(fine_normals[faces], 3, axis=0), bones,
                                  tuple(m[corner] for m in at_corner))
    area = fine.area_faces[faces]
    gaps = np.concatenate([gap_c[faces], gap_v[facing_v]])
    on_bone = gap_c[faces] <= s.contact_clearance_mm + CONTACT_BAND_MM
    on_cut = {}
    if cut_bone is not None:
        seat = centres[faces][on_bone]
        near_cut = NearSurface(cut_bone, seat.min(axis=0) - reach, seat.max(axis=0) + reach) if len(seat) else None
        mine = near_cut.query(seat, limit=reach, closest_points=False)[0] <= s.contact_clearance_mm + CONTACT_BAND_MM \
            if near_cut is not None else np.zeros(0, dtype=bool)
        on_cut = {"seat_area_on_cut_bones_mm2": round(float(area[on_bone][mine].sum()), 3)}
    return {"seat_area_on_bone_mm2": round(float(area[on_bone].sum()), 3), **on_cut,
            "seat_area_on_removed_side_mm2": round(float(area[on_bone & (removed(centres[faces]) > 0)]
                                                         .sum()), 3),
            "contact_gap_mm": {"min": round(float(gaps.min()), 4),
                               "mean": round(float((gap_c[faces] * area).sum() / area.sum()), 4),
                               "max": round(float(gaps.max()), 4)},
            "closest_to_bone_mm": closest}


def _facing_gap(points, normals, bones: NearSurface, measured) -> tuple[np.ndarray, np.ndarray]:
    """(distance to the bone, whether the bone is met straight along its
    face's normal and the guide face looks back at it), per point;
    ``measured``: the points' :meth:`NearSurface.query` (points it left
    unmeasured, beyond its limit, do not face the bone)."""
    gap, nearest, foot = measured
    near = np.flatnonzero(nearest >= 0)
    t = bones.vertices[bones.faces[nearest[near]]]
    bone_normal = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    bone_normal /= np.maximum(np.linalg.norm(bone_normal, axis=1, keepdims=True), 1e-300)
    along = np.einsum("ij,ij->i", points[near] - foot[near], bone_normal)
    looks = np.einsum("ij,ij->i", np.asarray(normals)[near], bone_normal) <= -UNDERSIDE_COS
    facing = np.zeros(len(gap), dtype=bool)
    facing[near] = (along >= (1.0 - 1e-6) * gap[near]) & looks
    return gap, facing


def _intersection_mm3(mesh: trimesh.Trimesh, bones_solid: manifold3d.Manifold) -> float:
    both = to_manifold(mesh, "guide") ^ bones_solid
    return 0.0 if both.is_empty() else float(both.volume())


def _lift_off(tri, local, faces, frame, bones) -> dict:
    """Lifted along the approach, does the guide meet bone? It does exactly
    when some column holds bone above guide. The lowest guide point of a
    column lies on a face looking down, the highest bone point on one looking
    up, so those are compared both ways with exact column heights: bone
    above a corner or face centre of the guide's downward faces, guide below
    a corner of the bone's upward faces."""
    looks_down = facing_up(tri, -1.0)
    down = tri[looks_down]
    lo, hi = corner_min(tri[:, :, :2]).min(axis=0) - 0.5, corner_max(tri[:, :, :2]).max(axis=0) + 0.5
    up_faces, up = _local_faces(bones, frame, np.array([lo, hi]))
    looks_up = facing_up(up)
    up, up_faces = up[looks_up], up_faces[looks_up]
    # Only points that some triangle of the other side could pass are
    # measured: on a grid of LIFT_CELL_MM, a guide point lower than the
    # highest bone whose box meets its cell, a bone point higher than the
    # lowest guide there. The others are clear by that bound alone.
    shape = tuple(int(n) for n in np.floor((hi - lo) / LIFT_CELL_MM).astype(np.int64) + 1)
    bone_top, _ = cell_bounds(up, lo, LIFT_CELL_MM, shape)
    _, guide_bottom = cell_bounds(down, lo, LIFT_CELL_MM, shape)
    points = np.vstack([local[np.unique(faces[looks_down])], down.mean(axis=1)])
    cell, _ = cell_of(points[:, :2], lo, LIFT_CELL_MM, shape)
    points = points[points[:, 2] < bone_top[cell[:, 0], cell[:, 1]]]
    bone_high, _ = column_extremes(points[:, :2], up)
    under_bone = bone_high - points[:, 2]
    bone_points = frame.local(np.asarray(bones.vertices)[np.unique(np.asarray(bones.faces)[up_faces])])
    cell, inside = cell_of(bone_points[:, :2], lo, LIFT_CELL_MM, shape)
    bone_points = bone_points[inside & (bone_points[:, 2] > guide_bottom[cell[:, 0], cell[:, 1]])]
    _, guide_low = column_extremes(bone_points[:, :2], down)
    over_guide = bone_points[:, 2] - guide_low
    worst = max(float(under_bone.max(initial=-np.inf)), float(over_guide.max(initial=-np.inf)), 0.0)
    count = int((under_bone > LIFT_TOL_MM).sum() + (over_guide > LIFT_TOL_MM).sum())
    return {"removable": count == 0, "points_under_bone": count, "deepest_undercut_mm": round(worst, 4)}


def _blade_reach(tri, frame, host, cut_faces, window) -> dict:
    """Share of the cut face (its corners and face centres) that a blade
    entering the slot along the approach reaches without meeting the guide."""
    faces = np.asarray(host.faces)[cut_faces]
    points = frame.local(np.vstack([host.vertices[np.unique(faces)], host.triangles_center[cut_faces]]))
    _, guide_low = column_extremes(points[:, :2], tri)
    blocked = np.isfinite(guide_low) & (guide_low > points[:, 2])
    inside = (points[:, 0] >= window[0]) & (points[:, 0] <= window[1])
    return {"reached_fraction": round(float(1.0 - (blocked | ~inside).mean()), 6),
            "points": int(len(points))}


def guide_warnings(report: dict, s: GuidesConfig) -> list[str]:
    name = report["plane"]
    out = []
    if not report["lift_off"]["removable"]:
        out.append(f"guide {name}: cannot be lifted off along the approach: bone above the guide at "
                   f"{report['lift_off']['points_under_bone']} points (up to "
                   f"{report['lift_off']['deepest_undercut_mm']:.2f} mm)")
    if report["intersection_with_bone_mm3"] > INTERSECTION_TOL_MM3:
        out.append(f"guide {name}: intersects the bone by {report['intersection_with_bone_mm3']:.3f} mm3")
    if report["blade_reach"]["reached_fraction"] < 1.0:
        out.append(f"guide {name}: the blade reaches only {100 * report['blade_reach']['reached_fraction']:.1f} % "
                   "of the cut face through the slot")
    if not report["slot"].get("found"):
        out.append(f"guide {name}: no slot walls found on the finished guide")
    walls = report["walls"]
    if walls["wall_thickness_p5_mm"] < THIN_WALL_MM:
        out.append(f"guide {name}: 5 % of its surface has walls under {walls['wall_thickness_p5_mm']:.2f} mm "
                   f"({walls[f'area_over_walls_under_{THIN_WALL_MM:g}_mm_mm2']:.0f} mm2 over walls under "
                   f"{THIN_WALL_MM:g} mm: fins, slivers and lips where it follows steep or narrow bone or an edge "
                   "of it, which may break off in printing or in the wound); look at it before printing")
    if report["seat_area_on_bone_mm2"] < MIN_SEAT_AREA_MM2:
        out.append(f"guide {name}: seat area on bone only {report['seat_area_on_bone_mm2']:.0f} mm2 "
                   f"(under {MIN_SEAT_AREA_MM2:g}): it may rock; widen guides.footprint_mm or change "
                   "guides.approach_lps")
    elif report.get("seat_area_on_cut_bones_mm2", MIN_SEAT_AREA_MM2) < MIN_SEAT_AREA_MM2:
        out.append(f"guide {name}: its seat rests on other bones: only {report['seat_area_on_cut_bones_mm2']:.0f} "
                   f"of {report['seat_area_on_bone_mm2']:.0f} mm2 on the bones the plan cuts (a femur moves); "
                   "change guides.approach_lps or guides.footprint_mm")
    return out


def cutting_guides(planes: tuple[Plane, ...], settings: GuidesConfig, *, bones: trimesh.Trimesh,
                   cut_bone: trimesh.Trimesh, host: trimesh.Trimesh, cut_faces: tuple[np.ndarray, ...]
                   ) -> tuple[Guide, ...]:
    """One guide per plane (``planes``: the cut planes, margins applied;
    ``cut_faces``: the host's faces on each); see :func:`cutting_guide`."""
    bones_solid, host_solid = parallel(lambda: to_manifold(bones, "bone"), lambda: to_manifold(host, "host"))
    # Two planes on two threads: the work is numpy and manifold3d, which release the GIL.
    return tuple(parallel(*[(lambda p=p, faces=faces: cutting_guide(
        p, settings.approach_for(p.name), settings, bones=bones, cut_bone=cut_bone, host=host, cut_faces=faces,
        bones_solid=bones_solid, host_solid=host_solid)) for p, faces in zip(planes, cut_faces)]))


def kwire_mesh(guide: Guide, diameter_mm: float, above_mm: float = 25.0) -> trimesh.Trimesh | None:
    """The guide's K-wires as closed cylinders (for views): from ``above_mm``
    over the entry point down to the tip."""
    parts = []
    for entry, tip in guide.kwires:
        axis = entry - tip
        top = entry + above_mm * axis / np.linalg.norm(axis)
        parts.append(trimesh.creation.cylinder(radius=diameter_mm / 2.0, segment=np.array([tip, top]),
                                               sections=KWIRE_HOLE_SEGMENTS))
    return trimesh.util.concatenate(parts) if parts else None
