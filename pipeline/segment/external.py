"""Labels from a file instead of the automatic labelling: a label map (a user's
correction in 3D Slicer, TotalSegmentator's output, an earlier run's
``labels.nii.gz``) placed on the CT's grid as :class:`BoneLabels`, so that
everything downstream (half-maximum surfaces inside each label, resection,
reports) is the same as for automatic labels.

The file says which voxel is which bone; the image still says where each
surface lies: the surface stage snaps each label's outer layer to the
half-maximum level, as it does for automatic labels. A correction in the
file therefore moves the meshes where it was made, and only there.

Placement, in LPS millimetres: every CT voxel centre takes the label of the
file voxel it falls in (nearest neighbour). When the file's voxel centres
are the CT's (the same grid, or the same grid cropped, reordered or
flipped), that is an exact copy; otherwise the report says the labels were
resampled. Refused, with one line naming the file: a label map whose
labelled voxels do not overlap the CT; one that is not on this CT's bones
(little bone under the labels, hardly more than just around them: another
patient's labels, or another frame); one whose left and right bones lie on
the wrong sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..bones import LABEL_IDS, LABEL_NAMES
from ..config import SegmentConfig
from ..errors import InputError
from ..volume import Volume, apply_affine, check_affine
from .grid import grow_box
from .labels import BoneLabels, separate_labels
from .lookup import label_counts
from .mask import FACE_CONNECTIVITY, METAL_HU, bounding_box

# Bone under the labels: at least this fraction of the labelled voxels must
# reach segment.threshold_hu, and it must be at least BONE_CONTRAST times the
# fraction in a ring just around the labels (from one to two grid steps of at
# least RING_STEP_MM outside them). On the TotalSegmentator example (3 mm, a
# faint scan) its own labels give 44 % against 0.3 % around them (its sacrum
# alone, next to unlabelled hip bones: 25 % against 12 %); the same labels
# moved 6 / 15 / 30 mm give ratios of 1.7 / 1.6 / 1.1, mirrored left-right 1.6.
# So another patient's labels, or labels in another frame, are refused,
# while a few millimetres of misregistration are not (look at the overlay).
MIN_BONE_FRACTION = 0.05
BONE_CONTRAST = 1.5
RING_STEP_MM = 2.0
# Voxel centres map onto the file's voxel centres when the mapping is a
# signed permutation with an integer shift, within this (in voxels).
SAME_GRID_TOLERANCE = 1e-3
# Sided bones whose left must lie to the patient's left (+x in LPS) of its right.
PAIRS = (("hip_left", "hip_right"), ("femur_left", "femur_right"))


@dataclass(frozen=True, eq=False)
class LabelMap:
    """Bone labels read from a file, on the file's own grid.

    ``labels``: uint8, axes (slice, row, column) of the file, values of
    :data:`~pipeline.bones.LABEL_NAMES` (0: none of our bones).
    ``affine``: 4x4, index -> LPS mm.
    ``source``: the file's format, in words ("3D Slicer segmentation (.seg.nrrd)").
    ``segments``: every segment the file holds -> the bone it was taken as
    (``None``: not a bone we name, ignored), in the file's order.
    ``path``: the file as the user named it, for error messages only (it
    may carry a patient's name, so it never goes into the report).
    ``notes``: what reading it did that a user should know (overlaps).
    """

    labels: np.ndarray
    affine: np.ndarray
    source: str
    segments: dict[str, str | None]
    path: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.labels.ndim != 3 or self.labels.dtype != np.uint8:
            raise ValueError(f"labels must be a 3-D uint8 array, got {self.labels.dtype} {self.labels.shape}")
        object.__setattr__(self, "affine", check_affine(self.affine))


def labels_from_map(volume: Volume, label_map: LabelMap, cfg: SegmentConfig) -> BoneLabels:
    """``label_map`` on the CT's grid, checked, with bones that touch parted
    by a voxel (as the automatic labels are), as :class:`BoneLabels`."""
    what = label_map.path or "label map"
    ct_to_file = np.linalg.inv(label_map.affine) @ volume.affine
    file_box = bounding_box(label_map.labels > 0)
    box = ct_box(file_box, ct_to_file, volume.shape) if file_box else None
    if box is None:
        raise InputError(f"{what}: its labels do not overlap the CT (labels span "
                         f"{_extent(label_map.labels.shape, label_map.affine, file_box)}, the CT spans "
                         f"{_extent(volume.shape, volume.affine)}): a label map of another scan?")
    placed, same_grid = place_labels(label_map.labels, ct_to_file, box)
    file_mm3 = _volumes_mm3(label_counts(label_map.labels, len(LABEL_NAMES) + 1),
                            abs(np.linalg.det(label_map.affine[:3, :3])))
    placed_counts = label_counts(placed, len(LABEL_NAMES) + 1)
    ct_mm3 = _volumes_mm3(placed_counts, volume.voxel_volume_mm3)
    if not ct_mm3:
        raise InputError(f"{what}: none of its labelled voxels falls on a voxel centre of the CT")
    hu = volume.hu[box]
    check_sides(placed, volume.affine, [s.start for s in box], what)
    fractions = check_bone_under_labels(placed, box, volume, cfg.threshold_hu, what)
    parted = separate_labels(placed, hu >= cfg.threshold_hu)
    inner = bounding_box(parted > 0)
    if inner is None:
        raise InputError(f"{what}: nothing is left of its labels once bones that touch are parted")
    at = tuple(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box, inner))
    final_box = grow_box(at, volume.shape, 2)
    labels = np.zeros(tuple(s.stop - s.start for s in final_box), dtype=np.uint8)
    labels[tuple(slice(a.start - f.start, a.stop - f.start) for a, f in zip(at, final_box))] = parted[inner]
    counts = label_counts(parted, len(LABEL_NAMES) + 1)
    spacing = ", ".join(f"{s:.3g}" for s in np.linalg.norm(label_map.affine[:3, :3], axis=0))
    stats = {
        "labels_file": {
            "format": label_map.source,
            "mapped": {name: bone for name, bone in label_map.segments.items() if bone},
            "ignored": [name for name, bone in label_map.segments.items() if bone is None],
            "resampled": not same_grid,
            "grid": ("the CT's own voxel centres" if same_grid else
                     f"resampled by nearest neighbour from a ({spacing}) mm grid onto the CT's"),
            "volume_in_file_mm3": file_mm3,
            "volume_on_ct_mm3": ct_mm3,
            "bone_fraction": round(fractions[0], 3),
            "bone_fraction_around": round(fractions[1], 3),
            "parted_voxels": {LABEL_NAMES[k]: int(n) for k, n in
                              enumerate(placed_counts - counts) if k and n},
            "notes": list(label_map.notes) + _outside_note(file_mm3, ct_mm3),
        },
        "metal_mm3": round(float(np.count_nonzero((parted > 0) & (hu >= METAL_HU))) * volume.voxel_volume_mm3, 1),
        "labels": {LABEL_NAMES[k]: {"label": k, "volume_mm3": round(float(counts[k]) * volume.voxel_volume_mm3, 1)}
                   for k in LABEL_NAMES if counts[k]},
    }
    # The smallest piece of bone the file holds, before our parting: where a
    # person moves a border between two bones, the parting moves with it and
    # may cut a sliver off, which must not change how every other bone's
    # surface is cleaned up (specks under a tenth of this are dropped there).
    pieces, n = ndi.label(placed > 0, structure=FACE_CONNECTIVITY)
    smallest = int(label_counts(pieces, n + 1)[1:].min())
    return BoneLabels(labels=labels, box=final_box, smallest_piece_voxels=smallest, stats=stats)


def ct_box(file_box: tuple[slice, ...], ct_to_file: np.ndarray,
           ct_shape: tuple[int, ...]) -> tuple[slice, slice, slice] | None:
    """The box of CT voxels whose centres fall inside the file voxels of
    ``file_box`` (``None``: none does)."""
    corners = np.array(np.meshgrid(*[(s.start - 0.5, s.stop - 0.5) for s in file_box], indexing="ij")).reshape(3, -1).T
    at = apply_affine(np.linalg.inv(ct_to_file), corners)
    low = np.maximum(np.ceil(at.min(axis=0) - 1e-6), 0).astype(int)
    high = np.minimum(np.floor(at.max(axis=0) + 1e-6), np.asarray(ct_shape) - 1).astype(int)
    if np.any(high < low):
        return None
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(low, high))  # type: ignore[return-value]


def place_labels(labels: np.ndarray, ct_to_file: np.ndarray,
                 box: tuple[slice, ...]) -> tuple[np.ndarray, bool]:
    """The file's label at every CT voxel centre of ``box`` (nearest
    neighbour), and whether those centres are the file's own voxel centres
    (then it is an exact copy of the file's voxels, however the axes are
    stored)."""
    start = np.array([s.start for s in box], dtype=float)
    shape = tuple(s.stop - s.start for s in box)
    matrix = ct_to_file[:3, :3]
    offset = ct_to_file[:3, :3] @ start + ct_to_file[:3, 3]
    signs = np.round(matrix)
    permutation = (np.allclose(matrix, signs, atol=SAME_GRID_TOLERANCE / max(shape))
                   and np.all(np.abs(signs).sum(axis=0) == 1) and np.all(np.abs(signs).sum(axis=1) == 1))
    if permutation and np.allclose(offset, np.round(offset), atol=SAME_GRID_TOLERANCE):
        file_axis = np.argmax(np.abs(signs), axis=0)   # CT axis a runs along file axis file_axis[a]
        taken = [slice(None)] * 3
        for a, f in enumerate(file_axis):
            first, step = int(round(offset[f])), int(signs[f, a])
            last = first + step * (shape[a] - 1)
            taken[f] = slice(first, last + 1) if step > 0 else slice(first, last - 1 if last > 0 else None, -1)
        return np.ascontiguousarray(labels[tuple(taken)].transpose(file_axis)), True
    placed = ndi.affine_transform(labels, matrix, offset=offset, output_shape=shape, order=0,
                                  mode="constant", cval=0)
    return placed, False


def check_sides(labels: np.ndarray, affine: np.ndarray, offset: list[int], what: str) -> None:
    """Refuse a label map whose left bone lies to the patient's right of its
    right one (a file mirrored left-right, or its sides swapped)."""
    for left, right in PAIRS:
        x = {}
        for name in (left, right):
            mask = labels == LABEL_IDS[name]
            if not mask.any():
                break
            centre = [np.average(np.arange(n), weights=mask.sum(axis=tuple(b for b in range(3) if b != a)))
                      for a, n in enumerate(mask.shape)]
            x[name] = float(apply_affine(affine, (np.asarray(centre) + offset)[None])[0, 0])
        if len(x) == 2 and x[left] <= x[right]:
            raise InputError(f"{what}: {left} lies to the patient's right of {right} (LPS x {x[left]:.0f} mm "
                             f"against {x[right]:.0f} mm): left and right are swapped in the file")


def check_bone_under_labels(labels: np.ndarray, box: tuple[slice, ...], volume: Volume, threshold_hu: float,
                            what: str) -> tuple[float, float]:
    """Fractions of bone voxels (HU at or above ``threshold_hu``) under the
    labels (``labels`` on ``box`` of the CT) and in a ring just around them;
    refuse labels that are not on this CT's bones (see :data:`BONE_CONTRAST`).
    Measured on a grid of steps of at least :data:`RING_STEP_MM` (cheap on
    fine scans)."""
    stride = tuple(max(1, int(RING_STEP_MM // s)) for s in volume.spacing_mm)
    grown = grow_box(box, volume.shape, 2 * max(stride) + 1)
    labelled = np.zeros(tuple(g.stop - g.start for g in grown), dtype=bool)
    labelled[tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, grown))] = labels > 0
    step = tuple(slice(None, None, st) for st in stride)
    labelled = labelled[step]
    bone = volume.hu[grown][step] >= threshold_hu
    near = ndi.binary_dilation(labelled)
    ring = ndi.binary_dilation(near) & ~near
    inside = float(bone[labelled].mean()) if labelled.any() else 0.0
    around = float(bone[ring].mean()) if ring.any() else 0.0
    if inside < MIN_BONE_FRACTION or inside < BONE_CONTRAST * around:
        raise InputError(f"{what}: little bone under its labels: {100 * inside:.0f} % of the labelled voxels "
                         f"reach segment.threshold_hu = {threshold_hu:g} HU, against {100 * around:.0f} % just "
                         f"around them; these labels are not on this CT's bones (another patient's, or "
                         f"another frame?)")
    return inside, around


def _outside_note(file_mm3: dict[str, float], ct_mm3: dict[str, float]) -> list[str]:
    """A note when a visible part of the file's labels lies outside the CT."""
    total, placed = sum(file_mm3.values()), sum(ct_mm3.values())
    if placed >= 0.98 * total:
        return []
    return [f"{100 * (1 - placed / total):.0f} % of the labelled volume lies outside the CT and is left out"]


def _volumes_mm3(counts: np.ndarray, voxel_mm3: float) -> dict[str, float]:
    return {LABEL_NAMES[k]: round(float(counts[k]) * voxel_mm3, 1) for k in LABEL_NAMES if counts[k]}


def _extent(shape: tuple[int, ...], affine: np.ndarray, box: tuple[slice, ...] | None = None) -> str:
    """'x a..b, y a..b, z a..b mm' in LPS: the box's (or the whole grid's) voxel centres."""
    box = box or tuple(slice(0, n) for n in shape)
    corners = np.array(np.meshgrid(*[(s.start, s.stop - 1) for s in box], indexing="ij")).reshape(3, -1).T
    lps = apply_affine(affine, corners)
    return ", ".join(f"{axis} {lo:.0f}..{hi:.0f}" for axis, lo, hi in zip("xyz", lps.min(axis=0), lps.max(axis=0))) + " mm"
