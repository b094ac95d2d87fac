"""Cutting guides on bones whose answers are known: boxes cut by planes,
and a slab overhanging its pier. The slot, the seat's gap, the K-wires and
the checks are held to the geometry; the lift-off check is shown to fail on
an analytic seat hooked under the overhang.
"""

import math

import manifold3d
import numpy as np
import pytest
import trimesh

from pipeline.config import GuidesConfig, Plane
from pipeline.design.guides import (TERRAIN_GRID_MM, TERRAIN_MARGIN_MM, UNDER_EDGE_MM, Terrain, _lift_off, _seat,
                                    cutting_guide, guide_frame, guide_warnings, kwire_mesh)
from pipeline.design.fit import wall_figures
from pipeline.geometry import validate_solid
from pipeline.design.plate import manifold_mesh as from_manifold
from pipeline.geometry.resect import resect
from tests.helpers import winding_number

CLEARANCE_MM = 0.3


def make_guide(bone, plane, approach, **settings):
    cut = resect(bone, (plane,))
    config = GuidesConfig(enabled=True, approach_lps=approach, contact_clearance_mm=CLEARANCE_MM,
                          **{"kwire_depth_mm": 8.0, **settings})
    guide = cutting_guide(plane, approach, config, bones=bone, cut_bone=bone, host=cut.host,
                          cut_faces=cut.host_cut_faces[0])
    validate_solid(guide.mesh, "guide")
    return guide, cut, config


def box_bone(lo=(-30, -20, -10), hi=(30, 20, 0)):
    return trimesh.creation.box(bounds=[lo, hi])


def test_slot_mid_plane_is_the_cut_plane_for_an_oblique_plane():
    plane = Plane(point_lps_mm=(3.0, -2.0, -4.0), normal_lps=(1.0, 0.3, 0.2), name="oblique")
    guide, cut, config = make_guide(box_bone(), plane, (0.0, 0.0, 1.0))
    slot = guide.report["slot"]
    assert slot["found"]
    assert slot["midplane_distance_mm"] <= 1e-6
    assert slot["midplane_angle_deg"] <= 1e-6
    assert slot["width_mm"] == pytest.approx(config.slot_width_mm, abs=1e-6)
    assert slot["wall_flatness_mm"] <= 1e-6
    # The guiding length is the setting: the top stands that far above the
    # walls' highest rim nearby (the report rounds to 1e-3 mm).
    assert slot["depth_mm"] == pytest.approx(config.slot_depth_mm, abs=1e-3)
    # Independently: the guide has no material within the slot over the cut line.
    d = plane.signed_distance_mm(guide.mesh.vertices)
    local = guide.frame.local(guide.mesh.vertices)
    cut_line = guide.frame.local(cut.host.vertices[cut.host.faces[cut.host_cut_faces[0]]].reshape(-1, 3))[:, 0]
    over_cut = (local[:, 0] >= cut_line.min()) & (local[:, 0] <= cut_line.max())
    assert not np.any((np.abs(d) < config.slot_width_mm / 2 - 1e-6) & over_cut)
    assert guide.report["blade_reach"]["reached_fraction"] == 1.0


def test_seat_gap_is_the_clearance_and_the_guide_misses_the_bone():
    bone = box_bone()
    plane = Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(1.0, 0.0, 0.0), name="x0")
    guide, _, config = make_guide(bone, plane, (0.0, 0.0, 1.0))
    gap = guide.report["contact_gap_mm"]
    assert gap["min"] == pytest.approx(CLEARANCE_MM, abs=0.05)
    assert gap["max"] == pytest.approx(CLEARANCE_MM, abs=0.05)
    assert guide.report["closest_to_bone_mm"] >= CLEARANCE_MM - 0.05
    # The seat covers the box's top within the footprint on both sides, less the slot:
    # 2 x footprint across, the box's 40 mm along the cut line; at the box's
    # ends the underside is judged in triangles of up to UNDER_EDGE_MM, each
    # counted whole where its centre is over the bone.
    across = 2 * config.footprint_mm - config.slot_width_mm
    area = guide.report["seat_area_on_bone_mm2"]
    assert (40.0 - 2 * UNDER_EDGE_MM) * across <= area <= (40.0 + 2 * UNDER_EDGE_MM) * across
    # Both sides alike but for the K-wire holes on the host side (24-gons);
    # the triangles of up to UNDER_EDGE_MM along their rims are counted whole
    # or not at all (by their centres): half an edge along each rim.
    removed = guide.report["seat_area_on_removed_side_mm2"]
    hole_r = config.kwire_diameter_mm / 2 + config.slot_tolerance_mm
    holes = len(guide.kwires) * 12 * hole_r ** 2 * math.sin(2 * math.pi / 24)
    rims = len(guide.kwires) * 2 * math.pi * hole_r * UNDER_EDGE_MM / 2
    assert removed - (area - removed) == pytest.approx(holes, abs=rims)
    assert guide.report["intersection_with_bone_mm3"] <= 1e-3
    both = manifold3d.Manifold(manifold3d.Mesh64(
        vert_properties=np.array(guide.mesh.vertices), tri_verts=np.array(guide.mesh.faces, dtype=np.uint64))) ^ \
        manifold3d.Manifold.cube((60.0, 40.0, 10.0)).translate((-30.0, -20.0, -10.0))
    assert both.is_empty() or both.volume() <= 1e-3
    assert guide.report["lift_off"]["removable"]


