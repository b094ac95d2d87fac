"""Labelling: bone voxels -> one solid label per bone (hips, sacrum, femurs, lumbar, other).

Why HU and not the mask's shape: at 1-3 mm voxels the joint spaces (hip,
sacroiliac, symphysis, lumbosacral disc) are bridged by partial-volume voxels
above the bone threshold, so no erosion of the mask separates the bones.
What survives is the HU valley: the joint space is darker than the cortex on
either side. So:

1. **Cores**: face-connected pieces of the mask above the core level, at
   least ``segment.min_core_mm3``. The level is ``segment.core_hu``, or half
   the bone's 99th-percentile HU on weak bone (:func:`core_level_hu`). A
   core is cortex (plus dense cancellous bone) of one bone; two bones'
   cortices are separated by the valley. A bone may break into several
   cores (thin or low-density cortex).
2. **Regions**: every mask voxel joins a core by watershed on ``-HU``
   (flooding from the brightest bone down), so borders fall on the valleys;
   a mask piece with no core (contrast in vessels or bladder) gets none and
   is not bone.
3. **Names** by anatomy, in LPS mm relative to the body midline: per side,
   the femur is the big lateral region reaching lowest, the hip bone the
   largest remaining one; the sacrum is the midline region with the most
   voxels between the hip bones (behind their centre, below half-way from
   their centre to the iliac crests; not its centre, which a sacrum broken
   into pieces puts above that), lumbar the midline regions above it. A midline region
   reaching from there to above the crests is the sacrum and spine joined
   (facet joints above the core level on thick slices): the core level is
   raised inside it until it falls apart, and it is re-grown from the
   pieces; as that parts them inside S1, or as contact gives L5's fragments
   to the sacrum, the border is then moved to the L5/S1 disc
   (:func:`split_at_lumbosacral_disc`). Other
   regions join the named region they touch through the most bone-to-bone
   contact (``HU >= threshold_hu`` on both sides of the border), so a bone
   broken into several cores is whole again, while contact across a dark joint space
   does not count. A fragment contact gave a femur but that a watershed on
   -HU from the femur's big regions and the side's hip regions reaches
   mostly from the hip is the hip's (:func:`return_hip_fragments`: the
   acetabulum broken into small cores on 3 mm slices), a fragment named
   hip whose centre lies across the pelvic midline is the other hip's
   (:func:`keep_hips_on_their_side`: the pubic bodies at the symphysis),
   and a midline fragment behind or above the hip bones' centre is never a
   hip bone's (pieces of S1 and S2 that touch the ilia through the alae).
   What touches nothing
   named is lumbar (midline, above the sacrum), sacrum (coccyx: midline,
   below it) or other bone (7).
4. **Femoral heads** (:func:`claim_femoral_heads`): on 3 mm slices the
   head's subchondral shell is a region of its own that touches the
   acetabulum, across the blurred joint space at the dome, more than the
   head's interior, so contact gives it to the hip. The joint space is a
   sphere: one is fitted to the HU valley around the femur/hip border, all
   bone well inside it is femur, and near it a watershed on -HU puts the
   border on the valley. After the fills (5) everything well inside the
   sphere is femur, bone or not: the head's marrow behind a shell that is
   below the threshold where it faces the acetabulum (:func:`fill_femoral_heads`).
   Outside the sphere the femur goes on only through its neck: femur bone
   that the sphere cuts off from the neck and shaft is the acetabulum's
   (:func:`give_cut_off_femur_back`).
5. **Solid per bone**: each label's raw threshold is closed and filled on its
   own (marrow, cancellous bone), so a space enclosed by two bones (a joint
   space, the pelvic inlet) is never filled; marrow behind a leaky cortex
   is taken where the bone itself is met first along all six axis rays. On
   thick slices the marrow
   behind gaps in thin oblique cortex (femoral neck, trochanter) is filled
   plane by plane with the gaps bridged (:func:`solid_bone`). The sacral
   canal, which those plane fills close as they close the sacrum's marrow,
   is taken out again by its dark contents (:func:`open_sacral_canal`).
6. **Gap**: no two labels touch, even diagonally. Where they would, a
   voxel only filled in (marrow, or a joint space a fill reached) is
   dropped first, and a bone's own threshold voxel only if it still touches
   the other label; so their surfaces are separated by at least one voxel,
   and meshes of different bones never intersect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import minimize
from skimage.segmentation import watershed

from ..bones import LABEL_IDS, LABEL_NAMES
from ..config import SegmentConfig
from .lookup import label_counts, lookup
from .neighbours import max3, min3
from ..parallel import parallel
from .mask import (ENCLOSED_DIRECTIONS, FACE_CONNECTIVITY, BoneMask, close_and_fill, closing_radius_voxels,
                      enclosed_directions, fill_bridged_plane_holes)
from ..volume import Volume, apply_affine

LUMBAR, OTHER = LABEL_IDS["lumbar"], LABEL_IDS["other"]
# Regions whose centroid lies within this distance of the body midline are
# midline bones (sacrum, spine, and pubic fragments until they join a hip).
MIDLINE_MM = 25.0
# A femur or hip bone is at least this big (a femoral head alone is ~30 cm3);
# smaller regions are fragments that join by contact.
MIN_NAMED_BONE_MM3 = 10_000.0
# On weak bone the core level is this fraction of the bone's bright end.
CORE_FRACTION = 0.5
# Splitting a sacrum region that carries the spine: the core level is raised
# by SPLIT_STEP_HU up to SPLIT_STEPS times; cores of at least SPLIT_CORE_MM3
# are the pieces (the sacrum's own dense core can be as small as 2.5 cm3).
SPLIT_STEP_HU, SPLIT_STEPS, SPLIT_CORE_MM3 = 100.0, 6, 1000.0
# The lumbosacral disc: unlabelled voxels below DISC_MAX_HU with spine bone
# brighter than ENDPLATE_HU within DISC_REACH_MM both above and below
# (the endplates); a disc is a connected sheet of at least DISC_MIN_MM3
# (the TotalSegmentator example's faint L5/S1 disc: 648 mm3). Bone above
# it with at least SI_JOINT_FRACTION of its voxels within SI_JOINT_MM of a
# hip bone (the sacroiliac joint space and a voxel of partial volume) is S1.
DISC_MAX_HU, ENDPLATE_HU, DISC_REACH_MM, DISC_MIN_MM3 = 250.0, 400.0, 9.0, 500.0
SI_JOINT_MM, SI_JOINT_FRACTION = 6.0, 0.02
# Femoral head sphere (the joint space around the head): radius range of a
# plausible one (head radius 18-30 mm plus half the joint space), the
# half-width of the valley looked for, the rays (evenly spread directions,
# less those within HEAD_NECK_DEG of the neck) and the least mean valley
# depth (HU) of a sphere taken. Voxels farther than HEAD_BAND_MM inside the
# sphere are the femur's; within HEAD_BAND_MM of it the HU valley decides.
# A start whose valley is too shallow is retried from starts HEAD_RETRY_MM
# off along each axis (Nelder-Mead found the shallow valley from up to ~6 mm
# off), taking only radii of an adult head plus half the joint space,
# HEAD_RETRY_RADIUS_MM (deeper false valleys lie at small radii, inside the
# head's cancellous bone).
HEAD_RADIUS_MM = (15.0, 35.0)
HEAD_VALLEY_MM = 2.0
HEAD_RAYS, HEAD_NECK_DEG = 400, 70.0
HEAD_MIN_VALLEY_HU = 10.0
HEAD_BAND_MM = 3.0
HEAD_RETRY_MM, HEAD_RETRY_RADIUS_MM = 6.0, (20.0, 30.0)
# The sacral canal: fill voxels of the sacrum darker than CANAL_HU (on HU
# smoothed by CANAL_SMOOTHING_MM), connected and reaching at least
# CANAL_MIN_LENGTH_MM up the body (the canal runs the sacrum's length; a
# pocket of fatty marrow does not).
CANAL_HU, CANAL_SMOOTHING_MM, CANAL_MIN_LENGTH_MM = 40.0, 1.5, 40.0
# A fragment named hip whose centre lies farther than this across the
# pelvic midline belongs to the other hip (one 3 mm voxel: the symphysis's
# disc lies on the midline).
SYMPHYSIS_MM = 3.0


@dataclass(frozen=True, eq=False)
class BoneLabels:
    """Labelled solid bone inside ``box`` of the volume's grid.

    ``labels``: uint8, shape of ``volume.hu[box]``, values of :data:`LABEL_NAMES`
    (0 = not bone); no two different labels are 26-neighbours.
    ``smallest_piece_voxels``: as in :class:`~pipeline.segment.mask.BoneMask`.
    ``stats``: per-label volumes and counts for the report.
    """

    labels: np.ndarray
    box: tuple[slice, slice, slice]
    smallest_piece_voxels: int
    stats: dict

    def full(self, shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=np.uint8)
        out[self.box] = self.labels
        return out


def label_bones(volume: Volume, bone: BoneMask, cfg: SegmentConfig) -> BoneLabels:
    hu = volume.hu[bone.box]
    solid = bone.voxels
    voxel_mm3 = volume.voxel_volume_mm3
    core_hu = core_level_hu(hu[solid], cfg.core_hu)
    cores, n = ndi.label((hu > core_hu) & solid, structure=FACE_CONNECTIVITY)
    sizes = label_counts(cores, n + 1)
    small = sizes * voxel_mm3 < cfg.min_core_mm3
    small[0] = True
    cores[lookup(small, cores)] = 0
    if not cores.any():  # no dense bone at all: one region, named below
        cores = solid.astype(np.int32)
    regions = watershed_by_piece(hu, cores, solid)
    raw = (hu >= cfg.threshold_hu) & solid
    names = name_regions(regions, hu, raw, volume, bone, cfg)
    if split_sacrum_from_spine(regions, names, hu, volume, bone, core_hu):
        names = name_regions(regions, hu, raw, volume, bone, cfg)
    rough = lookup(names, regions)
    split_at_lumbosacral_disc(rough, hu, volume)
    boxes = ndi.find_objects(rough, max_label=5)
    apart = femurs_apart(rough, boxes)
    heads = claim_femoral_heads(rough, hu, solid, volume.spacing_mm, boxes, head_frame(volume))
    labels = solid_per_label(rough, raw, volume, bone, cfg)
    heads_inside = fill_femoral_heads(labels, heads, volume.spacing_mm)
    open_sacral_canal(labels, raw, hu, volume)
    labels = separate_labels(labels, (raw & (labels == rough)) | heads_inside)
    counts = label_counts(labels, OTHER + 1)
    present = counts[1:] > 0
    offset = np.array([s.start for s in bone.box], dtype=float)
    stats = {
        "core_hu": round(float(core_hu), 1),
        "femoral_heads": {LABEL_NAMES[femur]: {
            "centre_lps_mm": [round(float(c), 1) for c in
                              apply_affine(volume.affine, (centre / volume.spacing_mm + offset)[None])[0]],
            "radius_mm": round(radius, 1), "joint_valley_hu": round(depth, 1)}
            for femur, centre, radius, depth in heads},
        "femurs_apart_from_hip": apart,
        "cores": int((~small[1:]).sum()),
        "regions": int(regions.max()),
        "labels": {LABEL_NAMES[k]: {"label": k, "volume_mm3": round(float(counts[k]) * voxel_mm3, 1)}
                   for k in range(1, OTHER + 1) if present[k - 1]},
    }
    smallest = int(counts[1:][present].min()) if present.any() else 0
    return BoneLabels(labels=labels, box=bone.box, smallest_piece_voxels=smallest, stats=stats)


def core_level_hu(bone_hu: np.ndarray, core_hu: float) -> float:
    """The level above which bone counts as dense core: ``core_hu``, or
    lower on weak bone: ``CORE_FRACTION`` of the bone's bright end (99th
    percentile of the mask's HU). An osteoporotic cortex of 600 HU, blurred,
    barely reaches 500 HU: at the fixed level no bone had a core and every
    bone lost its name (phantom Dice 0); at half its peak the joint spaces,
    near soft tissue, still part the bones. Metal or normal cortex keeps the
    level at ``core_hu``."""
    if bone_hu.size == 0:
        return core_hu
    k = int(0.99 * (bone_hu.size - 1))
    peak = float(np.partition(bone_hu, k)[k])
    return min(core_hu, CORE_FRACTION * peak)


def watershed_by_piece(hu: np.ndarray, cores: np.ndarray, solid: np.ndarray) -> np.ndarray:
    """Watershed on -HU from the cores through the mask, run on each
    face-connected piece of the mask in its own bounding box, two at a time.
    The same result as one watershed over the whole box (flooding never
    leaves a piece), at half the time on a scan whose bones come apart
    (0.45 s instead of 1.3 s on the benchmark phantom): the flooding's cost
    is as much the box as the voxels in it."""
    pieces, _ = ndi.label(solid, structure=FACE_CONNECTIVITY)
    regions = np.zeros(cores.shape, dtype=np.int32)
    boxes = [(piece, box) for piece, box in enumerate(ndi.find_objects(pieces), start=1) if box is not None]

    def flood(piece: int, box: tuple[slice, ...]) -> np.ndarray:
        inside = pieces[box] == piece
        return watershed(-hu[box], np.where(inside, cores[box], 0), mask=inside)

    for (piece, box), flooded in zip(boxes, parallel(*[lambda p=p, b=b: flood(p, b) for p, b in boxes])):
        inside = pieces[box] == piece
        regions[box][inside] = flooded[inside]
    return regions


def name_regions(regions: np.ndarray, hu: np.ndarray, raw: np.ndarray, volume: Volume,
                 bone: BoneMask, cfg: SegmentConfig) -> np.ndarray:
    """Label (0..7) of every region id, indexed by region id."""
    n = int(regions.max())
    voxel_mm3 = volume.voxel_volume_mm3
    volume_mm3 = label_counts(regions, n + 1)[1:] * voxel_mm3
    offset = np.array([s.start for s in bone.box], dtype=float)
    centre = region_centres(regions, n)
    centroid = apply_affine(volume.affine, centre + offset)
    boxes = ndi.find_objects(regions, max_label=n)
    z_min, z_max = region_extent_z(regions, n, volume.affine, offset, boxes)
    lateral = centroid[:, 0] - bone.midline_x_lps_mm
    side = np.where(lateral > MIDLINE_MM, 1, np.where(lateral < -MIDLINE_MM, -1, 0))
    name = np.zeros(n + 1, dtype=np.uint8)
    big = volume_mm3 >= MIN_NAMED_BONE_MM3
    for s, femur, hip in ((1, 4, 1), (-1, 5, 2)):
        candidates = np.flatnonzero(big & (side == s))
        if candidates.size == 0:
            continue
        lowest = candidates[np.argmin(z_min[candidates])]
        rest = candidates[candidates != lowest]
        if rest.size:
            name[lowest + 1] = femur
            name[rest[np.argmax(volume_mm3[rest])] + 1] = hip
        else:  # one big region on this side: the pelvis without a femur, or a femur alone
            name[lowest + 1] = hip
    hips = np.flatnonzero(np.isin(name[1:], (1, 2)))
    crest_z = z_max[hips].max() if hips.size else np.inf
    midline = np.flatnonzero((side == 0) & (name[1:] == 0) & (centroid[:, 2] < crest_z))
    if hips.size:
        # The sacrum sits between the hip bones: behind their centre and
        # below half-way from their centre to the crests, where the lumbar
        # spine (joined into one region with L5 on thick slices until split)
        # and the pubic pieces do not. Counted in voxels, not by the
        # region's centre: a low-density sacrum breaks into pieces on 3 mm
        # slices, and its biggest, S1 with the alae, has its centre above
        # half-way (TotalSegmentator example: by the centre a 3 cm3 piece
        # was the sacrum, and contact gave the rest to the lumbar spine).
        hip_centre = centroid[hips].mean(axis=0)
        between = voxels_between(regions, midline, boxes, volume.affine, offset,
                                 sacrum_top_z(hip_centre[2], crest_z), hip_centre[1])
        if between.max(initial=0) > 0:
            midline = midline[[np.argmax(between)]]
    sacrum = midline[np.argmax(volume_mm3[midline])] if midline.size else None
    if sacrum is not None:
        name[sacrum + 1] = 3
        above = np.flatnonzero((side == 0) & (name[1:] == 0) & (z_min > centroid[sacrum, 2]))
        if above.size:
            name[above[np.argmax(volume_mm3[above])] + 1] = 6
    merge_by_contact(name, regions, raw)
    return_hip_fragments(name, regions, hu, np.r_[False, big])
    keep_hips_on_their_side(name, centroid[:, 0], volume_mm3)
    if hips.size and sacrum is not None:
        # Midline bone behind or above the hip bones' centre is the sacrum's
        # (or the spine's), never a hip bone's: contact chains pieces of a
        # low-density S1 and S2 to the ilia through the alae
        # (TotalSegmentator example: 9.9 cm3 of S1/S2 named hip). The pubic
        # bodies at the symphysis lie below and in front of that centre.
        sacral = (centroid[:, 1] > hip_centre[1]) | (centroid[:, 2] > hip_centre[2])
        name[1:][(side == 0) & sacral & np.isin(name[1:], (1, 2))] = 0
    for r in np.flatnonzero(name[1:] == 0):
        if side[r] == 0 and sacrum is not None:
            name[r + 1] = 6 if centroid[r, 2] > z_max[sacrum] else 3 if centroid[r, 2] < centroid[sacrum, 2] else OTHER
        else:
            name[r + 1] = OTHER
    return name


def voxels_between(regions: np.ndarray, ids: np.ndarray, boxes: list, affine: np.ndarray, offset: np.ndarray,
                   top_z: float, front_y: float) -> np.ndarray:
    """Per region of ``ids`` (0-based; ``boxes`` from ``find_objects``), its
    voxels below LPS z ``top_z`` and behind LPS y ``front_y``."""
    count = np.zeros(ids.size, dtype=np.int64)
    for i, r in enumerate(ids):
        box = boxes[r]
        grids = [g + o for g, o in zip(np.ogrid[box], offset)]
        z = sum(affine[2, a] * g for a, g in enumerate(grids)) + affine[2, 3]
        y = sum(affine[1, a] * g for a, g in enumerate(grids)) + affine[1, 3]
        count[i] = np.count_nonzero((regions[box] == r + 1) & (z < top_z) & (y > front_y))
    return count


def sacrum_top_z(hip_centre_z: float, crest_z: float) -> float:
    """Highest LPS z (mm) of the sacrum's centre, and lowest the lumbar spine
    starts from: half-way from the hip bones' centre to their crests."""
    return (hip_centre_z + crest_z) / 2.0


