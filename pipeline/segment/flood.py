"""Which bone each threshold voxel is: seeds from the fitted pelvis model,
then a flood between them along the image's HU valleys.

The seeds (:func:`seed_labels`) are the voxels whose bone the fitted model
and the femoral heads make certain: a model bone's threshold voxels inside
its fitted surface and clear of every other, the femurs' inside their
heads' spheres, the spine's above the fitted S1 endplate near the midline.
The flood (:func:`watershed_by_piece`) carries them through the rest of the
threshold bone on -HU, so every border falls in a joint space's HU valley
(sacroiliac joints, symphysis, hip joints, the L5/S1 disc) near where the
model puts it. Bone no seed reaches is ``other`` if it holds a dense core
that is a shell (ribs; :func:`label_other_bone`), else not bone: a pool of
contrast is dense throughout (:func:`pool_pieces`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from ..bones import LABEL_IDS, LABEL_NAMES, LUMBAR, OTHER
from ..parallel import parallel
from .femoral_head import HEAD_BAND_MM, SIDES, Head
from .grid import Grid, axial_axis, ball, grow_box, voxel_indices
from .lookup import label_counts, lookup
from .mask import FACE_CONNECTIVITY, bounding_box
from .model_fit import PelvisFit, landmark_plane
from .neighbours import dilate

# Seeds of a model bone stay this far from every other model bone's fitted
# surface: the model is 1.5-2 mm off the bone, a joint space 2-4 mm wide.
SEED_MARGIN_MM = 3.0

# Spine seeds: within this of the midline (vertebral bodies, pedicles).
SPINE_HALF_WIDTH_MM = 35.0
# Femur seeds below the hip bone lie at least this far to their side of the midline.
FEMUR_MIN_OFFSET_MM = 30.0
# Other bone (not reached from a seed) needs a dense core (BoneMask.coreless)
# that is a shell: bone's dense part is its cortex, at its
# surface, while a pool of contrast (a bladder of excreted contrast, a bowel
# loop of oral contrast, an aorta in an angiogram) is dense throughout. A
# piece with more than POOL_SHARE of its voxels above the core level and
# deeper than SHELL_DEPTH_MM inside it is not bone (a cortex 6 mm thick has
# no voxel that deep on 1 mm voxels; on 3 mm voxels "deeper" is past the
# first layer). Only pieces no seed reached are judged so: a pelvis dense
# throughout (diffuse sclerotic metastases) is still a pelvis.
SHELL_DEPTH_MM, POOL_SHARE = 3.0, 0.3
# A lumbar vertebra's canal, in an axial plane, is 150-300 mm2: a pool of
# contrast in front of the spine seeds the spine only if it encloses a hole
# of at least this (see vertebral_pieces).
CANAL_MM2 = 80.0
# The flood from the seeds adds this to -HU per voxel of distance from the
# seed it started at: under 0.05 HU across a pelvis's box, it only breaks
# ties (real scans' HU are whole numbers), see watershed_by_piece.
WATERSHED_TIE_BREAK = 1e-4


def lowest_z(fit: PelvisFit, bone: str) -> float:
    """LPS z (mm) of the lowest vertex of a fitted bone."""
    return float(fit.vertices_lps_mm[np.unique(fit.faces[bone]), 2].min())


def seed_labels(raw: np.ndarray, grid: Grid, fit: PelvisFit,
                masks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], heads: list[Head],
                cored: np.ndarray, core: np.ndarray) -> np.ndarray:
    """uint8 seeds (label values) on the threshold bone (0 = decided by the flood).
    Left and right are the fitted pelvis's (:meth:`PelvisFit.lateral_mm`):
    the spine's seeds lie within SPINE_HALF_WIDTH_MM of its midsagittal
    plane (in LPS x, a patient lying diagonally by 20 degrees had the sacrum
    0.79 and lumbar spine 0.65 against the scan as stored; 0.97 and 1.00 now).
    ``cored``: the threshold bone in pieces with a dense core
    (:meth:`BoneMask.with_core`); a spine seed lies there (a vertebra's
    cortex), not in an aorta full of contrast in front of the spine
    (Pelvic-Ref-003 with an aorta at 350 HU made up 10 mm in front of L4-L5:
    7 600 voxels of it were lumbar, the lumbar spine 0.96 against the scan's
    own labels), and not in a pool of contrast (:func:`vertebral_pieces`;
    ``core``: the voxels above the core level)."""
    seeds = np.zeros(raw.shape, dtype=np.uint8)
    near_any = np.zeros(raw.shape, dtype=bool)
    for _, near, _ in masks.values():
        near_any |= near
    for b, (inside, _, _) in masks.items():
        others = np.zeros(raw.shape, dtype=bool)
        for c, (_, near, _) in masks.items():
            if c != b:
                others |= near
        seeds[raw & inside & ~others] = LABEL_IDS[b]
    at = voxel_indices(raw & ~near_any)
    lps = grid.lps(at)
    free = np.zeros(len(at), dtype=np.int32)
    centre, normal = landmark_plane(fit, "s1_endplate")
    above = (lps - centre) @ normal > SEED_MARGIN_MM
    lateral = fit.lateral_mm(lps)
    spine = above & (np.abs(lateral) < SPINE_HALF_WIDTH_MM) & cored[tuple(at.T)]
    spine[spine] = vertebral_pieces(raw, at[spine], core, grid)
    free[spine] = LUMBAR
    placed = {head.femur for head in heads}
    for hip, femur, _, side in SIDES:
        # Where no head was found, the femur is the bone below the hip bone on
        # its side. Where one was, its seeds flood the femur, and bone below the
        # hip bone seeds nothing: it took the ischial tuberosity's lowest slices
        # (the fitted hip's lowest point lies above the real one) and a forearm
        # resting against the thigh (Pelvic-Ref-003 with one made up: the right
        # femur 0.88 against the scan's own labels, 0.997 now; the forearm is
        # other bone).
        if femur in placed:
            continue
        lowest = lowest_z(fit, LABEL_NAMES[hip])
        on_side = side * lateral > FEMUR_MIN_OFFSET_MM
        free[on_side & (lps[:, 2] < lowest - SEED_MARGIN_MM)] = femur
    seeds[tuple(at.T)] = free
    for head in heads:  # the head itself, and nothing else inside its sphere
        box, dist = ball(head.centre_lps_mm, head.radius_mm + HEAD_BAND_MM, grid)
        if box is None:
            continue
        view = seeds[box]
        view[(dist <= head.radius_mm + HEAD_BAND_MM) & (view != head.femur)] = 0
        view[raw[box] & (dist <= head.radius_mm)] = head.femur
    return seeds


def vertebral_pieces(raw: np.ndarray, at: np.ndarray, core: np.ndarray, grid: Grid) -> np.ndarray:
    """Per voxel index of ``at`` (of ``raw``): whether its piece of ``raw``
    (within the box of ``at``) may be a vertebra. A piece dense throughout
    (a pool: :data:`POOL_SHARE`) is one only if it encloses a canal (a hole
    of at least CANAL_MM2 in an axial plane): an aorta in an angiogram or a
    bowel loop of oral contrast lying in front of the spine does not, a
    vertebra dense throughout (sclerotic metastases) does."""
    if len(at) == 0:
        return np.zeros(0, dtype=bool)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(at.min(axis=0), at.max(axis=0)))
    pieces, n = ndi.label(raw[box], structure=FACE_CONNECTIVITY)
    spacing = np.asarray(grid.volume.spacing_mm, dtype=float)
    pool, _ = pool_pieces(pieces, n, core[box], spacing)
    allowed = ~pool
    if pool.any():
        axial = axial_axis(grid.volume)
        min_voxels = CANAL_MM2 / float(np.prod(np.delete(spacing, axial)))
        boxes = ndi.find_objects(pieces)
        for piece in np.flatnonzero(pool):
            allowed[piece] = encloses_canal(pieces[boxes[piece - 1]] == piece, axial, min_voxels)
    return allowed[pieces[tuple((at - [b.start for b in box]).T)]]


def encloses_canal(mask: np.ndarray, axial: int, min_voxels: float) -> bool:
    """Whether ``mask`` encloses a hole of at least ``min_voxels`` in one of its axial planes."""
    for plane in np.moveaxis(mask, axial, 0):
        if plane.any():
            holes, n = ndi.label(ndi.binary_fill_holes(plane) & ~plane)
            if n and label_counts(holes, n + 1)[1:].max() >= min_voxels:
                return True
    return False


def watershed_by_piece(hu: np.ndarray, seeds: np.ndarray, solid: np.ndarray) -> np.ndarray:
    """Watershed on -HU from the seeds through the mask (seeds keep their
    label), at a fraction of one watershed's time over the whole box, with
    its result.

    The flood never passes a seed, so each face-connected piece of the
    unseeded voxels is flooded alone, from the seeds beside it. A piece
    beside one label's seeds only is all that label (beside none, 0) without
    a flood; the others, where labels meet, are each flooded in their own
    bounding box, two at a time (the flooding's cost is as much the box as
    the voxels in it). On Pelvic-Ref-003, 2 of 1 971 pieces are flooded, in
    boxes of 4.2 M voxels and 60 (flooded per piece of the threshold bone
    with its seeds, the largest box held 7.6 M): 0.38-0.42 -> 0.21-0.24 s.
    The same result as the whole box's flood wherever no two seeds of equal
    HU meet a voxel: the queue takes seeds of equal HU in the heap's order,
    which the other pieces' seeds change (so did flooding the pieces of the
    bone).

    Real scans' HU are whole numbers, so the flooding meets many ties
    (plateaus, most at the joints between two seeds); skimage breaks them by
    the order voxels joined the queue, which follows the array's storage.
    ``WATERSHED_TIE_BREAK`` HU per voxel of distance from the flood's seed
    (skimage's compact watershed) breaks them towards the nearer seed, the
    same however the slices are stored: Pelvic-Ref-003 with its slices
    reversed no longer relabels a voxel at the right hip joint (3 after
    filling); TotalSegmentator's femurs 0.860 / 0.855 -> 0.864 / 0.861."""
    open_voxels = solid & (seeds == 0)
    pieces, n = ndi.label(open_voxels, structure=FACE_CONNECTIVITY)
    flat = np.flatnonzero(open_voxels)
    at = np.column_stack(np.unravel_index(flat, seeds.shape))
    piece_of = pieces.reshape(-1)[flat]
    # (piece, label) of every seed face-beside an unseeded voxel.
    flat_seeds, base = seeds.reshape(-1), int(seeds.max()) + 1
    met = []
    for axis, stride in enumerate(np.array(seeds.strides) // seeds.itemsize):
        for step, inside in ((-stride, at[:, axis] > 0), (stride, at[:, axis] < seeds.shape[axis] - 1)):
            label = flat_seeds[flat[inside] + step].astype(np.int64)
            met.append(piece_of[inside][label > 0] * base + label[label > 0])
    met_piece, met_label = np.divmod(np.unique(np.concatenate(met)), base)
    labels_met = np.bincount(met_piece, minlength=n + 1)
    table = np.zeros(n + 1, dtype=seeds.dtype)
    alone = labels_met[met_piece] == 1
    table[met_piece[alone]] = met_label[alone]
    out = seeds.copy()
    out.reshape(-1)[flat] = table[piece_of]
    contested = np.flatnonzero(labels_met >= 2)
    rows = np.flatnonzero(np.isin(piece_of, contested))
    rows = rows[np.argsort(piece_of[rows], kind="stable")]
    boxes = []
    for piece, voxels in zip(contested, np.split(at[rows], np.searchsorted(piece_of[rows], contested[1:]))):
        box = tuple(slice(lo, hi + 1) for lo, hi in zip(voxels.min(axis=0), voxels.max(axis=0)))
        boxes.append((piece, grow_box(box, seeds.shape, 1)))   # with the seeds beside it

    def flood(piece: int, box: tuple[slice, ...]) -> np.ndarray:
        inside = pieces[box] == piece
        mask = inside | ((seeds[box] > 0) & dilate(inside, FACE_CONNECTIVITY))
        return watershed(-hu[box], (seeds[box] * mask).astype(np.int32), mask=mask,
                         compactness=WATERSHED_TIE_BREAK)

    for (piece, box), flooded in zip(boxes, parallel(*[lambda p=p, b=b: flood(p, b) for p, b in boxes])):
        inside = pieces[box] == piece
        out[box][inside] = flooded[inside]
    return out


def label_other_bone(rough: np.ndarray, cored: np.ndarray, core: np.ndarray,
                     spacing_mm=None) -> tuple[np.ndarray, int]:
    """(``rough`` with the threshold bone no seed reached labelled ``other``
    where its connected piece holds a dense core (``cored``,
    :meth:`BoneMask.with_core`: ribs, a vertebra of a scan without pelvis)
    that is a shell, the voxels of pools of contrast). Pieces without a core
    (contrast below the core level, calcifications) or dense throughout
    (pools of contrast, :data:`POOL_SHARE`; judged only when ``spacing_mm``
    is given) stay 0. ``core``: the voxels above the core level."""
    left = cored & (rough == 0)
    box = bounding_box(left)
    if box is None:
        return rough, 0
    # In the box of what is left only (after the flood, a few pieces: 0.09 s -> 0.005 s).
    # A piece no seed reached is a whole piece of the mask: all of it is cored or none.
    pieces, n = ndi.label(left[box], structure=FACE_CONNECTIVITY)
    bone = np.ones(n + 1, dtype=bool)
    bone[0] = False
    pool_voxels = 0
    if spacing_mm is not None:
        pool, sizes = pool_pieces(pieces, n, core[box], spacing_mm)
        bone &= ~pool
        pool_voxels = int(sizes[pool].sum())
    out = rough.copy()
    out[box][lookup(bone, pieces)] = OTHER
    return out, pool_voxels


def pool_pieces(pieces: np.ndarray, n: int, core: np.ndarray, spacing_mm) -> tuple[np.ndarray, np.ndarray]:
    """(per piece of ``pieces``, ``ndi.label``'s output with ``n`` pieces:
    whether it is dense throughout, a pool (:data:`POOL_SHARE`); the pieces'
    sizes). ``core``: the voxels above the core level."""
    sizes = label_counts(pieces, n + 1)
    cores = label_counts(np.where(core, pieces, 0), n + 1)
    pool = np.zeros(n + 1, dtype=bool)
    # Fewer core voxels than POOL_SHARE of the piece: not a pool, whatever their depth.
    suspects = np.flatnonzero(cores > POOL_SHARE * sizes)
    suspects = suspects[suspects > 0]
    boxes = ndi.find_objects(pieces) if suspects.size else []
    for piece in suspects:
        box = boxes[piece - 1]
        mine = np.pad(pieces[box] == piece, 1)  # the edge of the box, or the scan's, counts as outside
        depth = ndi.distance_transform_edt(mine, sampling=spacing_mm)[1:-1, 1:-1, 1:-1]
        deep_core = np.count_nonzero((depth > SHELL_DEPTH_MM) & core[box] & mine[1:-1, 1:-1, 1:-1])
        pool[piece] = deep_core > POOL_SHARE * sizes[piece]
    return pool, sizes


