"""The round trip with 3D Slicer on the sample CT (the phantom): a run's
segmentation.seg.nrrd and labels.nii.gz fed back with --labels, a
segmentation edited as Slicer's tools save it, labels on a coarser grid, the
plan as markups, and every refusal, through the command line where a user
would meet it.

Truth: the phantom's analytic bones, the first run's own outputs, and the
reach of each step of the surface stage (bounds below say which).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import slicerio
import trimesh
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from pipeline.bones import LABEL_IDS
from pipeline.cli import main as cli_main
from pipeline.config import load_config
from pipeline.geometry import resect
from pipeline.geometry.bridge import joint_gap_mm
from pipeline.geometry.surface import PEAK_SMOOTHING_MM
from pipeline.io.dicom import load_ct
from pipeline.io.export import nifti_bytes
from pipeline.io.segmentation import read_label_map
from pipeline.phantom import pelvis_phantom, preset
from pipeline.run import run_mesh
from pipeline.volume import apply_affine

from .helpers import REPO, rotation

pytestmark = pytest.mark.slow

SAMPLE = REPO / "sample_ct"
CONFIG = REPO / "configs" / "default.toml"


@pytest.fixture(scope="module")
def auto(tmp_path_factory):
    """The automatic run, as a user makes it."""
    out = tmp_path_factory.mktemp("auto")
    assert cli_main(["mesh", str(SAMPLE), "--config", str(CONFIG), "--out", str(out), "--quiet", "--no-qa"]) == 0
    return out


@pytest.fixture(scope="module")
def ct():
    return load_ct(SAMPLE)


@pytest.fixture(scope="module")
def config():
    return load_config(CONFIG)


@pytest.fixture(scope="module")
def fed_back(auto, ct, config):
    """The run on the first run's segmentation.seg.nrrd."""
    return run_mesh(ct, config, label_map=read_label_map(auto / "segmentation.seg.nrrd"))


def off_planes(vertices: np.ndarray, planes) -> np.ndarray:
    """The vertices that lie on none of the cut ``planes`` (within 1e-4 mm: an
    STL's float32 corners lie up to ~1e-5 mm off the plane)."""
    on = np.zeros(len(vertices), dtype=bool)
    for plane in planes:
        on |= np.abs(plane.signed_distance_mm(vertices)) < 1e-4
    return np.asarray(vertices)[~on]


def voxel_diagonal_mm(ct) -> float:
    return float(np.linalg.norm(ct.spacing_mm))


def test_seg_nrrd_and_labels_nii_read_back_as_the_same_labels_on_the_ct_grid(auto, ct):
    """Both files hold the run's labels on the CT's own voxels: no resampling,
    so labels.nii.gz fed back gives the same meshes as the seg.nrrd."""
    seg, nii = read_label_map(auto / "segmentation.seg.nrrd"), read_label_map(auto / "labels.nii.gz")
    assert seg.source == "3D Slicer segmentation (.seg.nrrd)"
    assert nii.source == "NIfTI label map, names from its own label table"
    assert np.array_equal(seg.labels, nii.labels)
    assert np.allclose(seg.affine, ct.affine, atol=1e-6) and np.allclose(nii.affine, ct.affine, atol=1e-4)
    reference = slicerio.read_segmentation(str(auto / "segmentation.seg.nrrd"))
    assert slicerio.segment_names(reference) == ["hip_left", "hip_right", "sacrum", "femur_left", "femur_right",
                                                  "lumbar"]
    assert np.allclose(reference["ijkToLPS"], ct.affine[:, [2, 1, 0, 3]], atol=1e-6)


def test_fed_back_labels_give_the_same_meshes_within_a_voxel(auto, ct, fed_back):
    """The labels stay voxel for voxel but for a snap of the outer layer
    (which the first run leaves one voxel short of converged), and the
    half-maximum level is measured around the labels it is given rather than
    around the labelling's filled bone, so vertices move along their
    marching-cubes edges: at most a voxel diagonal, mostly not at all."""
    first = read_label_map(auto / "labels.nii.gz").labels
    again = fed_back.labels
    bone = first > 0
    changed = first != again
    assert changed.sum() <= 0.01 * bone.sum()          # measured 0.51 % on the sample
    boundary = bone & ~ndi.binary_erosion(bone, np.ones((3, 3, 3)))
    assert not (changed & ~ndi.binary_dilation(boundary, np.ones((3, 3, 3)))).any()
    planes = [p.cut_plane() for p in load_config(CONFIG).resection.planes]
    for name in ("bone", "implant"):
        before, after = trimesh.load(auto / f"{name}.stl"), getattr(fed_back, name)
        # A cut face is triangulated afresh from its outline as a whole, so
        # its inner points move with any change of the outline: compare the
        # bone's surface, off the planes.
        off_before, off_after = off_planes(before.vertices, planes), off_planes(after.vertices, planes)
        d = np.r_[cKDTree(off_before).query(off_after)[0], cKDTree(off_after).query(off_before)[0]]
        assert d.max() <= voxel_diagonal_mm(ct), name
        assert np.percentile(d, 99) <= 0.5 * ct.spacing_mm.max(), name
        assert np.median(d) <= 0.01, name
        assert abs(after.volume / before.volume - 1) < 0.005, name
    labels_file = fed_back.report["segmentation"]["labels_file"]
    assert labels_file["format"] == "3D Slicer segmentation (.seg.nrrd)" and labels_file["resampled"] is False


