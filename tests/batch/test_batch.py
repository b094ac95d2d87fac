"""The batch on a LocalCluster of 2 worker processes: 4 small phantom cases, one
of them a broken CT folder. Truth: a single ``mesh`` run of the same case (the
batch must write the same files), the case's own report, and the cases known
to be missing after an interruption.

One cluster serves the module (starting one costs seconds); the CLI reaches it
with --scheduler. The interruption test starts its own CLI process with its
own local cluster, as a user would, and stops it with Ctrl-C (SIGINT).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from pipeline.batch import FAILED, connect, read_manifest, run_batch
from pipeline.batch.engine import KEY_PREFIX
from pipeline.case import case_fingerprint
from pipeline.cli import main as cli_main
from pipeline.config import load_config
from pipeline.errors import InputError
from pipeline.io import current_report, load_ct, write_series
from pipeline.phantom import pelvis_phantom

from ..helpers import COARSE_PELVIS, REPO

pytestmark = pytest.mark.slow

IDS = ("p0", "p1", "bad", "p2")
WORKER_MEMORY_GB = 4.0


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Three phantom CTs (noise seeds 0-2), each with its own copy of the
    sample plan, and a folder with no DICOM in it; the manifest lists them."""
    root = tmp_path_factory.mktemp("cases")
    for seed, case_id in enumerate(("p0", "p1", "p2")):
        write_series(pelvis_phantom(**COARSE_PELVIS, seed=seed).volume, root / "ct" / case_id,
                     uid_seed=f"batch-{case_id}")
        shutil.copy(REPO / "configs" / "default.toml", root / f"plan_{case_id}.toml")
    (root / "ct" / "bad").mkdir()
    (root / "ct" / "bad" / "IM0001").write_bytes(b"not a DICOM file")
    shutil.copy(REPO / "configs" / "default.toml", root / "plan_bad.toml")
    (root / "cases.csv").write_text("case_id,ct,config\n" + "".join(f"{c},ct/{c},plan_{c}.toml\n" for c in IDS))
    return root


@pytest.fixture(scope="module")
def client():
    with connect(workers=2, worker_memory_gb=WORKER_MEMORY_GB) as client:
        yield client


def _rows(out):
    with open(out / "batch.csv", newline="") as f:
        return {row["case_id"]: row for row in csv.DictReader(f)}


def _statuses(out):
    return {case_id: row["status"] for case_id, row in _rows(out).items()}


def _without_timings(report_json: bytes) -> dict:
    report = json.loads(report_json)
    del report["timings_s"], report["resources"]
    del report["outputs"]["report.html"], report["outputs_xxh3"]["report.html"]   # they follow the timings it shows
    return report


def _without_timings_html(page: bytes) -> str:
    return re.sub(r"<h2>Timings \(s\)</h2>.*?</table>", "", page.decode("utf-8"), flags=re.S)


def assert_same_outputs(expected, actual):
    """The same files, byte for byte but for the timings and memory of the run."""
    files = sorted(p.relative_to(expected).as_posix() for p in expected.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(actual).as_posix() for p in actual.rglob("*") if p.is_file())
    for name in files:
        a, b = (expected / name).read_bytes(), (actual / name).read_bytes()
        if name == "report.json":
            assert _without_timings(a) == _without_timings(b)
        elif name == "report.html":
            assert _without_timings_html(a) == _without_timings_html(b)
        else:
            assert a == b, name