def split_sacrum_from_spine(regions: np.ndarray, names: np.ndarray, hu: np.ndarray, volume: Volume,
                            bone: BoneMask, core_hu: float) -> bool:
    """Split a midline region in place when it reaches from the sacrum's
    height (:func:`sacrum_top_z`) to above the iliac crests: sacrum and
    lumbar spine joined through facet joints and endplates that stay above
    ``core_hu`` on thick slices. Inside that region the core level is raised
    in steps until it falls apart into cores of which one lies wholly below
    the crests; the region is re-grown from them by watershed. Returns
    whether it was split."""
    n = int(regions.max())
    offset = np.array([s.start for s in bone.box], dtype=float)
    z_min, z_max = region_extent_z(regions, n, volume.affine, offset)
    hips = np.flatnonzero(np.isin(names[1:], (1, 2)))
    if hips.size == 0:
        return False
    crest_z = z_max[hips].max()
    hip_centre_z = apply_affine(volume.affine, region_centres(regions, n)[hips] + offset)[:, 2].mean()
    # A spine-and-sacrum region: midline, from below half-way between the
    # hip bones' centre and their crests to above the crests.
    spanning = np.flatnonzero(np.isin(names[1:], (3, LUMBAR)) & (z_min < sacrum_top_z(hip_centre_z, crest_z))
                              & (z_max > crest_z))
    if spanning.size == 0:
        return False
    sizes = label_counts(regions, n + 1)[1:]
    main = spanning[np.argmax(sizes[spanning])] + 1
    box = ndi.find_objects((regions == main).view(np.uint8))[0]
    inside = regions[box] == main
    min_voxels = SPLIT_CORE_MM3 / volume.voxel_volume_mm3
    for level in core_hu + SPLIT_STEP_HU * np.arange(1, SPLIT_STEPS + 1):
        cores, k = ndi.label((hu[box] > level) & inside, structure=FACE_CONNECTIVITY)
        if k < 2:
            continue
        big = np.flatnonzero(label_counts(cores, k + 1)[1:] >= min_voxels) + 1
        if big.size < 2:
            continue
        top_z = region_extent_z(cores, k, volume.affine, offset + [s.start for s in box])[1][big - 1]
        if not ((top_z <= crest_z).any() and (top_z > crest_z).any()):
            continue
        markers = np.where(np.isin(cores, big), cores, 0)
        grown = watershed(-hu[box], markers, mask=inside)
        ids = np.zeros(k + 1, dtype=regions.dtype)
        ids[big] = np.arange(n + 1, n + 1 + big.size)
        ids[big[0]] = main
        view = regions[box]
        view[inside] = ids[grown[inside]]
        return True
    return False


