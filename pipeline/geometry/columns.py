"""Heights of a triangle mesh along one direction, column by column.

Seen along a direction ``z`` (an approach, a lift-off), a mesh covers each
point of the perpendicular plane with some of its triangles; the highest of
them is what an object above that point meets first when lowered, the lowest
what it meets first when raised from below. :func:`column_extremes` gives
both at any set of points, exactly (barycentric interpolation on the
triangles that cover each point, no sampling), with the points and
triangles given in a frame whose third axis is ``z``.

Triangles and points are binned on a square grid of the plane, so the cost
grows with the pairs that share a cell, not with points x triangles.
"""

from __future__ import annotations

import numpy as np

from .meshes import corner_max, corner_min

# Pairs at a time: bounds the temporaries of the barycentric tests.
CHUNK = 1 << 20
# At most this many (triangle, cell) pairs per triangle and point.
CELLS_PER_ITEM = 16


def column_extremes(points_ab: np.ndarray, triangles_abz: np.ndarray, *, cell_mm: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(highest, lowest) z of the triangles covering each point's (a, b).

    ``points_ab``: (P, 2); ``triangles_abz``: (T, 3, 3), corners in a frame
    whose third axis is the direction of the columns. A point no triangle
    covers gets (-inf, +inf). A point on a shared edge counts for both
    triangles. Triangles seen edge-on (zero area in projection) cover
    nothing: they are walls along the columns, whose ends belong to the
    neighbouring triangles.
    """
    points = np.asarray(points_ab, dtype=np.float64).reshape(-1, 2)
    tri = np.asarray(triangles_abz, dtype=np.float64).reshape(-1, 3, 3)
    high = np.full(len(points), -np.inf)
    low = np.full(len(points), np.inf)
    if len(points) == 0 or len(tri) == 0:
        return high, low
    lo_t, hi_t = corner_min(tri[:, :, :2]), corner_max(tri[:, :, :2])
    if cell_mm is None:
        cell_mm = _cell_size(points, hi_t - lo_t)
    origin = np.minimum(points.min(axis=0), lo_t.min(axis=0))
    cells = np.floor((points - origin) / cell_mm).astype(np.int64)
    width = int(max(cells[:, 0].max(), np.floor((hi_t[:, 0] - origin[0]) / cell_mm).max())) + 1
    key = cells[:, 0] + width * cells[:, 1]
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    # Each triangle's covered cells, row by row of its bounding box.
    c0 = np.floor((lo_t - origin) / cell_mm).astype(np.int64)
    c1 = np.floor((hi_t - origin) / cell_mm).astype(np.int64)
    na, nb = c1[:, 0] - c0[:, 0] + 1, c1[:, 1] - c0[:, 1] + 1
    pair_tri = np.repeat(np.arange(len(tri)), na * nb)
    within = np.arange(pair_tri.size) - np.repeat(np.cumsum(na * nb) - na * nb, na * nb)
    cell_key = (c0[pair_tri, 0] + within % na[pair_tri]) + width * (c0[pair_tri, 1] + within // na[pair_tri])
    start, count = _runs(sorted_key, cell_key)
    keep = count > 0
    pair_tri, start, count = pair_tri[keep], start[keep], count[keep]
    table = _edges(tri)
    step = max(1, CHUNK // 16)   # (triangle, cell) pairs at a time
    for s in range(0, len(pair_tri), step):
        tc, st, ct = pair_tri[s:s + step], start[s:s + step], count[s:s + step]
        t_ids = np.repeat(tc, ct)
        offsets = np.arange(t_ids.size) - np.repeat(np.cumsum(ct) - ct, ct)
        p_ids = order[np.repeat(st, ct) + offsets]
        _scatter(points, table, p_ids, t_ids, high, low)
    return high, low


def _runs(sorted_key: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of the run of each of ``key`` in ``sorted_key``
    (length 0 where absent): from a table over all cell keys when it is no
    larger than the keys looked up (counting beats binary search there),
    else by binary search."""
    size = int(max(sorted_key[-1], key.max(initial=0))) + 1
    if size <= 2 * (key.size + sorted_key.size):
        length = np.bincount(sorted_key, minlength=size)
        first = np.cumsum(length) - length
        return first[key], length[key]
    start = np.searchsorted(sorted_key, key, side="left")
    return start, np.searchsorted(sorted_key, key, side="right") - start


def _cell_size(points: np.ndarray, extents: np.ndarray) -> float:
    """Cells no larger than the triangles nor than the points' mean spacing:
    pairs that share a cell are then mostly pairs that meet (a cell of the
    triangles' size holds many points where the points are dense; measured
    5-6x faster on a guide's grids). Doubled while the triangles would
    cover more than ``CELLS_PER_ITEM`` cells per triangle and point (a few
    large triangles over a thin strip of points)."""
    span = points.max(axis=0) - points.min(axis=0)
    spacing = float(np.sqrt(span[0] * span[1] / len(points))) or np.inf
    cell = max(min(float(np.median(extents.max(axis=1))), spacing), 1e-3)
    budget = CELLS_PER_ITEM * (len(points) + len(extents))
    while np.sum((np.floor(extents[:, 0] / cell) + 2) * (np.floor(extents[:, 1] / cell) + 2)) > budget:
        cell *= 2
    return cell


def _scatter(points, tri, p_ids, t_ids, high, low) -> None:
    """Test each (point, triangle) pair; where the triangle covers the point,
    fold its height there into ``high`` and ``low``. ``tri``: the triangles'
    :func:`_edges` table."""
    for s in range(0, len(p_ids), CHUNK):
        p, t = points[p_ids[s:s + CHUNK]], tri[t_ids[s:s + CHUNK]]
        v2 = p - t[:, 0:2]
        det = t[:, 7]
        u = (v2[:, 0] * t[:, 6] - v2[:, 1] * t[:, 5]) / det
        v = (t[:, 3] * v2[:, 1] - t[:, 4] * v2[:, 0]) / det
        eps = 1e-12
        inside = (u >= -eps) & (v >= -eps) & (u + v <= 1 + eps)   # NaN (edge-on) compares false
        z = t[:, 2] + u * t[:, 8] + v * t[:, 9]
        ids = p_ids[s:s + CHUNK][inside]
        np.maximum.at(high, ids, z[inside])
        np.minimum.at(low, ids, z[inside])


def facing_up(triangles_abz: np.ndarray, sign: float = 1.0) -> np.ndarray:
    """Whether each triangle looks up along z (down with ``sign`` -1). On a
    closed surface the highest point over any (a, b) lies on a triangle
    looking up, the lowest on one looking down (those seen edge-on cover
    nothing), so :func:`column_extremes` needs only those: half the triangles."""
    e0, e1 = _projected_edges(np.asarray(triangles_abz, dtype=np.float64).reshape(-1, 3, 3))
    return sign * (e0[:, 0] * e1[:, 1] - e0[:, 1] * e1[:, 0]) > 0


def _projected_edges(tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """b - a and c - a of each triangle (a, b, c), in (a, b)."""
    return tri[:, 1, :2] - tri[:, 0, :2], tri[:, 2, :2] - tri[:, 0, :2]


def _edges(tri: np.ndarray) -> np.ndarray:
    """Per triangle (a, b, c): a, b - a and c - a in (a, b), the projected
    determinant (NaN for a triangle seen edge-on), and the rise of z along
    both edges, computed once for all the pairs the triangle is in."""
    a = tri[:, 0]
    e0, e1 = _projected_edges(tri)
    det = e0[:, 0] * e1[:, 1] - e0[:, 1] * e1[:, 0]
    ok = np.abs(det) > 1e-12 * np.maximum(1.0, (e0 ** 2).sum(1) + (e1 ** 2).sum(1))
    return np.column_stack([a, e0, e1, np.where(ok, det, np.nan), tri[:, 1, 2] - a[:, 2], tri[:, 2, 2] - a[:, 2]])


def cell_bounds(triangles_abz: np.ndarray, origin_ab: np.ndarray, cell_mm: float, shape: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """(highest, lowest) z of the triangles whose (a, b) bounding box meets
    each cell of a grid (cells of ``cell_mm`` from ``origin_ab``, ``shape``
    cells; -inf and +inf where none). A bound on :func:`column_extremes` at
    every point of the cell: whatever covers a point meets its cell."""
    tri = np.asarray(triangles_abz, dtype=np.float64).reshape(-1, 3, 3)
    high = np.full(shape, -np.inf)
    low = np.full(shape, np.inf)
    if len(tri) == 0:
        return high, low
    limit = np.asarray(shape) - 1
    c0 = np.clip(np.floor((corner_min(tri[:, :, :2]) - origin_ab) / cell_mm).astype(np.int64), 0, limit)
    c1 = np.clip(np.floor((corner_max(tri[:, :, :2]) - origin_ab) / cell_mm).astype(np.int64), 0, limit)
    na, nb = c1[:, 0] - c0[:, 0] + 1, c1[:, 1] - c0[:, 1] + 1
    pair = np.repeat(np.arange(len(tri)), na * nb)
    within = np.arange(pair.size) - np.repeat(np.cumsum(na * nb) - na * nb, na * nb)
    cells = (c0[pair, 0] + within % na[pair], c0[pair, 1] + within // na[pair])
    np.maximum.at(high, cells, corner_max(tri[:, :, 2])[pair])
    np.minimum.at(low, cells, corner_min(tri[:, :, 2])[pair])
    return high, low


def cell_of(points_ab: np.ndarray, origin_ab: np.ndarray, cell_mm: float, shape: tuple[int, int]
            ) -> tuple[np.ndarray, np.ndarray]:
    """(cell index along a and b, whether inside the grid) of each point."""
    index = np.floor((np.asarray(points_ab, dtype=np.float64).reshape(-1, 2) - origin_ab) / cell_mm).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.asarray(shape)), axis=1)
    return np.where(inside[:, None], index, 0), inside
