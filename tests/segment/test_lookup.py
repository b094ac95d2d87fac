"""Slab-wise label counts and lookups equal numpy's own calls."""

import numpy as np


def test_slab_counts_and_lookups_equal_numpys():
    """label_counts and lookup give np.bincount and table[labels] exactly,
    across slab boundaries, for views that are not contiguous and for
    labels beyond minlength."""
    from pipeline.segment import lookup as slabbed
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 300, size=(40, 50, 60)).astype(np.int32)
    table = rng.integers(0, 8, size=300).astype(np.uint8)
    old = slabbed.SLAB_VOXELS
    slabbed.SLAB_VOXELS = 7_777  # many slabs, the last one partial
    try:
        for view in (labels, np.moveaxis(labels, 2, 0), labels[:, ::2]):
            for minlength in (0, 10, 500):
                assert np.array_equal(slabbed.label_counts(view, minlength),
                                      np.bincount(view.ravel(), minlength=minlength))
            assert np.array_equal(slabbed.lookup(table, view), table[view])
    finally:
        slabbed.SLAB_VOXELS = old
