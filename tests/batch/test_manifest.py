"""Batch manifests: read, paths resolved from the manifest's folder, and every
problem refused with one line naming the row, exit status 2, before anything runs."""

from __future__ import annotations

import pytest

from pipeline.batch import read_manifest
from pipeline.cli import main as cli_main

PLAN = "[resection]\nmin_fragment_mm3 = 50.0\n"


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "ct" / "a").mkdir(parents=True)
    (tmp_path / "ct" / "b").mkdir()
    (tmp_path / "ct" / "c.nii.gz").write_bytes(b"")
    (tmp_path / "plan.toml").write_text(PLAN)
    return tmp_path


def test_csv_and_toml_manifests_give_the_same_cases(folder):
    (folder / "m.csv").write_text("case_id,ct,config,series\n"
                                  "a,ct/a,plan.toml,\n"
                                  "\n"
                                  "b, ct/b ,plan.toml,1.2.840.1\n"
                                  "c,ct/c.nii.gz,plan.toml,\n")
    (folder / "m.toml").write_text('[[case]]\ncase_id = "a"\nct = "ct/a"\nconfig = "plan.toml"\n'
                                   '[[case]]\ncase_id = "b"\nct = "ct/b"\nconfig = "plan.toml"\nseries = "1.2.840.1"\n'
                                   f'[[case]]\ncase_id = "c"\nct = "{folder / "ct" / "c.nii.gz"}"\n'
                                   'config = "plan.toml"\n')
    from_csv, from_toml = read_manifest(folder / "m.csv"), read_manifest(folder / "m.toml")
    assert [(c.case_id, c.ct, c.config, c.series) for c in from_csv] == \
           [(c.case_id, c.ct, c.config, c.series) for c in from_toml] == [
        ("a", folder / "ct" / "a", folder / "plan.toml", None),
        ("b", folder / "ct" / "b", folder / "plan.toml", "1.2.840.1"),
        ("c", folder / "ct" / "c.nii.gz", folder / "plan.toml", None)]


