"""The slice axis of a stack of parallel images: where it goes, and a uniform grid along it.

Pure geometry on ImagePositionPatient values, no DICOM. Slices are parallel
images whose origins lie on one line; the line's direction need not be the
slice normal (gantry tilt shears the stack). Positions are measured as the
distance along the slice **normal**, and the stacking direction is expressed
per millimetre of that distance, so the affine's slice column is exact for
tilted stacks too.

A stack whose steps differ (a missing slice, a protocol that steps 5 mm, then
1 mm, then 7 mm) is linearly interpolated onto a uniform grid along the same
line; a step larger than ``max_gap_mm`` is refused, not bridged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Tolerances, in one place.
STEP_REL_TOL = 1e-3        # step deviation from the mean step, as a fraction of it ...
STEP_ABS_TOL_MM = 1e-3     # ... plus this, in mm; also: closer slices are the same position
LINE_TOL_MM = 1e-2         # slice origins may lie this far off their common line
TILT_REPORT_DEG = 1e-3     # a smaller angle between stacking direction and normal is no tilt


class StackError(ValueError):
    """The positions do not describe a usable stack; ``index`` names the offending slice."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class SliceAxis:
    """Where a sorted stack's slices lie.

    ``along_mm``: each slice's distance along the unit ``normal`` (increasing).
    ``direction``: LPS displacement per mm along the normal (``normal`` plus
    the shear of a gantry tilt). ``origin_lps_mm``: position of the first slice.
    """

    along_mm: np.ndarray
    normal: np.ndarray
    direction: np.ndarray
    origin_lps_mm: np.ndarray

    @property
    def steps_mm(self) -> np.ndarray:
        return np.diff(self.along_mm)

    @property
    def tilt_deg(self) -> float:
        """Angle between the stacking direction and the slice normal."""
        cos = float(self.direction @ self.normal) / float(np.linalg.norm(self.direction))
        return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))

    @property
    def is_uniform(self) -> bool:
        steps = self.steps_mm
        mean = float(steps.mean())
        return bool(np.all(np.abs(steps - mean) <= STEP_REL_TOL * mean + STEP_ABS_TOL_MM))

    def slice_column(self, step_mm: float) -> np.ndarray:
        """The affine's slice column for a grid stepping ``step_mm`` along the normal."""
        return self.direction * step_mm


def slice_axis(positions_lps_mm: np.ndarray, normal: np.ndarray) -> SliceAxis:
    """Fit the line through the slice origins (sorted along ``normal``, all distinct).

    Raises
    ------
    StackError
        Two slices at the same distance along the normal, or a slice origin
        more than ``LINE_TOL_MM`` off the common line (index of that slice).
    """
    p = np.asarray(positions_lps_mm, dtype=np.float64)
    n = np.asarray(normal, dtype=np.float64)
    along = p @ n
    steps = np.diff(along)
    if np.any(steps <= STEP_ABS_TOL_MM):
        k = int(np.argmax(steps <= STEP_ABS_TOL_MM))
        raise StackError(f"two slices at {along[k]:.3f} mm along the slice normal", k + 1)
    t = along - along[0]
    offsets = p - p[0]
    direction = (t @ offsets) / float(t @ t)   # least squares: offsets ~ t * direction
    off_line = np.linalg.norm(offsets - np.outer(t, direction), axis=1)
    if off_line.max() > LINE_TOL_MM:
        k = int(np.argmax(off_line))
        raise StackError(f"slice origin lies {off_line[k]:.3f} mm off the line through the "
                         "other slice origins", k)
    return SliceAxis(along_mm=along, normal=n, direction=direction, origin_lps_mm=p[0].copy())


def uniform_positions(axis: SliceAxis, max_gap_mm: float) -> np.ndarray:
    """Distances along the normal of a uniform grid spanning the stack.

    The step is the median of the original steps, adjusted so the grid ends
    exactly on the last slice.

    Raises
    ------
    StackError
        A step larger than ``max_gap_mm`` (index of the slice after the gap).
    """
    steps = axis.steps_mm
    k = int(np.argmax(steps))
    if steps[k] > max_gap_mm:
        raise StackError(f"gap of {steps[k]:.3f} mm between positions {axis.along_mm[k]:.3f} "
                         f"and {axis.along_mm[k + 1]:.3f} mm along the slice normal exceeds "
                         f"the limit of {max_gap_mm:g} mm", k + 1)
    extent = float(axis.along_mm[-1] - axis.along_mm[0])
    n = int(round(extent / float(np.median(steps)))) + 1
    return axis.along_mm[0] + np.linspace(0.0, extent, n)


def resample_slices(hu: np.ndarray, along_mm: np.ndarray, target_mm: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``hu`` (slice, row, column) from ``along_mm`` to ``target_mm``.

    Both position arrays are increasing and ``target_mm`` lies within
    ``along_mm``; each output slice mixes the two nearest input slices.
    """
    out = np.empty((len(target_mm), *hu.shape[1:]), dtype=np.float32)
    upper = np.clip(np.searchsorted(along_mm, target_mm, side="left"), 1, len(along_mm) - 1)
    for m, (t, k) in enumerate(zip(target_mm, upper)):
        w = np.float32((t - along_mm[k - 1]) / (along_mm[k] - along_mm[k - 1]))
        np.multiply(hu[k - 1], 1 - w, out=out[m])
        out[m] += w * hu[k]
    return out
