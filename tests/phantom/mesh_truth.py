"""Truth for triangle meshes that shares no code with :mod:`pipeline.phantom.mesh_sdf`:
the distance to every triangle (Ericson's closest point on a triangle, "Real-Time
Collision Detection" 5.1.5, no acceleration) and the generalised winding number
(Van Oosterom and Strackee's solid angles, summed over every triangle)."""

from __future__ import annotations

import numpy as np


def closest_on_triangles(px, py, pz, ax, ay, az, bx, by, bz, cx, cy, cz):
    """Squared distance from points p to triangles (a, a + b, a + c), all
    broadcastable arrays (b and c are edge vectors from a)."""
    apx, apy, apz = px - ax, py - ay, pz - az
    d1 = bx * apx + by * apy + bz * apz
    d2 = cx * apx + cy * apy + cz * apz
    bb = bx * bx + by * by + bz * bz
    cc = cx * cx + cy * cy + cz * cz
    bc = bx * cx + by * cy + bz * cz
    d3, d4, d5, d6 = d1 - bb, d2 - bc, d1 - bc, d2 - cc
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    e43, e56 = d4 - d3, d5 - d6
    with np.errstate(divide="ignore", invalid="ignore"):
        total = va + vb + vc
        # Ericson's order matters: each test assumes the earlier ones failed.
        conds = [(d1 <= 0) & (d2 <= 0), (d3 >= 0) & (d4 <= d3),
                 (vc <= 0) & (d1 >= 0) & (d3 <= 0), (d6 >= 0) & (d5 <= d6),
                 (vb <= 0) & (d2 >= 0) & (d6 <= 0), (va <= 0) & (e43 >= 0) & (e56 >= 0)]
        w_bc = e43 / (e43 + e56)
        v = np.select(conds, [0.0, 1.0, d1 / (d1 - d3), 0.0, 0.0, 1.0 - w_bc], vb / total)
        w = np.select(conds, [0.0, 0.0, 0.0, 1.0, d2 / (d2 - d6), w_bc], vc / total)
    qx = bx * v + cx * w - apx
    qy = by * v + cy * w - apy
    qz = bz * v + cz * w - apz
    return qx * qx + qy * qy + qz * qz


def brute_force_distance_mm(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest of all triangles."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    out = np.empty(len(points))
    for s in range(0, len(points), 64):
        p = points[s:s + 64, None, :]
        d2 = closest_on_triangles(p[..., 0], p[..., 1], p[..., 2], *a.T[:, None, :], *(b - a).T[:, None, :],
                                  *(c - a).T[:, None, :])
        out[s:s + 64] = np.sqrt(d2.min(axis=1))
    return out


def winding_number(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Generalised winding number (1 inside a closed outward mesh, 0 outside):
    the solid angles of all triangles seen from each point, over 4 pi."""
    a, b, c = (vertices[faces[:, k]].T.copy() for k in range(3))     # (3, F) each
    out = np.empty(len(points))
    for s in range(0, len(points), 8):
        p = points[s:s + 8]
        ax, ay, az = (a[i][None] - p[:, i:i + 1] for i in range(3))
        bx, by, bz = (b[i][None] - p[:, i:i + 1] for i in range(3))
        cx, cy, cz = (c[i][None] - p[:, i:i + 1] for i in range(3))
        la, lb, lc = (np.sqrt(x * x + y * y + z * z) for x, y, z in ((ax, ay, az), (bx, by, bz), (cx, cy, cz)))
        det = ax * (by * cz - bz * cy) + ay * (bz * cx - bx * cz) + az * (bx * cy - by * cx)
        den = (la * lb * lc + (ax * bx + ay * by + az * bz) * lc + (bx * cx + by * cy + bz * cz) * la
               + (cx * ax + cy * ay + cz * az) * lb)
        out[s:s + 8] = np.arctan2(det, den).sum(axis=1) / (2.0 * np.pi)
    return out
