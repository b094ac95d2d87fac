"""Fixation (flanges and screws) on an analytic bone and on the phantom seed case.

Truth: on a box "bone" cut by a plane, the host is the box x in [-40, 0]
and a point's distance to its surface is the smallest distance to its six
faces, in closed form: that confirms each screw's reported margin. The
phantom's labels say which bone each point of a screw lies in.
"""

from __future__ import annotations

import dataclasses
import re

import manifold3d
import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from pipeline.bones import LABEL_IDS
from pipeline.config import Config, FixationConfig, Plane, load_config
from pipeline.design.fixation import NORMAL_RADIUS_MM, BoneScene, fix_implant
from pipeline.geometry.meshes import validate_solid
from pipeline.geometry.resect import resect, to_manifold
from pipeline.phantom import pelvis_phantom
from pipeline.run import run_mesh
from pipeline.volume import apply_affine

from ..helpers import COARSE_PELVIS, REPO

CONFIG = FixationConfig(flange_width_mm=15.0, flange_thickness_mm=3.0, flange_clearance_mm=0.5,
                        flange_grid_mm=0.5, screw_diameter_mm=6.5, screws_per_flange=2, min_bone_margin_mm=1.5,
                        min_length_in_bone_mm=20.0, max_length_mm=60.0)
# The tolerance for the flange gap over flat bone.
GAP_TOLERANCE_MM = 0.05
CUT = Plane(point_lps_mm=(0.0, 0.0, 0.0), normal_lps=(1.0, 0.0, 0.0), name="cut")


def box_case(thickness_y_mm: float):
    """A box 80 x thickness x 80 mm (L, P, S) named sacrum (its flange goes on
    the posterior face, y = +thickness / 2), cut at x = 0 (x > 0 removed);
    labels on a 1 mm grid."""
    box = trimesh.creation.box(extents=(80.0, thickness_y_mm, 80.0)).subdivide_to_size(2.0)
    cut = resect(box, (CUT,))
    affine = np.eye(4)
    affine[:3, 3] = [-45.0, -thickness_y_mm / 2 - 5.0, -45.0]
    shape = (91, int(thickness_y_mm) + 11, 91)
    centres = apply_affine(affine, np.indices(shape).reshape(3, -1).T)
    inside = np.all(np.abs(centres) < [40.0, thickness_y_mm / 2, 40.0], axis=1)
    labels = np.where(inside, LABEL_IDS["sacrum"], 0).astype(np.uint8).reshape(shape)
    return cut, BoneScene(bones={"sacrum": box}, labels=labels, affine=affine)


def box_depth(points: np.ndarray, half_y: float) -> np.ndarray:
    """Distance from points inside the host box (x in [-40, 0]) to its surface."""
    x, y, z = points.T
    return np.min([x + 40.0, -x, y + half_y, half_y - y, z + 40.0, 40.0 - z], axis=0)


@pytest.fixture(scope="module")
def thick():
    cut, scene = box_case(40.0)
    return cut, fix_implant(cut, (CUT,), scene, CONFIG)


def test_flange_lies_at_the_clearance_on_the_host_face(thick):
    cut, fix = thick
    (flange,) = fix.report["flanges"]
    assert flange["bone"] == "sacrum" and flange["accessible_side_lps"] == [0.0, 1.0, 0.0]
    # The flat posterior face: vertices of the flange facing it, over the host.
    plate = fix.flanges["cut"]
    on_face = (np.abs(plate.vertices[:, 1] - 20.5) < 0.25) & (plate.vertices[:, 0] < -0.5) \
        & (np.abs(plate.vertices[:, 2]) < 39.0)
    assert on_face.sum() > 100
    np.testing.assert_allclose(plate.vertices[on_face, 1], 20.0 + CONFIG.flange_clearance_mm, atol=GAP_TOLERANCE_MM)
    assert abs(flange["gap_mean_mm"] - CONFIG.flange_clearance_mm) <= GAP_TOLERANCE_MM
    # Never in the host: no flange vertex inside the host box.
    v = plate.vertices
    inside_host = (v[:, 0] < 0) & (np.abs(v[:, 1]) < 20.0) & (np.abs(v[:, 2]) < 40.0)
    assert not inside_host.any()
    # Over the host it reaches flange_width_mm beyond the cut.
    assert v[:, 0].min() == pytest.approx(-CONFIG.flange_width_mm, abs=1e-6)


