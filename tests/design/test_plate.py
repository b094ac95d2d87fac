"""The bone plate (flanges, guide seats) on analytic bones: a box and a cylinder.

Truth: the distance from the plate to the bone mesh it was built on
(trimesh's exact closest point, independent of the code under test), the
footprint planes, and the winding number for "inside the bone".
"""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from pipeline.config import Plane
from pipeline.design.plate import band, bone_plate, facing, plate_contact
from pipeline.geometry.distance import NearSurface
from pipeline.errors import MeshError
from pipeline.geometry.meshes import reader_defects, remove_needles, validate_solid

CLEARANCE_MM = 0.5
THICKNESS_MM = 3.0
# The tolerance for the gap; well above the linear interpolation
# error of the distance field on these shapes (0 on flat faces,
# spacing^2 / (8 R) = 0.002 mm on the 15 mm cylinder).
GAP_TOLERANCE_MM = 0.05
ON_PLANE_MM = 1e-6
# Grid values within 1e-3 spacing of a level are moved off it (see
# pipeline.geometry.level_set.NUDGE): an offset surface may move that far.
NUDGED_MM = 1e-3 * 0.5


def box_bone() -> trimesh.Trimesh:
    """40 x 30 x 20 mm, centred at (100, -50, 200), far from the origin like a
    patient's bone, triangles of at most 2 mm."""
    box = trimesh.creation.box(extents=(40.0, 30.0, 20.0)).subdivide_to_size(2.0)
    return trimesh.Trimesh(box.vertices + [100.0, -50.0, 200.0], box.faces)


def cylinder_bone(radius_mm: float = 15.0) -> trimesh.Trimesh:
    """A closed cylinder 60 mm long about the S axis through (30, 120, -80):
    rings every mm, 96 sections (0.98 mm apart at 15 mm), like a bone
    mesh's triangles."""
    angle = np.linspace(0.0, 2 * np.pi, 96, endpoint=False)
    z = np.linspace(-30.0, 30.0, 61)
    ring = np.stack([radius_mm * np.cos(angle), radius_mm * np.sin(angle)], axis=1)
    side = np.concatenate([np.column_stack([ring, np.full(96, h)]) for h in z])
    i, j = np.meshgrid(np.arange(60), np.arange(96), indexing="ij")
    a, b = i * 96 + j, i * 96 + (j + 1) % 96
    quads = np.concatenate([np.stack([a, b, b + 96], -1).reshape(-1, 3),
                            np.stack([a, b + 96, a + 96], -1).reshape(-1, 3)])
    bottom, top = len(side), len(side) + 1
    caps = np.concatenate([np.stack([np.full(96, bottom), np.roll(np.arange(96), -1), np.arange(96)], -1),
                           np.stack([np.full(96, top), 60 * 96 + np.arange(96),
                                     60 * 96 + np.roll(np.arange(96), -1)], -1)])
    vertices = np.concatenate([side, [[0, 0, -30.0], [0, 0, 30.0]]]) + [30.0, 120.0, -80.0]
    mesh = trimesh.Trimesh(vertices, np.concatenate([quads, caps]), process=False)
    assert mesh.volume > 0 and mesh.is_watertight
    return mesh


def exact_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    _, distance, _ = trimesh.proximity.closest_point(mesh, points)
    return distance


def box_footprint() -> tuple[Plane, ...]:
    """A band 15 mm wide on the box's top face (z = 210), its ends 5 mm from
    the box's edges, on the side facing up."""
    cut = Plane(point_lps_mm=(100.0, -50.0, 200.0), normal_lps=(1.0, 0.0, 0.0))
    across = Plane(point_lps_mm=(100.0, -50.0, 200.0), normal_lps=(0.0, 1.0, 0.0))
    return band(cut, -15.0, -2.0) + band(across, -10.0, 10.0) + (facing((100.0, -50.0, 205.0), (0, 0, 1)),)


@pytest.fixture(scope="module")
def box_plate():
    bone = box_bone()
    return bone, bone_plate(bone, box_footprint(), CLEARANCE_MM, THICKNESS_MM)


