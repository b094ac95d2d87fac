"""An interrupted batch on its local cluster: what the CLI leaves behind
(no cluster is started: the batch's run is replaced by its outcome)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pipeline.batch as batch
from pipeline.batch.engine import BatchResult
from pipeline.cli import main as cli_main

from ..helpers import REPO


def test_an_interrupted_local_batch_leaves_no_staging_folder(tmp_path, monkeypatch):
    """Ctrl-C stops the local cluster's workers wherever they are: one that
    was writing a case leaves that case's staging folder. Once the cluster is
    closed, the CLI removes the staging folders of the cases not run, and
    touches nothing of a case that was done."""
    for case_id in ("done", "cut"):
        (tmp_path / "ct" / case_id).mkdir(parents=True)
    (tmp_path / "cases.csv").write_text("case_id,ct,config\n" + "".join(
        f"{c},ct/{c},{REPO / 'configs' / 'default.toml'}\n" for c in ("done", "cut")))
    out = tmp_path / "out"
    kept = out / "done" / "report.json"

    @contextlib.contextmanager
    def fake_cluster(*args, **kwargs):
        yield SimpleNamespace(scheduler_info=lambda **_: {"workers": {"w0": {}}},
                              scheduler=SimpleNamespace(address="inproc://fake"))

    def interrupted_run(cases, out_dir, client, **kwargs):
        kept.parent.mkdir(parents=True)
        kept.write_text("{}")
        (out / "cut" / ".staging-x1y2z3").mkdir(parents=True)     # the killed worker's half-written outputs
        (out / "cut" / ".staging-x1y2z3" / "bone.stl").write_bytes(b"half")
        return BatchResult(records=[{"case_id": "done", "status": batch.DONE},
                                    {"case_id": "cut", "status": batch.NOT_RUN, "attempts": 1,
                                     "error": "the batch was interrupted before this case finished"}],
                           interrupted=True, seconds=1.0)

    monkeypatch.setattr(batch, "connect", fake_cluster)
    monkeypatch.setattr(batch, "run_batch", interrupted_run)
    assert cli_main(["batch", str(tmp_path / "cases.csv"), "--out", str(out), "--quiet"]) == 130
    assert not list(out.rglob(".staging-*"))
    assert kept.read_text() == "{}"


def test_sigterm_stops_the_batch_as_ctrl_c_does_and_a_second_signal_is_ignored(tmp_path, monkeypatch):
    """A job scheduler (or `timeout`) sends SIGTERM: the batch ended at once
    with exit 143 and no batch.csv. A second Ctrl-C while the batch was
    stopping ended it in a traceback, without its summary. Now the first
    signal stops it as Ctrl-C does (cases not run recorded, summary written),
    and one more while it stops is ignored."""
    import signal

    (tmp_path / "ct" / "a").mkdir(parents=True)
    (tmp_path / "cases.csv").write_text(f"case_id,ct,config\na,ct/a,{REPO / 'configs' / 'default.toml'}\n")
    out = tmp_path / "out"
    seen = []

    @contextlib.contextmanager
    def fake_cluster(*args, **kwargs):
        yield SimpleNamespace(scheduler_info=lambda **_: {"workers": {"w0": {}}},
                              scheduler=SimpleNamespace(address="inproc://fake"))
        signal.raise_signal(signal.SIGINT)   # a second signal while the cluster closes
        seen.append("closed")

    def stopped_run(cases, out_dir, client, **kwargs):
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt:
            seen.append("stopped")
        return BatchResult(records=[{"case_id": "a", "status": batch.NOT_RUN, "attempts": 1,
                                     "error": "the batch was interrupted before this case finished"}],
                           interrupted=True, seconds=1.0)

    monkeypatch.setattr(batch, "connect", fake_cluster)
    monkeypatch.setattr(batch, "run_batch", stopped_run)
    before = signal.getsignal(signal.SIGTERM)
    assert cli_main(["batch", str(tmp_path / "cases.csv"), "--out", str(out), "--quiet"]) == 143
    assert seen == ["stopped", "closed"] and (out / "batch.csv").is_file()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_local_cluster_has_no_more_workers_than_cases(monkeypatch):
    """Two cases started eight workers with --workers 8 (each given an
    eighth of the memory); now two, each with half."""
    import distributed

    from pipeline.batch.engine import connect

    asked = {}

    class Cluster:
        def __init__(self, n_workers, memory_limit, **kwargs):
            asked.update(n_workers=n_workers, memory_limit=memory_limit)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(distributed, "LocalCluster", Cluster)
    monkeypatch.setattr(distributed, "Client", lambda cluster: contextlib.nullcontext("client"))
    with connect(workers=8, worker_memory_gb=1.0, cases=2) as client:
        assert client == "client"
    assert asked == {"n_workers": 2, "memory_limit": 10**9}
    with connect(cases=1):
        pass
    assert asked["n_workers"] == 1


def test_a_case_finished_while_the_batch_stopped_is_recorded_done(tmp_path, monkeypatch):
    """A worker that finished its case while the cluster closed wrote it
    whole, but the summary said "not run" (and --resume then found it up to
    date). Now it is recorded done, from its report; a case whose folder
    holds only an earlier run stays "not run"."""
    import json
    import os
    import time

    import pipeline.batch.task as task
    from pipeline.io import output_digest

    for case_id in ("late", "old"):
        (tmp_path / "ct" / case_id).mkdir(parents=True)
    (tmp_path / "cases.csv").write_text("case_id,ct,config\n" + "".join(
        f"{c},ct/{c},{REPO / 'configs' / 'default.toml'}\n" for c in ("late", "old")))
    out = tmp_path / "out"
    monkeypatch.setattr(task, "case_fingerprint", lambda ct, config, **kw: {"digest": f"of {Path(ct).name}"})

    def complete_run(case_id: str) -> None:
        folder = out / case_id
        folder.mkdir(parents=True)
        (folder / "bone.stl").write_bytes(b"abc")
        report = {"fingerprint": {"digest": f"of {case_id}"}, "outputs": {"bone.stl": 3},
                  "outputs_xxh3": {"bone.stl": output_digest(b"abc")},
                  "timings_s": {"labels": 1.5}, "segmentation": {"labels": {"sacrum": {"mesh_volume_mm3": 2000.0}}}}
        (folder / "report.json").write_text(json.dumps(report))

    complete_run("old")
    hour_ago = time.time() - 3600
    os.utime(out / "old" / "report.json", (hour_ago, hour_ago))

    @contextlib.contextmanager
    def fake_cluster(*args, **kwargs):
        yield SimpleNamespace(scheduler_info=lambda **_: {"workers": {"w0": {}}},
                              scheduler=SimpleNamespace(address="inproc://fake"))
        complete_run("late")   # written while the cluster closes

    def interrupted_run(cases, out_dir, client, **kwargs):
        return BatchResult(records=[{"case_id": c.case_id, "status": batch.NOT_RUN, "attempts": 1,
                                     "error": "the batch was interrupted before this case finished"} for c in cases],
                           interrupted=True, seconds=1.0)

    monkeypatch.setattr(batch, "connect", fake_cluster)
    monkeypatch.setattr(batch, "run_batch", interrupted_run)
    assert cli_main(["batch", str(tmp_path / "cases.csv"), "--out", str(out), "--quiet"]) == 130
    cases = {c["case_id"]: c for c in json.loads((out / "batch.json").read_text())["cases"]}
    assert cases["late"]["status"] == batch.DONE and cases["late"]["error"] is None
    assert cases["late"]["headline"]["label_sacrum_cm3"] == 2.0 and cases["late"]["attempts"] == 1
    assert cases["old"]["status"] == batch.NOT_RUN
