"""Segmentation: HU volume -> bone voxels (couch and specks removed), plus the
morphology the labelling stage uses to make each bone solid.

The order matters (see CONVENTIONS.md): the raw threshold is labelled first,
and closing and filling happen later, per bone (:mod:`pipeline.segment.labels` calls
:func:`close_and_fill` on each labelled bone), so closing never bridges the
thin joint spaces *between* bones, and filling never fills the space enclosed
by several bones together (pelvic inlet, obturator foramen).

The mask decides topology (which voxels belong to bone); the sub-voxel surface
position is the business of :mod:`pipeline.geometry.surface`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..config import SegmentConfig
from ..errors import InputError
from .lookup import label_counts, lookup
from .neighbours import close, dilate, pairs
from ..volume import Volume

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
# Bone above the core level is dense (cortex): segment.core_hu, or on weak
# bone CORE_FRACTION of the bone's bright end (its 99th percentile).
CORE_FRACTION = 0.5
# A piece of the mask holds a dense core when at least segment.min_core_mm3
# of it is above the core level, and at least CORE_SHARE of it: the cortex
# is 15 % of the TotalSegmentator example's spine on 3 mm voxels, 39 % of
# Pelvic-Ref-003's, while an artery full of contrast (under the core level)
# has none but its calcified plaques, specks on it.
CORE_SHARE = 0.05


@dataclass(frozen=True, eq=False)
class BoneMask:
    """Bone voxels inside a box of the volume's grid.

    ``voxels``: bool array, shape of ``volume.hu[box]``: the threshold voxels
    kept (inside the body, in pieces above the island size), not yet filled.
    ``box``: tuple of three slices locating ``solid`` in the full grid.
    ``smallest_piece_voxels``: size of the smallest bone piece kept.
    ``midline_x_lps_mm``: left-right centre (LPS x) of the bone, metal left
    out (:func:`bone_midline_x`); left and right bones are told apart
    relative to it, not to the array centre.
    ``core_hu``: this scan's core level (:func:`core_level_hu`).
    ``coreless``: flat indices into ``voxels`` of the pieces without a dense
    core (:data:`CORE_SHARE`): contrast-filled vessels, calcifications. The
    model is not fitted to them, the spine is not seeded in them, and no
    seed reaching them, they are not bone.
    ``stats``: counts and volumes for the report.
    """

    voxels: np.ndarray
    box: tuple[slice, slice, slice]
    smallest_piece_voxels: int
    midline_x_lps_mm: float
    core_hu: float
    coreless: np.ndarray
    stats: dict

    def full(self, shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        out[self.box] = self.voxels
        return out

    def with_core(self) -> np.ndarray:
        """``voxels`` without the pieces that hold no dense core."""
        if self.coreless.size == 0:
            return self.voxels
        out = self.voxels.copy()
        out.flat[self.coreless] = False
        return out


def segment_bone(volume: Volume, cfg: SegmentConfig) -> BoneMask:
    """Threshold and drop the couch and islands: the bone voxels, unfilled.

    ``solid`` holds the kept threshold voxels; marrow is filled per bone by
    the labelling stage."""
    voxel_mm3 = volume.voxel_volume_mm3
    candidates = volume.hu >= cfg.threshold_hu
    n_threshold = int(np.count_nonzero(candidates))
    no_bone = InputError(f"no bone found: no voxel inside the body reaches segment.threshold_hu = "
                         f"{cfg.threshold_hu:g} HU (is this a CT with bone in the field of view?)")
    outer = bounding_box(candidates)
    if outer is None:
        raise no_bone
    body, stride = body_region(volume, cfg.body_threshold_hu)
    kept = candidates[outer] & fine_cells(body, stride, outer)
    del candidates
    inner = bounding_box(kept)
    if inner is None:
        raise no_bone
    n_inside = int(np.count_nonzero(kept))

    radius_vox = closing_radius_voxels(volume.spacing_mm, cfg.closing_mm)
    box = tuple(slice(max(o.start + i.start - radius_vox - 2, 0), min(o.start + i.stop + radius_vox + 2, dim))
                for o, i, dim in zip(outer, inner, volume.shape))
    raw = np.zeros(tuple(b.stop - b.start for b in box), dtype=bool)
    raw[tuple(slice(o.start + i.start - b.start, o.start + i.stop - b.start)
              for o, i, b in zip(outer, inner, box))] = kept[inner]
    del kept
    labels, n = ndi.label(raw, structure=FACE_CONNECTIVITY)
    sizes = label_counts(labels, n + 1)
    keep = np.flatnonzero(sizes * voxel_mm3 >= cfg.min_island_mm3)
    keep = keep[keep > 0]
    if keep.size == 0:
        raise InputError(f"no bone found: every bone piece is smaller than segment.min_island_mm3 = "
                         f"{cfg.min_island_mm3:g} mm3")

    # Marrow is filled later, per bone (``labels``): filling here, per
    # connected piece, would be redone there and cost a second on a full scan.
    kept = np.zeros(n + 1, dtype=bool)
    kept[keep] = True
    solid = lookup(kept, labels)
    hu = volume.hu[box]
    core_hu = core_level_hu(hu[solid], cfg.core_hu)
    cores = np.bincount(labels[solid & (hu > core_hu)], minlength=n + 1)
    coreless = kept & ((cores < cfg.min_core_mm3 / voxel_mm3) | (cores < CORE_SHARE * sizes))
    coreless_voxels = np.flatnonzero(lookup(coreless, labels)) if coreless.any() else np.zeros(0, dtype=np.intp)

    stats = {
        "threshold_voxels": n_threshold,
        "removed_outside_body_mm3": round((n_threshold - n_inside) * voxel_mm3, 1),
        "pieces_found": int(n),
        "pieces_kept": int(keep.size),
        "removed_islands_mm3": round(float(sizes[1:].sum() - sizes[keep].sum()) * voxel_mm3, 1),
        "bone_threshold_mm3": round(float(np.count_nonzero(solid)) * voxel_mm3, 1),
        "metal_mm3": round(float(np.count_nonzero(solid & (hu >= METAL_HU))) * voxel_mm3, 1),
        "without_core_mm3": round(coreless_voxels.size * voxel_mm3, 1),
    }
    return BoneMask(voxels=solid, box=box, smallest_piece_voxels=int(sizes[keep].min()),
                    midline_x_lps_mm=bone_midline_x(volume, solid, box), core_hu=core_hu,
                    coreless=coreless_voxels, stats=stats)


def core_level_hu(bone_hu: np.ndarray, core_hu: float) -> float:
    """The level above which bone counts as dense core: ``core_hu``, or
    lower on weak bone: ``CORE_FRACTION`` of the bone's bright end (99th
    percentile of the mask's HU)."""
    if bone_hu.size == 0:
        return core_hu
    k = int(0.99 * (bone_hu.size - 1))
    return min(core_hu, CORE_FRACTION * float(np.partition(bone_hu, k)[k]))


