"""A plate that follows the bone: the bone's outer surface over a footprint,
offset by a clearance and thickened into a closed solid.

Flanges of a fixed implant and the seats of cutting guides are such plates.
The API, for both::

    plate = bone_plate(bone, footprint, clearance_mm=0.5, thickness_mm=3.0)
    contact = plate_contact(plate, bone, clearance_mm=0.5, thickness_mm=3.0)

- ``bone``: the closed, outward-oriented bone mesh the plate lies on (LPS mm);
- ``footprint``: a tuple of :class:`~pipeline.config.Plane`; the plate is
  what lies behind every one of them (signed distance <= 0: each normal
  points into what is cut away, as for resection planes). :func:`band`
  gives the two planes of a band along a cut plane, :func:`facing` the
  half-space towards an approach direction;
- the plate is ``{x : clearance_mm <= distance(x, bone) <= clearance_mm +
  thickness_mm, x outside the bone}`` within the footprint: its bone-facing
  side is the offset surface at ``clearance_mm`` (it never touches the bone
  for a clearance > 0), its outer side the offset at ``clearance_mm +
  thickness_mm``, its side walls lie exactly in the footprint planes.

How: the signed distance to the bone is computed on a grid of
``spacing_mm`` around the footprint (signs from the winding number along
grid rays; exact point-to-triangle distances in a band around the
surface, :class:`~pipeline.geometry.distance.NearSurface`),
the shell between the two offsets is extracted by marching cubes, and the
footprint planes trim it exactly (manifold3d). Linear interpolation of a
distance field is exact for a flat bone and off by about ``spacing² / (8 R)``
on a bone of curvature radius ``R``, so the gap equals the clearance to
well under 0.05 mm at the default spacing wherever the bone is not sharper
than a few millimetres. The field is nudged off zero at grid points so no
two vertices come closer than 1e-3 spacing: the mesh survives float32 and
welding as an STL reader does it.

:func:`plate_contact` measures the result: the bone-facing faces, their area
and the gap (distance of their vertices and centres to the bone).
"""

from __future__ import annotations

from dataclasses import dataclass

import manifold3d
import numpy as np
import trimesh
from scipy.spatial import cKDTree

from ..config import Plane
from ..errors import MeshError
from ..geometry.distance import NearSurface, face_boxes
from ..geometry.meshes import corner_max, corner_min, edge_lengths, reader_defects, reader_touching_edges, remove_needles
from ..geometry.level_set import field_solid
from ..geometry.resect import cutter_for
from ..segment.distance_map import distance_to_false
from ..segment.voxelise import inside_mesh

DEFAULT_SPACING_MM = 0.5
# Plate pieces smaller than this are slivers of the trim, not plate (mm3).
MIN_PIECE_MM3 = 1.0
SLIVER_MM = 1e-4
# Parts of a boolean's result touching along an edge (an STL reader welds
# their corners into an edge of four triangles) are fused by a rod this thick
# (mm) along it: a cutting guide's slot wall met another face so.
FUSE_MM = 0.02
# Faces within this of a plane lie on it (mm).
ON_PLANE_MM = 1e-6
# A plate face looks at the bone when its normal is within 60 degrees of the
# way to the nearest bone point (side walls stand at about 90 degrees).
FACING_COSINE = 0.5


def band(plane: Plane, from_mm: float, to_mm: float) -> tuple[Plane, Plane]:
    """The footprint planes of the band where ``from_mm <= plane.signed_distance_mm
    <= to_mm`` (positive: the side ``plane``'s normal points to)."""
    if not to_mm > from_mm:
        raise ValueError(f"band: to_mm ({to_mm}) must exceed from_mm ({from_mm})")
    n = np.asarray(plane.normal_lps)
    p = np.asarray(plane.point_lps_mm)
    return (Plane(point_lps_mm=tuple(p + to_mm * n), normal_lps=tuple(n)),
            Plane(point_lps_mm=tuple(p + from_mm * n), normal_lps=tuple(-n)))


def facing(point_lps_mm, direction_lps) -> Plane:
    """The footprint plane keeping the half-space that ``direction_lps``
    points to from ``point_lps_mm`` (e.g. the side a surgeon approaches from)."""
    return Plane(point_lps_mm=tuple(point_lps_mm), normal_lps=tuple(-np.asarray(direction_lps, dtype=float)))


