"""``make bench``: the full-size phantom through ``mesh``, time per stage and peak memory.

Generates a 512x512x300 phantom (0.8 x 0.8 x 1.0 mm) as DICOM in a temporary
folder, runs ``python -m pipeline mesh`` on it in a child process (so its
peak RSS is measured alone, imports included), and prints the stage timings
from the run's report. Targets on a 2-core machine: total <= 6 s, peak RSS
<= 2.5 GB.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.toml"


def main() -> int:
    from .dicom_write import write_series
    from .phantom import pelvis_phantom, preset

    with tempfile.TemporaryDirectory(prefix="pelvis-bench-") as tmp:
        ct_dir, out_dir = Path(tmp) / "ct", Path(tmp) / "out"
        start = time.perf_counter()
        phantom = pelvis_phantom(**preset("bench"))
        write_series(phantom.volume, ct_dir, uid_seed="bench")
        print(f"phantom {phantom.volume!r} written in {time.perf_counter() - start:.1f} s")
        del phantom
        cmd = [sys.executable, "-m", "pipeline", "mesh", str(ct_dir), "--out", str(out_dir), "--quiet"]
        if CONFIG.exists():
            cmd += ["--config", str(CONFIG)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - start
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        report = json.loads((out_dir / "report.json").read_text())
    print(f"{'stage':<10}{'seconds':>9}")
    for stage, seconds in report["timings_s"].items():
        print(f"{stage:<10}{seconds:9.2f}")
    print(f"{'total':<10}{wall:9.2f}   (wall, child process, imports and writing included; target <= 6 s)")
    print(f"peak RSS  {peak_mib:9.0f} MiB (target <= 2560 MiB)")
    for name, stats in report["meshes"].items():
        print(f"{name:<8} {stats['triangles']:>9} triangles {stats['volume_mm3'] / 1000:9.1f} cm3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
