"""Lighter view meshes: distances measured right, budgets kept, kept patches fitted exactly.

Truth from spheres: an icosphere's vertices lie on its sphere and its
triangles inside it by at most their sagitta, so the distance between two
concentric icospheres is known to within the sagittas.
"""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from pipeline.geometry.meshes import reader_defects
from pipeline.geometry.simplify import _decimate_around, hausdorff_mm, simplify_within


def sphere(radius_mm: float, subdivisions: int = 4, centre=(0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius_mm)
    mesh.apply_translation(centre)
    return mesh


def sagitta_mm(mesh: trimesh.Trimesh, radius_mm: float, centre=(0.0, 0.0, 0.0)) -> float:
    """How far the triangles of a mesh inscribed in a sphere dip inside it."""
    plane_distance = np.abs(np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles[:, 0] - centre))
    return float(radius_mm - plane_distance.min())


def test_hausdorff_of_concentric_spheres_is_the_radius_difference():
    inner, outer = sphere(50.0), sphere(51.0, subdivisions=3)
    slack = sagitta_mm(inner, 50.0) + sagitta_mm(outer, 51.0)
    assert hausdorff_mm(inner, outer) == pytest.approx(1.0, abs=slack)
    assert hausdorff_mm(outer, inner) == pytest.approx(1.0, abs=slack)


def test_hausdorff_of_a_shifted_copy_is_the_shift():
    a = sphere(30.0)
    b = sphere(30.0, centre=(0.0, 0.4, 0.0))
    assert hausdorff_mm(a, b) == pytest.approx(0.4, abs=sagitta_mm(a, 30.0))
    assert hausdorff_mm(a, a) < 1e-9


def test_a_decimated_sphere_keeps_its_budget_and_its_shape():
    """20480 -> 2000 triangles: within the tolerance of its original, and
    (independently of the measurement) every vertex within the tolerance
    plus the original's sagitta of the true sphere."""
    original = sphere(40.0, subdivisions=5)
    view = simplify_within(original, 2000, 0.5)
    assert len(view.mesh.faces) <= 2000
    assert view.hausdorff_mm <= 0.5
    # Within the tolerance the reported figure is a bound of the exact one.
    assert hausdorff_mm(original, view.mesh) <= view.hausdorff_mm + 1e-9
    radius = np.linalg.norm(view.mesh.vertices, axis=1)
    assert np.abs(radius - 40.0).max() <= 0.5 + sagitta_mm(original, 40.0)
    assert abs(view.mesh.volume / original.volume - 1.0) < 0.02


def test_a_mesh_within_the_budget_is_left_as_it_is():
    original = sphere(10.0, subdivisions=2)
    view = simplify_within(original, 10_000, 0.5)
    assert view.mesh is original and view.hausdorff_mm == 0.0


def test_kept_triangles_come_back_unchanged_and_fit_the_decimated_rest():
    """A cap of original triangles is kept; the rest is decimated with its
    border fixed, so the joined mesh is closed and holds the cap exactly."""
    original = sphere(40.0, subdivisions=4)
    vertices, faces = np.asarray(original.vertices), np.asarray(original.faces)
    keep = original.triangles_center[:, 2] > 30.0
    joined_vertices, joined_faces = _decimate_around(vertices, faces, keep, 800)
    joined = trimesh.Trimesh(joined_vertices, joined_faces, process=False)
    assert not any(reader_defects(joined).values())
    cap = {tuple(np.sort(t.round(9), axis=0).ravel()) for t in original.triangles[keep]}
    now = {tuple(np.sort(t.round(9), axis=0).ravel()) for t in joined.triangles}
    assert cap <= now
    # The target is the decimated part's; the decimation stops within a few triangles of it.
    assert len(joined_faces) <= 800 + keep.sum() + 16


def test_impossible_requests_are_refused():
    with pytest.raises(ValueError, match="max_triangles"):
        simplify_within(sphere(10.0), 2, 0.5)
    with pytest.raises(ValueError, match="tolerance_mm"):
        simplify_within(sphere(10.0), 100, 0.0)
