"""Patient-specific pelvic implant geometry from CT (see README.md)."""

import os

# NumPy asks the kernel for transparent huge pages for every large array
# (madvise). Where the kernel then compacts memory on the spot to find them
# (THP defrag "madvise", a common default), page faults dominated: making
# two cutting guides on Pelvic-Ref-003 cost 2.3-3.1 s of system time against
# 0.9-1.0 s without, and the whole job (guides and fixation) took
# 38.5-41.6 s against 36.4-37.0 s. NumPy reads this when it is first
# imported; a value the user set is kept.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
