"""Fit report: how the implant meets the host, in numbers an engineer checks.

Per contact face: host cut area, implant contact area, the overlap of the two
outlines (area of their intersection over the host cut area, and the largest
distance between the outlines), the gap between the faces (min, mean, max)
and flatness. For the implant: volume, mass for a given density, bounding box
dimensions, and minimum wall thickness.

Outlines are compared in the plane with manifold3d's exact 2D booleans
(CrossSection). Wall thickness is sampled: from surface points, along the
inward normal, to where the ray leaves the solid (manifold3d ray casts).
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial import cKDTree

import manifold3d

from ..config import Plane

# Ti-6Al-4V, the usual alloy of printed pelvic implants.
TI6AL4V_G_PER_CM3 = 4.43
# Surface samples for the wall thickness (area-weighted; one manifold3d ray
# cast each, ~1 ms: 400 keep the fit stage near 0.4 s), and hits closer than
# this (mm) to the ray's start are the start's own neighbourhood, not the
# opposite wall.
THICKNESS_SAMPLES = 400
THICKNESS_SELF_HIT_MM = 0.05


def plane_frame(plane: Plane) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors spanning the plane (u, v), with u x v = normal."""
    n = np.asarray(plane.normal_lps)
    u = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    return u, np.cross(n, u)


def face_outline(mesh: trimesh.Trimesh, faces: np.ndarray, plane: Plane) -> manifold3d.CrossSection:
    """The region covered by ``faces`` (lying on ``plane``) as a 2D polygon set."""
    u, v = plane_frame(plane)
    tri = mesh.vertices[mesh.faces[faces]]
    contours = [np.stack([t @ u, t @ v], axis=1) for t in tri]
    # Triangles of either winding: NonZero fills each; the union merges them.
    return manifold3d.CrossSection(contours, manifold3d.FillRule.NonZero)


def outline_points(section: manifold3d.CrossSection, spacing_mm: float = 0.2) -> np.ndarray:
    """Points every ``spacing_mm`` along all outline edges (2D)."""
    points = []
    for polygon in section.to_polygons():
        p = np.asarray(polygon, dtype=np.float64)
        q = np.roll(p, -1, axis=0)
        for a, b in zip(p, q):
            n = max(int(np.ceil(np.linalg.norm(b - a) / spacing_mm)), 1)
            points.append(a + (b - a) * (np.arange(n)[:, None] / n))
    return np.concatenate(points) if points else np.zeros((0, 2))


def contact_fit(implant: trimesh.Trimesh, implant_faces: np.ndarray, host: trimesh.Trimesh,
                host_faces: np.ndarray, plane: Plane) -> dict:
    """Numbers for one contact face (see module docstring)."""
    a = face_outline(implant, implant_faces, plane)
    b = face_outline(host, host_faces, plane)
    overlap = (a ^ b).area()
    pa, pb = outline_points(a), outline_points(b)
    outline_distance = 0.0
    if len(pa) and len(pb):
        outline_distance = max(cKDTree(pb).query(pa)[0].max(), cKDTree(pa).query(pb)[0].max())
    contact_vertices = np.unique(implant.faces[implant_faces])
    gap = plane.signed_distance_mm(implant.vertices[contact_vertices])
    host_vertices = np.unique(host.faces[host_faces])
    host_offset = plane.signed_distance_mm(host.vertices[host_vertices])
    return {
        "host_cut_area_mm2": round(float(b.area()), 3),
        "implant_contact_area_mm2": round(float(a.area()), 3),
        "overlap_ratio": round(float(overlap / b.area()) if b.area() > 0 else 0.0, 6),
        "max_outline_distance_mm": round(float(outline_distance), 4),
        # From the host cut plane to the implant's contact face, along the
        # normal (the implant lies on the removed side): positive is a gap.
        "gap_mm": {"min": float(gap.min()) + 0.0, "mean": float(gap.mean()) + 0.0, "max": float(gap.max()) + 0.0},
        "flatness_mm": float(max(np.ptp(gap), np.ptp(host_offset))),
    }


def implant_fit(implant: trimesh.Trimesh, *, density_g_per_cm3: float = TI6AL4V_G_PER_CM3,
                seed: int = 0) -> dict:
    """Size, mass and minimum wall thickness of the implant."""
    volume = float(implant.volume)
    extents = implant.bounds[1] - implant.bounds[0]
    thickness = wall_thickness_mm(implant, seed=seed)
    return {
        "volume_mm3": round(volume, 3),
        "mass_g": round(volume / 1000.0 * density_g_per_cm3, 2),
        "density_g_per_cm3": density_g_per_cm3,
        "bounding_box_lps_mm": [round(float(e), 2) for e in extents],
        "min_wall_thickness_mm": round(float(np.min(thickness)), 3),
        "wall_thickness_p5_mm": round(float(np.percentile(thickness, 5)), 3),
        "wall_thickness_samples": int(thickness.size),
    }


def wall_thickness_mm(mesh: trimesh.Trimesh, *, samples: int = THICKNESS_SAMPLES, seed: int = 0) -> np.ndarray:
    """Thickness at sampled surface points: distance along the inward normal
    to where the ray leaves the solid. Samples are area-weighted."""
    solid = manifold3d.Manifold(manifold3d.Mesh64(
        vert_properties=np.ascontiguousarray(mesh.vertices, dtype=np.float64),
        tri_verts=np.ascontiguousarray(mesh.faces, dtype=np.uint64)))
    rng = np.random.default_rng(seed)
    area = mesh.area_faces
    faces = rng.choice(len(area), size=min(samples, len(area)), replace=False, p=area / area.sum())
    origins = mesh.triangles_center[faces]
    inward = -mesh.face_normals[faces]
    reach = float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))
    out = []
    for origin, direction in zip(origins, inward):
        hits = solid.ray_cast(tuple(origin), tuple(origin + reach * direction))
        distances = [h.distance * reach for h in hits if h.distance * reach > THICKNESS_SELF_HIT_MM]
        if distances:
            out.append(min(distances))
    return np.asarray(out)
