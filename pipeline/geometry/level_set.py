"""The closed solid where a field on a regular grid is negative (marching cubes).

Flanges (:mod:`pipeline.design.plate`) and joint bridges
(:mod:`pipeline.geometry.bridge`) are made as signed fields on a grid of
their own; this turns one into a manifold3d solid for the booleans that
follow.
"""

from __future__ import annotations

import manifold3d
import numpy as np
import trimesh
from skimage.measure import marching_cubes

from .meshes import to_manifold

# Grid values closer than this fraction of the spacing to the level are
# moved off it: marching-cubes vertices then keep this far from grid points.
NUDGE = 1e-3


def field_solid(field: np.ndarray, origin: np.ndarray, spacing: float, what: str) -> manifold3d.Manifold | None:
    """The closed solid where ``field`` < 0 on the grid (``origin``: LPS mm
    of ``field[0, 0, 0]``, axes along L, P, S), or None where it is nowhere
    negative. ``what`` names it in an error."""
    field = field.copy()
    field[np.abs(field) < NUDGE * spacing] = NUDGE * spacing
    if not (field < 0).any():
        return None
    field = np.pad(field, 1, constant_values=spacing)
    verts, faces, _, _ = marching_cubes(field, level=0.0, spacing=(spacing,) * 3,
                                        gradient_direction="ascent", allow_degenerate=True)
    verts = verts.astype(np.float64) + origin - spacing
    faces = np.asarray(faces, dtype=np.int64)
    # Outward when its signed volume (divergence theorem, face by face) is positive.
    t = verts[faces]
    if np.einsum("ij,ij->", t[:, 0], np.cross(t[:, 1], t[:, 2])) < 0:
        faces = faces[:, ::-1]
    return to_manifold(trimesh.Trimesh(vertices=verts, faces=faces, process=False), what)
