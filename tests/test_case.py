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


def test_the_views_meshes_go_to_its_workers_as_soon_as_each_is_final(tmp_path, monkeypatch):
    """The bones the plan leaves whole are handed over when they are meshed,
    before the cut; the host and the implant as soon as the cut is made,
    before the fit report; so they are lightened while the job goes on, and
    the view takes those copies rather than lightening them again."""
    import pipeline.case as case_module
    import pipeline.run as run_module
    from pipeline.qa.interactive import Lightening

    events = []

    class Recording(Lightening):
        def __init__(self, **kwargs):
            super().__init__(20_000, **kwargs)   # a budget the coarse phantom's meshes exceed
            recorded.append(self)

        def start(self, meshes, bones):
            events.append(("start", {id(m) for m in meshes}))
            super().start(meshes, bones)

    recorded = []
    resect, fit_report = run_module.resect, run_module.fit_report
    monkeypatch.setattr(case_module, "Lightening", Recording)
    monkeypatch.setattr(run_module, "resect", lambda *a, **k: events.append(("cut",)) or resect(*a, **k))
    monkeypatch.setattr(run_module, "fit_report", lambda *a, **k: events.append(("fit",)) or fit_report(*a, **k))
    ct = tmp_path / "ct"
    write_series(pelvis_phantom(**COARSE_PELVIS).volume, ct)
    result = run_case(ct, tmp_path / "out", load_config(REPO / "configs" / "default.toml")).result
    context = {id(m) for m in result.context.values()}
    assert [e[0] for e in events] == ["start", "cut", "start", "start", "fit"]
    assert events[0][1] == context
    assert [events[2][1], events[3][1]] == [{id(result.host)}, {id(result.implant)}]
    started = recorded[0]._early
    assert {id(result.host), id(result.implant)} <= set(started)   # over the budget: lightened early
