"""Point-to-mesh distance: exact, checked against every triangle."""

import numpy as np
import pytest
import trimesh

from pipeline.geometry.distance import closest_on_triangles, point_mesh_distance


def brute_force(points, mesh):
    tri = mesh.triangles
    best = np.full(len(points), np.inf)
    for t in tri:
        q = closest_on_triangles(points, *(np.broadcast_to(v, points.shape) for v in t))
        best = np.minimum(best, np.linalg.norm(q - points, axis=1))
    return best


def test_closest_point_on_a_triangle_in_each_region():
    a, b, c = np.array([[0.0, 0, 0], [4.0, 0, 0], [0.0, 3.0, 0]])
    cases = {(1.0, 1.0, 2.0): (1.0, 1.0, 0.0),     # above the face
             (-1.0, -1.0, 0.0): (0.0, 0.0, 0.0),    # beyond vertex a
             (6.0, -1.0, 0.0): (4.0, 0.0, 0.0),     # beyond vertex b
             (-1.0, 5.0, 1.0): (0.0, 3.0, 0.0),     # beyond vertex c
             (2.0, -2.0, 0.0): (2.0, 0.0, 0.0),     # beside edge ab
             (-2.0, 1.5, 0.0): (0.0, 1.5, 0.0),     # beside edge ac
             (4.0, 3.0, 0.0): (2.56, 1.08, 0.0)}    # beside edge bc (its foot at t = 0.36 from b)
    p = np.array(list(cases), dtype=float)
    q = closest_on_triangles(p, *(np.broadcast_to(v, p.shape) for v in (a, b, c)))
    assert np.allclose(q, np.array(list(cases.values())), atol=1e-12)


def test_distances_to_a_mesh_match_every_triangle():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=10.0)
    mesh.vertices[:, 2] *= 0.4  # a flattened, uneven mesh
    rng = np.random.default_rng(1)
    # Far and near points; some far off, where the nearest centres mislead.
    points = np.concatenate([rng.uniform(-14, 14, (3000, 3)), rng.uniform(-60, 60, (300, 3))])
    found, face = point_mesh_distance(points, mesh.vertices, mesh.faces)
    truth = brute_force(points, mesh)
    assert np.allclose(found, truth, atol=1e-9)
    # Exact above a tolerance, an upper bound at or below it.
    coarse, _ = point_mesh_distance(points, mesh.vertices, mesh.faces, exact_above=2.0)
    assert np.all(coarse >= truth - 1e-9)
    assert np.allclose(coarse[truth > 2.0], truth[truth > 2.0], atol=1e-9) and np.all(coarse[truth <= 2.0] <= 2.0)
    # The face index names a triangle at that distance.
    q = closest_on_triangles(points, *mesh.triangles[face].transpose(1, 0, 2))
    assert np.allclose(np.linalg.norm(q - points, axis=1), found)


def test_long_sliver_triangles_are_measured_exactly_too():
    """A cut face's fan of slivers beside small triangles: a point beside the
    middle of a 60 mm sliver is nearest to it, though its centre is far."""
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=30.0)
    sliver = np.array([[-30.0, 0.0, 40.0], [30.0, 0.0, 40.0], [30.0, 0.5, 40.0]])
    vertices = np.concatenate([mesh.vertices, sliver])
    faces = np.concatenate([mesh.faces, [[len(mesh.vertices), len(mesh.vertices) + 1, len(mesh.vertices) + 2]]])
    both = trimesh.Trimesh(vertices, faces, process=False)
    rng = np.random.default_rng(2)
    points = np.concatenate([rng.uniform(-40, 40, (2000, 3)), [[-20.0, 0.2, 41.0]]])
    found, face = point_mesh_distance(points, vertices, faces)
    assert np.allclose(found, brute_force(points, both), atol=1e-9)
    assert face[-1] == len(faces) - 1