def test_screws_fit_where_the_bone_is_thick_and_their_margins_are_true(thick):
    cut, fix = thick
    assert len([s for s in fix.screws if s.kind == "flange"]) == CONFIG.screws_per_flange
    for s in fix.screws:
        assert s.length_in_bone_mm >= CONFIG.min_length_in_bone_mm
        assert s.length_mm <= CONFIG.max_length_mm
        # Independent margin: the box's closed-form depth along the axis, past the entry cortex.
        u = s.direction_lps
        # The face it enters through (the flange covers the posterior face and wraps onto z = +-40).
        face = np.argmax(np.abs(s.entry_lps_mm) / [40.0, 20.0, 40.0])
        inward = np.zeros(3)
        inward[face] = -np.sign(s.entry_lps_mm[face])
        assert abs(s.entry_lps_mm[face]) == pytest.approx([40.0, 20.0, 40.0][face], abs=1e-6)
        assert face != 0 and s.entry_lps_mm[1] > 0   # under the flange: not the cut side, the posterior half
        cos = float(u @ inward)
        skip = (s.diameter_mm / 2 + CONFIG.min_bone_margin_mm + 1.0) / cos
        z = np.linspace(skip, s.length_in_bone_mm, 400)
        truth = box_depth(s.entry_lps_mm + z[:, None] * u, 20.0).min() - s.diameter_mm / 2
        assert s.min_margin_mm == pytest.approx(truth, abs=0.05)
        assert truth >= CONFIG.min_bone_margin_mm - 0.05
    a, b = fix.screws[:2]
    assert np.linalg.norm(a.entry_lps_mm - b.entry_lps_mm) >= 2.5 * CONFIG.screw_diameter_mm


def test_fixed_implant_is_one_closed_solid_with_flange_and_holes(thick):
    cut, fix = thick
    validate_solid(fix.implant_fixed, "implant_fixed")
    validate_solid(fix.screws_mesh, "screws")
    assert len(fix.implant_fixed.split(only_watertight=False)) == 1
    r = fix.report
    # Union and subtraction: never more than implant + flanges, never less than that minus the holes.
    # (the flanges reach into the implant's bone to join it: what they add is their part outside it)
    added = r["flanges_outside_implant_mm3"]
    assert 0 < added < r["flanges_volume_mm3"]
    # Measured independently: the flanges less the implant, a boolean of their meshes (report rounds to 0.1 mm3).
    flanges = manifold3d.Manifold.batch_boolean([to_manifold(f, "flange") for f in fix.flanges.values()],
                                                manifold3d.OpType.Add)
    assert added == pytest.approx((flanges - to_manifold(cut.implant, "implant")).volume(), abs=0.051)
    assert r["implant_fixed_volume_mm3"] <= r["implant_volume_mm3"] + added + 1.0
    assert r["implant_fixed_volume_mm3"] >= r["implant_volume_mm3"] + added - r["holes_volume_mm3"] - 1.0
    # A hole per screw through the flange: the screw's axis inside the flange finds no material.
    for s in fix.screws:
        mid = s.entry_lps_mm - s.direction_lps * (CONFIG.flange_clearance_mm + 1.5 * CONFIG.flange_thickness_mm / 2)
        assert not fix.implant_fixed.contains([mid])[0]


