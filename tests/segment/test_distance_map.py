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


@pytest.mark.parametrize("radius", [1.0, 2.5])
def test_opening_and_closing_by_a_ball_are_scipys_with_that_ball(radius):
    """On unit spacing, away from the grid's edges, the distance-map opening
    and closing equal scipy's with the ball of all offsets within the radius."""
    from pipeline.segment.distance_map import closed, opened

    rng = np.random.default_rng(9)
    mask = np.zeros((40, 44, 48), dtype=bool)
    mask[6:-6, 6:-6, 6:-6] = ndimage.binary_opening(rng.random((28, 32, 36)) > 0.35)
    r = int(np.floor(radius))
    offsets = np.indices((2 * r + 1,) * 3) - r
    ball = (offsets ** 2).sum(axis=0) <= radius ** 2
    assert np.array_equal(opened(mask, radius), ndimage.binary_opening(mask, ball))
    assert np.array_equal(closed(mask, radius), ndimage.binary_closing(mask, ball))
    # Anisotropic: one huge spacing works in-slice only.
    flat = opened(mask, radius, (1e6, 1.0, 1.0))
    assert np.array_equal(flat, ndimage.binary_opening(mask, ball[r:r + 1]))
