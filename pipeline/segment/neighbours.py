"""Operations over each voxel's neighbourhood, by shifted slices in numpy.

Maximum and minimum over the 3x3x3 neighbourhood: separable, 4-5x faster
than scipy.ndimage's rank filters on the uint8 label arrays of a pelvis
(0.26 s vs 1.17 s on 35 M voxels). Voxels beyond the array edge do not
count (as scipy's "nearest"/"reflect" modes for a size-3 window).

Dilation and erosion of a mask by its six face neighbours: the same as
scipy.ndimage's binary_dilation / binary_erosion with the face structure,
13x faster (0.009 s vs 0.12-0.13 s on an 11 M voxel box)."""

from __future__ import annotations

import numpy as np


def _extreme3(a: np.ndarray, op) -> np.ndarray:
    out = np.array(a, copy=True)
    for axis in range(a.ndim):
        src = out.copy()
        lo = [slice(None)] * a.ndim
        hi = [slice(None)] * a.ndim
        lo[axis], hi[axis] = slice(1, None), slice(None, -1)
        lo, hi = tuple(lo), tuple(hi)
        op(out[hi], src[lo], out=out[hi])
        op(out[lo], src[hi], out=out[lo])
    return out


def max3(a: np.ndarray) -> np.ndarray:
    """Maximum over the 3x3x3 neighbourhood (26 neighbours and the voxel)."""
    return _extreme3(a, np.maximum)


def min3(a: np.ndarray) -> np.ndarray:
    """Minimum over the 3x3x3 neighbourhood."""
    return _extreme3(a, np.minimum)


def _face_shifts(ndim: int):
    """(towards, from) slice pairs: each voxel and its neighbour one step
    along an axis, both ways."""
    for axis in range(ndim):
        lo = [slice(None)] * ndim
        hi = [slice(None)] * ndim
        lo[axis], hi[axis] = slice(1, None), slice(None, -1)
        yield tuple(hi), tuple(lo)
        yield tuple(lo), tuple(hi)


def face_dilate(mask: np.ndarray) -> np.ndarray:
    """``mask`` or a face neighbour in it (nothing beyond the array edge)."""
    out = np.array(mask, dtype=bool, copy=True)
    for here, there in _face_shifts(mask.ndim):
        out[here] |= mask[there]
    return out


def face_erode(mask: np.ndarray, border: bool = False) -> np.ndarray:
    """``mask`` with every face neighbour in it; beyond the array edge
    counts as ``border`` (scipy's ``border_value``)."""
    out = np.array(mask, dtype=bool, copy=True)
    for here, there in _face_shifts(mask.ndim):
        out[here] &= mask[there]
    if not border:
        for axis in range(mask.ndim):
            np.moveaxis(out, axis, 0)[[0, -1]] = False
    return out
