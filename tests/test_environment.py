"""What importing the package sets for the process and its children."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = ("import os, pipeline, numpy; "
         "print(os.environ['NUMPY_MADVISE_HUGEPAGE'], numpy._core.multiarray._get_madvise_hugepage())")


def run_probe(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_numpy_huge_page_requests_are_off_unless_the_user_says_otherwise():
    # Unset: the package turns NumPy's madvise(MADV_HUGEPAGE) off before NumPy is imported.
    assert run_probe() == ["0", "False"]
    # Set by the user: kept as it is.
    assert run_probe(NUMPY_MADVISE_HUGEPAGE="1")[0] == "1"
