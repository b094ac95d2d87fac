"""Distance from points to a triangle mesh, exact where it counts.

A point's candidate triangles are the ``CANDIDATES`` whose centres lie
nearest to it (a k-d tree of triangle centres), each measured exactly; the
best of them is an upper bound of the true distance. Where that bound
exceeds ``exact_above`` it is made exact: no triangle can come nearer than
its centre's distance less its own reach (the largest distance from its
centre to its corners), so every triangle whose centre lies within the
bound plus the largest reach, and whose own lower bound is below the
distance found, is measured too. A check against a tolerance needs no more
than ``exact_above`` = the tolerance: distances at or below it are only
known to be so.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

CANDIDATES = 8
# A triangle whose corners lie farther than this many times the median from
# its centre is large (a sliver of a cut face): bounded one by one.
LARGE_REACH_FACTOR = 4.0
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
                        exact_above: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(distance of each point to the mesh, index of the triangle it is
    measured to): exact wherever it exceeds ``exact_above``, else an upper
    bound at or below ``exact_above``."""
    points = np.asarray(points, dtype=np.float64)
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces, dtype=np.int64)]
    centres = tri.mean(axis=1)
    reach = np.linalg.norm(tri - centres[:, None], axis=2).max(axis=1)
    tree = cKDTree(centres)
    distance = np.empty(len(points))
    nearest = np.empty(len(points), dtype=np.int64)
    todo = np.arange(len(points))
    if exact_above > 0:
        # Most points of a check lie within the tolerance of the triangle
        # whose centre is nearest: that one triangle settles them.
        _nearest_of_candidates(points, todo, tri, tree, 1, distance, nearest)
        todo = np.flatnonzero(distance > exact_above)
    k = min(CANDIDATES, len(tri))
    _nearest_of_candidates(points, todo, tri, tree, k, distance, nearest)
    unsure = todo[distance[todo] > exact_above]
    if len(unsure) and k < len(tri):
        _refine(points, unsure, tri, centres, reach, tree, distance, nearest)
    return distance, nearest


def _nearest_of_candidates(points, which, tri, tree, k, distance, nearest) -> None:
    """At the points ``which``, in place: the distance to the nearest of the
    ``k`` triangles whose centres lie nearest, and that triangle."""
    for start in range(0, len(which), CHUNK):
        idx = which[start:start + CHUNK]
        p = points[idx]
        _, candidates = tree.query(p, k=k)
        candidates = np.asarray(candidates).reshape(len(p), k)
        d = _distances(p, tri, candidates)
        best = np.argmin(d, axis=1)
        rows = np.arange(len(p))
        distance[idx] = d[rows, best]
        nearest[idx] = candidates[rows, best]


def _refine(points, unsure, tri, centres, reach, tree, distance, nearest) -> None:
    """Make ``distance`` exact at the points ``unsure``, in place: measure
    every triangle whose lower bound (centre distance less its reach) is
    below the distance found. Triangles of ordinary size come from a ball
    query of the centres; the few large ones (a cut face's slivers) are
    bounded directly, so they do not widen every ball."""
    small_reach = LARGE_REACH_FACTOR * float(np.median(reach))
    large = np.flatnonzero(reach > small_reach)
    pair_point, pair_tri = [], []
    balls = tree.query_ball_point(points[unsure], distance[unsure] + small_reach)
    counts = np.array([len(b) for b in balls])
    pair_point.append(np.repeat(unsure, counts))
    pair_tri.append(np.concatenate([np.asarray(b, dtype=np.int64) for b in balls]) if counts.sum()
                    else np.zeros(0, dtype=np.int64))
    if len(large):
        bound = np.linalg.norm(points[unsure][:, None] - centres[large][None], axis=2) - reach[large][None]
        which, j = np.nonzero(bound < distance[unsure][:, None])
        pair_point.append(unsure[which])
        pair_tri.append(large[j])
    pp, pt = np.concatenate(pair_point), np.concatenate(pair_tri)
    keep = np.linalg.norm(centres[pt] - points[pp], axis=1) - reach[pt] < distance[pp]
    pp, pt = pp[keep], pt[keep]
    for start in range(0, len(pp), CHUNK):
        a, b = pp[start:start + CHUNK], pt[start:start + CHUNK]
        d = _distances(points[a], tri, b[:, None])[:, 0]
        order = np.lexsort((d, a))          # per point, nearest first
        a, b, d = a[order], b[order], d[order]
        first = np.r_[True, a[1:] != a[:-1]]
        better = d[first] < distance[a[first]]
        distance[a[first][better]] = d[first][better]
        nearest[a[first][better]] = b[first][better]


