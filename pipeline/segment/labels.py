"""Labelling: bone voxels + the fitted pelvis shape model -> one solid label per bone.

Threshold and morphology find bone; they cannot say which bone, nor fill a
sacrum whose marrow is fat-density or a femoral head whose shell fades on
3 mm slices. The pelvis shape model (:mod:`pipeline.segment.shape_model`),
fitted to the CT (:mod:`pipeline.segment.model_fit`), decides membership and
interiors; the image decides where each surface is (the half-maximum surface
of :mod:`pipeline.geometry.surface`, which follows these labels).

1. **Fit** the model (both hip bones and the sacrum S1-S3) to the bone's
   outer surface, in LPS mm.
2. **Femoral heads**: near each fitted acetabulum the head's own surface
   gives its sphere (:func:`head_from_surface`), which starts the search
   for the joint space's HU valley around the head (:func:`head_sphere`);
   without a valley deep enough the surface's sphere stands, without a
   head surface the acetabulum's.
3. **Seeds**, on the threshold bone only: a model bone's voxels inside its
   fitted surface and at least ``SEED_MARGIN_MM`` outside every other model
   bone, and none within ``HEAD_BAND_MM`` outside a head's joint sphere; a
   femur's inside its head sphere and its bone below the fitted hip bone on
   its side; the spine's above the fitted S1 endplate, near the midline,
   outside every model bone.
4. **Flood**: a watershed on -HU from the seeds through the threshold bone,
   so every border falls in a joint space's HU valley (sacroiliac joints,
   symphysis, hip joints, the L5/S1 disc) near where the model puts it.
   Bone no seed reaches is ``other`` if it holds a dense core (ribs), else
   not bone (contrast, calcifications).
5. **Solid**: each bone is closed and filled on its own
   (:func:`solid_per_label`; the spine and sacrum not in axial planes,
   where their canal looks like marrow; a vertebral body's faint marrow
   between its endplates by :func:`vertebral_marrow`); a model bone also
   takes its fitted interior more than ``INSET_MM`` inside its surface (the
   sacrum's fat-density marrow), the sacrum's fills stay within
   ``SEED_MARGIN_MM`` of its fitted surface and out of the holes of its
   fitted sections (its canal and foramina stay open) down to S3, the
   model's end, beyond which the bone decides alone (its tip, thinner than
   a 3 mm voxel, taken at its half maximum: :func:`sacral_tip`), the
   femoral heads are filled inside their spheres, and the spinal
   canal, which fills close where neighbouring arches overlap, is opened
   again as the dark tube that runs up the spine (:func:`open_canal`).
6. **Gap**: no two labels touch, even diagonally (:func:`separate_labels`),
   so their meshes never intersect.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import minimize
from skimage.segmentation import watershed

from ..bones import LABEL_IDS, LABEL_NAMES
from ..config import SegmentConfig
from ..parallel import parallel
from ..volume import Volume, apply_affine
from .distance_map import closed, opened
from .lookup import label_counts, lookup, touching
from .mask import (ENCLOSED_DIRECTIONS, FACE_CONNECTIVITY, IN_SLICE_CONNECTIVITY, BoneMask, close_and_fill,
                   closing_radius_voxels, enclosed_directions, fill_bridged_plane_holes, fill_cavities)
from .model_fit import PelvisFit, fit_pelvis, mask_surface, vertex_normals
from .neighbours import max3, min3
from .shape_model import MODEL_BONES, ShapeModel, load_model
from .voxelise import inside_mesh

HIP_LEFT, HIP_RIGHT, SACRUM = LABEL_IDS["hip_left"], LABEL_IDS["hip_right"], LABEL_IDS["sacrum"]
FEMUR_LEFT, FEMUR_RIGHT = LABEL_IDS["femur_left"], LABEL_IDS["femur_right"]
LUMBAR, OTHER = LABEL_IDS["lumbar"], LABEL_IDS["other"]
SIDES = ((HIP_LEFT, FEMUR_LEFT, "acetabulum_left", 1.0), (HIP_RIGHT, FEMUR_RIGHT, "acetabulum_right", -1.0))

# Seeds of a model bone stay this far from every other model bone's fitted
# surface: the model is 1.5-2 mm off the bone, a joint space 2-4 mm wide.
SEED_MARGIN_MM = 3.0
# Fill beyond the fitted sacrum is allowed from this far before its caudal
# end (S3) on: the model's end is an oblique cut, the bone goes on smoothly.
S3_END_MARGIN_MM = 6.0
# A model bone's fitted interior deeper than this is that bone whatever its
# HU (the sacrum's fatty marrow); nearer the surface the image decides.
INSET_MM = 1.0
# Spine seeds: within this of the body midline (vertebral bodies, pedicles).
SPINE_HALF_WIDTH_MM = 35.0
# Femur seeds below the hip bone lie at least this far to their side of the midline.
FEMUR_MIN_OFFSET_MM = 30.0
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
# The sacral tip (see sacral_tip): beyond the fitted S3 end, within
# TIP_REACH_MM of it and TIP_HALF_WIDTH_MM of the midline, voxels joined to the
# sacrum whose own HU reaches half the highest smoothed HU within TIP_PEAK_MM
# (half way from the soft tissue, about 0 HU for fat and muscle together, to
# the bone's peak: its half-maximum surface) and whose smoothed HU (as the
# spine's) reaches TIP_HU (the soft tissue around the sacrum stays under
# 40 HU; the tip's thin bone averages 100-180 HU on 3 mm voxels) are sacrum.
# A grown region over TIP_MAX_MM3 has run into something else (bowel
# contents) and is not taken.
TIP_PEAK_MM = 4.0
TIP_HU, TIP_REACH_MM, TIP_HALF_WIDTH_MM, TIP_MAX_MM3 = 100.0, 80.0, 40.0, 40_000.0
# A model fit is trusted when at least this share of the model's vertices in
# view lie within 3 mm of bone (a pelvis is there).
MIN_FITTED_FRACTION = 0.35
# Other bone (not reached from a seed) needs a dense core: bone above
# segment.core_hu (or CORE_FRACTION of the bone's 99th percentile on weak
# bone), at least segment.min_core_mm3; contrast and calcifications have none.
CORE_FRACTION = 0.5
# Femoral head sphere (the joint space around the head): radius range of a
# plausible one, the half-width of the valley looked for, the rays (evenly
# spread directions, less those within HEAD_NECK_DEG of the neck) and the
# least mean valley depth (HU) that replaces the acetabulum's own sphere.
# The search may move the centre at most HEAD_SHIFT_MM from the acetabulum's.
# Bone inside the sphere seeds the femur, no other bone within HEAD_BAND_MM
# outside it seeds its bone, and everything more than half a joint space
# (HEAD_JOINT_MM wide) inside it is femur.
HEAD_RADIUS_MM = (15.0, 35.0)
HEAD_VALLEY_MM = 2.0
HEAD_RAYS, HEAD_NECK_DEG = 400, 70.0
HEAD_MIN_VALLEY_HU = 10.0
HEAD_SHIFT_MM = 8.0
HEAD_BAND_MM = 3.0
HEAD_JOINT_MM = 3.0
# The head's surface is looked for within HEAD_SEARCH_MM of the fitted
# acetabulum's centre: votes in HEAD_VOTE_CELL_MM cells, a peak of at least
# HEAD_MIN_VOTES.
HEAD_SEARCH_MM, HEAD_VOTE_CELL_MM, HEAD_MIN_VOTES = 15.0, 2.0, 20
# The femoral neck points lateral, inferior and a little anterior (LPS, per
# side sign on x); rays along it see no joint space.
NECK_DIRECTION_LPS = np.array([0.7, -0.2, -0.7])


@dataclass(frozen=True, eq=False)
class BoneLabels:
    """Labelled solid bone inside ``box`` of the volume's grid.

    ``labels``: uint8, shape of ``volume.hu[box]``, values of
    :data:`pipeline.bones.LABEL_NAMES` (0 = not bone); no two different
    labels are 26-neighbours.
    ``smallest_piece_voxels``: as in :class:`~pipeline.segment.mask.BoneMask`.
    ``fit``: the fitted pelvis model (None when no pelvis was found).
    ``stats``: per-label volumes, the model fit and the femoral heads, for the report.
    ``kept_open``: bool on ``box`` or None: voxels the labelling holds are
    not bone however narrow the gap (the fitted sacrum's canal and foramina,
    :func:`model_holes`); the surface's snap does not close them where it
    has no level to go by.
    """

    labels: np.ndarray
    box: tuple[slice, slice, slice]
    smallest_piece_voxels: int
    stats: dict
    fit: PelvisFit | None = None
    kept_open: np.ndarray | None = None

    def full(self, shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=np.uint8)
        out[self.box] = self.labels
        return out


@dataclass(frozen=True)
class Head:
    """A femoral head's joint-space sphere in LPS mm, and how it was found."""

    femur: int
    centre_lps_mm: np.ndarray
    radius_mm: float
    valley_hu: float
    source: str  # "valley" (the HU valley), "head surface" or "acetabulum" (the fitted cup)
    fill_radius_mm: float  # the sphere about the centre that is certainly head (filled whatever its HU)