def bone_midline_x(volume: Volume, solid: np.ndarray, box: tuple[slice, ...]) -> float:
    """LPS x of the centre of the bone voxels ``solid`` (in ``box`` of the
    volume's grid), metal (``METAL_HU``) left out, so a prosthesis on one
    side does not pull it over. From whole-number sums of voxel indices, so
    it is the same however the slices, rows and columns are stored (the body
    outline's centre, found on a grid sampled from the array's first voxel,
    moved by 0.07 mm when Pelvic-Ref-003's rows were stored the other way
    round, and the model fit started from it by 0.27 mm)."""
    bone = solid & (volume.hu[box] < METAL_HU)
    total = int(np.count_nonzero(bone))
    if total == 0:
        bone, total = solid, int(np.count_nonzero(solid))
    sums = [int(np.arange(bone.shape[axis], dtype=np.int64)
                @ np.count_nonzero(bone, axis=tuple(a for a in range(3) if a != axis)).astype(np.int64))
            for axis in range(3)]
    centre_index = np.array([b.start + total_sum / total for b, total_sum in zip(box, sums)])
    return float(volume.index_to_lps(centre_index[None])[0, 0])


def body_region(volume: Volume, body_threshold_hu: float) -> tuple[np.ndarray, np.ndarray]:
    """The patient: the largest connected region above ``body_threshold_hu``,
    found on a grid of cells of about ``BODY_GRID_MM`` (the last along each
    axis may be partial) for speed. Returns that coarse mask and the grid's
    stride (voxels per cell along each axis).

    The couch, its rails and anything else separated from the patient by air
    or foam fall outside it. Each cell takes its voxels' mean HU: on a noisy
    scan (a sharp kernel on a large patient, 90 HU of noise) single voxels of
    the foam between couch and patient (-750 HU) crossed the threshold and
    joined the couch's plastic to the body; a cell's mean has half that noise
    or less.
    """
    stride = np.maximum(np.floor(BODY_GRID_MM / volume.spacing_mm), 1).astype(int)
    above = _cell_means(volume.hu, stride) > body_threshold_hu
    body = np.zeros(above.shape, dtype=bool)
    box = bounding_box(above)   # the air around the patient holds no region (half the grid)
    if box is None:
        return body, stride
    labels, n = ndi.label(above[box], structure=FACE_CONNECTIVITY)
    sizes = label_counts(labels)
    sizes[0] = 0
    body[box] = labels == int(np.argmax(sizes))
    return body, stride


