"""Mesh validity and statistics, shared by every stage that makes or writes a mesh.

Validity is checked on the directed edges, in numpy (trimesh's general
queries cost ~1 s on a million-triangle pelvis): a triangle mesh is a closed,
consistently oriented 2-manifold exactly when every directed edge occurs once
and its reverse occurs once too.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from .errors import MeshError


def _directed_edge_keys(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(mesh.faces, dtype=np.int64)
    a = f.ravel()
    b = np.roll(f, -1, axis=1).ravel()
    n = np.int64(len(mesh.vertices))
    return a * n + b, b * n + a


def is_oriented_closed_manifold(mesh: trimesh.Trimesh) -> bool:
    f = np.asarray(mesh.faces)
    if ((f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 2] == f[:, 0])).any():
        return False  # a triangle repeating a vertex has a zero-length edge
    keys, reverse = _directed_edge_keys(mesh)
    keys.sort()
    if keys.size == 0 or (keys[1:] == keys[:-1]).any():
        return False  # an edge used twice in one direction: non-manifold or flipped face
    reverse.sort()
    return bool(np.array_equal(keys, reverse))


def shell_volumes_mm3(mesh: trimesh.Trimesh) -> np.ndarray:
    """Signed volume of each connected shell (divergence theorem per face)."""
    f = np.asarray(mesh.faces, dtype=np.int64)
    n = len(mesh.vertices)
    # Each triangle links its first vertex to the other two: enough for connectivity.
    rows = np.concatenate([f[:, 0], f[:, 0]])
    graph = sparse.csr_matrix((np.ones(rows.size, dtype=np.int8), (rows, f[:, 1:].T.ravel())), shape=(n, n))
    _, vertex_label = connected_components(graph, directed=False)
    v = np.asarray(mesh.vertices)
    per_face = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])) / 6.0
    labels = vertex_label[f[:, 0]]
    volumes = np.bincount(labels, weights=per_face)
    return volumes[np.bincount(labels) > 0]


def validate_solid(mesh: trimesh.Trimesh, name: str) -> None:
    """Raise :class:`MeshError` unless ``mesh`` is a closed, consistently and
    outward-oriented solid with positive volume in every shell."""
    if len(mesh.faces) == 0:
        raise MeshError(f"{name}: mesh is empty")
    if not is_oriented_closed_manifold(mesh):
        raise MeshError(f"{name}: mesh is not a closed, consistently oriented manifold "
                        "(some edge does not join exactly two faces in opposite directions)")
    volumes = shell_volumes_mm3(mesh)
    if volumes.sum() <= 0:
        raise MeshError(f"{name}: mesh volume is {volumes.sum():.3g} mm3; normals point inward")
    # An inward-facing shell inside a larger one would silently cancel volume.
    if volumes.min() <= 0:
        raise MeshError(f"{name}: {int((volumes <= 0).sum())} of {volumes.size} shells are inside-out")


def mesh_stats(mesh: trimesh.Trimesh) -> dict:
    volumes = shell_volumes_mm3(mesh)
    bounds = np.asarray(mesh.bounds, dtype=float)
    return {
        "triangles": int(len(mesh.faces)),
        "vertices": int(len(mesh.vertices)),
        "shells": int(volumes.size),
        "volume_mm3": round(float(volumes.sum()), 3),
        "area_mm2": round(float(mesh.area), 3),
        "bounds_lps_mm": [[round(float(v), 3) for v in row] for row in bounds],
        "watertight": is_oriented_closed_manifold(mesh),
    }