def label_bones(volume: Volume, bone: BoneMask, cfg: SegmentConfig,
                model: ShapeModel | None = None) -> BoneLabels:
    hu = volume.hu[bone.box]
    raw = bone.voxels
    model = load_model() if model is None else model
    fit = fit_pelvis(volume, bone, model)
    found = pelvis_found(fit)
    grid = Grid(volume, bone.box)
    if found:
        # Both femoral heads at once (numpy and scipy release the GIL); the
        # model's masks after them (beside them, the peak memory grew by 0.1 GB).
        heads = [h for h in parallel(*[lambda side=side: femoral_head(fit, hu, grid, raw, *side) for side in SIDES])
                 if h is not None]
        masks = model_masks(fit, grid)
        seeds = seed_labels(raw, grid, fit, masks, heads, bone.midline_x_lps_mm)
        rough = watershed_by_piece(hu, seeds, raw)
    else:
        masks, heads, rough = {}, [], np.zeros(raw.shape, dtype=np.uint8)
    core_hu = core_level_hu(hu[raw], cfg.core_hu)
    rough = label_other_bone(rough, raw, hu, core_hu, cfg.min_core_mm3 / volume.voxel_volume_mm3)
    labels = solid_per_label(rough, raw, hu, volume, bone, cfg, core_hu)
    own = raw & (labels == rough)
    kept_open = None
    for b, (inside, near, deep) in masks.items():
        label = LABEL_IDS[b]
        if b == "sacrum":
            kept_open = model_holes(inside, axial_axis(volume))
            beyond = np.argwhere((labels == label) & ~own & (~near | kept_open))
            beyond = beyond[~past_s3(fit, grid.lps(beyond))]  # S4, S5 and the coccyx lie beyond the model
            labels[tuple(beyond.T)] = 0
        labels[deep & ((labels == 0) | ((labels != label) & ~own))] = label
    tip = sacral_tip(labels, hu, grid, fit, bone.midline_x_lps_mm) if found else 0
    heads_inside = fill_femoral_heads(labels, heads, grid)
    certain = own.copy()
    for _, _, deep in masks.values():
        certain |= deep
    open_canal(labels, certain, hu, volume)
    above_l1 = vertebrae_above_l1(labels, hu, grid)
    labels = separate_labels(labels, own | heads_inside, hu)
    return BoneLabels(labels=labels, box=bone.box, smallest_piece_voxels=_smallest(labels),
                      stats=label_stats(labels, volume, fit, found, heads, core_hu, tip, above_l1),
                      fit=fit if found else None, kept_open=kept_open)


