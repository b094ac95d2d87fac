"""Small helpers shared by the end-to-end style tests."""

from __future__ import annotations

import re
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


# The pelvis phantom on a coarse grid (pelvis_phantom keywords): a whole run
# with the sample plan (configs/default.toml) takes about a second.
COARSE_PELVIS = {"shape": (68, 92, 116), "spacing_mm": (3.4, 3.0, 3.0)}


def without_scripts(page: str) -> str:
    """An HTML page with the text of its script elements left out (their tags stay)."""
    return re.sub(r"(<script\b[^>]*>).*?(</script>)", r"\1\2", page, flags=re.IGNORECASE | re.DOTALL)


def external_references(page: str) -> list[str]:
    """What an HTML page would fetch from outside itself: every ``src`` or
    ``href`` attribute, ``url(...)`` and ``@import`` that is not a ``data:``
    URI, outside the text of inline scripts (a script's code is not markup:
    plotly.js holds strings like ``href="..."`` that it never loads), plus
    every script element that names a source."""
    found = [m.group(0) for m in re.finditer(r"<script\b[^>]*\bsrc\s*=", page, re.IGNORECASE)]
    markup = without_scripts(page)
    found += [v for v in re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", markup, re.IGNORECASE)
              if not v.startswith("data:")]
    found += [v for v in re.findall(r"url\(\s*['\"]?([^)'\"]*)", markup) if not v.startswith("data:")]
    found += re.findall(r"@import[^;]*", markup)
    return found


def view_meshes(page: str, div_id: str = "view3d") -> dict:
    """The meshes a report page's plotly 3D view draws, by name, decoded
    from the page itself (plotly writes arrays as base64 with a dtype)."""
    import base64
    import json

    import trimesh

    start = page.index(f'"{div_id}",', page.index("Plotly.newPlot(")) + len(div_id) + 3
    traces, _ = json.JSONDecoder().raw_decode(page[start:].lstrip())

    def array(value):
        if isinstance(value, dict):
            return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        return np.asarray(value)

    return {t["name"]: trimesh.Trimesh(np.stack([array(t[a]) for a in "xyz"], axis=1),
                                       np.stack([array(t[a]) for a in "ijk"], axis=1), process=False)
            for t in traces if t.get("type") == "mesh3d"}


def symmetric_sample(lesion: bool = False):
    """The sample phantom made mirror-symmetric about x = 0, for tests whose
    truth is a symmetry plane: the atlas pelvis is not symmetric (nor is any
    real one), so the patient's left half is replaced by the mirror image of
    the right half (the sample grid's columns are symmetric about x = 0).
    With ``lesion``, the left ilium's lytic lesion is put back in as the
    difference it makes to the CT (same noise seed, so nothing else changes).

    Returns (volume, labels, intact_sdf): ``intact_sdf(label, points)`` is the
    truth of the symmetric bones, a left bone's being its right mirror image's
    (labels 1, 4 read 2, 5; sacrum and spine read their right halves)."""
    from pipeline.phantom import pelvis_phantom, preset

    plain = pelvis_phantom(**preset("sample"))
    n = plain.volume.shape[2]
    assert n % 2 == 0 and np.allclose(plain.volume.index_to_lps(np.array([0, 0, 0]))[0],
                                      -plain.volume.index_to_lps(np.array([0, 0, n - 1]))[0])

    def mirrored(a):
        a = a.copy()
        a[..., n // 2:] = a[..., : n // 2][..., ::-1]
        return a
    hu = mirrored(plain.volume.hu)
    if lesion:
        hu = hu + (pelvis_phantom(**preset("sample"), lesion=True).volume.hu - plain.volume.hu)
    labels = mirrored(plain.labels)
    swap = np.array([0, 2, 1, 3, 5, 4, 6])
    right_half = labels[..., n // 2:]
    right_half[:] = swap[right_half]

    def intact_sdf(label: int, points: np.ndarray) -> np.ndarray:
        p = np.array(points, dtype=np.float64)
        if label in (2, 5):                 # the right bones are the phantom's own
            return plain.label_sdf_mm(label, p)
        # Left bones are the right ones mirrored; the midline bones' left halves are their right halves'.
        flip = np.ones(p.shape[:-1], dtype=bool) if label in (1, 4) else p[..., 0] > 0
        p[flip, 0] *= -1.0
        return plain.label_sdf_mm({1: 2, 4: 5}.get(label, label), p)
    return Volume(hu.astype(np.float32), plain.volume.affine, meta=plain.volume.meta), labels, intact_sdf
