"""Lighter copies of meshes for viewing, within a measured distance of the original.

Quadric decimation (fast-simplification) keeps broad surfaces within a few
hundredths of a millimetre, but it wears down thin features: where a plate
of bone is thinner than a triangle, the quadric of both sides barely grows
as its rim recedes, so the rim of a knife edge (an oblique cut meeting the
cortex) or a thin spine process moves inwards by millimetres while 99.9 % of
the surface stays within 0.1 mm. The decimation therefore checks itself:
the distance between the two surfaces is measured both ways (point-to-triangle
distance from the vertices and triangle centres of each to the other, see
:mod:`pipeline.geometry.distance`: on a CT mesh, samples about half a voxel
apart), and where it exceeds the tolerance the
original triangles around the spot are kept and the rest is decimated
again, its border left in place so the kept patch fits it exactly.

The result is for looking at, never for writing: it is not guaranteed to be
a closed manifold (the decimation may leave a few edges used four times).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import trimesh

from .distance import point_mesh_distance
from .meshes import compact_indices

# fast-simplification keeps the mesh being simplified in module-level state
# between its load, simplify and return calls: one simplification at a time.
_DECIMATION_LOCK = threading.Lock()
# Rounds of "measure, keep the original around what strayed, decimate again".
MAX_ROUNDS = 4
# Each round keeps the original triangles within this many edge steps of a
# stray spot, and one more step every further round.
KEEP_RINGS = 2
# The kept original triangles may take at most this share of the triangle budget;
# beyond it the measured distance is reported as it is.
MAX_KEPT_SHARE = 0.5


@dataclass(frozen=True, eq=False)
class Simplified:
    mesh: trimesh.Trimesh  # the lighter copy, LPS mm like its original
    hausdorff_mm: float    # largest distance between the two surfaces, both ways; within the tolerance a bound
    kept_triangles: int    # original triangles kept unchanged around thin features


def simplify_within(mesh: trimesh.Trimesh, max_triangles: int, tolerance_mm: float) -> Simplified:
    """A copy of ``mesh`` with at most ``max_triangles`` triangles (about: the
    decimation stops within a few triangles of it) whose surface lies within
    ``tolerance_mm`` of the original's, and the original's within it of the
    copy's, where that is possible within the budget: the measured distance
    is returned either way (exact where it exceeds the tolerance; within it,
    an upper bound: the nearest triangle found, not searched further). A
    mesh within the budget is returned unchanged."""
    if max_triangles < 4:
        raise ValueError(f"max_triangles must be at least 4, not {max_triangles}")
    if tolerance_mm <= 0:
        raise ValueError(f"tolerance_mm must be positive, not {tolerance_mm}")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) <= max_triangles:
        return Simplified(mesh, 0.0, len(faces))
    keep = np.zeros(len(faces), dtype=bool)
    for round_ in range(MAX_ROUNDS):
        view_vertices, view_faces = _decimate_around(vertices, faces, keep, max_triangles - int(keep.sum()))
        distance, stray = _compare(vertices, faces, view_vertices, view_faces, tolerance_mm)
        kept = int(keep.sum())
        if not stray.any():
            break
        grown = _grow(keep | stray, faces, len(vertices), KEEP_RINGS + round_)
        if grown.sum() > MAX_KEPT_SHARE * max_triangles:
            break
        keep = grown
    view = trimesh.Trimesh(view_vertices, view_faces, process=False)
    if stray.any():  # given up with the copy's own strays not looked for: measure both ways
        distance = hausdorff_mm(mesh, view)
    return Simplified(view, distance, kept)


def hausdorff_mm(a: trimesh.Trimesh, b: trimesh.Trimesh) -> float:
    """Largest distance from a point of either surface to the other surface,
    sampled at the vertices and triangle centres of both."""
    va, fa = np.asarray(a.vertices, dtype=np.float64), np.asarray(a.faces, dtype=np.int64)
    vb, fb = np.asarray(b.vertices, dtype=np.float64), np.asarray(b.faces, dtype=np.int64)
    return max(float(point_mesh_distance(_samples(va, fa), vb, fb)[0].max()),
               float(point_mesh_distance(_samples(vb, fb), va, fa)[0].max()))


def _decimate_around(vertices: np.ndarray, faces: np.ndarray, keep: np.ndarray,
                     target: int) -> tuple[np.ndarray, np.ndarray]:
    """Decimate the faces not in ``keep`` to about ``target`` triangles, their
    border with the kept faces fixed, and join the kept faces back on."""
    import fast_simplification  # imported when a view is made, not with the package

    free = faces[~keep]
    used, local = compact_indices(free, len(vertices))
    with _DECIMATION_LOCK:
        new_vertices, new_faces = fast_simplification.simplify(
            vertices[used], local, target_count=max(4, target), preserve_border=bool(keep.any()))
    if not keep.any():
        return new_vertices, np.asarray(new_faces, dtype=np.int64)
    # Border vertices come back bit for bit: join the two parts on exact coordinates.
    kept_used, kept_local = compact_indices(faces[keep], len(vertices))
    joined, index = np.unique(np.concatenate([new_vertices, vertices[kept_used]]), axis=0, return_inverse=True)
    index = index.ravel()
    joined_faces = np.concatenate([index[np.asarray(new_faces, dtype=np.int64)],
                                   index[len(new_vertices) + kept_local]])
    return joined, joined_faces


def _compare(vertices, faces, view_vertices, view_faces, tolerance_mm: float) -> tuple[float, np.ndarray]:
    """(Hausdorff distance, faces of the original near a spot where the two
    surfaces are farther apart than ``tolerance_mm``). Cheapest first: the
    original's vertices, then its triangle centres, then the copy's own
    samples against the original; the first that finds strays ends the
    comparison (the next round decimates again anyway), and the distance
    returned is then a lower bound, the Hausdorff distance otherwise."""
    out, _ = point_mesh_distance(vertices, view_vertices, view_faces)
    stray = (out > tolerance_mm)[faces].any(axis=1)
    if stray.any():
        return float(out.max()), stray
    centres, _ = point_mesh_distance(_centres(vertices, faces), view_vertices, view_faces)
    stray = centres > tolerance_mm
    if stray.any():
        return float(centres.max()), stray
    back, nearest = point_mesh_distance(_samples(view_vertices, view_faces), vertices, faces)
    stray[nearest[back > tolerance_mm]] = True
    return max(float(out.max()), float(centres.max()), float(back.max())), stray


def _samples(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Vertices and triangle centres."""
    return np.concatenate([vertices, _centres(vertices, faces)])


def _centres(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Triangle centres (three additions: numpy's mean along an axis of length 3 is 3x slower)."""
    return (vertices[faces[:, 0]] + vertices[faces[:, 1]] + vertices[faces[:, 2]]) / 3.0


def _grow(selected: np.ndarray, faces: np.ndarray, n_vertices: int, rings: int) -> np.ndarray:
    """``selected`` faces and every face within ``rings`` edge steps of them."""
    grown = selected.copy()
    for _ in range(rings):
        touched = np.zeros(n_vertices, dtype=bool)
        touched[faces[grown].ravel()] = True
        grown = touched[faces].any(axis=1)
    return grown