@dataclass(frozen=True, eq=False)
class Grid:
    """The labelling box of a volume: index <-> LPS mm."""

    volume: Volume
    box: tuple[slice, slice, slice]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.box)  # type: ignore[return-value]

    @property
    def offset(self) -> np.ndarray:
        return np.array([s.start for s in self.box], dtype=float)

    def lps(self, index: np.ndarray) -> np.ndarray:
        """LPS mm of box indices (N, 3)."""
        return apply_affine(self.volume.affine, np.asarray(index, dtype=float) + self.offset)

    def index(self, lps_mm: np.ndarray) -> np.ndarray:
        """Box indices (continuous) of LPS points (N, 3)."""
        return apply_affine(np.linalg.inv(self.volume.affine), lps_mm) - self.offset

    def sub_box(self, lps_mm: np.ndarray, margin_mm: float) -> tuple[slice, slice, slice] | None:
        """The part of the box holding the points' bounding box grown by ``margin_mm`` (full-grid slices)."""
        lo, hi = lps_mm.min(axis=0) - margin_mm, lps_mm.max(axis=0) + margin_mm
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        idx = self.index(corners)
        start = np.maximum(np.floor(idx.min(axis=0)).astype(int), 0)
        stop = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, self.shape)
        if np.any(stop <= start):
            return None
        return tuple(slice(int(a + o), int(b + o)) for a, b, o in zip(start, stop, self.offset.astype(int)))


def pelvis_found(fit: PelvisFit) -> bool:
    """Whether the fit found a pelvis: enough of the model in view lies on bone."""
    fitted = [d["fitted_fraction"] / max(d["in_view_fraction"], 1e-6) for d in fit.bones.values()
              if d["in_view_fraction"] > 0.2]
    return bool(fitted) and float(np.median(fitted)) >= MIN_FITTED_FRACTION


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
    local = tuple(slice(s.start - o, s.stop - o) for s, o in zip(sub, grid.offset.astype(int)))
    out[local] = inside_mesh(vertices, faces, grid.volume.affine, sub)
    return out


def model_holes(inside: np.ndarray, axial: int) -> np.ndarray:
    """The holes of a fitted bone's axial sections: for the sacrum, its canal
    and foramina, which its fills must leave open however narrow they are."""
    section = np.moveaxis(inside, axial, 0)
    holes = fill_cavities(section, IN_SLICE_CONNECTIVITY, [False, False, True, True, True, True]) & ~section
    return np.moveaxis(holes, 0, axial)


def past_s3(fit: PelvisFit, points_lps_mm: np.ndarray) -> np.ndarray:
    """Whether each point lies beyond the fitted sacrum's caudal end (S3,
    where the model stops; S4, S5 and the coccyx go on), less
    ``S3_END_MARGIN_MM`` (the end is oblique, the real sacrum goes on
    smoothly)."""
    centre, normal = _plane(fit.vertices_lps_mm[fit.landmarks["s3_end"]])
    caudal = fit.vertices_lps_mm[fit.landmarks["s3_end"]].mean(axis=0) - \
        fit.vertices_lps_mm[fit.landmarks["s1_endplate"]].mean(axis=0)
    if normal @ caudal < 0:
        normal = -normal
    return (points_lps_mm - centre) @ normal > -S3_END_MARGIN_MM


def sacral_tip(labels: np.ndarray, hu: np.ndarray, grid: Grid, fit: PelvisFit, midline_x_lps_mm: float) -> int:
    """S4, S5 and the coccyx, in place: the sacrum goes on beyond the
    model's S3 end as bone thinner than a 3 mm voxel, which the scan
    averages below the bone threshold. There the unlabelled voxels whose
    own HU reaches half the local smoothed peak and whose smoothed HU
    reaches ``TIP_HU`` (see :data:`TIP_PEAK_MM`: the half-maximum surface
    the labels follow), within
    the tip's reach (:data:`TIP_REACH_MM`, :data:`TIP_HALF_WIDTH_MM`) and
    joined to the sacrum through such voxels, become sacrum, unless they
    add more than ``TIP_MAX_MM3`` (then the growth has run into something
    else). Returns the voxels added."""
    end = fit.vertices_lps_mm[fit.landmarks["s3_end"]]
    sub = grid.sub_box(end, TIP_REACH_MM)
    if sub is None:
        return 0
    local = tuple(slice(s.start - o, s.stop - o) for s, o in zip(sub, grid.offset.astype(int)))
    view = labels[local]
    sacrum = view == SACRUM
    if not sacrum.any():
        return 0
    spacing = np.asarray(grid.volume.spacing_mm, dtype=float)
    smooth = smooth_hu(hu[local], spacing)
    peak = ndi.maximum_filter(smooth, size=2 * np.maximum(np.round(TIP_PEAK_MM / spacing), 1).astype(int) + 1)
    # The voxel's own HU against the half maximum: smoothing carries a bright
    # neighbour's HU into the partial-volume layer outside it.
    candidate = (view == 0) & (smooth >= TIP_HU) & (hu[local] >= 0.5 * peak)
    at = np.argwhere(candidate)
    lps = grid.lps(at + [s.start for s in local])
    keep = past_s3(fit, lps) & (np.abs(lps[:, 0] - midline_x_lps_mm) < TIP_HALF_WIDTH_MM)
    candidate[tuple(at[~keep].T)] = False
    pieces, n = ndi.label(candidate | sacrum, structure=FACE_CONNECTIVITY)
    grown = candidate & lookup(touching(pieces, n, sacrum), pieces)
    added = int(np.count_nonzero(grown))
    if added * grid.volume.voxel_volume_mm3 > TIP_MAX_MM3:
        return 0
    view[grown] = SACRUM
    return added


