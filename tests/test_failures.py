"""Every way a run can fail: one line on stderr naming the key or file,
exit status 2, and nothing written to the output folder."""

from __future__ import annotations

import pytest
import trimesh

import pipeline.run
from pipeline.cli import main as cli_main

from .helpers import REPO

SAMPLE = REPO / "sample_ct"
PLANE = 'point_lps_mm = [26.0, 40.0, 44.0]\nnormal_lps = [1.0, 0.0, 0.0]\n'


def run_failing(tmp_path, capsys, *, config_text=None, ct=SAMPLE, extra=()):
    out = tmp_path / "out"
    args = ["mesh", str(ct), "--out", str(out)]
    if config_text is not None:
        cfg = tmp_path / "plan.toml"
        cfg.write_text(config_text)
        args += ["--config", str(cfg)]
    code = cli_main(args + list(extra))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert code == 2
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert not out.exists() or not any(out.iterdir()), "a failed run must write nothing"
    return lines[0]


@pytest.mark.parametrize("config_text, expected", [
    ("[segment]\nthreshhold_hu = 200\n", "unknown key segment.threshhold_hu"),
    ("[[resection.planes]]\npoint_lps_mm = [1, 2]\nnormal_lps = [1, 0, 0]\n",
     r"resection.planes[0].point_lps_mm must be a list of 3"),
    ("[[resection.planes]]\npoint_lps_mm = [1, 2, 3]\nnormal_lps = [0, 0, 0]\n",
     "resection.planes[0].normal_lps must not be the zero vector"),
    ("[surface]\nsmoothing_mm = 'a little'\n", "surface.smoothing_mm must be a number"),
])
def test_bad_config_fails_before_reading_the_ct(tmp_path, capsys, config_text, expected):
    # A CT folder that does not exist proves the config is checked first.
    line = run_failing(tmp_path, capsys, config_text=config_text, ct=tmp_path / "no_such_ct")
    assert expected in line
    assert "plan.toml" in line


@pytest.mark.slow
def test_plane_that_misses_the_bone(tmp_path, capsys):
    text = "[[resection.planes]]\nname = 'above_head'\npoint_lps_mm = [0, 0, 400]\nnormal_lps = [0, 0, 1]\n"
    line = run_failing(tmp_path, capsys, config_text=text)
    assert "resection.planes[0] (above_head) misses the bone" in line


@pytest.mark.slow
def test_empty_resection(tmp_path, capsys):
    text = ("[[resection.planes]]\npoint_lps_mm = [0, 0, 40]\nnormal_lps = [0, 0, 1]\n"
            "[[resection.planes]]\npoint_lps_mm = [0, 0, 20]\nnormal_lps = [0, 0, -1]\n")
    assert "empty resection" in run_failing(tmp_path, capsys, config_text=text)


@pytest.mark.parametrize("make_ct, expected", [
    (lambda d: d / "missing", "missing"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "empty"),
    (lambda d: ((d / "junk").mkdir(), (d / "junk" / "a.dcm").write_text("not dicom"))[0] or d / "junk", "junk"),
])
def test_unreadable_input_names_the_folder(tmp_path, capsys, make_ct, expected):
    ct = make_ct(tmp_path)
    line = run_failing(tmp_path, capsys, ct=ct)
    assert str(ct) in line or ct.name in line


@pytest.mark.slow
def test_unknown_series_is_refused(tmp_path, capsys):
    line = run_failing(tmp_path, capsys, extra=["--series", "1.2.3.4"])
    assert "1.2.3.4" in line


@pytest.mark.slow
def test_a_mesh_failing_validation_is_never_written(tmp_path, capsys, monkeypatch):
    real_surfaces = pipeline.run.bone_surfaces

    def broken_surfaces(*args, **kwargs):
        good = real_surfaces(*args, **kwargs)
        meshes = dict(good.meshes)
        meshes[1] = trimesh.Trimesh(meshes[1].vertices, meshes[1].faces[1:], process=False)
        return type(good)(meshes=meshes, labels=good.labels, box=good.box)

    monkeypatch.setattr(pipeline.run, "bone_surfaces", broken_surfaces)
    line = run_failing(tmp_path, capsys)
    assert "bone_hip_left: 3 edges as read back are not shared by exactly two triangles" in line


