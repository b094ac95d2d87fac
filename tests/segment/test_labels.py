"""Bone labels on the analytic pelvis phantom: every bone told apart across
its 3 mm joint spaces, solid, accurately surfaced, and only the configured
structures cut.

Truth comes from the generator: its label of every voxel centre and its
signed distance to each bone's surface.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pipeline.config import Config, ResectionConfig, load_config, parse_config
from pipeline.errors import ConfigError
from pipeline.evaluate import phantom_figures
from pipeline.bones import LABEL_IDS
from pipeline.segment.labels import label_bones
from pipeline.run import run_mesh

from ..helpers import REPO, dice, winding_number

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def figures():
    return phantom_figures("sample")


def phantom_landmark(name: str) -> np.ndarray:
    from pipeline.phantom.analytic import pelvis_phantom, preset

    return pelvis_phantom(**preset("sample")).landmarks_lps_mm[name]


def test_every_bone_matches_its_truth_label(figures):
    """Dice >= 0.98 per bone. At the sample's 2.0 x 1.5 x 1.5 mm voxels a
    one-voxel error over a bone's whole surface costs ~5-8 % Dice, so this
    admits sub-voxel boundary error only, and a bone glued to its neighbour
    (or split off) fails by far more."""
    per_label, result, _ = figures
    assert set(per_label) == {"hip_left", "hip_right", "sacrum", "femur_left", "femur_right", "lumbar"}
    for name, values in per_label.items():
        assert values["dice"] >= 0.98, (name, values)


def test_every_bone_mesh_lies_on_its_truth_surface(figures):
    """Mean |distance| of each bone's mesh vertices to its own analytic
    surface <= 0.3 mm: a fifth of the finest voxel spacing (1.5 mm)."""
    per_label, _, _ = figures
    for name, values in per_label.items():
        assert values["msd_mm"] <= 0.3, (name, values)


def test_femoral_head_spheres_sit_in_the_joint_spaces(figures):
    """The fitted sphere of each hip joint is reported: on the phantom its
    centre is the head's (within half the finest voxel, 0.75 mm) and its
    radius the middle of the joint space: head radius 23 mm + half the 3 mm
    gap, within 0.5 mm."""
    from pipeline.phantom.analytic import JOINT_GAP_MM

    _, result, volume = figures
    heads = result.report["segmentation"]["femoral_heads"]
    assert set(heads) == {"femur_left", "femur_right"}
    for name, side in (("femur_left", "left"), ("femur_right", "right")):
        truth = phantom_landmark(f"{side}_femoral_head_centre")
        assert np.linalg.norm(np.subtract(heads[name]["centre_lps_mm"], truth)) <= 0.75
        assert heads[name]["radius_mm"] == pytest.approx(23.0 + JOINT_GAP_MM / 2, abs=0.5)


@pytest.mark.parametrize("spacing_mm, shape", [((2.0, 1.5, 1.5), (100, 184, 232)), ((3.0, 1.5, 1.5), (67, 184, 232))])
def test_spaces_between_and_within_bones_are_never_filled(spacing_mm, shape):
    """The marrow fills (3D, per slice, the ray test, the bridged plane fill
    on thick slices) keep out of the obturator foramina (holes through one
    bone, closed rings in their own plane), the symphysis gap and the pelvic
    inlet (spaces enclosed by several bones): within 8 mm of their centres
    no voxel is labelled that lies more than 1 mm outside every true bone:
    half the 2 mm slice step, over which the surface between two slices is
    interpolated (one voxel centre of the 3 mm symphysis gap lies 0.78 mm
    out). A filled space fails by millimetres."""
    from pipeline.phantom.analytic import pelvis_phantom

    phantom = pelvis_phantom(shape=shape, spacing_mm=spacing_mm)
    labels = run_mesh(phantom.volume, Config()).labels
    marks = phantom.landmarks_lps_mm
    centres = {"left obturator foramen": marks["left_obturator_foramen_centre"],
               "right obturator foramen": marks["right_obturator_foramen_centre"],
               "symphysis": marks["symphysis"],
               "pelvic inlet": (marks["sacral_promontory"] + marks["symphysis"]) / 2.0}
    index = np.argwhere(np.ones(labels.shape, dtype=bool))
    lps = phantom.volume.index_to_lps(index)
    for name, centre in centres.items():
        near = np.linalg.norm(lps - centre, axis=1) < 8.0
        outside = np.min([phantom.label_sdf_mm(label, lps[near]) for label in phantom.label_names], axis=0) > 1.0
        assert outside.sum() > 20, name  # a space, in the truth
        assert not (labels[tuple(index[near][outside].T)] > 0).any(), name


def test_contrast_and_calcifications_are_never_bone():
    """A contrast-enhanced scan: iliac arteries at 350 HU with calcified wall
    plaques, a bladder full of contrast at 400 HU and phleboliths at 900 HU,
    all above the 200 HU bone threshold. None of it is labelled (no labelled
    voxel lies more than 2 mm from a true bone surface), and the bones are
    labelled as well as without contrast."""
    from pipeline.phantom.analytic import pelvis_phantom, preset

    phantom = pelvis_phantom(**preset("sample"), contrast=True)
    volume = phantom.volume
    artery, bladder = volume.lps_to_index(np.array([[34.0, -60.0, 40.0], [0.0, -48.0, 2.0]])).round().astype(int)
    assert volume.hu[tuple(artery)] > 300 and volume.hu[tuple(bladder)] > 300  # above the bone threshold
    result = run_mesh(volume, Config())
    stray = np.argwhere((result.labels > 0) & (phantom.labels == 0))
    points = volume.index_to_lps(stray)
    distance = np.min([phantom.label_sdf_mm(label, points) for label in phantom.label_names], axis=0)
    assert (distance <= 2.0).all(), points[distance > 2.0][:5]
    assert_bones_match(phantom, result.labels, 0.98)


def test_osteoporotic_bones_are_told_apart_and_filled():
    """Osteoporotic bone: a 600 HU cortex over cancellous bone at 100 HU,
    below the threshold. Blurred, the cortex barely reaches the default core
    level (at the fixed 500 HU every hip and femur lost its name: Dice 0);
    the level follows the bone's brightness down, and every bone is labelled
    and filled solid to Dice >= 0.98."""
    from pipeline.phantom.analytic import pelvis_phantom, preset

    phantom = pelvis_phantom(**preset("sample"), osteoporotic=True)
    interior = phantom.labels > 0
    assert np.median(phantom.volume.hu[interior]) < Config().segment.threshold_hu
    result = run_mesh(phantom.volume, Config())
    assert result.report["segmentation"]["core_hu"] < Config().segment.core_hu
    assert_bones_match(phantom, result.labels, 0.98)


def test_femoral_head_never_shares_a_shell_with_the_acetabulum(figures):
    _, result, volume = figures
    from pipeline.phantom.analytic import pelvis_phantom, preset
    lm = pelvis_phantom(**preset("sample")).landmarks_lps_mm
    for side in ("left", "right"):
        head = lm[f"{side}_acetabulum_centre"]  # the femoral head's centre
        femur = result.label_meshes[f"femur_{side}"]
        hip = result.label_meshes[f"hip_{side}"]
        assert winding_number(femur, head) == pytest.approx(1.0, abs=1e-6)
        assert winding_number(hip, head) == pytest.approx(0.0, abs=1e-6)
        # Neighbouring bones' meshes keep at least half a voxel apart (each
        # surface stays within half a voxel of its own bone in the gap voxel).
        gap_mm = cKDTree(femur.vertices).query(hip.vertices)[0].min()
        assert gap_mm >= 0.5 * volume.spacing_mm.min() * 0.99, side


def test_labels_never_touch(figures):
    _, result, _ = figures
    labels = result.labels
    for axis in range(3):
        a, b = np.moveaxis(labels, axis, 0)[:-1], np.moveaxis(labels, axis, 0)[1:]
        assert not ((a > 0) & (b > 0) & (a != b)).any()


def test_couch_is_never_labelled(figures):
    _, result, volume = figures
    from pipeline.phantom.analytic import pelvis_phantom, preset
    phantom = pelvis_phantom(**preset("sample"))
    dense = np.argwhere(volume.hu > 300)
    couch = dense[phantom.sdf_mm(volume.index_to_lps(dense)) > 5.0]
    assert len(couch) > 1000
    assert not result.labels[tuple(couch.T)].any()


def test_only_the_configured_structures_are_cut():
    """Plan: the default left iliac resection, but only hip_left and sacrum
    may be cut. A plane through the left femur too (an extra caudal plane
    would reach it) must leave the femur whole."""
    from pipeline.phantom.analytic import pelvis_phantom, preset
    phantom = pelvis_phantom(**preset("sample"))
    plan = load_config(REPO / "configs" / "default.toml")
    config = Config(resection=ResectionConfig(planes=plan.resection.planes, structures=("hip_left", "sacrum")))
    result = run_mesh(phantom.volume, config)
    assert set(result.context) == {"hip_right", "femur_left", "femur_right", "lumbar"}
    implant = result.implant
    lm = phantom.landmarks_lps_mm
    assert winding_number(implant, lm["left_si_joint"] + [8.0, 0, 0]) == pytest.approx(1.0, abs=1e-6)
    assert winding_number(result.host, lm["right_si_joint"] - [8.0, 0, 0]) == pytest.approx(0.0, abs=1e-6)
    # Host + implant are exactly the cut structures; the femur is untouched.
    cut = sum(result.label_meshes[n].volume for n in ("hip_left", "sacrum"))
    assert result.host.volume + implant.volume == pytest.approx(cut, rel=1e-3)
    femur = result.context["femur_left"]
    assert femur.volume == pytest.approx(result.label_meshes["femur_left"].volume, rel=1e-12)
    # Every implant vertex lies inside hip_left or sacrum's labelled bone.
    assert implant.bounds[0, 0] > 0


@pytest.mark.parametrize("value, expected", [
    (["hip_left", "femur_middle"], "resection.structures[1]"),
    ([], "resection.structures must be a non-empty list"),
    ("hip_left", "resection.structures must be a non-empty list"),
])
def test_bad_structures_name_the_key(value, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        parse_config({"resection": {"structures": value}})


def test_pockets_inside_a_bone_are_filled_but_other_bones_are_kept():
    """A hollow cube of label 1 around an empty pocket and a separate small
    label-2 cube: the pocket joins label 1, label 2 is untouched."""
    from pipeline.geometry.surface import fill_label_cavities
    labels = np.zeros((12, 12, 20), dtype=np.uint8)
    labels[1:11, 1:11, 1:11] = 1
    labels[4:7, 4:7, 4:7] = 0            # empty pocket: enclosed, becomes bone
    labels[2:9, 2:9, 14:18] = 2          # another bone, outside
    out = fill_label_cavities(labels)
    assert (out[4:7, 4:7, 4:7] == 1).all()
    assert (out == 2).sum() == (labels == 2).sum()
    assert (out == 0).sum() == (labels == 0).sum() - 27


def distance_from(shape, centre) -> np.ndarray:
    """Distance (voxels) of every voxel centre from ``centre``."""
    return np.linalg.norm(np.indices(shape).transpose(1, 2, 3, 0) - np.asarray(centre, float), axis=-1)


def assert_bones_match(phantom, labels: np.ndarray, floor: float) -> None:
    """Dice of every bone of ``labels`` against the phantom's truth >= ``floor``."""
    for label, name in phantom.label_names.items():
        assert dice(labels == LABEL_IDS[name], phantom.labels == label) >= floor, name


