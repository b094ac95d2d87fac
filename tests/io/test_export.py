"""Writers: STL and NIfTI read back by independent means; all-or-nothing writes."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import trimesh

from pipeline.errors import MeshError, PipelineError
from pipeline.io.export import OUTPUT_NAMES, json_bytes, nifti_bytes, stl_bytes, write_outputs
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


def test_write_outputs_failure_leaves_nothing(tmp_path):
    target = tmp_path / "file_in_the_way"
    target.write_text("x")
    with pytest.raises(PipelineError, match="file_in_the_way"):
        write_outputs(target / "out", {"bone.stl": b"x"})
    assert set(OUTPUT_NAMES).isdisjoint(p.name for p in tmp_path.rglob("*"))