def test_flange_stays_within_its_width_of_the_cut_edge():
    """The box of box_case with an arm on top (x in [-40, -2]: it ends 2 mm
    short of the cut plane x = 0, up to z = 100): the arm's posterior face
    lies within flange_width_mm of the plane up to z = 100, but the cut's edge
    ends at z = 40 (the plane leaves the bone there). A strip along the plane
    followed the arm 60 mm past the cut; the flange covers the posterior face
    only within flange_width_mm (plus clearance and thickness: a plate corner
    over a square edge) of the cut's edge, its level set on the 0.5 mm grid."""
    half = 20.0
    body = manifold3d.Manifold.cube((80.0, 2 * half, 80.0), center=True)
    arm = manifold3d.Manifold.cube((38.0, 2 * half, 62.0)).translate((-40.0, -half, 38.0))
    from pipeline.design.plate import manifold_mesh
    bone = manifold_mesh(body + arm)
    cut = resect(bone, (CUT,))
    affine = np.eye(4)
    affine[:3, 3] = [-45.0, -half - 5.0, -45.0]
    shape = (91, int(2 * half) + 11, 151)
    centres = apply_affine(affine, np.indices(shape).reshape(3, -1).T)
    inside = np.all(np.abs(centres - [0, 0, 0]) < [40.0, half, 40.0], axis=1) | np.all(
        (centres > [-40.0, -half, 38.0]) & (centres < [-2.0, half, 100.0]), axis=1)
    labels = np.where(inside, LABEL_IDS["sacrum"], 0).astype(np.uint8).reshape(shape)
    fix = fix_implant(cut, (CUT,), BoneScene(bones={"sacrum": bone}, labels=labels, affine=affine),
                      dataclasses.replace(CONFIG, screws_per_flange=0))
    v = fix.flanges["cut"].vertices
    posterior = v[(v[:, 1] > half) & (v[:, 0] < -1.0)]
    reach = CONFIG.flange_width_mm + CONFIG.flange_clearance_mm + CONFIG.flange_thickness_mm
    # Within reach of the cut's top edge (x = 0, z = 40), to a grid step.
    assert posterior[:, 2].max() <= 40.0 + reach + CONFIG.flange_grid_mm
    # And still the whole width beside the cut: past the top edge on the arm, whose face nearest the
    # plane (x = -2, the plate 0.5 mm off it) lies sqrt(reach^2 - 2^2 - 0.5^2) from the edge, to a grid step.
    assert posterior[:, 2].max() >= 40.0 + np.sqrt(reach**2 - 2.0**2 - CONFIG.flange_clearance_mm**2) \
        - CONFIG.flange_grid_mm
    assert v[:, 0].min() == pytest.approx(-CONFIG.flange_width_mm, abs=1e-6)
    validate_solid(fix.implant_fixed, "implant_fixed")


def test_the_bones_normal_under_a_flange_on_a_round_bone_is_radial():
    """A flange wrapped round a cylindrical bone of radius 20 mm at 0.5 mm
    clearance (a tube's inner wall, its faces facing the bone, 256 about the
    axis: 1.4 degrees apart): the normal the screw search aims from is the
    radial one, within half that step."""
    from pipeline.design.fixation import _bone_normals
    tube = trimesh.creation.annulus(r_min=20.5, r_max=23.5, height=40.0, sections=256)
    centres = tube.triangles_center
    faces = np.flatnonzero((np.linalg.norm(centres[:, :2], axis=1) < 21.0) & (np.abs(centres[:, 2]) < 19.0))
    picks = np.arange(0, len(faces), 7)
    radial = centres[faces[picks]] * [1.0, 1.0, 0.0]
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    cos = np.sum(_bone_normals(tube, faces, picks) * radial, axis=1)
    assert np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).max() <= 0.7


def test_no_screw_where_the_bone_is_thinner_than_screw_and_margins():
    # 9 mm < 6.5 + 2 x 1.5 = 9.5 mm: no corridor.
    cut, scene = box_case(9.0)
    fix = fix_implant(cut, (CUT,), scene, CONFIG)
    assert fix.screws == ()
    # The warning says why: no trajectory holds one, the bone is too thin (no forbidden zone near).
    (warning,) = [w for w in fix.warnings if "0 of 2 screws" in w]
    assert "hold one; the rest ran out of bone around the screw (100 %)" in warning
    validate_solid(fix.implant_fixed, "implant_fixed")


def test_no_screw_where_another_bone_lies_under_the_flange_and_the_warning_says_so():
    """The thick box, its labels holding another bone in a slab 10-15 mm
    under the flanged posterior face (y from 5 to 10 mm; the face at 20),
    from 3 mm behind the cut face on: past the entry cortex (radius + margin
    + 1 = 5.75 mm) no trajectory keeps the screw's radius + margin (4.75 mm)
    from it for 20 mm. The warning names the forbidden zones as what
    stopped most of them (the rest, by the cut face or pointing out of the
    box, ran out of bone), and on a sacral flange points to iliosacral screws."""
    cut, scene = box_case(40.0)
    centres = apply_affine(scene.affine, np.indices(scene.labels.shape).reshape(3, -1).T)
    slab = ((centres[:, 1] >= 5.0) & (centres[:, 1] <= 10.0) & (centres[:, 0] <= -3.0)).reshape(scene.labels.shape)
    labels = np.where(slab & (scene.labels > 0), LABEL_IDS["hip_right"], scene.labels).astype(np.uint8)
    fix = fix_implant(cut, (CUT,), dataclasses.replace(scene, labels=labels), CONFIG)
    assert fix.screws == ()
    (warning,) = [w for w in fix.warnings if "0 of 2 screws" in w]
    share = re.search(r"hold one; the rest came too near the sacral canal, a foramen or another bone \((\d+) %\)",
                      warning)
    assert share and int(share.group(1)) > 50
    assert warning.endswith("iliosacral = true adds a screw through the contact face into S1")


