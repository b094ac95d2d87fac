"""Column heights of a mesh against closed-form answers."""

import numpy as np
import pytest
import trimesh

from pipeline.geometry.columns import column_extremes


def test_heights_over_an_octahedron_are_exact():
    """An octahedron of radius 10: |x| + |y| + |z| = 10, so the column at
    (x, y) runs from -(10 - |x| - |y|) to +(10 - |x| - |y|), exactly."""
    octa = trimesh.Trimesh(10.0 * np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1.0]]),
                           [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    assert octa.is_volume
    points = np.random.default_rng(1).uniform(-12, 12, (5000, 2))
    high, low = column_extremes(points, octa.triangles, cell_mm=1.5)
    expected = 10.0 - np.abs(points).sum(axis=1)
    inside = expected > 1e-9
    assert np.allclose(high[inside], expected[inside], atol=1e-9)
    assert np.allclose(low[inside], -expected[inside], atol=1e-9)
    assert np.all(np.isneginf(high[~inside])) and np.all(np.isposinf(low[~inside]))


def test_columns_see_the_top_of_stacked_shells():
    """Two boxes one above the other: a column through both sees the upper
    box's top as its highest and the lower box's bottom as its lowest."""
    lower = trimesh.creation.box(bounds=[[0, 0, 0], [10, 10, 2]])
    upper = trimesh.creation.box(bounds=[[5, 0, 5], [15, 10, 8]])
    tri = np.vstack([lower.triangles, upper.triangles])
    high, low = column_extremes(np.array([[2.0, 5.0], [7.0, 5.0], [12.0, 5.0], [20.0, 5.0]]), tri)
    assert high[:3] == pytest.approx([2.0, 8.0, 8.0])
    assert low[:3] == pytest.approx([0.0, 0.0, 5.0])
    assert np.isneginf(high[3])
