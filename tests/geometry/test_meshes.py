"""Mesh validity as an STL reader sees it: float32 corners, welded by position.

Each defect is built on purpose, in memory a valid mesh wherever the defect
only appears once the corners are rounded and welded."""

import numpy as np
import pytest
import trimesh
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from pipeline.errors import MeshError
from pipeline.geometry.meshes import (MIN_ALTITUDE_MM, WELD_MM, compact_indices, concatenate_solids, mesh_facts,
                                      reader_defects, reader_view, remove_needles, validate_solid, _FACTS)

# At 256-512 mm from the origin float32 coordinates are 2**-15 mm apart.
FLOAT32_STEP_AT_300_MM = 2.0**-15


def split_edge(mesh: trimesh.Trimesh, point: np.ndarray) -> trimesh.Trimesh:
    """``mesh`` with ``point`` inserted on the edge nearest to it: the two
    triangles sharing that edge become four. Valid in memory wherever the
    point lies on the edge."""
    f = mesh.faces
    edges = mesh.edges_unique
    a, b = mesh.vertices[edges[:, 0]], mesh.vertices[edges[:, 1]]
    t = np.clip(np.einsum("ij,ij->i", point - a, b - a) / np.einsum("ij,ij->i", b - a, b - a), 0, 1)
    p, q = edges[np.argmin(np.linalg.norm(a + t[:, None] * (b - a) - point, axis=1))]
    m = len(mesh.vertices)
    out = []
    for face in f:
        for k in range(3):
            if {face[k], face[(k + 1) % 3]} == {p, q}:
                u, w, apex = face[k], face[(k + 1) % 3], face[(k + 2) % 3]
                out += [(u, m, apex), (m, w, apex)]
                break
        else:
            out.append(tuple(face))
    return trimesh.Trimesh(np.vstack([mesh.vertices, point]), np.array(out), process=False)


