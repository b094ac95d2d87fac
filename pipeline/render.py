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

from .volume import Volume

# Bone window (HU) for the grey background.
WINDOW_HU = (-200.0, 1200.0)
ALPHA = 0.45
# RGB per label (index = label value); 0 is unused.
COLOURS = np.array([[0, 0, 0], [230, 60, 60], [60, 120, 230], [240, 200, 40], [200, 80, 220],
                    [60, 200, 200], [120, 220, 90], [160, 160, 160]], dtype=np.float32)


def overlay(hu: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(H, W) HU and labels -> (H, W, 3) uint8: grey window, labels blended in."""
    lo, hi = WINDOW_HU
    grey = np.clip((hu - lo) / (hi - lo), 0.0, 1.0)[..., None] * 255.0
    rgb = np.repeat(grey, 3, axis=2)
    colour = COLOURS[np.clip(labels, 0, len(COLOURS) - 1)]
    blend = labels > 0
    rgb[blend] = (1 - ALPHA) * rgb[blend] + ALPHA * colour[blend]
    return rgb.astype(np.uint8)


def lps_slice(volume: Volume, labels: np.ndarray, plane: str, position_mm: float,
              pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """HU and labels sampled (nearest voxel) on an axial (``"axial"``, at LPS
    z = ``position_mm``) or coronal (``"coronal"``, at y) plane, as display
    arrays: rows go anterior->posterior (axial) or superior->inferior
    (coronal), columns go patient right -> left (radiological)."""
    corners = volume.index_to_lps(np.array(np.meshgrid(*[(0, n - 1) for n in volume.shape],
                                                       indexing="ij")).reshape(3, -1).T)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    xs = np.arange(lo[0], hi[0] + pixel_mm, pixel_mm)            # right -> left
    if plane == "axial":
        ys = np.arange(lo[1], hi[1] + pixel_mm, pixel_mm)        # anterior -> posterior
        grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1)
        points = np.concatenate([grid[..., 1:2], grid[..., 0:1], np.full(grid.shape[:2] + (1,), position_mm)], axis=-1)
    elif plane == "coronal":
        zs = np.arange(hi[2], lo[2] - pixel_mm, -pixel_mm)       # superior -> inferior
        grid = np.stack(np.meshgrid(zs, xs, indexing="ij"), axis=-1)
        points = np.concatenate([grid[..., 1:2], np.full(grid.shape[:2] + (1,), position_mm), grid[..., 0:1]], axis=-1)
    else:
        raise ValueError(f"plane must be 'axial' or 'coronal', got {plane!r}")
    index = np.rint(volume.lps_to_index(points.reshape(-1, 3))).astype(np.int64)
    valid = np.all((index >= 0) & (index < np.array(volume.shape)), axis=1)
    index[~valid] = 0
    hu = np.where(valid, volume.hu[tuple(index.T)], -1000.0).reshape(points.shape[:2])
    lab = np.where(valid, labels[tuple(index.T)], 0).reshape(points.shape[:2])
    return hu, lab


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