def test_an_edit_in_slicer_changes_only_that_bones_meshes_and_the_implant_only_there(auto, ct, config, fed_back,
                                                                                      tmp_path):
    """Hip bone voxels within 6 mm of the sacrum are given to the sacrum, in
    the file as Slicer's Python tools save it. The other bones' meshes stay
    the same to the bit; the implant changes only near the edit: within the
    reach of a label change through the surface stage (the voxel that parts
    the bones, the half-maximum neighbourhood on HU smoothed over four
    standard deviations, the snap's voxel and marching cubes' voxel)."""
    seg = slicerio.read_segmentation(str(auto / "segmentation.seg.nrrd"))
    labels = seg["voxels"].transpose(2, 1, 0)                  # (slice, row, column)
    hip, sacrum = LABEL_IDS["hip_left"], LABEL_IDS["sacrum"]
    moved = (labels == hip) & (ndi.distance_transform_edt(labels != sacrum, sampling=ct.spacing_mm) <= 6.0)
    assert moved.sum() > 500
    labels[moved] = sacrum                                     # a view: edits seg["voxels"]
    slicerio.write_segmentation(str(tmp_path / "edited.seg.nrrd"), seg)
    edited = run_mesh(ct, config, label_map=read_label_map(tmp_path / "edited.seg.nrrd"))
    for name in ("hip_right", "femur_left", "femur_right", "lumbar"):
        assert np.array_equal(edited.label_meshes[name].vertices, fed_back.label_meshes[name].vertices), name
        assert np.array_equal(edited.label_meshes[name].faces, fed_back.label_meshes[name].faces), name
    moved_mm3 = moved.sum() * ct.voxel_volume_mm3
    assert edited.label_meshes["hip_left"].volume < fed_back.label_meshes["hip_left"].volume - moved_mm3
    assert edited.label_meshes["sacrum"].volume > fed_back.label_meshes["sacrum"].volume
    reach = (config.surface.halfmax_radius_mm + 4 * PEAK_SMOOTHING_MM + 3 * voxel_diagonal_mm(ct))
    edit_points = cKDTree(apply_affine(ct.affine, np.argwhere(moved).astype(float)))
    # Off the cut faces (each is triangulated afresh from its outline as a whole).
    planes = [p.cut_plane() for p in config.resection.planes]
    kept = off_planes(edited.implant.vertices, planes)
    new = kept[cKDTree(fed_back.implant.vertices).query(kept)[0] > 1e-6]
    assert len(new) > 0 and edit_points.query(new)[0].max() <= reach


def test_labels_on_a_coarser_oblique_grid_are_resampled_and_the_surface_still_follows_the_image(ct, config, tmp_path):
    """The phantom's bones sampled on a 5 mm grid turned 8 degrees, saved as
    a NIfTI label map: nearest-neighbour placement puts each label boundary
    within half a coarse voxel diagonal of the bone, and the half-maximum
    snap brings most of the surface back onto it."""
    phantom = pelvis_phantom(**preset("sample"))
    affine = np.eye(4)
    affine[:3, :3] = rotation([0.2, 0.3, 1.0], math.radians(8.0)) * 5.0
    shape = (76, 60, 44)
    centre = apply_affine(ct.affine, (np.array(ct.shape)[None] - 1) / 2.0)[0]
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    points = apply_affine(affine, np.indices(shape).reshape(3, -1).T.astype(float))
    coarse = np.zeros(len(points), dtype=np.uint8)
    # Only points within two voxels of a bone's voxels, or beyond the phantom's
    # grid, can lie inside it: its distance is asked of those alone (it is costly).
    grid = phantom.volume
    index = np.rint(apply_affine(np.linalg.inv(grid.affine), points)).astype(int)
    in_grid = np.all((index >= 0) & (index < grid.shape), axis=1)
    for label in phantom.label_names:
        near_voxels = ndi.binary_dilation(phantom.labels == label, iterations=2)
        near = np.flatnonzero(~in_grid)
        near = np.r_[near, np.flatnonzero(in_grid)[near_voxels[tuple(index[in_grid].T)]]]
        coarse[near[phantom.label_sdf_mm(label, points[near]) < 0]] = label
    path = tmp_path / "coarse.nii.gz"
    path.write_bytes(nifti_bytes(coarse.reshape(shape), affine, phantom.label_names))
    result = run_mesh(ct, config, label_map=read_label_map(path))
    labels_file = result.report["segmentation"]["labels_file"]
    assert labels_file["resampled"] is True and "from a (5, 5, 5) mm grid" in labels_file["grid"]
    half_coarse_diagonal = 0.5 * math.sqrt(3) * 5.0
    for label, name in phantom.label_names.items():
        error = np.abs(phantom.label_sdf_mm(label, result.label_meshes[name].vertices))
        assert np.median(error) <= 0.5 * ct.spacing_mm.min(), name
        assert np.percentile(error, 95) <= half_coarse_diagonal, name


