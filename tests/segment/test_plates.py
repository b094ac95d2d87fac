"""Holes through thin plates closed where the image shows the plate (pipeline.segment.plates)."""

import numpy as np

from pipeline.bones import SACRUM
from pipeline.segment.labels import plate_holes
from pipeline.segment.plates import RIDGE_MARGIN_HU, plate_patches, ridge_voxels


def plate_with_a_hole():
    """A plate one voxel thick (x = 10) at 300 HU between muscle at 50 HU,
    with a hole of 3 x 3 voxels through it that peaks at 160 HU (the plate
    thinner than the voxel there), and a bump at 160 HU lying on its face."""
    hu = np.full((20, 20, 21), 50.0, dtype=np.float32)
    hu[:, :, 10] = 300.0
    hole = np.zeros(hu.shape, dtype=bool)
    hole[8:11, 8:11, 10] = True
    hu[hole] = 160.0
    bump = np.zeros(hu.shape, dtype=bool)
    bump[14:16, 3:5, 11] = True
    hu[bump] = 160.0
    hu[14:16, 3:5, 12] = 20.0
    bone = hu >= 200.0
    return hu, bone, hole, bump


def test_a_faint_plate_is_a_ridge_and_the_partial_volume_beside_bone_is_not():
    """The hole's voxels stand 110 HU over the muscle on either side of
    the plate: a ridge. Not a ridge: a voxel of the partial-volume layer
    beside thick bone (bone on one side); the middle of a narrow gap between
    two walls of bone, where both walls' partial volume meet (bone two
    voxels out); a plate brighter than its neighbours by less than the
    margin."""
    hu, bone, hole, _ = plate_with_a_hole()
    assert ridge_voxels(hu, ~bone)[hole].all()
    thick = np.full((20, 20, 21), 50.0, dtype=np.float32)
    thick[:, :, 10:] = 900.0
    thick[:, :, 9] = 300.0                                 # the partial-volume layer
    assert not ridge_voxels(thick, thick < 200.0).any()
    gap = np.full((20, 20, 21), 900.0, dtype=np.float32)
    gap[:, :, 9:12] = 100.0                                # a gap of three voxels ...
    gap[:, :, 10] = 170.0                                  # ... its middle lit by both walls
    assert not ridge_voxels(gap, gap < 200.0).any()
    weak = np.full((20, 20, 21), 50.0, dtype=np.float32)
    weak[:, :, 10] = 180.0
    weak[:, :, 9] = weak[:, :, 11] = 180.0 - RIDGE_MARGIN_HU + 1.0
    assert not ridge_voxels(weak, np.ones(weak.shape, dtype=bool)).any()


def test_a_ridge_patch_over_a_hole_joins_the_plate_and_a_bump_on_its_face_does_not():
    """The hole parts the plate in the slices through it: its ridge joins
    the two sides and is added. The bump beside the plate's face touches
    one part only and is not, though it is a ridge too."""
    hu, bone, hole, bump = plate_with_a_hole()
    ridge = ridge_voxels(hu, ~bone)
    assert ridge[bump].any()
    patch = plate_patches(bone, ridge)
    assert patch[hole].all()
    assert not patch[bump].any()
    assert not (patch & ~hole).any()


def test_a_patch_keeps_out_of_what_is_kept_open():
    """The sacrum's canal and foramina (its fitted sections' holes) stay
    open: where one of them covers a slice of the hole, that slice is left
    parted and the rest of the hole is patched."""
    hu, bone, hole, _ = plate_with_a_hole()
    labels = np.where(bone, np.uint8(SACRUM), np.uint8(0))
    band = np.ones(bone.shape, dtype=bool)
    sub, patch = plate_holes(labels, hu, band, SACRUM)
    assert np.array_equal(patch, hole[sub])
    kept_open = np.zeros(bone.shape, dtype=bool)
    kept_open[8] = True                              # the hole's first slice
    sub, patch = plate_holes(labels, hu, band, SACRUM, kept_open=kept_open)
    assert np.array_equal(patch, (hole & ~kept_open)[sub])
