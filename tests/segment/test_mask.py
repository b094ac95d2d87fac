"""The couch test's coarse body mask: expanded to the full grid exactly as
each voxel's own cell, and its centre of mass as ndimage's."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipeline.segment.mask import body_region, bounding_box, fine_cells
from pipeline.volume import Volume


@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 2, 2), (1, 3, 2)])
def test_fine_cells_give_every_voxel_its_cells_value(stride):
    rng = np.random.default_rng(5)
    coarse = rng.random((7, 8, 9)) > 0.5
    stride = np.array(stride)
    fine_shape = tuple(int(n) for n in np.array(coarse.shape) * stride - (stride - 1))  # last cell partial
    for box in [tuple(slice(0, n) for n in fine_shape), (slice(1, 6), slice(3, 4), slice(2, fine_shape[2]))]:
        k, j, i = np.ogrid[box]
        expected = coarse[k // stride[0], j // stride[1], i // stride[2]]
        assert np.array_equal(fine_cells(coarse, stride, box), expected)


def test_bounding_box_holds_every_true_voxel_and_no_more():
    mask = np.zeros((6, 7, 8), dtype=bool)
    assert bounding_box(mask) is None
    mask[1, 5, 2] = mask[4, 2, 6] = True
    assert bounding_box(mask) == (slice(1, 5), slice(2, 6), slice(2, 7))


def test_the_body_is_the_largest_region_and_the_couch_is_not_part_of_it():
    """A body (an ellipsoid), an arm beside it and a couch below it, all
    apart: the body is the largest region, and neither of the others."""
    shape, spacing = (30, 60, 80), 1.0
    k, j, i = np.indices(shape)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[((j - 25) / 20.0) ** 2 + ((i - 35) / 28.0) ** 2 < 1] = 40.0
    hu[(np.abs(j - 25) < 5) & (np.abs(i - 70) < 4)] = 40.0  # the arm
    hu[j >= 52] = 0.0  # the couch
    affine = np.diag([spacing, spacing, spacing, 1.0])[[2, 1, 0, 3]]  # (k, j, i) -> (x, y, z) = (i, j, k)
    body, stride = body_region(Volume(hu, affine), -500.0)
    assert not body[:, 52 // stride[1]:].any()  # the couch is not the body
    assert body[:, 25 // stride[1], 35 // stride[2]].all() and not body[:, 25 // stride[1], 70 // stride[2]].any()


def test_a_noisy_foam_mattress_keeps_the_couch_apart_from_the_body():
    """The body lies on a couch with 2 mm of foam (-750 HU) between them and
    120 HU of noise everywhere (a sharp kernel on a large patient): the foam's
    noisy voxels over the threshold do not join the couch to the body (a grid
    that took one voxel per cell joined them)."""
    shape = (24, 64, 80)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[:, 8:40, 6:74] = 40.0     # the body
    hu[:, 40:42, 6:74] = -750.0  # the foam
    hu[:, 42:52, 2:78] = 0.0     # the couch
    hu += np.random.default_rng(0).normal(0.0, 120.0, shape).astype(np.float32)
    body, stride = body_region(Volume(hu, np.diag([1.0, 1.0, 1.0, 1.0])[[2, 1, 0, 3]]), -500.0)
    assert body[:, 8 // stride[1]:40 // stride[1], 6 // stride[2]:74 // stride[2]].all()
    assert not body[:, 42 // stride[1]:].any()


@pytest.mark.parametrize("shape, stride", [((5, 7, 9), (1, 2, 2)), ((6, 9, 8), (3, 2, 3)), ((4, 4, 4), (1, 1, 1))])
def test_cells_take_their_voxels_mean(shape, stride):
    from pipeline.segment.mask import _cell_means

    values = np.random.default_rng(2).normal(0.0, 100.0, shape).astype(np.float32)
    means = _cell_means(values, np.array(stride))
    assert means.shape == tuple(-(-n // s) for n, s in zip(shape, stride))
    for cell in np.ndindex(means.shape):
        block = values[tuple(slice(c * s, (c + 1) * s) for c, s in zip(cell, stride))]
        assert means[cell] == pytest.approx(float(block.mean()), abs=1e-3)


def test_the_midline_is_the_bones_centre_without_metal_however_stored():
    """Two bones of unequal size and a block of metal beside one: the
    midline is ndimage's centre of mass of the bone voxels under METAL_HU,
    in LPS x, and exactly the same with the columns, rows or slices stored
    the other way round (the affine to match)."""
    from pipeline.segment.mask import METAL_HU, bone_midline_x

    shape = (9, 21, 31)
    hu = np.zeros(shape, dtype=np.float32)
    hu[2:7, 5:15, 3:9] = 1000.0
    hu[2:7, 5:12, 20:29] = 1000.0
    hu[3:6, 6:9, 10:13] = METAL_HU + 500.0
    solid = hu > 500.0
    affine = np.array([[0.0, 0.0, 0.7, -30.0], [0.0, 0.8, 0.0, 12.0], [2.5, 0.0, 0.0, 80.0], [0, 0, 0, 1.0]])
    volume = Volume(hu, affine)
    box = (slice(0, 9), slice(0, 21), slice(0, 31))
    midline = bone_midline_x(volume, solid, box)
    bone = solid & (hu < METAL_HU)
    assert midline == pytest.approx(volume.index_to_lps(np.array(ndi.center_of_mass(bone))[None])[0, 0], abs=1e-9)
    for axes in ((2,), (1,), (0,), (0, 1, 2)):
        flip, index = np.eye(4), [slice(None)] * 3
        for axis in axes:
            flip[axis, axis], flip[axis, 3], index[axis] = -1.0, shape[axis] - 1, slice(None, None, -1)
        stored = Volume(np.ascontiguousarray(hu[tuple(index)]), affine @ flip)
        assert bone_midline_x(stored, solid[tuple(index)], box) == pytest.approx(midline, abs=1e-12), axes


def shifted_rings() -> tuple[np.ndarray, np.ndarray]:
    """(cortex, marrow): six slices of a ring, each 4 voxels off the one before."""
    rows, cols = np.indices((40, 40))
    rings, marrow = np.zeros((6, 40, 40), dtype=bool), np.zeros((6, 40, 40), dtype=bool)
    for k in range(6):
        r = np.hypot(rows - 20, cols - 8 - 4 * k)
        rings[k], marrow[k] = (r >= 5) & (r <= 6.5), r < 5
    return rings, marrow


@pytest.mark.parametrize("axial", [0, 1, 2])
def test_on_isotropic_voxels_the_slices_are_the_axial_planes_however_stored(axial):
    """The rings of the test below on 3 mm voxels every way (a 3 mm isotropic
    NIfTI), stored with the patient's long axis along ``axial``: the slice
    fill works in the axial planes. It took the first array axis, so the same
    scan stored rows first was filled in coronal planes (its lumbar label
    0.986 against itself)."""
    from pipeline.segment.mask import close_and_fill, slice_axis

    rings, marrow = shifted_rings()
    axes = {0: (0, 1, 2), 1: (1, 0, 2), 2: (1, 2, 0)}[axial]
    spacing = np.array([3.0, 3.0, 3.0])
    assert slice_axis(spacing, axial) == axial
    assert slice_axis([3.0, 1.0, 3.0], 1) == 0 and slice_axis([1.0, 3.0, 3.0], 0) == 1
    filled = close_and_fill(np.transpose(rings, axes), 0, spacing, 0.0, [(False, False)] * 3, 2500.0, axial)
    assert np.array_equal(np.transpose(filled, np.argsort(axes)), rings | marrow)


@pytest.mark.parametrize("across", [0, 1, 2])
def test_marrow_enclosed_only_slice_by_slice_is_filled_whichever_axis_the_slices_are_stored_along(across):
    """Rings of cortex on 3 mm slices, each 4 mm off the one before, so the
    marrow of one slice touches the outside of the next (no 3D cavity,
    every slice a closed ring: the hollow femurs of 3 mm pelvic CT). The
    slices are filled however the array stores them: along axis 0 (a DICOM
    series), or along axis 1 or 2 (a NIfTI or NRRD file may), the thickest
    axis being the slices'."""
    from pipeline.segment.mask import close_and_fill, slice_axis

    rings, marrow = shifted_rings()
    axes = {0: (0, 1, 2), 1: (1, 0, 2), 2: (1, 2, 0)}[across]
    spacing = np.array([3.0, 1.0, 1.0])[list(axes)]
    assert slice_axis(spacing) == across
    filled = close_and_fill(np.transpose(rings, axes), 0, spacing, 0.0, [(False, False)] * 3, 2500.0)
    assert np.array_equal(np.transpose(filled, np.argsort(axes)), rings | marrow)


