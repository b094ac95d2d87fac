"""Joint bridges on two boxes 3 mm apart, cut through both by one plane:
the removed region holds a piece of each, and the bridge fills the space
between them (the joint) inside the region, BRIDGE_INSET_MM short of the
plane; the host is the cut without the bridge."""

from __future__ import annotations

import pytest
import trimesh

from pipeline.config import Plane
from pipeline.geometry import resect
from pipeline.geometry.bridge import BRIDGE_GRID_MM, BRIDGE_INSET_MM, joint_gap_mm

GAP_MM = 3.0
HALF = 20.0
# Removed: z > 0, the upper half of both boxes.
CUT = Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(0.0, 0.0, 1.0), name="cut")


def two_bones(gap_mm: float = GAP_MM) -> dict[str, trimesh.Trimesh]:
    """Two boxes ``gap_mm`` apart along x, their faces in 1 mm triangles (a CT mesh's vertices lie a voxel apart)."""
    a = trimesh.creation.box(bounds=[(-40.0, -HALF, -HALF), (-gap_mm / 2, HALF, HALF)]).subdivide_to_size(1.0)
    b = trimesh.creation.box(bounds=[(gap_mm / 2, -HALF, -HALF), (40.0, HALF, HALF)]).subdivide_to_size(1.0)
    return {"hip_left": a, "sacrum": b}


def test_the_joint_is_filled_inside_the_region_and_the_host_is_the_plain_cut():
    bones = two_bones()
    cut = resect(bones, (CUT,), joint_gap_mm=joint_gap_mm((1.0, 1.0, 1.0)))
    info = cut.shells
    assert info["joints_bridged"] == 1
    plain = resect(trimesh.util.concatenate(list(bones.values())), (CUT,))
    assert len(cut.implant.split(only_watertight=False)) == 1 and len(plain.implant.split(only_watertight=False)) == 2
    # The host and the contact face are the plain cut's.
    assert cut.host.volume == pytest.approx(plain.host.volume, rel=1e-9)
    contact = cut.implant.area_faces[cut.implant_contact_faces[0]].sum()
    assert contact == pytest.approx(plain.implant.area_faces[plain.implant_contact_faces[0]].sum(), rel=1e-9)
    # Inside the region the gap is metal; within the inset of the plane it stays open.
    inside = cut.implant.contains([[0.0, 0.0, 10.0], [0.0, -HALF + 1.0, 19.0], [0.0, 0.0, BRIDGE_INSET_MM / 2],
                                   [0.0, 0.0, -10.0]])
    assert inside.tolist() == [True, True, False, False]
    # What it adds: the gap's slab beyond the inset, and fillets along the joint's rim within
    # reach of both bones: no wider than the gap and a reach either side, a reach high (to a
    # grid step over the bridge's faces).
    added = cut.implant.volume - plain.implant.volume
    slab = GAP_MM * 2 * HALF * (HALF - BRIDGE_INSET_MM)
    reach = joint_gap_mm((1.0, 1.0, 1.0)) / 2 + 1.5 * BRIDGE_GRID_MM
    rim = (HALF - BRIDGE_INSET_MM) * 2 + 2 * HALF
    fillets = rim * (GAP_MM + 2 * reach) * reach
    assert slab - 2 * HALF * HALF * BRIDGE_GRID_MM <= added <= slab + fillets
    assert info["bridge_volume_mm3"] == pytest.approx(added, abs=1.0)


@pytest.mark.parametrize("names, gap_mm", [(("hip_left", "femur_left"), GAP_MM), (("hip_left", "sacrum"), 8.0)])
def test_a_hip_joint_or_a_wider_space_is_not_bridged(names, gap_mm):
    """A hip joint stays a joint (an implant fused to the femoral head would
    not move); bones farther apart than a joint space are no joint."""
    bones = dict(zip(names, two_bones(gap_mm).values()))
    cut = resect(bones, (CUT,), joint_gap_mm=joint_gap_mm((1.0, 1.0, 1.0)))
    assert {k: cut.shells[k] for k in ("joints_bridged", "bridge_volume_mm3")} == {"joints_bridged": 0,
                                                                                  "bridge_volume_mm3": 0.0}
    assert cut.shells["implant_shells"] == 2
    assert cut.implant.volume == pytest.approx(sum(b.volume for b in bones.values()) / 2, rel=1e-9)


def test_the_joint_space_bridged_grows_with_the_voxels():
    """A joint's 4 mm and a voxel either side, where each bone's half-maximum
    surface may lie: on 3 mm voxels the sacroiliac joint's surfaces were
    5-7 mm apart over most of it and a 6 mm limit bridged nothing."""
    assert joint_gap_mm((1.0, 0.8, 0.8)) == 6.0 and joint_gap_mm((3.0, 0.7, 0.7)) == 10.0


def test_a_bridge_whose_seams_stay_unclean_leaves_the_bones_apart(monkeypatch):
    """Where the union leaves defects an STL reader would see on every grid
    shift tried, the bones are returned as they were (the run then warns
    that the implant is in pieces) rather than a bone the cut would refuse."""
    import pipeline.geometry.bridge as bridge

    tried = []
    monkeypatch.setattr(bridge, "reader_defects",
                        lambda mesh, **_: tried.append(len(mesh.faces)) or {"needle_triangles": 1})
    bones = two_bones()
    cut = resect(bones, (CUT,), joint_gap_mm=joint_gap_mm((1.0, 1.0, 1.0)))
    assert len(tried) == len(bridge.GRID_SHIFTS)
    assert {k: cut.shells[k] for k in ("joints_bridged", "bridge_volume_mm3", "joints_not_bridged")} == {
        "joints_bridged": 0, "bridge_volume_mm3": 0.0, "joints_not_bridged": 1}
    assert cut.shells["implant_shells"] == 2
    assert cut.implant.volume == pytest.approx(sum(b.volume for b in bones.values()) / 2, rel=1e-9)


def test_a_pocket_the_bridge_closes_off_is_filled_and_the_implant_is_one_clean_solid():
    """A pit in one bone's joint face, too wide for the bridge to fill from
    its rim: the bridge seals it off from the outside, and the sealed space
    is filled (an inner shell would be a void inside the printed implant).
    The faces the cut leaves beside its own (slivers where the plane meets
    the subdivided walls) are the cap triangulation's, not defects of the
    bridge: they do not keep the joint from being bridged."""
    from pipeline.geometry.meshes import face_shells, validate_solid

    pit = trimesh.creation.box(bounds=[(-GAP_MM / 2 - 10.0, -7.0, 3.0), (-GAP_MM / 2 + 1.0, 7.0, 17.0)])
    a = trimesh.creation.box(bounds=[(-40.0, -HALF, -HALF), (-GAP_MM / 2, HALF, HALF)])
    bones = {"hip_left": a.difference(pit, engine="manifold").subdivide_to_size(1.0), "sacrum": two_bones()["sacrum"]}
    cut = resect(bones, (CUT,), joint_gap_mm=joint_gap_mm((1.0, 1.0, 1.0)))
    assert cut.shells["joints_bridged"] == 1 and "joints_not_bridged" not in cut.shells
    validate_solid(cut.implant, "implant")
    assert len(face_shells(cut.implant)[1]) == 1
    # The pit's middle and the joint space in front of it: more than half a joint's width from both bones.
    assert cut.implant.contains([[-GAP_MM / 2 - 5.0, 0.0, 10.0], [0.0, 0.0, 10.0]]).all()
