"""The labelling grid's helpers: voxel indices equal numpy's argwhere, boxes grow within the array."""

import numpy as np
import pytest

from pipeline.segment.grid import grow_box, voxel_indices


@pytest.mark.parametrize("shape", [(0, 3, 4), (1, 1, 1), (7, 9, 11), (13,), (4, 5)])
@pytest.mark.parametrize("fill", [0.0, 0.3, 1.0])
def test_voxel_indices_are_numpys_argwhere(shape, fill):
    mask = np.random.default_rng(2).random(shape) < fill
    found = voxel_indices(mask)
    assert found.shape == np.argwhere(mask).shape and np.array_equal(found, np.argwhere(mask))


def test_a_box_grows_on_every_side_but_never_past_the_array():
    box = (slice(0, 4), slice(3, 7), slice(8, 10))
    assert grow_box(box, (20, 20, 10), 2) == (slice(0, 6), slice(1, 9), slice(6, 10))
    assert grow_box(box, (20, 20, 10)) == (slice(0, 5), slice(2, 8), slice(7, 10))
