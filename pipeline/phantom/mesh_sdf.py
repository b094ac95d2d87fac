"""Exact signed distance to a closed triangle mesh, at points and on grids.

**Distance.** The distance of a point to a mesh is its distance to the nearest
triangle. The nearest triangle is found without testing every one through the
distance's 1-Lipschitz property on a tree of cells: a cell with centre ``c``
and radius ``r`` (the farthest of its points from ``c``) can only have points
whose nearest triangle lies within ``D + 2 r`` of ``c``, where ``D`` is the
distance at ``c``. Each level keeps, per cell, the triangles that pass this
test and hands them to its children; the points finally compare their
candidates, in float32 to choose and again in float64 among the near-ties,
with coordinates relative to the mesh's centre (exact to ~1e-12 mm).

**Sign.** Inside is where the winding number is positive, counted along a
ray: +1 for every triangle the ray leaves the solid through, -1 for every one
it enters through. A triangle's crossing is decided in its projection along
the ray with edge functions computed in one canonical order per edge (so both
triangles of an edge see the same number) and a fixed tie rule for points on
an edge (:class:`_Rays`): a ray through an edge or a vertex counts once. This
is the generalised winding number of the closed mesh, an integer off the
surface, and needs no assumption about the mesh's folds (a pseudonormal sign
does). Points use a vertical ray (+z) over a 2D bucket grid of the triangles;
grids use one ray per (row, column) along the slice axis in index space (any
affine, mirrored ones too) and a cumulative sum, so the sign of every voxel of
a block costs one pass over the triangles.

**Grids** need exact values only in a band around the surface (a renderer's
blur and tissue layers reach a few mm): :meth:`ClosedMesh.grid_distance_mm`
signs every voxel by the rays, enters each triangle in the cells of a lattice
(a few mm across) that its bounding box, grown by the band and the cells'
reach, overlaps, keeps the cells that may hold a voxel of the band, refines
them down to voxels and computes exact distances only there; beyond the band
a voxel gets the band's edge on its side. The cost follows the band's volume,
not the block's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# Pairs (cell, triangle) evaluated at once: bounds temporary memory.
_PAIR_CHUNK = 1 << 15
# Pairs (cell, triangle) entered at once on the first level of a grid.
_SPLAT_CHUNK = 1 << 18
# Slack for float32 rounding when deciding which triangles may be nearest.
_ROUNDING_MM = 1e-3
# The first level of cells on a grid is at most this wide along its finest axis (mm).
_FIRST_CELL_MM = 3.5


@dataclass(frozen=True, eq=False)
class ClosedMesh:
    """A closed, consistently outward-oriented 2-manifold triangle mesh (LPS mm).

    ``vertices_mm``: (V, 3) float64. ``faces``: (F, 3) int64, counter-clockwise
    seen from outside. :meth:`check` says why a mesh is not one."""

    vertices_mm: np.ndarray
    faces: np.ndarray

    @classmethod
    def from_arrays(cls, vertices_mm, faces) -> "ClosedMesh":
        mesh = cls(np.ascontiguousarray(vertices_mm, dtype=np.float64),
                   np.ascontiguousarray(faces, dtype=np.int64))
        problem = mesh.check()
        if problem:
            raise ValueError(f"not a closed outward 2-manifold mesh: {problem}")
        return mesh

    def check(self) -> str:
        """'' for a valid mesh, else what is wrong with it."""
        f = self.faces
        if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
            return "faces must be (F, 3)"
        if f.min() < 0 or f.max() >= len(self.vertices_mm):
            return "face indices out of range"
        keys = _directed_edge_keys(f, len(self.vertices_mm))
        if len(np.unique(keys)) != len(keys):
            return "a directed edge is used twice (non-manifold edge or flipped face)"
        reverse = _directed_edge_keys(f[:, ::-1], len(self.vertices_mm))
        if not np.all(np.isin(reverse, keys)):
            return "an edge has no opposite twin (the mesh is open)"
        if np.any(self.areas_mm2 <= 1e-12):
            return "a triangle has no area"
        if np.any(fans_per_vertex(f, len(self.vertices_mm)) > 1):
            return "a vertex joins two or more fans of triangles (pinched)"
        if self.volume_mm3 <= 0:
            return "the triangles face inwards (negative volume)"
        return ""

    # -- derived geometry --------------------------------------------------
    @cached_property
    def corners(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        v = self.vertices_mm
        return v[self.faces[:, 0]], v[self.faces[:, 1]], v[self.faces[:, 2]]

    @cached_property
    def _cross(self) -> np.ndarray:
        a, b, c = self.corners
        return np.cross(b - a, c - a)

    @cached_property
    def areas_mm2(self) -> np.ndarray:
        return 0.5 * np.linalg.norm(self._cross, axis=1)

    @cached_property
    def volume_mm3(self) -> float:
        """Enclosed volume (divergence theorem, exact for the polyhedron)."""
        a, _, _ = self.corners
        return float(np.einsum("ij,ij->", a, self._cross) / 6.0)

    @cached_property
    def face_normals(self) -> np.ndarray:
        return self._cross / np.linalg.norm(self._cross, axis=1)[:, None]

    @cached_property
    def bounds_mm(self) -> np.ndarray:
        return np.array([self.vertices_mm.min(axis=0), self.vertices_mm.max(axis=0)])

    @cached_property
    def vertex_normals(self) -> np.ndarray:
        """Angle-weighted vertex normals (not unit length)."""
        a, b, c = self.corners
        out = np.zeros_like(self.vertices_mm)
        for k, (p, q, r) in enumerate(((a, b, c), (b, c, a), (c, a, b))):
            u, w = q - p, r - p
            cos = np.einsum("ij,ij->i", u, w) / (np.linalg.norm(u, axis=1) * np.linalg.norm(w, axis=1))
            weighted = np.arccos(np.clip(cos, -1.0, 1.0))[:, None] * self.face_normals
            for axis in range(3):
                out[:, axis] += np.bincount(self.faces[:, k], weighted[:, axis], minlength=len(out))
        return out

    @cached_property
    def _origin(self) -> np.ndarray:
        return self.bounds_mm.mean(axis=0)

    @cached_property
    def _table(self) -> tuple[np.ndarray, ...]:
        """Per face, float64 and relative to ``_origin``: a, the edges b - a,
        c - a, c - b, the normal n, 1 / |n|^2 and the inverse squared edge lengths."""
        a, b, c = self.corners
        cols = [a - self._origin, b - a, c - a, c - b, self._cross]
        inv = [1.0 / np.einsum("ij,ij->i", m, m) for m in (self._cross, b - a, c - a, c - b)]
        return tuple(np.ascontiguousarray(x) for x in [m[:, i] for m in cols for i in range(3)] + inv)

    @cached_property
    def _table32(self) -> tuple[np.ndarray, ...]:
        """``_table`` in float32 (rounding ~1e-5 mm): for choosing candidates only."""
        return tuple(col.astype(np.float32) for col in self._table)

    @cached_property
    def _spheres(self) -> tuple[np.ndarray, ...]:
        """Each triangle's bounding sphere, float32 relative to ``_origin``: the
        centroid's x, y, z and the largest distance from it to a corner (mm)."""
        centroid = np.mean(self.corners, axis=0)
        radius = np.max(np.linalg.norm(np.stack(self.corners) - centroid, axis=2), axis=0)
        return tuple(np.ascontiguousarray(c, dtype=np.float32)
                     for c in (*(centroid - self._origin).T, radius + _ROUNDING_MM))

    @cached_property
    def _columns(self) -> tuple["_Buckets", "_Rays"]:
        """The triangles bucketed by their footprint in the (x, y) plane, and
        their crossings with rays towards +z."""
        return (_Buckets.of(self.vertices_mm[:, :2], self.faces),
                _Rays(self.vertices_mm[:, :2], self.vertices_mm[:, 2], self.faces))

    # -- queries -----------------------------------------------------------
    def signed_distance_mm(self, points_lps_mm: np.ndarray, cap_mm: float = math.inf) -> np.ndarray:
        """Exact signed distance (mm, negative inside) at points ``(..., 3)``;
        with ``cap_mm``, only where it lies within ``cap_mm`` of the surface (else
        +-``cap_mm``)."""
        p = np.asarray(points_lps_mm, dtype=np.float64)
        flat = p.reshape(-1, 3)
        d = self.unsigned_distance_mm(flat, cap_mm)
        return np.where(self.winding_number(flat) > 0, -d, d).reshape(p.shape[:-1])

    def unsigned_distance_mm(self, points_lps_mm: np.ndarray, cap_mm: float = math.inf) -> np.ndarray:
        """Exact distance (mm) from points ``(N, 3)`` to the surface where it is
        below ``cap_mm``; elsewhere ``cap_mm``."""
        return _unsigned_distance(self, np.asarray(points_lps_mm, np.float64).reshape(-1, 3), cap_mm)[0]

    def closest_points_mm(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """The surface point nearest to each of the points ``(N, 3)`` (LPS mm)."""
        p = np.asarray(points_lps_mm, np.float64).reshape(-1, 3)
        return _closest_on(self, p, _unsigned_distance(self, p, math.inf)[1])

    def winding_number(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Winding number (int) of the mesh around points ``(N, 3)``: 1 inside, 0 outside
        (the count along a ray towards +z)."""
        p = np.asarray(points_lps_mm, np.float64).reshape(-1, 3)
        buckets, rays = self._columns
        point, face = buckets.pairs(p[:, :2])
        hit, height, step = rays.crossings(p[point, 0], p[point, 1], face)
        above = hit & (height > p[point, 2])
        return np.bincount(point[above], step[above], minlength=len(p)).astype(np.int64)

    def grid_distance_mm(self, affine: np.ndarray, start, stop, band_mm: tuple[float, float]) -> np.ndarray:
        """Signed distance at the voxel centres ``start:stop`` of a grid with
        index -> LPS ``affine``: exact where it lies inside ``band_mm`` (lo < 0 <
        hi), else ``lo`` (below the band) or ``hi`` (above it). float64."""
        return _grid_distance(self, np.asarray(affine, np.float64), tuple(int(s) for s in start),
                              tuple(int(s) for s in stop), (float(band_mm[0]), float(band_mm[1])))


# ---------------------------------------------------------------------------
# Topology
# ---------------------------------------------------------------------------
def _directed_edge_keys(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    return (faces * n_vertices + np.roll(faces, -1, axis=1)).ravel()


def fans_per_vertex(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """How many fans of triangles meet at each vertex of a closed mesh (1 for a
    manifold vertex, 2 or more where the surface is pinched, 0 if unused).

    The corners of a vertex are joined across each edge through it (the edge's
    two triangles); a fan is a connected set of corners."""
    f = np.asarray(faces, np.int64)
    n_faces = len(f)
    keys = _directed_edge_keys(f, n_vertices)
    twin_keys = _directed_edge_keys(f[:, ::-1], n_vertices).reshape(-1, 3)[:, [1, 0, 2]].ravel()
    order = np.argsort(keys)
    at = np.searchsorted(keys[order], twin_keys)
    twin = order[np.minimum(at, len(keys) - 1)]
    found = keys[twin] == twin_keys
    # Directed edge e = 3 f + k runs from corner (f, k) to corner (f, k + 1); its twin
    # t = 3 g + j runs from corner (g, j) to corner (g, j + 1) the other way.
    e = np.flatnonzero(found)
    t = twin[found]
    nxt = lambda i: 3 * (i // 3) + (i % 3 + 1) % 3  # noqa: E731
    rows = np.concatenate([e, nxt(e)])
    cols = np.concatenate([nxt(t), t])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(3 * n_faces, 3 * n_faces))
    _, component = connected_components(graph, directed=False)
    vertex = f.ravel()
    pairs = np.unique(vertex * (3 * n_faces) + component)
    return np.bincount(pairs // (3 * n_faces), minlength=n_vertices)


# ---------------------------------------------------------------------------
# Exact distances
# ---------------------------------------------------------------------------
def _squared_distance(p, t):
    """Squared distance from points ``p`` (three arrays) to triangles given by
    gathered ``_table`` columns ``t``: the plane's where the point projects
    inside the triangle, else the nearest edge's."""
    ax, ay, az, bx, by, bz, cx, cy, cz, ex, ey, ez, nx, ny, nz, inn, ibb, icc, iee = t
    apx, apy, apz = p[0] - ax, p[1] - ay, p[2] - az
    bpx, bpy, bpz = apx - bx, apy - by, apz - bz

    def side(ux, uy, uz, vx, vy, vz):      # (u x v) . n
        return (uy * vz - uz * vy) * nx + (uz * vx - ux * vz) * ny + (ux * vy - uy * vx) * nz

    def edge(ux, uy, uz, qx, qy, qz, inv):
        h = np.clip((ux * qx + uy * qy + uz * qz) * inv, 0.0, 1.0)
        dx, dy, dz = qx - h * ux, qy - h * uy, qz - h * uz
        return dx * dx + dy * dy + dz * dz

    inside = (side(bx, by, bz, apx, apy, apz) >= 0) & (side(apx, apy, apz, cx, cy, cz) >= 0) \
        & (side(ex, ey, ez, bpx, bpy, bpz) >= 0)
    h = nx * apx + ny * apy + nz * apz
    rim = np.minimum(np.minimum(edge(bx, by, bz, apx, apy, apz, ibb), edge(cx, cy, cz, apx, apy, apz, icc)),
                     edge(ex, ey, ez, bpx, bpy, bpz, iee))
    return np.where(inside, h * h * inn, rim)


def _pair_distances(mesh: ClosedMesh, centres: np.ndarray, cell: np.ndarray, tri: np.ndarray,
                    exact: bool = False) -> np.ndarray:
    """Squared distance from ``centres[cell]`` to triangles ``tri`` (pairs):
    float32 (rounding ~1e-5 mm, for choosing candidates) or, ``exact``, float64."""
    table = mesh._table if exact else mesh._table32
    dtype = np.float64 if exact else np.float32
    out = np.empty(len(cell), dtype=dtype)
    local = [np.ascontiguousarray(centres[:, i] - mesh._origin[i], dtype=dtype) for i in range(3)]
    for s in range(0, len(cell), _PAIR_CHUNK):
        c, t = cell[s:s + _PAIR_CHUNK], tri[s:s + _PAIR_CHUNK]
        out[s:s + len(c)] = _squared_distance([x[c] for x in local], [col[t] for col in table])
    return out


def _run_starts(cell: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.concatenate([[True], cell[1:] != cell[:-1]]))


def _refine(mesh: ClosedMesh, centres: np.ndarray, radius: float, cell: np.ndarray, tri: np.ndarray):
    """One level of the tree. ``cell``/``tri``: candidate pairs, sorted by cell,
    every cell of ``centres`` (n, 3) with at least one. Returns each cell's
    distance (float32) and the pairs that may hold the nearest triangle of some
    point within ``radius`` of its centre: the distance is 1-Lipschitz, so such
    a triangle lies within the centre's distance + 2 ``radius``."""
    d2 = _pair_distances(mesh, centres, cell, tri)
    best = np.sqrt(np.minimum.reduceat(d2, _run_starts(cell)))
    reach = best + np.float32(2.0 * radius + _ROUNDING_MM)
    keep = d2 <= (reach * reach)[cell]
    return best, cell[keep], tri[keep]


def _exact_nearest(mesh: ClosedMesh, points: np.ndarray, cell: np.ndarray, tri: np.ndarray):
    """Exact distance of each point to the nearest of its candidate triangles
    (pairs sorted by point, every point with one), and that triangle: the
    candidates within float32 rounding of the best are compared again in float64."""
    _, cell, tri = _refine(mesh, points, 0.0, cell, tri)
    d2 = _pair_distances(mesh, points, cell, tri, exact=True)
    starts = _run_starts(cell)
    best = np.minimum.reduceat(d2, starts)
    first = np.flatnonzero(d2 == best[cell])
    nearest = np.empty(len(points), dtype=np.int64)
    nearest[cell[first][::-1]] = tri[first][::-1]
    return np.sqrt(best), nearest


def _closest_on(mesh: ClosedMesh, points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """The point of triangle ``tri`` nearest to each point (the same cases as
    :func:`_squared_distance`: the foot on the plane, else on the nearest edge)."""
    a, b, c = (corner[tri] for corner in mesh.corners)
    n = mesh._cross[tri]
    side = lambda u, v: np.einsum("ij,ij->i", np.cross(u, v), n)  # noqa: E731
    ap = points - a
    inside = (side(b - a, ap) >= 0) & (side(ap, c - a) >= 0) & (side(c - b, points - b) >= 0)
    foot = points - (np.einsum("ij,ij->i", ap, n) / np.einsum("ij,ij->i", n, n))[:, None] * n
    best, best_d2 = foot, np.where(inside, 0.0, np.inf)
    for start, end in ((a, b), (a, c), (b, c)):
        e = end - start
        h = np.clip(np.einsum("ij,ij->i", points - start, e) / np.einsum("ij,ij->i", e, e), 0.0, 1.0)
        q = start + h[:, None] * e
        d2 = np.einsum("ij,ij->i", points - q, points - q)
        better = ~inside & (d2 < best_d2)
        best, best_d2 = np.where(better[:, None], q, best), np.where(better, d2, best_d2)
    return best


def _inherit(parent: np.ndarray, n_parents: int, cell: np.ndarray, tri: np.ndarray):
    """Pairs (child, triangle) for children whose parents are ``parent``, from
    the parents' pairs ``cell``/``tri`` (sorted by cell)."""
    runs = np.bincount(cell, minlength=n_parents)
    run_start = np.searchsorted(cell, np.arange(n_parents))
    lengths = runs[parent]
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (np.repeat(np.arange(len(parent)), lengths),
            tri[np.repeat(run_start[parent], lengths) + within])


def _unsigned_distance(mesh: ClosedMesh, points: np.ndarray, cap_mm: float):
    """Exact distances at arbitrary points and their nearest triangles: a tree of
    cells over a 1 mm lattice, the whole cloud first, each level halving the
    cells; cells whose every point lies beyond ``cap_mm`` stop there (distance
    ``cap_mm``, triangle -1)."""
    out = np.full(len(points), float(cap_mm))
    nearest = np.full(len(points), -1, dtype=np.int64)
    if len(points) == 0:
        return out, nearest
    step_mm = 1.0
    origin = points.min(axis=0) - 0.5 * step_mm
    key = np.floor((points - origin) / step_mm).astype(np.int64)
    size = 1 << int(max(0, int(key.max())).bit_length())
    member = np.arange(len(points))          # points still in play
    cell_of = np.zeros(len(points), dtype=np.int64)
    cells = np.zeros((1, 3), dtype=np.int64)
    cell, tri = np.zeros(len(mesh.faces), dtype=np.int64), np.arange(len(mesh.faces))
    while True:
        centres = origin + (cells + 0.5) * size * step_mm
        radius = 0.5 * math.sqrt(3.0) * size * step_mm
        best, cell, tri = _refine(mesh, centres, radius, cell, tri)
        live = best - radius - _ROUNDING_MM < cap_mm
        member = member[live[cell_of[member]]]
        if size == 1 or len(member) == 0:
            break
        size //= 2
        child = key[member] // size
        flat = (child[:, 0] << 42) + (child[:, 1] << 21) + child[:, 2]
        _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
        parent = cell_of[member[first]]
        cells = child[first]
        cell_of[member] = inverse
        cell, tri = _inherit(parent, len(live), cell, tri)
    if len(member) == 0:
        return out, nearest
    # Points against the candidates of their finest cell.
    order = member[np.argsort(cell_of[member], kind="stable")]
    pair_point, pair_tri = _inherit(cell_of[order], len(best), cell, tri)
    out[order], nearest[order] = _exact_nearest(mesh, points[order], pair_point, pair_tri)
    return out, nearest


# ---------------------------------------------------------------------------
# Winding numbers along rays
# ---------------------------------------------------------------------------
class _Rays:
    """Per triangle, what deciding a ray's crossing needs (projection along the
    ray onto (u, v), position w along it): for each edge its lower-numbered
    vertex (u, v), its direction from there (signed as the triangle runs it:
    the same numbers up to an exact sign for both triangles of an edge) and
    whether it keeps points on it; the triangle's orientation seen along the
    ray and its corners' w.

    A point exactly on an edge belongs to the triangle for which the edge,
    oriented counter-clockwise, runs downwards (or, if level, towards +u), so a
    ray through an edge or a vertex is counted once, not twice or never."""

    def __init__(self, uv: np.ndarray, w: np.ndarray, faces: np.ndarray):
        f = faces
        area2 = ((uv[f[:, 1], 0] - uv[f[:, 0], 0]) * (uv[f[:, 2], 1] - uv[f[:, 0], 1])
                 - (uv[f[:, 1], 1] - uv[f[:, 0], 1]) * (uv[f[:, 2], 0] - uv[f[:, 0], 0]))
        self.orient = np.sign(area2)
        self.edges = []
        for k in range(3):
            i, j = f[:, k], f[:, (k + 1) % 3]
            lo, hi = np.minimum(i, j), np.maximum(i, j)
            flip = np.where(i < j, 1.0, -1.0)
            du, dv = flip * (uv[hi, 0] - uv[lo, 0]), flip * (uv[hi, 1] - uv[lo, 1])
            keeps = (dv * self.orient < 0) | ((dv == 0) & (du * self.orient > 0))
            self.edges.append((np.ascontiguousarray(uv[lo, 0]), np.ascontiguousarray(uv[lo, 1]), du, dv, keeps))
        self.w = [np.ascontiguousarray(w[f[:, k]]) for k in range(3)]

    def crossings(self, pu: np.ndarray, pv: np.ndarray, face: np.ndarray):
        """For pairs (ray through (``pu``, ``pv``), triangle ``face``): whether
        the ray crosses the triangle, where (w), and the step of the winding
        number there (+1 where the ray leaves the solid: the normal points along +w)."""
        orient = self.orient[face]
        hit = orient != 0
        weights = []
        for ulo, vlo, du, dv, keeps in self.edges:
            e = du[face] * (pv - vlo[face]) - dv[face] * (pu - ulo[face])
            hit &= (e * orient > 0) | ((e == 0) & keeps[face])
            weights.append(e)
        # The weight of a corner is the edge function of the edge opposite it.
        with np.errstate(invalid="ignore", divide="ignore"):
            height = (weights[1] * self.w[0][face] + weights[2] * self.w[1][face]
                      + weights[0] * self.w[2][face]) / (weights[0] + weights[1] + weights[2])
        return hit, height, orient.astype(np.int64)


@dataclass(frozen=True, eq=False)
class _Buckets:
    """Triangles listed per cell of a square 2D grid that their footprint overlaps."""

    origin: np.ndarray
    cell_mm: float
    n: tuple[int, int]
    starts: np.ndarray        # per cell, first position in ``faces``; one more at the end
    faces: np.ndarray

    @classmethod
    def of(cls, uv: np.ndarray, faces: np.ndarray) -> "_Buckets":
        tri = uv[faces]
        lo, hi = tri.min(axis=1), tri.max(axis=1)
        cell = max(0.3 * float(np.median(np.max(hi - lo, axis=1))), 1e-6)
        origin = uv.min(axis=0)
        n = tuple(int(x) for x in np.floor((uv.max(axis=0) - origin) / cell) + 1)
        a = np.floor((lo - origin) / cell).astype(np.int64)
        b = np.floor((hi - origin) / cell).astype(np.int64)
        span = np.ascontiguousarray(b - a + 1)
        count = span[:, 0] * span[:, 1]
        face = np.repeat(np.arange(len(faces)), count)
        rank = np.arange(len(face)) - np.repeat(np.cumsum(count) - count, count)
        width = np.repeat(span[:, 1], count)
        key = (np.repeat(a[:, 0], count) + rank // width) * n[1] + np.repeat(a[:, 1], count) + rank % width
        order = np.argsort(key, kind="stable")
        starts = np.searchsorted(key[order], np.arange(n[0] * n[1] + 1))
        return cls(origin, cell, n, starts, face[order])

    def pairs(self, p_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point, face) for every triangle listed in each point's cell."""
        c = np.floor((p_uv - self.origin) / self.cell_mm).astype(np.int64)
        ok = np.all((c >= 0) & (c < np.asarray(self.n)), axis=1)
        point = np.flatnonzero(ok)
        key = c[ok, 0] * self.n[1] + c[ok, 1]
        first, count = self.starts[key], self.starts[key + 1] - self.starts[key]
        rank = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        return np.repeat(point, count), self.faces[np.repeat(first, count) + rank]


def _grid_winding(mesh: ClosedMesh, affine: np.ndarray, start, stop) -> np.ndarray:
    shape = tuple(b - a for a, b in zip(start, stop))
    inverse = np.linalg.inv(affine)
    index = _transform(inverse, mesh.vertices_mm) - np.asarray(start, np.float64)
    uv, w = index[:, 1:], index[:, 0]
    tri = uv[mesh.faces]
    lo = np.maximum(np.ceil(tri.min(axis=1)).astype(np.int64), 0)
    hi = np.minimum(np.floor(tri.max(axis=1)).astype(np.int64), np.asarray(shape[1:]) - 1)
    span = np.maximum(hi - lo + 1, 0)
    count = span[:, 0] * span[:, 1]
    face = np.repeat(np.arange(len(mesh.faces)), count)
    winding = np.zeros(shape, dtype=np.int16)
    if len(face) == 0:
        return winding
    rank = np.arange(len(face)) - np.repeat(np.cumsum(count) - count, count)
    ray = np.stack([lo[face, 0] + rank // span[face, 1], lo[face, 1] + rank % span[face, 1]], axis=1)
    hit, height, step = _Rays(uv, w, mesh.faces).crossings(ray[:, 0].astype(np.float64),
                                                           ray[:, 1].astype(np.float64), face)
    # In index space a mirroring affine turns the outward normals inward.
    step = step * (1 if np.linalg.det(affine[:3, :3]) > 0 else -1)
    # Voxels at or beyond a crossing are past it; the winding number there drops by
    # the step (a ray leaving the solid leaves winding 0 behind it).
    at = np.maximum(np.ceil(height[hit]), 0).astype(np.int64)
    keep = at < shape[0]
    flat = np.ravel_multi_index((at[keep], ray[hit][keep, 0], ray[hit][keep, 1]), shape)
    np.add.at(winding.reshape(-1), flat, (-step[hit][keep]).astype(np.int16))
    np.cumsum(winding, axis=0, out=winding)
    return winding


# ---------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------
def _grid_distance(mesh: ClosedMesh, affine: np.ndarray, start, stop, band) -> np.ndarray:
    lo_band, hi_band = band
    if not lo_band < 0 < hi_band:
        raise ValueError(f"band_mm must straddle 0, got {band}")
    shape = tuple(b - a for a, b in zip(start, stop))
    inside = _grid_winding(mesh, affine, start, stop) > 0
    out = np.where(inside, lo_band, hi_band)
    axes = affine[:3, :3]
    size = _first_cell_voxels(axes)
    counts = _inside_counts(inside, size)
    corner, cell, tri = _first_level(mesh, affine, start, shape, size, band, counts[size])
    while len(corner) and size > 1:
        half = size // 2
        offsets = np.array([[i, j, k] for i in (0, half) for j in (0, half) for k in (0, half)])
        child = (corner[:, None, :] + offsets[None]).reshape(-1, 3)
        within = np.all(child < np.asarray(shape), axis=1)
        cell, tri = _inherit(np.repeat(np.arange(len(corner)), 8)[within], len(corner), cell, tri)
        corner, size = child[within], half
        if size == 1:
            break
        radius = _half_diagonal(axes, float(size - 1))
        extent = np.minimum(size, np.asarray(shape)[None, :] - corner)
        best, cell, tri = _refine(mesh, _cell_centres(affine, start, corner, extent), radius, cell, tri)
        live = _in_band(best, radius, band, counts[size][tuple((corner // size).T)], extent.prod(axis=1))
        keep = live[cell]
        cell, tri, corner = (np.cumsum(live) - 1)[cell[keep]], tri[keep], corner[live]
    if len(corner) == 0:
        return out
    d = _exact_nearest(mesh, _cell_centres(affine, start, corner, np.ones_like(corner)), cell, tri)[0]
    at = tuple(corner.T)
    out[at] = np.where(inside[at], -np.minimum(d, -lo_band), np.minimum(d, hi_band))
    return out


def _first_cell_voxels(axes: np.ndarray) -> int:
    """Cells of the first level: the largest power of two of voxels whose
    cells are at most ``_FIRST_CELL_MM`` across along the finest axis."""
    finest = float(np.linalg.norm(axes, axis=0).min())
    size = 1
    while 2 * size * finest <= _FIRST_CELL_MM:
        size *= 2
    return size


def _sphere_test(mesh: ClosedMesh, centres: np.ndarray, cell: np.ndarray, tri: np.ndarray,
                 reach_mm: float) -> np.ndarray:
    """For pairs (cell, triangle): whether the triangle's bounding sphere comes
    within ``reach_mm`` of the cell's centre."""
    local = [np.ascontiguousarray(centres[:, i] - mesh._origin[i], dtype=np.float32) for i in range(3)]
    mx, my, mz, radius = mesh._spheres
    out = np.empty(len(cell), dtype=bool)
    for s in range(0, len(cell), _PAIR_CHUNK):
        c, t = cell[s:s + _PAIR_CHUNK], tri[s:s + _PAIR_CHUNK]
        dx, dy, dz = local[0][c] - mx[t], local[1][c] - my[t], local[2][c] - mz[t]
        limit = radius[t] + np.float32(reach_mm)
        out[s:s + len(c)] = dx * dx + dy * dy + dz * dz <= limit * limit
    return out


def _boxes_to_cells(lo: np.ndarray, span: np.ndarray, n_cells: np.ndarray):
    """(cell, box) for every cell of a lattice of ``n_cells`` inside each box of
    cells ``lo`` to ``lo + span - 1``: flat cell index and the box's number."""
    box, cell = np.arange(len(lo)), np.zeros(len(lo), dtype=np.int64)
    for axis in range(3):
        count = np.ascontiguousarray(span[:, axis])[box]
        rank = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        box = np.repeat(box, count)
        cell = np.repeat(cell * n_cells[axis], count) + np.ascontiguousarray(lo[:, axis])[box] + rank
    return cell, box


def _cell_centres(affine: np.ndarray, start, corner: np.ndarray, extent: np.ndarray) -> np.ndarray:
    return _transform(affine, corner + (extent - 1) / 2.0 + np.asarray(start))


def _in_band(best, radius: float, band, n_inside: np.ndarray, n_voxels: np.ndarray) -> np.ndarray:
    """Cells that may hold a voxel inside the band: a cell wholly on one side
    is out once all of it lies beyond the band on that side."""
    cap = np.where(n_inside == n_voxels, -band[0], np.where(n_inside == 0, band[1], np.inf))
    return best - radius - _ROUNDING_MM < cap


def _first_level(mesh: ClosedMesh, affine: np.ndarray, start, shape, size: int, band, n_inside: np.ndarray):
    """The cells of ``size`` voxels that may hold a voxel of the band, and per
    cell the triangles that may be the nearest to one of its voxels (pairs
    sorted by cell; the cells' corners). Each triangle is entered in the cells
    its bounding box reaches, grown by the farthest such a triangle can be
    from a cell centre: the band, a cell radius to the band's voxels and two
    more to the candidates (:func:`_refine`)."""
    radius = _half_diagonal(affine[:3, :3], float(size - 1))
    reach_mm = max(-band[0], band[1]) + 3.0 * radius + _ROUNDING_MM
    inverse = np.linalg.inv(affine)
    index = _transform(inverse, mesh.vertices_mm) - np.asarray(start, np.float64)
    grow = reach_mm * np.linalg.norm(inverse[:3, :3], axis=1)   # a ball's half-extent in index units
    corners = index[mesh.faces]
    n_cells = np.array([-(-n // size) for n in shape])
    lo = np.clip(np.floor((corners.min(axis=1) - grow) / size).astype(np.int64), 0, None)
    hi = np.minimum(np.floor((corners.max(axis=1) + grow) / size).astype(np.int64), n_cells - 1)
    span = np.maximum(hi - lo + 1, 0)
    lattice = np.stack(np.unravel_index(np.arange(int(n_cells.prod())), tuple(n_cells)), axis=1) * size
    extent = np.minimum(size, np.asarray(shape)[None, :] - lattice)
    centres = _cell_centres(affine, start, lattice, extent)
    best2 = np.full(len(lattice), np.inf, dtype=np.float32)
    # A few hundred triangles at a time keep the temporaries small.
    pieces = []
    pairs = np.cumsum(span.prod(axis=1))
    bounds = np.unique(np.concatenate([[0], np.searchsorted(pairs, np.arange(
        _SPLAT_CHUNK, int(pairs[-1]), _SPLAT_CHUNK), side="right"), [len(lo)]]))
    for a, b in zip(bounds[:-1], bounds[1:]):
        cell, tri = _boxes_to_cells(lo[a:b], span[a:b], n_cells)
        tri += a
        # Triangles whose bounding sphere lies beyond the reach need no exact distance.
        near = _sphere_test(mesh, centres, cell, tri, reach_mm)
        cell, tri = cell[near], tri[near]
        d2 = _pair_distances(mesh, centres, cell, tri)
        np.minimum.at(best2, cell, d2)
        pieces.append((cell, tri, d2))
    cell, tri, d2 = (np.concatenate(x) for x in zip(*pieces))
    best = np.sqrt(best2)
    live = _in_band(best, radius, band, n_inside[tuple((lattice // size).T)], extent.prod(axis=1))
    reach = best + np.float32(2.0 * radius + _ROUNDING_MM)
    keep = d2 <= np.where(live, reach * reach, -1.0).astype(np.float32)[cell]
    cell, tri = cell[keep], tri[keep]
    order = np.argsort(cell, kind="stable")
    cell, tri = cell[order], tri[order]
    used = np.flatnonzero(live)
    return lattice[used], np.searchsorted(used, cell), tri


def _inside_counts(inside: np.ndarray, root: int) -> dict[int, np.ndarray]:
    """Per level (cell size 1, 2, 4 ... ``root`` voxels), how many voxels of each
    cell (indexed by corner // size) are inside."""
    padded = np.zeros(tuple(-(-n // root) * root for n in inside.shape), dtype=np.int32)
    padded[tuple(slice(0, n) for n in inside.shape)] = inside
    counts, size = {1: padded}, 1
    while size < root:
        c = counts[size]
        n0, n1, n2 = (n // 2 for n in c.shape)
        counts[2 * size] = c.reshape(n0, 2, n1, 2, n2, 2).sum(axis=(1, 3, 5))
        size *= 2
    return counts


def _transform(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``affine`` (4x4) applied to points ``(N, 3)``, elementwise: a BLAS product
    of an (N, 3) array may start threads that cost more than the product."""
    p = np.asarray(points, np.float64)
    return (p[:, :1] * affine[:3, 0] + p[:, 1:2] * affine[:3, 1] + p[:, 2:] * affine[:3, 2]) + affine[:3, 3]


def _half_diagonal(axes: np.ndarray, steps: float) -> float:
    """Largest distance from a brick's centre to its corners: the brick spans
    ``steps`` along each column of ``axes`` (3x3)."""
    best = 0.0
    for signs in ((1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1)):
        best = max(best, float(np.linalg.norm(axes @ (np.asarray(signs) * steps))))
    return 0.5 * best
