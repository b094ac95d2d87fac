"""Small helpers shared by the end-to-end style tests."""

from __future__ import annotations

import re
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