def test_a_guide_on_flat_bone_is_a_wall_thick_and_thin_walls_are_warned_of():
    """On a flat box the seat, the slot block's walls and the sleeves are a
    wall thick: 5 % of the guide's surface lies on walls of at least that
    (to the K-wire holes' polygons), and nothing is warned of. A guide whose
    walls are under 1 mm over 5 % of its surface is warned of, by name."""
    plane = Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(1.0, 0.0, 0.0), name="x0")
    guide, _, config = make_guide(box_bone(), plane, (0.0, 0.0, 1.0))
    assert guide.report["walls"]["wall_thickness_p5_mm"] >= config.wall_mm - 0.05
    assert not guide.warnings
    thin = {**guide.report, "walls": {**guide.report["walls"], "wall_thickness_p5_mm": 0.6,
                                      "area_over_walls_under_1_mm_mm2": 900.0}}
    (warning,) = guide_warnings(thin, config)
    assert warning.startswith("guide x0: 5 % of its surface has walls under 0.60 mm (900 mm2 over walls under 1 mm")


def test_kwires_end_in_host_bone():
    bone = box_bone()
    plane = Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(1.0, 0.0, 0.0), name="x0")
    guide, cut, config = make_guide(bone, plane, (0.0, 0.0, 1.0), kwires=3)
    assert len(guide.kwires) == 3 and not guide.warnings
    for (entry, tip), row in zip(guide.kwires, guide.report["kwires"]):
        assert entry[2] == pytest.approx(0.0, abs=1e-6)           # enters at the bone's top
        assert np.linalg.norm(entry - tip) == pytest.approx(config.kwire_depth_mm, abs=1e-6)
        assert row["length_in_bone_mm"] == pytest.approx(config.kwire_depth_mm)
        assert plane.signed_distance_mm(tip[None])[0] < -config.kwire_diameter_mm   # host side
        assert winding_number(cut.host, tip) == pytest.approx(1.0, abs=1e-6)
        # The hole is through the guide: a ray down the wire's axis meets no guide material.
        axis = manifold3d.Manifold(manifold3d.Mesh64(
            vert_properties=np.array(guide.mesh.vertices), tri_verts=np.array(guide.mesh.faces, dtype=np.uint64)))
        assert not axis.ray_cast(tuple(entry + [0, 0, 40.0]), tuple(entry))
        # It guides the wire over kwire_guide_mm: beside the hole, in its
        # sleeve's wall (along the cut line towards the box's middle, over
        # the seat), the guide runs from the seat's underside (the clearance
        # above the bone) that far up without a break.
        hole_r = config.kwire_diameter_mm / 2 + config.slot_tolerance_mm
        a = guide.frame.axes[:, 0]
        beside = entry + (-1.0 if entry @ a > 0 else 1.0) * (hole_r + config.wall_mm / 2) * a
        hits = axis.ray_cast(tuple(beside + [0, 0, 40.0]), tuple(beside))
        assert len(hits) == 2
        # (the seat's underside lies within 0.05 mm of the clearance, as in the gap test)
        assert hits[1].position[2] == pytest.approx(CLEARANCE_MM, abs=0.05)
        assert hits[0].position[2] - hits[1].position[2] == pytest.approx(config.kwire_guide_mm, abs=0.05)
        assert row["guided_length_mm"] == pytest.approx(config.kwire_guide_mm, abs=1e-3)
    along = sorted(guide.frame.local(np.array([e for e, _ in guide.kwires]))[:, 0])
    assert min(np.diff(along)) >= config.kwire_diameter_mm + config.wall_mm   # spread along the cut


