"""Patient-specific pelvic implant geometry from CT (see README.md)."""

import os
import sys

# NumPy asks the kernel for transparent huge pages for every large array
# (madvise). Where the kernel then compacts memory on the spot to find them
# (THP defrag "madvise", a common default), page faults dominated: making
# two cutting guides on Pelvic-Ref-003 cost 2.3-3.1 s of system time against
# 0.9-1.0 s without, and the whole job (guides and fixation) took
# 38.5-41.6 s against 36.4-37.0 s. NumPy reads this when it is first
# imported; a value the user set is kept. Where NumPy came first (a script or
# a test that imports it before the package), its own switch is turned off as
# the variable says: so imported, the labels of Pelvic-Ref-003 took 2.9 s
# against 2.2 s (the flood's arrays alone 0.6 s of system time against 0.03 s).
if "NUMPY_MADVISE_HUGEPAGE" not in os.environ and "numpy" in sys.modules:
    # numpy._core from NumPy 2, numpy.core before it
    _core = getattr(sys.modules["numpy"], "_core", None) or getattr(sys.modules["numpy"], "core", None)
    _multiarray = getattr(_core, "multiarray", None)
    if hasattr(_multiarray, "_set_madvise_hugepage"):
        _multiarray._set_madvise_hugepage(False)
    del _core, _multiarray
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

# NumPy's OpenBLAS runs a matrix product on every core by default. Ours are
# skinny (points x 3 @ 3 x 3, a shape model's modes) and often run on two
# threads of our own already (two cutting guides at once), so its threads
# only contend with ours: on Pelvic-Ref-003 the two guides took 4.2-5.0 s
# (median of three, four alternating rounds) with one BLAS thread against
# 5.0-6.0 s with one per core, 7.1-8.5 against 8.6-10.6 CPU-seconds; the
# labels and the fixation did not move. OpenBLAS reads this when NumPy is
# first imported; a value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# glibc gives each thread that meets a busy allocator an arena of its own (up
# to eight per core), and memory freed in one arena is not reused by another:
# with the view's worker pool's threads beside the run's own, the bench
# phantom's peak rose by about 50 MiB. Two arenas (a value the user set in
# MALLOC_ARENA_MAX is kept) took its peak from 1308-1410 to 1245-1322 MiB
# over three runs each, at the same speed (see memory.limit_malloc_arenas).
from .memory import limit_malloc_arenas  # noqa: E402

limit_malloc_arenas()