def bone_plate(bone: trimesh.Trimesh, footprint: tuple[Plane, ...], clearance_mm: float,
               thickness_mm: float, **options) -> trimesh.Trimesh:
    """:func:`plate_solid` as a trimesh in LPS mm that an STL reader reads as
    a clean solid (:func:`solid_mesh`)."""
    return solid_mesh(plate_solid(bone, footprint, clearance_mm, thickness_mm, **options))


def plate_solid(bone: trimesh.Trimesh, footprint: tuple[Plane, ...], clearance_mm: float,
                thickness_mm: float, *, spacing_mm: float = DEFAULT_SPACING_MM,
                fill_beyond: tuple[Plane, ...] = (),
                keep_off: tuple[trimesh.Trimesh, ...] = (),
                near: tuple[np.ndarray, float] | None = None) -> manifold3d.Manifold:
    """The closed plate on ``bone`` over ``footprint`` (see the module
    docstring), as a manifold3d solid (for booleans that follow); several
    shells where the footprint covers separate pieces of bone surface.
    Raises :class:`EmptyPlate` when the footprint holds no bone surface.

    ``fill_beyond``: where a point lies beyond all of these planes (signed
    distance > 0; e.g. the resected region, whose bone the implant
    replaces), the plate has no clearance and fills the bone down to the
    bottom of the grid's band: a flange so overlaps the implant it is united
    with.

    ``keep_off``: other closed solids (the other bones) the plate keeps
    ``clearance_mm`` away from and never enters.

    ``near``: (points (k, 3), radius mm): the plate holds only points within
    the radius of one of them (samples along a cut's edge, closer together
    than the grid step: a footprint plane bounds a strip along a cut, and
    where the bone's surface runs along the plane or on past the cut's end,
    so would the plate). Its boundary there is the level set on the grid,
    not a plane."""
    if clearance_mm < 0 or thickness_mm <= 0 or spacing_mm <= 0:
        raise ValueError("a plate needs clearance_mm >= 0, thickness_mm > 0 and spacing_mm > 0")
    if not footprint:
        raise ValueError("a plate needs at least one footprint plane")
    outer = clearance_mm + thickness_mm
    reach = outer + 2 * spacing_mm
    box = _grid_box(bone, footprint, reach, spacing_mm, near)
    if box is None:
        raise EmptyPlate("plate: no bone surface within its footprint")
    origin, shape = box
    signed = _signed_distance(bone, origin, shape, spacing_mm, reach, footprint)
    # Inside the plate where both are negative: beyond the clearance, within the outer offset.
    lower = np.full(shape, clearance_mm)
    if fill_beyond:
        # Two grid steps beyond the planes (so marching cubes places the step
        # there, never on the near side), the plate reaches a thickness into the bone.
        beyond = np.all([_plane_on_grid(p, origin, shape, spacing_mm) > 2 * spacing_mm for p in fill_beyond], axis=0)
        lower[beyond] = -thickness_mm
    field = np.maximum(lower - signed, signed - outer)
    # Only where the plate could be: within its outer offset of the bone.
    where = np.flatnonzero((field < spacing_mm).reshape(-1)) if keep_off or near is not None else None
    if near is not None:
        samples, radius = near
        points = origin + np.stack(np.unravel_index(where, shape), axis=1) * spacing_mm
        d, _ = cKDTree(samples).query(points, distance_upper_bound=radius + spacing_mm)
        flat = field.reshape(-1)
        flat[where] = np.maximum(flat[where], np.minimum(d, radius + spacing_mm) - radius)
    for other in keep_off:
        d = _signed_distance_at(other, origin, shape, spacing_mm, where, clearance_mm + 2 * spacing_mm)
        flat = field.reshape(-1)
        flat[where] = np.maximum(flat[where], clearance_mm - d)
    plate = _trimmed(field_solid(field, origin, spacing_mm, "plate shell"), footprint)
    if plate is None or plate.is_empty():
        raise EmptyPlate("plate: nothing left of the plate within its footprint")
    pieces = [p for p in plate.decompose() if p.volume() >= MIN_PIECE_MM3]
    if not pieces:
        raise EmptyPlate("plate: nothing left of the plate within its footprint")
    return manifold3d.Manifold.batch_boolean(pieces, manifold3d.OpType.Add)