def test_only_holes_mostly_bright_are_filled_when_brightness_is_given():
    """Two holes in each slice of a bone, as a vertebra's in an axial plane:
    its marrow, behind a one-voxel gap in the cortex, and its canal, closed
    by the arch. Given which voxels are bright (marrow-bright, and not a
    tube running up and down: see ``solid_bone``), only the hole at least
    half bright is filled: the marrow, not the canal, whose bright rim is a
    third of it. Without it both are."""
    from pipeline.segment.mask import fill_bridged_plane_holes

    filled = np.zeros((3, 24, 30), dtype=bool)
    filled[:, 2:12, 2:14] = True
    filled[:, 3:11, 3:13] = False          # the body's marrow, 8 x 10
    filled[:, 2, 7] = False                # a gap in its front cortex
    filled[:, 14:22, 16:24] = True
    filled[:, 15:21, 17:23] = False        # the canal, 6 x 6, closed
    marrow = np.zeros_like(filled)
    marrow[:, 3:11, 3:13] = True
    canal = np.zeros_like(filled)
    canal[:, 15:21, 17:23] = True
    bright = marrow.copy()
    bright[:, 15, 17:23] = bright[:, 20, 17:23] = True     # the canal's rim: 12 of its 36 voxels
    none = np.zeros_like(filled)
    got = fill_bridged_plane_holes(filled, np.ones(3), 1.0, none, 1000.0, (0,), bright=bright)
    assert got[marrow].all() and not got[canal].any()
    both = fill_bridged_plane_holes(filled, np.ones(3), 1.0, none, 1000.0, (0,))
    assert both[marrow].all() and both[canal].all()