def split_at_lumbosacral_disc(rough: np.ndarray, hu: np.ndarray, volume: Volume) -> bool:
    """Put the sacrum/lumbar border on the L5/S1 disc, in place in ``rough``.

    The disc is a clear HU valley between two bright endplates: its voxels
    are left unlabelled with spine bone brighter than ``ENDPLATE_HU`` within
    ``DISC_REACH_MM`` above and below. The lowest such sheet of at least
    ``DISC_MIN_MM3`` is the lumbosacral disc, and the border is moved to it
    where the labels next to it say it is elsewhere: a plane fitted to the
    disc, held level beyond the disc's edges (the L5 arch overhangs S1
    behind the disc, and its facet joints lie at about the disc's height).

    - Lumbar bone below the disc (the border was put lower, through S1): the
      core level cannot part S1 from L5 on thick slices, because the L5/S1
      facet joints stay above every level tried (up to 800 HU on
      Pelvic-Ref-003), so :func:`split_sacrum_from_spine` cuts through S1
      and the upper S1 body and its alae come out lumbar. The lumbar voxels
      below the plane become sacrum. On Pelvic-Ref-003: sacrum 63 -> 192 cm3
      before its canal is opened again (156 cm3 after), lumbar 398 -> 316 cm3.
    - Sacrum above the disc (the border was put higher, above L5): on a
      low-density spine L5 breaks into fragments that touch S1 more than L4,
      and contact gives them to the sacrum (TotalSegmentator example). The
      sacrum voxels above the plane become lumbar, unless they face the hip
      bones across the sacroiliac joints (at least ``SI_JOINT_FRACTION`` of
      them within ``SI_JOINT_MM`` of a hip bone): then the sheet lies inside
      the sacrum and the bone above it is S1 (a disc left between S1 and
      S2, or the low-density cancellous layer of the osteoporotic phantom's
      sacrum, 348 voxels between brighter bone). On the TotalSegmentator
      example 0.5 % of the L5 voxels moved lie that close to a hip bone (its
      transverse processes by the iliac crests); of the sacrum's top 15 mm,
      3.5 % on Pelvic-Ref-003 and 8 % on the phantom.

    When the labels already meet at the disc (the phantom), or no disc is
    found between endplates that bright, nothing moves. Returns whether
    anything moved."""
    up = np.sign(volume.affine[2, 0])
    if up == 0:
        return False
    spine = (rough == 3) | (rough == LUMBAR)
    if not (rough == 3).any() or not (rough == LUMBAR).any():
        return False
    box = ndi.find_objects(spine.view(np.uint8))[0]
    h, r = hu[box], rough[box]
    if up < 0:
        h, r = h[::-1], r[::-1]
    reach = max(int(round(DISC_REACH_MM / volume.spacing_mm[0])), 1)
    # Per voxel, the label of the nearest endplate voxel (spine bone brighter
    # than ENDPLATE_HU) within reach above and below; 0 for none.
    endplate = np.where(((r == 3) | (r == LUMBAR)) & (h > ENDPLATE_HU), r, np.uint8(0))
    name_above, name_below = np.zeros(h.shape, np.uint8), np.zeros(h.shape, np.uint8)
    for d in range(reach, 0, -1):  # nearest last, so it wins
        np.copyto(name_above[:-d], endplate[d:], where=endplate[d:] > 0)
        np.copyto(name_below[d:], endplate[:-d], where=endplate[:-d] > 0)
    disc = (r == 0) & (h < DISC_MAX_HU) & (name_above > 0) & (name_below > 0)
    sheets, n = ndi.label(disc, structure=np.ones((3, 3, 3)))
    if n == 0:
        return False
    where = np.nonzero(sheets)
    owner = sheets[where]
    count = np.bincount(owner, minlength=n + 1)[1:]
    mean_z = np.bincount(owner, weights=where[0], minlength=n + 1)[1:] / np.maximum(count, 1)
    big = np.flatnonzero(count * volume.voxel_volume_mm3 >= DISC_MIN_MM3) + 1
    if big.size == 0:
        return False
    lowest = big[np.argmin(mean_z[big - 1])]
    sheet = tuple(w[owner == lowest] for w in where)
    if (name_below[sheet] == LUMBAR).mean() >= 0.5:
        wrong, right = LUMBAR, 3
    elif (name_above[sheet] == 3).mean() >= 0.5:
        wrong, right = 3, LUMBAR
    else:
        return False
    pts = np.stack(sheet, axis=1).astype(float)
    coef = np.linalg.lstsq(np.c_[pts[:, 1:], np.ones(len(pts))], pts[:, 0], rcond=None)[0]
    voxels = np.argwhere(r == wrong)
    edge = np.clip(voxels[:, 1:], pts[:, 1:].min(axis=0), pts[:, 1:].max(axis=0))
    below_disc = voxels[:, 0] < edge @ coef[:2] + coef[2]
    move = voxels[below_disc if wrong == LUMBAR else ~below_disc]
    if move.size == 0:
        return False
    if up < 0:
        move[:, 0] = h.shape[0] - 1 - move[:, 0]
    move += [s.start for s in box]
    if wrong == 3 and facing_the_hips(rough, move, volume.spacing_mm) >= SI_JOINT_FRACTION:
        return False
    rough[tuple(move.T)] = right
    return True