@pytest.mark.slow
def test_phantom_seed_case_flanges_and_an_iliosacral_screw_into_s1():
    volume = pelvis_phantom(**COARSE_PELVIS).volume
    config = load_config(REPO / "configs" / "default.toml")
    config = dataclasses.replace(config, implant=dataclasses.replace(
        config.implant, fixation=FixationConfig(iliosacral=True, screws_per_flange=2)))
    result = run_mesh(volume, config)
    fix = result.fixation
    flanges = {f["plane"]: f for f in fix.report["flanges"]}
    assert flanges["sacral_ala"]["bone"] == "sacrum" and flanges["supra_acetabular"]["bone"] == "hip_left"
    assert all(f["area_on_bone_mm2"] > 500 and f["gap_min_mm"] > 0 for f in flanges.values())
    validate_solid(fix.implant_fixed, "implant_fixed")
    iliosacral = [s for s in fix.screws if s.kind == "iliosacral"]
    assert len(iliosacral) >= 1
    for s in fix.screws:
        assert s.min_margin_mm >= config.implant.fixation.min_bone_margin_mm
    # In the sacrum past its entry, never in the canal: every point of the
    # axis in host bone carries the sacrum's label (the canal has none).
    inv = np.linalg.inv(volume.affine)
    for s in iliosacral:
        z = np.arange(s.diameter_mm, s.length_in_bone_mm, 1.0)
        index = np.rint(apply_affine(inv, s.entry_lps_mm + z[:, None] * s.direction_lps)).astype(int)
        assert np.all(result.labels[tuple(index.T)] == LABEL_IDS["sacrum"])
    r = fix.report
    assert r["implant_fixed_volume_mm3"] >= r["implant_volume_mm3"] + r["flanges_outside_implant_mm3"] \
        - r["holes_volume_mm3"] - 1.0
    assert result.report["implant"]["fixation"] is r


def test_fixation_config_is_off_by_default_and_checked():
    assert Config().implant.fixation is None
    from pipeline.config import parse_config
    from pipeline.errors import ConfigError
    assert parse_config({"implant": {"fixation": {}}}).implant.fixation == FixationConfig()
    for bad, key in (({"flange_width_mm": "wide"}, "flange_width_mm"), ({"screws_per_flange": 2.5}, "screws_per_flange"),
                     ({"iliosacral": 1}, "iliosacral"), ({"min_bone_margin_mm": -1}, "min_bone_margin_mm"),
                     ({"screw_size": 6}, "screw_size")):
        with pytest.raises(ConfigError, match=key):
            parse_config({"implant": {"fixation": bad}})


