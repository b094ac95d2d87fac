"""Small helpers shared by the end-to-end style tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import Config, SegmentConfig
from pipeline.io.dicom_write import write_series
from pipeline.evaluate import dice  # noqa: F401  (re-exported for the tests)
from pipeline.io.dicom import load_ct
from pipeline.run import run_mesh
from pipeline.volume import Volume

REPO = Path(__file__).resolve().parents[1]
REAL_CT = REPO.parent / "shared" / "real_ct"


def rotation(axis, angle_rad: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * k @ k


def mesh_through_dicom(volume: Volume, folder: Path, config: Config | None = None, **write_kwargs):
    """Write ``volume`` as DICOM, read it back and mesh it, as a user's run would."""
    write_series(volume, folder, **write_kwargs)
    loaded = load_ct(folder)
    return run_mesh(loaded, config or Config(segment=SegmentConfig(min_island_mm3=100.0)))


def winding_number(mesh, point) -> float:
    """Generalised winding number of a closed mesh around ``point``: 1 inside,
    0 outside (sum of the triangles' solid angles, Van Oosterom & Strackee)."""
    a, b, c = (mesh.triangles - np.asarray(point, dtype=float)).transpose(1, 0, 2)
    la, lb, lc = (np.linalg.norm(x, axis=1) for x in (a, b, c))
    numerator = np.einsum("ij,ij->i", a, np.cross(b, c))
    denominator = (la * lb * lc + np.einsum("ij,ij->i", a, b) * lc
                   + np.einsum("ij,ij->i", b, c) * la + np.einsum("ij,ij->i", c, a) * lb)
    return float(np.sum(2.0 * np.arctan2(numerator, denominator)) / (4.0 * np.pi))


# The pelvis phantom on a coarse grid (pelvis_phantom keywords): a whole run
# with the sample plan (configs/default.toml) takes about a second.
COARSE_PELVIS = {"shape": (60, 92, 116), "spacing_mm": (3.4, 3.0, 3.0)}