def facing_the_hips(rough: np.ndarray, voxels: np.ndarray, spacing_mm: np.ndarray) -> float:
    """Fraction of ``voxels`` (indices, N x 3) within ``SI_JOINT_MM`` of a
    hip bone in ``rough``."""
    reach = np.ceil(SI_JOINT_MM / np.asarray(spacing_mm, dtype=float)).astype(int)
    low = np.maximum(voxels.min(axis=0) - reach, 0)
    high = np.minimum(voxels.max(axis=0) + reach + 1, rough.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    hips = (rough[box] == 1) | (rough[box] == 2)
    if not hips.any():
        return 0.0
    distance = ndi.distance_transform_edt(~hips, sampling=spacing_mm)
    return float((distance[tuple((voxels - low).T)] <= SI_JOINT_MM).mean())


def region_centres(regions: np.ndarray, n: int) -> np.ndarray:
    """Mean index (slice, row, column) of every region 1..n; NaN for an
    empty id (a dropped core), which is then never named."""
    index = np.nonzero(regions)
    owner = regions[index]
    count = np.bincount(owner, minlength=n + 1)[1:].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([np.bincount(owner, weights=i, minlength=n + 1)[1:] / count for i in index], axis=1)


def region_extent_z(regions: np.ndarray, n: int, affine: np.ndarray, offset: np.ndarray, boxes: list | None = None):
    """Lowest and highest LPS z (mm) of every region's bounding box corners
    (``boxes``: ``find_objects`` of ``regions``, if at hand)."""
    z_min, z_max = np.full(n, np.inf), np.full(n, -np.inf)
    for r, sl in enumerate(ndi.find_objects(regions, max_label=n) if boxes is None else boxes):
        if sl is None:
            continue
        corners = np.array(np.meshgrid(*[(s.start, s.stop - 1) for s in sl], indexing="ij")).reshape(3, -1).T
        z = apply_affine(affine, corners + offset)[:, 2]
        z_min[r], z_max[r] = z.min(), z.max()
    return z_min, z_max


def merge_by_contact(name: np.ndarray, regions: np.ndarray, raw: np.ndarray) -> None:
    """Give unnamed regions the name of the named region they touch through
    the most bone-to-bone face contact (both voxels above the threshold),
    repeatedly, so chains of fragments join too."""
    n = name.size - 1
    contact = np.zeros((n + 1, n + 1), dtype=np.int64)
    for axis in range(3):
        a = np.moveaxis(regions, axis, 0)
        b = np.moveaxis(raw, axis, 0)
        border = (a[:-1] != a[1:]) & b[:-1] & b[1:]
        pairs = a[:-1][border].astype(np.int64) * (n + 1) + a[1:][border]
        np.add.at(contact.ravel(), pairs, 1)
    contact = contact + contact.T
    contact[0, :] = contact[:, 0] = 0
    while True:
        unnamed = np.flatnonzero(name[1:] == 0) + 1
        if unnamed.size == 0:
            return
        named = np.flatnonzero(name > 0)
        strength = contact[np.ix_(unnamed, named)]
        best = strength.max(axis=1)
        if best.max() == 0:
            return
        for r, row, b in zip(unnamed, strength, best):
            if b > 0:
                name[r] = name[named[np.argmax(row)]]


def return_hip_fragments(name: np.ndarray, regions: np.ndarray, hu: np.ndarray, big: np.ndarray) -> None:
    """Rename hip, in place, the fragments that contact gave a femur but that
    belong to the hip bone by the HU path: in a watershed on -HU from the
    femur's big regions (``big``, per region id: at least
    ``MIN_NAMED_BONE_MM3``, the femur's own and a head that contact joined
    to it) and the side's hip regions, through the side's hip and femur regions only,
    the fragment is mostly reached from the hip. Flooding follows the
    brightest path, the cortex, and crosses the joint space last.

    On 3 mm slices of a low-density pelvis the acetabulum's thin cortex
    breaks into hundreds of small cores, and the one nearest the head
    touches the femur's big region (across the joint space, blurred above
    the threshold) more than its hip neighbours; the rest follow it by
    contact chain. TotalSegmentator example: each femur took ~2,100 voxels
    (57 cm3) of its acetabulum, ischium and pubis, and the head sphere's
    start, fitted to the femur/hip border, sat on the far side of the
    acetabulum (left found 10 mm off, right not at all); with them returned
    (~2,100 voxels per side) both heads are found and femur Dice is
    0.67 -> 0.85, hip 0.56 -> 0.79/0.74. Whole fragments move, never parts:
    moving voxels shifted Pelvic-Ref-003's right head sphere by 0.5 mm (femur
    Dice -0.001); by region none moves there, nor on the phantom. Every big region
    seeds: seeded from its lowest region alone, each Pelvic-Ref-003 femur
    lost a second big region (~5,000 voxels) to the hip (Dice 0.91 -> 0.71)."""
    for hip, femur in ((1, 4), (2, 5)):
        seeds = (name == femur) & big
        fragments = (name == femur) & ~big
        if not (seeds.any() and fragments.any() and (name == hip).any()):
            continue
        where = lookup(fragments, regions)
        box = grow_box(ndi.find_objects(where.view(np.uint8))[0], regions.shape)
        ids = regions[box]
        own = name[ids]
        inside = (own == hip) | (own == femur)
        markers = np.where(own == hip, hip, 0).astype(np.int32)
        markers[seeds[ids]] = femur
        grown = watershed(-hu[box], markers, mask=inside)
        to_hip = np.bincount(ids[inside], weights=grown[inside] == hip, minlength=name.size)
        total = np.bincount(ids[inside], minlength=name.size)
        name[fragments & (2 * to_hip > total)] = hip


def keep_hips_on_their_side(name: np.ndarray, x_lps_mm: np.ndarray, volume_mm3: np.ndarray) -> None:
    """Give the other hip bone, in place, the fragments named hip whose
    centre lies more than ``SYMPHYSIS_MM`` across the pelvic midline: half-way
    between the two hip bones' largest regions (their centres, patient left
    at +x). The pubic bodies meet at the symphysis on the midline, and on
    3 mm slices of a low-density pelvis the other side's pubic body breaks
    into small cores that contact chains to the wrong hip (TotalSegmentator
    example: 158 voxels of the right pubic body named hip_left, up to 27 mm
    right of the midline). The pelvis's own midline, not the body
    outline's, which an arm beside the body or a patient off the couch's
    centre moves."""
    largest = {}
    for hip in (1, 2):
        ids = np.flatnonzero(name[1:] == hip)
        if ids.size == 0:
            return
        largest[hip] = ids[np.argmax(volume_mm3[ids])]
    midline = (x_lps_mm[largest[1]] + x_lps_mm[largest[2]]) / 2.0
    lateral = np.r_[0.0, x_lps_mm - midline]
    crossed_left = (name == 1) & (lateral < -SYMPHYSIS_MM)
    crossed_right = (name == 2) & (lateral > SYMPHYSIS_MM)
    name[crossed_left] = 2
    name[crossed_right] = 1


def claim_femoral_heads(rough: np.ndarray, hu: np.ndarray, solid: np.ndarray, spacing_mm: np.ndarray,
                        boxes: list, frame: np.ndarray | None = None) -> list[tuple[int, np.ndarray, float, float]]:
    """Give each femur its whole head, in place in ``rough`` (labels per voxel).
    Returns, per head taken, (femur label, centre in index-mm, radius mm,
    mean joint-space valley depth HU). ``boxes``: ``find_objects`` of
    ``rough`` for labels 1..5; ``frame``: see :func:`head_frame`.

    On thick slices the head's subchondral shell forms regions of its own
    that touch the acetabulum (across a joint space blurred by partial volume)
    more than the head's interior, so naming joins them to the hip. The joint
    space is a sphere around the head: found from the border between the
    side's hip and femur labels (a sphere fitted to it: the head, or its
    interior) and then fitted to the HU valley (:func:`head_sphere`). Only
    the side's hip and femur voxels are relabelled, and only when the inner
    half of the sphere is mostly femur already (a sphere found anywhere
    else is not a femoral head). More than ``HEAD_BAND_MM`` inside the
    sphere all bone is femur; within ``HEAD_BAND_MM`` of it a watershed on
    -HU puts the border on the valley, and the voxels of the watershed line
    (the valley itself) are left to neither bone."""
    sp = np.asarray(spacing_mm, dtype=float)
    found = []
    for hip, femur in ((1, 4), (2, 5)):
        if boxes[hip - 1] is None or boxes[femur - 1] is None:
            continue
        sphere = head_sphere(rough, hu, hip, femur, boxes[femur - 1], sp, frame)
        if sphere is None:
            continue
        centre, radius, depth = sphere
        give_cut_off_femur_back(rough, hip, femur, centre, radius, sp, boxes[femur - 1])
        box, dist = ball_box(centre, radius + HEAD_BAND_MM, sp, rough.shape)
        view = rough[box]
        free = solid[box] & ((view == hip) | (view == femur))
        core = free & (dist <= radius / 2)
        if not core.any():  # a hollow head (marrow below the threshold): its bone inside the band
            core = free & (dist <= radius - HEAD_BAND_MM)
        if np.count_nonzero(view[core] == femur) <= np.count_nonzero(core) / 2:
            continue  # not a femur's head: its inner bone is not femur already
        markers = np.where(free & (dist >= radius + HEAD_BAND_MM), view, 0)
        markers[free & (dist <= radius - HEAD_BAND_MM)] = femur
        grown = watershed(-hu[box], markers, mask=free, watershed_line=True)
        reached = grown > 0
        line = free & ~reached & ndi.binary_dilation(reached, FACE_CONNECTIVITY)
        view[reached] = grown[reached]
        view[line] = 0
        found.append((femur, centre, radius, depth))
    return found


def give_cut_off_femur_back(rough: np.ndarray, hip: int, femur: int, centre: np.ndarray, radius: float,
                            sp: np.ndarray, femur_box: tuple[slice, ...]) -> int:
    """Give the hip, in place, the femur bone that the head's joint sphere
    cuts off from the rest of the femur; returns how many voxels.

    Outside the sphere the femur goes on only through its neck, to the
    trochanters and the shaft: one piece, the femur's largest outside the
    sphere (and its ``HEAD_BAND_MM`` band). Any other femur piece there is
    joined to the femur only through the joint, and lies on the
    acetabulum's side of it: contact across the blurred joint space gave it
    to the femur. TotalSegmentator example: the acetabular roof above each
    head (a ring of bright bone in axial slices up to 26 mm above the head's
    centre) and the lateral wall of the right ischium (195 voxels, part of
    the head's own big region); given back, the hip's fills close the roof
    and the ischium (hips 0.795 / 0.758 -> 0.833 / 0.822 with the midline
    rule of :func:`name_regions`). Pelvic-Ref-003: two voxels move."""
    box = grow_box(femur_box, rough.shape)
    view = rough[box]
    dist2 = sum((g * s - c) ** 2 for g, s, c in zip(np.ogrid[box], sp, centre))
    outside = (view == femur) & (dist2 > (radius + HEAD_BAND_MM) ** 2)
    pieces, n = ndi.label(outside, structure=np.ones((3, 3, 3)))
    if n < 2:
        return 0
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    sizes[0] = 0
    cut = (pieces > 0) & (pieces != np.argmax(sizes))
    view[cut] = hip
    return int(np.count_nonzero(cut))


def open_sacral_canal(labels: np.ndarray, raw: np.ndarray, hu: np.ndarray, volume: Volume) -> int:
    """Take the sacral canal out of the sacrum's fill, in place; returns the
    voxels taken out.

    The sacrum's marrow needs the plane-by-plane fills (its cancellous bone
    is 50-150 HU behind a thin cortex on Pelvic-Ref-003; without them its
    cut face on the seed plan is 1212 mm2 instead of 1708 mm2), but its
    canal is enclosed by bone in every axial slice just like marrow, so
    those fills close it too. The canal's contents (CSF, epidural fat,
    nerve roots) are darker than marrow: the filled sacrum voxels below
    ``CANAL_HU`` form a connected tube up the sacrum's length, while dark
    pockets of marrow are short. On Pelvic-Ref-003 the tube is 26.5 cm3 over
    the whole sacrum (132 mm), the next largest dark piece 1.4 cm3 over
    12 mm."""
    found = ndi.find_objects((labels == 3).view(np.uint8))
    if not found or found[0] is None:
        return 0
    box = found[0]
    sacrum = labels[box] == 3
    sigma = CANAL_SMOOTHING_MM / np.asarray(volume.spacing_mm, dtype=float)
    smooth = ndi.gaussian_filter(hu[box].astype(np.float32, copy=False), sigma)
    dark, n = ndi.label(sacrum & ~raw[box] & (smooth < CANAL_HU), structure=FACE_CONNECTIVITY)
    if n == 0:
        return 0
    offset = np.array([s.start for s in box], dtype=float)
    z_min, z_max = region_extent_z(dark, n, volume.affine, offset)
    canal = np.flatnonzero(z_max - z_min >= CANAL_MIN_LENGTH_MM) + 1
    taken = np.isin(dark, canal)
    labels[box][taken] = 0
    return int(np.count_nonzero(taken))


def grow_box(box: tuple[slice, ...], shape: tuple[int, ...], by: int = 1) -> tuple[slice, ...]:
    """``box`` grown by ``by`` voxels on every side, clipped to ``shape``."""
    return tuple(slice(max(s.start - by, 0), min(s.stop + by, n)) for s, n in zip(box, shape))


def ball_box(centre: np.ndarray, reach: float, spacing_mm: np.ndarray,
             shape: tuple[int, ...]) -> tuple[tuple[slice, ...], np.ndarray]:
    """The box of voxels within ``reach`` mm of ``centre`` (index-mm) along
    each axis, clipped to ``shape``, and every box voxel's distance (mm)
    from the centre."""
    box = tuple(slice(max(int(np.floor((c - reach) / s)), 0), min(int(np.ceil((c + reach) / s)) + 1, n))
                for c, s, n in zip(centre, spacing_mm, shape))
    dist = np.sqrt(sum((g * s - c) ** 2 for g, s, c in zip(np.ogrid[box], spacing_mm, centre)))
    return box, dist


def fill_femoral_heads(labels: np.ndarray, heads: list[tuple[int, np.ndarray, float, float]],
                       spacing_mm: np.ndarray) -> np.ndarray:
    """Fill each femoral head found by :func:`claim_femoral_heads`, in place:
    all voxels more than ``HEAD_BAND_MM`` inside its joint sphere are femur,
    whatever their HU, and whatever another bone's fill reached there
    through a gap in the head's shell. The head is cancellous bone inside a
    subchondral shell that, facing the acetabulum on thick slices, averages
    below the threshold over much of its surface; no fill by shape finds
    marrow behind a shell that is not there (Pelvic-Ref-003: ~3,000 voxels of
    each head). Returns where: there the femur is as certain as its own
    threshold bone, and a neighbour's fill gives way to it."""
    sp = np.asarray(spacing_mm, dtype=float)
    inside = np.zeros(labels.shape, dtype=bool)
    for femur, centre, radius, _ in heads:
        inner = radius - HEAD_BAND_MM
        box, dist = ball_box(centre, inner, sp, labels.shape)
        labels[box][dist <= inner] = femur
        inside[box] |= dist <= inner
    return inside


def head_frame(volume: Volume) -> np.ndarray:
    """Rows: the patient's superior, posterior and left directions in the
    grid's index-mm frame. The head sphere's search (its rays, first steps
    and retry starts) is laid out along these, so it is the same search
    however the slices are stored: on the faint TotalSegmentator joints,
    laid out along the array's axes, the right femur's labels differed by
    Dice 0.94 between the scan and the same scan stored feet first and
    flipped front to back. For an axial grid stored head first with rows
    running back and columns left (Pelvic-Ref-003, the phantom) it is the
    identity."""
    r = volume.affine[:3, :3] / np.asarray(volume.spacing_mm, dtype=float)
    return r[[2, 1, 0]]


def head_sphere(rough: np.ndarray, hu: np.ndarray, hip: int, femur: int, femur_box: tuple[slice, ...],
                sp: np.ndarray, frame: np.ndarray | None = None) -> tuple[np.ndarray, float, float] | None:
    """(centre in index-mm, radius mm, mean valley depth HU) of the joint
    space around a femoral head, or None. A first centre: the sphere fitted
    to the face borders between ``hip`` and ``femur`` voxels near the femur; then centre and
    radius maximise the mean depth of the HU valley (the darker of HU at
    radius -/+ ``HEAD_VALLEY_MM`` less HU at radius, floored at 0: rays into
    soft tissue have none) along rays from the centre, leaving out those
    within ``HEAD_NECK_DEG`` of the neck (towards the femur's centre).
    Too shallow a valley is retried from shifted starts (``HEAD_RETRY_MM``):
    TotalSegmentator example, right head: the border's start lay 6 mm off
    and found 9.9 HU; two of six shifted starts found 18.1 HU within 2 mm of
    the sphere fitted to the reference femur's head, a third 19.5 HU at
    radius 17.9 mm, inside the head, which ``HEAD_RETRY_RADIUS_MM`` leaves out."""
    box = grow_box(femur_box, rough.shape)
    view = rough[box]
    offset = np.array([s.start for s in box], dtype=float)
    points = (border_faces(view, hip, femur) + offset) * sp
    if len(points) < 10:
        return None
    centre, radius = fit_sphere(points)
    for _ in range(3):
        off = np.abs(np.linalg.norm(points - centre, axis=1) - radius)
        keep = off <= max(2.0 * np.median(off), 2.0)
        if keep.sum() < 10:
            return None
        centre, radius = fit_sphere(points[keep])
    femur_centre = (np.argwhere(view == femur).mean(axis=0) + offset) * sp
    neck = femur_centre - centre
    neck /= np.linalg.norm(neck)
    frame = np.eye(3) if frame is None else frame
    rays = sphere_directions(HEAD_RAYS) @ frame
    rays = rays[rays @ neck < np.cos(np.radians(HEAD_NECK_DEG))]
    h = hu if hu.dtype == np.float32 else hu.astype(np.float32)

    def depth(c: np.ndarray, r: float) -> float:
        at = (c + np.multiply.outer(np.array([r - HEAD_VALLEY_MM, r, r + HEAD_VALLEY_MM]), rays)) / sp
        v = ndi.map_coordinates(h, at.reshape(-1, 3).T, order=1, mode="nearest").reshape(3, -1)
        return float(np.mean(np.maximum(np.minimum(v[0], v[2]) - v[1], 0.0)))

    radii = np.arange(HEAD_RADIUS_MM[0], HEAD_RADIUS_MM[1], 0.5)
    r0 = radii[np.argmax([depth(centre, r) for r in radii])]
    steps = np.eye(4)
    steps[:3, :3] = frame

    def deepest(start: np.ndarray):
        return minimize(lambda x: -depth(x[:3], x[3]), start, method="Nelder-Mead",
                        options={"xatol": 0.2, "fatol": 0.5, "initial_simplex": np.r_[[start], start + 3.0 * steps]})

    start = np.r_[centre, r0]
    best = deepest(start)
    if -best.fun < HEAD_MIN_VALLEY_HU:
        for shift in np.r_[frame, -frame] * HEAD_RETRY_MM:
            other = deepest(start + np.r_[shift, 0.0])
            if other.fun < best.fun and HEAD_RETRY_RADIUS_MM[0] <= other.x[3] <= HEAD_RETRY_RADIUS_MM[1]:
                best = other
    centre, radius = best.x[:3], float(best.x[3])
    if not (HEAD_RADIUS_MM[0] <= radius <= HEAD_RADIUS_MM[1]) or -best.fun < HEAD_MIN_VALLEY_HU:
        return None
    return centre, radius, -float(best.fun)


def border_faces(labels: np.ndarray, a: int, b: int) -> np.ndarray:
    """Centres (index units, N x 3) of the voxel faces between label ``a``
    and label ``b``."""
    points = []
    for axis in range(3):
        m = np.moveaxis(labels, axis, 0)
        border = ((m[:-1] == a) & (m[1:] == b)) | ((m[:-1] == b) & (m[1:] == a))
        at = np.argwhere(border).astype(float)
        at[:, 0] += 0.5  # the face between the two voxels
        order = [axis] + [i for i in range(3) if i != axis]  # moveaxis's axis order
        points.append(at[:, np.argsort(order)])
    return np.concatenate(points)


def femurs_apart(rough: np.ndarray, boxes: list) -> list[str]:
    """The femurs whose labels touch their side's hip bone nowhere
    (``boxes``: ``find_objects`` of ``rough`` for labels 1..5): the joint
    space parts them already (1 mm slices), and no head sphere is needed or
    looked for."""
    apart = []
    for hip, femur in ((1, 4), (2, 5)):
        if boxes[hip - 1] is None or boxes[femur - 1] is None:
            continue
        # Faces between the two lie where their boxes overlap, grown by a voxel.
        overlap = tuple(slice(max(a.start, b.start), min(a.stop, b.stop))
                        for a, b in zip(boxes[hip - 1], boxes[femur - 1]))
        box = grow_box(overlap, rough.shape)
        if any(s.stop - s.start < 1 for s in box) or len(border_faces(rough[box], hip, femur)) == 0:
            apart.append(LABEL_NAMES[femur])
    return apart


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares sphere through points (algebraic fit)."""
    a = np.c_[2.0 * points, np.ones(len(points))]
    x = np.linalg.lstsq(a, (points ** 2).sum(axis=1), rcond=None)[0]
    return x[:3], float(np.sqrt(max(x[3] + x[:3] @ x[:3], 0.0)))


def sphere_directions(n: int) -> np.ndarray:
    """``n`` unit vectors spread evenly over the sphere (Fibonacci lattice)."""
    i = np.arange(n) + 0.5
    polar, azimuth = np.arccos(1.0 - 2.0 * i / n), np.pi * (1.0 + 5.0 ** 0.5) * i
    return np.c_[np.cos(polar), np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth)]


def solid_per_label(rough: np.ndarray, raw: np.ndarray, volume: Volume, bone: BoneMask,
                    cfg: SegmentConfig) -> np.ndarray:
    """Close and fill each label's raw threshold on its own (marrow per bone)."""
    radius_vox = closing_radius_voxels(volume.spacing_mm, cfg.closing_mm)
    at_border = [(s.start == 0, s.stop == dim) for s, dim in zip(bone.box, volume.shape)]
    out = np.zeros(rough.shape, dtype=np.uint8)
    pieces = np.where(raw, rough, 0)
    jobs = []
    for label, sub in enumerate(ndi.find_objects(pieces), start=1):
        if sub is None:
            continue
        sub = grow_box(sub, rough.shape, radius_vox + 1)
        sub_border = [(b0 and s.start == 0, b1 and s.stop == dim)
                      for (b0, b1), s, dim in zip(at_border, sub, rough.shape)]
        # A vertebra's arch encloses the spinal canal in every axial slice:
        # that hole is not marrow, so the spine gets the 3D fill only.
        max_hole_mm2 = 0.0 if label == LUMBAR else cfg.max_slice_hole_mm2
        jobs.append((label, sub, lambda label=label, sub=sub, border=sub_border, hole=max_hole_mm2:
                     solid_bone(pieces[sub], label, radius_vox, volume.spacing_mm, cfg, border, hole)))
    # Bones are filled independently (scipy releases the GIL: both cores work);
    # they are written in label order, as before.
    for (label, sub, _), filled in zip(jobs, parallel(*[job for _, _, job in jobs])):
        view = out[sub]
        view[filled & ((view == 0) | (rough[sub] == label))] = label
    return out


def solid_bone(pieces: np.ndarray, label: int, radius_vox: int, spacing_mm: np.ndarray,
               cfg: SegmentConfig, at_border: list[tuple[bool, bool]], max_hole_mm2: float) -> np.ndarray:
    """One bone made solid: closed and filled (:func:`close_and_fill`), then
    the marrow no fill reached because the cortex has gaps: voxels the bone
    encloses in all six axis directions within
    ``cfg.enclosure_mm``, where no other bone comes first. So a joint space
    is never taken: the acetabulum encloses the space around the femoral
    head as it does its own marrow, but the head is met first towards it.

    On slices thicker than ``cfg.closing_mm`` thin oblique cortex averages
    below the threshold over gaps of a few mm, wider than the closing
    bridges, and the marrow behind them sees out along one axis (on
    Pelvic-Ref-003 ~7,000 voxels per femoral neck and trochanter, mostly
    enclosed in 5 of 6 directions). Taking 5 of 6 would fill a bone's
    concave corners too (the phantom's iliac fossa: a bowl open upwards is
    enclosed in 5). So the holes the bone encloses in each plane once gaps
    narrower than about two slice thicknesses are bridged are filled
    (:func:`~pipeline.segment.mask.fill_bridged_plane_holes`): a gap is told from
    a concave corner by its width, not by the directions it leaves open.
    Other bones count as outside there as well, and holes are limited to
    ``max_hole_mm2`` (none for the spine)."""
    piece = pieces == label
    others = (pieces > 0) & ~piece
    filled = close_and_fill(piece, radius_vox, spacing_mm, cfg.closing_mm, at_border, max_hole_mm2)
    if cfg.enclosure_mm > 0:
        reach = np.maximum(np.round(cfg.enclosure_mm / np.asarray(spacing_mm, dtype=float)), 1)
        filled |= enclosed_directions(filled, reach, at_border, others) >= ENCLOSED_DIRECTIONS
    slice_mm = float(np.max(spacing_mm))
    if slice_mm > cfg.closing_mm and max_hole_mm2 > 0:
        filled = fill_bridged_plane_holes(filled, spacing_mm, slice_mm, others, max_hole_mm2)
    return filled


def separate_labels(labels: np.ndarray, own: np.ndarray | None = None) -> np.ndarray:
    """Drop every voxel with a 26-neighbour of another label: afterwards
    different bones are at least one voxel apart.

    ``own``: the voxels that are their label's own threshold bone (not
    marrow or gap filled in by :func:`solid_per_label`). Where a filled voxel
    touches another label, the filled voxel goes first; an own voxel goes
    only if it still touches another label after that. So where a fill
    reached into a joint space (a 3 mm slice at the top of a femoral head
    enclosed in-plane by the acetabulum), the bone beside it stays. Without
    ``own`` both voxels of every clashing pair go (one pass suffices)."""
    high = max3(labels)
    low = min3(np.where(labels > 0, labels, np.uint8(255)))
    clash = (labels > 0) & (high != low)
    if own is None:
        return np.where(clash, np.uint8(0), labels)
    out = np.where(clash & ~own, np.uint8(0), labels)
    at = np.argwhere(clash & own)
    still = np.zeros(len(at), dtype=bool)
    mine = out[tuple(at.T)]
    for step in np.argwhere(np.ones((3, 3, 3), dtype=bool)) - 1:
        if not step.any():
            continue
        there = at + step
        inside = np.all((there >= 0) & (there < out.shape), axis=1)
        other = np.zeros(len(at), dtype=out.dtype)
        other[inside] = out[tuple(there[inside].T)]
        still |= (other > 0) & (other != mine)
    out[tuple(at[still].T)] = 0
    return out
