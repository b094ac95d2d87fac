"""Bone labels on the real scans (Pelvic-Ref-003 and the TotalSegmentator
example, ../shared/real_ct; skipped without them), and on scans made from
them: a bone missing or partly destroyed, the patient lying askew, smaller
or larger, contrast, growth plates, a narrower field of view, other noise
and kernels. Each keeps the labels the whole scan has, bone by bone.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.bones import LABEL_IDS
from pipeline.config import Config
from pipeline.run import run_mesh
from pipeline.segment.grid import Grid
from pipeline.segment.labels import label_bones

from ..helpers import dice
from .scans import labelled, lytic_ball, real_case, resized, soft_tissue_where, turned_frame, upper_part

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


REAL_FLOORS = {
    # Measured with this code less 0.03: regression guards on real CT (the
    # issue's targets, and the figures, are in the README).
    "totalseg_example": {"femur_left": 0.85, "femur_right": 0.85, "hip_left": 0.87, "hip_right": 0.86,
                         "sacrum": 0.65, "lumbar": 0.84},
    "pelvic_ref_003": {"femur_left": 0.87, "femur_right": 0.86},
}


def test_totalseg_femoral_heads_keep_their_shell_where_they_face_the_acetabulum():
    """On the TotalSegmentator example's 3 mm voxels neither head's surface
    nor its joint's valley shows, so each head is filled from the fitted
    acetabulum (22.8 mm about its centre). Where the filled shell (HU about
    195 at 20-22.8 mm) touched the acetabulum's brighter voxels, the
    separation of the labels dropped the darker, the head's: 160-180 voxels
    of each shell, surface Dice 0.965 / 0.941 against the reference. The
    filled interior now stays and the acetabulum's voxel touching it goes:
    the issue's surface target (>= 0.95) is met (0.980 / 0.973), the hips
    stay above it (0.976 / 0.968)."""
    figures = real_case("totalseg_example")[0]
    for name in ("femur_left", "femur_right", "hip_left", "hip_right"):
        assert figures[name]["surface_dice_1vox"] >= 0.95, (name, figures[name])


@pytest.mark.parametrize("case", sorted(REAL_FLOORS))
def test_real_ct_labels_do_not_regress(case):
    figures = real_case(case)[0]
    for name, floor in REAL_FLOORS[case].items():
        assert figures[name]["dice"] >= floor, (case, name, figures[name])
    if case == "pelvic_ref_003":
        assert figures["couch"]["bone_voxels_behind_back"] == 0
        # Nor anywhere outside the planner's body contour (on every slice).
        assert figures["couch"]["body_contoured_slices"] == 145
        assert figures["couch"]["bone_voxels_outside_body_contour"] == 0
        # Against the two commercial tools' automatic head contours in the
        # same RTSTRUCT (measured 0.930-0.939 less 0.03; the tools agree
        # with the manual contours to 0.89-0.91).
        for name in ("femur_left", "femur_right"):
            assert figures[name]["dice_vs_mbs"] >= 0.90, figures[name]
            assert figures[name]["dice_vs_dl"] >= 0.90, figures[name]
            # Their outlines lie within one voxel (1 mm in-plane) of ours
            # (surface Dice measured 0.927-0.972, less 0.03; the tools agree
            # with each other at 0.98-0.99, with the manual contours at 0.74-0.84).
            assert figures[name]["surface_dice_1vox_vs_mbs"] >= 0.89, figures[name]
            assert figures[name]["surface_dice_1vox_vs_dl"] >= 0.89, figures[name]
            # Most of what we miss of those contours lies in the one voxel
            # layer just outside our surface (measured 0.70-0.75): they take in
            # the partial-volume layer, as the TotalSegmentator labels do; a
            # piece of bone lost elsewhere (a head, a neck's marrow) would
            # bring the share down.
            assert figures[name]["misses_in_outer_layer_vs_mbs"] >= 0.6, figures[name]
            assert figures[name]["misses_in_outer_layer_vs_dl"] >= 0.6, figures[name]
    if case == "totalseg_example":
        # Surface Dice at one voxel's tolerance (measured 0.979 / 0.966 hips,
        # 0.965 / 0.942 femurs, 0.945 sacrum with S1, less 0.03): where Dice is
        # lost, it is mostly the outline's layer, not bone missed or misnamed.
        floors = {"hip_left": 0.94, "hip_right": 0.93, "femur_left": 0.93, "femur_right": 0.91}
        for name, floor in floors.items():
            assert figures[name]["surface_dice_1vox"] >= floor, figures[name]
        # The sacrum down to its tip (measured 0.836 / 0.958; 0.798 / 0.907 before
        # S4-S5 and the coccyx were taken below the bone threshold, 0.825 / 0.945
        # with the tip taken from 100 HU instead of 80).
        assert figures["sacrum"]["dice_with_s1"] >= 0.82
        assert figures["sacrum"]["surface_dice_1vox_with_s1"] >= 0.95


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


def test_noise_makes_no_joint_space_around_a_faint_head():
    """The TotalSegmentator example with 40 HU of noise added (a low-dose or
    large patient's scan): its faint hip joints show no valley, and noise
    must not make one. It did: a 10.7 HU "valley" on a sphere of 17.4 mm
    hugging the right head's dome, 7.6 mm off centre, and the right femur's
    mesh fell to Dice 0.69 against the reference (0.86 without the noise). A
    joint-space sphere is now congruent with its socket's (within
    HEAD_RADIUS_BELOW_MM of the start's radius)."""
    from pipeline import evaluate
    from pipeline.segment.mask import segment_bone
    from pipeline.volume import Volume

    path = evaluate.REAL_CT / "totalseg_example" / "example_ct.nii.gz"
    if not path.is_file():
        pytest.skip("real data not present (../shared/real_ct/totalseg_example)")
    hu, affine = evaluate.read_nifti(path)
    reference, _ = evaluate.read_nifti(path.with_name("example_seg_fast_force_split.nii.gz"))
    noisy = hu.astype(np.float32) + np.random.default_rng(5).normal(0.0, 40.0, hu.shape).astype(np.float32)
    volume = Volume(noisy, affine)
    cfg = Config().segment
    labels = label_bones(volume, segment_bone(volume, cfg), cfg)
    heads = labels.stats["femoral_heads"]
    for name in ("femur_left", "femur_right"):
        assert heads[name]["radius_mm"] > 20.0, heads[name]
        mine = labels.full(volume.shape) == LABEL_IDS[name]
        assert dice(mine, reference == evaluate.TOTALSEG_IDS[name]) >= 0.80, name   # measured 0.90 / 0.87


def test_a_forearm_resting_against_the_thigh_is_not_femur():
    """Pelvic-Ref-003 with a forearm made up against the right thigh (arms
    down, as a trauma or a large patient's scan has them): soft tissue
    touching the thigh's skin from the scan's lowest slice to 70 mm above the
    femoral heads' centres, and two long bones in it (1100 HU cortex, 150 HU
    marrow, 14 mm across). The bone below the hip bone used to seed the femur on its
    side, and the forearm became right femur (29 000 voxels); it is other
    bone, and the femurs are as in the scan as stored."""
    from pipeline.volume import Volume

    _, whole, volume = real_case("pelvic_ref_003")
    # Stored axial: slices along z, rows along y, columns along x.
    linear = volume.affine[:3, :3]
    assert np.allclose(linear, np.diag(np.diag(linear[::-1]))[::-1])
    z = volume.index_to_lps(np.c_[np.arange(volume.shape[0]), np.zeros((volume.shape[0], 2))])[:, 2][:, None, None]
    y = volume.index_to_lps(np.c_[np.zeros(volume.shape[1]), np.arange(volume.shape[1]), np.zeros(volume.shape[1])])
    y = y[:, 1][None, :, None]
    x = volume.index_to_lps(np.c_[np.zeros((volume.shape[2], 2)), np.arange(volume.shape[2])])[:, 0][None, None, :]
    hu = volume.hu.copy()
    along = z < 250.0   # from the scan's lowest slice (-38.5 mm) to 70 mm above the heads' centres
    k, row = int(np.argmin(np.abs(z[:, 0, 0] - 60.0))), int(np.argmin(np.abs(y[0, :, 0] - 98.0)))
    skin_x = x[0, 0][volume.hu[k, row] > -300].min()   # the right thigh's lateral skin
    x0 = skin_x - 30.0
    hu[along & (np.hypot((x - x0) / 1.6, y - 98.0) < 22.0) & (hu < -200)] = 40.0
    forearm = np.zeros(volume.shape, dtype=bool)
    for dx in (-14.0, 14.0):
        r = np.hypot(x - (x0 + dx), y - 98.0)
        hu[along & (r < 7.0)] = 1100.0
        hu[along & (r < 4.5)] = 150.0
        forearm |= along & (r < 7.0)
    result = labelled(Volume(hu, volume.affine))
    assert set(np.unique(result.labels[forearm]).tolist()) <= {0, LABEL_IDS["other"]}
    for name in ("femur_left", "femur_right"):
        assert dice(result.labels == LABEL_IDS[name], whole.labels == LABEL_IDS[name]) >= 0.99, name


def _axial_lps_grids(volume):
    """(z, y, x) LPS mm of the slices, rows and columns of an axial scan, broadcastable."""
    linear = volume.affine[:3, :3]
    assert np.allclose(linear, np.diag(np.diag(linear[::-1]))[::-1])
    n = volume.shape
    z = volume.index_to_lps(np.c_[np.arange(n[0]), np.zeros((n[0], 2))])[:, 2][:, None, None]
    y = volume.index_to_lps(np.c_[np.zeros(n[1]), np.arange(n[1]), np.zeros(n[1])])[:, 1][None, :, None]
    x = volume.index_to_lps(np.c_[np.zeros((n[2], 2)), np.arange(n[2])])[:, 0][None, None, :]
    return z, y, x


def test_contrast_in_the_bladder_and_aorta_is_never_bone():
    """Pelvic-Ref-003 with contrast made up, at least 5 mm from bone and
    blurred as the scanner does: excreted contrast at 900 HU in the back half
    of the bladder, and an aorta (10 mm radius) and common iliac arteries at
    350 HU in front of L4-L5. The bladder used to be other bone (37 000
    voxels) and the aorta lumbar spine (7 600): neither is labelled now, and
    the bones are labelled as in the scan without contrast."""
    from pipeline.volume import Volume

    _, whole, volume = real_case("pelvic_ref_003")
    z, y, x = _axial_lps_grids(volume)
    grid = Grid(volume, tuple(slice(0, n) for n in volume.shape))

    contrast = np.zeros(volume.shape, dtype=np.float32)
    bladder = (x / 40.0) ** 2 + ((y - 105.0) / 35.0) ** 2 + ((z - 215.0) / 32.0) ** 2 < 1.0
    contrast[bladder & (y > 100.0)] = 900.0
    for a, b, radius in [((15.0, 100.0, 395.0), (8.0, 105.0, 330.0), 10.0),
                         ((8.0, 105.0, 330.0), (35.0, 112.0, 280.0), 6.0),
                         ((8.0, 105.0, 330.0), (-35.0, 112.0, 280.0), 6.0)]:
        a, b = np.array(a), np.array(b)
        box = grid.sub_box(np.array([a, b]), radius)
        bz, by, bx = z[box[0]], y[:, box[1]], x[:, :, box[2]]
        ab = b - a   # the vessel: every point within radius of the segment a-b
        t = np.clip(((bx - a[0]) * ab[0] + (by - a[1]) * ab[1] + (bz - a[2]) * ab[2]) / (ab @ ab), 0.0, 1.0)
        inside = ((bx - a[0] - t * ab[0]) ** 2 + (by - a[1] - t * ab[1]) ** 2
                  + (bz - a[2] - t * ab[2]) ** 2 < radius ** 2)
        contrast[box][inside & (contrast[box] == 0)] = 350.0
    # No contrast within 5 mm of bone, looked for in the contrast's box grown by more than that.
    spacing = np.abs(np.diag(volume.affine[:3, :3][::-1]))
    near = tuple(slice(max(s.start - int(np.ceil(6.0 / d)), 0), s.stop + int(np.ceil(6.0 / d)))
                 for s, d in zip(ndimage.find_objects((contrast > 0).view(np.uint8))[0], spacing))
    contrast[near][ndimage.distance_transform_edt(volume.hu[near] <= 200.0, sampling=spacing) <= 5.0] = 0.0
    weight = ndimage.gaussian_filter((contrast > 0).astype(np.float32), 0.7 / spacing)
    level = ndimage.grey_dilation(contrast, size=(1, 5, 5))
    hu = volume.hu * (1.0 - weight) + level * weight
    touched = weight > 0.05
    assert np.count_nonzero(touched & (hu > 200.0)) > 30000
    result = labelled(Volume(hu.astype(np.float32), volume.affine))
    assert not result.labels[touched].any()
    assert result.report["segmentation"]["contrast_mm3"] > 50000.0
    for name in ("hip_left", "hip_right", "sacrum", "femur_left", "femur_right", "lumbar"):
        assert dice(result.labels == LABEL_IDS[name], whole.labels == LABEL_IDS[name]) >= 0.97, name


@pytest.mark.parametrize("case, size", [("pelvic_ref_003", 1.2), ("pelvic_ref_003", 0.85), ("totalseg_example", 0.85)],
                         ids=["a fifth larger", "an adolescent's", "an adolescent's on 3 mm voxels"])
def test_a_pelvis_larger_or_smaller_than_the_mean_is_labelled_as_at_its_own_size(case, size):
    """A real scan with its voxels ``size`` times as large: the same patient
    larger or smaller. Pelvic-Ref-003 (a pelvis of about the model's mean
    size) 1.2 times larger: the model's start at the mean size met it 18 mm
    too low and its sacrum came out 0.11 against the labels at its own
    size. 0.85 times (an early adolescent's pelvis, as a child's scan on a
    smaller field of view gives it; the fit's size 0.88-0.91 of the mean):
    0.956-0.995 (at 0.8 the sacrum's canal and foramina edges give 0.949 on
    Pelvic-Ref-003; at 0.7 one femoral head's sphere is found 3 mm small).
    Every bone is labelled as at its own size."""
    _, whole, volume = real_case(case)
    result = labelled(resized(volume, size))
    for name in ("hip_left", "hip_right", "sacrum", "femur_left", "femur_right", "lumbar"):
        assert dice(result.labels == LABEL_IDS[name], whole.labels == LABEL_IDS[name]) >= 0.95, name


def test_a_childs_lumbar_levels_are_counted_at_the_childs_size():
    """The TotalSegmentator CT with its voxels 0.75 times as large (a
    child's pelvis and spine, the fit's size 0.77): counted with an adult's
    lengths along the spine, the window for the first disc (20-50 mm above
    the lowest lumbar body) held two discs and took the upper, the count ran
    out of scan before L1, and T12 and up stayed lumbar (lumbar 0.850
    against the labels at its own size). The lengths scale with the fitted
    pelvis: five discs, the spine above them other, lumbar 0.903 (the fifth
    disc 7 mm low in L1)."""
    _, whole, volume = real_case("totalseg_example")
    result = labelled(resized(volume, 0.75))
    levels = result.report["segmentation"]["lumbar_levels"]
    assert len(levels["discs_lps_z_mm"]) == 5 and levels["above_l1_to_other_mm3"] > 0
    assert dice(result.labels == LABEL_IDS["lumbar"], whole.labels == LABEL_IDS["lumbar"]) >= 0.88


def growth_plates(volume, labels: np.ndarray, heads: dict, width_mm: float = 2.0, hu: float = 60.0):
    """(``volume`` with a child's open growth plates carved into its bones as
    cartilage (``hu``, ``width_mm`` thick), the plate voxels): across each
    femoral neck at 0.6 of the head's radius from its centre (the capital
    physis), the triradiate cartilage of each acetabulum (three half-planes
    from the acetabular floor: up and back, up and front, down), and the
    iliac crest's apophysis (3 mm under each hip bone's upper 40 %)."""
    from pipeline.volume import Volume

    plate = np.zeros(labels.shape, dtype=bool)

    def lps(box):
        index = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"), axis=-1)
        return volume.index_to_lps(index.reshape(-1, 3).astype(float)).reshape(index.shape)

    def around(centre, reach):
        corners = volume.lps_to_index(centre + reach * np.array(np.meshgrid(*[[-1, 1]] * 3)).reshape(3, -1).T)
        return tuple(slice(max(int(np.floor(lo)), 0), min(int(np.ceil(hi)) + 1, n))
                     for lo, hi, n in zip(corners.min(0), corners.max(0), labels.shape))

    for femur, hip, side in (("femur_left", "hip_left", 1.0), ("femur_right", "hip_right", -1.0)):
        centre, radius = np.array(heads[femur]["centre_lps_mm"]), heads[femur]["radius_mm"]
        box = around(centre, 2.5 * radius)
        arm = lps(box) - centre
        distance = np.linalg.norm(arm, axis=-1)
        femur_here, hip_here = labels[box] == LABEL_IDS[femur], labels[box] == LABEL_IDS[hip]
        neck = arm[femur_here & (distance > radius + 5) & (distance < radius + 25)].mean(axis=0)
        along = arm @ (neck / np.linalg.norm(neck))
        plate[box] |= femur_here & (np.abs(along - 0.6 * radius) < width_mm / 2) & (distance < 1.3 * radius)
        floor = arm - [-side * 0.8 * radius, 0.0, 0.0]
        for limb in ([0.0, 0.5, 1.0], [0.0, -0.7, 0.7], [0.0, 0.1, -1.0]):
            limb = np.array(limb) / np.linalg.norm(limb)
            reach = floor @ limb
            plate[box] |= (hip_here & (np.abs(floor @ np.cross([1.0, 0.0, 0.0], limb)) < width_mm / 2)
                           & (reach > -2.0) & (reach < 1.2 * radius) & (np.linalg.norm(floor, axis=-1) < 2 * radius))
    for hip in ("hip_left", "hip_right"):
        box = ndimage.find_objects((labels == LABEL_IDS[hip]).astype(np.uint8))[0]
        bone = labels[box] == LABEL_IDS[hip]
        points = lps(box)
        up = np.argmax(np.abs(volume.affine[2, :3]))                        # the axis nearest the LPS z
        z = np.where(bone, points[..., 2], -np.inf)
        top = np.expand_dims(z.max(axis=up), up)
        crest = top > np.quantile(top[np.isfinite(top)], 0.6)
        depth = top - points[..., 2]
        plate[box] |= bone & crest & (depth > 3.0) & (depth < 3.0 + max(width_mm, 1.01 * volume.spacing_mm[up]))
    carved = np.where(plate, np.float32(hu), volume.hu)
    return Volume(carved, volume.affine), plate


def test_open_growth_plates_leave_every_bone_whole_and_its_own():
    """Pelvic-Ref-003 as an adolescent's scan (the age of most bone
    sarcomas): cartilage of 60 HU, 2 mm thick, across both femoral necks
    under the heads, as the triradiate cartilage of both acetabula and
    under both iliac crests. The plates part each bone into pieces
    (epiphysis and neck; ilium, ischium and pubis; apophysis and wing) that
    the model and the heads' spheres keep together: every bone keeps its
    labels (0.979-0.999 against the adult scan's, outside the plates) and
    about nine tenths of each plate inside a bone is labelled as that bone
    (0.88-0.91), so its mesh is one solid."""
    _, whole, volume = real_case("pelvic_ref_003")
    young, plate = growth_plates(volume, whole.labels, whole.report["segmentation"]["femoral_heads"])
    result = labelled(young)
    for name in ("hip_left", "hip_right", "sacrum", "femur_left", "femur_right", "lumbar"):
        mine, adult = result.labels == LABEL_IDS[name], whole.labels == LABEL_IDS[name]
        assert dice(mine & ~plate, adult & ~plate) >= 0.97, name
        if (adult & plate).any():
            assert np.count_nonzero(mine & adult & plate) >= 0.85 * np.count_nonzero(adult & plate), name


def test_a_small_field_of_view_cutting_the_hips_and_femurs_gives_valid_meshes():
    """Pelvic-Ref-003 reconstructed on a field of view 240 mm wide (x from
    -109 to 130 mm): the iliac wings and both greater trochanters are cut at
    its sides, and the right femur also by the lowest slice. Its mesh was
    refused (needles 1e-6 mm thin where the two caps met along the scan's
    edge); every bone now reads back valid (run_mesh checks each) and keeps
    its labels (0.99 against the whole scan's, inside the field of view)."""
    from pipeline.volume import Volume

    _, whole, volume = real_case("pelvic_ref_003")
    x = volume.index_to_lps(np.c_[np.zeros((volume.shape[2], 2)), np.arange(volume.shape[2])])[:, 0]
    columns = np.flatnonzero(np.abs(x - 10.0) <= 120.0)
    c0, c1 = int(columns.min()), int(columns.max()) + 1
    affine = volume.affine.copy()
    affine[:3, 3] = volume.index_to_lps(np.array([[0, 0, c0]]))[0]
    result = run_mesh(Volume(np.ascontiguousarray(volume.hu[:, :, c0:c1]), affine), Config())
    kept = whole.labels[:, :, c0:c1]
    for name in ("hip_left", "hip_right", "sacrum", "femur_left", "femur_right", "lumbar"):
        assert dice(result.labels == LABEL_IDS[name], kept == LABEL_IDS[name]) >= 0.97, name


@pytest.mark.parametrize("side", ["hip_left", "hip_right"])
def test_a_missing_hip_bone_is_not_made_up_and_the_others_keep_their_labels(side):
    """Pelvic-Ref-003 with a hip bone made soft tissue (as after a
    hemipelvectomy): its meshes used to be refused (edges used four times
    where clamped voxels met the marching cubes' face test with a tie), and
    the model's interior made 9 200 voxels of hip_left where there is no
    bone. Every mesh reads back valid (run_mesh checks each), nothing in the
    removed bone has its name, and the report asks whether it is missing.
    The model, fitted again without it, leaves the other bones where they
    are: against the intact scan's labels (outside the removed bone) the
    sacrum was 0.61 / 0.55 (without the left / right hip bone), the other
    hip bone 0.92 / 0.83, lumbar 0.89 / 0.90; now 0.95-1.00 (the femur on
    that side 0.97 / 0.99: the model of the missing bone still names bone
    deep inside it, as a tumour's remnant would be, and the left femoral
    head, found 6 mm too small without its socket, loses its outer shell to
    it)."""
    from pipeline.qa import report_warnings

    _, whole, volume = real_case("pelvic_ref_003")
    without, gone = soft_tissue_where(volume, whole.labels == LABEL_IDS[side])
    result = labelled(without)
    assert not (result.labels[whole.labels == LABEL_IDS[side]] == LABEL_IDS[side]).any()
    warnings = " ".join(report_warnings({"segmentation": result.report["segmentation"],
                                         "config": {"segment": {"core_hu": 500.0}}}))
    assert f"{side}: only" in warnings and "is it missing" in warnings
    for name in ("hip_left", "hip_right", "sacrum", "femur_left", "femur_right", "lumbar"):
        if name != side:
            kept = (whole.labels == LABEL_IDS[name]) & ~gone
            assert dice(result.labels == LABEL_IDS[name], kept) >= 0.92, name


@pytest.mark.parametrize("side, degrees", [("hip_left", 0.0), ("hip_right", 0.0), ("hip_left", 20.0)],
                         ids=["left", "right", "left, lying diagonally by 20 degrees"])
def test_a_missing_hip_bone_on_thick_slices_leaves_the_others_their_labels(side, degrees):
    """The TotalSegmentator example (3 mm slices) with a hip bone made soft
    tissue. Without the left one, the fit found it missing but the fit
    without it, from its own starts, lost the others (sacrum 0.28, hip_right
    0.76, the left femur 0 against the intact scan's labels); the first
    fit's pose, which held them, is posed beside those starts. Lying
    diagonally by 20 degrees, every fit lost them (0.00-0.58) but the one
    without the hip bone from the robust search's places, which the second
    restart now also poses. Every other bone >= 0.90 (0.91-1.00) and nothing
    in the removed bone has its name."""
    _, whole, volume = real_case("totalseg_example")
    without, gone = soft_tissue_where(volume, whole.labels == LABEL_IDS[side])
    result = labelled(turned_frame(without, (0.0, 1.0, 0.0), degrees) if degrees else without)
    assert result.pelvis_fit.left_out == (side,)
    assert not (result.labels[whole.labels == LABEL_IDS[side]] == LABEL_IDS[side]).any()
    for name in ("hip_left", "hip_right", "sacrum", "femur_left", "femur_right", "lumbar"):
        if name != side:
            kept = (whole.labels == LABEL_IDS[name]) & ~gone
            assert dice(result.labels == LABEL_IDS[name], kept) >= 0.90, name


@pytest.mark.parametrize("axis, margin, degrees",
                         [((0.0, 1.0, 0.0), 2, 15.0), ((0.0, 1.0, 0.0), 3, 15.0), ((0.0, 1.0, 0.0), 2, 17.0),
                          ((0.0, 0.0, 1.0), 2, 15.0), ((1.0, 0.0, 0.0), 2, -20.0), ((0.0, 1.0, 0.0), 2, -20.0),
                          ((0.0, 1.0, 0.0), 2, 13.0)],
                         ids=["lying diagonally", "lying diagonally, a voxel more removed",
                              "lying diagonally by 17 degrees", "rolled", "tilted by 20 degrees",
                              "lying diagonally by 20 degrees the other way", "lying diagonally by 13 degrees"])
def test_a_missing_hip_bone_in_a_patient_lying_askew(axis, margin, degrees):
    """Pelvic-Ref-003 without its left hip bone, its patient frame turned 15
    degrees (17) about the front-back axis (lying diagonally) or the long axis
    (rolled on the couch). Lying diagonally, the start took the turn but
    from the unturned place it found, and the fit without the hip bone lost
    the sacrum (0.67 against the intact scan's labels); once turned, the
    start searches the place again. Rolled, the turned mean size was looked
    for on the bone's centre only, which the loss moves: sacrum 0.31,
    hip_right 0.72; without a bone it is looked for beside it too. With a
    voxel more removed around the bone, the start's best place moved 10 mm
    up (its score within 6 % of the place below's) and the sacrum was
    lost again (0.72); the runner-up is posed too, and the one with more of
    the model on bone is refined. Lying diagonally by 17 degrees, the start
    took a turn 7 degrees off and the sacrum was 0.30 (hip_right 0.77,
    femur_right 0.85); the three best turns are posed too when a bone is
    left out. Tilted by 20 degrees or lying diagonally by 20 the other way,
    the start's search without the hip bone took 0.8 of the mean size (it
    sat on what is left better than the mean size, unturned) 40 mm off, and
    every bone was lost (sacrum 0.16 / 0.23); the mean size's starts are
    posed too. Lying diagonally by 13 degrees, a restart that draped the
    missing bone's model over other bone (37 % on bone) was taken over the
    fit that found it missing, more of the model lying on bone: fits are
    compared over the bones neither finds missing. Every other bone >= 0.92
    (0.94-1.00)."""

    _, whole, volume = real_case("pelvic_ref_003")
    without, gone = soft_tissue_where(volume, whole.labels == LABEL_IDS["hip_left"], margin)
    result = labelled(turned_frame(without, axis, degrees))
    assert result.pelvis_fit.left_out == ("hip_left",)
    for name in ("hip_right", "sacrum", "femur_left", "femur_right", "lumbar"):
        kept = (whole.labels == LABEL_IDS[name]) & ~gone
        assert dice(result.labels == LABEL_IDS[name], kept) >= 0.92, name


@pytest.mark.parametrize("share", [0.3, 0.6])
def test_a_hip_bone_partly_destroyed_does_not_move_the_fit_off_the_others(share):
    """Pelvic-Ref-003 with the upper 30 % / 60 % of its left hip bone made
    soft tissue (a tumour of the iliac wing): the bone's left-right centre,
    where the fit's start looked, moved 10-14 mm to the right, and the start
    lost the sacrum (0.52 against the intact scan's labels, both). It now
    also looks 10 and 20 mm to either side: the sacrum and the other bones
    keep their labels, and what is left of the hip bone keeps its name."""

    _, whole, volume = real_case("pelvic_ref_003")
    hip = whole.labels == LABEL_IDS["hip_left"]
    without, gone = soft_tissue_where(volume, upper_part(hip, volume, share))
    result = labelled(without)
    for name in ("hip_right", "sacrum", "femur_left", "femur_right", "lumbar"):
        kept = (whole.labels == LABEL_IDS[name]) & ~gone
        assert dice(result.labels == LABEL_IDS[name], kept) >= 0.95, name
    remnant = hip & ~gone
    assert np.mean(result.labels[remnant] == LABEL_IDS["hip_left"]) >= 0.95


@pytest.mark.parametrize("share, axis, degrees",
                         [(0.3, (1.0, 0.0, 0.0), 20.0), (0.3, (0.0, 1.0, 0.0), 15.0), (0.3, (0.0, 1.0, 0.0), 25.0),
                          (0.3, (0.0, 1.0, 0.0), 20.0), (0.45, (0.0, 1.0, 0.0), 20.0), (0.3, (0.0, 1.0, 0.0), -15.0)],
                         ids=["tilted", "lying diagonally by 15 degrees", "lying diagonally by 25 degrees",
                              "lying diagonally by 20 degrees", "45 % gone, lying diagonally by 20 degrees",
                              "lying diagonally by 15 degrees the other way"])
def test_a_hip_bone_partly_destroyed_in_a_patient_lying_askew(share, axis, degrees):
    """The upper 30 % (45 %) of Pelvic-Ref-003's left hip bone made soft
    tissue (a tumour of the iliac wing) and its patient tilted by 20 degrees
    or lying diagonally: the start, drawn towards what is left of the hip
    bone, put the model where a little over half of it lay on bone
    (0.51-0.54), and the fit lost the sacrum (0.10 / 0.27 / 0.74 / 0.22 /
    0.14 against the intact scan's labels). Such a fit is started again from
    places scored on the model's best 80 % of points, which holds the first
    three; lying diagonally by 20 degrees that start too stays near half on
    bone (0.50-0.54), and the fit is started again from the fit without the
    hip bone that fits worse (0.66-0.83 on bone without it; 0.67-0.71 with
    it). Lying diagonally the other way, the fit sat at 67 % with the sacrum
    0.69 (lumbar 0.91) and was not started again under 65 %; it is under
    70 %. The fit with most of the model on bone stands: the sacrum and the
    other bones keep their labels, and what is left of the hip bone keeps
    its name."""
    _, whole, volume = real_case("pelvic_ref_003")
    hip = whole.labels == LABEL_IDS["hip_left"]
    without, gone = soft_tissue_where(volume, upper_part(hip, volume, share))
    result = labelled(turned_frame(without, axis, degrees))
    for name in ("hip_right", "sacrum", "femur_left", "femur_right", "lumbar"):
        kept = (whole.labels == LABEL_IDS[name]) & ~gone
        assert dice(result.labels == LABEL_IDS[name], kept) >= 0.95, name
    assert np.mean(result.labels[hip & ~gone] == LABEL_IDS["hip_left"]) >= 0.95


@pytest.mark.parametrize("degrees", [20.0, -20.0])
def test_a_partly_destroyed_hip_bone_lying_diagonally_does_not_push_the_fit_out_of_the_scan(degrees):
    """The TotalSegmentator example (3 mm slices, from the lower thorax to the
    thighs) with the upper 30 % of its left hip bone made soft tissue and its
    patient lying diagonally by 20 degrees. The fit turned 47 degrees and
    slid through the scan's top face, the right hip bone's model wholly
    beyond it where no bone reaches the face, and every bone was lost
    (0.00-0.50 against the intact scan's labels): 75 % of the model in view
    lay on bone, so the fit was not started again. Counting the model just
    beyond a face no bone reaches as off bone (49 %) it is. Lying diagonally
    the other way the fit sat at 65 % (the right femur 0.91) and was not
    started again either. Every other bone keeps its labels, and what is
    left of the hip bone keeps its name."""
    _, whole, volume = real_case("totalseg_example")
    hip = whole.labels == LABEL_IDS["hip_left"]
    without, gone = soft_tissue_where(volume, upper_part(hip, volume, 0.3))
    result = labelled(turned_frame(without, (0.0, 1.0, 0.0), degrees))
    for name in ("hip_right", "sacrum", "femur_left", "femur_right", "lumbar"):
        kept = (whole.labels == LABEL_IDS[name]) & ~gone
        assert dice(result.labels == LABEL_IDS[name], kept) >= 0.95, name
    assert np.mean(result.labels[hip & ~gone] == LABEL_IDS["hip_left"]) >= 0.95


def test_a_lytic_tumour_at_the_sacroiliac_joint_is_restored_flagged_and_moves_no_other_bone():
    """The seed case's tumour: Pelvic-Ref-003 with a ball of soft tissue
    (40 HU), 20 mm in radius, about the left sacroiliac joint, through the
    ilium and the sacral ala. What is left of each bone keeps its name,
    the model restores most of the bone destroyed, the other bones keep
    their labels, and the report flags the sacrum's left half, filled by
    its model alone for 39 % against 29 % of its right half (as scanned,
    32 % / 30 %): before, only a hip bone filled more than the other was
    flagged, and the sacrum, which has no pair, went unflagged up to a ball
    of 40 mm."""
    from pipeline.qa.report_html import label_warnings

    _, whole, volume = real_case("pelvic_ref_003")
    hip, sacrum = whole.labels == LABEL_IDS["hip_left"], whole.labels == LABEL_IDS["sacrum"]
    joint = volume.index_to_lps(np.argwhere(ndimage.binary_dilation(hip, iterations=3) & sacrum).mean(axis=0)[None])
    lesion, ball = lytic_ball(volume, joint[0], 20.0)
    result = labelled(lesion)
    for name in ("hip_left", "sacrum", "hip_right", "femur_left", "femur_right", "lumbar"):
        kept = (whole.labels == LABEL_IDS[name]) & ~ball
        assert np.mean(result.labels[kept] == LABEL_IDS[name]) >= 0.97, name
        if name not in ("hip_left", "sacrum"):
            assert dice(result.labels == LABEL_IDS[name], kept) >= 0.99, name
    destroyed = ball & (whole.labels > 0)
    assert np.mean(result.labels[destroyed] > 0) >= 0.7
    warnings = [w for w in label_warnings(result.report["segmentation"], {}) if "fitted shape model alone" in w]
    assert [w.split(" half")[0] for w in warnings] == ["sacrum: 39 % of its left"], warnings


def test_a_lytic_tumour_in_the_middle_of_the_sacrum_is_restored_as_sacrum_and_moves_no_other_bone():
    """A chordoma's place: Pelvic-Ref-003 with a ball of soft tissue (40
    HU), 20 mm in radius, about the middle of its sacrum's label. The
    model's interior restores the destroyed bone as sacrum (91 % of it;
    only the outer layer the image decides is left to it), what is left of
    the sacrum keeps its name (98 %) and the other bones their labels
    (0.99-1.00). Both halves fill alike, so no side is named (the halves'
    rule is for a tumour at a sacroiliac joint); the sacrum's whole
    model-filled share (0.31 -> 0.34) stays within what normal sacra read."""
    from pipeline.qa.report_html import label_warnings

    _, whole, volume = real_case("pelvic_ref_003")
    sacrum = whole.labels == LABEL_IDS["sacrum"]
    lesion, ball = lytic_ball(volume, volume.index_to_lps(np.argwhere(sacrum).mean(axis=0)[None])[0], 20.0)
    result = labelled(lesion)
    destroyed = ball & sacrum
    assert np.mean(result.labels[destroyed] == LABEL_IDS["sacrum"]) >= 0.85
    assert np.mean(result.labels[sacrum & ~ball] == LABEL_IDS["sacrum"]) >= 0.97
    for name in ("hip_left", "hip_right", "femur_left", "femur_right", "lumbar"):
        kept = whole.labels == LABEL_IDS[name]
        assert dice(result.labels == LABEL_IDS[name], kept) >= 0.99, name
    assert not [w for w in label_warnings(result.report["segmentation"], {}) if "sacroiliac joint" in w]


def test_a_sharp_noisy_scan_keeps_the_couch_outside_the_body():
    """Pelvic-Ref-003 as a sharp kernel on a large patient would show it: edges
    enhanced (1.5 times the difference to a 1 mm in-plane blur) and 90 HU of
    noise. The foam's noisy voxels used to join the couch to the body, and a
    plastic rail of the couch (130-165 HU, 25 000 voxels over the threshold
    with the noise) became the right femur. No bone voxel lies outside the
    planner's body contour."""
    from scipy import ndimage as ndi

    from pipeline import evaluate
    from pipeline.io import load_ct
    from pipeline.segment.mask import segment_bone
    from pipeline.volume import Volume

    folder = evaluate.REAL_CT / "pelvic_ref_003"
    if not folder.is_dir():
        pytest.skip("real data not present (../shared/real_ct/pelvic_ref_003)")
    volume = load_ct(folder)
    hu = volume.hu.astype(np.float32)
    sharp = hu + 1.5 * (hu - ndi.gaussian_filter(hu, (0, 1.0, 1.0)))
    sharp += np.random.default_rng(1).normal(0.0, 90.0, hu.shape).astype(np.float32)
    noisy = Volume(sharp, volume.affine)
    bone = segment_bone(noisy, Config().segment)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[bone.box] = bone.voxels
    inside, slices = evaluate.roi_holds(evaluate.read_rtstruct(folder), evaluate.RTSTRUCT_BODY, volume,
                                        np.argwhere(mask))
    assert slices.all()
    outside = int(np.count_nonzero(~inside))
    assert outside == 0, f"{outside} bone voxels outside the body contour"


@pytest.mark.parametrize("axes", [(0,), (1, 2)], ids=["slices-reversed", "rows-and-columns-reversed"])
def test_pelvic_ref_labels_do_not_depend_on_how_the_slices_are_stored(axes):
    """Pelvic-Ref-003 stored with its slices reversed (feet first), or its
    rows and columns reversed (as a prone scan's images are), the affine to
    match: the same model fit, head spheres and labels, voxel for voxel.

    - Rows: its 1 mm pixels put the body's outline on a 2 mm grid sampled
      from the array's first voxel; the midline taken from that outline
      moved by 0.07 mm, the fit started from it by 0.27 mm, and 1006
      voxels changed label (the midline is now the bone's own centre).
    - Slices: a tie of whole-number HU at the right hip joint went the
      other way in the flood from the seeds (3 voxels after filling; ties
      now go to the nearer seed). With all three axes reversed one voxel
      there still ties (3 after filling)."""
    from pipeline import evaluate
    from pipeline.io import load_ct
    from pipeline.segment.mask import segment_bone
    from pipeline.volume import Volume

    folder = evaluate.REAL_CT / "pelvic_ref_003"
    if not folder.is_dir():
        pytest.skip("real data not present (../shared/real_ct/pelvic_ref_003)")
    volume = load_ct(folder)
    flip, index = np.eye(4), [slice(None)] * 3
    for axis in axes:
        flip[axis, axis], flip[axis, 3], index[axis] = -1.0, volume.shape[axis] - 1, slice(None, None, -1)
    index = tuple(index)
    flipped = Volume(np.ascontiguousarray(volume.hu[index]), volume.affine @ flip)
    cfg = Config().segment
    found = [label_bones(v, segment_bone(v, cfg), cfg) for v in (volume, flipped)]
    assert found[0].stats["femoral_heads"] == found[1].stats["femoral_heads"]
    assert np.abs(found[0].fit.vertices_lps_mm - found[1].fit.vertices_lps_mm).max() < 1e-9
    assert np.array_equal(found[0].full(volume.shape), found[1].full(flipped.shape)[index])


def test_pelvic_ref_cut_below_the_iliac_crests_keeps_its_labels():
    """Pelvic-Ref-003 without its slices above 243 mm (the crests, S1 and the
    lumbar spine beyond the edge): hips and femurs as in the whole scan (they
    were 0.75 / 0.68 and 0.85 / 0.84 when the fit shrank into the view)."""
    from pipeline.volume import Volume

    _, whole, volume = real_case("pelvic_ref_003")
    z = volume.index_to_lps(np.c_[np.arange(volume.shape[0]), np.zeros((volume.shape[0], 2))])[:, 2]
    n = int((z <= 243.0).sum())
    assert z[0] < z[-1] and n < volume.shape[0]
    result = labelled(Volume(np.ascontiguousarray(volume.hu[:n]), volume.affine.copy()))
    for name in ("hip_left", "hip_right", "femur_left", "femur_right"):
        k = LABEL_IDS[name]
        assert dice(result.labels == k, whole.labels[:n] == k) >= 0.97, name


def test_pelvic_ref_starting_inside_the_femoral_heads_keeps_its_labels():
    """Pelvic-Ref-003 without its slices below 165 mm: the scan begins 15-18 mm
    below the heads' centres, through their lower halves, with no neck or shaft
    below. Every bone keeps its labels of the whole scan (measured 0.978-0.998)
    and both heads are still placed from their joint spaces."""
    from pipeline.volume import Volume

    _, whole, volume = real_case("pelvic_ref_003")
    z = volume.index_to_lps(np.c_[np.arange(volume.shape[0]), np.zeros((volume.shape[0], 2))])[:, 2]
    k = int((z < 165.0).sum())
    assert z[0] < z[-1] and 0 < k
    affine = volume.affine.copy()
    affine[:3, 3] = volume.index_to_lps(np.array([[k, 0, 0]]))[0]
    result = labelled(Volume(np.ascontiguousarray(volume.hu[k:]), affine))
    for name in LABEL_IDS:
        truth = whole.labels[k:] == LABEL_IDS[name]
        if truth.any():
            assert dice(result.labels == LABEL_IDS[name], truth) >= 0.96, name
    heads = result.report["segmentation"]["femoral_heads"]
    assert {h["from"] for h in heads.values()} == {"valley"} and len(heads) == 2, heads


@pytest.mark.parametrize("axis", [(0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)],
                         ids=["vertical", "antero-posterior", "left-right"])
def test_pelvic_ref_with_its_patient_turned_20_degrees_keeps_its_labels(axis):
    """The same voxels with the patient frame turned 20 degrees about the
    body's long axis (rolled on the couch), the front-back axis (lying
    diagonally) or the left-right axis (pelvic tilt): every bone matches the
    scan as stored. The start searched no turns: the hips were 0.80 / 0.70
    rolled, the femurs 0.03 lying diagonally, the sacrum 0.64 tipped; and
    lying diagonally, the spine's seeds were looked for within 35 mm of the
    midline in LPS x, which the spine turned with the pelvis leaves (sacrum
    0.79, lumbar 0.65)."""

    _, whole, volume = real_case("pelvic_ref_003")
    result = labelled(turned_frame(volume, axis, 20.0))
    for name in ("hip_left", "hip_right", "sacrum", "femur_left", "femur_right", "lumbar"):
        k = LABEL_IDS[name]
        assert dice(result.labels == k, whole.labels == k) >= 0.97, name


def wider_pixels(volume, factor: float):
    """The scan as a wider field of view on the same matrix would show it:
    each slice blurred to a pixel ``factor`` times wider and sampled at the
    wider pixels' centres (linear), HU whole numbers; and the row and column
    of the original nearest each new pixel."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    from pipeline.volume import Volume

    k, r, c = volume.shape
    rows, cols = (np.arange(int(n / factor)) * factor + (factor - 1) / 2 for n in (r, c))
    jj, ii = np.meshgrid(rows, cols, indexing="ij")
    hu = gaussian_filter(volume.hu.astype(np.float32), (0, 0.42 * factor, 0.42 * factor))
    out = np.stack([map_coordinates(hu[s], [jj, ii], order=1) for s in range(k)])
    affine = volume.affine.copy()
    affine[:3, 1:3] *= factor
    affine[:3, 3] += (factor - 1) / 2 * (volume.affine[:3, 1] + volume.affine[:3, 2])
    nearest = (np.clip(np.round(jj).astype(int), 0, r - 1), np.clip(np.round(ii).astype(int), 0, c - 1))
    return Volume(np.round(out), affine), nearest


def test_pelvic_ref_on_the_pixels_of_a_wider_field_of_view_keeps_its_labels():
    """A larger patient is scanned with a wider field of view on the same
    512 x 512 matrix: Pelvic-Ref-003 (1 mm pixels) resampled to the 1.37 mm
    pixels of a 700 mm field keeps every bone against its own labels taken
    at the new pixels' centres (measured 2026-12-07: hips 0.97, femurs 0.98,
    lumbar 0.97, sacrum 0.935; the partial volume of the wider pixel and the
    nearest-pixel reference cost a few hundredths), to the 0.92 that this
    file's other changes of the scan (a bone missing, a patient askew) hold
    a bone to."""
    _, whole, volume = real_case("pelvic_ref_003")
    wide, (rows, cols) = wider_pixels(volume, 1.37)
    result = labelled(wide)
    reference = whole.labels[:, rows, cols]
    for name in ("hip_left", "hip_right", "sacrum", "femur_left", "femur_right", "lumbar"):
        k = LABEL_IDS[name]
        assert dice(result.labels == k, reference == k) >= 0.92, name


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


def test_pelvic_ref_lower_sacrum_is_solid_below_the_model():
    """Pelvic-Ref-003's sacrum below the fitted S3 end (S3-S5, no model
    interior there) is rings of cortex around fatty marrow (0-100 HU) and a
    canal of fat: of the voxels its axial sections enclose (closed by 3
    voxels) whose smoothed HU is marrow's (0 HU or more), at least 90 % are
    labelled sacrum in the final labels (0.72 before its marrow was filled,
    0.87 before that marrow was held through the surface's snap; 0.92 now),
    and the canal's fat (under -30 HU smoothed, more than a voxel inside the
    sections) stays open (9 % of it labelled now, 11 % before: what the
    enclosure fills already took; all of it would be with a canal level
    under that fat's HU)."""
    from pipeline.segment.spine import smooth_hu

    _, result, volume = real_case("pelvic_ref_003")
    fit = result.pelvis_fit
    end_z = fit.vertices_lps_mm[fit.landmarks["s3_end"], 2].min()
    smoothed = smooth_hu(volume.hu, volume.spacing_mm)
    sacrum = result.labels == LABEL_IDS["sacrum"]
    disk = np.hypot(*np.mgrid[-3:4, -3:4]) <= 3
    marrow = labelled = fat = fat_labelled = 0
    for k in range(volume.shape[0]):
        section = sacrum[k]
        if volume.index_to_lps(np.array([[k, 0, 0]]))[0, 2] >= end_z or not section.any():
            continue
        enclosed = ndimage.binary_fill_holes(ndimage.binary_closing(np.pad(section, 5), disk)[5:-5, 5:-5])
        marrow += np.count_nonzero(enclosed & (smoothed[k] >= 0.0))
        labelled += np.count_nonzero(enclosed & (smoothed[k] >= 0.0) & section)
        dark = ndimage.binary_erosion(enclosed) & (smoothed[k] < -30.0)
        fat += np.count_nonzero(dark)
        fat_labelled += np.count_nonzero(dark & section)
    assert marrow > 10_000 and labelled >= 0.9 * marrow, (labelled, marrow)
    assert fat > 200 and fat_labelled <= 0.2 * fat, (fat_labelled, fat)


def test_pelvic_ref_fatty_lumbar_marrow_keeps_the_bodies_solid():
    """Fatty vertebral marrow (older patients) on 1 x 1 x 3 mm voxels, the
    planning CTs' grid: Pelvic-Ref-003's lumbar marrow (its label less its
    outer voxel, under 300 HU) made 150 HU darker, from a median of 202 to
    52 HU. Its cortex, resolved in-plane, still encloses the bodies: L1-L5
    against the labels of the scan as it is measured 0.980, 92.8 % of the
    darkened marrow labelled (30 / 90 / 180 HU darker: 0.998 / 0.991 / 0.970,
    99.8 / 97.3 / 86.2 %). The faint 3 mm TotalSegmentator example is the
    weak case (30 HU darker: 67 % of its L1-L5 marrow labelled; README)."""
    from pipeline.volume import Volume

    _, result, volume = real_case("pelvic_ref_003")
    lumbar = result.labels == LABEL_IDS["lumbar"]
    marrow = ndimage.binary_erosion(lumbar) & (volume.hu < 300)
    hu = volume.hu.astype(np.float32)
    hu[marrow] -= 150.0
    assert np.median(hu[marrow]) < 60.0
    darker = labelled(Volume(hu, volume.affine)).labels
    ours = darker == LABEL_IDS["lumbar"]
    dice = 2 * np.count_nonzero(ours & lumbar) / (np.count_nonzero(ours) + np.count_nonzero(lumbar))
    assert dice >= 0.96, dice
    assert np.count_nonzero(ours & marrow) >= 0.9 * np.count_nonzero(marrow)


def test_a_darker_scan_finds_the_same_femoral_heads():
    """Pelvic-Ref-003 40 HU darker throughout (another scanner's
    calibration): the head's surface vote counted 2 mm cells fixed to the LPS
    axes, and the busiest single cell won. The right head's centre lies near
    a cell corner, its votes split among eight cells, and a patch of the
    acetabular fossa, its votes in one, won: a sphere of 23.0 mm 6.5 mm
    medial (against 27.0 mm; its valley then found 7.2 mm off), and 0.835
    against the manual contours. Counted in blocks of 2 x 2 x 2 cells, each head is
    the unperturbed scan's to a voxel (measured 0.2-0.7 mm, 0.1-0.2 mm in
    radius) and the radii warning stays silent."""
    from pipeline.qa import report_warnings
    from pipeline.volume import Volume

    _, whole, volume = real_case("pelvic_ref_003")
    darker = labelled(Volume(volume.hu - np.float32(40.0), volume.affine))
    heads = darker.report["segmentation"]["femoral_heads"]
    for name, head in whole.report["segmentation"]["femoral_heads"].items():
        assert np.linalg.norm(np.subtract(heads[name]["centre_lps_mm"], head["centre_lps_mm"])) <= 1.0, (name, heads)
        assert abs(heads[name]["radius_mm"] - head["radius_mm"]) <= 1.0, (name, heads)
    assert not any("joint spheres differ" in w for w in report_warnings(darker.report))
