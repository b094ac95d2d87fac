"""The lumbar spine: its vertebral bodies' faint marrow, its canal, and where L1 ends.

The vertebrae are not in the pelvis shape model: their bodies are filled
between their endplates (:func:`vertebral_marrow`, on the soft tissue's
smoothed HU: :func:`tissue_hu`), the canal, which fills close where
neighbouring arches overlap, is opened again as the dark tube that runs up
the spine (:func:`open_canal`), and the levels are counted up from the
sacrum disc by disc so that ``lumbar`` is L1-L5 (:func:`vertebrae_above_l1`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from ..bones import LUMBAR, OTHER, SACRUM
from ..volume import Volume, apply_affine
from .distance_map import closed, opened
from .grid import Grid, axial_axis, voxel_indices
from .lookup import lookup
from .mask import FACE_CONNECTIVITY, bounding_box
from .neighbours import dilate

# A vertebral body's marrow (see vertebral_marrow): at least SPINE_MARROW_HU
# on the soft tissue's HU smoothed by SPINE_SMOOTHING_MM (tissue_hu: the dense
# core left out; fat -100, CSF 0-30, psoas 40-60 HU; faint lumbar marrow on
# 3 mm slices 90-200 HU), met by the spine's bone in
# at least SPINE_ENCLOSED of the six axis directions, or joined to it within
# marrow thicker than twice SPINE_MARROW_CORE_MM (the bone's own blurred edge,
# smoothed, is thinner).
SPINE_MARROW_HU, SPINE_SMOOTHING_MM, SPINE_ENCLOSED = 80.0, 1.5, 4
SPINE_MARROW_CORE_MM = 2 * SPINE_SMOOTHING_MM
# A vertebral body's endplates lie at least this far apart (a disc's 5-14 mm).
SPINE_BODY_MM = 16.0
# A pocket of marrow an axial slice of the spine encloses (see
# solid.solid_bone) reaches SPINE_POCKET_HU (smoothed as above): fatty
# marrow does, the canal's CSF and fat do not.
SPINE_POCKET_HU = 40.0
# A body's marrow met by its bone at one end only lies at least this far
# from another bone along the spine: the disc between L5 and the sacrum,
# above the sacrum's endplate, is as bright as faint marrow.
SPINE_CLEAR_MM = 9.0
# Lumbar levels, counted up from the sacrum disc by disc (see
# vertebrae_above_l1): LUMBAR_LEVELS discs above the lowest lumbar body; a
# body's cross-section is the spine in each axial slice opened by a disc of
# BODY_OPEN_MM (arches, processes and ribs are thinner); the first two
# discs lie within LEVEL_MM of the level below, the next within LEVEL_SPREAD
# of the last spacing of it; a disc's slice holds at most DISC_DEPTH of the
# bodies' largest cross-section within BODY_REACH_MM on both sides; the
# bodies seeding the split keep DISC_CLEAR_MM from the disc. Before the
# opening, each slice is closed by BODY_CLOSE_MM (specks of marrow the fills
# left); the cross-sections are counted on an in-plane grid of about
# BODY_GRID_MM (every k-th voxel).
LUMBAR_LEVELS = 5
BODY_OPEN_MM, BODY_CLOSE_MM, BODY_GRID_MM = 6.0, 3.0, 3.0
LEVEL_MM = (20.0, 50.0)
LEVEL_SPREAD = 0.3
DISC_DEPTH, BODY_REACH_MM, DISC_CLEAR_MM = 0.75, 15.0, 4.5
# The spinal canal: spine fill darker than CANAL_HU (smoothed as above; CSF
# and epidural fat, 0-60 HU with partial volume), connected and running at
# least CANAL_MIN_LENGTH_MM along the body (a dark pocket of marrow is short).
CANAL_HU, CANAL_MIN_LENGTH_MM = 60.0, 40.0
# Past the sacrum's S3 end the dural sac has ended (at S2): the canal holds
# epidural fat and nerve roots only, darker than SACRAL_CANAL_HU (smoothed),
# and the lower sacrum's marrow, fatty as it is in older patients, is not
# (Pelvic-Ref-003: canal under -20 HU, marrow 0-100 HU).
SACRAL_CANAL_HU = 0.0


def open_canal(labels: np.ndarray, certain: np.ndarray, hu: np.ndarray, volume: Volume,
               fat_only: np.ndarray | None = None, beside_model: np.ndarray | None = None) -> int:
    """Take the spinal and sacral canal out of the spine's and the sacrum's
    fills, in place; returns the voxels taken out. Where the vertebral
    arches of neighbouring levels overlap, and where the sacral canal is
    narrower than the fills' reach beyond the fitted sacrum, the canal is
    enclosed like marrow and the fills close it; its contents (CSF,
    epidural fat, nerve roots) are darker than marrow and form a tube along
    the spine, while dark pockets of marrow are short. ``certain``: voxels
    never taken (threshold bone, a model bone's deep interior). ``fat_only``
    (like ``labels``): where the canal holds fat only, darker than
    ``SACRAL_CANAL_HU`` (past the fitted sacrum's S3 end; with ``CANAL_HU`` there,
    Pelvic-Ref-003's fatty sacral marrow was taken out as canal).
    ``beside_model`` (like ``labels``): the sacrum's voxels in the band just
    outside its fitted surface, where its fills reach past the model; a fill
    there dark by its own HU as well as smoothed is the canal or a foramen
    wider than the fitted one, whatever the length of the dark it belongs
    to (Pelvic-Ref-003's S1-S2 canal: stripes of the fills, 205 voxels)."""
    filled = ((labels == LUMBAR) | (labels == SACRUM)) & ~certain
    box = bounding_box(filled)
    if box is None:
        return 0
    level = CANAL_HU if fat_only is None else np.where(fat_only[box], np.float32(SACRAL_CANAL_HU),
                                                        np.float32(CANAL_HU))
    darker = filled[box] & (smooth_hu(hu[box], volume.spacing_mm) < level)
    dark, n = ndi.label(darker, structure=FACE_CONNECTIVITY)
    if n == 0:
        return 0
    z = apply_affine(volume.affine, voxel_indices(dark > 0) + [s.start for s in box])[:, 2]
    ids = dark[dark > 0]
    z_min, z_max = np.full(n + 1, np.inf), np.full(n + 1, -np.inf)
    np.minimum.at(z_min, ids, z)
    np.maximum.at(z_max, ids, z)
    canal = z_max - z_min >= CANAL_MIN_LENGTH_MM
    canal[0] = False
    taken = lookup(canal, dark)
    if beside_model is not None:
        taken |= darker & beside_model[box] & (hu[box] < level)
    labels[box][taken] = 0
    return int(np.count_nonzero(taken))


def vertebral_marrow(filled: np.ndarray, met: np.ndarray, hu: np.ndarray, spacing_mm: np.ndarray,
                     axial: int, scan_edges: tuple[bool, bool] = (False, False),
                     others: np.ndarray | None = None) -> np.ndarray:
    """The marrow of vertebral bodies whose thin cortex leaves gaps: voxels
    at least ``SPINE_MARROW_HU`` (smoothed HU) between endplates met up and
    down at least ``SPINE_BODY_MM`` apart, that either

    - the spine's bone meets in ``SPINE_ENCLOSED`` of the six axis
      directions (up and down among them), or
    - join the spine's bone through such voxels, keeping only what lies
      within ``SPINE_MARROW_CORE_MM`` of a point deeper than that in them:
      the front of a lumbar body, whose cortex on 3 mm slices is too thin to
      enclose it (on TotalSegmentator's example the L1-L5 Dice went 0.75 ->
      0.80), while the bone's own blurred edge at that HU, a layer one or two
      voxels thick around every vertebra, is too thin to hold such a point.

    The same joined marrow is taken where an endplate is met at one end
    only, the other too faint to reach the bone threshold, if its run of
    marrow along the spine is at least ``SPINE_BODY_MM`` and, along the
    spine, it lies at least ``SPINE_CLEAR_MM`` from ``others`` (the other
    bones): the lower part of a faint L5 above a disc as bright as its
    marrow and the sacrum's endplate (TotalSegmentator's example: L1-L5
    0.863 -> 0.875, sacrum unchanged; without the clearance the disc went
    with L5 and the sacrum lost 19 voxels to the gap kept between labels).

    The canal's contents and the soft tissue around the spine are darker,
    a vessel in front of the spine meets no bone above and below it, and a
    disc lies between endplates only 5-14 mm apart. ``scan_edges`` (low,
    high, along ``axial``): the scan's edge stands for an endplate beyond
    the field of view (a vertebra cut by it)."""
    candidate = ~filled & (hu >= SPINE_MARROW_HU)
    if not candidate.any():
        return candidate
    n = filled.shape[axial]
    index = np.arange(n).reshape((-1,) + (1,) * (filled.ndim - 1))
    above, below = _nearest_along(np.moveaxis(filled, axial, 0))
    if scan_edges[1]:
        above = np.where(above >= n, n + n, above)   # beyond the scan: far enough
    if scan_edges[0]:
        below = np.where(below < 0, -n - n, below)
    both = ((above < n) | scan_edges[1]) & ((below >= 0) | scan_edges[0])   # bone met up and down
    both = np.moveaxis(both, 0, axial)
    gap_mm = np.moveaxis(above - below, 0, axial) * float(spacing_mm[axial])
    between = candidate & both & (gap_mm >= SPINE_BODY_MM)
    # Where the scan's edge stands for the bone met up or down, that
    # direction is unknown: the other five must all meet bone (with four,
    # the blurred layer beside the arches of a vertebra cut by the edge
    # passed as marrow).
    at_edge = np.moveaxis((above >= n) | (below < 0), 0, axial)
    enclosed = between & (met >= SPINE_ENCLOSED + at_edge)
    # A body met by its bone at one end only (the other endplate too faint
    # to reach the bone threshold): a run of marrow along the spine at least
    # a body's height, clear of the other bones along it.
    run_mm = np.moveaxis(run_length(np.moveaxis(candidate, axial, 0)), 0, axial) * float(spacing_mm[axial])
    one_end = candidate & np.moveaxis((above < n) | (below >= 0), 0, axial) & (run_mm >= SPINE_BODY_MM)
    if others is not None:
        other_above, other_below = _nearest_along(np.moveaxis(others, axial, 0))
        clear_mm = np.minimum(other_above - index, index - other_below) * float(spacing_mm[axial])
        one_end &= np.moveaxis(clear_mm >= SPINE_CLEAR_MM, 0, axial)
    # Opened by a ball of SPINE_MARROW_CORE_MM (from distances: any spacing).
    thick = opened(between | one_end, SPINE_MARROW_CORE_MM, spacing_mm)
    pieces, _ = ndi.label(thick, structure=FACE_CONNECTIVITY)
    joined = np.unique(pieces[thick & dilate(filled, FACE_CONNECTIVITY)])
    return enclosed | lookup(np.isin(np.arange(pieces.max() + 1), joined[joined > 0]), pieces)


def _nearest_along(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per voxel, the index along axis 0 of the nearest ``mask`` voxel at or
    after it (``2n`` where there is none) and at or before it (``-2n``)."""
    n = mask.shape[0]
    index = np.arange(n).reshape((-1,) + (1,) * (mask.ndim - 1))
    above = np.minimum.accumulate(np.where(mask, index, n + n)[::-1], axis=0)[::-1]
    below = np.maximum.accumulate(np.where(mask, index, -n - n), axis=0)
    return above, below


def run_length(mask: np.ndarray, open_ends: tuple[bool, bool] = (False, False)) -> np.ndarray:
    """Per voxel of ``mask``, the length (voxels) of its run of ``mask`` along
    axis 0; 0 elsewhere. A run that reaches an end marked in ``open_ends``
    (low, high: the scan's edge) goes on beyond it by an unknown length, and
    is given the largest length the type holds (no gap in millimetres can
    reach it, however short the array)."""
    n = mask.shape[0]
    index = np.arange(n).reshape((-1,) + (1,) * (mask.ndim - 1))
    start = np.maximum.accumulate(np.where(mask, -1, index), axis=0)          # last gap at or before i
    end = np.minimum.accumulate(np.where(mask, n, index)[::-1], axis=0)[::-1]  # first gap at or after i
    length = end - start - 1
    unknown = np.iinfo(length.dtype).max
    if open_ends[0]:
        length[start < 0] = unknown
    if open_ends[1]:
        length[end >= n] = unknown
    return np.where(mask, length, 0)


@dataclass(frozen=True)
class Levels:
    """The lumbar discs found (LPS z of each, mm, from L4/L5 up) and the voxels
    of the spine above L1 made ``other``."""

    discs_mm: tuple[float, ...] = ()
    voxels: int = 0


def vertebrae_above_l1(labels: np.ndarray, hu: np.ndarray, grid: Grid, size: float = 1.0) -> Levels:
    """Relabel, in place, the spine above L1 (T12 and up, with the ribs
    joined to it) as ``other``: "lumbar" is L1-L5. The levels are counted
    up from the sacrum: the vertebral bodies' cross-section along the spine
    (each axial slice of the spine closed by ``BODY_CLOSE_MM`` and opened by
    ``BODY_OPEN_MM``) falls at every disc, the first two within ``LEVEL_MM``
    of the level below, the next within ``LEVEL_SPREAD`` of the spacing
    before; the fifth disc above the
    lowest body is L1's upper one. The spine is then split there by a
    watershed on -HU from the bodies above and below it (``DISC_CLEAR_MM``
    away), so T12's arch, which hangs below the disc, goes with T12 across
    the facet joints' HU valley. Nothing changes unless the sacrum is in
    view up to the spine's lowest body (within ``LEVEL_MM[0]``) and every
    disc is found with a body above it (most pelvic scans end below L1).
    The lengths along the spine (``LEVEL_MM``, ``BODY_REACH_MM``,
    ``DISC_CLEAR_MM``) are an adult's of the model's mean size and scale
    with ``size``, the patient's (the fitted pelvis's): on the
    TotalSegmentator CT 0.75 times as large (a child's pelvis and spine) an
    adult's window for the first disc held two discs and took the upper,
    the count ran out of scan before L1, and T12 and up stayed lumbar."""
    boxes = ndi.find_objects(labels, max_label=OTHER)
    spine_box, sacrum_box = boxes[LUMBAR - 1], boxes[SACRUM - 1]
    if spine_box is None or sacrum_box is None:
        return Levels()
    volume = grid.volume
    axial = axial_axis(volume)
    flip = volume.affine[2, axial] < 0            # slices counted from the feet up

    def upward(a: np.ndarray) -> np.ndarray:      # axial axis first, from the feet up (a view)
        a = np.moveaxis(a, axial, 0)
        return a[::-1] if flip else a

    spacing = np.asarray(volume.spacing_mm, dtype=float)
    step = float(spacing[axial])
    level_mm, reach_mm, clear_mm = np.multiply(LEVEL_MM, size), BODY_REACH_MM * size, DISC_CLEAR_MM * size
    if (spine_box[axial].stop - spine_box[axial].start) * step < LUMBAR_LEVELS * level_mm[0]:
        return Levels()                           # too short to hold L1's upper disc
    spine = labels[spine_box] == LUMBAR
    # The cross-sections are measured on a grid of about BODY_GRID_MM in-plane.
    stride = np.maximum(np.floor(BODY_GRID_MM / spacing), 1).astype(int)
    stride[axial] = 1
    coarse = spine[tuple(slice(None, None, int(k)) for k in stride)]
    area = np.count_nonzero(upward(vertebral_bodies(coarse, spacing * stride, axial)), axis=(1, 2)).astype(float)
    held = np.flatnonzero(area)
    start = np.array([s.start for s in spine_box], dtype=float)
    centre = start + (np.asarray(spine.shape) - 1) / 2.0

    def height(k: float) -> float:                # LPS z (mm) of the spine box's slice k from the feet
        at = centre.copy()
        at[axial] = start[axial] + ((len(area) - 1 - k) if flip else k)
        return float(grid.lps(at[None])[0, 2])

    corners = np.array(np.meshgrid(*[(b.start, b.stop - 1) for b in sacrum_box], indexing="ij")).reshape(3, -1).T
    sacrum_top = float(grid.lps(corners)[:, 2].max())
    if len(held) == 0 or sacrum_top < height(held[0]) - level_mm[0]:   # no more than a disc below
        return Levels()
    reach = max(int(round(reach_mm / step)), 1)
    discs: list[float] = []
    where = float(held[0])
    for _ in range(LUMBAR_LEVELS):
        if len(discs) < 2:
            lo, hi = level_mm
        else:
            last = (discs[-1] - discs[-2]) * step
            lo, hi = (1.0 - LEVEL_SPREAD) * last, (1.0 + LEVEL_SPREAD) * last
        # As far up as the scan shows a body above a disc: a window reaching
        # past it gave up on a disc well inside (the 3 mm TotalSegmentator
        # CT's L1 disc lies 24 mm below the scan's top; with its L3/L4 disc
        # found one slice lower, the window reached 5 mm past it, and T12
        # and up stayed lumbar).
        a, b = int(np.ceil(where + lo / step)), min(int(np.floor(where + hi / step)), len(area) - 1 - reach)
        if b < a:
            return Levels(tuple(height(d) for d in discs))
        window = area[a:b + 1]
        disc = a + float(np.flatnonzero(window == window.min()).mean())
        k = int(round(disc))
        around = min(area[max(k - reach, 0):k].max(initial=0.0), area[k + 1:k + reach + 1].max(initial=0.0))
        if around == 0.0 or area[k] > DISC_DEPTH * around:
            return Levels(tuple(height(d) for d in discs))
        discs.append(disc)
        where = disc
    clear = max(clear_mm / step, 1.0)
    along = np.arange(len(area), dtype=float).reshape(-1, 1, 1)
    markers = np.zeros(spine.shape, dtype=np.int32)
    up_markers, up_bodies = upward(markers), upward(vertebral_bodies(spine, spacing, axial))
    up_markers[up_bodies & (along >= discs[-1] + clear)] = 1
    up_markers[up_bodies & (along <= discs[-1] - clear)] = 2
    split = watershed(-smooth_hu(hu[spine_box], spacing), markers, mask=spine)
    above = split == 1
    labels[spine_box][above] = OTHER
    return Levels(tuple(height(d) for d in discs), int(np.count_nonzero(above)))


def vertebral_bodies(spine: np.ndarray, spacing_mm: np.ndarray, axial: int) -> np.ndarray:
    """The spine's parts wider than arches, processes and ribs: each slice
    across ``axial`` closed by ``BODY_CLOSE_MM`` (the marrow's unfilled
    specks), then opened by ``BODY_OPEN_MM``."""
    in_plane = np.asarray(spacing_mm, dtype=float).copy()
    in_plane[axial] = 1e3 * float(np.max(np.asarray(spine.shape) * in_plane))   # no reach across slices
    return opened(closed(spine, BODY_CLOSE_MM, in_plane), BODY_OPEN_MM, in_plane)


def smooth_hu(hu: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    return ndi.gaussian_filter(hu.astype(np.float32, copy=False), SPINE_SMOOTHING_MM / np.asarray(spacing_mm))


def tissue_hu(hu: np.ndarray, spacing_mm: np.ndarray, core_hu: float) -> np.ndarray:
    """HU smoothed as :func:`smooth_hu` over the voxels below ``core_hu``
    only (normalised convolution); a voxel at or above it keeps its own HU.
    Smoothing over a cortex lends its brightness to the canal and the soft
    tissue beside it: on the phantom's lumbar spine, blurred 20-90 HU voxels
    by the vertebral bodies' back and in the arches' corners rose past
    ``SPINE_MARROW_HU`` and were taken as marrow (Dice 0.976 -> 0.983)."""
    hu = hu.astype(np.float32, copy=False)
    tissue = (hu < core_hu).astype(np.float32)
    weight = smooth_hu(tissue, spacing_mm)
    smoothed = smooth_hu(hu * tissue, spacing_mm)
    np.divide(smoothed, weight, out=smoothed, where=weight > 1e-3)
    return np.where(tissue > 0, smoothed, hu)