def _cell_means(values: np.ndarray, stride: np.ndarray) -> np.ndarray:
    """Mean of each cell of ``stride`` voxels (the last along each axis may
    be partial), a slab of cells at a time (the slab stays in the cache)."""
    cells = [-(-n // st) for n, st in zip(values.shape, stride)]
    out = np.empty(cells, dtype=np.float32)
    for c in range(cells[0]):
        block = values[c * stride[0]:(c + 1) * stride[0]]
        slab = block[0] if len(block) == 1 else block.mean(axis=0, dtype=np.float32)
        for axis in (0, 1):
            slab = _run_means(slab, axis, int(stride[axis + 1]))
        out[c] = slab
    return out


def _run_means(values: np.ndarray, axis: int, stride: int) -> np.ndarray:
    """Means of runs of ``stride`` values along ``axis`` (the last run may be
    shorter), by one strided addition per offset."""
    if stride == 1:
        return values
    n = values.shape[axis]
    shape = list(values.shape)
    shape[axis] = -(-n // stride)
    total = np.zeros(shape, dtype=np.float32)
    count = np.zeros(shape[axis], dtype=np.float32)
    for offset in range(stride):
        part = values[(slice(None),) * axis + (slice(offset, None, stride),)]
        k = part.shape[axis]
        total[(slice(None),) * axis + (slice(0, k),)] += part
        count[:k] += 1
    total /= count[:, None] if axis == 0 else count
    return total


def fine_cells(coarse: np.ndarray, stride: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """``coarse`` (one value per grid cell of ``stride`` voxels) on the full
    grid, within ``box``: every voxel takes its cell's value."""
    cells = tuple(slice(s.start // st, (s.stop - 1) // st + 1) for s, st in zip(box, stride))
    fine = coarse[cells]
    for axis, st in enumerate(stride):
        fine = np.repeat(fine, st, axis=axis)
    return fine[tuple(slice(s.start - c.start * st, s.stop - c.start * st)
                      for s, c, st in zip(box, cells, stride))]


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every true voxel of ``mask``, or None."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


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
                   max_slice_hole_mm2: float, axial: int = 0) -> np.ndarray:
    """Close small cortical gaps and fill the marrow of one bone piece.

    Two fills: cavities enclosed in 3D, then holes enclosed within a single
    slice (across :func:`slice_axis`) up to ``max_slice_hole_mm2``. The second is needed on thick slices:
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
        work = close(work, ball(spacing_mm, closing_mm))
    inner = tuple(slice(e[0] + f[0], work.shape[a] - e[1] - f[1])
                  for a, (e, f) in enumerate(zip(edge_pad, free_pad)))
    work = fill_cavities(work, FACE_CONNECTIVITY, [not b for pair in at_border for b in pair])
    across = slice_axis(spacing_mm, axial)
    in_plane = [a for a in range(3) if a != across]
    max_voxels = max_slice_hole_mm2 / float(np.prod(np.asarray(spacing_mm, dtype=float)[in_plane]))
    in_slice = fill_cavities(work, np.moveaxis(IN_SLICE_CONNECTIVITY, 0, across),
                             [a != across for a in range(3) for _ in range(2)], max_voxels=max_voxels)
    return in_slice[inner]


def slice_axis(spacing_mm, axial: int = 0) -> int:
    """The axis across the acquired slices: the one with the largest
    spacing; of equals, ``axial`` (the axis along the patient's length) if
    it is one of them, else the first. A DICOM series stacks its slices
    along axis 0; a NIfTI or NRRD file may store them along another. (On
    isotropic voxels "the first" followed the storage order: the same
    3 mm scan stored rows first filled the spine's holes in other planes,
    lumbar 0.986 against itself.)"""
    spacing = np.asarray(spacing_mm, dtype=float)
    widest = np.flatnonzero(spacing == spacing.max())
    return int(axial if axial in widest else widest[0])


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
        # (Products of the masks as bytes: np.where costs 5x as much here.)
        code = FAR_CODE - (FAR_CODE - twice) * m.view(np.uint8)
        if others is not None:
            code -= np.moveaxis(others, axis, 0).view(np.uint8) * (code - twice - np.int16(1))
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


# The plane orientations filled by fill_bridged_plane_holes (axis normal to
# the plane): all three (axial alone: Pelvic-Ref-003 femurs 0.880 / 0.865
# instead of 0.883 / 0.870, the TotalSegmentator example's hips and femurs
# 0.01-0.03 lower).
PLANE_AXES = (0, 1, 2)
# A cortex thinner than a voxel on thick slices can peak under the bone
# threshold: at 120 HU and above (three noise deviations over muscle's
# 40-60 HU) a voxel next to a bone's hole may be such a cortex, closing the
# gap it leaves (fill_bridged_plane_holes' ``faint``). A hole closed so is
# filled only where at least FAINT_RIM_SHARE of its rim is bone above the
# threshold: bright streaks beside metal enclose pockets of muscle by
# themselves (the TotalSegmentator example's left femur: 57 voxels of
# muscle without the rim's condition).
FAINT_CORTEX_HU = 120.0
FAINT_RIM_SHARE = 0.5


def fill_bridged_plane_holes(filled: np.ndarray, spacing_mm: np.ndarray, radius_mm: float,
                             others: np.ndarray, max_hole_mm2: float,
                             axes: tuple[int, ...] = PLANE_AXES, bright: np.ndarray | None = None,
                             faint: np.ndarray | None = None) -> np.ndarray:
    """``filled`` plus the holes it encloses within a plane (axial, coronal
    or sagittal) once its gaps narrower than about ``2 * radius_mm`` are
    bridged: marrow behind gaps in a thin cortex.

    In each plane the outside is what a square reaching ``radius_mm`` either
    side of its centre reaches from the plane's edge or from another bone
    (``others``) without touching ``filled`` (a morphological opening of the
    background; a square, not a disk, because running min/max filters make
    it cheap), grown back by ``radius_mm`` through the background. The square
    does not pass a gap narrower than itself, so the marrow behind it stays
    inside; the growing back returns to the outside a bone's concave corners
    and notches, which the square only rounds off (a closing would fill
    them). What is left, up to ``max_hole_mm2`` per hole and plane, is
    filled; the gap voxels themselves mostly stay as they are. A notch
    narrower than the square and deeper than ``radius_mm`` is filled beyond
    that depth. ``axes``: the axes normal to the planes filled. ``bright``
    (bool, like ``filled``): only holes at least half of whose voxels are
    bright are filled (a vertebra's marrow, not its canal). ``faint`` (bool,
    like ``filled``): a cortex under the threshold (``FAINT_CORTEX_HU``),
    which blocks the square as bone does; a hole it helps enclose is filled
    only where at least ``FAINT_RIM_SHARE`` of its rim (the faces between
    it and its in-plane neighbours) lies on ``filled``, and the faint
    voxels beside a filled hole (the gap it closed) are filled with it.
    """
    out = filled.copy()
    walls = filled if faint is None else filled | faint
    for axis in axes:
        plane = np.delete(np.asarray(spacing_mm, dtype=float), axis)
        half = np.floor(radius_mm / plane).astype(int)
        if not half.any():
            continue
        # The plane's axes last; beyond the array is background, outside.
        background = ~np.moveaxis(walls, axis, 0)
        other = np.moveaxis(others, axis, 0)
        reached = opening_rect(background, half)
        pieces, n = ndi.label(reached, structure=IN_SLICE_CONNECTIVITY)
        is_out = np.zeros(n + 1, dtype=bool)
        for edge in (pieces[:, 0], pieces[:, -1], pieces[:, :, 0], pieces[:, :, -1], pieces[other]):
            is_out[edge] = True
        is_out[0] = False
        outside = lookup(is_out, pieces) | (other & background)
        for edge in ((slice(None), 0), (slice(None), -1), (slice(None), slice(None), 0),
                     (slice(None), slice(None), -1)):
            outside[edge] |= background[edge]
        # Grow back by radius_mm through the background (fewer steps along a
        # coarser in-plane axis).
        both, more = int(half.min()), int(half.max() - half.min())
        for _ in range(both):
            outside = dilate(outside, IN_SLICE_CONNECTIVITY) & background
        if more > 0:
            line = np.zeros((3, 3, 3), dtype=bool)
            line[(1,) + tuple(slice(None) if h == half.max() else 1 for h in half)] = True
            for _ in range(more):
                outside = dilate(outside, line) & background
        holes, n = ndi.label(background & ~outside, structure=IN_SLICE_CONNECTIVITY)
        if n == 0:
            continue
        counts = label_counts(holes)
        small = counts * float(np.prod(plane)) <= max_hole_mm2
        if bright is not None:
            small &= 2 * np.bincount(holes[np.moveaxis(bright, axis, 0)], minlength=n + 1) >= counts
        if faint is not None:
            on_bone, rim = _rim_faces(holes, n, np.moveaxis(filled, axis, 0))
            small &= on_bone >= FAINT_RIM_SHARE * rim
        small[0] = False
        chosen = lookup(small, holes)
        np.moveaxis(out, axis, 0)[chosen] = True
        if faint is not None:
            np.moveaxis(out, axis, 0)[np.moveaxis(faint, axis, 0) & dilate(chosen, IN_SLICE_CONNECTIVITY)] = True
    return out


def opening_rect(mask: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Opening of ``mask`` in the planes of its last two axes by a
    rectangle of ``2 * half + 1`` pixels (1D running min/max: fast)."""
    work = mask.view(np.uint8)
    for axis, h in zip((1, 2), half):
        work = ndi.minimum_filter1d(work, 2 * int(h) + 1, axis=axis, mode="constant", cval=1)
    for axis, h in zip((1, 2), half):
        work = ndi.maximum_filter1d(work, 2 * int(h) + 1, axis=axis, mode="constant", cval=0)
    return work.view(bool)


def _rim_faces(holes: np.ndarray, n: int, bone: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per hole (``holes``: labels 1..n, planes along axes 1 and 2): how
    many of the in-plane faces between it and a voxel of no hole lie on
    ``bone``, and how many there are (counted per face, not per voxel:
    the same whatever the holes' numbering)."""
    on_bone = np.zeros(n + 1, dtype=np.int64)
    total = np.zeros(n + 1, dtype=np.int64)
    for here, there, _ in pairs(holes.shape, IN_SLICE_CONNECTIVITY):
        hole = holes[there]
        face = (hole > 0) & (holes[here] == 0)
        total += np.bincount(hole[face], minlength=n + 1)
        on_bone += np.bincount(hole[face & bone[here]], minlength=n + 1)
    return on_bone, total


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
        outside |= label_counts(background, n + 1) > max_voxels
    outside[0] = True  # label 0 is the mask itself: keep as is
    return mask | ~lookup(outside, background)