REFUSALS = {
    "duplicate id": ("case_id,ct,config\na,ct/a,plan.toml\nA,ct/b,plan.toml\n",
                     "row 3 (case A): case_id 'A' repeats row 2"),
    "unknown column": ("case_id,ct,config,cfg\na,ct/a,plan.toml,x\n", "row 1 (header): unknown column 'cfg'"),
    "missing column": ("case_id,ct\na,ct/a\n", "row 1 (header): missing column 'config'"),
    "missing ct": ("case_id,ct,config\na,ct/a,plan.toml\nb,ct/zz,plan.toml\n", "row 3 (case b): ct "),
    "missing config": ("case_id,ct,config\na,ct/a,none.toml\n", "row 2 (case a): config "),
    "invalid config": ("case_id,ct,config\na,ct/a,bad.toml\n", "row 2 (case a): "),
    "not a CT": ("case_id,ct,config\na,plan.toml,plan.toml\n", "neither a folder nor a NIfTI/NRRD file"),
    "empty value": ("case_id,ct,config\na,,plan.toml\n", "row 2: ct is empty"),
    "bad case id": ("case_id,ct,config\n../up,ct/a,plan.toml\n", "row 2 (case ../up): case_id must be"),
    "reserved case id": ("case_id,ct,config\nbatch.csv,ct/a,plan.toml\n", "case_id must be"),
    # On a case-insensitive file system it would be batch.html.
    "reserved case id, other case": ("case_id,ct,config\nBATCH.HTML,ct/a,plan.toml\n", "case_id must be"),
    # A path cannot hold NUL: it ended in a traceback.
    "NUL in a path": ("case_id,ct,config\na,ct/a\x00x,plan.toml\n", "row 2 (case a): ct holds a NUL character"),
    "short row": ("case_id,ct,config\na,ct/a\n", "row 2: 2 values for 3 columns"),
    # It was "row 3: 1 values for 4 columns": the open quote took row 3 into row 2's value.
    "open quote": ('case_id,ct,config\n"a,ct/a,plan.toml\nb,ct/b,plan.toml\n',
                   "row 2: a quoted value runs past the end of its line (a quote left open?)"),
    "no cases": ("case_id,ct,config\n", "lists no cases"),
    "empty file": ("", "the manifest is empty"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_csv_refusals_name_the_row_and_exit_2_before_anything_runs(folder, capsys, name):
    text, message = REFUSALS[name]
    (folder / "bad.toml").write_text("[segment]\nthreshold = 200\n")
    (folder / "m.csv").write_text(text)
    assert cli_main(["batch", str(folder / "m.csv"), "--out", str(folder / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {folder / 'm.csv'}: ") and message in err
    if name == "invalid config":
        assert "segment.threshold" in err
    assert not (folder / "out").exists()


TOML_REFUSALS = {
    "top-level key": ('workers = 2\n[[case]]\ncase_id = "a"\nct = "ct/a"\nconfig = "plan.toml"\n',
                      "unknown key 'workers'"),
    "unknown key": ('[[case]]\ncase_id = "a"\nct = "ct/a"\nconfig = "plan.toml"\ncfg = "x"\n',
                    "case 1: unknown key 'cfg'"),
    "not a string": ('[[case]]\ncase_id = 7\nct = "ct/a"\nconfig = "plan.toml"\n', "case 1: case_id must be a string"),
    "not TOML": ("[[case]\n", "not valid TOML"),
}


@pytest.mark.parametrize("name", list(TOML_REFUSALS))
def test_toml_refusals_name_the_case(folder, capsys, name):
    text, message = TOML_REFUSALS[name]
    (folder / "m.toml").write_text(text)
    assert cli_main(["batch", str(folder / "m.toml"), "--out", str(folder / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_other_suffixes_and_missing_manifests_are_refused(folder, capsys):
    (folder / "m.txt").write_text("case_id,ct,config\n")
    assert cli_main(["batch", str(folder / "m.txt"), "--out", str(folder / "out")]) == 2
    assert "a manifest is a .csv or .toml file" in capsys.readouterr().err
    assert cli_main(["batch", str(folder / "none.csv"), "--out", str(folder / "out")]) == 2
    assert "cannot read manifest" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--workers", "0"], ["--retries", "-1"], ["--worker-memory-gb", "0"],
                                    ["--workers", "two"], ["--worker-memory-gb", "lots"]])
def test_impossible_options_exit_2_naming_the_option(folder, capsys, option):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["batch", str(folder / "m.csv"), "--out", str(folder / "out"), *option])
    assert exit_.value.code == 2 and option[0] in capsys.readouterr().err


def test_readme_manifest_examples_give_the_same_cases(tmp_path):
    import re

    from ..helpers import REPO

    text = (REPO / "README.md").read_text(encoding="utf-8")
    examples = dict(re.findall(r"`(cases\.(?:csv|toml))`:\n\n```\n(.*?)```", text, re.S))
    assert set(examples) == {"cases.csv", "cases.toml"}
    for case_id in ("P0001", "P0002"):
        (tmp_path / "ct" / case_id).mkdir(parents=True)
        (tmp_path / "plans").mkdir(exist_ok=True)
        (tmp_path / "plans" / f"{case_id}.toml").write_text(PLAN)
    found = []
    for name, body in examples.items():
        (tmp_path / name).write_text(body)
        found.append([(c.case_id, c.ct, c.config, c.series) for c in read_manifest(tmp_path / name)])
    assert found[0] == found[1] and len(found[0]) == 2


def test_an_output_folder_that_cannot_be_written_and_an_impossible_memory_are_refused_up_front(folder, capsys):
    """Found only when the summary was written: every case had been computed
    (hours, on a real archive), then a traceback (a file in OUT's place) or
    exit 2 (no permission); a memory limit of 1e300 GB was an OverflowError."""
    (folder / "m.csv").write_text("case_id,ct,config\na,ct/a,plan.toml\n")
    (folder / "taken").write_text("x")
    assert cli_main(["batch", str(folder / "m.csv"), "--out", str(folder / "taken")]) == 2
    assert capsys.readouterr().err == f"error: {folder / 'taken'}: is a file, not a folder\n"
    assert cli_main(["batch", str(folder / "m.csv"), "--out", str(folder / "taken" / "sub")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {folder / 'taken' / 'sub'}: cannot write there (")
    assert cli_main(["batch", str(folder / "m.csv"), "--out", str(folder / "out"), "--worker-memory-gb", "1e300",
                     "--quiet"]) == 2
    assert "error: --worker-memory-gb 1e+300 is more than this machine's" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["ct", "m.csv", "plan.toml", "taken"]
