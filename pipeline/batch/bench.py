"""``make bench-batch``: the same 8 cases with 1, 2, 4, ... local workers; wall time and speed-up.

Writes 8 sample-size pelvis phantoms (100 x 184 x 232 voxels, noise seeds
0-7) as DICOM into a temporary folder with the sample plan, then runs the
batch on a new LocalCluster for each worker count up to the machine's cores
(at most 8): the batch's wall time (cluster start-up apart), the speed-up
over one worker, the per-case median time and peak memory, and the
machine's load average before and after (other work on the machine skews
the comparison).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.toml"
N_CASES = 8


def main() -> int:
    from dask.system import CPU_COUNT

    from ..io import write_series
    from ..phantom import pelvis_phantom, preset
    from . import DONE, connect, read_manifest, run_batch

    with tempfile.TemporaryDirectory(prefix="pelvis-bench-batch-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        for seed in range(N_CASES):
            write_series(pelvis_phantom(**{**preset("sample"), "seed": seed}).volume, root / f"ct{seed}",
                         uid_seed=f"bench-batch-{seed}")
        manifest = root / "cases.csv"
        manifest.write_text("case_id,ct,config\n" + "".join(f"case{n},ct{n},{CONFIG}\n" for n in range(N_CASES)))
        cases = read_manifest(manifest)
        print(f"{N_CASES} sample-size phantom cases written in {time.perf_counter() - start:.1f} s; "
              f"{CPU_COUNT} cores")
        counts = [w for w in (1, 2, 4, 8) if w <= min(CPU_COUNT, N_CASES)]
        walls = {}
        for workers in counts:
            load_before = os.getloadavg()[0]
            start = time.perf_counter()
            with connect(workers=workers) as client:
                startup = time.perf_counter() - start
                result = run_batch(cases, root / f"out{workers}", client)
            done = [r for r in result.records if r["status"] == DONE]
            if len(done) < N_CASES:
                failed = next(r for r in result.records if r["status"] != DONE)
                raise SystemExit(f"case {failed['case_id']} {failed['status']}: {failed.get('error')}")
            walls[workers] = result.seconds
            print(f"{workers} worker(s): {result.seconds:6.1f} s for {N_CASES} cases "
                  f"(cluster start {startup:.1f} s), speed-up {walls[counts[0]] / result.seconds:.2f}x; "
                  f"per case median {statistics.median(r['wall_s'] for r in done):.1f} s, "
                  f"peak memory median {statistics.median(r['peak_rss_mib'] for r in done):.0f} MiB "
                  f"(max {max(r['peak_rss_mib'] for r in done):.0f}); "
                  f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