def test_femurs_apart_from_their_hips_on_1mm_slices_need_no_head_sphere():
    """The phantom on a 1 mm grid: the joint spaces part femur and hip bone
    already, so no head sphere is looked for, the report says they are apart
    instead of warning that the head was not found (as it did on the bench
    phantom), and every bone matches the truth to Dice >= 0.98."""
    from pipeline.phantom.analytic import pelvis_phantom
    from pipeline.qa.report_html import label_warnings

    phantom = pelvis_phantom(shape=(200, 276, 348), spacing_mm=(1.0, 1.0, 1.0))
    result = run_mesh(phantom.volume, Config())
    stats = result.report["segmentation"]
    assert stats["femoral_heads"] == {}
    assert stats["femurs_apart_from_hip"] == ["femur_left", "femur_right"]
    assert not [w for w in label_warnings(stats, {"core_hu": Config().segment.core_hu}) if "head" in w]
    assert_bones_match(phantom, result.labels, 0.98)


def test_enclosed_directions_count_the_six_axis_rays():
    """A closed cubic shell: inside, all six rays meet it; a face taken away
    leaves five, unless that face is the scan's edge (bone beyond the field
    of view); outside, at most four (one of each opposite pair)."""
    from pipeline.segment.mask import enclosed_directions
    shell = np.zeros((12, 12, 12), dtype=bool)
    shell[1:11, 1:11, 1:11] = True
    shell[2:10, 2:10, 2:10] = False
    reach = np.array([20, 20, 20])
    closed = enclosed_directions(shell, reach, [(False, False)] * 3)
    assert (closed[2:10, 2:10, 2:10] == 6).all()
    outside = np.ones(shell.shape, dtype=bool)
    outside[1:11, 1:11, 1:11] = False
    assert closed[outside].max() <= 3 and closed[0, 5, 5] == 1  # a convex shell: one side per axis
    open_top = shell.copy()
    open_top[10] = False
    assert (enclosed_directions(open_top, reach, [(False, False)] * 3)[2:10, 2:10, 2:10] == 5).all()
    cut_by_scan = open_top[:11]  # the missing face is now the array's edge: the scan's border
    counted = enclosed_directions(cut_by_scan, reach, [(False, True), (False, False), (False, False)])
    assert (counted[2:10, 2:10, 2:10] == 6).all()
    # A short reach does not see a far wall.
    assert (enclosed_directions(shell, np.array([2, 2, 2]), [(False, False)] * 3)[6, 6, 6]) == 0


