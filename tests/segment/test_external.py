"""A label map from a file placed on the CT's grid in LPS mm, checked, and
handed on as BoneLabels.

The CT: two bone blocks (1000 HU) in soft tissue, the left one at +x (the
patient's left). Label maps are those blocks sampled on other grids; truth
for the placement comes from LPS geometry (the file voxel whose centre is
nearest each CT voxel centre, found with a k-d tree), not from index maths.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pipeline.bones import LABEL_IDS
from pipeline.config import SegmentConfig
from pipeline.errors import InputError
from pipeline.segment.external import LabelMap, labels_from_map, place_labels
from pipeline.volume import Volume, apply_affine

from ..helpers import rotation

SHAPE = (20, 30, 40)
CT_AFFINE = np.array([[0.0, 0.0, 1.0, -20.0],    # columns: +x, patient's left
                      [0.0, 1.0, 0.0, -15.0],    # rows: +y, posterior
                      [2.0, 0.0, 0.0, -19.0],    # slices: +z, superior, 2 mm
                      [0.0, 0.0, 0.0, 1.0]])
# Blocks in LPS mm: (low corner, high corner)
BLOCKS = {"hip_left": ((4.0, -8.0, -12.0), (15.0, 8.0, 12.0)), "hip_right": ((-16.0, -8.0, -12.0), (-5.0, 8.0, 12.0))}
HU_BONE, HU_TISSUE = 1000.0, 40.0
CFG = SegmentConfig()


def truth(points_lps: np.ndarray) -> np.ndarray:
    out = np.zeros(points_lps.shape[:-1], dtype=np.uint8)
    for name, (low, high) in BLOCKS.items():
        out[np.all((points_lps >= low) & (points_lps <= high), axis=-1)] = LABEL_IDS[name]
    return out


def centres(shape, affine) -> np.ndarray:
    return apply_affine(affine, np.indices(shape).reshape(3, -1).T.astype(float)).reshape(*shape, 3)


@pytest.fixture(scope="module")
def ct() -> Volume:
    labels = truth(centres(SHAPE, CT_AFFINE))
    return Volume(np.where(labels > 0, HU_BONE, HU_TISSUE).astype(np.float32), CT_AFFINE)


def sampled(shape, affine, shift_lps=(0.0, 0.0, 0.0)) -> LabelMap:
    """The blocks sampled at a grid's voxel centres (moved by ``shift_lps``)."""
    labels = truth(centres(shape, affine) - np.asarray(shift_lps))
    return LabelMap(labels, affine, "test", {"hip_left": "hip_left", "hip_right": "hip_right"}, "labels.nii.gz")


def test_the_same_voxel_centres_stored_cropped_flipped_and_reordered_are_copied(ct):
    """A file on the CT's own grid, cropped, with its axes in another order
    and two of them reversed (as a NIfTI of a DICOM series often is)."""
    order, flips, crop = (2, 0, 1), (True, False, True), (slice(3, 17), slice(2, 27), slice(3, 38))
    sub = truth(centres(SHAPE, CT_AFFINE))[crop]
    sub = sub[tuple(slice(None, None, -1) if f else slice(None) for f in flips)].transpose(order)
    # File index (a, b, c) -> CT index: axis order[m] of the file is CT axis m, flipped where asked.
    to_ct = np.zeros((4, 4))
    to_ct[3, 3] = 1.0
    for file_axis, ct_axis in enumerate(order):
        step, start = (-1.0, crop[ct_axis].stop - 1) if flips[ct_axis] else (1.0, crop[ct_axis].start)
        to_ct[ct_axis, file_axis], to_ct[ct_axis, 3] = step, start
    label_map = LabelMap(np.ascontiguousarray(sub), CT_AFFINE @ to_ct, "test", {"hip_left": "hip_left"})
    bone = labels_from_map(ct, label_map, CFG)
    assert bone.stats["labels_file"]["resampled"] is False
    assert np.array_equal(bone.full(SHAPE), truth(centres(SHAPE, CT_AFFINE)))


def test_another_grid_is_resampled_by_nearest_neighbour_in_lps(ct):
    """A coarse (3 mm) grid turned 10 degrees about two axes: every CT voxel
    takes the label of the file voxel whose centre is nearest in mm."""
    affine = np.eye(4)
    affine[:3, :3] = rotation([0.3, 0.2, 1.0], np.radians(10.0)) * 3.0
    affine[:3, 3] = (-30.0, -25.0, -28.0)
    label_map = sampled((22, 20, 24), affine)
    placed, same = place_labels(label_map.labels, np.linalg.inv(affine) @ CT_AFFINE,
                                tuple(slice(0, n) for n in SHAPE))
    file_centres = centres(label_map.labels.shape, affine).reshape(-1, 3)
    nearest = cKDTree(file_centres).query(centres(SHAPE, CT_AFFINE).reshape(-1, 3))[1]
    assert not same
    assert np.array_equal(placed.ravel(), label_map.labels.ravel()[nearest])
    stats = labels_from_map(ct, label_map, CFG).stats["labels_file"]
    assert stats["resampled"] is True and "from a (3, 3, 3) mm grid" in stats["grid"]