def solid_mesh(m: manifold3d.Manifold) -> trimesh.Trimesh:
    """The mesh of a boolean's result, without the slivers that booleans and
    plane trims leave where surfaces nearly meet, as an STL reader would see
    a clean solid: its needles removed
    (:func:`~pipeline.geometry.meshes.remove_needles`), then, while defects
    remain, the solid simplified within ``SLIVER_MM`` (10 and 100 times that
    next, 0.01 mm at most; each pass moves the surface by at most its
    tolerance) and repaired again. Where parts of it touch along an edge as
    read back (closer than float32 tells apart: four triangles on one edge),
    a rod ``FUSE_MM`` thick along each such edge fuses them, once, before the
    tolerance grows: no simplification parts them. The last attempt is
    returned when none is clean (the caller checks)."""
    fused = False
    tolerances = iter(SLIVER_TOLERANCES)
    tolerance = next(tolerances)
    while True:
        mesh = _repaired(manifold_mesh(m.simplify(tolerance) if tolerance else m))
        if not any(reader_defects(mesh).values()):
            return mesh
        touching = [] if fused else reader_touching_edges(mesh)
        if len(touching):
            m, fused = m + _rods(touching, FUSE_MM), True
            continue
        tolerance = next(tolerances, None)
        if tolerance is None:
            return mesh


# The simplification tolerances tried in turn (mm).
SLIVER_TOLERANCES = (0.0, SLIVER_MM, 10 * SLIVER_MM, 100 * SLIVER_MM)


def _repaired(mesh: trimesh.Trimesh, rounds: int = 3) -> trimesh.Trimesh:
    """``mesh`` with its needles removed, again while a round changes it and
    its defects (a repair or a fin's removal can uncover the next; a round
    that leaves the same counts flips edges to and fro), ``rounds`` at most."""
    defects = None
    for _ in range(rounds):
        mesh, changed = remove_needles(mesh)
        if not changed:
            return mesh
        defects, before = reader_defects(mesh), defects
        if not any(defects.values()) or defects == before:
            return mesh
    return mesh


def _rods(segments: np.ndarray, width_mm: float) -> manifold3d.Manifold:
    """Square rods ``width_mm`` thick along each of (k, 2, 3) segments."""
    corners = (np.indices((2, 2, 2)).reshape(3, -1).T - 0.5) * width_mm
    return manifold3d.Manifold.batch_boolean(
        [manifold3d.Manifold.hull_points(np.concatenate([a + corners, b + corners])) for a, b in segments],
        manifold3d.OpType.Add)


def _trimmed(m: manifold3d.Manifold | None, planes: tuple[Plane, ...]) -> manifold3d.Manifold | None:
    """``m`` behind every plane; None when nothing is left. One intersection
    with the convex region behind them (:func:`cutter_for`, whose faces lie
    in the planes to ~1e-14 mm): half the time of trimming plane by plane,
    the same volume to 1e-11 mm3."""
    if m is None:
        return None
    behind = tuple(facing(p.point_lps_mm, p.normal_lps) for p in planes)
    m = m ^ cutter_for(behind, np.asarray(m.bounding_box(), dtype=float).reshape(2, 3))
    return None if m.is_empty() else m


def manifold_mesh(m: manifold3d.Manifold) -> trimesh.Trimesh:
    """A manifold3d solid as a trimesh (double precision)."""
    out = m.to_mesh64()
    # Copies: manifold3d's buffers are read-only, and it takes only writeable arrays back.
    return trimesh.Trimesh(vertices=np.array(out.vert_properties, dtype=np.float64)[:, :3].copy(),
                           faces=np.array(out.tri_verts, dtype=np.int64), process=False)


def _grid_box(bone: trimesh.Trimesh, footprint: tuple[Plane, ...], reach: float, spacing: float,
              near: tuple[np.ndarray, float] | None = None):
    """(origin, shape) of the grid holding every point within ``reach`` of the
    bone's surface inside the footprint (and within ``near``'s radius of its
    points' box); None without such surface."""
    tri = np.asarray(bone.vertices, dtype=np.float64)[np.asarray(bone.faces)]
    near_faces = np.ones(len(tri), dtype=bool)
    for plane in footprint:
        near_faces &= corner_min(plane.signed_distance_mm(tri.reshape(-1, 3)).reshape(-1, 3)) <= reach
    if near is not None:
        points, radius = near
        lo, hi = points.min(axis=0) - radius - reach, points.max(axis=0) + radius + reach
        near_faces &= np.all((corner_max(tri) >= lo) & (corner_min(tri) <= hi), axis=1)
    if not near_faces.any():
        return None
    lo = tri[near_faces].reshape(-1, 3).min(axis=0) - reach - spacing
    hi = tri[near_faces].reshape(-1, 3).max(axis=0) + reach + spacing
    if near is not None:
        lo = np.maximum(lo, points.min(axis=0) - radius - spacing)
        hi = np.minimum(hi, points.max(axis=0) + radius + spacing)
    shape = tuple(int(s) for s in np.ceil((hi - lo) / spacing).astype(int) + 1)
    return lo, shape