def test_marrow_behind_a_leaky_cortex_is_filled_but_a_joint_space_is_not():
    """A hollow ball whose cortex has holes on every axis (as thin cortex on
    3 mm slices): no cavity fill reaches its marrow, the enclosure fill does,
    all but the voxels in line with a hole. A second bone in its socket (a
    ball in a cup of another label): the joint space between them is not
    taken by the cup, which encloses it just as well."""
    from pipeline.config import SegmentConfig
    from pipeline.segment.labels import solid_bone
    shape, centre = (44, 44, 44), (22, 22, 22)
    d = distance_from(shape, centre)
    cortex, marrow = (d <= 15) & (d > 13), d < 13
    for axis in range(3):  # drill a 3-voxel hole through the cortex along each axis
        hole = [slice(21, 24)] * 3
        hole[axis] = slice(None)
        cortex[tuple(hole)] = False
    pieces = cortex.astype(np.uint8)
    cfg = SegmentConfig(closing_mm=0.0, max_slice_hole_mm2=0.0, enclosure_mm=40.0)
    spacing = np.ones(3)
    plain = solid_bone(pieces, 1, 0, spacing, SegmentConfig(closing_mm=0.0, max_slice_hole_mm2=0.0,
                                                            enclosure_mm=0.0), [(False, False)] * 3, 0.0)
    assert not (plain & marrow).any()
    solid = solid_bone(pieces, 1, 0, spacing, cfg, [(False, False)] * 3, 0.0)
    in_hole_line = (np.isin(np.indices(shape), [21, 22, 23]).sum(axis=0) >= 2)
    assert np.array_equal(solid & marrow, marrow & ~in_hole_line)
    assert (solid & marrow).sum() > 0.9 * marrow.sum()
    assert not (solid & (d > 15)).any()  # nothing outside the ball

    # Ball (label 2, radius 10) in a closed cup (label 1: the shell 12..14
    # around it, left only by the neck), so the cup encloses the gap on every axis.
    pieces = np.zeros(shape, dtype=np.uint8)
    pieces[d <= 10] = 2
    pieces[(d > 12) & (d <= 14)] = 1
    pieces[:, :, 30:][(d[:, :, 30:] <= 14) & (np.abs(np.indices(shape)[0][:, :, 30:] - 22) < 5)
                      & (np.abs(np.indices(shape)[1][:, :, 30:] - 22) < 5)] = 2  # the neck
    gap = (d > 10) & (d <= 12)
    cup = solid_bone(pieces, 1, 0, spacing, cfg, [(False, False)] * 3, 0.0)
    assert not (cup & gap).any()



def slit_tube(opening_vox):
    """A tube along the slice axis (40 slices of 3 mm, 1 mm pixels; walls
    12..15 mm from its axis), open at both ends and slit along its whole
    length by an ``opening_vox`` wide cut through the wall."""
    shape = (40, 60, 60)
    _, y, x = np.indices(shape)
    d = np.hypot(y - 30, x - 30)
    tube = (d > 12) & (d <= 15)
    lo = 30 - opening_vox // 2
    tube[(y > 30) & (x >= lo) & (x < lo + opening_vox)] = False
    return tube, d


def test_marrow_behind_a_slit_in_thin_cortex_is_filled_on_thick_slices():
    """Thin oblique cortex on 3 mm slices shows gaps a few mm wide (the
    femoral neck): a tube slit along its length by 4 mm (wider than the
    closing bridges) has no 3D cavity, no closed ring in any slice, and along
    its axis no wall within reach, so only the plane fill with gaps bridged
    reaches its lumen (the axial planes all but the voxels near the slit,
    the other planes those). The same tube
    opened by 12 mm is a gutter, a concave bone's outside: nothing in it is
    filled."""
    from pipeline.config import SegmentConfig
    from pipeline.segment.labels import solid_bone
    from pipeline.segment.mask import closing_radius_voxels
    cfg = SegmentConfig()
    spacing, border = np.array([3.0, 1.0, 1.0]), [(False, False)] * 3
    radius = closing_radius_voxels(spacing, cfg.closing_mm)
    tube, d = slit_tube(4)
    solid = solid_bone(tube.astype(np.uint8), 1, radius, spacing, cfg, border, cfg.max_slice_hole_mm2)
    lumen = d < 12
    assert np.count_nonzero(solid & lumen) >= 0.9 * np.count_nonzero(lumen)  # measured: all of it
    assert not (solid & (d > 15.5)).any()  # nothing outside the tube
    gutter, _ = slit_tube(12)
    solid = solid_bone(gutter.astype(np.uint8), 1, radius, spacing, cfg, border, cfg.max_slice_hole_mm2)
    assert not (solid & lumen).any()
    assert not (solid & (d > 15.5)).any()


def test_femoral_head_is_femur_on_3mm_slices():
    """The phantom on 3 mm slices (1.5 mm pixels): partial volume across
    the 3 mm joint space at the dome gives the head's shell regions more
    contact with the acetabulum than with the head's interior, as on real
    pelvic CT (before the head-sphere claim: 68 % of the head femur, the
    rest hip or unlabelled). The head (within 20 mm of its centre; radius
    22 mm) must be femur, never hip, and the acetabulum (hip bone within
    34 mm of the centre: its inner 8 mm) hip, never femur. At the dome the
    acetabulum's fill reaches into the joint-space slice above the head:
    there the filled voxels give way, not the head's own."""
    from pipeline.phantom.analytic import pelvis_phantom
    from pipeline.segment.mask import segment_bone
    phantom = pelvis_phantom(shape=(67, 184, 232), spacing_mm=(3.0, 1.5, 1.5))
    volume, cfg = phantom.volume, Config().segment
    labels = label_bones(volume, segment_bone(volume, cfg), cfg).full(volume.shape)
    names = {name: label for label, name in phantom.label_names.items()}
    lps = volume.index_to_lps(np.argwhere(np.ones(volume.shape, dtype=bool))).reshape(*volume.shape, 3)
    for side in ("left", "right"):
        femur, hip = LABEL_IDS[f"femur_{side}"], LABEL_IDS[f"hip_{side}"]
        d = np.linalg.norm(lps - phantom.landmarks_lps_mm[f"{side}_femoral_head_centre"], axis=-1)
        head = (phantom.labels == names[f"femur_{side}"]) & (d < 20.0)
        assert (labels[head] == femur).all(), side
        assert not (labels[head] == hip).any(), side
        cup = (phantom.labels == names[f"hip_{side}"]) & (d < 34.0)
        assert np.count_nonzero(labels[cup] == hip) >= 0.8 * np.count_nonzero(cup), side
        assert not (labels[cup] == femur).any(), side
    # Every bone as a whole, by its mesh (measured 0.978-0.993): a sub-voxel
    # boundary error only; a bone glued to a neighbour or split loses 0.05 or more.
    meshed = run_mesh(volume, Config()).labels
    assert_bones_match(phantom, meshed, 0.975)


