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
3. **Seeds** (:mod:`pipeline.segment.flood`), on the threshold bone only: a model bone's voxels inside its
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

from ..bones import LABEL_IDS, LABEL_NAMES, OTHER, SACRUM
from ..config import SegmentConfig
from ..parallel import parallel
from ..volume import Volume
from .femoral_head import SIDES, Head, femoral_head, fill_femoral_heads
from .flood import SEED_MARGIN_MM, label_other_bone, seed_labels, watershed_by_piece
from .grid import Grid, axial_axis, grow_box, voxel_indices
from .lookup import label_counts
from .mask import FACE_CONNECTIVITY, IN_SLICE_CONNECTIVITY, BoneMask, bounding_box, fill_cavities
from .lower_sacrum import past_s3, past_s3_voxels, sacral_tip, tip_marrow
from .model_fit import PelvisFit, fit_pelvis, missing_bones, pelvis_found, pelvis_turn, vertex_normals
from .neighbours import dilate, max3, min3_nonzero
from .plates import plate_patches, ridge_voxels
from .shape_model import MODEL_BONES, ShapeModel, load_model
from .solid import solid_per_label
from .spine import Levels, open_canal, vertebrae_above_l1
from .voxelise import inside_mesh


# A model bone's fitted interior deeper than this is that bone whatever its
# HU (the sacrum's fatty marrow); nearer the surface the image decides.
INSET_MM = 1.0


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
    above_l1 = vertebrae_above_l1(labels, hu, grid, size=fit.pose[0] if found else 1.0)
    labels = separate_labels(labels, own | heads_inside, hu, certain=heads_inside)
    counts = label_counts(labels, OTHER + 1)
    return BoneLabels(labels=labels, box=bone.box, smallest_piece_voxels=_smallest(counts),
                      stats=label_stats(counts, volume, fit, found, heads, core_hu, tip, above_l1, pool_voxels,
                                        {"beyond_model_share": beyond_model(labels, masks, fit, grid),
                                         "model_filled_share": model_filled(labels, masks, model_only),
                                         **(sacrum_filled_by_side(labels, model_only, fit, grid, turn) if found
                                            else {})}),
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
    low = min3_nonzero(labels)
    clash = (labels > 0) & (high != low)
    if own is None:
        return labels * ~clash
    out = labels * (own | ~clash)
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
    low = min3_nonzero(near)[inner]
    view = out[box]
    view[(view > 0) & (high != low) & (True if certain is None else ~certain[box])] = 0
    return out


def _smallest(counts: np.ndarray) -> int:
    """The fewest voxels of a bone present, from the voxels per label value."""
    counts = counts[1:]
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


def sacrum_filled_by_side(labels: np.ndarray, model_only: np.ndarray, fit: PelvisFit, grid: Grid,
                          turn: np.ndarray) -> dict[str, dict[str, float]]:
    """:func:`model_filled`'s share of the sacrum's label on either side of
    its fitted model's centre, along the pelvis's left-right axis (``turn``,
    :func:`~pipeline.segment.model_fit.pelvis_turn`): ``model_filled_left_share``
    and ``_right_share``. The sacrum's fat-density marrow fills both halves
    alike; bone a lytic tumour destroyed at one sacroiliac joint fills one.
    A hip bone's share is compared with the other hip bone's; the sacrum's
    whole share (0.32 on Pelvic-Ref-003, 0.69 on the TotalSegmentator
    example's 3 mm voxels) has no such pair, but its halves are one."""
    at = voxel_indices(labels == SACRUM)
    if not len(at):
        return {}
    centre = fit.vertices_lps_mm[fit.vertex_bone == SACRUM].mean(axis=0)
    left = (grid.lps(at) - centre) @ (turn @ np.array([1.0, 0.0, 0.0])) > 0.0   # LPS +x: the patient's left
    filled = model_only[tuple(at.T)]
    return {f"model_filled_{side}_share": {"sacrum": float(filled[half].mean()) if half.any() else 0.0}
            for side, half in (("left", left), ("right", ~left))}


def label_stats(counts: np.ndarray, volume: Volume, fit: PelvisFit, found: bool, heads: list[Head],
                core_hu: float, tip_voxels: int, above_l1: "Levels", pool_voxels: int,
                per_bone: dict[str, dict[str, float]]) -> dict:
    """The report's figures; ``counts``: voxels per label value."""
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
