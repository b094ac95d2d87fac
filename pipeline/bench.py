"""``make bench``: the full-size phantom through ``mesh``, time per stage and peak memory.

Generates a 512x512x300 phantom (0.8 x 0.8 x 1.0 mm) as DICOM in a temporary
folder, runs ``python -m pipeline mesh`` on it in a child process (so its
peak RSS is measured alone, imports included), and prints the stage timings
from the run's report. Targets on a 2-core machine: total <= 6 s, peak RSS
<= 1.5 GB (1430 MiB).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom.uid import JPEG2000Lossless

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.toml"
RUNS = 3


def main() -> int:
    from .io import write_series
    from .phantom import pelvis_phantom, preset

    with tempfile.TemporaryDirectory(prefix="pelvis-bench-") as tmp:
        ct_dir, out_dir = Path(tmp) / "ct", Path(tmp) / "out"
        start = time.perf_counter()
        phantom = pelvis_phantom(**preset("bench"))
        write_series(phantom.volume, ct_dir, uid_seed="bench")
        print(f"phantom {phantom.volume!r} written in {time.perf_counter() - start:.1f} s")
        j2k_dir = Path(tmp) / "ct_j2k"
        write_series(phantom.volume, j2k_dir, uid_seed="bench", transfer_syntax=JPEG2000Lossless)
        del phantom
        cmd = [sys.executable, "-m", "pipeline", "mesh", str(ct_dir), "--out", str(out_dir), "--quiet",
               "--config", str(CONFIG)]
        walls, stages, report = _timed_runs(cmd, out_dir)
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        mirrored = _time_mirrored(cmd, Path(tmp), out_dir)
        load_times = _time_load(ct_dir, j2k_dir)
    print(f"{RUNS} runs of mesh; median (min) seconds")
    for stage in stages[0]:
        values = [s[stage] for s in stages]
        print(f"{stage:<10}{statistics.median(values):7.2f} ({min(values):.2f})")
    segmentation = [s["segment"] + s["labels"] for s in stages]
    print(f"{'segm+lab':<10}{statistics.median(segmentation):7.2f} ({min(segmentation):.2f})   bone mask and "
          "labels together (their <= 3 s target is on Pelvic-Ref-003: make bench-peer)")
    print(f"{'total':<10}{statistics.median(walls):7.2f} ({min(walls):.2f})   wall time of the whole "
          "command: imports and writing included; target <= 6 s")
    print(f"peak RSS  {peak_mib:7.0f} MiB   (largest of the runs; target <= 1.5 GB = 1430 MiB)")
    for name, stats in report["meshes"].items():
        print(f"{name:<8} {stats['triangles']:>9} triangles {stats['volume_mm3'] / 1000:9.1f} cm3")
    _print_mirrored(walls, mirrored)
    _print_load(load_times)
    return 0


def _time_mirrored(cmd: list[str], tmp: Path, out_dir: Path) -> tuple[list[float], list[dict], dict]:
    """The same runs with implant.source = "mirrored": wall times, stage timings, last implant report."""
    config = tmp / "mirrored.toml"
    config.write_text(CONFIG.read_text().replace('source = "resected"', 'source = "mirrored"'))
    walls, stages, report = _timed_runs([*cmd[:-1], str(config)], out_dir)
    return walls, stages, report["implant"]


def _timed_runs(cmd: list[str], out_dir: Path) -> tuple[list[float], list[dict], dict]:
    """RUNS runs of ``cmd``: wall times, each run's stage timings, the last report."""
    walls, stages = [], []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        walls.append(time.perf_counter() - start)
        report = json.loads((out_dir / "report.json").read_text())
        stages.append(report["timings_s"])
    return walls, stages, report


def _print_mirrored(resected_walls: list[float], mirrored) -> None:
    walls, stages, implant = mirrored
    added = statistics.median(walls) - statistics.median(resected_walls)
    print(f"mirrored  {statistics.median(walls):7.2f} ({min(walls):.2f})   implant.source = mirrored: "
          f"+{added:.2f} s over resected; target <= +5 s")
    for stage in ("mirror", "resect", "fit"):
        values = [s.get(stage, 0.0) for s in stages]
        print(f"  {stage:<8}{statistics.median(values):7.2f}")
    asym = implant["asymmetry_mm"]
    print(f"  symmetry residual {implant['symmetry_plane']['residual_mm']:.3f} mm, registration RMS "
          f"{implant['registration']['rms_mm']:.3f} mm, asymmetry mean {asym['mean']:.3f} / p95 "
          f"{asym['p95']:.3f} mm")


def _time_load(ct_dir: Path, j2k_dir: Path) -> dict[str, list[float]]:
    """Seconds of load_ct alone: uncompressed (RUNS times), JPEG 2000 as loaded by default (one
    process: its decoder uses the cores itself) and split over all worker processes."""
    from .io import load_ct
    from .io.pixels import WORKERS

    def timed(folder: Path, runs: int, **kwargs) -> list[float]:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            load_ct(folder, **kwargs)
            times.append(time.perf_counter() - start)
        return times

    return {"raw": timed(ct_dir, RUNS), "j2k serial": timed(j2k_dir, 1),
            "j2k parallel": timed(j2k_dir, 1, workers=WORKERS)}


def _print_load(times: dict[str, list[float]]) -> None:
    from .io.pixels import WORKERS

    raw, serial, parallel = times["raw"], times["j2k serial"][0], times["j2k parallel"][0]
    print("load alone (header scan + decode + HU), seconds")
    print(f"{'raw':<10}{statistics.median(raw):7.2f} ({min(raw):.2f})   uncompressed, median (min) "
          "of the runs; target <= 1.0 s")
    print(f"{'j2k':<10}{serial:7.2f}          JPEG 2000 lossless as loaded: one process, "
          "its decoder on all cores")
    print(f"{'j2k ' + str(WORKERS):<10}{parallel:7.2f}          the same split over {WORKERS} "
          f"processes: {serial / parallel:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