def test_plan_markups_read_back_as_the_plan_give_the_same_cuts(auto, ct, config, fed_back, tmp_path):
    """plan.mrk.json holds the planes where the bone is cut; a plan whose
    planes are its markups (by name) cuts the same bone to within 1e-9 mm:
    the same vertices off the cut faces, and cut faces of the same area.
    (Inside a cut face the refinement's Steiner points may differ: its
    Delaunay choices between nearly cocircular points turn on the last
    bits of the outline, which the markups' decimal planes move by ~1e-10.)"""
    lines = []
    for plane in config.resection.planes:
        lines += ["[[resection.planes]]", f'name = "{plane.name}"', f'markups = "{auto / "plan.mrk.json"}"']
    (tmp_path / "plan.toml").write_text("\n".join(lines) + "\n")
    from_markups = load_config(tmp_path / "plan.toml").resection.planes
    cuts = [p.cut_plane() for p in config.resection.planes]
    for read, cut in zip(from_markups, cuts):
        assert read.name == cut.name and read.margin_mm == 0.0
        assert np.allclose(read.normal_lps, cut.normal_lps, atol=1e-15)
        assert abs(read.offset_mm - cut.offset_mm) < 1e-9
    bones = {n: fed_back.label_meshes[n] for n in config.resection.structures}
    again = resect(bones, tuple(from_markups), min_fragment_mm3=config.resection.min_fragment_mm3,
                   joint_gap_mm=joint_gap_mm(ct.spacing_mm))
    for name in ("host", "implant"):
        before, after = getattr(fed_back, name), getattr(again, name)
        kept, again_kept = off_planes(before.vertices, cuts), off_planes(after.vertices, cuts)
        assert len(kept) == len(again_kept), name
        assert cKDTree(kept).query(again_kept)[0].max() < 1e-9, name
        assert after.volume == pytest.approx(before.volume, abs=1e-6), name
        assert after.area == pytest.approx(before.area, abs=1e-6), name


def write_changed(auto, tmp_path, change) -> str:
    seg = slicerio.read_segmentation(str(auto / "segmentation.seg.nrrd"))
    change(seg)
    path = tmp_path / "changed.seg.nrrd"
    slicerio.write_segmentation(str(path), seg)
    return str(path)


def moved(mm):
    def change(seg):
        seg["ijkToLPS"][:3, 3] += mm
    return change


def renamed(names):
    def change(seg):
        for segment in seg["segments"]:
            segment["name"] = names.get(segment["name"], segment["name"])
            segment.pop("terminology", None)
    return change


@pytest.mark.parametrize("change, message", [
    (moved((0.0, 0.0, 1000.0)), r": its labels do not overlap the CT \(labels span x -\d+..\d+, y -\d+..\d+, "
                                r"z 9\d\d..1\d\d\d mm, the CT spans"),
    (moved((25.0, 25.0, 0.0)), r": little bone under its labels: \d+ % of the labelled voxels reach "
                               r"segment.threshold_hu = 200 HU, against \d+ % just around them"),
    (renamed({n: f"Segment_{i}" for i, n in enumerate(LABEL_IDS)}),
     r": no segment names one of our bones \(segments: Segment_0, Segment_1, Segment_2, Segment_3, Segment_4, "
     r"Segment_5\); name them hip_left"),
    (renamed({"hip_left": "hip_right", "hip_right": "hip_left"}),
     r": hip_left lies to the patient's right of hip_right \(LPS x -\d+ mm against \d+ mm\)"),
])
def test_label_maps_that_do_not_belong_to_the_ct_are_refused_in_one_line(auto, tmp_path, capsys, change, message):
    path = write_changed(auto, tmp_path, change)
    out = tmp_path / "out"
    code = cli_main(["mesh", str(SAMPLE), "--config", str(CONFIG), "--out", str(out), "--quiet", "--no-qa",
                     "--labels", path])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert err.startswith(f"error: {path}: ") and "\n" not in err
    assert re.search(message, err), err
