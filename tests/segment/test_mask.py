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


def test_body_midline_is_the_bodys_centre_of_mass():
    """A lopsided body (an ellipsoid with an arm beside it) and a couch
    below it, apart: the body is the largest region, and its mean x is
    ndimage's centre of mass of that region, on the coarse grid."""
    shape, spacing = (30, 60, 80), 1.0
    k, j, i = np.indices(shape)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[((j - 25) / 20.0) ** 2 + ((i - 35) / 28.0) ** 2 < 1] = 40.0
    hu[(np.abs(j - 25) < 5) & (np.abs(i - 70) < 4)] = 40.0  # the arm
    hu[j >= 52] = 0.0  # the couch
    affine = np.diag([spacing, spacing, spacing, 1.0])[[2, 1, 0, 3]]  # (k, j, i) -> (x, y, z) = (i, j, k)
    volume = Volume(hu, affine)
    body, stride, midline = body_region(volume, -500.0)
    assert not body[:, 52 // stride[1]:].any()  # the couch is not the body
    expected = volume.index_to_lps((np.array(ndi.center_of_mass(body)) * stride)[None])[0, 0]
    assert midline == pytest.approx(expected, abs=1e-9)
