"""Operations over each voxel's neighbourhood, by shifted slices in numpy.

Maximum and minimum over the 3x3x3 neighbourhood: separable, 4-5x faster
than scipy.ndimage's rank filters on the uint8 label arrays of a pelvis
(0.26 s vs 1.17 s on 35 M voxels). Voxels beyond the array edge do not
count (as scipy's "nearest"/"reflect" modes for a size-3 window).

Dilation, erosion and closing of a mask by a small symmetric structure (a
voxel's face neighbours, a ball of a few voxels): the same as
scipy.ndimage's binary morphology with that structure, the array's edge
included, by one shifted OR or AND per offset: with the face structure 13x
faster (0.009 s vs 0.12-0.13 s on an 11 M voxel box)."""

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


def min3_nonzero(labels: np.ndarray) -> np.ndarray:
    """Lowest nonzero value of a uint8 label array over the 3x3x3
    neighbourhood (0 where all 27 are 0): 0 - 1 wraps to 255, above every
    label (np.where's way costs 10 times the time on a byte array)."""
    return min3(labels.astype(np.uint8, copy=False) - np.uint8(1)) + np.uint8(1)


def pairs(shape: tuple[int, ...], structure: np.ndarray):
    """(here, there, offset) per offset of ``structure`` but its centre:
    slices of the voxels whose neighbour at that offset lies in the array,
    and of those neighbours."""
    centre = np.array(structure.shape) // 2
    for offset in np.argwhere(structure) - centre:
        if not offset.any():
            continue
        here = tuple(slice(max(-o, 0), n - max(o, 0)) for o, n in zip(offset, shape))
        there = tuple(slice(max(o, 0), n - max(-o, 0)) for o, n in zip(offset, shape))
        yield here, there, offset


def dilate(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """``mask`` dilated by ``structure`` (symmetric, holding its centre;
    nothing beyond the array edge)."""
    out = np.array(mask, dtype=bool, copy=True)
    for here, there, _ in pairs(mask.shape, structure):
        out[here] |= mask[there]
    return out


def erode(mask: np.ndarray, structure: np.ndarray, border: bool = False) -> np.ndarray:
    """``mask`` eroded by ``structure`` (symmetric, holding its centre);
    beyond the array edge counts as ``border`` (scipy's ``border_value``)."""
    out = np.array(mask, dtype=bool, copy=True)
    for here, there, offset in pairs(mask.shape, structure):
        out[here] &= mask[there]
        if not border:
            for axis, o in enumerate(offset):
                if o:
                    edge = [slice(None)] * mask.ndim
                    edge[axis] = slice(mask.shape[axis] - o, None) if o > 0 else slice(None, -o)
                    out[tuple(edge)] = False
    return out


def close(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Closing: dilated, then eroded (the outside beyond the edge is empty)."""
    return erode(dilate(mask, structure), structure)
