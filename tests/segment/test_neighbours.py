"""Neighbourhood operations by shifted slices equal scipy's: 3x3x3 max/min
and the rank filters, face dilation and erosion and binary morphology."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipeline.segment.neighbours import face_dilate, face_erode, max3, min3


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, bool])
def test_same_as_scipy(dtype):
    a = (np.random.default_rng(1).random((7, 9, 11)) * 9).astype(dtype)
    assert np.array_equal(max3(a), ndi.maximum_filter(a, size=3, mode="nearest"))
    assert np.array_equal(min3(a), ndi.minimum_filter(a, size=3, mode="nearest"))
    assert max3(a).dtype == a.dtype


@pytest.mark.parametrize("shape", [(1, 5, 5), (2, 3, 4), (9, 8, 7), (30, 20, 25)])
@pytest.mark.parametrize("fill", [0.3, 0.7, 0.95])
def test_face_dilation_and_erosion_same_as_scipy(shape, fill):
    """Including the array's edge: beyond it is outside for dilation and
    for erosion by default, inside with ``border=True``."""
    face = ndi.generate_binary_structure(3, 1)
    mask = np.random.default_rng(2).random(shape) < fill
    assert np.array_equal(face_dilate(mask), ndi.binary_dilation(mask, face))
    assert np.array_equal(face_erode(mask), ndi.binary_erosion(mask, face))
    assert np.array_equal(face_erode(mask, border=True), ndi.binary_erosion(mask, face, border_value=1))
    assert face_dilate(mask).dtype == bool and face_erode(mask).dtype == bool
