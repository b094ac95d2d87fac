"""Exact distance from points to a triangle mesh.

point-cloud-utils (MIT; libigl's axis-aligned bounding-box tree inside)
answers each point with the nearest triangle, its distance and the closest
point on it, exactly in double precision, about twenty times faster than a
k-d tree of triangle centres refined in numpy, which this module held before.

It builds its tree on every call (about 1 s per million triangles), so a
query first narrows the triangles it hands over, exactly: the nearest corner
of the mesh bounds each point's distance from above (a corner lies on the
surface), and from below once the longest distance from a point of a
triangle to its nearest corner is taken off. A few points (a screw's axis)
then meet only the triangles within their upper bound's reach, and points
whose lower bound exceeds a ``limit`` are not measured at all.
"""

from __future__ import annotations

import weakref

import numpy as np
import point_cloud_utils as pcu
import trimesh
from scipy.spatial import cKDTree

from .meshes import corner_max, corner_min, edge_lengths

# Queries of at most this many points meet only the triangles within their reach.
FEW_POINTS = 20_000
# Triangles with a longer edge are cut into pieces before the tree is built:
# a cutting guide's block faces (up to 150 mm slivers) made queries 10x slower.
SPLIT_EDGE_MM = 8.0


class NearSurface:
    """A mesh's surface, ready for many distance queries (a grid around a
    plate, the samples along a screw, a simplified view against its source).

    With a box (``lo_lps_mm``, ``hi_lps_mm``) only the triangles reaching
    into it are kept: distances are then exact for points whose nearest
    triangle reaches into the box, which holds for every point closer to
    the surface than to the box's outside.
    """

    def __init__(self, mesh=None, lo_lps_mm=None, hi_lps_mm=None, *, vertices=None, faces=None) -> None:
        v = np.asarray(mesh.vertices if mesh is not None else vertices, dtype=np.float64)
        f = np.asarray(mesh.faces if mesh is not None else faces, dtype=np.int64)
        given = np.arange(len(f))
        if lo_lps_mm is not None and len(f):
            lo, hi = face_boxes(mesh) if mesh is not None else _boxes_of(v[f])
            keep = np.all(hi >= lo_lps_mm, axis=1) & np.all(lo <= hi_lps_mm, axis=1)
            if keep.any():
                f, given = f[keep], given[keep]
        v, f, split = _split_long(v, f, SPLIT_EDGE_MM)
        self.vertices = np.ascontiguousarray(v)
        self.faces = np.ascontiguousarray(f)
        # The triangle of the mesh given that each of ``faces`` is part of.
        self.source = given[split]
        self._corner_tree = self._reach = self._tri_boxes = None

    def query(self, points: np.ndarray, limit: float | None = None,
              closest_points: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(distance, index of the nearest triangle in ``self.faces``,
        closest point) of each point. With ``limit``, exact for points within
        it; points that are certainly farther get distance inf, triangle -1
        and closest point nan (a point may be measured though farther).
        ``closest_points=False``: the closest points are not computed (None)."""
        points = np.ascontiguousarray(np.asarray(points, dtype=np.float64).reshape(-1, 3))
        n = len(points)
        distance, face = np.zeros(n), np.zeros(n, dtype=np.int64)
        closest = np.zeros((n, 3))
        if n == 0 or len(self.faces) == 0:
            return distance, face, closest
        measure = np.arange(n)
        faces = np.arange(len(self.faces))   # the triangles handed over
        if limit is not None or n <= FEW_POINTS:
            # A corner farther than this can not hold a point within the limit.
            bound = np.inf if limit is None else limit + self._corner_reach()
            upper = self._corners().query(points, distance_upper_bound=bound)[0]
            if limit is not None:
                far = upper - self._corner_reach() > limit   # inf: no corner within the bound
                distance[far], face[far], closest[far] = np.inf, -1, np.nan
                measure = np.flatnonzero(~far)
            if 0 < measure.size <= FEW_POINTS:
                reach = upper[measure][:, None]
                lo = (points[measure] - reach).min(axis=0)
                hi = (points[measure] + reach).max(axis=0)
                tri_lo, tri_hi = self._boxes()
                faces = np.flatnonzero(np.all(tri_hi >= lo, axis=1) & np.all(tri_lo <= hi, axis=1))
        if measure.size:
            # pcu answers a single point wrongly (another triangle, a scalar
            # distance; its own points are then read as something else): it is
            # asked twice, as two points, and the first answer kept.
            asked = points[measure] if measure.size > 1 else np.repeat(points[measure], 2, axis=0)
            d, f, barycentric = pcu.closest_points_on_mesh(np.ascontiguousarray(asked), self.vertices,
                                                           np.ascontiguousarray(self.faces[faces]))
            d, barycentric = d[:measure.size], barycentric[:measure.size]
            f = faces[np.asarray(f[:measure.size], dtype=np.int64)]
            distance[measure], face[measure] = d, f
            if closest_points:
                closest[measure] = np.einsum("ij,ijk->ik", barycentric, self.vertices[self.faces[f]])
        return distance, face, closest if closest_points else None

    def distance(self, points: np.ndarray, limit: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distance, closest point) of each point (``limit``: see :meth:`query`)."""
        d, _, closest = self.query(points, limit)
        return d, closest

    def _corners(self) -> cKDTree:
        """A k-d tree of the corners of the kept triangles."""
        if self._corner_tree is None:
            self._corner_tree = cKDTree(self.vertices[np.unique(self.faces)])
        return self._corner_tree

    def _corner_reach(self) -> float:
        """Longest distance from a point of a triangle to the triangle's
        nearest corner: at most its longest edge."""
        if self._reach is None:
            self._reach = float(edge_lengths(self.vertices[self.faces]).max())
        return self._reach

    def _boxes(self) -> tuple[np.ndarray, np.ndarray]:
        if self._tri_boxes is None:
            self._tri_boxes = _boxes_of(self.vertices[self.faces])
        return self._tri_boxes


_BOXES: "weakref.WeakKeyDictionary[trimesh.Trimesh, tuple[int, tuple[np.ndarray, np.ndarray]]]" = \
    weakref.WeakKeyDictionary()


def face_boxes(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) corner of each face's bounding box, computed once per mesh
    while its data is unchanged (the same bones and host are cropped many
    times: every plate, every guide, every keep-off test)."""
    key = hash(mesh)
    cached = _BOXES.get(mesh)
    if cached is not None and cached[0] == key:
        return cached[1]
    boxes = _boxes_of(np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces)])
    _BOXES[mesh] = (key, boxes)
    return boxes


def _boxes_of(tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return corner_min(tri), corner_max(tri)


def point_mesh_distance(points: np.ndarray, vertices: np.ndarray,
                        faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance of each point to the mesh, index in ``faces`` of the triangle it is measured to), exact."""
    near = NearSurface(vertices=vertices, faces=faces)
    d, face, _ = near.query(points, closest_points=False)
    return d, near.source[face]


def _split_long(v: np.ndarray, f: np.ndarray, longest_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices, faces, source face of each): triangles with an edge longer
    than ``longest_mm`` cut in two at its middle until none is, the same
    surface in pieces of the same plane (a soup: the pieces need not share
    corners with their neighbours). After the first pass only the triangles
    the last one cut or made are looked at (one within the length never grows)."""
    source = np.arange(len(f))
    look = np.arange(len(f))
    for _ in range(64):
        if look.size == 0:
            break
        tri = v[f[look]]
        length = edge_lengths(tri)
        at = corner_max(length) > longest_mm
        if not at.any():
            break
        long, tri, length = look[at], tri[at], length[at]
        s, rows = length.argmax(axis=1), np.arange(long.size)
        a, b, c = (f[long, (s + k) % 3] for k in range(3))
        m = len(v) + rows
        v = np.vstack([v, (tri[rows, s] + tri[rows, (s + 1) % 3]) / 2])
        first = len(f)
        f = np.vstack([f, np.column_stack([m, b, c])])   # a new array: the caller's faces stay
        f[long] = np.column_stack([a, m, c])
        source = np.concatenate([source, source[long]])
        look = np.concatenate([long, np.arange(first, len(f))])
    return v, f, source