def test_femoral_head_behind_a_missing_shell_is_filled():
    """A femoral head of marrow-like bone (80 HU, below the threshold) whose
    shell is missing over its dome, within 45 degrees of straight up (as a
    thin subchondral shell facing the acetabulum averages below the
    threshold on 3 mm slices): no fill by shape reaches the marrow there (it
    is open to the joint space, and the acetabulum is met first above it),
    but the head is a sphere: all of it more than HEAD_BAND_MM inside the
    joint sphere (radius 23 mm + half the 3 mm gap) is femur. Checked one
    slice (3 mm) further in: at the dome the acetabulum's own voxels lie
    within one slice of the band. Nothing of the acetabulum becomes femur."""
    from pipeline.segment.labels import HEAD_BAND_MM
    from pipeline.phantom.analytic import pelvis_phantom
    from pipeline.segment.mask import segment_bone
    from pipeline.volume import Volume
    phantom = pelvis_phantom(shape=(67, 184, 232), spacing_mm=(3.0, 1.5, 1.5))
    lps = phantom.volume.index_to_lps(np.argwhere(np.ones(phantom.volume.shape, dtype=bool)))
    lps = lps.reshape(*phantom.volume.shape, 3)
    hu = phantom.volume.hu.copy()
    names = {name: label for label, name in phantom.label_names.items()}
    cfg = Config().segment
    heads = {}
    for side in ("left", "right"):
        offset = lps - phantom.landmarks_lps_mm[f"{side}_femoral_head_centre"]
        d = np.linalg.norm(offset, axis=-1)
        femur = phantom.labels == names[f"femur_{side}"]
        dome = offset[..., 2] > d * np.cos(np.radians(45.0))
        hu[femur & (d < 23.0) & ((d < 19.0) | dome)] = 80.0
        heads[side] = femur & (d < 23.0 + 1.5 - HEAD_BAND_MM - 3.0)
    volume = Volume(hu=hu, affine=phantom.volume.affine)
    labels = label_bones(volume, segment_bone(volume, cfg), cfg).full(volume.shape)
    for side in ("left", "right"):
        # Without the head fill 122 of these 3,948 voxels are left unlabelled.
        assert (labels[heads[side]] == LABEL_IDS[f"femur_{side}"]).all(), side
        cup = phantom.labels == names[f"hip_{side}"]
        assert not (labels[cup] == LABEL_IDS[f"femur_{side}"]).any(), side


def test_femur_bone_the_head_sphere_cuts_off_is_the_hips():
    """A femur on a 1 mm grid: a head (18 mm) inside its joint sphere
    (20 mm), a neck 8 mm in radius leaving it down and sideways, a shaft
    going down from the neck's end with a lesser trochanter on it. Two more
    pieces are labelled femur: a cap 24-30 mm above the head's centre (the
    acetabular roof) and a block behind the head (the ischium's wall), both
    joined to the femur only through the joint. They are the hip's; head,
    neck, shaft and trochanter stay femur."""
    from pipeline.segment.labels import HEAD_BAND_MM, give_cut_off_femur_back

    k, r, c = np.indices((120, 90, 110)).astype(float)
    p = np.stack([k, r, c], axis=-1) - [80.0, 40.0, 40.0]
    dist = np.linalg.norm(p, axis=-1)
    neck_axis = np.array([-1.0, 0.0, 1.0]) / np.sqrt(2.0)
    along = p @ neck_axis
    neck = (along > 10) & (along < 50) & (np.linalg.norm(p - along[..., None] * neck_axis, axis=-1) <= 8.0)
    end = 45.0 * neck_axis
    shaft = (p[..., 0] <= end[0]) & (np.hypot(p[..., 1] - end[1], p[..., 2] - end[2]) <= 12.0)
    trochanter = np.linalg.norm(p - [end[0] - 25.0, 0.0, end[2] - 16.0], axis=-1) <= 6.0
    head = dist <= 18.0
    cap = (dist > 20.0 + HEAD_BAND_MM + 1) & (dist <= 30.0) & (p[..., 0] > 12.0)
    ischium = (np.abs(p[..., 0] + 5.0) <= 6.0) & (np.abs(p[..., 1]) <= 6.0) & (p[..., 2] >= -34.0) & (p[..., 2] <= -25.0)
    rough = np.zeros(dist.shape, dtype=np.uint8)
    femur = head | neck | shaft | trochanter
    rough[femur | cap | ischium] = 4
    box = tuple(slice(0, n) for n in rough.shape)
    moved = give_cut_off_femur_back(rough, 1, 4, np.array([80.0, 40.0, 40.0]), 20.0, np.ones(3), box)
    assert moved == np.count_nonzero((cap | ischium) & ~femur)
    assert (rough[(cap | ischium) & ~femur] == 1).all()
    assert (rough[femur] == 4).all()


def test_best_shift_finds_how_far_a_reference_sits_off():
    """An outline drawn one row down and two columns right of the bone is
    found at that shift, where it agrees fully; one drawn on the bone, at
    no shift."""
    from pipeline.evaluate import best_shift

    bone = np.zeros((4, 40, 40), dtype=bool)
    bone[1:3, 10:25, 12:30] = True
    assert best_shift(np.roll(bone, (1, 2), axis=(1, 2)), bone) == ("-1,-2", 1.0)
    assert best_shift(bone, bone) == ("+0,+0", 1.0)


def test_surface_dice_forgives_one_voxel_layer_but_not_a_missing_piece():
    """A reference one voxel fatter than the bone on every side has surface
    Dice 1 (Dice 0.73 for this 10 x 10 x 10 voxel cube); one shifted by two voxels,
    or missing half the bone, does not. The misses of the fat reference all
    lie in the layer outside the bone, at the HU found there."""
    from scipy import ndimage as ndi

    from pipeline.evaluate import dice, outer_layer_misses, surface_dice

    bone = np.zeros((20, 20, 20), dtype=bool)
    bone[5:15, 5:15, 5:15] = True
    fat = ndi.binary_dilation(bone, structure=np.ones((3, 3, 3), dtype=bool))
    assert dice(bone, fat) == pytest.approx(2 * 1000 / (1000 + 1728))
    assert surface_dice(bone, fat) == 1.0
    assert surface_dice(bone, np.roll(bone, 2, axis=0)) < 0.8
    half = bone.copy()
    half[10:] = False
    assert surface_dice(half, bone) < 0.8
    hu = np.where(bone, 400.0, np.where(fat, 140.0, 40.0))
    found = outer_layer_misses(bone, fat, hu)
    # Face-neighbours of the cube: all of the fat layer but its 12 edges and 8 corners.
    assert found == {"misses_in_outer_layer": pytest.approx(600 / 728), "outer_layer_median_hu": 140}
    assert outer_layer_misses(bone, bone, hu) == {"misses_in_outer_layer": 0.0, "outer_layer_median_hu": None}


