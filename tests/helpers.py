"""Small helpers shared by the end-to-end style tests."""

from __future__ import annotations

import struct
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


def read_binary_stl(data: bytes):
    """(header, normals, triangles) of a binary STL, read from the format
    description with struct and numpy, not via trimesh."""
    header = data[:80]
    (count,) = struct.unpack("<I", data[80:84])
    rec = np.frombuffer(data, dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")]),
                        count=count, offset=84)
    assert len(data) == 84 + 50 * count
    return header, rec["n"], rec["v"]


def solid_defects(triangles: np.ndarray) -> dict[str, int]:
    """What keeps float32 ``triangles`` (n, 3, 3), welded by exact position as
    a reader does, from being a closed, consistently oriented 2-manifold:
    triangles with a repeated corner or zero area, and edges not used exactly
    twice in opposite directions. Written apart from the pipeline's checks."""
    corners, index = np.unique(triangles.reshape(-1, 3), axis=0, return_inverse=True)
    f = index.reshape(-1, 3)
    repeated = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2])
    t = corners[f].astype(np.float64)
    zero_area = np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1) == 0
    a, b = f.ravel(), np.roll(f, -1, axis=1).ravel()
    n = np.int64(len(corners))
    forward, backward = a * n + b, b * n + a
    once, count = np.unique(forward, return_counts=True)
    return {"repeated_corner": int(repeated.sum()), "zero_area": int(zero_area.sum()),
            "edge_used_twice_one_way": int((count > 1).sum()),
            "edge_without_its_reverse": int((~np.isin(backward, once)).sum())}
