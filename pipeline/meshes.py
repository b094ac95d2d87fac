"""Mesh validity and statistics, shared by every stage that makes or writes a mesh."""

from __future__ import annotations

import numpy as np
import trimesh

from .errors import MeshError


def validate_solid(mesh: trimesh.Trimesh, name: str) -> None:
    """Raise :class:`MeshError` unless ``mesh`` is a closed, consistently and
    outward-oriented solid with positive volume."""
    if len(mesh.faces) == 0:
        raise MeshError(f"{name}: mesh is empty")
    if not mesh.is_watertight:
        raise MeshError(f"{name}: mesh is not closed (some edges do not have exactly two faces)")
    if not mesh.is_winding_consistent:
        raise MeshError(f"{name}: mesh winding is inconsistent (not an oriented manifold)")
    if not mesh.volume > 0:
        raise MeshError(f"{name}: mesh volume is {mesh.volume:.3g} mm3; normals point inward")
    # Every closed shell on its own must enclose positive volume too: an
    # inward-facing shell hidden inside a larger one would cancel volume.
    volumes = shell_volumes_mm3(mesh)
    if volumes.min() <= 0:
        raise MeshError(f"{name}: {int((volumes <= 0).sum())} of {volumes.size} shells are inside-out")


def shell_volumes_mm3(mesh: trimesh.Trimesh) -> np.ndarray:
    """Signed volume of each edge-connected shell (divergence theorem per face)."""
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    tri = mesh.triangles
    per_face = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) / 6.0
    return np.bincount(labels, weights=per_face)


def mesh_stats(mesh: trimesh.Trimesh) -> dict:
    bounds = np.asarray(mesh.bounds, dtype=float)
    return {
        "triangles": int(len(mesh.faces)),
        "vertices": int(len(mesh.vertices)),
        "shells": int(shell_volumes_mm3(mesh).size),
        "volume_mm3": round(float(mesh.volume), 3),
        "area_mm2": round(float(mesh.area), 3),
        "bounds_lps_mm": [[round(float(v), 3) for v in row] for row in bounds],
        "watertight": bool(mesh.is_watertight),
        "winding_consistent": bool(mesh.is_winding_consistent),
    }
