"""Neighbourhood operations by shifted slices equal scipy's: 3x3x3 max/min
equal its rank filters; dilation, erosion and closing its binary morphology."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipeline.segment.mask import FACE_CONNECTIVITY, IN_SLICE_CONNECTIVITY, ball
from pipeline.segment.neighbours import close, dilate, erode, max3, min3, min3_nonzero


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, bool])
def test_same_as_scipy(dtype):
    a = (np.random.default_rng(1).random((7, 9, 11)) * 9).astype(dtype)
    assert np.array_equal(max3(a), ndi.maximum_filter(a, size=3, mode="nearest"))
    assert np.array_equal(min3(a), ndi.minimum_filter(a, size=3, mode="nearest"))
    assert max3(a).dtype == a.dtype


def test_lowest_nonzero_label_round_each_voxel():
    """min3_nonzero is scipy's minimum filter with 0 read as above every
    label, and 0 where the whole neighbourhood is 0 (sparse labels, so some
    neighbourhoods are empty; 255, the largest byte, among them)."""
    rng = np.random.default_rng(2)
    a = np.where(rng.random((9, 10, 12)) < 0.08, rng.integers(1, 256, (9, 10, 12)), 0).astype(np.uint8)
    a[:2, :2, :2], a[8, 9, 11] = 0, 1
    a[0, 0, 0] = 255   # alone in its corner
    expected = ndi.minimum_filter(np.where(a > 0, a.astype(np.int32), 256), size=3, mode="nearest")
    expected[expected == 256] = 0
    assert (expected == 0).any() and (expected == 255).any()
    assert np.array_equal(min3_nonzero(a), expected)


STRUCTURES = {"face": FACE_CONNECTIVITY, "in-slice": IN_SLICE_CONNECTIVITY, "cube": np.ones((3, 3, 3), dtype=bool),
              "ball 3x1x1 mm, 1.5 mm": ball(np.array([3.0, 1.0, 1.0]), 1.5),
              "ball 1x0.8x0.8 mm, 1.5 mm": ball(np.array([1.0, 0.8, 0.8]), 1.5),
              "ball 1 mm, 2.5 mm": ball(np.array([1.0, 1.0, 1.0]), 2.5)}


@pytest.mark.parametrize("name", sorted(STRUCTURES))
@pytest.mark.parametrize("shape", [(1, 5, 5), (2, 3, 4), (9, 8, 7), (20, 25, 30)])
def test_binary_morphology_same_as_scipy(name, shape):
    """Dilation, erosion (beyond the array's edge outside, or inside with
    ``border=True``) and closing, on odd shapes and fills."""
    structure = STRUCTURES[name]
    for fill in (0.3, 0.7, 0.95):
        mask = np.random.default_rng(2).random(shape) < fill
        assert np.array_equal(dilate(mask, structure), ndi.binary_dilation(mask, structure))
        assert np.array_equal(erode(mask, structure), ndi.binary_erosion(mask, structure))
        assert np.array_equal(erode(mask, structure, border=True),
                              ndi.binary_erosion(mask, structure, border_value=1))
        assert np.array_equal(close(mask, structure), ndi.binary_closing(mask, structure))
