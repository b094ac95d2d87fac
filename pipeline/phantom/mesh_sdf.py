"""Exact signed distance to a closed triangle mesh, at points and on grids.

The distance of a point to a mesh is its distance to the nearest triangle
(Ericson's closest point on a triangle, "Real-Time Collision Detection" 5.1.5);
the sign comes from the angle-weighted pseudonormal of the nearest feature
(face, edge or vertex), which is exact for a closed, 2-manifold,
non-self-intersecting mesh (Baerentzen and Aanaes, "Signed distance computation
using the angle weighted pseudonormal", IEEE TVCG 2005). Negative inside.

Finding the nearest triangle without testing every one uses the distance's
1-Lipschitz property on an octree of cells: a cell with centre ``c`` and
half-diagonal ``r`` whose centre lies at distance ``D`` from the mesh can only
have points whose nearest triangle lies within ``D + 2 r`` of ``c``. Each level
keeps, per cell, the triangles that pass this test against the cell's own
exact ``D`` and hands them to its eight children; a cell whose values all lie
outside the band of distances asked for is not refined further. Every value
inside the band is therefore the exact distance (float64, to rounding), and
every value outside it is only known to lie beyond the band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

# Pairs of (cell, triangle) evaluated at once: bounds temporary memory.
_PAIR_CHUNK = 1 << 15
# Slack for float32 rounding when deciding which triangles may be nearest.
_ROUNDING_MM = 1e-3
# Octree cells at the top level are this many voxels (or lattice steps) across.
_ROOT_CELLS = 32


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
        directed = np.stack([f, np.roll(f, -1, axis=1)], axis=-1).reshape(-1, 2)
        keys = directed[:, 0] * len(self.vertices_mm) + directed[:, 1]
        if len(np.unique(keys)) != len(keys):
            return "a directed edge is used twice (non-manifold edge or flipped face)"
        reverse = directed[:, 1] * len(self.vertices_mm) + directed[:, 0]
        if not np.all(np.isin(reverse, keys)):
            return "an edge has no opposite twin (the mesh is open)"
        if np.any(self.areas_mm2 <= 1e-12):
            return "a triangle has no area"
        if self._fans_per_vertex_ok() is False:
            return "a vertex joins two or more fans of triangles (pinched)"
        if self.volume_mm3 <= 0:
            return "the triangles face inwards (negative volume)"
        return ""

    def _fans_per_vertex_ok(self) -> bool:
        """Every vertex's triangles form one closed fan (the link is one cycle)."""
        f = self.faces
        centre = f.ravel()
        nxt = np.roll(f, -1, axis=1).ravel()
        prv = np.roll(f, 1, axis=1).ravel()
        # Each vertex's link: edges prv -> nxt. One cycle iff the number of
        # link edges equals the length of the cycle through the first one.
        order = np.lexsort((nxt, centre))
        c, a, b = centre[order], nxt[order], prv[order]
        counts = np.bincount(c, minlength=len(self.vertices_mm))
        used = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts)])[:-1]
        lookup = {}
        for v, s in zip(used, starts[used]):
            lookup[v] = dict(zip(b[s:s + counts[v]].tolist(), a[s:s + counts[v]].tolist()))
        for v, link in lookup.items():
            first = next(iter(link))
            node, steps = link[first], 1
            while node != first and steps <= len(link):
                node, steps = link.get(node, first), steps + 1
            if steps != len(link):
                return False
        return True

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
    def _edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Per face, the undirected edge index of its edges AB, BC, CA; and per
        edge, its pseudonormal (the sum of its two faces' unit normals)."""
        f = self.faces
        lo = np.minimum(f, np.roll(f, -1, axis=1))
        hi = np.maximum(f, np.roll(f, -1, axis=1))
        keys = lo.ravel() * len(self.vertices_mm) + hi.ravel()
        unique, index = np.unique(keys, return_inverse=True)
        normals = np.zeros((len(unique), 3))
        np.add.at(normals, index, np.repeat(self.face_normals, 3, axis=0))
        return index.reshape(-1, 3), normals

    @cached_property
    def vertex_normals(self) -> np.ndarray:
        """Angle-weighted pseudonormals of the vertices."""
        a, b, c = self.corners
        out = np.zeros_like(self.vertices_mm)
        for k, (p, q, r) in enumerate(((a, b, c), (b, c, a), (c, a, b))):
            u, w = q - p, r - p
            cos = np.einsum("ij,ij->i", u, w) / (np.linalg.norm(u, axis=1) * np.linalg.norm(w, axis=1))
            angle = np.arccos(np.clip(cos, -1.0, 1.0))
            np.add.at(out, self.faces[:, k], angle[:, None] * self.face_normals)
        return out

    @cached_property
    def _origin(self) -> np.ndarray:
        return self.bounds_mm.mean(axis=0)

    @cached_property
    def _table32(self) -> tuple[np.ndarray, ...]:
        """Per face, float32 and relative to ``_origin`` (rounding ~1e-5 mm): a,
        the edges b - a, c - a, c - b, the normal n, 1 / |n|^2 and the inverse
        squared edge lengths. For choosing the nearest triangle only."""
        a, b, c = self.corners
        cols = [a - self._origin, b - a, c - a, c - b, self._cross]
        inv = [1.0 / np.einsum("ij,ij->i", m, m) for m in (self._cross, b - a, c - a, c - b)]
        return tuple(np.ascontiguousarray(x, dtype=np.float32)
                     for x in [m[:, i] for m in cols for i in range(3)] + inv)

    @cached_property
    def _soa(self) -> tuple[np.ndarray, ...]:
        """a, b - a, c - a per face as nine contiguous float64 columns."""
        a, b, c = self.corners
        return tuple(np.ascontiguousarray(m[:, i]) for m in (a, b - a, c - a) for i in range(3))

    # -- queries -----------------------------------------------------------
    def signed_distance_mm(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Exact signed distance (mm, negative inside) at points ``(..., 3)``."""
        p = np.asarray(points_lps_mm, dtype=np.float64)
        flat = p.reshape(-1, 3)
        out = np.empty(len(flat))
        if len(flat):
            out[:] = _points_distance(self, flat)
        return out.reshape(p.shape[:-1])

    def grid_distance_mm(self, affine: np.ndarray, start, stop, band_mm: tuple[float, float]) -> np.ndarray:
        """Signed distance at the voxel centres ``start:stop`` of a grid with
        index -> LPS ``affine``: exact where it lies inside ``band_mm`` (lo, hi),
        else ``lo`` (below the band) or ``hi`` (above it). float64."""
        return _grid_distance(self, np.asarray(affine, np.float64), tuple(int(s) for s in start),
                              tuple(int(s) for s in stop), (float(band_mm[0]), float(band_mm[1])))


# ---------------------------------------------------------------------------
# Closest points on triangles
# ---------------------------------------------------------------------------
# Feature of the closest point: 0 face, 1-3 vertex A, B, C, 4 edge AB, 5 edge BC, 6 edge CA.
_FACE, _VA, _VB, _VC, _EAB, _EBC, _ECA = range(7)


def closest_on_triangles(px, py, pz, ax, ay, az, bx, by, bz, cx, cy, cz):
    """Closest point on triangles (a, a + (bx, by, bz), a + (cx, cy, cz)) to points p,
    all broadcastable arrays (b and c are edge vectors from a). Returns
    (squared distance, feature code, v, w) with the closest point a + v (b - a) + w (c - a)."""
    apx, apy, apz = px - ax, py - ay, pz - az
    d1 = bx * apx + by * apy + bz * apz
    d2 = cx * apx + cy * apy + cz * apz
    bb = bx * bx + by * by + bz * bz
    cc = cx * cx + cy * cy + cz * cz
    bc = bx * cx + by * cy + bz * cz
    d3, d4, d5, d6 = d1 - bb, d2 - bc, d1 - bc, d2 - cc
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    e43, e56 = d4 - d3, d5 - d6
    with np.errstate(divide="ignore", invalid="ignore"):
        total = va + vb + vc
        # Ericson's order matters: each test assumes the earlier ones failed.
        conds = [(d1 <= 0) & (d2 <= 0), (d3 >= 0) & (d4 <= d3),
                 (vc <= 0) & (d1 >= 0) & (d3 <= 0), (d6 >= 0) & (d5 <= d6),
                 (vb <= 0) & (d2 >= 0) & (d6 <= 0), (va <= 0) & (e43 >= 0) & (e56 >= 0)]
        w_bc = e43 / (e43 + e56)
        v = np.select(conds, [0.0, 1.0, d1 / (d1 - d3), 0.0, 0.0, 1.0 - w_bc], vb / total)
        w = np.select(conds, [0.0, 0.0, 0.0, 1.0, d2 / (d2 - d6), w_bc], vc / total)
    qx = bx * v + cx * w - apx
    qy = by * v + cy * w - apy
    qz = bz * v + cz * w - apz
    feature = np.select(conds, [_VA, _VB, _EAB, _VC, _ECA, _EBC], _FACE)
    return qx * qx + qy * qy + qz * qz, feature, v, w


def _squared_distance32(p, t):
    """Squared distance from points ``p`` (three float32 arrays) to triangles
    given by gathered ``_table32`` columns ``t``: the plane's where the point
    projects inside the triangle, else the nearest edge's."""
    ax, ay, az, bx, by, bz, cx, cy, cz, ex, ey, ez, nx, ny, nz, inn, ibb, icc, iee = t
    apx, apy, apz = p[0] - ax, p[1] - ay, p[2] - az
    bpx, bpy, bpz = apx - bx, apy - by, apz - bz

    def side(ux, uy, uz, vx, vy, vz):      # (u x v) . n
        return (uy * vz - uz * vy) * nx + (uz * vx - ux * vz) * ny + (ux * vy - uy * vx) * nz

    def edge(ux, uy, uz, qx, qy, qz, inv):
        s = np.clip((ux * qx + uy * qy + uz * qz) * inv, 0.0, 1.0)
        dx, dy, dz = qx - s * ux, qy - s * uy, qz - s * uz
        return dx * dx + dy * dy + dz * dz

    inside = (side(bx, by, bz, apx, apy, apz) >= 0) & (side(apx, apy, apz, cx, cy, cz) >= 0) \
        & (side(ex, ey, ez, bpx, bpy, bpz) >= 0)
    h = nx * apx + ny * apy + nz * apz
    rim = np.minimum(np.minimum(edge(bx, by, bz, apx, apy, apz, ibb), edge(cx, cy, cz, apx, apy, apz, icc)),
                     edge(ex, ey, ez, bpx, bpy, bpz, iee))
    return np.where(inside, h * h * inn, rim)


def _pair_distances(mesh: ClosedMesh, centres: np.ndarray, cell: np.ndarray, tri: np.ndarray):
    """Squared distance (float32, rounding ~1e-5 mm) from ``centres[cell]`` to
    triangles ``tri`` (pairs)."""
    out = np.empty(len(cell), dtype=np.float32)
    table = mesh._table32
    local = [np.ascontiguousarray(centres[:, i] - mesh._origin[i], dtype=np.float32) for i in range(3)]
    for s in range(0, len(cell), _PAIR_CHUNK):
        c, t = cell[s:s + _PAIR_CHUNK], tri[s:s + _PAIR_CHUNK]
        out[s:s + len(c)] = _squared_distance32([x[c] for x in local], [col[t] for col in table])
    return out


def _signed_nearest(mesh: ClosedMesh, points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Signed distance of each point to its (known) nearest triangle ``tri``."""
    soa = mesh._soa
    d2, feature, v, w = closest_on_triangles(points[:, 0], points[:, 1], points[:, 2],
                                             *(col[tri] for col in soa))
    a = np.stack([soa[0][tri], soa[1][tri], soa[2][tri]], axis=1)
    q = (a + v[:, None] * np.stack([soa[3][tri], soa[4][tri], soa[5][tri]], axis=1)
         + w[:, None] * np.stack([soa[6][tri], soa[7][tri], soa[8][tri]], axis=1))
    edge_index, edge_normals = mesh._edges
    normal = mesh.face_normals[tri].copy()
    for code, k in ((_VA, 0), (_VB, 1), (_VC, 2)):
        sel = feature == code
        normal[sel] = mesh.vertex_normals[mesh.faces[tri[sel], k]]
    for code, k in ((_EAB, 0), (_EBC, 1), (_ECA, 2)):
        sel = feature == code
        normal[sel] = edge_normals[edge_index[tri[sel], k]]
    outside = np.einsum("ij,ij->i", points - q, normal) > 0
    d = np.sqrt(d2)
    return np.where(outside, d, -d)


def _refine(mesh: ClosedMesh, centres: np.ndarray, radius: float, cell: np.ndarray, tri: np.ndarray):
    """One octree level. ``cell``/``tri``: candidate pairs, sorted by cell, for
    cells with ``centres`` (n, 3). Returns each cell's exact unsigned distance
    and nearest triangle, and the pairs that may hold the nearest triangle of
    some point within ``radius`` of its centre."""
    d2 = _pair_distances(mesh, centres, cell, tri)
    n = len(centres)
    starts = np.searchsorted(cell, np.arange(n))
    best2 = np.minimum.reduceat(d2, starts)
    dist = np.sqrt(best2)
    # Index of the first minimum in each cell's run of pairs.
    is_best = d2 == best2[cell]
    first = np.flatnonzero(is_best)
    nearest = np.empty(n, dtype=np.int64)
    nearest[cell[first][::-1]] = tri[first][::-1]
    reach = dist + 2.0 * radius + _ROUNDING_MM   # radius 0: the near-ties of the best
    keep = d2 <= (reach * reach)[cell]
    return dist, nearest, cell[keep], tri[keep]


def _half_diagonal(axes: np.ndarray, extent: np.ndarray) -> float:
    """Largest distance from a box's centre to its corners: the box spans
    ``extent`` along each column of ``axes`` (3x3)."""
    best = 0.0
    for signs in ((1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1)):
        best = max(best, float(np.linalg.norm(axes @ (np.asarray(signs) * extent))))
    return 0.5 * best


def _children(corner: np.ndarray, size: int, shape, cell: np.ndarray, tri: np.ndarray, live: np.ndarray):
    """The octree children (corners, in the block) of cells ``live`` and their
    candidate pairs: each child gets its parent's run of pairs."""
    half = size // 2
    offsets = np.array([[i, j, k] for i in (0, half) for j in (0, half) for k in (0, half)])
    child = (corner[live][:, None, :] + offsets[None]).reshape(-1, 3)
    inside = np.all(child < np.asarray(shape), axis=1)
    parent = np.repeat(live, 8)[inside]
    return child[inside], *_inherit(parent, len(corner), cell, tri)


def _inherit(parent: np.ndarray, n_parents: int, cell: np.ndarray, tri: np.ndarray):
    """Pairs (child, triangle) for children whose parents are ``parent``, from
    the parents' pairs ``cell``/``tri`` (sorted by cell)."""
    runs = np.bincount(cell, minlength=n_parents)
    run_start = np.searchsorted(cell, np.arange(n_parents))
    lengths = runs[parent]
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (np.repeat(np.arange(len(parent)), lengths),
            tri[np.repeat(run_start[parent], lengths) + within])


def _grid_distance(mesh: ClosedMesh, affine: np.ndarray, start, stop, band) -> np.ndarray:
    lo_band, hi_band = band
    shape = tuple(b - a for a, b in zip(start, stop))
    out = np.full(shape, np.nan)
    axes, origin = affine[:3, :3], affine[:3, 3]
    size = _ROOT_CELLS
    # Top-level cells tile the block; each starts with every triangle.
    corner = np.stack([g.ravel() for g in np.meshgrid(*[np.arange(0, n, size) for n in shape],
                                                        indexing="ij")], axis=1)
    cell = np.repeat(np.arange(len(corner)), len(mesh.faces))
    tri = np.tile(np.arange(len(mesh.faces)), len(corner))
    while size > 1:
        extent = np.minimum(size, np.asarray(shape)[None, :] - corner)
        centres = (corner + (extent - 1) / 2.0 + np.asarray(start)) @ axes.T + origin
        radius = _half_diagonal(axes, np.asarray([min(size, n) - 1 for n in shape], float))
        dist, nearest, cell, tri = _refine(mesh, centres, radius, cell, tri)
        signed = _signed_nearest(mesh, centres, nearest)
        above, below = signed - radius >= hi_band, signed + radius <= lo_band
        _fill_cells(out, corner, size, above, hi_band)
        _fill_cells(out, corner, size, below, lo_band)
        corner, cell, tri = _children(corner, size, shape, cell, tri, np.flatnonzero(~(above | below)))
        size //= 2
    centres = (corner + np.asarray(start)) @ axes.T + origin
    out[tuple(corner.T)] = np.clip(_nearest_signed(mesh, centres, cell, tri), lo_band, hi_band)
    return out


def _nearest_signed(mesh: ClosedMesh, points: np.ndarray, cell: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Exact signed distance of each point to the nearest of its candidate
    triangles (pairs ``cell``/``tri``, sorted by point): the candidates within
    float32 rounding of the best are compared again in float64."""
    _, _, cell, tri = _refine(mesh, points, 0.0, cell, tri)
    soa = mesh._soa
    d2 = closest_on_triangles(points[cell, 0], points[cell, 1], points[cell, 2],
                              *(col[tri] for col in soa))[0]
    starts = np.searchsorted(cell, np.arange(len(points)))
    best = np.minimum.reduceat(d2, starts)
    first = np.flatnonzero(d2 == best[cell])
    nearest = np.empty(len(points), dtype=np.int64)
    nearest[cell[first][::-1]] = tri[first][::-1]
    return _signed_nearest(mesh, points, nearest)


def _fill_cells(out: np.ndarray, corner: np.ndarray, size: int, which: np.ndarray, value: float) -> None:
    """Set every voxel of the cells ``corner[which]`` (``size`` voxels across) to ``value``."""
    if not np.any(which):
        return
    coarse = np.zeros(tuple(-(-n // size) for n in out.shape), dtype=bool)
    coarse[tuple((corner[which] // size).T)] = True
    for axis in range(3):
        coarse = np.repeat(coarse, size, axis=axis)
    out[coarse[:out.shape[0], :out.shape[1], :out.shape[2]]] = value


def _points_distance(mesh: ClosedMesh, points: np.ndarray) -> np.ndarray:
    """Exact signed distances at arbitrary points: an octree over a 1 mm lattice."""
    step_mm = 1.0
    origin = points.min(axis=0) - 0.5 * step_mm
    key = np.floor((points - origin) / step_mm).astype(np.int64)
    size = 1
    while size < max(1, int(key.max()) + 1):
        size *= 2
    size = max(size, 1)
    n_tri = len(mesh.faces)
    # Level by level: cells are the distinct keys // size of the points.
    cell_of_point = np.zeros(len(points), dtype=np.int64)
    cells = np.zeros((1, 3), dtype=np.int64)
    cell = np.zeros(n_tri, dtype=np.int64)
    tri = np.arange(n_tri)
    while True:
        centres = origin + (cells + 0.5) * size * step_mm
        radius = 0.5 * math.sqrt(3.0) * size * step_mm
        _, _, cell, tri = _refine(mesh, centres, radius, cell, tri)
        if size == 1:
            break
        size //= 2
        child_keys = key // size
        flat = (child_keys[:, 0] * (1 << 40)) + (child_keys[:, 1] * (1 << 20)) + child_keys[:, 2]
        unique, inverse = np.unique(flat, return_inverse=True)
        first_point = np.zeros(len(unique), dtype=np.int64)
        first_point[inverse[::-1]] = np.arange(len(points))[::-1]
        parent = cell_of_point[first_point]
        cells = child_keys[first_point]
        cell_of_point = inverse
        runs = np.bincount(cell, minlength=int(parent.max()) + 1 if len(parent) else 0)
        run_start = np.searchsorted(cell, np.arange(len(runs)))
        lengths = runs[parent]
        total = int(lengths.sum())
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        tri = tri[np.repeat(run_start[parent], lengths) + within]
        cell = np.repeat(np.arange(len(cells)), lengths)
    # Points against the candidates of their finest cell.
    order = np.argsort(cell_of_point, kind="stable")
    runs = np.bincount(cell, minlength=len(cells))
    run_start = np.searchsorted(cell, np.arange(len(cells)))
    lengths = runs[cell_of_point[order]]
    total = int(lengths.sum())
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    pair_tri = tri[np.repeat(run_start[cell_of_point[order]], lengths) + within]
    pair_point = np.repeat(np.arange(len(points)), lengths)
    out = np.empty(len(points))
    out[order] = _nearest_signed(mesh, points[order], pair_point, pair_tri)
    return out
