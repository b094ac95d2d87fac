"""Resident memory of the process: its peak per case, and freed memory given back between stages.

glibc's malloc keeps memory freed by large temporaries (a stage's box-sized
arrays, in each thread's own arena) for reuse, and where pieces of it stay
in use it cannot reuse all of it; the next stage's arrays then land on top.
Handing what is free back to the system between stages
(:func:`release_freed_memory`, glibc's ``malloc_trim``) took the run's peak
on a 512x512x300 CT from ~1310 to ~1170 MiB, for a few milliseconds a stage.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
from functools import cache


@cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None on other C libraries."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


# glibc's mallopt parameter for the largest number of arenas.
M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> bool:
    """Keep glibc's malloc to ``MALLOC_ARENAS`` arenas, unless the user set
    ``MALLOC_ARENA_MAX`` (glibc reads it at start-up) or the C library is not
    glibc. True where the limit was set."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, MALLOC_ARENAS))


def release_freed_memory() -> None:
    """Give memory the process has freed back to the system (glibc; a no-op elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class PeakMemory:
    """Peak resident memory of this process from construction on.

    On Linux the kernel's high-water mark (VmHWM) is reset at the start, so
    a worker that runs case after case reports each case's own peak; where
    that is not possible the process's lifetime peak is reported, and said so.
    """

    def __init__(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")   # 5: reset the peak resident set size
            self.scope = "case"
        except OSError:
            self.scope = "process"

    def peak_mib(self) -> float:
        if self.scope == "case":
            try:
                with open("/proc/self/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            return int(line.split()[1]) / 1024.0
            except OSError:
                pass
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux, bytes on macOS
        return peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)

    def report(self) -> dict:
        return {"peak_rss_mib": round(self.peak_mib(), 1), "peak_rss_since": f"start of the {self.scope}"}
