"""The labelling grid's helpers: voxel indices equal numpy's argwhere."""

import numpy as np
import pytest

from pipeline.segment.grid import voxel_indices


@pytest.mark.parametrize("shape", [(0, 3, 4), (1, 1, 1), (7, 9, 11), (13,), (4, 5)])
@pytest.mark.parametrize("fill", [0.0, 0.3, 1.0])
def test_voxel_indices_are_numpys_argwhere(shape, fill):
    mask = np.random.default_rng(2).random(shape) < fill
    found = voxel_indices(mask)
    assert found.shape == np.argwhere(mask).shape and np.array_equal(found, np.argwhere(mask))
