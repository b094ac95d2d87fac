"""Resident memory: freed memory goes back to the system between stages."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.memory import PeakMemory, _malloc_trim, release_freed_memory


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or _malloc_trim() is None,
                    reason="needs Linux with glibc (malloc_trim, /proc)")
def test_memory_freed_by_many_small_arrays_is_given_back():
    """64 KiB arrays come from malloc's heap (under its mmap threshold); a
    small one kept after each leaves every freed block between two pieces
    in use, so freeing the large ones leaves their memory with the process.
    Handed back, at most a quarter of it stays resident. (What earlier tests
    freed is handed back first, so the blocks take fresh memory.)"""
    release_freed_memory()
    baseline = _rss_mib()
    blocks, keep = [], []
    for _ in range(3000):   # ~190 MiB
        blocks.append(np.ones(8192))
        keep.append(np.ones(64))   # 512 bytes, from malloc too
    used = _rss_mib() - baseline
    assert used > 150
    del blocks
    release_freed_memory()
    assert _rss_mib() - baseline < 0.25 * used
    assert len(keep) == 3000


def test_peak_memory_reports_its_scope():
    report = PeakMemory().report()
    assert report["peak_rss_mib"] > 0
    assert report["peak_rss_since"] in ("start of the case", "start of the process")