def test_each_case_is_a_mesh_run_and_a_broken_case_only_fails_itself(cases, client, tmp_path):
    out = tmp_path / "out"
    status = cli_main(["batch", str(cases / "cases.csv"), "--out", str(out), "--scheduler",
                       client.scheduler.address, "--quiet"])
    assert status == 3   # finished, with a failed case
    rows = _rows(out)
    assert {c: r["status"] for c, r in rows.items()} == {"p0": "done", "p1": "done", "bad": "failed", "p2": "done"}
    with pytest.raises(InputError) as refused:
        load_ct(cases / "ct" / "bad")
    # The error line as mesh prints it, but for the CT's path (folder names can carry patient identity).
    assert rows["bad"]["error"] == str(refused.value).replace(str(cases / "ct" / "bad"), "<ct of bad>")
    assert "\n" not in rows["bad"]["error"] and str(cases / "ct" / "bad") in str(refused.value)
    assert all(str(cases / "ct") not in (out / name).read_text() for name in ("batch.csv", "batch.json", "batch.html"))
    assert not (out / "bad").exists()

    for case_id in ("p0", "p1", "p2"):
        single = tmp_path / "single" / case_id
        assert cli_main(["mesh", str(cases / "ct" / case_id), "--config", str(cases / f"plan_{case_id}.toml"),
                         "--out", str(single), "--quiet"]) == 0
        assert_same_outputs(single, out / case_id)

    # The table's numbers are the case's report's.
    report = json.loads((out / "p2" / "report.json").read_text())
    fit = report["implant"]["fit"]["implant"]
    assert float(rows["p2"]["implant_volume_cm3"]) == pytest.approx(fit["volume_mm3"] / 1000, abs=0.005)
    assert float(rows["p2"]["implant_mass_g"]) == fit["mass_g"]
    assert float(rows["p2"]["label_sacrum_cm3"]) == pytest.approx(
        report["segmentation"]["labels"]["sacrum"]["mesh_volume_mm3"] / 1000, abs=0.005)
    for plane in report["planes"]:
        assert float(rows["p2"][f"contact_{plane['name']}_mm2"]) == pytest.approx(
            plane["implant_contact_area_mm2"], abs=0.05)
    assert float(rows["p2"]["peak_rss_mib"]) == report["resources"]["peak_rss_mib"]
    assert float(rows["p2"]["labels_s"]) == report["timings_s"]["labels"]

    summary = json.loads((out / "batch.json").read_text())
    assert summary["counts"] == {"done": 3, "up to date": 0, "failed": 1, "not run": 0}
    assert [c["case_id"] for c in summary["cases"]] == list(IDS)
    page = (out / "batch.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 3
    assert all(f'href="{c}/report.html"' in page for c in ("p0", "p1", "p2"))
    assert 'href="bad/report.html"' not in page and "<script" not in page


def _current(cases, out):
    """The cases whose folder holds complete outputs of their current input and config."""
    found = set()
    for case in read_manifest(cases / "cases.csv"):
        digest = case_fingerprint(case.ct, load_config(case.config), series_uid=None, qa=True)["digest"]
        if current_report(out / case.case_id, digest) is not None:
            found.add(case.case_id)
    return found


def test_resume_after_ctrl_c_runs_only_what_is_missing_and_a_changed_config_only_its_case(cases, client,
                                                                                          tmp_path):
    out = tmp_path / "out"
    # The batch takes Ctrl-C as a command typed at a terminal does, even when
    # this suite runs where it is ignored (a background job of a script):
    # Python keeps an inherited "ignore", so the handler is set explicitly.
    start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "sys.argv[0] = 'pipeline'; runpy.run_module('pipeline', run_name='__main__')")
    command = [sys.executable, "-c", start, "batch", str(cases / "cases.csv"), "--out", str(out), "--workers", "1"]
    # A terminal's Ctrl-C reaches the whole process group: the batch and its workers.
    with subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True) as batch:
        for line in batch.stderr:
            if line.startswith("p0: done"):
                os.killpg(batch.pid, signal.SIGINT)   # once the first case is done
                break
        rest = batch.stderr.read()
        assert batch.wait(timeout=60) == 130, rest
    assert "run again with --resume" in rest and "Traceback" not in rest
    statuses = _statuses(out)
    assert statuses["p0"] == "done" and set(statuses.values()) == {"done", "not run"}
    complete = _current(cases, out)
    assert "p0" in complete and len(complete) < 3
    assert not list(out.rglob(".staging-*"))

    resume = ["batch", str(cases / "cases.csv"), "--out", str(out), "--scheduler", client.scheduler.address,
              "--resume", "--quiet"]
    assert cli_main(resume) == 3
    statuses = _statuses(out)
    assert {c for c, s in statuses.items() if s == "up to date"} == complete
    assert {c for c, s in statuses.items() if s == "done"} == {"p0", "p1", "p2"} - complete
    assert statuses["bad"] == FAILED

    # The same plan with another implant density: only p1 runs, and its mass follows.
    mass_before = float(_rows(out)["p1"]["implant_mass_g"])
    default = (REPO / "configs" / "default.toml").read_text()
    assert "density_g_per_cm3 = 4.43" in default
    assert _resumed_with_plan(resume, cases / "plan_p1.toml",
                              default.replace("density_g_per_cm3 = 4.43", "density_g_per_cm3 = 8.86")) == 3
    rows = _rows(out)
    assert {c: r["status"] for c, r in rows.items()} == {"p0": "up to date", "p1": "done", "bad": "failed",
                                                        "p2": "up to date"}
    assert float(rows["p1"]["implant_mass_g"]) == pytest.approx(2 * mass_before, abs=0.02)

    # A report.json damaged under its own fingerprint: the case is run again
    # (it failed on every resume with "unexpected KeyError: 'mass_g'"). And a
    # case whose plan now misses the bone fails, saying its folder holds the
    # earlier run's outputs, and batch.html marks the link to them.
    report_path = out / "p2" / "report.json"
    damaged = json.loads(report_path.read_text())
    del damaged["implant"]["fit"]["implant"]["mass_g"]
    report_path.write_text(json.dumps(damaged))
    assert _resumed_with_plan(resume, cases / "plan_p0.toml", default + "\n[[resection.planes]]\nname = 'far'\n"
                              "point_lps_mm = [0.0, 0.0, 900.0]\nnormal_lps = [0.0, 0.0, 1.0]\n") == 3
    rows = _rows(out)
    # p1 runs too: its plan is the default again.
    assert {c: r["status"] for c, r in rows.items()} == {"p0": "failed", "p1": "done", "bad": "failed",
                                                        "p2": "done"}
    assert rows["p0"]["error"].endswith("(p0/ holds an earlier run's outputs, left as they were)")
    assert "mass_g" in json.loads(report_path.read_text())["implant"]["fit"]["implant"]
    page = (out / "batch.html").read_text()
    assert 'p0<br><a href="p0/report.html">(an earlier run)</a>' in page and '<a href="p2/report.html">p2</a>' in page