def test_a_faint_cortex_closes_a_gap_when_most_of_the_rim_is_bone():
    """Two rings in each slice, each with a gap three voxels wide, too wide
    for the square bridging one-voxel gaps. In the first ring the gap is a
    cortex under the threshold (``faint``): the square cannot pass it, and
    the marrow behind is filled with the gap. The second ring's wall is
    faint but for one side (a quarter of its rim bone: bright streaks around
    muscle beside metal): not filled. Without ``faint`` neither is."""
    from pipeline.segment.mask import fill_bridged_plane_holes

    filled = np.zeros((3, 40, 40), dtype=bool)
    filled[:, 2:14, 2:14] = True
    filled[:, 3:13, 3:13] = False          # marrow, 10 x 10
    filled[:, 2, 6:9] = False              # a gap three voxels wide
    faint = np.zeros_like(filled)
    faint[:, 2, 6:9] = True
    marrow = np.zeros_like(filled)
    marrow[:, 3:13, 3:13] = True
    faint[:, 20:32, 20:32] = True          # a faint ring ...
    faint[:, 21:31, 21:31] = False
    filled[:, 20:32, 20] = True            # ... one side of it bone
    faint[:, 20:32, 20] = False
    pocket = np.zeros_like(filled)
    pocket[:, 21:31, 21:31] = True
    none = np.zeros_like(filled)
    got = fill_bridged_plane_holes(filled, np.ones(3), 1.0, none, 1000.0, (0,), faint=faint)
    assert got[marrow].all() and got[:, 2, 6:9].all()
    ring = faint.copy()
    ring[:, 2] = False
    assert not got[pocket].any() and not got[ring].any()
    plain = fill_bridged_plane_holes(filled, np.ones(3), 1.0, none, 1000.0, (0,))
    assert not plain[marrow].any() and not plain[pocket].any()