def test_plate_on_a_box_face_is_a_slab_at_the_clearance(box_plate):
    bone, plate = box_plate
    validate_solid(plate, "plate")
    # Exactly the slab 86..98 x -60..-40 x 210.5..213.5 mm.
    lo, hi = plate.bounds
    np.testing.assert_allclose(lo[:2], [85.0, -60.0], atol=ON_PLANE_MM)
    np.testing.assert_allclose(hi[:2], [98.0, -40.0], atol=ON_PLANE_MM)
    np.testing.assert_allclose([lo[2], hi[2]], [210.0 + CLEARANCE_MM, 210.0 + CLEARANCE_MM + THICKNESS_MM],
                               atol=NUDGED_MM + 1e-12)
    # Every face may move in by the nudge at most.
    assert plate.volume == pytest.approx(13.0 * 20.0 * THICKNESS_MM, abs=plate.area * NUDGED_MM)


def test_plate_gap_equals_the_clearance_over_its_whole_contact(box_plate):
    bone, plate = box_plate
    contact = plate_contact(plate, bone, CLEARANCE_MM, THICKNESS_MM)
    assert contact.area_mm2 == pytest.approx(13.0 * 20.0, rel=1e-6)
    assert abs(contact.gap_min_mm - CLEARANCE_MM) <= GAP_TOLERANCE_MM
    assert abs(contact.gap_max_mm - CLEARANCE_MM) <= GAP_TOLERANCE_MM
    inner = np.unique(plate.faces[contact.faces])
    d = exact_distance(bone, plate.vertices[inner])
    np.testing.assert_allclose(d, CLEARANCE_MM, atol=GAP_TOLERANCE_MM)


def test_plate_is_closed_after_float32_and_welding(box_plate):
    _, plate = box_plate
    assert not any(reader_defects(plate).values())


def test_plate_on_a_cylinder_follows_it_at_the_clearance_and_never_penetrates():
    radius = 15.0
    bone = cylinder_bone(radius)
    cut = Plane(point_lps_mm=(30.0, 120.0, -80.0), normal_lps=(0.0, 0.0, 1.0))
    footprint = band(cut, -20.0, 0.0) + (facing((30.0, 120.0, -80.0), (1.0, 1.0, 0.0)),)
    plate = bone_plate(bone, footprint, CLEARANCE_MM, THICKNESS_MM)
    validate_solid(plate, "plate")  # as an STL reader sees it: float32, welded
    # Everything of it lies within the footprint, its side walls in the planes.
    for plane in footprint:
        d = plane.signed_distance_mm(plate.vertices)
        assert d.max() <= ON_PLANE_MM
        assert np.sum(np.abs(d) <= ON_PLANE_MM) >= 3
    contact = plate_contact(plate, bone, CLEARANCE_MM, THICKNESS_MM)
    inner = np.unique(plate.faces[contact.faces])
    gap = exact_distance(bone, plate.vertices[inner])
    np.testing.assert_allclose(gap, CLEARANCE_MM, atol=GAP_TOLERANCE_MM)
    # Half the cylinder's side over 20 mm: the contact area is that of the
    # cylinder of radius R + clearance, within the facets' share.
    expected = np.pi * (radius + CLEARANCE_MM) * 20.0
    assert contact.area_mm2 == pytest.approx(expected, rel=0.01)
    # Never penetrates: every vertex outside the bone, at least the clearance away.
    everywhere = exact_distance(bone, plate.vertices)
    assert everywhere.min() >= CLEARANCE_MM - GAP_TOLERANCE_MM
    axis_distance = np.linalg.norm(plate.vertices[:, :2] - [30.0, 120.0], axis=1)
    assert axis_distance.min() > radius
    # The outer side: at clearance + thickness.
    assert everywhere.max() == pytest.approx(CLEARANCE_MM + THICKNESS_MM, abs=GAP_TOLERANCE_MM)


def test_plate_fills_the_bone_beyond_fill_planes_only():
    bone = box_bone()
    removed = Plane(point_lps_mm=(95.0, -50.0, 200.0), normal_lps=(1.0, 0.0, 0.0))
    plate = bone_plate(bone, box_footprint(), CLEARANCE_MM, THICKNESS_MM, fill_beyond=(removed,))
    validate_solid(plate, "plate")
    # Two grid steps (1 mm) beyond x = 95 it reaches a thickness into the
    # box; on the near side of the plane it keeps the clearance.
    beyond = removed.signed_distance_mm(plate.vertices) > 2 * 0.5
    # (about a thickness: the depth inside is measured exactly only near the surface)
    assert 210.0 - THICKNESS_MM - 0.5 <= plate.vertices[beyond, 2].min() <= 210.0 - 1.0
    near = removed.signed_distance_mm(plate.vertices) <= ON_PLANE_MM
    assert plate.vertices[near, 2].min() == pytest.approx(210.0 + CLEARANCE_MM, abs=NUDGED_MM + 1e-12)
    contact = plate_contact(plate, bone, CLEARANCE_MM, THICKNESS_MM, behind=(removed,))
    # Faces whose centres lie behind x = 95 may reach past it by a grid step (0.5 mm) along its 20 mm.
    assert 10.0 * 20.0 <= contact.area_mm2 <= (10.0 + 0.5) * 20.0
    assert abs(contact.gap_min_mm - CLEARANCE_MM) <= GAP_TOLERANCE_MM


