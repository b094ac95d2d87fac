"""``make bench-peer``: the whole ``mesh`` job against dicom2stl, side by side.

dicom2stl (SimpleITK + VTK, PyPI ``dicom2stl``) turns a CT into a bone STL
and nothing more; ``mesh`` does that and the labels, cuts, implant, fit
report and QA. Both run on the same real pelvic CT (Pelvic-Ref-003, in
``../shared/real_ct``), alternately, ``--pairs`` times (so a busy moment
hits both alike), each in a fresh process; printed are both medians, the
median of the per-pair ratios (ours / theirs: the figure to move), our
per-stage times (from report.json) and our peak memory.

dicom2stl is installed, once, into its own virtual environment under
``build/`` (ignored by git): its dependencies never mix with ours. Without
the real CT the benchmark says so and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CT = REPO.parent / "shared" / "real_ct" / "pelvic_ref_003"
CONFIG = REPO / "configs" / "pelvic_ref_003.toml"
PEER_VENV = REPO / "build" / "peer-venv"
PEER = "dicom2stl==0.5.0"


def peer_command() -> Path:
    """The dicom2stl executable, installed into ``build/peer-venv`` on first use."""
    exe = PEER_VENV / "bin" / "dicom2stl"
    if not exe.exists():
        print(f"installing {PEER} into {PEER_VENV.relative_to(REPO)} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(PEER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", PEER], check=True)
    return exe


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the child) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(after, before) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench_peer", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="alternating runs of each (default 3)")
    args = parser.parse_args(argv)
    if not CT.is_dir():
        print(f"skipped: the real CT is not present ({CT.relative_to(REPO.parent)})")
        return 0
    peer = peer_command()
    ours_wall, theirs_wall, stages, peaks = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        out, stl = Path(tmp) / "out", Path(tmp) / "bone.stl"
        ours = [sys.executable, "-m", "pipeline", "mesh", str(CT), "--config", str(CONFIG), "--out", str(out),
                "--quiet"]
        theirs = [str(peer), "-t", "bone", "-o", str(stl), str(CT)]
        for pair in range(args.pairs):
            load = os.getloadavg()[0]
            t_wall, _ = timed(theirs)
            o_wall, o_peak = timed(ours)
            report = json.loads((out / "report.json").read_text())
            theirs_wall.append(t_wall)
            ours_wall.append(o_wall)
            stages.append(report["timings_s"])
            peaks.append(report.get("resources", {}).get("peak_rss_mib", o_peak))
            print(f"pair {pair + 1}: dicom2stl {t_wall:6.2f} s, mesh {o_wall:6.2f} s, ratio {o_wall / t_wall:5.2f}"
                  f"   (load average {load:.1f})", flush=True)
    ratios = [o / t for o, t in zip(ours_wall, theirs_wall)]
    print(f"dicom2stl -t bone   median {statistics.median(theirs_wall):6.2f} s")
    print(f"mesh (whole job)    median {statistics.median(ours_wall):6.2f} s")
    print(f"ratio (mesh / dicom2stl), median of pairs {statistics.median(ratios):.2f}   (target <= 0.5)")
    print("mesh per stage, median s: " + ", ".join(
        f"{name} {statistics.median(s.get(name, 0.0) for s in stages):.2f}" for name in stages[0]))
    segmentation = [s.get("segment", 0.0) + s.get("labels", 0.0) for s in stages]
    print(f"segment + labels    median {statistics.median(segmentation):6.2f} s (min {min(segmentation):.2f})"
          "   (target <= 3 s)")
    print(f"mesh peak memory {max(peaks):.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
