"""3x3x3 max/min by shifted slices equal scipy's rank filters."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipeline.segment.neighbours import max3, min3


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, bool])
def test_same_as_scipy(dtype):
    a = (np.random.default_rng(1).random((7, 9, 11)) * 9).astype(dtype)
    assert np.array_equal(max3(a), ndi.maximum_filter(a, size=3, mode="nearest"))
    assert np.array_equal(min3(a), ndi.minimum_filter(a, size=3, mode="nearest"))
    assert max3(a).dtype == a.dtype
