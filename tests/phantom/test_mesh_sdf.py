"""Exact signed distance to closed triangle meshes, against brute force and winding numbers.

Truth (:mod:`tests.phantom.mesh_truth`): the distance to every triangle (no
acceleration) and the generalised winding number (Van Oosterom and Strackee's
solid angles), on meshes whose shape is known (a subdivided icosphere and a
torus from trimesh).
"""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from pipeline.phantom.mesh_sdf import ClosedMesh

from .mesh_truth import brute_force_distance_mm, winding_number


def shapes():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=20.0)
    torus = trimesh.creation.torus(major_radius=30.0, minor_radius=8.0, major_sections=48, minor_sections=24)
    torus.apply_translation((5.0, -7.0, 3.0))
    return {"sphere": sphere, "torus": torus}


@pytest.mark.parametrize("name", ["sphere", "torus"])
def test_signed_distance_is_the_nearest_triangle_and_the_sign_the_winding_number(name):
    tm = shapes()[name]
    mesh = ClosedMesh.from_arrays(tm.vertices, tm.faces)
    rng = np.random.default_rng(1)
    lo, hi = mesh.bounds_mm
    near, face = trimesh.sample.sample_surface(tm, 1500, seed=2)
    pts = np.concatenate([near + tm.face_normals[face] * rng.uniform(-6, 6, (len(near), 1)),
                          rng.uniform(lo - 15, hi + 15, (800, 3))])
    d = mesh.signed_distance_mm(pts)
    np.testing.assert_allclose(np.abs(d), brute_force_distance_mm(mesh.vertices_mm, mesh.faces, pts), atol=1e-9)
    np.testing.assert_array_equal(d < 0, winding_number(mesh.vertices_mm, mesh.faces, pts) > 0.5)


def test_grid_distance_exact_in_the_band_and_clamped_beyond():
    tm = shapes()["torus"]
    mesh = ClosedMesh.from_arrays(tm.vertices, tm.faces)
    spacing = np.array([1.3, 0.9, 1.1])
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)[:, ::-1].T   # slice -> z, row -> y, column -> x
    affine[:3, 3] = mesh.bounds_mm[0] - 10.0
    shape = tuple(int(n) for n in np.ceil((mesh.bounds_mm[1] - mesh.bounds_mm[0] + 20.0) / spacing[::-1])[::-1])
    band = (-4.0, 3.0)
    grid = mesh.grid_distance_mm(affine, (0, 0, 0), shape, band)
    idx = np.indices(shape).reshape(3, -1).T[::23]
    pts = idx @ affine[:3, :3].T + affine[:3, 3]
    exact = mesh.signed_distance_mm(pts)
    values = grid.reshape(-1)[::23]
    inside_band = (exact > band[0]) & (exact < band[1])
    np.testing.assert_allclose(values[inside_band], exact[inside_band], atol=1e-9)
    assert np.all(values[exact >= band[1]] >= band[1])
    assert np.all(values[exact <= band[0]] <= band[0])
    # a torus of tube radius 8: the deepest point lies 8 mm inside
    assert exact.min() >= -8.0 - 1e-9


def test_volume_is_the_polyhedron_volume_and_bad_meshes_are_refused():
    tm = shapes()["sphere"]
    mesh = ClosedMesh.from_arrays(tm.vertices, tm.faces)
    assert mesh.volume_mm3 == pytest.approx(tm.volume, rel=1e-12)
    with pytest.raises(ValueError, match="open"):
        ClosedMesh.from_arrays(tm.vertices, tm.faces[1:])
    with pytest.raises(ValueError, match="inwards"):
        ClosedMesh.from_arrays(tm.vertices, tm.faces[:, ::-1])
