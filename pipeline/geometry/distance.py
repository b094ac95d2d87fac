"""Exact distance from points to a triangle mesh.

The nearest triangle is looked for among the ``CANDIDATES`` triangles whose
centres lie nearest to the point (a k-d tree of triangle centres). That is
exact when even the farthest of those centres lies farther than the distance
found plus the largest triangle's reach from its centre (no triangle whose
centre lies farther can come nearer); for the few points where it does not,
every triangle whose centre lies within that bound is measured.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

CANDIDATES = 8
# Points at a time: bounds the (points x candidates x 3) temporaries.
CHUNK = 1 << 16


def closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest point to ``p`` on triangle ``abc``, row by row (all (N, 3)):
    the point's region among the triangle's vertices, edges and face
    (Ericson, "Real-Time Collision Detection", 5.1.5), vectorised."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = np.einsum("ij,ij->i", ab, ap), np.einsum("ij,ij->i", ac, ap)
    bp = p - b
    d3, d4 = np.einsum("ij,ij->i", ab, bp), np.einsum("ij,ij->i", ac, bp)
    cp = p - c
    d5, d6 = np.einsum("ij,ij->i", ab, cp), np.einsum("ij,ij->i", ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    tiny = 1e-300
    # Face interior by default; each region below overrides where it applies.
    denom = np.maximum(va + vb + vc, tiny)
    out = a + ab * (vb / denom)[:, None] + ac * (vc / denom)[:, None]
    edge_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    w = (d4 - d3) / np.maximum((d4 - d3) + (d5 - d6), tiny)
    out = np.where(edge_bc[:, None], b + (c - b) * w[:, None], out)
    edge_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    w = d2 / np.maximum(d2 - d6, tiny)
    out = np.where(edge_ac[:, None], a + ac * w[:, None], out)
    edge_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    w = d1 / np.maximum(d1 - d3, tiny)
    out = np.where(edge_ab[:, None], a + ab * w[:, None], out)
    out = np.where(((d6 >= 0) & (d5 <= d6))[:, None], c, out)
    out = np.where(((d3 >= 0) & (d4 <= d3))[:, None], b, out)
    out = np.where(((d1 <= 0) & (d2 <= 0))[:, None], a, out)
    return out


def point_mesh_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                        tree: cKDTree | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(exact distance of each point to the mesh, index of a nearest
    triangle). ``tree``: a k-d tree of the triangle centres, when the caller
    measures many point sets against one mesh."""
    points = np.asarray(points, dtype=np.float64)
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    tri = vertices[faces]
    centres = tri.mean(axis=1)
    if tree is None:
        tree = cKDTree(centres)
    reach = float(np.linalg.norm(tri - centres[:, None], axis=2).max())
    k = min(CANDIDATES, len(faces))
    distance = np.empty(len(points))
    nearest = np.empty(len(points), dtype=np.int64)
    for start in range(0, len(points), CHUNK):
        p = points[start:start + CHUNK]
        centre_mm, candidates = tree.query(p, k=k)
        candidates = np.asarray(candidates).reshape(len(p), k)
        d = _distances(p, tri, candidates)
        best = np.argmin(d, axis=1)
        found, face = d[np.arange(len(p)), best], candidates[np.arange(len(p)), best]
        unsure = np.flatnonzero(np.asarray(centre_mm).reshape(len(p), k)[:, -1] <= found + reach)
        if k < len(faces):
            for i in unsure:   # all triangles that may still be nearer
                near = np.asarray(tree.query_ball_point(p[i], found[i] + reach), dtype=np.int64)
                dd = _distances(p[i:i + 1], tri, near[None])[0]
                j = int(np.argmin(dd))
                found[i], face[i] = dd[j], near[j]
        distance[start:start + len(p)] = found
        nearest[start:start + len(p)] = face
    return distance, nearest


def _distances(p: np.ndarray, tri: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Distance from each point to each of its candidate triangles, (P, K)."""
    k = candidates.shape[1]
    t = tri[candidates.ravel()]
    repeated = np.repeat(p, k, axis=0)
    q = closest_on_triangles(repeated, t[:, 0], t[:, 1], t[:, 2])
    return np.linalg.norm(q - repeated, axis=1).reshape(len(p), k)