REAL_FLOORS = {
    # Measured with this code less 0.03: regression guards on real CT. The
    # issue's target is 0.90 per structure, which these do not reach yet
    # (Pelvic-Ref-003: the femoral heads are femur and filled now, but
    # marrow of the neck is still partly left unfilled, and the manual
    # contours take in the joint space at the dome; TotalSegmentator: its
    # thin, low-density hip bones are only partly inside the bone mask; its
    # osteoporotic sacrum, median 100 HU, is mostly below
    # segment.threshold_hu: named sacrum now, not lumbar, but a broken shell
    # that no fill closes, Dice 0.18).
    "totalseg_example": {"femur_left": 0.82, "femur_right": 0.76, "hip_left": 0.80, "hip_right": 0.80,
                         "sacrum": 0.15},
    "pelvic_ref_003": {"femur_left": 0.87, "femur_right": 0.86},
}


@functools.lru_cache(maxsize=None)
def real_case(case: str):
    from pipeline import evaluate
    found = {"totalseg_example": evaluate.totalseg_figures,
             "pelvic_ref_003": evaluate.pelvic_ref_figures}[case]()
    if found is None:
        pytest.skip(f"real data not present (../shared/real_ct/{case})")
    return found


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(REAL_FLOORS))
def test_real_ct_labels_do_not_regress(case):
    figures = real_case(case)[0]
    for name, floor in REAL_FLOORS[case].items():
        assert figures[name]["dice"] >= floor, (case, name, figures[name])
    if case == "pelvic_ref_003":
        assert figures["couch"]["bone_voxels_behind_back"] == 0
        # Against the two commercial tools' automatic head contours in the
        # same RTSTRUCT (measured 0.930-0.939 less 0.03; the tools agree
        # with the manual contours to 0.89-0.91).
        for name in ("femur_left", "femur_right"):
            assert figures[name]["dice_vs_mbs"] >= 0.90, figures[name]
            assert figures[name]["dice_vs_dl"] >= 0.90, figures[name]
            # Most of what we miss of those contours lies in the one voxel
            # layer just outside our surface (measured 0.70-0.75): they take in
            # the partial-volume layer, as the TotalSegmentator labels do; a
            # piece of bone lost elsewhere (a head, a neck's marrow) would
            # bring the share down.
            assert figures[name]["misses_in_outer_layer_vs_mbs"] >= 0.6, figures[name]
            assert figures[name]["misses_in_outer_layer_vs_dl"] >= 0.6, figures[name]
    if case == "totalseg_example":
        # Surface Dice at one voxel's tolerance (measured 0.935 / 0.950 /
        # 0.944 less 0.03): where the hips and the left femur lose Dice, it
        # is the outline's layer, not bone missed or misnamed.
        for name in ("hip_left", "hip_right", "femur_left"):
            assert figures[name]["surface_dice_1vox"] >= 0.90, figures[name]


def test_head_spheres_do_not_depend_on_how_the_slices_are_stored():
    """The phantom on 3 mm slices stored feet first and front to back
    (slices and rows reversed, the affine to match): the same labels voxel
    for voxel and the same head spheres (centre, radius, valley depth) as
    stored head first. With the search laid out along the array's axes the
    labels agreed here but the spheres did not (left centre 84.9 vs 85.0 mm,
    valley 427.6 vs 424.2 HU); on the faint TotalSegmentator joints the
    labels did not either (real-data test below)."""
    from pipeline.phantom.analytic import pelvis_phantom
    from pipeline.segment.mask import segment_bone
    from pipeline.volume import Volume

    volume = pelvis_phantom(shape=(67, 184, 232), spacing_mm=(3.0, 1.5, 1.5)).volume
    flip = np.eye(4)
    flip[0, 0], flip[0, 3], flip[1, 1], flip[1, 3] = -1.0, volume.shape[0] - 1, -1.0, volume.shape[1] - 1
    flipped = Volume(np.ascontiguousarray(volume.hu[::-1, ::-1]), volume.affine @ flip)
    cfg = Config().segment
    found = [label_bones(v, segment_bone(v, cfg), cfg) for v in (volume, flipped)]
    assert found[0].stats["femoral_heads"].keys() == {"femur_left", "femur_right"}
    assert found[0].stats["femoral_heads"] == found[1].stats["femoral_heads"]
    assert np.array_equal(found[0].full(volume.shape), found[1].full(flipped.shape)[::-1, ::-1])


@pytest.mark.real_data
@pytest.mark.slow
def test_real_labels_do_not_depend_on_how_the_slices_are_stored():
    """The TotalSegmentator example stored feet first and front to back
    (slices and rows reversed, the affine to match) gets the same labels,
    voxel for voxel: its faint hip joints made the head sphere's search,
    laid out along the array's axes, land elsewhere (right femur labels
    Dice 0.91 between the two)."""
    from pipeline import evaluate
    from pipeline.segment.mask import segment_bone
    from pipeline.volume import Volume

    path = evaluate.REAL_CT / "totalseg_example" / "example_ct.nii.gz"
    if not path.is_file():
        pytest.skip("real data not present (../shared/real_ct/totalseg_example)")
    hu, affine = evaluate.read_nifti(path)
    flip = np.eye(4)
    flip[0, 0], flip[0, 3], flip[1, 1], flip[1, 3] = -1.0, hu.shape[0] - 1, -1.0, hu.shape[1] - 1
    cfg = Config().segment
    found = []
    for volume in (Volume(hu.astype(np.float32), affine),
                   Volume(np.ascontiguousarray(hu[::-1, ::-1]).astype(np.float32), affine @ flip)):
        found.append(label_bones(volume, segment_bone(volume, cfg), cfg).full(volume.shape))
    assert np.array_equal(found[0], found[1][::-1, ::-1])


@pytest.mark.real_data
@pytest.mark.slow
def test_real_sacrum_stays_below_the_iliac_crests_and_the_spine_above_it():
    """Pelvic-Ref-003 (3 mm slices): the lumbar spine joins the sacrum through
    facet joints above segment.core_hu; it must still come out as its own
    label, above the sacrum, and the sacrum must not reach above the crests."""
    _, result, volume = real_case("pelvic_ref_003")
    z = {}
    for name in ("hip_left", "hip_right", "sacrum", "lumbar"):
        index = np.argwhere(result.labels == LABEL_IDS[name])
        z[name] = volume.index_to_lps(index)[:, 2]
    crest_z = max(z["hip_left"].max(), z["hip_right"].max())
    assert z["sacrum"].max() < crest_z
    assert np.median(z["lumbar"]) > np.median(z["sacrum"]) + 60.0
    assert z["lumbar"].max() > crest_z