def test_on_bone_sloping_steeply_the_seat_lies_at_the_clearance_a_wall_thick():
    """A box whose top slopes at 75 degrees to the approach, the cut across
    it: measured along the top face's normal over the footprint, the seat's
    underside lies at the clearance (widened sideways by half a grid
    diagonal: up to 0.21 mm more across a 75-degree slope) and the seat is a
    wall thick. Capped at two walls along the approach it was half a wall
    thick across (1.81 mm), floating 2.2 mm off the bone."""
    box = trimesh.creation.box(extents=(60.0, 80.0, 20.0))
    turn = trimesh.transformations.rotation_matrix(math.radians(75.0), [1.0, 0.0, 0.0])
    box.apply_transform(turn)
    plane = Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(1.0, 0.0, 0.0), name="x0")
    guide, _, config = make_guide(box, plane, (0.0, 0.0, 1.0))
    solid = manifold3d.Manifold(manifold3d.Mesh64(
        vert_properties=np.array(guide.mesh.vertices), tri_verts=np.array(guide.mesh.faces, dtype=np.uint64)))
    normal, up_slope = turn[:3, 2], turn[:3, 1]
    slack = TERRAIN_GRID_MM * math.sqrt(0.5) * math.sin(math.radians(75.0))
    for x in (-12.0, -8.0, 8.0, 12.0):   # beside the slot block, on both sides of the cut
        for t in (-20.0, 0.0, 20.0):
            on_bone = 10.0 * normal + x * np.array([1.0, 0.0, 0.0]) + t * up_slope
            hits = solid.ray_cast(tuple(on_bone + 0.01 * normal), tuple(on_bone + 30.0 * normal))
            assert len(hits) == 2
            gap, thickness = ((np.array(h.position) - on_bone) @ normal for h in hits)
            assert CLEARANCE_MM - 0.01 <= gap <= CLEARANCE_MM + slack + 0.01
            assert thickness - gap >= config.wall_mm - 0.05


@pytest.mark.parametrize("slope_deg", [30.0, 45.0, 60.0, 75.0])
def test_where_the_bone_falls_away_past_the_seat_its_end_is_square_not_a_lip(slope_deg):
    """A box whose top slopes across the cut plane (x = 0) at ``slope_deg``:
    the footprint (15 mm either side) ends on the slope, downhill on one
    side. Measured along the top face's normal from the bone, 5 mm and more
    from the slot block (nearer, the block's roof trims a seat rising past
    its top), wherever the seat's underside lies at the clearance (widened
    sideways by half a grid diagonal, as in the 75-degree test, which lifts
    it by up to that times the slope's sine: the thickness's tolerance too),
    the seat is a wall thick right up to its ends, up to 60 degrees. Cut
    along the approach, the downhill end was a lip: 0.41, 0.17 and 0.02 mm
    across at 30, 45 and 60 degrees. (At 75 degrees the squared end lies
    within 15 degrees of the measuring ray, and a grid step in its place
    moves the ray's exit by a millimetre: 1.3 mm, against 0.04 before.) At
    every slope the seat is one piece with the block on both sides of the
    slot and reaches both ends of the footprint (a block lifted off the
    seat on the downhill side once left that half a piece of its own,
    dropped), keeps its clearance and lifts off."""
    box = trimesh.creation.box(extents=(200.0, 60.0, 20.0))   # its top face under the whole footprint
    turn = trimesh.transformations.rotation_matrix(math.radians(slope_deg), [0.0, 1.0, 0.0])
    box.apply_transform(turn)
    plane = Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(1.0, 0.0, 0.0), name="x0")
    guide, _, config = make_guide(box, plane, (0.0, 0.0, 1.0))
    assert guide.report["footprint"]["pieces_dropped_volume_mm3"] == 0.0
    lo, hi = guide.mesh.bounds[:, 0]
    assert lo <= -config.footprint_mm + 0.5 and hi >= config.footprint_mm - 0.5
    solid = manifold3d.Manifold(manifold3d.Mesh64(
        vert_properties=np.array(guide.mesh.vertices), tri_verts=np.array(guide.mesh.faces, dtype=np.uint64)))
    normal, across = turn[:3, 2], turn[:3, 0]
    slack = TERRAIN_GRID_MM * math.sqrt(0.5) * math.sin(math.radians(slope_deg))
    measured = {-1.0: 0, 1.0: 0}
    sleeve_mm = config.kwire_diameter_mm / 2.0 + config.slot_tolerance_mm + config.wall_mm + 1.0
    for y in (-20.0, 0.0, 20.0):
        for t in np.arange(-80.0, 80.0, 0.25):           # across the top face
            on_bone = 10.0 * normal + t * across + np.array([0.0, y, 0.0])
            if not 10.0 <= abs(on_bone[0]) <= 16.0:      # to past the footprint's ends
                continue
            if any(np.hypot(*(on_bone - entry)[:2]) <= sleeve_mm for entry, _ in guide.kwires):
                continue                                  # a K-wire's hole and sleeve
            hits = solid.ray_cast(tuple(on_bone + 0.01 * normal), tuple(on_bone + 30.0 * normal))
            if len(hits) < 2:
                continue
            gap, far = ((np.array(h.position) - on_bone) @ normal for h in hits[:2])
            if gap <= CLEARANCE_MM + slack + 0.01:
                measured[float(np.sign(on_bone[0]))] += 1
                if slope_deg <= 60.0:
                    assert far - gap >= config.wall_mm - slack - 0.01, (t, y, gap, far)
    assert min(measured.values()) >= 20   # on both sides of the cut
    assert guide.report["contact_gap_mm"]["min"] >= CLEARANCE_MM - 0.01
    assert guide.report["lift_off"]["removable"]