def lowest_z(fit: PelvisFit, bone: str) -> float:
    """LPS z (mm) of the lowest vertex of a fitted bone."""
    return float(fit.vertices_lps_mm[np.unique(fit.faces[bone]), 2].min())


def seed_labels(raw: np.ndarray, grid: Grid, fit: PelvisFit,
                masks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], heads: list[Head],
                midline_x_lps_mm: float) -> np.ndarray:
    """uint8 seeds (label values) on the threshold bone (0 = decided by the flood)."""
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
    at = np.argwhere(raw & ~near_any)
    lps = grid.lps(at)
    free = np.zeros(len(at), dtype=np.int32)
    endplate = fit.vertices_lps_mm[fit.landmarks["s1_endplate"]]
    centre, normal = _plane(endplate)
    above = (lps - centre) @ normal > SEED_MARGIN_MM
    free[above & (np.abs(lps[:, 0] - midline_x_lps_mm) < SPINE_HALF_WIDTH_MM)] = LUMBAR
    for hip, femur, _, side in SIDES:
        # Below the hip bone there is only the femur on each side.
        lowest = lowest_z(fit, LABEL_NAMES[hip])
        on_side = side * (lps[:, 0] - midline_x_lps_mm) > FEMUR_MIN_OFFSET_MM
        free[on_side & (lps[:, 2] < lowest - SEED_MARGIN_MM)] = femur
    seeds[tuple(at.T)] = free
    for head in heads:  # the head itself, and nothing else inside its sphere
        box, dist = _ball(head.centre_lps_mm, head.radius_mm + HEAD_BAND_MM, grid)
        if box is None:
            continue
        view = seeds[box]
        view[(dist <= head.radius_mm + HEAD_BAND_MM) & (view != head.femur)] = 0
        view[raw[box] & (dist <= head.radius_mm)] = head.femur
    return seeds


def watershed_by_piece(hu: np.ndarray, seeds: np.ndarray, solid: np.ndarray) -> np.ndarray:
    """Watershed on -HU from the seeds through the mask (seeds keep their
    label), run on each face-connected piece of the unseeded voxels and the
    seeds beside them, in its own bounding box, two at a time: the same
    result as one watershed over the whole box (flooding never leaves a
    piece), at a fraction of the time, since the flooding's cost is as much
    the box as the voxels in it."""
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
        return watershed(-hu[box], np.where(inside, seeds[box], 0).astype(np.int32), mask=inside)

    for (piece, box), flooded in zip(boxes, parallel(*[lambda p=p, b=b: flood(p, b) for p, b in boxes])):
        inside = pieces[box] == piece
        regions[box][inside] = flooded[inside]
    return np.where(regions > 0, regions, seeds)


def _plane(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre, unit normal pointing superior) of the plane through points."""
    centre = points.mean(axis=0)
    normal = np.linalg.svd(points - centre)[2][-1]
    return centre, normal if normal[2] > 0 else -normal


def _ball(centre_lps_mm: np.ndarray, reach_mm: float, grid: Grid):
    """(box within the labelling box, distance in mm of its voxels from the centre)."""
    sub = grid.sub_box(centre_lps_mm[None], reach_mm)
    if sub is None:
        return None, None
    local = tuple(slice(s.start - o, s.stop - o) for s, o in zip(sub, grid.offset.astype(int)))
    k, j, i = np.ogrid[local]
    a = grid.volume.affine
    d2 = 0.0
    for row in range(3):
        coord = a[row, 0] * (k + grid.offset[0]) + a[row, 1] * (j + grid.offset[1]) \
            + a[row, 2] * (i + grid.offset[2]) + a[row, 3]
        d2 = d2 + (coord - centre_lps_mm[row]) ** 2
    return local, np.sqrt(d2)


def core_level_hu(bone_hu: np.ndarray, core_hu: float) -> float:
    """The level above which bone counts as dense core: ``core_hu``, or
    lower on weak bone: ``CORE_FRACTION`` of the bone's bright end (99th
    percentile of the mask's HU)."""
    if bone_hu.size == 0:
        return core_hu
    k = int(0.99 * (bone_hu.size - 1))
    return min(core_hu, CORE_FRACTION * float(np.partition(bone_hu, k)[k]))