def test_filled_voxels_give_way_to_another_bones_own():
    """Two labels touching: a filled voxel (not ``own``) of label 1 beside
    label 2's own voxel is dropped and label 2's voxel stays; two own voxels
    that touch are both dropped."""
    from pipeline.segment.labels import separate_labels
    labels = np.zeros((5, 5, 8), dtype=np.uint8)
    labels[2, 2, 1:4] = 1
    labels[2, 2, 4:7] = 2
    own = labels > 0
    own[2, 2, 3] = False  # label 1's voxel at the contact was filled in
    out = separate_labels(labels, own)
    assert out[2, 2, 3] == 0 and out[2, 2, 4] == 2
    assert (out[2, 2, 1:3] == 1).all() and (out[2, 2, 4:7] == 2).all()
    both = separate_labels(labels, labels > 0)
    assert both[2, 2, 3] == 0 and both[2, 2, 4] == 0
    assert np.array_equal(separate_labels(labels), both)


def walk_rays(mask, others, reach, at_border):
    """Reference for enclosed_directions: walk every ray voxel by voxel."""
    count = np.zeros(mask.shape, dtype=np.uint8)
    for index in np.ndindex(mask.shape):
        for axis, edges in enumerate(at_border):
            for step, edge in ((1, edges[1]), (-1, edges[0])):
                position = list(index)
                for distance in range(1, mask.shape[axis] + 1):
                    position[axis] += step
                    if not 0 <= position[axis] < mask.shape[axis]:
                        # left the array with no bone met: the scan's edge, if within reach
                        count[index] += edge and distance - 1 <= reach[axis]
                        break
                    if mask[tuple(position)] or others[tuple(position)]:
                        count[index] += bool(mask[tuple(position)]) and distance <= reach[axis]
                        break
    return count


def test_enclosed_directions_agree_with_walking_the_rays():
    from pipeline.segment.mask import enclosed_directions
    rng = np.random.default_rng(7)
    for _ in range(60):
        shape = tuple(rng.integers(2, 8, 3))
        mask = rng.random(shape) < 0.3
        others = (rng.random(shape) < 0.2) & ~mask
        reach = rng.integers(1, 6, 3)
        at_border = [tuple(bool(b) for b in rng.integers(0, 2, 2)) for _ in range(3)]
        expected = walk_rays(mask, others, reach, at_border)
        assert np.array_equal(enclosed_directions(mask, reach, at_border, others), expected)
        assert np.array_equal(enclosed_directions(mask, reach, at_border),
                              walk_rays(mask, np.zeros_like(mask), reach, at_border))


def test_a_scan_without_femurs_says_so():
    """A CT of the pelvis above the hip joints (iliac wings, sacrum, L5): the
    bone names assume the femurs in view, so the report warns (report.html
    and the terminal) rather than naming silently."""
    from pipeline.phantom.analytic import pelvis_phantom
    from pipeline.qa.report_html import report_warnings

    phantom = pelvis_phantom(shape=(30, 184, 232), spacing_mm=(2.0, 1.5, 1.5), center_lps_mm=(0.0, 12.5, 80.0))
    assert not np.isin(phantom.labels, [4, 5]).any()  # no femur in the field of view
    report = run_mesh(phantom.volume, Config()).report
    assert any(w.startswith("no femur found") for w in report_warnings(report))


def block_grid(feet_first: bool):
    """A 2 mm grid for pelvises of blocks: shape, affine and the LPS z, y, x
    (mm) of every voxel (z 0..160, y -60..60, x -100..100), the slices
    stored from the feet up or, ``feet_first``, from the head down; and the
    two hip bones (x = +-40..80 mm, crests at z = 100 mm)."""
    spacing = 2.0
    shape = (80, 60, 100)
    affine = np.array([[0, 0, -spacing, 100.0], [0, spacing, 0, -60.0], [spacing, 0, 0, 0.0], [0, 0, 0, 1]])
    k, r, c = np.indices(shape)
    if feet_first:
        affine[2] = [-spacing, 0, 0, (shape[0] - 1) * spacing]
        k = shape[0] - 1 - k
    z, y, x = k * spacing, r * spacing - 60.0, 100.0 - c * spacing
    hips = (np.abs(x) >= 40) & (np.abs(x) <= 80) & (y >= -40) & (y <= 0) & (z <= 100)
    return shape, affine, z, y, x, hips


def assert_blocks_named(hu: np.ndarray, affine: np.ndarray, blocks: list) -> None:
    """Label the blocks' CT; each block (mask, name) away from its faces
    (clear of the voxel gap between labels) must carry its name."""
    from scipy import ndimage

    from pipeline.segment.mask import segment_bone
    from pipeline.volume import Volume
    volume = Volume(hu, affine)
    cfg = Config().segment
    labels = label_bones(volume, segment_bone(volume, cfg), cfg).full(hu.shape)
    for block, name in blocks:
        inner = ndimage.binary_erosion(block, iterations=2)
        assert (labels[inner] == LABEL_IDS[name]).all(), name


@pytest.mark.parametrize("feet_first", [False, True])
def test_spine_joined_to_the_sacrum_is_split_and_named_apart(feet_first):
    """Blocks of bone on a 2 mm grid: two hip bones (x = +-40..80 mm, crests
    at z = 100 mm), a sacrum between them (behind their centre, z 10..70 mm)
    and a bigger spine above it (z 76..120 mm) joined by a 650 HU bridge
    (facet joints on thick slices: above the core level, below the cortex).
    One region at first; the core level raised inside it parts the two. The
    spine's centre lies below the crests, as on Pelvic-Ref-003, and it is
    the bigger: the sacrum is the block between the hip bones (below
    half-way to the crests), not the biggest one below them. Each block
    comes out whole under its own name, also with the slices stored from
    the head down (feet first)."""
    shape, affine, z, y, x, hips = block_grid(feet_first)
    hu = np.full(shape, 40.0, dtype=np.float32)
    sacrum = (np.abs(x) <= 20) & (y >= 10) & (y <= 40) & (z >= 10) & (z <= 70)
    bridge = (np.abs(x) <= 6) & (y >= 30) & (y <= 40) & (z > 70) & (z < 76)
    spine = (np.abs(x) <= 30) & (y >= 10) & (y <= 40) & (z >= 76) & (z <= 120)
    hu[hips | sacrum | spine] = 900.0
    hu[bridge] = 650.0
    assert_blocks_named(hu, affine, [(sacrum, "sacrum"), (spine, "lumbar"), (hips & (x > 0), "hip_left"),
                                     (hips & (x < 0), "hip_right")])


@pytest.mark.parametrize("feet_first", [False, True])
def test_s1_below_the_lumbosacral_disc_is_sacrum(feet_first):
    """Blocks on a 2 mm grid as above, with S1 between the sacrum and L5:
    S1 joins the sacrum through 650 HU (parted at the first raised core
    level) and L5 through a 900 HU facet bridge behind a 10 mm disc of
    80 HU (the facet joints of thick slices: above every core level). The
    raised core level cuts below S1, so S1 comes out with L5; the border
    belongs on the disc, and S1 is sacrum. Also with the slices stored
    from the head down (feet first: the slice axis points down)."""
    shape, affine, z, y, x, hips = block_grid(feet_first)
    hu = np.full(shape, 40.0, dtype=np.float32)
    column = (np.abs(x) <= 20) & (y >= 10) & (y <= 40)
    sacrum = column & (z >= 10) & (z < 64)
    junction = column & (z >= 64) & (z < 70)
    s1 = column & (z >= 70) & (z <= 80)
    disc = column & (z > 80) & (z < 90)
    facet = (np.abs(x) <= 6) & (y >= 34) & (y <= 40) & (z > 80) & (z < 90)
    spine = (np.abs(x) <= 30) & (y >= 10) & (y <= 40) & (z >= 90) & (z <= 130)
    hu[hips | sacrum | s1 | spine | facet] = 900.0
    hu[junction] = 650.0
    hu[disc & ~facet] = 80.0
    assert_blocks_named(hu, affine, [(sacrum, "sacrum"), (s1, "sacrum"), (spine, "lumbar"),
                                     (hips & (x > 0), "hip_left"), (hips & (x < 0), "hip_right")])