def _plane_on_grid(plane: Plane, origin: np.ndarray, shape: tuple[int, int, int], spacing: float) -> np.ndarray:
    """The plane's signed distance at every grid point (a sum of one term per axis)."""
    n = np.asarray(plane.normal_lps, dtype=np.float64)
    terms = [(origin[k] + np.arange(shape[k]) * spacing) * n[k] for k in range(3)]
    return terms[0][:, None, None] + terms[1][None, :, None] + terms[2][None, None, :] - plane.offset_mm


def _inside(solid: trimesh.Trimesh, origin: np.ndarray, shape: tuple[int, int, int], spacing: float,
            at: np.ndarray | None = None) -> np.ndarray:
    """Which grid points (all, or the flat indices ``at``) lie inside the
    closed ``solid``. Only the part of the grid within the solid's bounds is
    cast; rays run along the grid's first axis (L), so only triangles over
    that part's P-S extent cross them."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    start = np.clip(np.floor((solid.bounds[0] - origin) / spacing).astype(int), 0, shape)
    stop = np.clip(np.ceil((solid.bounds[1] - origin) / spacing).astype(int) + 1, 0, shape)
    index = np.stack(np.unravel_index(at, shape), axis=1) if at is not None else None
    out = np.zeros(shape if at is None else at.size, dtype=bool)
    if np.any(stop <= start):
        return out
    lo, hi = origin + start * spacing, origin + (stop - 1) * spacing
    faces = np.asarray(solid.faces)
    face_lo, face_hi = face_boxes(solid)
    over = np.all((face_hi[:, 1:] >= lo[1:]) & (face_lo[:, 1:] <= hi[1:]), axis=1)
    part = inside_mesh(solid.vertices, faces[over], affine, tuple(slice(a, b) for a, b in zip(start, stop)))
    if at is None:
        out[tuple(slice(a, b) for a, b in zip(start, stop))] = part
        return out
    within = np.all((index >= start) & (index < stop), axis=1)
    out[within] = part[tuple((index[within] - start).T)]
    return out


def _signed_distance_at(solid: trimesh.Trimesh, origin: np.ndarray, shape: tuple[int, int, int], spacing: float,
                        at: np.ndarray, limit: float) -> np.ndarray:
    """Signed distance (mm, negative inside) from the grid points ``at``
    (flat indices) to ``solid``: exact up to ``limit``, above it beyond."""
    out = np.full(at.size, limit + spacing)
    points = origin + np.stack(np.unravel_index(at, shape), axis=1) * spacing
    lo, hi = points.min(axis=0) - limit, points.max(axis=0) + limit
    if at.size == 0 or np.any(solid.bounds[0] > hi) or np.any(solid.bounds[1] < lo):
        return out
    inside = _inside(solid, origin, shape, spacing, at)
    d, _ = NearSurface(solid, lo, hi).distance(points, limit)
    return np.where(inside, -d, np.where(d > limit, limit + spacing, d))


def _signed_distance(bone: trimesh.Trimesh, origin: np.ndarray, shape: tuple[int, int, int],
                     spacing: float, reach: float, footprint: tuple[Plane, ...]) -> np.ndarray:
    """Signed distance to ``bone`` (mm, negative inside) on the grid, exact
    where it lies in (-spacing, reach - spacing) within two grid steps of the
    footprint, ±``reach`` elsewhere (what marching cubes needs there is the
    side only)."""
    hi = origin + (np.asarray(shape) - 1) * spacing
    inside = _inside(bone, origin, shape, spacing)
    surface = NearSurface(bone, origin - reach, hi + reach)
    # Candidate band: grid points near a sample of the surface (every point
    # of it lies within ``within`` of one); inside the bone only next to the
    # surface, where the sign changes.
    samples, within = _surface_samples(surface.vertices[surface.faces], spacing)
    index = np.round((samples - origin) / spacing).astype(np.int64)
    ok = np.all((index >= 0) & (index < shape), axis=1)
    seeds = np.ones(shape, dtype=bool)
    seeds[tuple(index[ok].T)] = False
    gap = distance_to_false(seeds, spacing) - within - spacing
    near = np.where(inside, gap <= 2 * spacing, gap <= reach)
    signed = np.where(inside, -reach, reach)
    at = np.flatnonzero(near)
    points = origin + np.stack(np.unravel_index(at, shape), axis=1) * spacing
    within = np.all([p.signed_distance_mm(points) <= 2 * spacing for p in footprint], axis=0)
    at, points = at[within], points[within]
    # Inside the bone only the sign matters, save next to the surface.
    inner = inside.reshape(-1)[at]
    distance, _ = surface.distance(points)
    flat = signed.reshape(-1)
    flat[at] = np.where(inner, -1, 1) * np.minimum(distance, reach)
    return signed


def _surface_samples(tri: np.ndarray, spacing: float) -> tuple[np.ndarray, float]:
    """Points on the surface of the triangles ``tri`` (their centres, the
    triangles longer than four grid steps split first) and the largest distance
    from a point of the surface to the nearest of them."""
    edges = corner_max(edge_lengths(tri))
    large = edges > 4 * spacing
    if large.any():
        v, f = trimesh.remesh.subdivide_to_size(tri[large].reshape(-1, 3),
                                                np.arange(3 * int(large.sum())).reshape(-1, 3), 4 * spacing)
        tri = np.concatenate([tri[~large], v[f]])
    centres = tri.mean(axis=1)
    return centres, float(np.linalg.norm(tri - centres[:, None], axis=2).max(initial=0.0))


class EmptyPlate(MeshError):
    """No plate: its footprint holds no bone surface (or nothing of the plate
    is left within it)."""


@dataclass(frozen=True)
class PlateContact:
    faces: np.ndarray          # indices of the plate's bone-facing faces
    area_mm2: float            # their area
    gap_min_mm: float          # distance to the bone over them (vertices and face centres)
    gap_mean_mm: float
    gap_max_mm: float

    def as_dict(self) -> dict:
        return {"area_on_bone_mm2": round(self.area_mm2, 2), "gap_min_mm": round(self.gap_min_mm, 4),
                "gap_mean_mm": round(self.gap_mean_mm, 4), "gap_max_mm": round(self.gap_max_mm, 4)}


def plate_contact(plate: trimesh.Trimesh, bone: trimesh.Trimesh, clearance_mm: float,
                  thickness_mm: float, *, behind: tuple[Plane, ...] = ()) -> PlateContact:
    """The bone-facing side of ``plate``: faces whose centre lies nearer the
    bone than half the plate's thickness beyond the clearance, and whose
    normal points towards the nearest bone point (side walls do not); with
    ``behind``, only faces whose centres lie behind all those planes (signed
    distance <= 0: e.g. over the host, not over the implant)."""
    centres = plate.triangles_center
    surface = NearSurface(bone, plate.bounds[0] - clearance_mm - thickness_mm,
                          plate.bounds[1] + clearance_mm + thickness_mm)
    near = clearance_mm + 0.5 * thickness_mm
    # Only faces behind the planes are measured (the others are not asked for).
    candidates = np.ones(len(centres), dtype=bool)
    for plane in behind:
        candidates &= plane.signed_distance_mm(centres) < -ON_PLANE_MM
    candidates = np.flatnonzero(candidates)
    d_centre = np.full(len(centres), np.inf)
    closest = np.zeros((len(centres), 3))
    d_centre[candidates], closest[candidates] = surface.distance(centres[candidates])
    to_bone = closest - centres
    cosine = np.einsum("ij,ij->i", plate.face_normals, to_bone) / np.maximum(d_centre, 1e-12)
    towards = cosine > FACING_COSINE
    faces = np.flatnonzero((d_centre < near) & towards)
    if faces.size == 0:
        return PlateContact(faces, 0.0, float("nan"), float("nan"), float("nan"))
    corners = np.unique(plate.faces[faces])
    for plane in behind:
        corners = corners[plane.signed_distance_mm(plate.vertices[corners]) < -ON_PLANE_MM]
    d_corner, _ = surface.distance(plate.vertices[corners])
    # Corners shared with a side wall standing nearly parallel to the bone lie
    # beyond mid-thickness: they are the wall's, not the bone-facing side's.
    d_corner = d_corner[d_corner < near]
    gaps = np.concatenate([d_centre[faces], d_corner])
    return PlateContact(faces=faces, area_mm2=float(plate.area_faces[faces].sum()),
                        gap_min_mm=float(gaps.min()), gap_mean_mm=float(gaps.mean()),
                        gap_max_mm=float(gaps.max()))