def test_bones_that_touch_are_parted_by_a_voxel_in_the_darker_one(ct):
    """Labels that meet (as TotalSegmentator's hip and sacrum do) lose the
    voxels by which they touch; threshold bone keeps its voxels where the
    other side's are darker."""
    labels = truth(centres(SHAPE, CT_AFFINE))
    gap = (labels == 0) & (centres(SHAPE, CT_AFFINE)[..., 0] > -5.0) & (centres(SHAPE, CT_AFFINE)[..., 0] < 4.0)
    between = gap & np.all(np.abs(centres(SHAPE, CT_AFFINE)[..., 1:]) <= [8.0, 12.0], axis=-1)
    labels[between] = LABEL_IDS["hip_right"]          # the right label reaches over soft tissue to the left one
    bone = labels_from_map(ct, LabelMap(labels, CT_AFFINE, "test", {"x": "hip_left"}), CFG)
    out = bone.full(SHAPE)
    left, right = out == LABEL_IDS["hip_left"], out == LABEL_IDS["hip_right"]
    assert np.array_equal(left, labels == LABEL_IDS["hip_left"])     # all its voxels are threshold bone
    # The dark voxels of the right label next to the left bone went; no 26-neighbours remain.
    near = np.zeros_like(left)
    for step in np.argwhere(np.ones((3, 3, 3))) - 1:
        near |= np.roll(left, tuple(step), axis=(0, 1, 2))
    assert not (near & right).any()
    assert bone.stats["labels_file"]["parted_voxels"] == {"hip_right": int((near & between).sum())}


def test_labels_that_miss_the_ct_are_refused_with_both_extents(ct):
    far = CT_AFFINE.copy()
    far[:3, 3] += (0.0, 0.0, 500.0)
    with pytest.raises(InputError, match=r"labels.nii.gz: its labels do not overlap the CT \(labels span x -16..15, "
                                         r"y -8..8, z 489..511 mm, the CT spans x -20..19, y -15..14, z -19..19 mm\)"):
        labels_from_map(ct, sampled(SHAPE, far, shift_lps=(0, 0, 500.0)), CFG)


def test_labels_of_another_patient_are_refused_saying_how_much_bone_is_under_them(ct):
    """The same blocks 10 mm to the patient's left: a third of each label
    lies on bone (the right one partly on the left bone), about as much as
    just around them."""
    with pytest.raises(InputError, match=r"labels.nii.gz: little bone under its labels: 33 % of the labelled "
                                         r"voxels reach segment.threshold_hu = 200 HU, against 36 % just around them"):
        labels_from_map(ct, sampled(SHAPE, CT_AFFINE, shift_lps=(10.0, 0.0, 0.0)), CFG)


def test_left_and_right_swapped_are_refused(ct):
    labels = truth(centres(SHAPE, CT_AFFINE))
    swapped = np.where(labels > 0, 3 - labels, 0).astype(np.uint8)        # 1 <-> 2
    with pytest.raises(InputError, match=r"hip_left lies to the patient's right of hip_right \(LPS x -10 mm "
                                         r"against 10 mm\): left and right are swapped"):
        labels_from_map(ct, LabelMap(swapped, CT_AFFINE, "test", {}, "labels.nii.gz"), CFG)


def test_labels_partly_outside_the_ct_are_cut_to_it_and_the_report_says_how_much(ct):
    """A file on a grid reaching 40 mm above the CT, with a third bone up there."""
    tall = CT_AFFINE.copy()
    labels = truth(centres((40, 30, 40), tall))
    above = centres((40, 30, 40), tall)[..., 2] > 25.0
    labels[above & (labels == 0) & (np.abs(centres((40, 30, 40), tall)[..., 0]) < 4)] = LABEL_IDS["lumbar"]
    bone = labels_from_map(ct, LabelMap(labels, tall, "test", {}), CFG)
    stats = bone.stats["labels_file"]
    outside = 1 - sum(stats["volume_on_ct_mm3"].values()) / sum(stats["volume_in_file_mm3"].values())
    assert "lumbar" not in stats["volume_on_ct_mm3"] and np.isclose(outside, (labels == LABEL_IDS["lumbar"]).sum() / (labels > 0).sum())
    assert stats["notes"] == [f"{100 * outside:.0f} % of the labelled volume lies outside the CT and is left out"]
    assert np.array_equal(bone.full(SHAPE), truth(centres(SHAPE, CT_AFFINE)))


def test_labels_a_few_millimetres_off_are_read_but_flagged(ct):
    """The blocks 3 mm to the patient's left: more bone under the labels than
    around them (read, as a few millimetres of misregistration are), but
    less than four times as much: the report flags them. In place, they are
    not flagged."""
    from pipeline.qa.report_html import LOOSE_LABELS_CONTRAST, labels_file_lines

    off = labels_from_map(ct, sampled(SHAPE, CT_AFFINE, shift_lps=(3.0, 0.0, 0.0)), CFG).stats["labels_file"]
    inside, around = off["bone_fraction"], off["bone_fraction_around"]
    assert 1.5 * around <= inside < LOOSE_LABELS_CONTRAST * around
    assert any("loosely on the bone" in line for line in labels_file_lines(off))
    right = labels_from_map(ct, sampled(SHAPE, CT_AFFINE), CFG).stats["labels_file"]
    assert not any("loosely on the bone" in line for line in labels_file_lines(right))