def test_the_seat_does_not_line_a_narrow_groove_down_to_its_bottom():
    """A V-groove 8 mm wide and 25 mm deep runs along the cut line under the
    seat. The seat's top (the bone rolled by a ball of clearance + wall)
    bridges it with a cusp; with the cap on the seat's thickness taken from
    the top's slope node by node (steep on either side of the cusp), the
    underside followed the groove's walls down to where they are a
    clearance apart: a tongue 15 mm deep tapering to nothing, 1967 mm2 of
    the guide's surface on walls under 1 mm. Taken at the scale of a wall,
    the top's slope over the cusp is level and the seat stops two walls
    below it."""
    groove = manifold3d.Manifold.extrude(manifold3d.CrossSection([[(-4.0, 0.5), (0.0, -25.0), (4.0, 0.5)]]), 80.0)
    groove = groove.transform(np.array([[0.0, 0.0, 1.0, -40.0], [1.0, 0.0, 0.0, -8.0], [0.0, 1.0, 0.0, 0.0]]))
    solid = manifold3d.Manifold.cube((60.0, 40.0, 40.0)).translate((-30.0, -20.0, -40.0)) - groove
    built = from_manifold(solid)
    bone = trimesh.Trimesh(np.array(built.vertices), np.array(built.faces))
    plane = Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(0.0, 1.0, 0.0), name="y0")
    guide, _, config = make_guide(bone, plane, (0.0, 0.0, 1.0))
    walls = wall_figures(guide.mesh, 1.0)
    assert walls["area_over_walls_under_1_mm_mm2"] <= 100.0
    assert walls["wall_thickness_p5_mm"] >= config.wall_mm - 0.05
    assert guide.mesh.bounds[0][2] >= -(2.0 * config.wall_mm + CLEARANCE_MM)
    assert guide.report["contact_gap_mm"]["min"] >= CLEARANCE_MM - 0.01
    assert guide.report["lift_off"]["removable"]