@pytest.mark.parametrize("feet_first", [False, True])
def test_sacrum_in_pieces_is_named_by_its_bone_between_the_hips(feet_first):
    """Blocks on a 2 mm grid as above; the sacrum is broken into pieces, as
    a low-density sacrum is on 3 mm slices: S1 (z 56..100 mm, its centre
    above half-way from the hip bones' centre to their crests) with alae
    reaching to 4 mm of the hip bones (the sacroiliac joints), and three
    small pieces below it, 6 mm apart. The sacrum is the midline bone with
    the most voxels between the hip bones (behind their centre, below
    half-way to the crests): S1. Chosen by the centre instead, the lowest
    piece was the sacrum and S1 the lumbar spine. The dark gap under S1
    parts two regions like a disc, but S1 faces the hip bones: it stays
    sacrum (as S1 above a disc left between S1 and S2 would)."""
    shape, affine, z, y, x, hips = block_grid(feet_first)
    hu = np.full(shape, 40.0, dtype=np.float32)
    column = (np.abs(x) <= 20) & (y >= 10) & (y <= 40)
    s1 = (column & (z >= 56) & (z <= 100)) | ((np.abs(x) <= 36) & (y >= -10) & (y < 10) & (z >= 60) & (z <= 96))
    pieces = [column & (z >= z0) & (z <= z0 + 10) for z0 in (10, 26, 42)]
    spine = (np.abs(x) <= 30) & (y >= 10) & (y <= 40) & (z >= 108) & (z <= 150)
    hu[hips | s1 | spine] = 900.0
    for piece in pieces:
        hu[piece] = 900.0
    assert_blocks_named(hu, affine, [(s1, "sacrum"), *[(p, "sacrum") for p in pieces], (spine, "lumbar"),
                                     (hips & (x > 0), "hip_left"), (hips & (x < 0), "hip_right")])


@pytest.mark.parametrize("feet_first", [False, True])
def test_l5_above_the_lumbosacral_disc_is_lumbar(feet_first):
    """Blocks on a 2 mm grid as above: the sacrum (z 10..70 mm), a 10 mm disc
    of 80 HU, L5 (z 80..96 mm, below the crests) and, past a second disc, a
    bigger L4. L5 touches S1 through a 300 HU bridge behind the disc (above
    the threshold, below the core level: its own core, but bone-to-bone
    contact) and L4 through nothing, so contact gives L5 to the sacrum, as
    on a low-density spine. The disc parts two regions with sacrum on both
    sides: the border belongs on it, and L5 is lumbar. Also with the slices
    stored from the head down."""
    shape, affine, z, y, x, hips = block_grid(feet_first)
    hu = np.full(shape, 40.0, dtype=np.float32)
    column = (np.abs(x) <= 20) & (y >= 10) & (y <= 40)
    sacrum = column & (z >= 10) & (z <= 70)
    bridge = (np.abs(x) <= 6) & (y >= 34) & (y <= 40) & (z > 70) & (z < 80)
    l5 = column & (z >= 80) & (z <= 96)
    l4 = (np.abs(x) <= 30) & (y >= 10) & (y <= 40) & (z >= 106) & (z <= 150)
    hu[hips | sacrum | l5 | l4] = 900.0
    hu[column & (z > 70) & (z < 80)] = 80.0
    hu[bridge] = 300.0
    hu[column & (z > 96) & (z < 106)] = 80.0
    assert_blocks_named(hu, affine, [(sacrum, "sacrum"), (l5, "lumbar"), (l4, "lumbar"),
                                     (hips & (x > 0), "hip_left"), (hips & (x < 0), "hip_right")])


@pytest.mark.parametrize("feet_first", [False, True])
def test_midline_bone_behind_the_hips_is_never_a_hip_bone(feet_first):
    """Blocks on a 2 mm grid as above. A piece of the sacrum behind it (a
    bar across the midline, z 14..36 mm, with an arm out to the left hip
    bone, bridged at 300 HU) touches only that hip bone, as pieces of a
    low-density S1 and S2 touch the ilia through the alae; a pubic body at
    the midline, below and in front of the hip bones' centre, touches it
    too. Contact would name both hip_left; the piece behind is sacrum, the
    pubic body stays hip_left."""
    shape, affine, z, y, x, hips = block_grid(feet_first)
    hu = np.full(shape, 40.0, dtype=np.float32)
    sacrum = (np.abs(x) <= 14) & (y >= 10) & (y <= 40) & (z >= 10) & (z <= 70)
    behind = (((x >= -10) & (x <= 36) & (y >= 44) & (y <= 56)) | ((x >= 32) & (x <= 36) & (y >= -6) & (y <= 56))) \
        & (z >= 14) & (z <= 36)
    pubic = (x >= 0) & (x <= 38) & (y >= -40) & (y <= -30) & (z >= 0) & (z <= 10)
    spine = (np.abs(x) <= 30) & (y >= 10) & (y <= 40) & (z >= 108) & (z <= 150)
    hu[hips | sacrum | behind | pubic | spine] = 900.0
    hu[(x == 38) & (y >= -6) & (y <= 0) & (z >= 14) & (z <= 36)] = 300.0  # the joint, bridged
    assert_blocks_named(hu, affine, [(sacrum, "sacrum"), (behind & (x < 30), "sacrum"), (pubic & (x < 30), "hip_left"),
                                     (hips & (x > 0), "hip_left"), (hips & (x < 0), "hip_right")])


