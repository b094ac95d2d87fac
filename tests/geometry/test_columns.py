"""Column heights of a mesh against closed-form answers."""

import numpy as np
import pytest
import trimesh

from pipeline.geometry.columns import _runs, cell_bounds, cell_of, column_extremes, facing_up


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


def test_the_top_of_a_closed_surface_is_on_its_upward_faces():
    """A turned sphere (closed, every face seen at some slant): the highest
    point of every column lies on a face looking up, the lowest on one
    looking down, exactly, so those halves give the same heights."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=10.0)
    sphere.apply_transform(trimesh.transformations.random_rotation_matrix(np.random.default_rng(2).random(3)))
    tri = sphere.triangles
    up, down = facing_up(tri), facing_up(tri, -1.0)
    assert 0.4 < up.mean() < 0.6 and not (up & down).any()
    points = np.random.default_rng(3).uniform(-9.5, 9.5, (4000, 2))
    high, low = column_extremes(points, tri)
    assert np.array_equal(column_extremes(points, tri[up])[0], high)
    assert np.array_equal(column_extremes(points, tri[down])[1], low)
    assert not np.array_equal(column_extremes(points, tri[down])[0], high)   # the other half would not do


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


def test_cell_bounds_hold_every_column_height_in_their_cell():
    """The coarse bound the lift-off check filters with: whatever covers a
    point lies within its cell's highest and lowest triangle, never beyond."""
    rng = np.random.default_rng(5)
    centres = rng.uniform(0.0, 20.0, (400, 1, 3))
    tri = centres + rng.normal(0.0, 1.5, (400, 3, 3))
    points = rng.uniform(-1.0, 21.0, (5000, 2))
    high, low = column_extremes(points, tri)
    origin, cell = np.array([-2.0, -2.0]), 0.7
    shape = (40, 40)
    top, bottom = cell_bounds(tri, origin, cell, shape)
    index, inside = cell_of(points, origin, cell, shape)
    assert inside.all()
    covered = np.isfinite(high)
    assert covered.sum() > 1000
    assert np.all(high[covered] <= top[index[covered, 0], index[covered, 1]])
    assert np.all(low[covered] >= bottom[index[covered, 0], index[covered, 1]])
    # Cells no triangle's box meets hold no bound.
    assert np.isinf(top).any() and np.all(np.isinf(top) == np.isinf(bottom))


@pytest.mark.parametrize("layout", ["grid", "strip"])
def test_the_cell_size_chosen_changes_no_height(layout):
    """The bins only decide which pairs are tested: on a sphere's fine
    triangles plus a few large ones, a dense grid of points and a thin strip
    of points (where the chosen cells are small and the large triangles would
    cover millions of them) get the same heights as with coarse cells."""
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=20.0)
    big = trimesh.creation.box(bounds=[[-60, -60, 30], [60, 60, 31]])
    tri = np.vstack([sphere.triangles, big.triangles])
    if layout == "grid":
        a = np.arange(-25.0, 25.0, 0.25)
        points = np.stack(np.meshgrid(a, a, indexing="ij"), axis=-1).reshape(-1, 2)
    else:
        points = np.column_stack([np.linspace(-50, 50, 20000), np.full(20000, 3.0)])
    chosen = column_extremes(points, tri)
    coarse = column_extremes(points, tri, cell_mm=8.0)
    assert np.array_equal(chosen[0], coarse[0]) and np.array_equal(chosen[1], coarse[1])
    assert np.isfinite(chosen[0]).mean() > 0.3


@pytest.mark.parametrize("span", [50, 10**7])
def test_runs_of_cell_keys_match_a_binary_search(span):
    """Each looked-up key's run in the sorted keys, from the count table
    (keys within a small span) or by binary search (a sparse span): the
    same starts and lengths, zero length for keys not present."""
    rng = np.random.default_rng(5)
    sorted_key = np.sort(rng.integers(0, span, 400))
    key = rng.integers(0, span + 20, 300)
    start, length = _runs(sorted_key, key)
    expected_start = np.searchsorted(sorted_key, key, side="left")
    expected_length = np.searchsorted(sorted_key, key, side="right") - expected_start
    assert np.array_equal(length, expected_length)
    present = length > 0
    assert np.array_equal(start[present], expected_start[present])
    assert np.all(sorted_key[start[present]] == key[present])