def test_no_needle_hangs_where_the_seat_has_no_bone_within_reach():
    """Bone (a plateau at z = 0) under the whole footprint on one side of
    b = 0, only from a = -10 on the other, and deep bone (z = -30) beyond
    the footprint. Between the plateau's end and the footprint's, on the
    short side, no bone is within reach of the seat's top: there the
    underside lay at the floor under the coarse top's slope down to it, and
    a needle of seat hung 29 mm below the bone's top. The seat lies above
    the plateau everywhere (its underside's lowest is the clearance's ball
    round the plateau's edge, at z >= 0)."""
    config = GuidesConfig(enabled=True, contact_clearance_mm=CLEARANCE_MM)
    a = np.arange(-30.0, 30.0 + TERRAIN_GRID_MM / 2, TERRAIN_GRID_MM)
    b = np.arange(-30.0, 30.0 + TERRAIN_GRID_MM / 2, TERRAIN_GRID_MM)
    aa, bb = np.meshgrid(a, b, indexing="ij")
    height = np.where(((bb <= 0.0) & (aa >= -20.0)) | ((bb > 0.0) & (aa >= -10.0)), 0.0, -np.inf)
    height = np.where(np.abs(bb) >= 22.0, -30.0, height)
    seat, under = _seat(Terrain(a, b, height), (-20.0, 20.0), config)
    assert seat.volume() > 0 and np.isfinite(under).any()
    assert seat.bounding_box()[2] >= -1e-6


def guide_beside(other: trimesh.Trimesh):
    """(guide, settings) of the box bone cut at x = 0, approached from +z,
    with ``other``, a bone the plan does not cut, among the bones."""
    host_bone = box_bone()
    plane = Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(1.0, 0.0, 0.0), name="x0")
    cut = resect(host_bone, (plane,))
    config = GuidesConfig(enabled=True, approach_lps=(0.0, 0.0, 1.0), contact_clearance_mm=CLEARANCE_MM,
                          kwire_depth_mm=8.0)
    guide = cutting_guide(plane, (0.0, 0.0, 1.0), config, bones=trimesh.util.concatenate([host_bone, other]),
                          cut_bone=host_bone, host=cut.host, cut_faces=cut.host_cut_faces[0])
    return guide, config


def test_kwires_go_where_the_seat_rests_on_the_host_bone():
    """Over half the cut line another bone lies 8 mm above the host, and
    the seat rests on it there: a wire there would run 8 mm unguided before
    the host (on a real CT through the femur and 40 mm of fat). Both wires
    go where the seat is on the host, entering it within the clearance."""
    guide, config = guide_beside(trimesh.creation.box(bounds=[(-25.0, 0.0, 8.0), (-1.0, 20.0, 10.0)]))
    assert len(guide.kwires) == 2 and not guide.warnings
    for (entry, _), row in zip(guide.kwires, guide.report["kwires"]):
        assert entry[1] < -config.kwire_diameter_mm / 2 and entry[2] == pytest.approx(0.0, abs=1e-6)
        assert row["below_seat_mm"] == pytest.approx(CLEARANCE_MM, abs=0.1)


def test_a_seat_resting_on_other_bones_is_flagged():
    """Plates of another bone lie 8 mm over the cut bone on both sides of the
    cut (the femur under a periacetabular guide): the seat rests on them,
    1099 mm2 on bone and none of it on the bones the plan cuts. A femur
    moves: the guide would be placed by it. (On the 3 mm TotalSegmentator
    CT an ischial guide sat 479 of its 594 mm2 on the femur, unflagged.)
    The wires, 10 mm below the seat, are warned about too."""
    guide, _ = guide_beside(trimesh.util.concatenate([
        trimesh.creation.box(bounds=[(-25.0, -20.0, 8.0), (-1.0, 20.0, 10.0)]),
        trimesh.creation.box(bounds=[(1.0, -20.0, 8.0), (25.0, 20.0, 10.0)])]))
    assert guide.report["seat_area_on_bone_mm2"] > 1000 and guide.report["seat_area_on_cut_bones_mm2"] == 0.0
    assert [w for w in guide.warnings if "seat" in w and "K-wire" not in w] == [
        "guide x0: its seat rests on other bones: only 0 of 1099 mm2 on the bones the plan cuts (a femur moves); "
        "change guides.approach_lps or guides.footprint_mm"]
    alone, _, _ = make_guide(box_bone(), Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(1.0, 0.0, 0.0), name="x0"),
                             (0.0, 0.0, 1.0))
    assert alone.report["seat_area_on_cut_bones_mm2"] == alone.report["seat_area_on_bone_mm2"]


