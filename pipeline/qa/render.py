"""Label overlays: CT slices in a bone window with translucent label colours.

Pure numpy -> RGB ``uint8`` arrays; only :func:`write_overlays` touches files
(PNG via Pillow). Displayed slices follow the radiological convention: the
patient's left is on the image's right, anterior up (axial), superior up
(coronal). Slices are resampled by nearest neighbour onto a square-pixel
LPS grid, so any scan orientation displays the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bones import LABEL_COLOURS_RGB, LABEL_NAMES
from ..volume import Volume

# Bone window (HU) for the grey background.
WINDOW_HU = (-200.0, 1200.0)
ALPHA = 0.45
# RGB per label (index = label value; 0 is unused): the bones' colours of pipeline.bones.
COLOURS = np.array([(0, 0, 0)] + [LABEL_COLOURS_RGB[LABEL_NAMES[k]] for k in sorted(LABEL_NAMES)],
                   dtype=np.float32)


def overlay(hu: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(H, W) HU and labels -> (H, W, 3) uint8: grey window, labels blended in."""
    lo, hi = WINDOW_HU
    grey = np.clip((hu - lo) / (hi - lo), 0.0, 1.0)[..., None] * 255.0
    rgb = np.repeat(grey, 3, axis=2)
    colour = COLOURS[np.clip(labels, 0, len(COLOURS) - 1)]
    blend = labels > 0
    rgb[blend] = (1 - ALPHA) * rgb[blend] + ALPHA * colour[blend]
    return rgb.astype(np.uint8)


# Display orientations: (image right, image up) as LPS unit vectors. Axial and
# coronal are radiological (patient left on the image right); sagittal is seen
# from the patient's left, anterior on the image left, as radiology displays it.
SLICE_AXES = {
    "axial": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
}


def slice_points(volume: Volume, orientation: str, through_lps_mm: np.ndarray,
                 pixel_mm: float, min_px: int = 0) -> np.ndarray:
    """LPS points (H, W, 3) of the display pixels of an ``orientation`` slice
    (see :data:`SLICE_AXES`) through the point ``through_lps_mm``, covering the
    volume's extent: columns step ``pixel_mm`` along image right, rows step
    ``pixel_mm`` along image down. ``min_px``: an extent shorter than that
    many pixels (a thin slab of slices seen from the side) is widened
    equally on both sides, beyond the volume."""
    if orientation not in SLICE_AXES:
        raise ValueError(f"orientation must be one of {', '.join(SLICE_AXES)}, got {orientation!r}")
    right, up = (np.asarray(v) for v in SLICE_AXES[orientation])
    corners = volume.index_to_lps(np.array(np.meshgrid(*[(0, n - 1) for n in volume.shape],
                                                       indexing="ij")).reshape(3, -1).T)
    along_right, along_up = corners @ right, corners @ up
    cols = np.arange(along_right.min(), along_right.max() + pixel_mm, pixel_mm)
    rows = np.arange(along_up.max(), along_up.min() - pixel_mm, -pixel_mm)
    cols, rows = _widened(cols, min_px, pixel_mm), _widened(rows, min_px, -pixel_mm)
    through = np.asarray(through_lps_mm, dtype=np.float64)
    base = through - (through @ right) * right - (through @ up) * up
    return base + rows[:, None, None] * up + cols[None, :, None] * right


def _widened(steps: np.ndarray, n: int, step: float) -> np.ndarray:
    """``steps`` (evenly spaced by ``step``) with as many more on either side as make ``n``."""
    missing = n - len(steps)
    if missing <= 0:
        return steps
    return steps[0] + step * np.arange(-(missing // 2), len(steps) + missing - missing // 2)


def sample_slice(volume: Volume, labels: np.ndarray, points_lps_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HU and labels at the nearest voxel of each point (H, W, 3); -1000 HU
    and label 0 outside the volume."""
    index = np.rint(volume.lps_to_index(points_lps_mm.reshape(-1, 3))).astype(np.int64)
    valid = np.all((index >= 0) & (index < np.array(volume.shape)), axis=1)
    index[~valid] = 0
    hu = np.where(valid, volume.hu[tuple(index.T)], -1000.0).reshape(points_lps_mm.shape[:2])
    lab = np.where(valid, labels[tuple(index.T)], 0).reshape(points_lps_mm.shape[:2])
    return hu, lab


def lps_slice(volume: Volume, labels: np.ndarray, plane: str, position_mm: float,
              pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """HU and labels sampled (nearest voxel) on an axial (``"axial"``, at LPS
    z = ``position_mm``) or coronal (``"coronal"``, at y) plane, as display
    arrays: rows go anterior->posterior (axial) or superior->inferior
    (coronal), columns go patient right -> left (radiological)."""
    if plane not in ("axial", "coronal"):
        raise ValueError(f"plane must be 'axial' or 'coronal', got {plane!r}")
    through = np.zeros(3)
    through[2 if plane == "axial" else 1] = position_mm
    return sample_slice(volume, labels, slice_points(volume, plane, through, pixel_mm))


def overlay_views(volume: Volume, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Coronal and axial views through the labelled bone's centre (and the
    femoral heads' level), RGB arrays keyed by view name."""
    pixel_mm = float(min(volume.spacing_mm.min(), 1.0))
    bone = np.argwhere(labels > 0)
    if bone.size == 0:
        centre = volume.index_to_lps((np.array(volume.shape)[None] - 1) / 2.0)[0]
    else:
        centre = volume.index_to_lps(bone.mean(axis=0)[None])[0]
    views = {"coronal": lps_slice(volume, labels, "coronal", centre[1], pixel_mm),
             "axial": lps_slice(volume, labels, "axial", centre[2], pixel_mm)}
    femur = np.argwhere(np.isin(labels, (4, 5)))
    if femur.size:
        top = volume.index_to_lps(femur)[:, 2].max() - 15.0
        views["axial_hips"] = lps_slice(volume, labels, "axial", top, pixel_mm)
    return {name: overlay(hu, lab) for name, (hu, lab) in views.items()}


def write_overlays(volume: Volume, labels: np.ndarray, folder: Path, stem: str) -> list[Path]:
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rgb in overlay_views(volume, labels).items():
        path = folder / f"{stem}_{name}.png"
        Image.fromarray(rgb).save(path)
        paths.append(path)
    return paths