def _resumed_with_plan(resume: list[str], plan, text: str) -> int:
    """The batch resumed with ``plan`` reading ``text``; the plan is the default again afterwards."""
    plan.write_text(text)
    try:
        return cli_main(resume)
    finally:
        shutil.copy(REPO / "configs" / "default.toml", plan)


class KillWhileRunning(threading.Thread):
    """Kills (SIGKILL) the worker process running a case once, a moment after
    the scheduler has given it the case."""

    def __init__(self, client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.killed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            for address, keys in self.client.processing().items():
                if any(str(k).startswith(KEY_PREFIX) for k in keys):
                    pid = self.client.run(os.getpid, workers=[address])[address]
                    time.sleep(0.3)   # into the case
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(address)
                    return


@pytest.mark.parametrize("retries", [1, 0])
def test_a_worker_killed_during_a_case(cases, client, tmp_path, retries):
    """Killed once: with a retry the case completes on a worker, without one it
    is recorded as failed with the reason; the batch finishes either way and
    no half-written output is left."""
    case = read_manifest(cases / "cases.csv")[0]
    out = tmp_path / "out"
    killer = KillWhileRunning(client)
    killer.start()
    try:
        result = run_batch([case], out, client, retries=retries)
    finally:
        killer.stop.set()
        killer.join()
    assert len(killer.killed) == 1 and not result.interrupted
    record = result.records[0]
    assert not list(out.rglob(".staging-*"))
    if retries:
        assert (record["status"], record["attempts"]) == ("done", 2)
        assert _current(cases, out) >= {"p0"}
    else:
        assert (record["status"], record["attempts"]) == ("failed", 1)
        assert record["error"] == (f"the worker running this case died 1 time(s) (killed, or beyond its "
                                   f"{WORKER_MEMORY_GB:.3g} GB memory limit)")