def test_no_kwire_without_its_diameter_in_bone():
    """Host bone 0.8 mm thick under the seat: the fallback took the deepest
    there was, a wire of no length whose view mesh ended the run in a
    traceback (SVD did not converge). A wire needs its own diameter in bone."""
    bone = box_bone(lo=(-30, -20, -0.8))
    plane = Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(1.0, 0.0, 0.0), name="x0")
    guide, _, config = make_guide(bone, plane, (0.0, 0.0, 1.0))
    assert len(guide.kwires) == 0 and kwire_mesh(guide, config.kwire_diameter_mm) is None
    assert guide.warnings == ("only 0 of guides.kwires = 2 K-wires find host bone under the seat",)


SLAB_MM = 2.0


def overhang_bone():
    """A slab (top at z = 0, 2 mm thick) on a narrower pier: the slab
    overhangs the pier by 8 mm on the +y side; on the -y side a ledge (top
    at z = -15) makes the cut line, and so the slot block, reach low."""
    slab = manifold3d.Manifold.cube((60.0, 40.0, SLAB_MM)).translate((-30.0, -20.0, -SLAB_MM))
    pier = manifold3d.Manifold.cube((60.0, 32.0, 30.0 - SLAB_MM)).translate((-30.0, -20.0, -30.0))
    ledge = manifold3d.Manifold.cube((60.0, 10.0, 15.0)).translate((-30.0, -28.0, -30.0))
    mesh = from_manifold(slab + pier + ledge)
    return trimesh.Trimesh(np.array(mesh.vertices), np.array(mesh.faces), process=False)


def hooked_seat(clearance_mm, thickness_mm):
    """A slab over the overhang bone's top plus a lip down its +y side and
    under the overhang: what a plate that wraps the bone's edge looks like."""
    below = -SLAB_MM - clearance_mm - thickness_mm
    slab = manifold3d.Manifold.cube((60.0, 40.0, thickness_mm)).translate((-30.0, -20.0, clearance_mm))
    lip = manifold3d.Manifold.cube((60.0, 9.8, thickness_mm)).translate((-30.0, 14.0, below))
    # Up into the slab (not just touching it: a union along a shared face is no real plate).
    side = manifold3d.Manifold.cube((60.0, thickness_mm, SLAB_MM + 2 * clearance_mm + 1.5 * thickness_mm)).translate(
        (-30.0, 20.0 + clearance_mm, below))
    return from_manifold(slab + lip + side)


def test_a_guide_over_an_overhang_does_not_hook_under_it():
    bone = overhang_bone()
    plane = Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(1.0, 0.0, 0.0), name="x0")
    hooked = hooked_seat(CLEARANCE_MM, 3.5)
    frame, _ = guide_frame(plane, (0, 0, 1), (0, 0, 0))
    local = frame.local(hooked.vertices)
    # The check can fail: a seat hooked under the overhang does not lift off.
    assert not _lift_off(local[hooked.faces], local, np.asarray(hooked.faces), frame, bone)["removable"]
    guide, _, config = make_guide(bone, plane, (0.0, 0.0, 1.0))
    assert guide.report["lift_off"]["removable"]
    assert guide.report["intersection_with_bone_mm3"] <= 1e-3
    # Independently: nothing of the guide lies under the overhang.
    v = guide.mesh.vertices
    assert not np.any((v[:, 1] > 12.0) & (v[:, 1] < 20.0) & (v[:, 2] < -SLAB_MM))
    # And a ray up from every guide vertex misses the bone.
    rays = trimesh.ray.ray_triangle.RayMeshIntersector(bone)
    hit = rays.intersects_any(v + [0, 0, 1e-6], np.tile([0.0, 0.0, 1.0], (len(v), 1)))
    assert not hit.any()


