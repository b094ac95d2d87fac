"""Batch progress: a status line on a terminal, one line per finished case,
no status line in CI, nothing under --quiet but the failed cases."""

from __future__ import annotations

from pipeline.batch import Progress
from pipeline.cli import Console, _batch_progress

FINISHED = {"case_id": "P0002", "status": "failed", "wall_s": 1.25, "error": "no image series found in ct/P0002"}
STEP = Progress(total=4, done=1, failed=1, current=0, running=2, eta_s=75.0, finished=FINISHED)


def test_terminal_shows_the_case_line_and_the_status_line(capsys, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    console = Console(quiet=False)
    console.tty = True
    _batch_progress(console, STEP)
    err = capsys.readouterr().err
    assert "P0002: failed in 1.2 s: no image series found in ct/P0002\n" in err
    assert err.endswith("\r\033[Kbatch  2/4: 1 done, 1 failed, 0 up to date, 2 running, ETA 1:15")


def test_ci_shows_case_lines_only_and_quiet_only_failed_cases(capsys, monkeypatch):
    """--quiet prints nothing but errors: a failed case is one (it printed
    nothing at all, leaving only the exit status)."""
    monkeypatch.setenv("CI", "true")
    _batch_progress(Console(quiet=False), STEP)
    assert capsys.readouterr().err == "P0002: failed in 1.2 s: no image series found in ct/P0002\n"
    quiet = Console(quiet=True)
    quiet.tty = True
    _batch_progress(quiet, STEP)
    _batch_progress(quiet, Progress(total=4, done=2, failed=1, current=0, running=1, eta_s=None,
                                    finished={"case_id": "P0001", "status": "done", "wall_s": 2.0, "error": None}))
    _batch_progress(quiet, Progress(total=4, done=1, failed=1, current=0, running=2, eta_s=None,
                                    note="case P0003: the worker died while running it (killed); retry 1 of 1"))
    assert capsys.readouterr().err == "P0002: failed in 1.2 s: no image series found in ct/P0002\n"