@pytest.mark.real_data
@pytest.mark.slow
def test_real_ct_screws_inside_bone_with_their_margins(tmp_path):
    from ..helpers import REAL_CT
    from pipeline.cli import main as cli_main
    import json
    case = REAL_CT / "pelvic_ref_003"
    if not case.is_dir():
        pytest.skip("real data not present (../shared/real_ct/pelvic_ref_003)")
    plan = tmp_path / "plan.toml"
    plan.write_text((REPO / "configs" / "pelvic_ref_003.toml").read_text() + "\n[implant.fixation]\niliosacral = true\n")
    out = tmp_path / "out"
    assert cli_main(["mesh", str(case), "--config", str(plan), "--out", str(out), "--quiet", "--no-qa"]) == 0
    report = json.loads((out / "report.json").read_text())
    fixation = report["implant"]["fixation"]
    assert {f["bone"] for f in fixation["flanges"]} == {"sacrum", "hip_left"}
    assert all(f["gap_min_mm"] > 0 for f in fixation["flanges"])
    # The sacral flange lies over the left column of foramina beside the canal
    # (its flange screws find no corridor); the warning says that is what stops them.
    for w in report["warnings"]:
        if w.startswith("fixation:") and "sacral_ala flange" in w and "screws fit" in w:
            assert "the rest came too near the sacral canal, a foramen or another bone" in w, w
    assert fixation["screws"], "no screw fits"
    for s in fixation["screws"]:
        assert s["min_bone_margin_mm"] >= 1.5 and s["nearest_forbidden_mm"] >= 1.5
        assert s["length_in_bone_mm"] >= 20.0
    # Each flange screw within max_screw_angle_deg of the bone's inward normal
    # at its entry, measured on the host as read back: its faces' area-weighted
    # normal within NORMAL_RADIUS_MM (the search averages the flange's faces
    # there, 0.5 mm off the bone: up to 0.8 degrees apart, measured). Before,
    # the search's normal ran from a flange face to the nearest bone, 0.06-2 mm
    # away, and an iliac screw went in 35 degrees off.
    host = trimesh.load(out / "host.stl")
    near = cKDTree(host.triangles_center)
    flange_screws = [s for s in fixation["screws"] if s["kind"] == "flange"]
    assert flange_screws
    for s in flange_screws:
        faces = near.query_ball_point(s["entry_lps_mm"], NORMAL_RADIUS_MM)
        inward = -(host.face_normals[faces] * host.area_faces[faces][:, None]).sum(axis=0)
        angle = np.degrees(np.arccos(np.dot(s["direction_lps"], inward) / np.linalg.norm(inward)))
        assert angle <= fixation["settings"]["max_screw_angle_deg"] + 2.0, (s["plane"], angle)
    validate_solid(trimesh.load(out / "screws.stl"), "screws.stl as read")
    if (out / "implant_fixed.stl").exists():
        validate_solid(trimesh.load(out / "implant_fixed.stl"), "implant_fixed.stl as read")
    else:   # only with the warning that says why
        assert any("implant_fixed.stl is not written" in w for w in report["warnings"])


def test_flange_pieces_apart_from_the_implant_are_dropped_and_cavities_filled():
    """An implant with an inner cavity, one flange joined to it and one apart:
    the piece apart goes, named in a warning; the cavity (decompose returns
    it as a shell of negative volume, with the implant's surface) is not
    counted as a piece apart, and is filled: an STL holds no inner shell."""
    import manifold3d

    from pipeline.design.fixation import _largest_with_implant

    cube = manifold3d.Manifold.cube
    implant = (cube((20.0, 20.0, 20.0)) - cube((4.0, 4.0, 4.0)).translate((8.0, 8.0, 8.0))).as_original()
    joined = cube((10.0, 10.0, 2.0)).translate((15.0, 5.0, 20.0 - 1.0))
    apart = cube((3.0, 3.0, 3.0)).translate((40.0, 0.0, 0.0))
    warnings: list[str] = []
    fixed = _largest_with_implant(implant + joined + apart, implant.original_id(), warnings)
    validate_solid(fixed, "implant_fixed")
    assert fixed.volume == pytest.approx(20.0 ** 3 + 10 * 10 * 2 - 5 * 10 * 1, abs=1e-6)
    assert len(warnings) == 1 and "1 flange piece" in warnings[0] and "(27 mm3)" in warnings[0]


