"""Shared test fixtures."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import settings

from pipeline.volume import Volume

AIR_HU = -1000.0
BOX_HU = 300.0
SPHERE_HU = 1200.0   # tests select the sphere alone with a threshold between BOX_HU and this


def _make_phantom(affine: np.ndarray | None = None,
                  shape: tuple[int, int, int] = (12, 20, 16)) -> Volume:
    """An asymmetric object on an anisotropic grid: every axis flip changes where it lies.

    A box, and a sphere offset from it towards the patient's left, posterior and
    superior, both defined in LPS mm (so any affine places the same physical
    object). HU values are integers: they survive the default rescale exactly.
    Default grid: axial head-first, spacing (2.0, 0.8, 0.7) mm (slice, row, column).
    """
    if affine is None:
        affine = np.array([[0.0, 0.0, 0.7, -5.0],
                           [0.0, 0.8, 0.0, -8.0],
                           [2.0, 0.0, 0.0, 40.0],
                           [0.0, 0.0, 0.0, 1.0]])
    index = np.indices(shape).reshape(3, -1).T
    lps = index @ affine[:3, :3].T + affine[:3, 3]
    centre = lps.mean(axis=0)
    d = lps - centre
    box = np.all(np.abs(d - [-1.0, 0.0, -2.0]) <= [3.0, 4.0, 6.0], axis=1)
    sphere = np.linalg.norm(d - [2.5, 2.0, 5.0], axis=1) <= 2.6
    hu = np.full(len(lps), AIR_HU, dtype=np.float32)
    hu[box] = BOX_HU
    hu[sphere] = SPHERE_HU
    return Volume(hu.reshape(shape), affine)


@pytest.fixture
def make_phantom():
    """The phantom factory: ``make_phantom(affine=None, shape=(12, 20, 16)) -> Volume``."""
    return _make_phantom


@pytest.fixture
def phantom() -> Volume:
    return _make_phantom()


# Property tests explore new examples locally, but CI must be repeatable: there
# the examples are derived from the test itself, not from a random seed.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