def test_watershed_by_piece_is_one_watershed_over_the_whole_box():
    """Flooding each connected piece of the mask in its own box gives the
    watershed of the whole box (on the phantom, whose noisy HU has no ties)."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    from pipeline.segment.labels import watershed_by_piece
    from pipeline.phantom.analytic import pelvis_phantom, preset
    from pipeline.segment.mask import FACE_CONNECTIVITY, segment_bone

    volume = pelvis_phantom(**preset("sample")).volume
    bone = segment_bone(volume, Config().segment)
    hu, solid = volume.hu[bone.box], bone.voxels
    cores, _ = ndimage.label((hu > 500) & solid, structure=FACE_CONNECTIVITY)
    assert ndimage.label(solid, structure=FACE_CONNECTIVITY)[1] > 1  # several pieces: the case that matters
    assert np.array_equal(watershed_by_piece(hu, cores, solid), watershed(-hu, cores, mask=solid))


def test_acetabulum_fragment_chained_to_the_femur_goes_back_to_the_hip():
    """A fragment of thin acetabular cortex (A) facing the femur's region (F)
    across a blurred joint space (300 HU, above the threshold) over its whole
    face, and joined to the hip (H) only through a narrow bridge of bright
    cortex (B): contact gives it the femur (100 faces against 4), the HU path
    gives it back to the hip (flooding from H along 700 HU reaches it before
    F's flood crosses the 300 HU joint)."""
    from pipeline.segment.labels import merge_by_contact, return_hip_fragments
    regions = np.zeros((10, 10, 12), dtype=np.int32)
    hu = np.full(regions.shape, -100.0, dtype=np.float32)
    regions[:, :, 0:5], regions[:, :, 5:7] = 1, 2  # F (its last plane the joint space), A
    regions[0:2, 0:2, 7:9], regions[0:2, 0:2, 9:12] = 3, 4  # B, H
    hu[regions > 0] = 700.0
    hu[:, :, 4] = 300.0
    name = np.array([0, 4, 0, 0, 1], dtype=np.uint8)
    merge_by_contact(name, regions, hu >= 200.0)
    assert list(name) == [0, 4, 4, 1, 1]  # contact alone: A is femur
    return_hip_fragments(name, regions, hu, np.array([False, True, False, False, True]))
    assert list(name) == [0, 4, 1, 1, 1]


def test_hip_fragments_across_the_pelvic_midline_belong_to_the_other_hip():
    """The pubic bodies meet at the symphysis, on the pelvic midline (half-way
    between the two hip bones' largest regions, here x = 10 mm, not the
    scan's or the body's centre). A hip_left fragment centred 5 mm right of
    it is hip_right's; one 2 mm right of it (within a 3 mm voxel of the
    midline) and the hip bones themselves keep their names, and so does a
    hip_left fragment far on its own side; a hip_right fragment 6 mm left
    of the midline is hip_left's."""
    from pipeline.segment.labels import keep_hips_on_their_side
    # ids:           0   1 (hip L)  2 (hip R)  3      4      5     6
    name = np.array([0, 1, 2, 1, 1, 1, 2], dtype=np.uint8)
    x = np.array([90.0, -70.0, 5.0, 8.0, 60.0, 16.0])  # centres of regions 1..6 (LPS x, mm)
    volume = np.array([300e3, 290e3, 0.2e3, 0.2e3, 0.1e3, 0.3e3])
    keep_hips_on_their_side(name, x, volume)
    assert name.tolist() == [0, 1, 2, 2, 1, 1, 1]
    # Without both hip bones there is no pelvic midline: nothing moves.
    alone = np.array([0, 1, 1], dtype=np.uint8)
    keep_hips_on_their_side(alone, np.array([90.0, -70.0]), np.array([300e3, 1e3]))
    assert alone.tolist() == [0, 1, 1]


def test_sacral_canal_is_taken_out_of_the_sacrums_fill():
    """A sacrum block 90 mm tall on 3 mm slices, its marrow (120 HU) filled
    in: the canal through its whole length (10 HU: CSF and fat) is not
    bone and is taken out of the fill; a dark pocket of fatty marrow (0 HU,
    15 mm tall) and the marrow stay sacrum, and so does the canal's own
    threshold bone (none of the bone's raw voxels is ever taken)."""
    from pipeline.segment.labels import open_sacral_canal
    from pipeline.volume import Volume
    shape = (30, 60, 60)  # 90 x 60 x 60 mm
    k, j, i = np.indices(shape)
    hu = np.full(shape, 120.0, dtype=np.float32)
    canal = (np.hypot(j - 40, i - 30) < 6) & (k >= 1) & (k <= 28)
    pocket = (np.hypot(j - 20, i - 30) < 5) & (k >= 10) & (k < 15)
    hu[canal], hu[pocket] = 10.0, 0.0
    shell = (np.minimum.reduce([j, 59 - j, i, 59 - i]) < 3) | (k == 0) | (k == 29)
    hu[shell] = 700.0
    raw = shell.copy()
    labels = np.full(shape, 3, dtype=np.uint8)
    affine = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    taken = open_sacral_canal(labels, raw, hu, Volume(hu=hu, affine=affine))
    # The smoothing (1.5 mm) blurs the tube's edge and its ends against the
    # 700 HU caps: a voxel in from them, all of it is taken.
    assert (labels[canal & (np.hypot(j - 40, i - 30) < 5) & (k >= 2) & (k <= 27)] == 0).all()
    assert taken <= np.count_nonzero(np.hypot(j - 40, i - 30) < 7)
    assert (labels[pocket] == 3).all()
    assert (labels[raw] == 3).all()
    marrow = ~shell & ~canal & ~pocket & (np.hypot(j - 40, i - 30) > 8)
    assert (labels[marrow] == 3).all()


def test_head_sphere_is_found_from_a_start_far_off_by_the_retry(monkeypatch):
    """A femoral head whose joint space is a faint valley (280 HU between
    300 HU head and acetabulum, 24..27 mm from the centre; 1.5 mm voxels),
    and labels whose femur/hip border sits on a sphere 10 mm off (as where
    the acetabulum's fragments went to the femur): the first search from
    there finds no valley deep enough, the retries from starts 6 mm off do,
    on the head's centre to within a voxel and at the valley's radius."""
    from scipy import ndimage

    import pipeline.segment.labels as labels_module
    from pipeline.segment.labels import head_sphere
    spacing = np.full(3, 1.5)
    shape = (70, 70, 70)
    grid = np.moveaxis(np.indices(shape), 0, -1) * spacing
    centre = np.array(shape) * spacing / 2
    d = np.linalg.norm(grid - centre, axis=-1)
    hu = np.zeros(shape, dtype=np.float32)
    hu[d < 35] = 300.0
    hu[(d >= 24) & (d < 27)] = 280.0
    start = centre + [0.0, 0.0, 10.0]
    rough = np.zeros(shape, dtype=np.uint8)
    rough[d < 35] = 1  # hip
    rough[np.linalg.norm(grid - start, axis=-1) < 25.5] = 4  # femur, its border 10 mm off
    shaft = (np.hypot(grid[..., 1] - start[1], grid[..., 2] - start[2]) < 10) & (grid[..., 0] < start[0])
    rough[shaft] = 4
    hu[shaft & (d >= 35)] = 300.0
    box = ndimage.find_objects(rough, max_label=4)[3]
    found = head_sphere(rough, hu, 1, 4, box, spacing)
    assert found is not None
    assert np.linalg.norm(found[0] - centre) < 1.5
    assert abs(found[1] - 25.5) < 1.5
    monkeypatch.setattr(labels_module, "HEAD_RETRY_MM", 0.0)  # retries from the same start
    assert head_sphere(rough, hu, 1, 4, box, spacing) is None  # so the retry is what found it