def sphere_at(centre, radius=10.0):
    """An icosphere whose corners are float32 values (they read back unmoved)."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=radius).apply_translation(centre)
    return trimesh.Trimesh(np.asarray(sphere.vertices, dtype=np.float32).astype(float), sphere.faces, process=False)


def test_a_solid_far_from_the_origin_reads_back_valid():
    sphere = sphere_at((300.0, -250.0, 1200.0))
    validate_solid(sphere, "bone")
    assert not any(reader_defects(sphere).values())


def test_corners_closer_than_float32_can_tell_apart_collapse_triangles():
    sphere = sphere_at((300.0, 300.0, 300.0))
    a, b = sphere.vertices[sphere.edges_unique[0]]
    near_a = a + (b - a) / np.linalg.norm(b - a) * (FLOAT32_STEP_AT_300_MM / 4)
    split = split_edge(sphere, near_a)
    assert trimesh.Trimesh(split.vertices, split.faces, process=False).is_watertight  # fine in memory
    assert reader_defects(split)["collapsed_triangles"] == 2
    with pytest.raises(MeshError, match="bone: 2 triangles collapse when the STL is read"):
        validate_solid(split, "bone")
    # The same split far enough along the edge survives rounding.
    clear = split_edge(sphere, a + (b - a) / np.linalg.norm(b - a) * 1e-3)
    validate_solid(clear, "bone")


def test_corners_within_the_weld_tolerance_are_one_vertex():
    """Near the origin float32 tells apart points 1e-7 mm apart; a reader
    welding within WELD_MM does not."""
    sphere = sphere_at((0.0, 0.0, 0.0), radius=1.0)
    a, b = sphere.vertices[sphere.edges_unique[0]]
    split = split_edge(sphere, a + (b - a) / np.linalg.norm(b - a) * WELD_MM / 2)
    vertices, _ = reader_view(split)
    assert len(np.unique(np.asarray(split.vertices, dtype=np.float32), axis=0)) == len(split.vertices)
    assert len(vertices) == len(split.vertices) - 1
    assert reader_defects(split)["collapsed_triangles"] == 2


def test_the_weld_finds_every_pair_within_its_tolerance_wherever_it_lies():
    """The weld searches only points with a coordinate under 32 mm: distinct
    float32 values of larger magnitude lie farther apart than WELD_MM. On
    points near the origin, near 20 mm and far out, each given a neighbour
    WELD_MM / 2 away, it welds exactly the pairs a search over all points finds."""
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.uniform(-1, 1, (200, 3)), rng.uniform(15, 25, (200, 3)),
                             rng.uniform(100, 300, (200, 3)) * rng.choice([-1, 1], (200, 3))])
    points = np.concatenate([points, points + rng.normal(size=points.shape) * WELD_MM / 4])
    mesh = trimesh.Trimesh(points, np.arange(len(points) - len(points) % 3).reshape(-1, 3), process=False)
    welded, _ = reader_view(mesh)
    rounded = np.unique(np.asarray(points, dtype=np.float32).astype(np.float64), axis=0)
    pairs = cKDTree(rounded).query_pairs(WELD_MM, output_type="ndarray")
    graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(rounded),) * 2)
    assert len(welded) == connected_components(graph, directed=False)[0]


def test_solids_touching_at_a_point_are_refused():
    a = trimesh.creation.box(extents=(2, 2, 2)).apply_translation((1, 1, 1))
    b = trimesh.creation.box(extents=(2, 2, 2)).apply_translation((-1, -1, -1))
    touching = trimesh.util.concatenate([a, b])     # share the corner (0, 0, 0), separate ids in memory
    assert reader_defects(touching) == {"collapsed_triangles": 0, "needle_triangles": 0, "bad_edges": 0,
                                        "pinched_vertices": 1}
    with pytest.raises(MeshError, match="1 vertices as read back join two sheets"):
        validate_solid(touching, "implant")


def test_solids_touching_along_an_edge_are_refused():
    a = trimesh.creation.box(extents=(2, 2, 2)).apply_translation((1, 1, 0))
    b = trimesh.creation.box(extents=(2, 2, 2)).apply_translation((-1, -1, 0))
    touching = trimesh.util.concatenate([a, b])     # share the edge x = y = 0
    assert reader_defects(touching)["bad_edges"] >= 1


def test_needles_are_refused():
    """A tetrahedron whose base is 10 mm long and 1e-6 mm wide: closed and
    outward, but its base is thinner than MIN_ALTITUDE_MM."""
    assert 1e-6 < MIN_ALTITUDE_MM
    v = np.array([[0, 0, 0], [10, 0, 0], [5, 1e-6, 0], [5, 5, 5]], dtype=float)
    tetra = trimesh.Trimesh(v, [[0, 2, 1], [0, 1, 3], [1, 2, 3], [2, 0, 3]], process=False)
    assert tetra.volume > 0
    assert reader_defects(tetra)["needle_triangles"] == 1
    with pytest.raises(MeshError, match="1 triangles as read back are needles"):
        validate_solid(tetra, "host")


def test_open_flipped_and_doubled_faces_are_refused():
    box = trimesh.creation.box()
    flipped_one = box.faces.copy()
    flipped_one[0] = flipped_one[0, ::-1]
    for faces in (box.faces[:-1], flipped_one, np.vstack([box.faces, box.faces[:1]])):
        assert reader_defects(trimesh.Trimesh(box.vertices, faces, process=False))["bad_edges"] > 0
    repeated = np.vstack([box.faces, [[0, 0, 1]]])
    assert reader_defects(trimesh.Trimesh(box.vertices, repeated, process=False))["collapsed_triangles"] == 1


def test_an_inside_out_shell_is_refused():
    """An inside-out cavity inside a solid box: closed and oriented, total
    volume positive, but one shell is negative."""
    box = trimesh.creation.box()
    inner = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    cavity = trimesh.Trimesh(np.vstack([box.vertices, inner.vertices]),
                             np.vstack([box.faces, inner.faces[:, ::-1] + len(box.vertices)]), process=False)
    with pytest.raises(MeshError, match="1 of 2 shells are inside-out"):
        validate_solid(cavity, "bone")


def test_concatenated_solids_carry_the_facts_of_their_parts():
    a = trimesh.creation.box(extents=(1, 2, 3))
    b = trimesh.creation.icosphere(radius=2.0).apply_translation((10, 0, 0))
    both = concatenate_solids([a, b])
    assembled = mesh_facts(both)
    _FACTS.pop(both)
    recomputed = mesh_facts(both)
    assert assembled["manifold"] is recomputed["manifold"] is True
    assert assembled["defects"] == recomputed["defects"]
    assert np.allclose(sorted(assembled["shell_volumes_mm3"]), sorted(recomputed["shell_volumes_mm3"]))
    assert assembled["area_mm2"] == pytest.approx(recomputed["area_mm2"])
    assert np.allclose(assembled["bounds_lps_mm"], recomputed["bounds_lps_mm"])


def test_needles_of_a_grazing_boolean_are_taken_out_without_moving_the_surface():
    """Two faceted spheres cut at a grazing angle leave needle triangles (a
    corner a hair off the opposite edge). The repair collapses or flips
    them: no new vertex (every corner is one of the boolean's, as float32),
    the surface within COLLAPSE_MM of where it was, a closed solid as read back."""
    import manifold3d

    from pipeline.design.plate import manifold_mesh
    from pipeline.geometry.distance import point_mesh_distance
    from pipeline.geometry.meshes import COLLAPSE_MM

    a = manifold3d.Manifold.sphere(20.0, 96)
    b = manifold3d.Manifold.sphere(20.0, 96).rotate((1e-4, 2e-4, 0.0)).translate((30.0, 1e-4, 0.0))
    raw = manifold_mesh(a - b)
    assert reader_defects(raw)["needle_triangles"] > 0
    clean, changed = remove_needles(raw)
    assert changed > 0
    assert not any(reader_defects(clean).values())
    corners = {tuple(v) for v in np.asarray(raw.vertices, dtype=np.float32)}
    assert all(tuple(v) in corners for v in np.asarray(clean.vertices, dtype=np.float32))
    moved, _ = point_mesh_distance(clean.triangles_center, raw.vertices, raw.faces)
    assert moved.max() <= COLLAPSE_MM


def test_needles_repaired_in_place_leave_held_faces_and_every_coordinate_as_they_were():
    """The same grazing boolean repaired with half of the faces held (a cut
    face's, triangulated afresh later): those faces, with their needles, come
    back the same triangles on the same float64 corners; every other vertex
    keeps its own coordinates (not rounded to float32), and each face says
    which face it stands for."""
    import manifold3d

    from pipeline.design.plate import manifold_mesh
    from pipeline.geometry.meshes import remove_needles_in_place

    a = manifold3d.Manifold.sphere(20.0, 96)
    b = manifold3d.Manifold.sphere(20.0, 96).rotate((1e-4, 2e-4, 0.0)).translate((30.0, 1e-4, 0.0))
    raw = manifold_mesh(a - b)
    raw.vertices = raw.vertices + 1e-7   # corners float32 cannot hold
    held = raw.triangles_center[:, 1] > 0.0
    # Needles both among the held faces and among the others.
    assert reader_defects(raw, needles_ignored_on=~held)["needle_triangles"] > 0
    assert reader_defects(raw, needles_ignored_on=held)["needle_triangles"] > 0
    clean, source, changed = remove_needles_in_place(raw, held)
    assert changed > 0 and len(source) == len(clean.faces)
    assert reader_defects(clean, needles_ignored_on=held[source])["needle_triangles"] == 0
    kept = held[source]
    assert np.array_equal(np.sort(source[kept]), np.flatnonzero(held))
    assert np.array_equal(clean.triangles[kept], raw.triangles[source[kept]])
    assert {tuple(v) for v in clean.vertices} <= {tuple(v) for v in raw.vertices}
    assert np.abs(clean.vertices - clean.vertices.astype(np.float32)).max() > 0


def test_a_mesh_without_needles_comes_back_untouched():
    """Nothing to repair: the same mesh, not its float32 reader's view."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=123.456789)
    clean, changed = remove_needles(sphere)
    assert clean is sphere and changed == 0


def test_corner_min_and_max_are_numpy_reductions_over_the_three_corners():
    """The same numbers as ``min``/``max`` along axis 1, for corners (n, 3, 3),
    their projections (n, 3, 2) and per-edge values (n, 3); NaN propagates."""
    from pipeline.geometry.meshes import corner_max, corner_min

    rng = np.random.default_rng(11)
    for shape in ((500, 3, 3), (500, 3, 2), (500, 3), (0, 3)):
        values = rng.normal(size=shape)
        assert np.array_equal(corner_min(values), values.min(axis=1))
        assert np.array_equal(corner_max(values), values.max(axis=1))
    with_nan = np.array([[1.0, np.nan, 0.0]])
    assert np.isnan(corner_min(with_nan)[0]) and np.isnan(corner_max(with_nan)[0])


def test_compacting_faces_matches_numpy_unique():
    faces = np.random.default_rng(3).integers(0, 500, (300, 3)) * 2   # only even vertices used
    used, local = compact_indices(faces, 1000)
    expected_used, inverse = np.unique(faces, return_inverse=True)
    assert np.array_equal(used, expected_used) and np.array_equal(local, inverse.reshape(faces.shape))
    assert local.dtype == np.int32


@pytest.mark.parametrize("spacing_mm", [(1.0, 1.0, 1.0), (3.0, 0.8, 0.8)])
def test_a_bone_cut_by_two_faces_of_the_scan_is_capped_flat_and_reads_back_valid(spacing_mm):
    """A bone filling a corner of the scan (cut by its first slice, first row
    and first column: a femur at the lowest slice of a small field of view),
    with HU from just over its level to 1500 over it: each cut is capped flat
    within a thousandth of a voxel of the last voxels' centres, and the mesh
    reads back a valid solid. The caps used to lie HU / 1e6 voxels out, and
    where two met along the scan's edge their strips were needles 1e-6 mm
    thin (a small field of view of Pelvic-Ref-003 was refused)."""
    from pipeline.geometry.surface import CLAMP_HU, mesh_from_field

    rng = np.random.default_rng(3)
    field = np.full((12, 14, 16), -200.0, dtype=np.float32)
    field[:6, :8, :9] = rng.uniform(0.0, 1500.0, (6, 8, 9))
    field[:6, :8, :9][rng.random((6, 8, 9)) < 0.3] = CLAMP_HU    # just over the level
    affine = np.array([[0.0, 0.0, spacing_mm[2], 250.0], [0.0, spacing_mm[1], 0.0, -300.0],
                       [spacing_mm[0], 0.0, 0.0, 400.0], [0.0, 0.0, 0.0, 1.0]])
    mesh = mesh_from_field(field, affine, np.zeros(3))
    validate_solid(mesh, "corner")
    index = (np.asarray(mesh.vertices) - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    assert index.min(axis=0) == pytest.approx([-1e-3, -1e-3, -1e-3], abs=2e-5)


def test_a_bone_whose_voxels_meet_only_at_edges_reads_back_valid():
    """Bone voxels scattered at random (half of a 14-voxel cube) where the
    HU say nothing (a level of 0 everywhere: every voxel is clamped, +1 in the
    bone, -1 out of it): on a cell face with two bone voxels diagonal to each
    other, the marching cubes' face test met an exact tie that the two cells
    sharing the face broke differently, and the mesh had edges used four
    times (Pelvic-Ref-003 with its left hip bone made soft tissue was
    refused). Unequal clamps keep diagonal bone voxels apart."""
    from pipeline.geometry.surface import label_mesh

    rng = np.random.default_rng(7)
    labels = np.zeros((16, 16, 16), dtype=np.uint8)
    labels[1:-1, 1:-1, 1:-1] = rng.random((14, 14, 14)) < 0.5
    field = np.zeros(labels.shape, dtype=np.float32)
    affine = np.array([[0.0, 0.0, 0.8, 120.0], [0.0, 0.8, 0.0, -90.0], [2.5, 0.0, 0.0, 300.0], [0.0, 0.0, 0.0, 1.0]])
    mesh = label_mesh(field, labels, 1, tuple(slice(1, 15) for _ in range(3)), affine, np.zeros(3))
    validate_solid(mesh, "scattered")
