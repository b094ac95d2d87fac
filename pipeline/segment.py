"""Segmentation: HU volume -> bone voxels (couch and specks removed), plus the
morphology the labelling stage uses to make each bone solid.

The order matters (see CONVENTIONS.md): the raw threshold is labelled first,
and closing and filling happen later, per bone (:mod:`pipeline.labels` calls
:func:`close_and_fill` on each labelled bone), so closing never bridges the
thin joint spaces *between* bones, and filling never fills the space enclosed
by several bones together (pelvic inlet, obturator foramen).

The mask decides topology (which voxels belong to bone); the sub-voxel surface
position is the business of :mod:`pipeline.surface`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .config import SegmentConfig
from .errors import InputError
from .volume import Volume

# Face connectivity: two bone voxels touching only at an edge or corner are not
# joined, which keeps partial-volume bridges across joint spaces from merging bones.
FACE_CONNECTIVITY = ndi.generate_binary_structure(3, 1)
# Face connectivity within a slice only (nothing along the slice axis).
IN_SLICE_CONNECTIVITY = np.zeros((3, 3, 3), dtype=bool)
IN_SLICE_CONNECTIVITY[1] = ndi.generate_binary_structure(2, 1)
# Above this is metal (implants, screws), not bone: cortical bone stays under
# ~2000 HU. It is counted inside the bone mask for the report's warning.
METAL_HU = 2500.0
# The body outline is found on a grid of about this spacing: the body/couch
# gap is centimetres, and labelling a fine full grid costs ~1 s.
BODY_GRID_MM = 2.0


@dataclass(frozen=True, eq=False)
class BoneMask:
    """Bone voxels inside a box of the volume's grid.

    ``voxels``: bool array, shape of ``volume.hu[box]``: the threshold voxels
    kept (inside the body, in pieces above the island size), not yet filled.
    ``box``: tuple of three slices locating ``solid`` in the full grid.
    ``smallest_piece_voxels``: size of the smallest bone piece kept.
    ``midline_x_lps_mm``: left-right centre (LPS x) of the body outline; left
    and right bones are told apart relative to it, not to the array centre.
    ``stats``: counts and volumes for the report.
    """

    voxels: np.ndarray
    box: tuple[slice, slice, slice]
    smallest_piece_voxels: int
    midline_x_lps_mm: float
    stats: dict

    def full(self, shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        out[self.box] = self.voxels
        return out


def segment_bone(volume: Volume, cfg: SegmentConfig) -> BoneMask:
    """Threshold and drop the couch and islands: the bone voxels, unfilled.

    ``solid`` holds the kept threshold voxels; marrow is filled per bone by
    the labelling stage."""
    voxel_mm3 = volume.voxel_volume_mm3
    candidates = volume.hu >= cfg.threshold_hu
    index = np.nonzero(candidates)
    n_threshold = index[0].size
    inside, midline_x_lps_mm = in_body(index, volume, cfg.body_threshold_hu)
    candidates[tuple(i[~inside] for i in index)] = False
    index = tuple(i[inside] for i in index)
    if index[0].size == 0:
        raise InputError(f"no bone found: no voxel inside the body reaches segment.threshold_hu = "
                         f"{cfg.threshold_hu:g} HU (is this a CT with bone in the field of view?)")

    radius_vox = closing_radius_voxels(volume.spacing_mm, cfg.closing_mm)
    box = tuple(slice(max(int(i.min()) - radius_vox - 2, 0), min(int(i.max()) + radius_vox + 3, dim))
                for i, dim in zip(index, volume.shape))
    raw = candidates[box]
    del candidates
    labels, n = ndi.label(raw, structure=FACE_CONNECTIVITY)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = np.flatnonzero(sizes * voxel_mm3 >= cfg.min_island_mm3)
    keep = keep[keep > 0]
    if keep.size == 0:
        raise InputError(f"no bone found: every bone piece is smaller than segment.min_island_mm3 = "
                         f"{cfg.min_island_mm3:g} mm3")

    # Marrow is filled later, per bone (labels.py): filling here, per
    # connected piece, would be redone there and cost a second on a full scan.
    kept = np.zeros(n + 1, dtype=bool)
    kept[keep] = True
    solid = kept[labels]

    stats = {
        "threshold_voxels": n_threshold,
        "removed_outside_body_mm3": round((n_threshold - index[0].size) * voxel_mm3, 1),
        "pieces_found": int(n),
        "pieces_kept": int(keep.size),
        "removed_islands_mm3": round(float(sizes[1:].sum() - sizes[keep].sum()) * voxel_mm3, 1),
        "bone_threshold_mm3": round(float(np.count_nonzero(solid)) * voxel_mm3, 1),
        "metal_mm3": round(float(np.count_nonzero(solid & (volume.hu[box] >= METAL_HU))) * voxel_mm3, 1),
    }
    return BoneMask(voxels=solid, box=box, smallest_piece_voxels=int(sizes[keep].min()),
                    midline_x_lps_mm=midline_x_lps_mm, stats=stats)


def in_body(index: tuple[np.ndarray, ...], volume: Volume,
            body_threshold_hu: float) -> tuple[np.ndarray, float]:
    """Whether each voxel of ``index`` lies in the patient: the largest
    connected region above ``body_threshold_hu``; and that region's mean LPS x
    (mm), the body midline.

    The couch, its rails and anything else separated from the patient by air
    or foam fall outside it. The region is found on a grid of about
    ``BODY_GRID_MM`` (every n-th voxel) for speed.
    """
    stride = np.maximum(np.floor(BODY_GRID_MM / volume.spacing_mm), 1).astype(int)
    coarse = volume.hu[::stride[0], ::stride[1], ::stride[2]] > body_threshold_hu
    labels, n = ndi.label(coarse, structure=FACE_CONNECTIVITY)
    if n == 0:
        return np.zeros(index[0].shape, dtype=bool), float(volume.index_to_lps(
            (np.array(volume.shape)[None] - 1) / 2.0)[0, 0])
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = int(np.argmax(sizes))
    centre_index = np.array(ndi.center_of_mass(labels == body)) * stride
    coarse_index = tuple(i // s for i, s in zip(index, stride))
    return labels[coarse_index] == body, float(volume.index_to_lps(centre_index[None])[0, 0])


def closing_radius_voxels(spacing_mm: np.ndarray, closing_mm: float) -> int:
    return int(np.max(np.floor(closing_mm / np.asarray(spacing_mm))))


def ball(spacing_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    """Ellipsoidal structuring element of ``radius_mm`` on an anisotropic grid."""
    r = radius_mm / np.asarray(spacing_mm, dtype=float)
    half = np.floor(r).astype(int)
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g / ri) ** 2 for g, ri in zip(grids, r)) <= 1.0


def close_and_fill(piece: np.ndarray, radius_vox: int, spacing_mm: np.ndarray,
                   closing_mm: float, at_border: list[tuple[bool, bool]],
                   max_slice_hole_mm2: float) -> np.ndarray:
    """Close small cortical gaps and fill the marrow of one bone piece.

    Two fills: cavities enclosed in 3D, then holes enclosed within a single
    slice up to ``max_slice_hole_mm2``. The second is needed on thick slices:
    where thin cortex runs obliquely, the bone's outline shifts by more than
    the cortex between slices, and the marrow of one slice touches the
    outside of the next, so no 3D cavity exists although every slice shows a
    closed ring (seen on 3 mm pelvic CT: hollow femurs).

    ``at_border[axis] = (low, high)`` says which faces of ``piece`` are the
    edge of the scan. There the bone is cut by the field of view: it is padded
    by repeating its last slice (so closing does not round it off), and a
    cavity opening onto such a face (the femoral canal at the last slice) is
    still filled, because only the faces inside the scan count as "outside".
    """
    pad = radius_vox + 1
    edge_pad = [(pad if lo else 0, pad if hi else 0) for lo, hi in at_border]
    free_pad = [(0 if lo else pad, 0 if hi else pad) for lo, hi in at_border]
    work = np.pad(np.pad(piece, edge_pad, mode="edge"), free_pad, mode="constant")
    if radius_vox > 0:
        work = ndi.binary_closing(work, structure=ball(spacing_mm, closing_mm))
    inner = tuple(slice(e[0] + f[0], work.shape[a] - e[1] - f[1])
                  for a, (e, f) in enumerate(zip(edge_pad, free_pad)))
    work = fill_cavities(work, FACE_CONNECTIVITY, [not b for pair in at_border for b in pair])
    max_voxels = max_slice_hole_mm2 / float(spacing_mm[1] * spacing_mm[2])
    in_slice = fill_cavities(work, IN_SLICE_CONNECTIVITY, [False, False, True, True, True, True],
                             max_voxels=max_voxels)
    return in_slice[inner]


# A voxel is enclosed by a bone when all six axis directions meet it within
# reach. (With five of six, a single bone's concave corners were filled too:
# where the iliac wing meets the acetabulum, phantom hip Dice -0.004.)
ENCLOSED_DIRECTIONS = 6
FAR_CODE = np.int16(32767)  # odd: never read as a voxel of the mask


def enclosed_directions(mask: np.ndarray, reach_vox: np.ndarray, at_border: list[tuple[bool, bool]],
                        others: np.ndarray | None = None) -> np.ndarray:
    """Per voxel, in how many of the six axis directions (0..6) the first
    bone met within ``reach_vox[axis]`` voxels is ``mask`` (not ``others``:
    other bones, which block the view). A direction that leaves the array
    through a face marked in ``at_border`` (the edge of the scan) before
    meeting another bone counts as met: the bone goes on beyond the field of
    view."""
    count = np.zeros(mask.shape, dtype=np.uint8)
    for axis, (low_edge, high_edge) in enumerate(at_border):
        m = np.moveaxis(mask, axis, 0)
        n, k = m.shape[0], int(reach_vox[axis])
        shape = (n,) + (1,) * (m.ndim - 1)
        # Each bone voxel is coded 2 * index (+1 if another bone's): the
        # nearest bone voxel along the axis is then one running min / max,
        # and its parity says whose it is. int16: a scan is < 16k voxels long.
        twice = (2 * np.arange(n, dtype=np.int16)).reshape(shape)
        code = np.where(m, twice, np.int16(FAR_CODE))
        if others is not None:
            code = np.where(np.moveaxis(others, axis, 0), twice + np.int16(1), code)
        view = np.moveaxis(count, axis, 0)
        # ahead: the first bone voxel after i
        ahead_code = np.minimum.accumulate(code[::-1], axis=0)[::-1][1:]
        ahead = ((ahead_code & 1) == 0) & (ahead_code - twice[:-1] <= 2 * k)
        if high_edge:  # nothing ahead before the scan's edge, which is within reach
            ahead |= (ahead_code == FAR_CODE) & ((n - 1) - np.arange(n - 1).reshape((-1,) + shape[1:]) <= k)
            view[-1] += np.uint8(1)
        view[:-1] += ahead
        # behind: the last bone voxel before i
        code[code == FAR_CODE] = -1
        behind_code = np.maximum.accumulate(code, axis=0)[:-1]
        behind = (behind_code >= 0) & ((behind_code & 1) == 0) & (twice[1:] - behind_code <= 2 * k)
        if low_edge:
            behind |= (behind_code < 0) & (np.arange(1, n).reshape((-1,) + shape[1:]) <= k)
            view[0] += np.uint8(1)
        view[1:] += behind
    return count


def fill_cavities(mask: np.ndarray, structure: np.ndarray, open_faces: list[bool],
                  max_voxels: float = np.inf) -> np.ndarray:
    """``mask`` plus the background regions (connected by ``structure``) that
    touch none of the ``open_faces`` (low, high per axis) and have at most
    ``max_voxels`` voxels."""
    background, n = ndi.label(~mask, structure=structure)
    outside = np.zeros(n + 1, dtype=bool)
    for face, is_open in enumerate(open_faces):
        if is_open:
            outside[np.take(background, 0 if face % 2 == 0 else -1, axis=face // 2)] = True
    if np.isfinite(max_voxels):
        outside |= np.bincount(background.ravel(), minlength=n + 1) > max_voxels
    outside[0] = True  # label 0 is the mask itself: keep as is
    return mask | ~outside[background]
