"""What importing the package sets for the process and its children."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = ("import os, pipeline, numpy; "
         "print(os.environ['NUMPY_MADVISE_HUGEPAGE'], numpy._core.multiarray._get_madvise_hugepage())")
# NumPy imported first (a script, a test module): it read no variable and asked for huge pages.
NUMPY_FIRST_PROBE = ("import numpy, os, pipeline; "
                     "print(os.environ['NUMPY_MADVISE_HUGEPAGE'], numpy._core.multiarray._get_madvise_hugepage())")


def run_probe(probe: str = PROBE, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_numpy_huge_page_requests_are_off_unless_the_user_says_otherwise():
    # Unset: the package turns NumPy's madvise(MADV_HUGEPAGE) off before NumPy is imported,
    # or, where NumPy came first, with NumPy's own switch.
    assert run_probe() == ["0", "False"]
    assert run_probe(NUMPY_FIRST_PROBE) == ["0", "False"]
    # Set by the user: kept as it is.
    assert run_probe(NUMPY_MADVISE_HUGEPAGE="1") == ["1", "True"]
    assert run_probe(NUMPY_FIRST_PROBE, NUMPY_MADVISE_HUGEPAGE="1") == ["1", "True"]


BLAS_PROBE = ("import os, pipeline, numpy, threadpoolctl; "
              "print(os.environ['OPENBLAS_NUM_THREADS'], *[i['num_threads'] for i in threadpoolctl.threadpool_info() "
              "if i['internal_api'] == 'openblas'])")


def test_numpy_blas_runs_on_one_thread_unless_the_user_says_otherwise():
    clean = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}

    def probe(**env: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", BLAS_PROBE], cwd=REPO, env={**clean, **env},
                             capture_output=True, text=True, check=True)
        return out.stdout.split()
    # Unset: the package asks NumPy's OpenBLAS for one thread before NumPy is imported
    # (a NumPy built on another BLAS lists none here: only the variable is checked).
    assert probe()[0] == "1" and set(probe()[1:]) <= {"1"}
    # Set by the user: kept as it is.
    assert probe(OPENBLAS_NUM_THREADS="2")[0] == "2" and set(probe(OPENBLAS_NUM_THREADS="2")[1:]) <= {"2"}


def test_trimesh_checks_its_caches_with_xxhash():
    """trimesh hashes a mesh's arrays to check its caches on every query;
    without xxhash installed it falls back to blake2b, 75x slower."""
    import xxhash
    from trimesh import caching

    assert caching.hash_fast in (xxhash.xxh3_64_intdigest, xxhash.xxh64_intdigest)


# Eight threads allocate at once, then glibc's malloc_info lists the arenas in use.
ARENA_PROBE = """
import ctypes, ctypes.util, os, re, sys, tempfile, threading
if sys.argv[1] == "package":
    import pipeline
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
start = threading.Barrier(8)
def churn():
    start.wait()
    for _ in range(2000):
        libc.free(libc.malloc(4096))
threads = [threading.Thread(target=churn) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
path = os.path.join(tempfile.mkdtemp(), "info.xml")
f = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, f)
libc.fclose(f)
print(len(re.findall(r"<heap nr=", open(path).read())))
"""


def test_malloc_keeps_to_two_arenas_unless_the_user_says_otherwise():
    """Each thread that meets a busy allocator gets an arena of its own, and
    memory freed in one is not reused by another: the bench phantom's peak
    was 50-90 MiB higher with the default of eight per core."""
    import ctypes.util

    if not ctypes.util.find_library("c") or not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_info"):
        pytest.skip("not glibc")
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}

    def arenas(mode: str, **env: str) -> int:
        out = subprocess.run([sys.executable, "-c", ARENA_PROBE, mode], cwd=REPO, env={**clean, **env},
                             capture_output=True, text=True, check=True)
        return int(out.stdout)
    assert arenas("package") <= 2
    assert arenas("alone") > 2   # the probe does make glibc add arenas
    assert arenas("package", MALLOC_ARENA_MAX="4") > 2   # set by the user: kept