def test_the_guide_stays_on_the_approach_side_of_the_cut_bone():
    """Past the cut bone's ends the slot block's columns meet another bone
    far below (across the body); the guide reaches down no further than the
    cut face's far end less the terrain's reach, bridges past the ends, and
    meets neither bone."""
    near = box_bone()   # cut by x = 0; its cut face runs down to z = -10
    far = trimesh.creation.box(bounds=[(-30, -60, -110), (30, 60, -100)])
    bones = trimesh.util.concatenate([near, far])
    plane = Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(1.0, 0.0, 0.0), name="x0")
    cut = resect(near, (plane,))
    config = GuidesConfig(enabled=True, approach_lps=(0.0, 0.0, 1.0), contact_clearance_mm=CLEARANCE_MM,
                          kwire_depth_mm=8.0)
    guide = cutting_guide(plane, (0.0, 0.0, 1.0), config, bones=bones, cut_bone=near, host=cut.host,
                          cut_faces=cut.host_cut_faces[0])
    validate_solid(guide.mesh, "guide")
    reach = CLEARANCE_MM + config.wall_mm + TERRAIN_MARGIN_MM
    assert guide.mesh.bounds[0][2] >= -10.0 - reach
    # The block still covers the cut line past both ends of the cut face,
    # where it bridges level with the bone's top instead of hanging down.
    v = guide.mesh.vertices
    assert v[:, 1].min() <= -20.0 - config.wall_mm and v[:, 1].max() >= 20.0 + config.wall_mm
    assert v[np.abs(v[:, 1]) > 20.0 + CLEARANCE_MM + config.wall_mm, 2].min() >= 0.0
    assert guide.report["intersection_with_bone_mm3"] <= 1e-3
    assert guide.report["lift_off"]["removable"]
    assert guide.report["slot"]["midplane_distance_mm"] <= 1e-6


def test_the_block_top_follows_the_bone_along_the_cut_line():
    """A bone with a 20 mm step down halfway along the cut line: the slot
    keeps its depth over both levels, and over the low one the block stands
    only that depth above it (a flat top stood 20 mm higher there)."""
    high = manifold3d.Manifold.cube((60.0, 20.0, 30.0)).translate((-30.0, -20.0, -30.0))
    low = manifold3d.Manifold.cube((60.0, 20.0, 10.0)).translate((-30.0, 0.0, -30.0))
    bone = from_manifold(high + low)   # top at z = 0 for y < 0, z = -20 for y > 0
    plane = Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(1.0, 0.0, 0.0), name="x0")
    guide, _, config = make_guide(bone, plane, (0.0, 0.0, 1.0))
    assert guide.report["slot"]["depth_mm"] == pytest.approx(config.slot_depth_mm, abs=1e-3)
    # The top at the middle of each level, through the block's wall beside
    # the slot: the walls' rim there lies the clearance above the bone
    # within TOP_SPAN_MM (it rises near the step and the bone's ends, where
    # the underside rounds their edges).
    rays = trimesh.ray.ray_triangle.RayMeshIntersector(guide.mesh)
    wall_b = config.slot_width_mm / 2 + config.wall_mm / 2
    origins = np.array([[wall_b, -10.0, 100.0], [wall_b, 10.0, 100.0]])
    hits, index, _ = rays.intersects_location(origins, np.tile([0.0, 0.0, -1.0], (2, 1)))
    top = [hits[index == i, 2].max() for i in range(2)]
    assert top == pytest.approx([CLEARANCE_MM + config.slot_depth_mm, -20.0 + CLEARANCE_MM + config.slot_depth_mm],
                                abs=1e-3)
    assert guide.report["lift_off"]["removable"]
    assert guide.report["intersection_with_bone_mm3"] <= 1e-3


def test_approach_tilted_out_of_the_plane_is_projected_onto_it():
    plane = Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(1.0, 0.0, 0.0), name="x0")
    tilted = (math.sin(math.radians(20)), 0.0, math.cos(math.radians(20)))
    guide, _, _ = make_guide(box_bone(), plane, tilted)
    assert guide.report["approach_tilt_from_plane_deg"] == pytest.approx(20.0, abs=1e-9)
    assert guide.report["approach_lps"] == pytest.approx([0.0, 0.0, 1.0], abs=1e-9)
    assert guide.report["slot"]["midplane_distance_mm"] <= 1e-6


def test_the_envelope_holds_bone_thinner_than_its_grid():
    """A fin 0.1 mm thick standing along the approach, between two rows of
    the 0.25 mm grid's nodes: every point of it lies under the envelope at
    the node nearest to it (before the bone's edges were sampled, the fin
    fell between the nodes and a guide could hook under it)."""
    from pipeline.design.guides import bone_envelope

    fin = trimesh.creation.box(bounds=[[-10.0, 0.07, -5.0], [10.0, 0.17, 8.0]])
    base = trimesh.creation.box(bounds=[[-10.0, -10.0, -8.0], [10.0, 10.0, -5.0]])
    tri = np.concatenate([fin.triangles, base.triangles])
    region = np.array([[-12.0, -12.0], [12.0, 12.0]])
    envelope = bone_envelope(tri, region)
    # No node lies within the fin's 0.07..0.17 band across it.
    assert not np.any((envelope.b > 0.07) & (envelope.b < 0.17))
    rng = np.random.default_rng(3)
    top = np.column_stack([rng.uniform(-10.0, 10.0, 2000), rng.uniform(0.07, 0.17, 2000), np.full(2000, 8.0)])
    side = np.column_stack([rng.uniform(-10.0, 10.0, 2000), np.full(2000, 0.07), rng.uniform(-5.0, 8.0, 2000)])
    points = np.vstack([top, side])
    node = np.round((points[:, :2] - region[0]) / TERRAIN_GRID_MM).astype(int)
    assert np.all(envelope.height[node[:, 0], node[:, 1]] >= points[:, 2] - 1e-9)