def label_other_bone(rough: np.ndarray, raw: np.ndarray, hu: np.ndarray, core_hu: float,
                     min_core_voxels: float) -> np.ndarray:
    """``rough`` with the threshold bone no seed reached labelled ``other``
    where its connected piece holds a dense core (ribs, a vertebra of a scan
    without pelvis); pieces without one (contrast, calcifications) stay 0."""
    left = raw & (rough == 0)
    if not left.any():
        return rough
    pieces, n = ndi.label(left, structure=FACE_CONNECTIVITY)
    cores = label_counts(np.where(hu > core_hu, pieces, 0), n + 1)
    has_core = cores >= min_core_voxels
    has_core[0] = False
    out = rough.copy()
    out[lookup(has_core, pieces)] = OTHER
    return out


def femoral_head(fit: PelvisFit, hu: np.ndarray, grid: Grid, raw: np.ndarray, hip: int, femur: int,
                 landmark: str, side: float) -> Head | None:
    """The joint-space sphere of one femoral head, or None when the
    acetabulum is out of view. The fitted acetabulum says where to look
    (the model can be several mm off there: the joint space blurs the
    cup's surface in the mask); the head's own surface says where it is
    (:func:`head_from_surface`), and the HU valley of the joint space
    where its sphere lies (:func:`head_sphere`). Without a valley deep
    enough the head's surface sphere, grown by half a joint space, stands;
    without that, the acetabulum's."""
    cup = fit.vertices_lps_mm[fit.landmarks[landmark]]
    index = grid.index(cup)
    if np.mean(np.all((index >= 0) & (index <= np.array(grid.shape) - 1), axis=1)) < 0.5:
        return None
    centre, radius = fit_sphere(cup)
    source = "acetabulum"
    surface = head_from_surface(grid, raw, centre)
    if surface is not None:
        centre, radius, source = surface[0], surface[1] + HEAD_JOINT_MM / 2, "head surface"
    else:
        radius -= HEAD_JOINT_MM / 2  # the cup's surface is the acetabulum's; the joint lies inside it
    neck = NECK_DIRECTION_LPS * [side, 1.0, 1.0]
    found = head_sphere(hu, grid, centre, radius, neck / np.linalg.norm(neck))
    valley_hu = 0.0
    if found is not None:
        centre, radius, valley_hu, source = *found, "valley"
    # Filled: half a joint space inside the joint's sphere, and inside the
    # head's own surface where that was found (a joint wider than
    # HEAD_JOINT_MM, 6 mm above the phantom's heads, took 1.8 mm of it).
    fill = radius - HEAD_JOINT_MM / 2
    if surface is not None:
        fill = min(fill, surface[1] - float(np.linalg.norm(centre - surface[0])))
    return Head(femur, centre, radius, valley_hu, source, fill)


