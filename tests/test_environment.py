"""What importing the package sets for the process and its children."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# NumPy's own switch: numpy._core from NumPy 2, numpy.core before it.
ASK = ("print(os.environ['NUMPY_MADVISE_HUGEPAGE'], "
       "(getattr(numpy, '_core', None) or numpy.core).multiarray._get_madvise_hugepage())")
PROBE = "import os, pipeline, numpy; " + ASK
# NumPy imported first (a script, a test module): it read no variable and asked for huge pages.
NUMPY_FIRST_PROBE = "import numpy, os, pipeline; " + ASK


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


# Every module of the package imported with the network cut off: what tried
# to reach a host (a name looked up, an internet socket connected) is printed.
NETWORK_PROBE = """
import importlib, pkgutil, socket
tried = []
def refuse(what):
    def call(*args, **kwargs):
        tried.append(f"{what} {args[:2]!r}")
        raise OSError("no network in this probe")
    return call
socket.getaddrinfo = refuse("getaddrinfo")
connect = socket.socket.connect
def guarded(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return refuse("connect")(address)
    return connect(sock, address)
socket.socket.connect = guarded
import pipeline
for module in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
    if not module.name.endswith("__main__"):   # that one runs the command line
        importlib.import_module(module.name)
import pydicom.pixels, trimesh, nibabel, plotly.graph_objects, fast_simplification, point_cloud_utils, SimpleITK
print(len(tried), *tried[:3], sep="\\n")
"""


def test_importing_the_package_reaches_for_no_network():
    """Nothing is downloaded at run time: importing every module of the
    package (and the libraries it imports only when a run needs them)
    looks up no host and opens no internet connection. pydicom 3.0.0
    fetched its test files when pydicom.pixels was imported (it warned of
    five download failures offline); pyproject.toml asks for 3.0.1 or later."""
    out = subprocess.run([sys.executable, "-c", NETWORK_PROBE], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "0", out.stdout
