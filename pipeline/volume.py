"""A CT volume: voxel array plus the affine that places it in patient space.

Conventions, stated once here and relied on everywhere:

* **Array axis order** is ``(slice, row, column)`` -- ``hu[k, j, i]`` is the
  pixel in row ``j``, column ``i`` of the ``k``-th slice along the slice normal.
  This is how DICOM slices stack in memory, so nothing is transposed on load.
* **Affine**: a 4x4 matrix mapping the homogeneous index ``(k, j, i, 1)`` to
  patient **LPS** millimetres (x to the patient's Left, y Posterior,
  z Superior), the DICOM patient frame. Spacing, origin and direction are
  derived from it, never stored beside it, so oblique, flipped and sheared
  (gantry tilt) grids need no special cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

AXES = ("slice", "row", "column")
# Voxel spacing is read to this many decimals of a millimetre (see Volume.spacing_mm).
SPACING_DECIMALS = 6


def check_affine(affine: np.ndarray) -> np.ndarray:
    """Return ``affine`` as a float64 4x4 array, or raise ``ValueError``."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {a.shape}")
    if not np.allclose(a[3], [0, 0, 0, 1]):
        raise ValueError("affine bottom row must be [0, 0, 0, 1]")
    if not np.all(np.isfinite(a)):
        raise ValueError("affine has non-finite entries")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError("affine is singular")
    return a


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``(N, 3)`` points (index or mm) through a 4x4 affine."""
    p = np.asarray(points, dtype=np.float64)
    return p @ affine[:3, :3].T + affine[:3, 3]


@dataclass(frozen=True, eq=False)
class Volume:
    """Hounsfield units on a grid placed in LPS millimetres by ``affine``.

    ``hu``: float32 array, shape ``(n_slices, n_rows, n_columns)``.
    ``affine``: 4x4, index ``(k, j, i, 1)`` -> LPS mm.
    ``notes``: human-readable facts about how the volume was obtained
    (chosen series, resampling, skipped files); they go to the report.
    """

    hu: np.ndarray
    affine: np.ndarray
    meta: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"hu must be 3-D (slice, row, column), got shape {self.hu.shape}")
        object.__setattr__(self, "affine", check_affine(self.affine))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> np.ndarray:
        """Distance between neighbouring voxel centres along (slice, row, column),
        to a nanometre: a scanner's direction cosines carry float noise (a
        1.0 mm pixel read as 0.99999999999372 mm), which must not decide a
        voxel count at a tie (2.5 mm over 1.0 mm rounds to 2 voxels; over
        0.9999999 mm, to 3) or which axis is the slices'. The affine keeps
        every digit."""
        return np.round(np.linalg.norm(self.affine[:3, :3], axis=0), SPACING_DECIMALS)

    @property
    def origin_lps_mm(self) -> np.ndarray:
        """LPS position of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit LPS directions of the array axes."""
        return self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def index_to_lps(self, index: np.ndarray) -> np.ndarray:
        return apply_affine(self.affine, index)

    def lps_to_index(self, points_lps_mm: np.ndarray) -> np.ndarray:
        return apply_affine(np.linalg.inv(self.affine), points_lps_mm)

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.3g}" for s in self.spacing_mm)
        org = ", ".join(f"{o:.1f}" for o in self.origin_lps_mm)
        return (f"Volume(shape={self.shape} (slice, row, column), spacing_mm=({sp}), "
                f"origin_lps_mm=({org}), orientation={orientation_code(self.affine)})")


def orientation_code(affine: np.ndarray) -> str:
    """Three letters naming the LPS direction each array axis increases towards.

    For an axial head-first scan with standard rows this is ``"SPL"``:
    slices go superior, rows go posterior, columns go to the patient's left.
    """
    letters = (("L", "R"), ("P", "A"), ("S", "I"))
    out = []
    for col in np.asarray(affine)[:3, :3].T:
        ax = int(np.argmax(np.abs(col)))
        out.append(letters[ax][0] if col[ax] > 0 else letters[ax][1])
    return "".join(out)


def flip_axis(volume: Volume, axis: int) -> Volume:
    """The same physical image with array axis ``axis`` stored in reverse order.

    The voxel at new index ``n - 1 - m`` is the old voxel ``m``; the affine is
    adjusted so every voxel keeps its LPS position.
    """
    n = volume.hu.shape[axis]
    a = volume.affine.copy()
    a[:3, 3] = a[:3, 3] + a[:3, axis] * (n - 1)
    a[:3, axis] = -a[:3, axis]
    return Volume(np.flip(volume.hu, axis=axis).copy(), a, dict(volume.meta), volume.notes)