def test_a_coarse_terrain_is_the_surface_its_manifold_meshes():
    """``Terrain.coarse`` keeps every k-th node (and the last), cropped to
    a box with one node beyond it; ``heights_at`` gives the height of the
    mesh :meth:`Terrain.manifold` builds, checked against that mesh's own
    triangles (exact column heights), and is exact for a plane."""
    from pipeline.design.guides import Terrain
    from pipeline.geometry.columns import column_extremes

    g = TERRAIN_GRID_MM
    step = 4 * g   # every fourth node
    a = np.arange(41) * g   # 41 nodes: 0, 4, .., 40
    b = np.arange(23) * g   # 23 nodes: 0, 4, .., 20 and 22
    rng = np.random.default_rng(5)
    fine = Terrain(a, b, rng.uniform(0.0, 2.0, (a.size, b.size)))
    coarse = fine.coarse(step)
    assert np.allclose(coarse.a, np.arange(0, 41, 4) * g)
    assert np.allclose(coarse.b, np.array([0, 4, 8, 12, 16, 20, 22]) * g)
    assert np.array_equal(coarse.height, fine.height[::4][:, [0, 4, 8, 12, 16, 20, 22]])
    cropped = fine.coarse(step, (10 * g, 4.8 * g), (16.4 * g, 7.6 * g))
    assert np.allclose(cropped.a, np.array([8, 12, 16, 20]) * g) and np.allclose(cropped.b, np.array([4, 8]) * g)
    on_nodes = fine.coarse(step, (8 * g, 4 * g), (16 * g, 8 * g))   # a node beyond, never on the box
    assert np.allclose(on_nodes.a, np.array([4, 8, 12, 16, 20]) * g)
    assert np.allclose(on_nodes.b, np.array([0, 4, 8, 12]) * g)
    # At the fine nodes, against the coarse manifold's top faces.
    mesh = from_manifold(coarse.manifold(-5.0))
    tri = mesh.triangles[mesh.face_normals[:, 2] > 1e-6]   # the top (walls stand at 0, the floor at -1)
    aa, bb = np.meshgrid(a, b, indexing="ij")
    high, _ = column_extremes(np.column_stack([aa.ravel(), bb.ravel()]), tri)
    assert np.allclose(coarse.heights_at(a, b).ravel(), high, atol=1e-9)
    plane = Terrain(coarse.a, coarse.b, 0.3 * coarse.a[:, None] - 0.7 * coarse.b[None, :] + 1.0)
    assert np.allclose(plane.heights_at(a, b), 0.3 * aa - 0.7 * bb + 1.0, atol=1e-12)


def test_the_slot_depth_is_the_walls_least_height_wherever_it_lies():
    """A wall (local frame: a along the cut line, z up) whose lower rim
    peaks at a = 1.37, between any regular sampling of it: the depth is the
    least height there, 10 - 2.5 = 7.5, not the height at nearby samples."""
    from pipeline.design.guides import _slot_depth

    # The wall at b = 0.5: top at z = 10, rim rising from z = 0 at a = 0 and 4 to z = 2.5 at a = 1.37.
    corners = np.array([[0.0, 0.5, 0.0], [1.37, 0.5, 2.5], [4.0, 0.5, 0.0],
                        [0.0, 0.5, 10.0], [1.37, 0.5, 10.0], [4.0, 0.5, 10.0]])
    faces = np.array([[0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4]])
    depth = _slot_depth(corners, faces, {1.0: np.arange(len(faces))})
    assert depth == pytest.approx(7.5, abs=1e-9)