def head_from_surface(grid: Grid, raw: np.ndarray, near_lps_mm: np.ndarray) -> tuple[np.ndarray, float] | None:
    """(centre LPS mm, radius mm) of the femoral head near ``near_lps_mm``,
    by a Hough vote: every outer voxel of the bone mask within
    ``HEAD_SEARCH_MM`` votes for the points one radius behind it along its
    outward normal, for each head radius; the head's convex surface
    concentrates its votes at its centre, and a least-squares sphere through
    the surface points on it refines centre and radius. None without a
    clear peak."""
    box, dist = _ball(near_lps_mm, HEAD_SEARCH_MM + HEAD_RADIUS_MM[1], grid)
    if box is None:
        return None
    full_box = tuple(slice(s.start + o, s.stop + o) for s, o in zip(box, grid.offset.astype(int)))
    points, normals = mask_surface(grid.volume, raw[box] & (dist <= HEAD_SEARCH_MM + HEAD_RADIUS_MM[1]), full_box)
    if len(points) < 50:
        return None
    radii = np.arange(HEAD_RADIUS_MM[0], HEAD_RADIUS_MM[1] + 0.1, 1.0)
    votes = points[None] - radii[:, None, None] * normals[None]        # (R, P, 3)
    near = np.linalg.norm(votes - near_lps_mm, axis=2) <= HEAD_SEARCH_MM
    cells = np.floor((votes - near_lps_mm) / HEAD_VOTE_CELL_MM).astype(np.int64)
    if np.count_nonzero(near) < 50:
        return None
    # Votes counted per (radius, cell): one integer key each, in that order
    # (the first of equal peaks, as a lexicographic count would give).
    side = int(np.ceil(HEAD_SEARCH_MM / HEAD_VOTE_CELL_MM)) + 1     # cells lie in [-side, side)
    shifted = cells[near] + side
    keys = ((np.nonzero(near)[0] * (2 * side) + shifted[:, 0]) * (2 * side) + shifted[:, 1]) * (2 * side) \
        + shifted[:, 2]
    counts = np.bincount(keys, minlength=len(radii) * (2 * side) ** 3)
    peak = int(np.argmax(counts))
    if counts[peak] < HEAD_MIN_VOTES:
        return None
    r_index, rest = divmod(peak, (2 * side) ** 3)
    best = np.array([rest // (2 * side) ** 2, rest // (2 * side) % (2 * side), rest % (2 * side)]) - side
    chosen = near[r_index] & np.all(np.abs(cells[r_index] - best) <= 1, axis=1)
    centre, radius = votes[r_index][chosen].mean(axis=0), float(radii[r_index])
    # Refined by a least-squares sphere through the head's surface points (facing out from it).
    arm = points - centre
    dist = np.linalg.norm(arm, axis=1)
    on_head = (np.abs(dist - radius) < HEAD_VOTE_CELL_MM) & (np.einsum("ij,ij->i", arm, normals) > 0.7 * dist)
    if on_head.sum() >= HEAD_MIN_VOTES:
        centre, radius = fit_sphere(points[on_head])
    return centre, radius


def head_sphere(hu: np.ndarray, grid: Grid, centre_lps_mm: np.ndarray, radius_mm: float,
                neck_lps: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """(centre LPS mm, radius mm, mean valley depth HU) of the joint space's
    HU valley around a femoral head, searched from the acetabulum's sphere:
    centre and radius maximise the mean depth of the valley (the darker of
    HU at radius -/+ ``HEAD_VALLEY_MM`` less HU at radius, floored at 0)
    along rays from the centre, leaving out those within ``HEAD_NECK_DEG``
    of the neck. None when no valley reaches ``HEAD_MIN_VALLEY_HU`` within
    ``HEAD_SHIFT_MM`` of the start. Rays are laid out in LPS, so the search
    does not depend on how the slices are stored."""
    rays = sphere_directions(HEAD_RAYS)
    rays = rays[rays @ neck_lps < np.cos(np.radians(HEAD_NECK_DEG))]
    h = hu if hu.dtype == np.float32 else hu.astype(np.float32)
    to_index = np.linalg.inv(grid.volume.affine)

    def depth(c: np.ndarray, r: float) -> float:
        at = c + np.multiply.outer(np.array([r - HEAD_VALLEY_MM, r, r + HEAD_VALLEY_MM]), rays)
        idx = apply_affine(to_index, at.reshape(-1, 3)) - grid.offset
        v = ndi.map_coordinates(h, idx.T, order=1, mode="nearest").reshape(3, -1)
        return float(np.mean(np.maximum(np.minimum(v[0], v[2]) - v[1], 0.0)))

    radii = np.arange(max(HEAD_RADIUS_MM[0], radius_mm - 8.0), min(HEAD_RADIUS_MM[1], radius_mm + 2.0), 0.5)
    if radii.size == 0:
        return None
    r0 = radii[np.argmax([depth(centre_lps_mm, r) for r in radii])]
    start = np.r_[centre_lps_mm, r0]
    best = minimize(lambda p: -depth(p[:3], p[3]), start, method="Nelder-Mead",
                    options={"xatol": 0.2, "fatol": 0.5, "initial_simplex": np.r_[[start], start + 3.0 * np.eye(4)]})
    c, r, valley = best.x[:3], float(best.x[3]), -float(best.fun)
    if (valley < HEAD_MIN_VALLEY_HU or np.linalg.norm(c - centre_lps_mm) > HEAD_SHIFT_MM
            or not HEAD_RADIUS_MM[0] <= r <= HEAD_RADIUS_MM[1]):
        return None
    return c, r, valley


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


def fill_femoral_heads(labels: np.ndarray, heads: list[Head], grid: Grid) -> np.ndarray:
    """Fill each femoral head, in place: all voxels within its fill sphere
    (:attr:`Head.fill_radius_mm`) are femur, whatever their HU (the head's
    subchondral shell, facing the acetabulum on thick slices, averages below
    the threshold over much of its surface). Returns where: there the femur
    is as certain as its own threshold bone."""
    inside = np.zeros(labels.shape, dtype=bool)
    for head in heads:
        box, dist = _ball(head.centre_lps_mm, head.radius_mm, grid)
        if box is None:
            continue
        inner = dist <= head.fill_radius_mm
        labels[box][inner] = head.femur
        inside[box] |= inner
    return inside


def open_canal(labels: np.ndarray, certain: np.ndarray, hu: np.ndarray, volume: Volume) -> int:
    """Take the spinal and sacral canal out of the spine's and the sacrum's
    fills, in place; returns the voxels taken out. Where the vertebral
    arches of neighbouring levels overlap, and where the sacral canal is
    narrower than the fills' reach beyond the fitted sacrum, the canal is
    enclosed like marrow and the fills close it; its contents (CSF,
    epidural fat, nerve roots) are darker than marrow and form a tube along
    the spine, while dark pockets of marrow are short. ``certain``: voxels
    never taken (threshold bone, a model bone's deep interior)."""
    filled = np.isin(labels, (LUMBAR, SACRUM)) & ~certain
    found = ndi.find_objects(filled.view(np.uint8))
    if not found or found[0] is None:
        return 0
    box = found[0]
    dark, n = ndi.label(filled[box] & (smooth_hu(hu[box], volume.spacing_mm) < CANAL_HU),
                        structure=FACE_CONNECTIVITY)
    if n == 0:
        return 0
    z = apply_affine(volume.affine, np.argwhere(dark > 0) + [s.start for s in box])[:, 2]
    ids = dark[dark > 0]
    z_min, z_max = np.full(n + 1, np.inf), np.full(n + 1, -np.inf)
    np.minimum.at(z_min, ids, z)
    np.maximum.at(z_max, ids, z)
    canal = z_max - z_min >= CANAL_MIN_LENGTH_MM
    canal[0] = False
    taken = lookup(canal, dark)
    labels[box][taken] = 0
    return int(np.count_nonzero(taken))


def grow_box(box: tuple[slice, ...], shape: tuple[int, ...], by: int = 1) -> tuple[slice, ...]:
    """``box`` grown by ``by`` voxels on every side, clipped to ``shape``."""
    return tuple(slice(max(s.start - by, 0), min(s.stop + by, n)) for s, n in zip(box, shape))


def solid_per_label(rough: np.ndarray, raw: np.ndarray, hu: np.ndarray, volume: Volume, bone: BoneMask,
                    cfg: SegmentConfig, core_hu: float) -> np.ndarray:
    """Close and fill each label's raw threshold on its own (marrow per bone).
    ``core_hu``: the dense core's level (the spine's marrow is told by the
    soft tissue's HU: :func:`tissue_hu`).

    The spine and the sacrum are filled in the planes across the body's
    long axis (coronal and sagittal) but not in axial planes: their canal
    is enclosed by bone in every axial slice, like marrow, but runs up
    and down the spine, so in the other planes it opens at the ends, and
    between the vertebral arches."""
    radius_vox = closing_radius_voxels(volume.spacing_mm, cfg.closing_mm)
    at_border = [(s.start == 0, s.stop == dim) for s, dim in zip(bone.box, volume.shape)]
    axial = axial_axis(volume)
    out = np.zeros(rough.shape, dtype=np.uint8)
    pieces = np.where(raw, rough, 0)
    jobs = []
    for label, sub in enumerate(ndi.find_objects(pieces), start=1):
        if sub is None:
            continue
        sub = grow_box(sub, rough.shape, radius_vox + 1)
        sub_border = [(b0 and s.start == 0, b1 and s.stop == dim)
                      for (b0, b1), s, dim in zip(at_border, sub, rough.shape)]
        planes = tuple(a for a in range(3) if a != axial) if label in (LUMBAR, SACRUM) else (0, 1, 2)
        model_bone = label in (HIP_LEFT, HIP_RIGHT, SACRUM)
        if model_bone:
            planes = ()
        jobs.append((label, sub, lambda label=label, sub=sub, border=sub_border, planes=planes:
                     solid_bone(pieces[sub], label, 0 if model_bone else radius_vox, volume.spacing_mm,
                                dataclasses.replace(cfg, enclosure_mm=0.0) if model_bone else cfg, border, planes,
                                tissue_hu(hu[sub], volume.spacing_mm, core_hu) if label == LUMBAR else None, axial)))
    # Bones are filled independently (scipy releases the GIL: both cores work).
    for (label, sub, _), filled in zip(jobs, parallel(*[job for _, _, job in jobs])):
        view = out[sub]
        view[filled & ((view == 0) | (rough[sub] == label))] = label
    return out


def vertebral_marrow(filled: np.ndarray, met: np.ndarray, hu: np.ndarray, spacing_mm: np.ndarray,
                     axial: int, scan_edges: tuple[bool, bool] = (False, False)) -> np.ndarray:
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

    The canal's contents and the soft tissue around the spine are darker,
    a vessel in front of the spine meets no bone above and below it, and a
    disc lies between endplates only 5-14 mm apart. ``scan_edges`` (low,
    high, along ``axial``): the scan's edge stands for an endplate beyond
    the field of view (a vertebra cut by it)."""
    candidate = ~filled & (hu >= SPINE_MARROW_HU)
    if not candidate.any():
        return candidate
    spine = np.moveaxis(filled, axial, 0)
    n = spine.shape[0]
    index = np.arange(n).reshape((-1,) + (1,) * (spine.ndim - 1))
    above = np.where(spine, index, n + n)            # nearest bone ahead (larger index)
    above = np.minimum.accumulate(above[::-1], axis=0)[::-1]
    below = np.where(spine, index, -n - n)
    below = np.maximum.accumulate(below, axis=0)
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
    # Opened by a ball of SPINE_MARROW_CORE_MM (from distances: any spacing).
    thick = opened(between, SPINE_MARROW_CORE_MM, spacing_mm)
    pieces, _ = ndi.label(thick, structure=FACE_CONNECTIVITY)
    joined = np.unique(pieces[thick & ndi.binary_dilation(filled, structure=FACE_CONNECTIVITY)])
    return enclosed | lookup(np.isin(np.arange(pieces.max() + 1), joined[joined > 0]), pieces)


@dataclass(frozen=True)
class Levels:
    """The lumbar discs found (LPS z of each, mm, from L4/L5 up) and the voxels
    of the spine above L1 made ``other``."""

    discs_mm: tuple[float, ...] = ()
    voxels: int = 0


def vertebrae_above_l1(labels: np.ndarray, hu: np.ndarray, grid: Grid) -> Levels:
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
    disc is found with a body above it (most pelvic scans end below L1)."""
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
    if (spine_box[axial].stop - spine_box[axial].start) * step < LUMBAR_LEVELS * LEVEL_MM[0]:
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
    if len(held) == 0 or sacrum_top < height(held[0]) - LEVEL_MM[0]:   # no more than a disc below
        return Levels()
    reach = max(int(round(BODY_REACH_MM / step)), 1)
    discs: list[float] = []
    where = float(held[0])
    for _ in range(LUMBAR_LEVELS):
        if len(discs) < 2:
            lo, hi = LEVEL_MM
        else:
            last = (discs[-1] - discs[-2]) * step
            lo, hi = (1.0 - LEVEL_SPREAD) * last, (1.0 + LEVEL_SPREAD) * last
        a, b = int(np.ceil(where + lo / step)), int(np.floor(where + hi / step))
        if b < a or b + reach >= len(area):
            return Levels(tuple(height(d) for d in discs))
        window = area[a:b + 1]
        disc = a + float(np.flatnonzero(window == window.min()).mean())
        k = int(round(disc))
        around = min(area[max(k - reach, 0):k].max(initial=0.0), area[k + 1:k + reach + 1].max(initial=0.0))
        if around == 0.0 or area[k] > DISC_DEPTH * around:
            return Levels(tuple(height(d) for d in discs))
        discs.append(disc)
        where = disc
    clear = max(DISC_CLEAR_MM / step, 1.0)
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
    sigma = SPINE_SMOOTHING_MM / np.asarray(spacing_mm)
    tissue = (hu < core_hu).astype(np.float32)
    weight = ndi.gaussian_filter(tissue, sigma)
    smoothed = ndi.gaussian_filter(hu * tissue, sigma)
    np.divide(smoothed, weight, out=smoothed, where=weight > 1e-3)
    return np.where(tissue > 0, smoothed, hu)


def axial_axis(volume: Volume) -> int:
    """The array axis closest to the patient's long (S-I) axis: the axial
    planes are normal to it, whatever the acquisition plane."""
    direction = volume.affine[:3, :3] / np.asarray(volume.spacing_mm, dtype=float)
    return int(np.argmax(np.abs(direction[2])))


def solid_bone(pieces: np.ndarray, label: int, radius_vox: int, spacing_mm: np.ndarray,
               cfg: SegmentConfig, at_border: list[tuple[bool, bool]], planes: tuple[int, ...],
               marrow_hu: np.ndarray | None = None, axial: int = 0) -> np.ndarray:
    """One bone made solid: closed and filled (:func:`close_and_fill`), then
    the marrow no fill reached because the cortex has gaps: voxels the bone
    encloses in all six axis directions within ``cfg.enclosure_mm``, where
    no other bone comes first (so a joint space is never taken). On slices
    thicker than ``cfg.closing_mm`` the holes the bone encloses in each
    plane once gaps narrower than about two slice thicknesses are bridged
    are filled too (:func:`~pipeline.segment.mask.fill_bridged_plane_holes`),
    up to ``cfg.max_slice_hole_mm2`` per hole. ``planes``: the axes normal
    to the planes in which holes are filled (0: the acquired slices).

    ``marrow_hu`` (the spine's HU, smoothed; ``axial``: the axis along the
    spine): vertebral marrow behind a cortex with gaps in several
    directions (:func:`vertebral_marrow`)."""
    piece = pieces == label
    others = (pieces > 0) & ~piece
    scan_edges = at_border
    if marrow_hu is not None:
        # The spine's canal runs out of the scan: there the scan's edge is
        # outside (a femur's canal cut by the field of view is marrow, the
        # spine's is not).
        at_border = [(False, False)] * 3
    slice_hole_mm2 = cfg.max_slice_hole_mm2 if 0 in planes else 0.0
    filled = close_and_fill(piece, radius_vox, spacing_mm, cfg.closing_mm, at_border, slice_hole_mm2)
    if cfg.enclosure_mm > 0:
        reach = np.maximum(np.round(cfg.enclosure_mm / np.asarray(spacing_mm, dtype=float)), 1)
        met = enclosed_directions(filled, reach, at_border, others)
        filled |= met >= ENCLOSED_DIRECTIONS
        if marrow_hu is not None:
            filled |= vertebral_marrow(filled, met, marrow_hu, spacing_mm, axial, scan_edges[axial])
    slice_mm = float(np.max(spacing_mm))
    if slice_mm > cfg.closing_mm:
        # The spine's gaps are its discs and the spaces between its arches, not
        # a thin cortex's: they are bridged no wider than the closing.
        bridge_mm = cfg.closing_mm if marrow_hu is not None else slice_mm
        filled = fill_bridged_plane_holes(filled, spacing_mm, bridge_mm, others, cfg.max_slice_hole_mm2, planes)
    return filled


def separate_labels(labels: np.ndarray, own: np.ndarray | None = None,
                    hu: np.ndarray | None = None) -> np.ndarray:
    """Drop voxels until no voxel has a 26-neighbour of another label:
    afterwards different bones are at least one voxel apart.

    ``own``: the voxels that are their label's own threshold bone (or a
    femoral head's interior). Where a filled voxel touches another label,
    the filled voxel goes first. Where two own voxels touch, the darker
    goes (with ``hu``): it lies nearer the joint space between them; a
    voxel as bright as its brightest other-bone neighbour goes too. Without
    ``own`` both voxels of every clashing pair go."""
    high = max3(labels)
    low = min3(np.where(labels > 0, labels, np.uint8(255)))
    clash = (labels > 0) & (high != low)
    if own is None:
        return np.where(clash, np.uint8(0), labels)
    out = np.where(clash & ~own, np.uint8(0), labels)
    at = np.argwhere(clash & own)
    mine = out[tuple(at.T)]
    brightest = np.full(len(at), -np.inf)
    still = np.zeros(len(at), dtype=bool)
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
    if hu is not None:
        still &= hu[tuple(at.T)] <= brightest
    out[tuple(at[still].T)] = 0
    # Whatever still touches (the darker voxel's partner kept another neighbour): both go.
    high = max3(out)
    low = min3(np.where(out > 0, out, np.uint8(255)))
    return np.where((out > 0) & (high != low), np.uint8(0), out)


def _smallest(labels: np.ndarray) -> int:
    counts = label_counts(labels, OTHER + 1)[1:]
    return int(counts[counts > 0].min()) if (counts > 0).any() else 0


def label_stats(labels: np.ndarray, volume: Volume, fit: PelvisFit, found: bool, heads: list[Head],
                core_hu: float, tip_voxels: int, above_l1: "Levels") -> dict:
    counts = label_counts(labels, OTHER + 1)
    voxel_mm3 = volume.voxel_volume_mm3
    model = fit.report()
    model["found"] = found
    return {
        "core_hu": round(float(core_hu), 1),
        "shape_model": model,
        # The sacrum beyond the model's S3 end taken below the bone threshold (sacral_tip).
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
