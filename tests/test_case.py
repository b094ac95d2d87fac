"""One case into one folder (what mesh and every batch case run): the report
lists exactly the files written, with their sizes and the fingerprint."""

from __future__ import annotations

import json

from pipeline.case import case_fingerprint, run_case
from pipeline.config import load_config
from pipeline.io import current_report, output_digest, write_series
from pipeline.phantom import pelvis_phantom

from .helpers import COARSE_PELVIS, REPO


def test_report_lists_every_output_and_a_killed_runs_staging_is_cleared(tmp_path):
    ct, out = tmp_path / "ct", tmp_path / "out"
    write_series(pelvis_phantom(**COARSE_PELVIS).volume, ct)
    (out / ".staging-killed").mkdir(parents=True)   # what a process killed while writing leaves
    (out / ".staging-killed" / "bone.stl").write_bytes(b"half")
    config = load_config(REPO / "configs" / "default.toml")
    case = run_case(ct, out, config)
    on_disk = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    report = json.loads((out / "report.json").read_text())
    assert report["outputs"] == {k: v for k, v in on_disk.items() if k != "report.json"}
    assert report["outputs_xxh3"] == {k: output_digest((out / k).read_bytes()) for k in report["outputs"]}
    assert {"implant.stl", "host.stl", "report.html", "qa/view_oblique.png"} <= set(on_disk)
    assert not list(out.glob(".staging-*"))
    assert [p.name for p in case.written][-1] == "report.json"
    digest = case_fingerprint(ct, config, series_uid=None, qa=True)["digest"]
    assert report["fingerprint"]["digest"] == digest
    assert current_report(out, digest) == report
    assert report["resources"]["peak_rss_mib"] > 0
    assert set(report["timings_s"]) >= {"load", "labels", "encode", "qa"}
