"""The series command on a volume file describes it like a DICOM series."""

import nibabel as nib
import numpy as np

from pipeline.cli import main as cli_main


def test_series_describes_a_nifti_file(tmp_path, capsys):
    data = np.zeros((20, 30, 12), dtype=np.int16)   # (i, j, k) = columns, rows, slices
    affine = np.diag([-0.8, -0.7, 2.5, 1.0])         # RAS: i to the right (L->R), j anterior, k superior
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    assert cli_main(["series", str(path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("ct.nii.gz")
    assert "12 slices" in line and "size 30x20x12" in line
    assert "spacing 2.5 x 0.7 x 0.8 mm" in line


def test_terminal_shows_the_running_stage_and_quiet_shows_nothing(capsys, monkeypatch):
    from pipeline.cli import Console
    from pipeline.run import Timer

    monkeypatch.delenv("CI", raising=False)
    console = Console(quiet=False)
    console.tty = True
    with Timer(console.line, console.begin).stage("surface"):
        pass
    err = capsys.readouterr().err
    assert err.startswith("\rsurface   ...") and "\r\033[K" in err and err.rstrip().endswith(" s")
    quiet = Console(quiet=True)
    quiet.tty = True
    with Timer(quiet.line, quiet.begin).stage("surface"):
        pass
    assert capsys.readouterr().err == ""


def test_a_missing_label_map_fails_before_the_ct_is_read_naming_where_it_came_from(tmp_path, capsys):
    missing = tmp_path / "corrected.seg.nrrd"
    assert cli_main(["mesh", str(tmp_path / "no_ct_here"), "--labels", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {missing}: no such file or folder"
    config = tmp_path / "plan.toml"
    config.write_text('[segment]\nlabels_file = "corrected.seg.nrrd"\n')
    assert cli_main(["mesh", str(tmp_path / "no_ct_here"), "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"error: segment.labels_file = {missing}: no such file or folder"


def test_no_qa_leaves_out_the_images_and_the_3d_view():
    from types import SimpleNamespace

    from pipeline.case import qa_files
    from pipeline.config import Config
    from pipeline.run import Timer

    files = qa_files(None, SimpleNamespace(report={"planes": []}, implant=None), Config(), images=False,
                     timer=Timer(None))
    assert list(files) == ["report.html"]
    page = files["report.html"].decode("utf-8")
    assert "<script" not in page and "Plotly" not in page
    assert "QA images and 3D view switched off (--no-qa)" in page


def test_ctrl_c_or_sigterm_anywhere_ends_a_run_in_one_line(tmp_path, monkeypatch, capsys):
    """Ctrl-C ended a mesh run in a traceback; landing in a library's import
    it surfaced as that import's own error (scipy.ndimage's: "NameError:
    name '_ndimage_api' is not defined"). Now either is one line, exit 130
    (SIGTERM: 143); an error with no signal before it is still a bug's
    traceback."""
    import signal

    import pytest

    import pipeline.cli as cli

    def import_cut_short(signum):
        def run(args):
            try:
                signal.raise_signal(signum)
            finally:
                raise NameError("name '_ndimage_api' is not defined")
        return run

    # As the run found it: Python's own handler, or ignored where the suite was started in the background.
    before = signal.getsignal(signal.SIGINT)
    argv = ["mesh", str(tmp_path / "ct"), "--out", str(tmp_path / "out")]
    for signum, status, said in ((signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")):
        monkeypatch.setattr(cli, "cmd_mesh", import_cut_short(signum))
        assert cli_main(argv) == status
        assert capsys.readouterr().err == f"error: {said}\n"
    monkeypatch.setattr(cli, "cmd_mesh", lambda args: signal.raise_signal(signal.SIGINT))
    assert cli_main(argv) == 130
    monkeypatch.setattr(cli, "cmd_mesh", lambda args: [][1])
    with pytest.raises(IndexError):
        cli_main(argv)
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_that_a_library_swallowed_stops_the_run_at_its_next_stage(tmp_path, monkeypatch, capsys):
    """Ctrl-C landing in trimesh's optional imports (they catch everything)
    was lost: the run went on to the end, exit 0. Now the next stage does not start."""
    import signal

    import pipeline.case

    stages = []

    def run_case(*args, begin, **kwargs):
        try:
            signal.raise_signal(signal.SIGINT)
        except BaseException:   # noqa: BLE001 -- as trimesh's import guard does
            pass
        for stage in ("segment", "labels"):
            begin(stage)
            stages.append(stage)

    monkeypatch.setattr(pipeline.case, "run_case", run_case)
    assert cli_main(["mesh", str(tmp_path / "ct"), "--out", str(tmp_path / "out"), "--quiet"]) == 130
    assert stages == [] and capsys.readouterr().err == "error: interrupted\n"
