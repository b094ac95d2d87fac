"""Writers: STL and NIfTI read back by independent means; all-or-nothing writes."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import trimesh

from pipeline.errors import MeshError, PipelineError
from pipeline.io.export import OUTPUT_NAMES, json_bytes, markups_bytes, nifti_bytes, seg_nrrd_bytes, stl_bytes, write_outputs
from pipeline.volume import apply_affine

from ..helpers import read_binary_stl


def test_stl_round_trip_keeps_lps_coordinates_and_says_so():
    mesh = trimesh.creation.box(extents=(10, 20, 30))
    mesh.apply_translation((-100.0, 50.0, 1200.0))  # far from the origin, like a CT
    header, normals, tris = read_binary_stl(stl_bytes(mesh, "bone"))
    assert b"SPACE=LPS" in header and b"UNITS=mm" in header
    assert np.allclose(tris.reshape(-1, 3).min(axis=0), [-105, 40, 1185], atol=1e-3)
    assert np.allclose(tris.reshape(-1, 3).max(axis=0), [-95, 60, 1215], atol=1e-3)
    # Stored normals point outward: away from the box centre.
    centres = tris.mean(axis=1)
    assert (np.einsum("ij,ij->i", normals, centres - [-100, 50, 1200]) > 0).all()


def test_stl_encoded_in_chunks_holds_every_triangle_as_given(monkeypatch):
    """Triangles are packed a chunk at a time: with chunks of 7 a sphere's
    320 triangles come back in order, corners as float32, unit normals."""
    import pipeline.io.export as export
    monkeypatch.setattr(export, "_STL_CHUNK", 7)
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=30.0).apply_translation((12.5, -40.0, 800.0))
    data = stl_bytes(sphere, "bone")
    assert len(data) == 84 + 50 * len(sphere.faces)
    _, normals, tris = read_binary_stl(data)
    assert np.array_equal(tris, sphere.triangles.astype(np.float32))
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-6)
    assert np.allclose(normals, sphere.face_normals, atol=1e-6)


def test_stl_refuses_an_open_or_inverted_mesh():
    box = trimesh.creation.box()
    open_box = trimesh.Trimesh(box.vertices, box.faces[:-1], process=False)
    with pytest.raises(MeshError, match="implant: 3 edges as read back are not shared by exactly two"):
        stl_bytes(open_box, "implant")
    inverted = trimesh.Trimesh(box.vertices, box.faces[:, ::-1], process=False)
    with pytest.raises(MeshError, match="inward"):
        stl_bytes(inverted, "bone")


def test_nifti_overlays_the_ct_grid():
    # An oblique, mirrored grid: axes not aligned with LPS and det < 0.
    rot = trimesh.transformations.rotation_matrix(0.3, [1, 2, 3])[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.0, -0.7, 0.9])
    affine[:3, 3] = [-120.0, 80.0, -300.0]
    mask = np.zeros((6, 7, 8), dtype=bool)
    mask[2, 3, 5] = True
    img = nib.Nifti1Image.from_bytes(gzip.decompress(nifti_bytes(mask, affine)))
    data = np.asarray(img.dataobj)
    assert data.dtype == np.uint8 and data.shape == (8, 7, 6)
    ijk = np.argwhere(data)
    assert ijk.tolist() == [[5, 3, 2]]
    ras = apply_affine(img.affine, ijk.astype(float))[0]
    lps = apply_affine(affine, np.array([[2.0, 3.0, 5.0]]))[0]
    assert np.allclose(ras, lps * [-1, -1, 1], atol=1e-4)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    # The qform (rotation + pixdim) must agree with the sform for viewers that prefer it.
    assert np.allclose(img.get_qform(), img.affine, atol=1e-4)


def test_nifti_bytes_do_not_depend_on_when_they_are_written(monkeypatch):
    """Same labels, same bytes: the gzip header holds no write time (a rerun
    or a batch resume can compare outputs byte for byte)."""
    import time

    mask = np.zeros((4, 5, 6), dtype=np.uint8)
    mask[1:3, 2:4, 1:5] = 3
    first = nifti_bytes(mask, np.eye(4))
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)  # gzip stamps time.time()
    assert nifti_bytes(mask, np.eye(4)) == first


def test_write_outputs_replaces_a_whole_run(tmp_path):
    write_outputs(tmp_path, {"bone.stl": b"old", "implant.stl": b"old", "report.json": b"{}"})
    (tmp_path / "notes.txt").write_text("user file")
    write_outputs(tmp_path, {"bone.stl": b"new", "report.json": json_bytes({"a": 1})})
    assert (tmp_path / "bone.stl").read_bytes() == b"new"
    assert not (tmp_path / "implant.stl").exists(), "a stale implant from an earlier run must go"
    assert (tmp_path / "notes.txt").exists(), "files that are not ours stay"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bone.stl", "notes.txt", "report.json"]


def test_guides_named_after_planes_are_outputs_and_cleared_like_them(tmp_path):
    write_outputs(tmp_path, {"guide_sacral_ala.stl": b"old", "guide_old_plane.stl": b"old",
                             "qa/guide_old_plane.png": b"old", "report.json": b"{}"})
    (tmp_path / "guide_notes.txt").write_text("user file")
    write_outputs(tmp_path, {"guide_sacral_ala.stl": b"new", "qa/guide_sacral_ala.png": b"new",
                             "report.json": b"{}"})
    assert (tmp_path / "guide_sacral_ala.stl").read_bytes() == b"new"
    assert not (tmp_path / "guide_old_plane.stl").exists(), "a guide of a plane no longer planned must go"
    assert sorted(p.name for p in (tmp_path / "qa").iterdir()) == ["guide_sacral_ala.png"]
    assert (tmp_path / "guide_notes.txt").exists()
    for name in ("guide_x/y.stl", "guide_a.png", "qa/guide_a.stl", "qa/sub/guide_a.png"):
        with pytest.raises(ValueError, match="not an output name"):
            write_outputs(tmp_path, {name: b"x"})


def test_write_outputs_failure_leaves_nothing(tmp_path):
    target = tmp_path / "file_in_the_way"
    target.write_text("x")
    with pytest.raises(PipelineError, match="file_in_the_way"):
        write_outputs(target / "out", {"bone.stl": b"x"})
    assert set(OUTPUT_NAMES).isdisjoint(p.name for p in tmp_path.rglob("*"))


def test_write_outputs_failing_half_way_puts_the_earlier_run_back(tmp_path):
    """A folder where report.json goes: every other new file had been moved
    in (and the earlier implant.stl deleted) before the error, leaving a
    folder of two runs. Now the earlier run is back, byte for byte."""
    write_outputs(tmp_path, {"bone.stl": b"old", "implant.stl": b"old", "qa/slice_axial.png": b"old"})
    (tmp_path / "report.json").mkdir()
    before = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(PipelineError, match=r"cannot write outputs \(Is a directory"):
        write_outputs(tmp_path, {"bone.stl": b"new", "host.stl": b"new", "qa/view_oblique.png": b"new",
                                 "report.json": b"{}"})
    after = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bone.stl", "implant.stl", "qa", "report.json"]


def test_write_outputs_stopped_by_ctrl_c_half_way_puts_the_earlier_run_back(tmp_path, monkeypatch):
    """Ctrl-C while the files were moved: the earlier outputs moved aside
    were deleted with the staging folder, leaving the new files moved in so
    far and no report.json. Now the earlier run is back, byte for byte."""
    import os

    import pipeline.io.export as export

    write_outputs(tmp_path, {"bone.stl": b"old", "implant.stl": b"old", "report.json": b"{}"})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    moves, replace = [], os.replace

    def replace_then_ctrl_c(src, dst):
        moves.append(dst)
        if len(moves) == 5:   # the earlier three moved aside, one new file moved in
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(export.os, "replace", replace_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(tmp_path, {"bone.stl": b"new", "host.stl": b"new", "report.json": b"{}"})
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def oblique_mirrored_affine() -> np.ndarray:
    rot = trimesh.transformations.rotation_matrix(0.3, [1, 2, 3])[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.0, -0.7, 0.9])
    affine[:3, 3] = [-120.0, 80.0, -300.0]
    return affine


def test_segmentation_seg_nrrd_is_read_by_slicers_own_reader_with_names_colours_and_geometry(tmp_path):
    import slicerio

    from pipeline.bones import LABEL_COLOURS_RGB, LABEL_IDS

    affine = oblique_mirrored_affine()
    labels = np.zeros((6, 7, 8), dtype=np.uint8)
    labels[1:3, 2:5, 1:4] = LABEL_IDS["hip_left"]
    labels[4, 5, 6] = LABEL_IDS["sacrum"]
    path = tmp_path / "segmentation.seg.nrrd"
    path.write_bytes(seg_nrrd_bytes(labels, affine))
    seg = slicerio.read_segmentation(str(path))
    assert [(s["name"], s["labelValue"], s["layer"]) for s in seg["segments"]] == [("hip_left", 1, 0), ("sacrum", 3, 0)]
    for segment in seg["segments"]:
        assert np.allclose(segment["color"], np.array(LABEL_COLOURS_RGB[segment["name"]]) / 255, atol=1e-6)
    sacrum = slicerio.segment_from_name(seg, "sacrum")
    assert sacrum["terminology"]["type"] == ["SCT", "54735007", "Sacrum"]
    assert slicerio.segment_from_name(seg, "hip_left")["terminology"]["typeModifier"] == ["SCT", "7771000", "Left"]
    assert sacrum["extent"] == [6, 6, 5, 5, 4, 4]                       # i, j, k: column, row, slice
    # Voxel (i, j, k) of the file is voxel (k, j, i) of the CT, at the same LPS point.
    ijk = np.argwhere(seg["voxels"] == 3)
    assert ijk.tolist() == [[6, 5, 4]]
    assert np.allclose(apply_affine(seg["ijkToLPS"], ijk.astype(float)), apply_affine(affine, np.array([[4.0, 5, 6]])))
    assert np.array_equal(slicerio.segment_mask(seg, slicerio.segment_from_name(seg, "hip_left")).transpose(2, 1, 0),
                          labels == 1)
    assert seg_nrrd_bytes(labels, affine) == path.read_bytes()         # same labels, same bytes


def test_labels_nii_names_its_labels_and_reads_back_as_itself(tmp_path):
    from pipeline.bones import LABEL_NAMES
    from pipeline.io.segmentation import read_label_map

    labels = np.zeros((6, 7, 8), dtype=np.uint8)
    labels[1:3, 2:5, 1:4], labels[4, 5, 6] = 4, 6
    path = tmp_path / "labels.nii.gz"
    path.write_bytes(nifti_bytes(labels, oblique_mirrored_affine(), LABEL_NAMES))
    label_map = read_label_map(path)
    assert label_map.source == "NIfTI label map, names from its own label table"
    assert label_map.segments == {"femur_left": "femur_left", "lumbar": "lumbar"}
    assert np.array_equal(label_map.labels, labels)
    assert np.allclose(label_map.affine, oblique_mirrored_affine(), atol=1e-5)   # NIfTI stores float32


def test_plan_markups_hold_each_cut_plane_named_and_read_back_exactly(tmp_path):
    from pipeline.config import Plane
    from pipeline.plan import read_markups_plane

    planes = [Plane((26.0, 40.0, 44.0), (1.0, 0.0, -0.6), "sacral_ala", margin_mm=5.0).cut_plane(),
              Plane((80.0, -14.0, 28.0), (0.0, 0.25, 1.0), "supra_acetabular")]
    centres = [(31.0, 38.0, 40.0), (75.0, -10.0, 33.0)]           # near, not on, the planes
    path = tmp_path / "plan.mrk.json"
    path.write_bytes(markups_bytes(planes, centres, [30.0, 45.0]))
    document = json.loads(path.read_text())
    assert [m["name"] for m in document["markups"]] == ["sacral_ala", "supra_acetabular"]
    for plane, centre, half, markup in zip(planes, centres, [30.0, 45.0], document["markups"]):
        assert markup["type"] == "Plane" and markup["coordinateSystem"] == "LPS"
        assert markup["planeType"] == "threePoints" and len(markup["controlPoints"]) == 3
        p0, p1, p2 = (np.array(c["position"]) for c in markup["controlPoints"])
        # As 3D Slicer reads a three-point plane: origin p0, normal (p1 - p0) x (p2 - p0).
        normal = np.cross(p1 - p0, p2 - p0)
        assert np.allclose(normal / np.linalg.norm(normal), plane.normal_lps, atol=1e-12)
        assert np.allclose(plane.signed_distance_mm(np.array([p0, p1, p2])), 0.0, atol=1e-9)
        assert np.isclose(np.linalg.norm(p1 - p0), half) and np.isclose(np.linalg.norm(p2 - p0), half)
        in_plane = np.asarray(centre) - plane.signed_distance_mm(np.asarray(centre)[None])[0] * np.asarray(plane.normal_lps)
        assert np.allclose(p0, in_plane)
        point, normal = read_markups_plane(path, "resection.planes[0].markups", name=plane.name)
        assert abs(plane.signed_distance_mm(point[None])[0]) < 1e-9
        assert np.allclose(normal, plane.normal_lps, atol=1e-15)


def test_report_json_writes_no_number_as_null():
    """A gap measured over nothing is NaN: Python wrote the literal NaN,
    which is not JSON (strict readers refused report.json)."""
    import math

    text = json_bytes({"gap": float("nan"), "far": [math.inf, -math.inf, 1.5], "n": np.float64("nan"),
                       "nested": {"ok": 2, "bad": (float("nan"),)}}).decode()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == {
        "gap": None, "far": [None, None, 1.5], "n": None, "nested": {"ok": 2, "bad": [None]}}