@pytest.mark.slow
def test_a_failed_run_leaves_an_earlier_run_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["mesh", str(SAMPLE), "--out", str(out), "--quiet"]) == 0
    before = outputs(out)
    # Defaults: no planes, so nothing is cut and every bone is written on its own.
    assert sorted(p for p in before if not p.startswith("qa/")) == [
        "bone.stl", "bone_femur_left.stl", "bone_femur_right.stl", "bone_hip_left.stl", "bone_hip_right.stl",
        "bone_lumbar.stl", "bone_mask.nii.gz", "bone_sacrum.stl", "labels.nii.gz", "report.html", "report.json",
        "segmentation.seg.nrrd"]
    assert any(p.startswith("qa/") for p in before)
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[[resection.planes]]\npoint_lps_mm = [0, 0, 400]\nnormal_lps = [0, 0, 1]\n")
    assert cli_main(["mesh", str(SAMPLE), "--config", str(cfg), "--out", str(out)]) == 2
    assert outputs(out) == before
    # Said, so that the outputs there are not taken for this run's.
    assert f"({out} holds an earlier run's outputs, left as they were)" in capsys.readouterr().err
    cfg.write_text("[segment]\nthreshhold_hu = 200\n")
    assert cli_main(["mesh", str(SAMPLE), "--config", str(cfg), "--out", str(out)]) == 2
    assert outputs(out) == before
    err = capsys.readouterr().err
    assert "unknown key segment.threshhold_hu" in err and "holds an earlier run's outputs" in err


def outputs(out):
    """Relative path -> content of every file in ``out``, sub-folders included."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


@pytest.mark.parametrize("plane, expected", [
    # Meant to cut the right hip bone but lies wholly on the patient's left.
    ("point_lps_mm = [60, 0, 0]\nnormal_lps = [1, 0, 0]\nstructures = ['hip_right']",
     "resection.planes[0] (p) does not cut hip_right"),
    # Crosses the sacrum, but the region (x > 60 mm) holds none of it.
    ("point_lps_mm = [60, 0, 0]\nnormal_lps = [1, 0, 0]\nstructures = ['sacrum']",
     "does not cut sacrum"),
])
@pytest.mark.slow
def test_plane_that_misses_its_structure(tmp_path, capsys, plane, expected):
    line = run_failing(tmp_path, capsys, config_text=f"[[resection.planes]]\nname = 'p'\n{plane}\n")
    assert expected in line


@pytest.mark.slow
def test_region_that_takes_nothing_of_a_named_structure(tmp_path, capsys):
    """Each plane crosses the sacrum, but together they keep all of it."""
    text = ("[[resection.planes]]\nname = 'a'\npoint_lps_mm = [20, 0, 0]\nnormal_lps = [1, 0, 0]\n"
            "structures = ['sacrum']\n"
            "[[resection.planes]]\nname = 'b'\npoint_lps_mm = [-20, 0, 0]\nnormal_lps = [-1, 0, 0]\n")
    line = run_failing(tmp_path, capsys, config_text=text)
    assert "resection.planes[0] (a): the resection removes nothing of sacrum" in line


def test_plane_structure_must_be_cuttable(tmp_path, capsys):
    text = ("[resection]\nstructures = ['hip_left']\n[[resection.planes]]\npoint_lps_mm = [0, 0, 0]\n"
            "normal_lps = [1, 0, 0]\nstructures = ['femur_left']\n")
    line = run_failing(tmp_path, capsys, config_text=text, ct=tmp_path / "no_ct")
    assert "resection.planes[0].structures names 'femur_left'" in line


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path, capsys):
    """Two batches into one OUT (or a mesh run beside a batch's case): the
    second run removed the first one's staging folder as a killed run's, and
    the first was left with 9 of its 11 files and no report.json. The folder
    is now held while a run writes into it; the second is refused, and a
    refused run leaves no folder it made behind."""
    import fcntl
    import os

    out = tmp_path / "busy"
    out.mkdir()
    (out / ".staging-other").mkdir()   # the first run's outputs, being written
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)   # as the first run holds it
        line = run_failing(tmp_path, capsys, extra=["--out", str(out), "--quiet"])
    finally:
        os.close(fd)
    assert line == f"error: {out}: another run is writing into this folder; wait for it, or give another --out"
    assert (out / ".staging-other").is_dir()
    assert cli_main(["mesh", str(tmp_path / "none"), "--out", str(tmp_path / "new" / "out"), "--quiet"]) == 2
    capsys.readouterr()
    assert not (tmp_path / "new").exists()
