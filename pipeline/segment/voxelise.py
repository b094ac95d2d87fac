"""Which voxel centres of a grid lie inside a closed triangle mesh.

Rays along one axis of the grid, one per voxel column along it: each
triangle's crossings with the rays under it are found in the index space of
the grid (any affine, sheared or mirrored), and the winding number along each
ray is the running sum of +1 where the ray enters the mesh and -1 where it
leaves. A voxel centre is inside where that sum is positive, which is right
for a closed, consistently oriented mesh and forgiving where an offset mesh
folds over itself. Cost: one pass over the triangles' footprints plus a
cumulative sum over the grid. The rays run along the axis across which the
voxels are widest, so the fewest meet each triangle: on 1 x 1 x 3 mm voxels
along a row, a third of the crossings of rays along the slice axis
(Pelvic-Ref-003's fitted model masks: 0.11 -> 0.08 s, the same voxels).
"""

from __future__ import annotations

import numpy as np

from ..volume import apply_affine

# The rays pass a hair off the integer grid, so a ray through a shared edge
# or vertex meets exactly one of the triangles there.
RAY_OFFSET = np.array([1.2345e-6, 2.3456e-6])


def inside_mesh(vertices_lps_mm: np.ndarray, faces: np.ndarray, affine: np.ndarray,
                box: tuple[slice, slice, slice], ray_axis: int | None = None) -> np.ndarray:
    """bool array, shape of ``box``: voxel centres of the grid ``affine`` (index
    -> LPS mm) inside the closed, outward-oriented mesh. ``ray_axis``: the
    axis the rays run along (default: across which the voxels are widest;
    the first of those)."""
    if ray_axis is None:
        step = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
        across = step[[1, 0, 0]] * step[[2, 2, 1]]
        ray_axis = int(np.flatnonzero(across >= across.max() * (1 - 1e-9))[0])
    if ray_axis == 0:
        return _inside_along_first(vertices_lps_mm, faces, affine, box)
    order = [ray_axis] + [a for a in range(3) if a != ray_axis]
    turned = np.array(affine, dtype=float)
    turned[:3, :3] = turned[:3, order]
    inside = _inside_along_first(vertices_lps_mm, faces, turned, tuple(box[a] for a in order))
    return np.transpose(inside, np.argsort(order))


def _inside_along_first(vertices_lps_mm: np.ndarray, faces: np.ndarray, affine: np.ndarray,
                        box: tuple[slice, slice, slice]) -> np.ndarray:
    """:func:`inside_mesh` with the rays along the first axis."""
    shape = tuple(s.stop - s.start for s in box)
    index = apply_affine(np.linalg.inv(affine), np.asarray(vertices_lps_mm, dtype=np.float64))
    index -= [s.start for s in box]
    tri = index[faces]                                   # (F, 3 corners, 3 axes)
    # The ray direction is +axis 0. Outward normal's component along it, in index
    # space; a mirroring affine reverses the triangles' orientation there.
    normal_k = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 0]
    if np.linalg.det(affine[:3, :3]) < 0:
        normal_k = -normal_k
    crossing = np.abs(normal_k) > 1e-12
    tri, normal_k = tri[crossing], normal_k[crossing]
    lo = np.ceil(tri[:, :, 1:].min(axis=1) - RAY_OFFSET).astype(np.int64)
    hi = np.floor(tri[:, :, 1:].max(axis=1) - RAY_OFFSET).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.array(shape[1:]) - 1)
    extent = np.maximum(hi - lo + 1, 0)
    count = extent[:, 0] * extent[:, 1]
    owner = np.repeat(np.arange(len(tri)), count)
    if owner.size == 0:
        return np.zeros(shape, dtype=bool)
    first = np.cumsum(count) - count
    rank = np.arange(owner.size) - first[owner]
    j = lo[owner, 0] + rank // extent[owner, 1]
    i = lo[owner, 1] + rank % extent[owner, 1]
    p = np.stack([j, i], axis=1) + RAY_OFFSET
    a, b, c = tri[owner, 0], tri[owner, 1], tri[owner, 2]

    # Barycentric coordinates in the (row, column) plane.
    ab, ac, ap = b[:, 1:] - a[:, 1:], c[:, 1:] - a[:, 1:], p - a[:, 1:]
    det = ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0]
    u = (ap[:, 0] * ac[:, 1] - ap[:, 1] * ac[:, 0]) / det
    v = (ab[:, 0] * ap[:, 1] - ab[:, 1] * ap[:, 0]) / det
    hit = (u >= 0) & (v >= 0) & (u + v <= 1)
    k = a[hit, 0] + u[hit] * (b[hit, 0] - a[hit, 0]) + v[hit] * (c[hit, 0] - a[hit, 0])
    step = np.where(normal_k[owner[hit]] < 0, 1, -1).astype(np.int16)  # entering where the normal faces the ray
    at = np.ceil(k).astype(np.int64)
    at[at < 0] = 0
    keep = at < shape[0]
    flat = np.ravel_multi_index((at[keep], j[hit][keep], i[hit][keep]), shape)
    # Added in place as int16: a weighted bincount over the whole box made it
    # float64 first (40 % of the time on the bench phantom's model masks).
    winding = np.zeros(shape, dtype=np.int16)
    np.add.at(winding.reshape(-1), flat, step[keep])
    np.cumsum(winding, axis=0, out=winding)
    return winding > 0
