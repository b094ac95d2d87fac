"""Distance maps against scipy's exact Euclidean distance transform, on
small grids (scipy itself) and large ones (SimpleITK), anisotropic spacing."""

import numpy as np
import pytest
from scipy import ndimage

from pipeline.segment import distance_map
from pipeline.segment.distance_map import distance_to_false


@pytest.mark.parametrize("shape, spacing", [((30, 41, 52), (2.0, 0.7, 0.9)),
                                            ((96, 110, 100), (0.5, 0.75, 1.25))])
def test_distance_to_the_nearest_false_voxel_is_exact(shape, spacing):
    rng = np.random.default_rng(4)
    mask = ndimage.binary_opening(rng.random(shape) > 0.2, iterations=2)
    assert (np.prod(shape) >= distance_map.LARGE_VOXELS) == (shape[0] > 90)   # both ways are tried
    found = distance_to_false(mask, spacing)
    assert found.dtype == np.float32 and found.shape == mask.shape
    np.testing.assert_allclose(found, ndimage.distance_transform_edt(mask, sampling=spacing), rtol=1e-6, atol=1e-5)
    assert np.all(found[~mask] == 0) and np.all(found[mask] > 0)


def test_no_false_voxel_is_infinitely_far_and_no_true_voxel_is_zero():
    assert np.all(np.isinf(distance_to_false(np.ones((4, 5, 6), dtype=bool))))
    assert np.all(distance_to_false(np.zeros((4, 5, 6), dtype=bool)) == 0)
