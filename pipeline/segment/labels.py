"""Labelling: bone voxels + the fitted pelvis shape model -> one solid label per bone.

Threshold and morphology find bone; they cannot say which bone, nor fill a
sacrum whose marrow is fat-density or a femoral head whose shell fades on
3 mm slices. The pelvis shape model (:mod:`pipeline.segment.shape_model`),
fitted to the CT (:mod:`pipeline.segment.model_fit`), decides membership and
interiors; the image decides where each surface is (the half-maximum surface
of :mod:`pipeline.geometry.surface`, which follows these labels).

1. **Fit** the model (both hip bones and the sacrum S1-S3) to the bone's
   outer surface, in LPS mm (the pieces with a dense core:
   :meth:`~pipeline.segment.mask.BoneMask.with_core`).
2. **Femoral heads**: near each fitted acetabulum the head's own surface
   gives its sphere, which starts the search for the joint space's HU
   valley around the head (:mod:`pipeline.segment.femoral_head`);
   without a valley deep enough the surface's sphere stands, without a
   head surface the acetabulum's.
3. **Seeds**, on the threshold bone only: a model bone's voxels inside its
   fitted surface and at least ``SEED_MARGIN_MM`` outside every other model
   bone, and none within ``HEAD_BAND_MM`` outside a head's joint sphere; a
   femur's inside its head sphere (where no head was found, its bone below
   the fitted hip bone on its side); the spine's above the fitted S1
   endplate, near the midline, outside every model bone.
4. **Flood**: a watershed on -HU from the seeds through the threshold bone,
   so every border falls in a joint space's HU valley (sacroiliac joints,
   symphysis, hip joints, the L5/S1 disc) near where the model puts it.
   Bone no seed reaches is ``other`` if it holds a dense core (ribs), else
   not bone (contrast, calcifications).
5. **Solid**: each bone is closed and filled on its own
   (:mod:`pipeline.segment.solid`; the spine and sacrum not in axial planes,
   where their canal looks like marrow; a vertebral body's faint marrow
   between its endplates: :mod:`pipeline.segment.spine`); a model bone also
   takes its fitted interior more than ``INSET_MM`` inside its surface (the
   sacrum's fat-density marrow), the sacrum's fills stay within
   ``SEED_MARGIN_MM`` of its fitted surface and out of the holes of its
   fitted sections (its canal and foramina stay open) down to S3, the
   model's end, beyond which the bone decides alone
   (:mod:`pipeline.segment.lower_sacrum`: its tip, thinner than a 3 mm
   voxel, taken at its half maximum; its marrow, fatty or not, told from the
   canal's fat by its HU), the femoral heads are filled inside their
   spheres, and the spinal canal, which fills close where neighbouring
   arches overlap, is opened again as the dark tube that runs up the spine
   (past S3, fat); the vertebrae above L1, counted up from the sacrum disc
   by disc, become ``other``.
6. **Gap**: no two labels touch, even diagonally (:func:`separate_labels`),
   so their meshes never intersect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from ..bones import LABEL_IDS, LABEL_NAMES, LUMBAR, OTHER, SACRUM
from ..config import SegmentConfig
from ..parallel import parallel
from ..volume import Volume
from .femoral_head import HEAD_BAND_MM, SIDES, Head, femoral_head, fill_femoral_heads
from .grid import Grid, axial_axis, ball, grow_box, voxel_indices
from .lookup import label_counts, lookup, touching
from .mask import FACE_CONNECTIVITY, IN_SLICE_CONNECTIVITY, BoneMask, bounding_box, fill_cavities
from .lower_sacrum import past_s3, past_s3_voxels, sacral_tip, tip_marrow
from .model_fit import (PelvisFit, fit_pelvis, landmark_plane, missing_bones, pelvis_found, pelvis_turn,
                        vertex_normals)
from .neighbours import dilate, max3, min3
from .plates import plate_patches, ridge_voxels
from .shape_model import MODEL_BONES, ShapeModel, load_model
from .solid import solid_per_label
from .spine import Levels, open_canal, vertebrae_above_l1
from .voxelise import inside_mesh


# Seeds of a model bone stay this far from every other model bone's fitted
# surface: the model is 1.5-2 mm off the bone, a joint space 2-4 mm wide.
SEED_MARGIN_MM = 3.0
# A model bone's fitted interior deeper than this is that bone whatever its
# HU (the sacrum's fatty marrow); nearer the surface the image decides.
INSET_MM = 1.0
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


@dataclass(frozen=True, eq=False)
class BoneLabels:
    """Labelled solid bone inside ``box`` of the volume's grid.

    ``labels``: uint8, shape of ``volume.hu[box]``, values of
    :data:`pipeline.bones.LABEL_NAMES` (0 = not bone); no two different
    labels are 26-neighbours.
    ``smallest_piece_voxels``: the voxels of the smallest labelled bone, all
    its pieces together (the surface's snap drops pieces it cut loose under a
    tenth of it; labels read from a file give their smallest piece instead).
    ``fit``: the fitted pelvis model (None when no pelvis was found).
    ``stats``: per-label volumes, the model fit and the femoral heads, for the report.
    ``kept_open``: bool on ``box`` or None: voxels the labelling holds are
    not bone however narrow the gap (the fitted sacrum's canal and foramina,
    :func:`model_holes`); the surface's snap does not close them where it
    has no level to go by.
    ``kept_in``: bool on ``box`` or None: voxels the labelling holds are
    bone whatever their HU (the interiors of femoral heads placed from the
    fitted acetabulum alone, :func:`fill_femoral_heads`; thin plates'
    patches, :func:`plate_holes`; the sacrum's marrow beyond the model,
    :func:`~pipeline.segment.lower_sacrum.tip_marrow`); the surface's snap
    does not peel them.
    """

    labels: np.ndarray
    box: tuple[slice, slice, slice]
    smallest_piece_voxels: int
    stats: dict
    fit: PelvisFit | None = None
    kept_open: np.ndarray | None = None
    kept_in: np.ndarray | None = None

    def full(self, shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=np.uint8)
        out[self.box] = self.labels
        return out


def label_bones(volume: Volume, bone: BoneMask, cfg: SegmentConfig,
                model: ShapeModel | None = None) -> BoneLabels:
    hu = volume.hu[bone.box]
    raw = bone.voxels
    cored = bone.with_core()
    core_hu = bone.core_hu
    core = hu > core_hu
    model = load_model() if model is None else model
    fit = fit_pelvis(volume, bone, model)
    found = pelvis_found(fit)
    grid = Grid(volume, bone.box)
    if found:
        # Both femoral heads at once (numpy and scipy release the GIL); the
        # model's masks after them (beside them, the peak memory grew by 0.1 GB).
        turn = pelvis_turn(model, fit)
        heads = [h for h in parallel(*[lambda side=side: femoral_head(fit, hu, grid, raw, *side, turn=turn)
                                       for side in SIDES]) if h is not None]
        masks = model_masks(fit, grid)
        for b in missing_bones(fit):
            # Placed by the other bones, its model still names what is left
            # of it (a tumour's remnant: without 75 % of Pelvic-Ref-003's
            # left hip bone, the rest became femur and hip_right) from its
            # bone deep inside the model (not a femoral head sitting in the
            # empty cup), but fills nothing: no interior is made bone where
            # the bone is gone.
            _, near, deep = masks[b]
            masks[b] = (deep, near, np.zeros_like(deep))
        seeds = seed_labels(raw, grid, fit, masks, heads, cored, core)
        rough = watershed_by_piece(hu, seeds, raw)
    else:
        masks, heads, rough = {}, [], np.zeros(raw.shape, dtype=np.uint8)
    # Pools are told only where a pelvis was found: without one, nothing says
    # which piece is bone (a bone dense throughout; the analytic test objects).
    rough, pool_voxels = label_other_bone(rough, cored, core, volume.spacing_mm if found else None)
    labels = solid_per_label(rough, raw, hu, volume, bone, cfg, core_hu)
    own = raw & (labels == rough)
    kept_open = None
    model_only = np.zeros(labels.shape, dtype=bool)
    for b, (inside, near, deep) in masks.items():
        label = LABEL_IDS[b]
        if b == "sacrum":
            kept_open = model_holes(inside, axial_axis(volume))
            beyond = voxel_indices((labels == label) & ~own & (~near | kept_open))
            beyond = beyond[~past_s3(fit, grid.lps(beyond))]  # S4, S5 and the coccyx lie beyond the model
            labels[tuple(beyond.T)] = 0
        model_only |= deep & (labels == 0)
        labels[deep & ((labels == 0) | ((labels != label) & ~own))] = label
    # What the snap to the image's half maximum would peel (below the level
    # that the cortex around sets) though the labelling knows it is bone.
    held = np.zeros(labels.shape, dtype=bool)
    tip = sacral_tip(labels, hu, grid, fit, bone.midline_x_lps_mm) if found else 0
    if found:
        sub, marrow = tip_marrow(labels, hu, grid, fit, core_hu, cfg)
        labels[sub][marrow] = SACRUM
        held[sub] |= marrow
        tip += int(np.count_nonzero(marrow))
    plated = [b for b in MODEL_BONES if b in masks] if found else []
    # The model's bones two at a time, then their patches written (scipy's labelling releases the GIL).
    for b, (sub, patch) in zip(plated, parallel(*[
            lambda b=b: plate_holes(labels, hu, masks[b][1], LABEL_IDS[b], axial_axis(volume), kept_open)
            for b in plated])):
        labels[sub][patch] = LABEL_IDS[b]
        held[sub] |= patch
    heads_inside, heads_unresolved = fill_femoral_heads(labels, heads, grid, hu)
    certain = own.copy()
    for _, _, deep in masks.values():
        certain |= deep
    if found:
        inside, near, _ = masks["sacrum"]
        open_canal(labels, certain, hu, volume, fat_only=past_s3_voxels(fit, grid, margin_mm=0.0),
                   beside_model=near & ~inside & (labels == SACRUM))
    else:
        open_canal(labels, certain, hu, volume)
    above_l1 = vertebrae_above_l1(labels, hu, grid)
    labels = separate_labels(labels, own | heads_inside, hu, certain=heads_inside)
    return BoneLabels(labels=labels, box=bone.box, smallest_piece_voxels=_smallest(labels),
                      stats=label_stats(labels, volume, fit, found, heads, core_hu, tip, above_l1, pool_voxels,
                                        {"beyond_model_share": beyond_model(labels, masks, fit, grid),
                                         "model_filled_share": model_filled(labels, masks, model_only)}),
                      fit=fit if found else None, kept_open=kept_open,
                      kept_in=held & (labels > 0) if (held := held | heads_unresolved).any() else None)


def plate_holes(labels: np.ndarray, hu: np.ndarray, band: np.ndarray, label: int,
                axial: int = 0, kept_open: np.ndarray | None = None) -> tuple[tuple[slice, ...], np.ndarray]:
    """(a box, the voxels in it that close holes through bone ``label``'s
    thin plates where the image shows the plate: :mod:`~pipeline.segment.plates`),
    looked for in ``band`` (its fitted model and ``SEED_MARGIN_MM`` around it),
    not beside another bone nor in ``kept_open`` (what the labelling holds
    open: the sacrum's canal and foramina). The caller labels them and holds them through
    the surface's snap, which would take them out again: they lie under the
    half-maximum level that thicker bone nearby sets."""
    sub = bounding_box(band)
    if sub is None:
        return (slice(0, 0),) * 3, np.zeros((0, 0, 0), dtype=bool)
    sub = grow_box(sub, labels.shape, 2)
    view = labels[sub]
    bone = view == label
    free = band[sub] & (view == 0) & ~dilate((view > 0) & ~bone, FACE_CONNECTIVITY)
    if kept_open is not None:
        free &= ~kept_open[sub]
    return sub, plate_patches(bone, ridge_voxels(hu[sub], free), axial)


def model_masks(fit: PelvisFit, grid: Grid) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per model bone, on the box: (inside the fitted surface, within
    ``SEED_MARGIN_MM`` outside it, more than ``INSET_MM`` inside it). Each is rasterised in the bone's own part
    of the box, by offset copies of the fitted mesh."""
    x = fit.vertices_lps_mm
    normals = vertex_normals(x, np.concatenate([fit.faces[b] for b in MODEL_BONES]))
    jobs = []
    for b in MODEL_BONES:
        for offset in (0.0, SEED_MARGIN_MM, -INSET_MM):
            jobs.append(lambda b=b, offset=offset: _rasterise(x + offset * normals, fit.faces[b], grid))
    done = parallel(*jobs)
    return {b: tuple(done[3 * i:3 * i + 3]) for i, b in enumerate(MODEL_BONES)}


def _rasterise(vertices: np.ndarray, faces: np.ndarray, grid: Grid) -> np.ndarray:
    out = np.zeros(grid.shape, dtype=bool)
    used = vertices[np.unique(faces)]
    sub = grid.sub_box(used, 1.0)
    if sub is None:
        return out
    local = grid.local(sub)
    out[local] = inside_mesh(vertices, faces, grid.volume.affine, sub)
    return out


def model_holes(inside: np.ndarray, axial: int) -> np.ndarray:
    """The holes of a fitted bone's axial sections: for the sacrum, its canal
    and foramina, which its fills must leave open however narrow they are.
    Looked for in the bone's own box: outside it every section is empty."""
    holes = np.zeros(inside.shape, dtype=bool)
    box = bounding_box(inside)
    if box is None:
        return holes
    section = np.moveaxis(inside[box], axial, 0)
    found = fill_cavities(section, IN_SLICE_CONNECTIVITY, [False, False, True, True, True, True]) & ~section
    holes[box] = np.moveaxis(found, 0, axial)
    return holes


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
    label), run on each face-connected piece of the unseeded voxels and the
    seeds beside them, in its own bounding box, two at a time: the same
    result as one watershed over the whole box (flooding never leaves a
    piece), at a fraction of the time, since the flooding's cost is as much
    the box as the voxels in it.

    Real scans' HU are whole numbers, so the flooding meets many ties
    (plateaus, most at the joints between two seeds); skimage breaks them by
    the order voxels joined the queue, which follows the array's storage.
    ``WATERSHED_TIE_BREAK`` HU per voxel of distance from the flood's seed
    (skimage's compact watershed) breaks them towards the nearer seed, the
    same however the slices are stored: Pelvic-Ref-003 with its slices
    reversed no longer relabels a voxel at the right hip joint (3 after
    filling); TotalSegmentator's femurs 0.860 / 0.855 -> 0.864 / 0.861."""
    # Only the unseeded voxels and the seeds beside them take part: a seed
    # farther inside its own region floods nothing.
    open_voxels = solid & (seeds == 0)
    solid = solid & (open_voxels | max3(open_voxels))
    pieces, n = ndi.label(solid, structure=FACE_CONNECTIVITY)
    seeded = touching(pieces, n, seeds > 0)
    # Label values fit a byte: only the flooded boxes hold the int32 markers skimage takes.
    regions = np.zeros(seeds.shape, dtype=np.uint8)
    boxes = [(piece, box) for piece, box in enumerate(ndi.find_objects(pieces), start=1)
             if box is not None and seeded[piece]]

    def flood(piece: int, box: tuple[slice, ...]) -> np.ndarray:
        inside = pieces[box] == piece
        return watershed(-hu[box], np.where(inside, seeds[box], 0).astype(np.int32), mask=inside,
                         compactness=WATERSHED_TIE_BREAK)

    for (piece, box), flooded in zip(boxes, parallel(*[lambda p=p, b=b: flood(p, b) for p, b in boxes])):
        inside = pieces[box] == piece
        regions[box][inside] = flooded[inside]
    return np.where(regions > 0, regions, seeds)


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


def separate_labels(labels: np.ndarray, own: np.ndarray | None = None,
                    hu: np.ndarray | None = None, certain: np.ndarray | None = None) -> np.ndarray:
    """Drop voxels until no voxel has a 26-neighbour of another label:
    afterwards different bones are at least one voxel apart.

    ``own``: the voxels that are their label's own threshold bone (or a
    femoral head's interior). Where a filled voxel touches another label,
    the filled voxel goes first. Where two own voxels touch, the darker
    goes (with ``hu``): it lies nearer the joint space between them; a
    voxel as bright as its brightest other-bone neighbour goes too. Without
    ``own`` both voxels of every clashing pair go. ``certain`` (within
    ``own``): voxels that stay whatever they touch, a femoral head's filled
    interior (:func:`~pipeline.segment.femoral_head.fill_femoral_heads`):
    another bone's voxel touching one goes."""
    high = max3(labels)
    low = min3(np.where(labels > 0, labels, np.uint8(255)))
    clash = (labels > 0) & (high != low)
    if own is None:
        return np.where(clash, np.uint8(0), labels)
    out = np.where(clash & ~own, np.uint8(0), labels)
    at = voxel_indices(clash & own)
    mine = out[tuple(at.T)]
    brightest = np.full(len(at), -np.inf)
    still = np.zeros(len(at), dtype=bool)
    by_certain = np.zeros(len(at), dtype=bool)
    for step in np.argwhere(np.ones((3, 3, 3), dtype=bool)) - 1:
        if not step.any():
            continue
        there = at + step
        inside = np.all((there >= 0) & (there < out.shape), axis=1)
        other = np.zeros(len(at), dtype=out.dtype)
        other[inside] = out[tuple(there[inside].T)]
        touching = (other > 0) & (other != mine)
        still |= touching
        if hu is not None:
            brightest[touching] = np.maximum(brightest[touching], hu[tuple(there[touching].T)])
        if certain is not None:
            by_certain[touching] |= certain[tuple(there[touching].T)]
    if hu is not None:
        still &= hu[tuple(at.T)] <= brightest
    if certain is not None:
        mine_certain = certain[tuple(at.T)]
        still = (still | by_certain) & ~mine_certain
    out[tuple(at[still].T)] = 0
    # Whatever still touches (the darker voxel's partner kept another neighbour): both go.
    # Dropping voxels makes no new pair, so only the first clash's box is looked at,
    # its neighbours one voxel round it.
    box = bounding_box(clash)
    if box is None:
        return out
    around = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
    inner = tuple(slice(b.start - a.start, b.stop - a.start) for b, a in zip(box, around))
    near = out[around]
    high = max3(near)[inner]
    low = min3(np.where(near > 0, near, np.uint8(255)))[inner]
    view = out[box]
    view[(view > 0) & (high != low) & (True if certain is None else ~certain[box])] = 0
    return out


def _smallest(labels: np.ndarray) -> int:
    counts = label_counts(labels, OTHER + 1)[1:]
    return int(counts[counts > 0].min()) if (counts > 0).any() else 0


def beyond_model(labels: np.ndarray, masks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 fit: PelvisFit, grid: Grid) -> dict[str, float]:
    """Per model bone, the share of its label lying more than
    ``SEED_MARGIN_MM`` outside its fitted surface (the sacrum's S4, S5 and
    coccyx, past the model's end, left out): bone the model does not explain,
    named from the image alone. 0.00-0.05 on the real scans and the phantom;
    0.55 for Pelvic-Ref-003's left hip bone with a mineralised tumour mass
    made up across its wing."""
    shares = {}
    for b, (_, near, _) in masks.items():
        mine = labels == LABEL_IDS[b]
        total = np.count_nonzero(mine)
        if not total:
            continue
        out = voxel_indices(mine & ~near)
        if b == "sacrum":
            out = out[~past_s3(fit, grid.lps(out))]
        shares[b] = len(out) / total
    return shares


def model_filled(labels: np.ndarray, masks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 model_only: np.ndarray) -> dict[str, float]:
    """Per model bone, the share of its label that only its fitted interior
    made bone (no threshold bone there, nor a fill of it): the sacrum's
    fat-density marrow, a hip bone's layers under a faint cortex, and bone
    a lytic tumour destroyed, which the model restores. On Pelvic-Ref-003
    0.08 / 0.11 (hips), 0.32 (sacrum); the TotalSegmentator example's 3 mm
    voxels 0.26 / 0.25, 0.69; the phantom 0."""
    shares = {}
    for b in masks:
        mine = labels == LABEL_IDS[b]
        total = np.count_nonzero(mine)
        if total:
            shares[b] = np.count_nonzero(mine & model_only) / total
    return shares


def label_stats(labels: np.ndarray, volume: Volume, fit: PelvisFit, found: bool, heads: list[Head],
                core_hu: float, tip_voxels: int, above_l1: "Levels", pool_voxels: int,
                per_bone: dict[str, dict[str, float]]) -> dict:
    counts = label_counts(labels, OTHER + 1)
    voxel_mm3 = volume.voxel_volume_mm3
    model = fit.report()
    model["found"] = found
    for key, shares in per_bone.items():
        for b, share in shares.items():
            model["bones"][b][key] = round(float(share), 3)
    return {
        "core_hu": round(float(core_hu), 1),
        # Pieces dense throughout (label_other_bone): contrast, not bone.
        "contrast_mm3": round(pool_voxels * voxel_mm3, 1),
        "shape_model": model,
        # The sacrum beyond the model's S3 end taken below the bone threshold (sacral_tip, tip_marrow).
        "sacral_tip_mm3": round(tip_voxels * voxel_mm3, 1),
        # The lumbar discs counted up from the sacrum (vertebrae_above_l1).
        "lumbar_levels": {"discs_found": len(above_l1.discs_mm),
                          "discs_lps_z_mm": [round(z, 1) for z in above_l1.discs_mm],
                          "above_l1_to_other_mm3": round(above_l1.voxels * voxel_mm3, 1)},
        "femoral_heads": {LABEL_NAMES[h.femur]: {
            "centre_lps_mm": [round(float(c), 1) for c in h.centre_lps_mm],
            "radius_mm": round(h.radius_mm, 1), "joint_valley_hu": round(h.valley_hu, 1), "from": h.source}
            for h in heads},
        "labels": {LABEL_NAMES[k]: {"label": k, "volume_mm3": round(float(counts[k]) * voxel_mm3, 1)}
                   for k in range(1, OTHER + 1) if counts[k] > 0},
    }