def test_a_flange_apart_from_the_implant_or_off_the_bone_is_left_out_with_its_screws(monkeypatch):
    """A flange wholly apart from the implant holds nothing to it (on a 3 mm
    CT a cut 2 mm beside the SI joint gave a sacral flange of 7.9 cm3 that
    was dropped from the STL but still reported, with its screws); one that
    touches no host bone was fused in as a block beside the bone (report.json
    then held NaN gaps); one with no bone surface in its footprint ended the
    run ("plate: nothing left ...", naming no plane). Each is left out, with
    its screws and a warning naming the plane."""
    from pipeline.design import fixation
    from pipeline.design.fixation import _joined_flanges
    from pipeline.design.plate import PlateContact

    cube = manifold3d.Manifold.cube
    implant = cube((20.0, 20.0, 20.0)).as_original()
    joined = cube((10.0, 10.0, 2.0)).translate((15.0, 5.0, 19.0))
    apart = cube((10.0, 10.0, 2.0)).translate((40.0, 0.0, 0.0))
    kept, gone = _joined_flanges(implant + joined + apart, implant.original_id(), {0: joined, 1: apart})
    # The joined flange adds its part beyond the cube: 5 x 10 x 2 beside it and 5 x 10 x 1 on top.
    assert gone == [1] and kept.volume() == pytest.approx(20.0 ** 3 + 5 * 10 * 2 + 5 * 10 * 1, abs=1e-6)
    assert _joined_flanges(implant + joined, implant.original_id(), {0: joined})[1] == []

    cut, scene = box_case(40.0)
    far = scene.bones["sacrum"].copy()
    far.apply_translation((0.0, 60.0, 0.0))   # its posterior face beyond the flange's reach of the cut's edge
    fix = fix_implant(cut, (CUT,), dataclasses.replace(scene, bones={"sacrum": far}), CONFIG)
    assert fix.flanges == {} and fix.report["flanges"] == [] and fix.screws == ()
    assert fix.warnings == ("fixation: no surface of the sacrum faces the cut flange's side within its "
                            "footprint: no flange there",)
    assert fix.implant_fixed.volume == pytest.approx(cut.implant.volume, rel=1e-9)

    monkeypatch.setattr(fixation, "plate_contact", lambda *a, **k: PlateContact(np.zeros(0, int), 0.0, *[np.nan] * 3))
    fix = fix_implant(cut, (CUT,), scene, CONFIG)
    assert fix.flanges == {} and fix.report["flanges"] == [] and fix.screws == ()
    assert fix.warnings == ("fixation: the cut flange touches no bone (sacrum): left out",)


def test_the_flange_goes_on_the_bone_under_most_of_the_cut_face_among_the_planes_structures():
    """Three small triangles on the hip bone against one large one on the
    sacrum: by count the hip bone, by area the sacrum (a 3 mm CT's sacral
    cut, 1277 mm2 on the sacrum and 1519 mm2 on a loose fragment of ilium
    in more triangles, put its flange on the fragment). A plane naming its
    structures gets one of them."""
    from pipeline.design.fixation import _cut_bone

    small = [[[-3, 0, 0], [-2, 0, 0], [-3, 0, 1]], [[-3, 0, 2], [-2, 0, 2], [-3, 0, 3]],
             [[-3, 0, 4], [-2, 0, 4], [-3, 0, 5]]]
    large = [[[2, 0, 0], [8, 0, 0], [2, 0, 6]]]
    host = trimesh.Trimesh(*trimesh.triangles.to_kwargs(np.array(small + large, dtype=float)).values(),
                           process=False)
    affine = np.eye(4)
    affine[:3, 3] = [-10.0, -2.0, -2.0]
    centres = apply_affine(affine, np.indices((21, 5, 12)).reshape(3, -1).T)
    labels = np.where(centres[:, 0] < 0, LABEL_IDS["hip_left"], LABEL_IDS["sacrum"]).astype(np.uint8)
    scene = BoneScene(bones={"hip_left": host, "sacrum": host}, labels=labels.reshape(21, 5, 12), affine=affine)
    faces = np.arange(4)
    assert _cut_bone(host, faces, scene) == "sacrum"
    assert _cut_bone(host, faces, scene, ("hip_left",)) == "hip_left"
    assert _cut_bone(host, faces, scene, ("femur_left",)) is None


def test_iliosacral_screws_asked_for_with_no_sacral_cut_face_are_warned_about():
    """The box bone labelled hip_left: no cut face lies on the sacrum, so no
    iliosacral screw can be tried. It was skipped without a word (on a 3 mm
    CT whose sacral cut's flange had gone onto a fragment of ilium)."""
    cut, scene = box_case(40.0)
    hip = np.where(scene.labels > 0, LABEL_IDS["hip_left"], 0).astype(np.uint8)
    scene = dataclasses.replace(scene, bones={"hip_left": scene.bones["sacrum"]}, labels=hip)
    fix = fix_implant(cut, (CUT,), scene, dataclasses.replace(CONFIG, iliosacral=True, screws_per_flange=0))
    assert not any(s.kind == "iliosacral" for s in fix.screws)
    assert "fixation: iliosacral = true, but no cut face lies on the sacrum: no iliosacral screw" in fix.warnings
    fix = fix_implant(cut, (CUT,), box_case(40.0)[1], dataclasses.replace(CONFIG, iliosacral=True,
                                                                          screws_per_flange=0))
    assert not any("no cut face lies on the sacrum" in w for w in fix.warnings)