def test_plate_without_bone_in_its_footprint_is_refused():
    bone = box_bone()
    far = (facing((500.0, 0.0, 0.0), (1.0, 0.0, 0.0)),)
    with pytest.raises(MeshError, match="plate"):
        bone_plate(bone, far, CLEARANCE_MM, THICKNESS_MM)


def test_near_surface_distance_is_exact():
    bone = cylinder_bone()
    rng = np.random.default_rng(7)
    points = rng.uniform(bone.bounds[0] - 6.0, bone.bounds[1] + 6.0, size=(2000, 3))
    d, closest = NearSurface(bone).distance(points)
    truth_point, truth, _ = trimesh.proximity.closest_point(bone, points)
    np.testing.assert_allclose(d, truth, atol=1e-9)
    np.testing.assert_allclose(closest, truth_point, atol=1e-6)


def test_plate_keeps_the_clearance_from_other_bones_and_ignores_bones_out_of_reach(box_plate):
    """Another bone standing in the footprint (a block 1 mm above the box's
    top, across the band) is kept off by the clearance and never entered; a
    bone far away changes nothing."""
    bone, alone = box_plate
    block = trimesh.creation.box(bounds=[[88.0, -70.0, 211.0], [92.0, -30.0, 220.0]]).subdivide_to_size(2.0)
    far = trimesh.creation.box(bounds=[[300.0, 100.0, 0.0], [320.0, 120.0, 20.0]])
    plate = bone_plate(bone, box_footprint(), CLEARANCE_MM, THICKNESS_MM, keep_off=(block, far))
    validate_solid(plate, "plate")
    gap = exact_distance(block, plate.vertices)
    assert gap.min() >= CLEARANCE_MM - GAP_TOLERANCE_MM
    assert not block.contains(plate.triangles_center).any()
    # The block dilated by the clearance starts at z = 210.5, the slab's
    # underside: it takes the slab's whole thickness across its width (4 mm
    # + a clearance each side) over the band's 20 mm, and no more.
    cut_out = (4.0 + 2 * CLEARANCE_MM) * 20.0 * THICKNESS_MM
    assert alone.volume - plate.volume == pytest.approx(cut_out, rel=0.05)
    only_far = bone_plate(bone, box_footprint(), CLEARANCE_MM, THICKNESS_MM, keep_off=(far,))
    assert only_far.volume == pytest.approx(alone.volume, abs=1e-9)


def test_parts_touching_along_an_edge_are_fused(monkeypatch):
    """Two cubes of 10 mm sharing one edge (as a cutting guide's slot wall
    once met another face of the guide, found by a random plan): their union
    is a valid manifold3d solid, but an STL reader welds the edge's corners
    and sees an edge of four triangles. The mesh written fuses them with a
    rod FUSE_MM thick along the edge: the two empty quarters of its
    section, FUSE_MM squared over 2 per mm (and its ends).

    Fused at once: no simplification parts such parts, and a pass over a
    flanged implant of a million triangles takes seconds (a random plan
    spent 28 s on passes that could not help), so the repair runs once
    before the rod and once after."""
    import manifold3d

    import pipeline.design.plate as plate
    from pipeline.design.plate import FUSE_MM, manifold_mesh, solid_mesh

    a = manifold3d.Manifold.cube((10, 10, 10)).translate((100.0, 200.0, 300.0))
    b = manifold3d.Manifold.cube((10, 10, 10)).translate((110.0, 210.0, 300.0))
    assert reader_defects(manifold_mesh(a + b))["bad_edges"] == 1
    repairs = []
    monkeypatch.setattr(plate, "remove_needles", lambda m: repairs.append(m) or remove_needles(m))
    mesh = solid_mesh(a + b)
    assert len(repairs) == 2
    assert not any(reader_defects(mesh).values())
    validate_solid(mesh, "fused")
    assert mesh.volume == pytest.approx(2000.0 + 10.0 * FUSE_MM**2 / 2, abs=FUSE_MM**3)
