"""Point-to-mesh distance: exact, checked against every triangle (a
brute-force closest point that shares no code with the pipeline)."""

import numpy as np
import trimesh

from pipeline.geometry.distance import NearSurface, point_mesh_distance

from ..phantom.mesh_truth import brute_force_distance_mm


def test_distances_to_a_mesh_match_every_triangle():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=10.0)
    mesh.vertices[:, 2] *= 0.4  # a flattened, uneven mesh
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.uniform(-14, 14, (3000, 3)), rng.uniform(-60, 60, (300, 3))])
    found, face = point_mesh_distance(points, mesh.vertices, mesh.faces)
    truth = brute_force_distance_mm(np.asarray(mesh.vertices), np.asarray(mesh.faces), points)
    assert np.allclose(found, truth, atol=1e-9)
    # The face index names a triangle at that distance, the closest point lies on it.
    d, face2, closest = NearSurface(mesh).query(points)
    assert np.array_equal(face, face2) and np.allclose(np.linalg.norm(closest - points, axis=1), truth, atol=1e-9)
    per_face = np.array([brute_force_distance_mm(np.asarray(mesh.vertices), np.asarray(mesh.faces)[[f]], p[None])[0]
                         for f, p in zip(face[:200], points[:200])])
    assert np.allclose(per_face, truth[:200], atol=1e-9)


def test_long_sliver_triangles_are_measured_exactly_too():
    """A cut face's fan of slivers beside small triangles: a point beside the
    middle of a 60 mm sliver is nearest to it, though its centre is far."""
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=30.0)
    sliver = np.array([[-30.0, 0.0, 40.0], [30.0, 0.0, 40.0], [30.0, 0.5, 40.0]])
    vertices = np.concatenate([mesh.vertices, sliver])
    faces = np.concatenate([mesh.faces, [[len(mesh.vertices), len(mesh.vertices) + 1, len(mesh.vertices) + 2]]])
    rng = np.random.default_rng(2)
    points = np.concatenate([rng.uniform(-40, 40, (2000, 3)), [[-20.0, 0.2, 41.0]]])
    found, face = point_mesh_distance(points, vertices, faces)
    assert np.allclose(found, brute_force_distance_mm(vertices, faces, points), atol=1e-9)
    assert face[-1] == len(faces) - 1


def test_long_triangles_are_cut_into_pieces_of_the_same_surface():
    """The cut before the tree: no edge longer than asked, each triangle's
    pieces cover exactly its area in its plane, the caller's faces untouched."""
    from pipeline.geometry.distance import _split_long

    mesh = trimesh.creation.icosphere(subdivisions=1, radius=40.0)   # edges ~25 mm
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    before = faces.copy()
    v, f, source = _split_long(vertices, faces, 4.0)
    assert np.array_equal(faces, before) and np.array_equal(v[:len(vertices)], vertices)
    tri = v[f]
    longest = np.linalg.norm(tri - np.roll(tri, -1, axis=1), axis=2).max()
    assert longest <= 4.0 and len(f) > 20 * len(faces)
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1) / 2
    assert np.allclose(np.bincount(source, area), mesh.area_faces, rtol=1e-12)
    normal = mesh.face_normals[source]
    assert np.abs(np.einsum("ijk,ik->ij", tri - vertices[faces[source, 0]][:, None], normal)).max() < 1e-9
    # Within the length, nothing is cut and nothing copied.
    v2, f2, source2 = _split_long(vertices, faces, 30.0)
    assert v2 is vertices and f2 is faces and np.array_equal(source2, np.arange(len(faces)))


def test_a_box_keeps_the_triangles_reaching_into_it():
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=30.0)
    near = NearSurface(mesh, np.array([20.0, -10.0, -10.0]), np.array([40.0, 10.0, 10.0]))
    assert 0 < len(near.faces) < len(mesh.faces)
    points = np.array([[29.0, 0.0, 0.0], [35.0, 1.0, -1.0]])
    truth = brute_force_distance_mm(np.asarray(mesh.vertices), np.asarray(mesh.faces), points)
    assert np.allclose(near.distance(points)[0], truth, atol=1e-9)


def test_many_points_few_points_and_a_limit_agree_with_every_triangle():
    """Few points meet only the triangles within reach of them, many meet
    all: the same distances. With a limit, points within it are exact and
    most others are not measured (inf)."""
    from pipeline.geometry import distance

    mesh = trimesh.creation.icosphere(subdivisions=4, radius=20.0)
    mesh.vertices[:, 0] *= 1.7
    rng = np.random.default_rng(3)
    points = rng.uniform(-45, 45, (distance.FEW_POINTS + 500, 3))
    near = NearSurface(mesh)
    many, _ = near.distance(points)
    few = np.concatenate([near.distance(points[i:min(i + 37, 2000)])[0] for i in range(0, 2000, 37)])
    truth = brute_force_distance_mm(np.asarray(mesh.vertices), np.asarray(mesh.faces), points[:2000])
    assert np.allclose(many[:2000], truth, atol=1e-9) and np.allclose(few, truth, atol=1e-9)
    limit = 3.0
    bounded, face, _ = near.query(points[:2000], limit=limit)
    within = truth <= limit
    assert within.sum() > 50 and (~within).sum() > 50
    assert np.allclose(bounded[within], truth[within], atol=1e-9)
    skipped = face == -1
    assert skipped.sum() > 0.5 * (~within).sum()
    assert np.all(np.isinf(bounded[skipped])) and np.all(truth[skipped] > limit)


def test_a_single_point_is_measured_as_one_of_many():
    """One point, or one point left within a limit (found by a random plan:
    a flange's clearance from another bone met a single grid point there,
    and the run stopped with a ValueError): distance and closest point as
    for many points. point-cloud-utils, asked for one point, answers with
    another triangle (5.16 mm here, not 5) and scalars. A sphere of radius
    10 mm (its icosphere's faces lie up to 0.25 % inside it)."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=10.0)
    surface = NearSurface(sphere)
    d, face, closest = surface.query(np.array([[0.0, 0.0, 15.0]]))
    assert d.shape == face.shape == (1,) and closest.shape == (1, 3)
    assert abs(d[0] - 5.0) < 0.03 and abs(closest[0, 2] - 10.0) < 0.03 and face[0] >= 0
    d, closest = surface.distance(np.array([[0.0, 0.0, 15.0], [0.0, 0.0, 100.0]]), limit=10.0)
    assert abs(d[0] - 5.0) < 0.03 and d[1] == np.inf and np.isnan(closest[1]).all()
