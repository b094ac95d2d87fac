"""The labelling box of a volume: voxel index <-> LPS mm, balls about LPS points on it, and
the array axis that runs along the body."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..volume import Volume, apply_affine


@dataclass(frozen=True, eq=False)
class Grid:
    """The labelling box of a volume: index <-> LPS mm."""

    volume: Volume
    box: tuple[slice, slice, slice]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.box)  # type: ignore[return-value]

    @property
    def offset(self) -> np.ndarray:
        return np.array([s.start for s in self.box], dtype=float)

    def lps(self, index: np.ndarray) -> np.ndarray:
        """LPS mm of box indices (N, 3)."""
        return apply_affine(self.volume.affine, np.asarray(index, dtype=float) + self.offset)

    def index(self, lps_mm: np.ndarray) -> np.ndarray:
        """Box indices (continuous) of LPS points (N, 3)."""
        return apply_affine(np.linalg.inv(self.volume.affine), lps_mm) - self.offset

    def sub_box(self, lps_mm: np.ndarray, margin_mm: float) -> tuple[slice, slice, slice] | None:
        """The part of the box holding the points' bounding box grown by ``margin_mm`` (full-grid slices)."""
        lo, hi = lps_mm.min(axis=0) - margin_mm, lps_mm.max(axis=0) + margin_mm
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        idx = self.index(corners)
        start = np.maximum(np.floor(idx.min(axis=0)).astype(int), 0)
        stop = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, self.shape)
        if np.any(stop <= start):
            return None
        return tuple(slice(int(a + o), int(b + o)) for a, b, o in zip(start, stop, self.offset.astype(int)))

    def local(self, sub: tuple[slice, ...]) -> tuple[slice, slice, slice]:
        """A part of the box given in full-grid slices (:meth:`sub_box`) as slices of the box."""
        return tuple(slice(s.start - o, s.stop - o) for s, o in zip(sub, self.offset.astype(int)))  # type: ignore[return-value]


def voxel_indices(mask: np.ndarray) -> np.ndarray:
    """(N, ndim) indices of the true voxels in C order: ``np.argwhere``'s
    answer, 4-6x faster on a 3D mask (numpy's nonzero is slow beyond one axis)."""
    return np.column_stack(np.unravel_index(np.flatnonzero(mask), mask.shape)).reshape(-1, mask.ndim)


def ball(centre_lps_mm: np.ndarray, reach_mm: float, grid: Grid):
    """(box within the labelling box, distance in mm of its voxels from the centre)."""
    sub = grid.sub_box(centre_lps_mm[None], reach_mm)
    if sub is None:
        return None, None
    local = grid.local(sub)
    k, j, i = np.ogrid[local]
    a = grid.volume.affine
    d2 = 0.0
    for row in range(3):
        coord = a[row, 0] * (k + grid.offset[0]) + a[row, 1] * (j + grid.offset[1]) \
            + a[row, 2] * (i + grid.offset[2]) + a[row, 3]
        d2 = d2 + (coord - centre_lps_mm[row]) ** 2
    return local, np.sqrt(d2)


def axial_axis(volume: Volume) -> int:
    """The array axis closest to the patient's long (S-I) axis: the axial
    planes are normal to it, whatever the acquisition plane."""
    direction = volume.affine[:3, :3] / np.asarray(volume.spacing_mm, dtype=float)
    return int(np.argmax(np.abs(direction[2])))


def grow_box(box: tuple[slice, ...], shape: tuple[int, ...], by: int = 1) -> tuple[slice, ...]:
    """``box`` grown by ``by`` voxels on every side, clipped to ``shape``."""
    return tuple(slice(max(s.start - by, 0), min(s.stop + by, n)) for s, n in zip(box, shape))
