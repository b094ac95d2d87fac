"""Resection planes from the ways planners write them down.

A plane reaches the pipeline as a point and a unit normal in LPS millimetres,
the normal pointing into the part that is removed. Planners give it as

* a point and a normal (the pipeline's own form);
* three points on the plane plus one point on the removed side (which fixes
  the normal's sign);
* a 3D Slicer markups file (``.mrk.json``): a Plane node, or a list of three
  control points. The file states its own coordinate system (``LPS``, the
  default, or ``RAS``); RAS is converted here, the one place plans leave it.
  A file of several markups (a run's ``plan.mrk.json``, one Plane per cut)
  gives the one named like the plane.

These functions read and compute; the config module names the keys in errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ConfigError

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
# Three points closer to a line than this (mm, height of the triangle) do not fix a plane.
MIN_TRIANGLE_HEIGHT_MM = 1.0


def plane_through_points(points_lps_mm: np.ndarray, removed_side_lps_mm: np.ndarray | None,
                         what: str) -> tuple[np.ndarray, np.ndarray]:
    """(point, unit normal) of the plane through three points.

    Without ``removed_side_lps_mm`` the normal follows the right-hand rule,
    ``(p1 - p0) x (p2 - p0)``, as 3D Slicer orients a three-point plane;
    with it, the normal points towards that point.
    """
    p = np.asarray(points_lps_mm, dtype=np.float64)
    if p.shape != (3, 3):
        raise ConfigError(f"{what}: needs exactly three points, got {len(p)}")
    normal = np.cross(p[1] - p[0], p[2] - p[0])
    longest = max(np.linalg.norm(p[1] - p[0]), np.linalg.norm(p[2] - p[0]), np.linalg.norm(p[2] - p[1]))
    if np.linalg.norm(normal) / max(longest, 1e-12) < MIN_TRIANGLE_HEIGHT_MM:
        raise ConfigError(f"{what}: the three points are (nearly) on one line; they do not fix a plane")
    normal /= np.linalg.norm(normal)
    centre = p.mean(axis=0)
    if removed_side_lps_mm is not None:
        side = float(np.dot(np.asarray(removed_side_lps_mm, dtype=np.float64) - centre, normal))
        if abs(side) < 1e-6:
            raise ConfigError(f"{what}: the removed-side point lies on the plane; it must lie on the removed side")
        normal = normal if side > 0 else -normal
    return centre, normal


def read_markups_plane(path: Path, what: str, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(point, unit normal) in LPS from a 3D Slicer markups file.

    A ``Plane`` markup gives its normal directly (``center``/``normal`` when
    Slicer wrote them, else its control points); a ``Fiducial`` list of three
    points gives the plane through them with the right-hand-rule normal. The
    caller flips the normal on request (``flip``), since the file cannot say
    which side the planner meant to remove. A file holding several markups
    gives the one whose ``name`` is ``name``.
    """
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{what}: cannot read markups file {path} ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what}: {path} is not JSON ({e.msg}, line {e.lineno})") from None
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list) or not markups or not all(isinstance(m, dict) for m in markups):
        raise ConfigError(f"{what}: {path} holds no markup")
    markup = markups[0] if len(markups) == 1 else _named_markup(markups, name, path, what)
    system = markup.get("coordinateSystem", "LPS")
    if system not in ("LPS", "RAS"):
        raise ConfigError(f"{what}: {path} uses coordinate system {system!r}; expected LPS or RAS")
    units = markup.get("coordinateUnits", "mm")
    if units not in ("mm", ["mm", "UCUM", "millimeter"]):
        raise ConfigError(f"{what}: {path} uses units {units!r}; expected mm")
    to_lps = RAS_TO_LPS if system == "RAS" else np.ones(3)
    points = _control_points(markup, path, what) * to_lps
    kind = markup.get("type")
    if kind == "Plane" and "normal" in markup and "center" in markup:
        normal = np.asarray(markup["normal"], dtype=np.float64) * to_lps
        if normal.shape != (3,) or np.linalg.norm(normal) < 1e-9:
            raise ConfigError(f"{what}: {path} has an invalid plane normal {markup['normal']!r}")
        return np.asarray(markup["center"], dtype=np.float64) * to_lps, normal / np.linalg.norm(normal)
    if kind in ("Plane", "Fiducial") and len(points) == 3:
        return plane_through_points(points, None, f"{what} ({path})")
    raise ConfigError(f"{what}: {path} holds a {kind} markup with {len(points)} points; expected a Plane "
                      "or a list of three points")


def _named_markup(markups: list[dict], name: str | None, path: Path, what: str) -> dict:
    names = [str(m.get("name", "")) for m in markups]
    if name is None or names.count(name) != 1:
        found = "no" if name is None or name not in names else "more than one"
        raise ConfigError(f"{what}: {path} holds {len(markups)} markups ({', '.join(names)}); {found} markup is "
                          f"named {name!r}: set the plane's name to one of them")
    return markups[names.index(name)]


def _control_points(markup: dict, path: Path, what: str) -> np.ndarray:
    points = []
    for point in markup.get("controlPoints", []):
        if point.get("positionStatus", "defined") != "defined":
            continue
        position = point.get("position")
        if not (isinstance(position, list) and len(position) == 3):
            raise ConfigError(f"{what}: {path} has a control point without a 3-number position")
        points.append(position)
    return np.asarray(points, dtype=np.float64).reshape(-1, 3)