def _distances(p: np.ndarray, tri: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Distance from each point to each of its candidate triangles, (P, K)."""
    k = candidates.shape[1]
    t = tri[candidates.ravel()]
    repeated = np.repeat(p, k, axis=0)
    q = closest_on_triangles(repeated, t[:, 0], t[:, 1], t[:, 2])
    return np.linalg.norm(q - repeated, axis=1).reshape(len(p), k)


class NearSurface:
    """Exact distances and closest points to a mesh's surface near it, where
    many points ask (a grid around a plate, the samples along a screw).

    The surface is taken within a box (the triangles reaching into it), its
    large triangles (a cut face's slivers) split into pieces no larger than
    ``SPLIT_FACTOR`` times the median edge: the same surface, so the same
    distances, with a small bound ``reach`` on every triangle's extent from
    its centre. A point's k triangles with the nearest centres are
    measured; every other triangle lies at least (k-th centre distance −
    reach) away, so the answer is certain once that bound exceeds the
    distance found, or the limit asked for; uncertain points are measured
    again with four times as many candidates.
    """

    SPLIT_FACTOR = 1.3

    def __init__(self, mesh, lo_lps_mm=None, hi_lps_mm=None) -> None:
        tri = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces, dtype=np.int64)]
        if lo_lps_mm is not None:
            keep = (np.all(tri.max(axis=1) >= lo_lps_mm, axis=1) & np.all(tri.min(axis=1) <= hi_lps_mm, axis=1))
            tri = tri[keep]
        if len(tri) == 0:
            tri = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces, dtype=np.int64)]
        edges = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).max(axis=1)
        size = self.SPLIT_FACTOR * float(np.median(edges))
        large = edges > size
        if large.any():
            import trimesh  # only here: the module is otherwise numpy and scipy
            v, f = trimesh.remesh.subdivide_to_size(tri[large].reshape(-1, 3),
                                                    np.arange(3 * int(large.sum())).reshape(-1, 3), size)
            tri = np.concatenate([tri[~large], v[f]])
        self.triangles = tri
        centres = tri.mean(axis=1)
        self.reach = float(np.linalg.norm(tri - centres[:, None], axis=2).max())
        self.tree = cKDTree(centres)

    def distance(self, points: np.ndarray, limit_mm) -> tuple[np.ndarray, np.ndarray]:
        """(distance, closest point) of each point: exact where the distance
        is at most ``limit_mm`` (one value or per point); elsewhere above the
        limit, and an upper bound at most ``reach`` over the truth (the
        nearest of the candidates measured; nearly always exact)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        limit = np.broadcast_to(np.asarray(limit_mm, dtype=np.float64), (len(points),))
        tri, n = self.triangles, len(self.triangles)
        out = np.full(len(points), np.inf)
        closest = np.zeros((len(points), 3))
        again = np.zeros(len(points), dtype=bool)
        todo = np.arange(len(points))
        k = 8
        while todo.size:
            k = min(k, n)
            for start in range(0, todo.size, max(CHUNK // k, 1)):
                rows = todo[start:start + max(CHUNK // k, 1)]
                dc, cand = self.tree.query(points[rows], k=k)
                dc, cand = dc.reshape(len(rows), k), cand.reshape(len(rows), k)
                # Only the candidates that could beat what is known (and the nearest, always).
                best = np.minimum(out[rows], limit[rows])
                mask = dc - self.reach < best[:, None]
                mask[:, 0] = True
                which, j = np.nonzero(mask)
                p = points[rows[which]]
                t = tri[cand[which, j]]
                q = closest_on_triangles(p, t[:, 0], t[:, 1], t[:, 2])
                d = np.full(mask.shape, np.inf)
                d[which, j] = np.sqrt(np.einsum("ij,ij->i", q - p, q - p))
                first = np.argmin(d, axis=1)
                found = d[np.arange(len(rows)), first]
                better = found < out[rows]
                r = rows[better]
                out[r] = found[better]
                at = np.full(mask.shape, -1, dtype=np.int64)
                at[which, j] = np.arange(len(which))
                closest[r] = q[at[np.arange(len(rows)), first][better]]
                bound = dc[:, -1] - self.reach
                # A triangle missed lies at most ``reach`` nearer than the nearest
                # centre measured: beyond ``limit + reach`` nothing missed matters.
                sure = (out[rows] <= bound) | (bound > limit[rows]) | (out[rows] - self.reach > limit[rows])
                again[rows] = ~(sure | (k == n))
            todo = np.flatnonzero(again)
            again[:] = False
            k *= 4
        return out, closest
