"""Fit report: how the implant meets the host, in numbers an engineer checks.

Per contact face: host cut area, implant contact area, how the two outlines
agree, the gap between the faces (min, mean, max), flatness, and the shape of
the faces' triangles. For the implant: volume, mass for a given density,
bounding box dimensions, and minimum wall thickness.

The outlines are compared in two ways that answer different questions, both
from the faces' boundary loops (not from their triangles, whose union would
leave specks that are outline without area): the overlap ratio is an area
(the area both faces cover, over the host cut area: how much of the cut bone
the implant bears on), the outline distance a length (the largest distance
from a point of either outline to the other, the Hausdorff distance: how far
an edge of the implant overhangs or falls short of the bone's). A small
overhang along a long edge barely moves the first and shows in the second;
identical faces give 1 and 0. A small piece of one face with nothing of the
other against it (the host's cut face where a fragment too small to keep was
dropped from the implant) shows in the outline distance at full length and
in the ratio by its area only; the report gives that area beside the ratio.
Areas come from manifold3d's exact 2D booleans
(CrossSection). Wall thickness is sampled: from surface points, along the
inward normal, to where the ray leaves the solid (point-cloud-utils' ray
casts, Embree inside).
"""

from __future__ import annotations

import manifold3d
import numpy as np
import point_cloud_utils as pcu
import trimesh
from scipy.spatial import cKDTree

from ..config import Plane
from ..geometry.caps import min_angles_deg, outline_loops
from ..geometry.meshes import doubled_areas, mesh_facts

# Ti-6Al-4V, the usual alloy of printed pelvic implants.
TI6AL4V_G_PER_CM3 = 4.43
# The wall thickness's rays: hits closer than this (mm) to the ray's start are
# the start's own neighbourhood, not the opposite wall.
THICKNESS_SELF_HIT_MM = 0.05
# Outline points for the outline distance, this far apart along each edge
# (mm): the distance is exact at the points, and at most half this short of
# the true largest distance between them.
OUTLINE_SPACING_MM = 0.2
# The cut faces' triangles: share with a smallest angle of at least this.
GOOD_ANGLE_DEG = 20.0


def face_outline(mesh: trimesh.Trimesh, faces: np.ndarray, plane: Plane) -> list[np.ndarray]:
    """The boundary loops of ``faces`` (lying on ``plane``), as 2D polygons in the plane's axes."""
    u, v = plane.in_plane_axes()
    return [np.stack([mesh.vertices[loop] @ u, mesh.vertices[loop] @ v], axis=1)
            for loop in outline_loops(mesh.faces[faces])]


def outline_points(loops: list[np.ndarray], spacing_mm: float = OUTLINE_SPACING_MM) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``spacing_mm`` along all loop edges, starting at each
    corner (2D), and the index of the edge each lies on (edges numbered
    loop by loop)."""
    points, owner, first = [], [], 0
    for p in loops:
        q = np.roll(p, -1, axis=0)
        for i, (a, b) in enumerate(zip(p, q)):
            n = max(int(np.ceil(np.linalg.norm(b - a) / spacing_mm)), 1)
            points.append(a + (b - a) * (np.arange(n)[:, None] / n))
            owner.append(np.full(n, first + i))
        first += len(p)
    if not points:
        return np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    return np.concatenate(points), np.concatenate(owner)


def outline_distance_mm(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest distance from a point of either outline to the other (Hausdorff)."""
    return max(_farthest(a, b), _farthest(b, a))


def _farthest(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest distance from outline ``a``'s points to outline ``b``'s edges."""
    pa, _ = outline_points(a)
    pb, owner = outline_points(b)
    if not len(pa) or not len(pb):
        return 0.0
    starts = np.concatenate(b)
    ends = np.concatenate([np.roll(p, -1, axis=0) for p in b])
    # The nearest edge carries one of the nearest points sampled along b.
    _, near = cKDTree(pb).query(pa, k=min(8, len(pb)))
    edges = owner[near.reshape(len(pa), -1)]
    s, e = starts[edges], ends[edges]
    d = e - s
    t = np.clip(np.einsum("pkj,pkj->pk", pa[:, None] - s, d) / np.maximum(np.einsum("pkj,pkj->pk", d, d), 1e-30), 0, 1)
    distance = np.linalg.norm(pa[:, None] - (s + t[..., None] * d), axis=2).min(axis=1)
    return float(distance.max())


def triangle_quality(mesh: trimesh.Trimesh, faces: np.ndarray) -> dict:
    """How well shaped a cut face's triangles are (smallest angle of each)."""
    angles = min_angles_deg(mesh.vertices, mesh.faces[faces])
    doubled_area = doubled_areas(np.asarray(mesh.vertices)[mesh.faces[faces]])
    if angles.size == 0:
        return {"triangles": 0}
    return {"triangles": int(angles.size),
            f"share_min_angle_at_least_{GOOD_ANGLE_DEG:g}_deg": round(float(np.mean(angles >= GOOD_ANGLE_DEG)), 4),
            "min_angle_deg": {"min": round(float(angles.min()), 2), "p5": round(float(np.percentile(angles, 5)), 2),
                              "median": round(float(np.median(angles)), 2)},
            "zero_area_triangles": int(np.count_nonzero(doubled_area == 0))}


def contact_fit(implant: trimesh.Trimesh, implant_faces: np.ndarray, host: trimesh.Trimesh,
                host_faces: np.ndarray, plane: Plane) -> dict:
    """Numbers for one contact face (see module docstring)."""
    a_loops = face_outline(implant, implant_faces, plane)
    b_loops = face_outline(host, host_faces, plane)
    a = manifold3d.CrossSection(a_loops, manifold3d.FillRule.EvenOdd)
    b = manifold3d.CrossSection(b_loops, manifold3d.FillRule.EvenOdd)
    overlap = (a ^ b).area()
    contact_vertices = np.unique(implant.faces[implant_faces])
    gap = plane.signed_distance_mm(implant.vertices[contact_vertices])
    host_vertices = np.unique(host.faces[host_faces])
    host_offset = plane.signed_distance_mm(host.vertices[host_vertices])
    return {
        "host_cut_area_mm2": round(float(b.area()), 3),
        "implant_contact_area_mm2": round(float(a.area()), 3),
        "overlap_ratio": round(float(overlap / b.area()) if b.area() > 0 else 0.0, 6),
        # The two differences behind the ratio: host cut face the implant does
        # not cover (e.g. where a fragment too small to keep was dropped), and
        # implant contact face beyond the host's.
        "host_area_not_covered_mm2": round(max(float(b.area() - overlap), 0.0), 3),
        "implant_area_overhanging_mm2": round(max(float(a.area() - overlap), 0.0), 3),
        "max_outline_distance_mm": round(outline_distance_mm(a_loops, b_loops), 4),
        # From the host cut plane to the implant's contact face, along the
        # normal (the implant lies on the removed side): positive is a gap.
        "gap_mm": {"min": float(gap.min()) + 0.0, "mean": float(gap.mean()) + 0.0, "max": float(gap.max()) + 0.0},
        "flatness_mm": float(max(np.ptp(gap), np.ptp(host_offset))),
        "triangles": {"host": triangle_quality(host, host_faces), "implant": triangle_quality(implant, implant_faces)},
    }


def implant_fit(implant: trimesh.Trimesh, *, density_g_per_cm3: float = TI6AL4V_G_PER_CM3) -> dict:
    """Size, mass and wall thickness of the implant: the thinnest wall
    measured and the thickness under which 5 % of the surface lies (each
    triangle's thickness weighted by its area, see :func:`wall_thickness_mm`)."""
    volume = float(mesh_facts(implant)["shell_volumes_mm3"].sum())
    extents = implant.bounds[1] - implant.bounds[0]
    return {
        "volume_mm3": round(volume, 3),
        "mass_g": round(volume / 1000.0 * density_g_per_cm3, 2),
        "density_g_per_cm3": density_g_per_cm3,
        "bounding_box_lps_mm": [round(float(e), 2) for e in extents],
        **wall_figures(implant),
    }


def wall_figures(mesh: trimesh.Trimesh, thin_mm: float | None = None) -> dict:
    """The thinnest wall of ``mesh``, the thickness under which 5 % of its
    surface lies (each triangle weighted by its area, see
    :func:`wall_thickness_mm`), how many triangles were measured and, with
    ``thin_mm``, the area of surface over walls thinner than that."""
    thickness, area = wall_thickness_mm(mesh)
    order = np.argsort(thickness, kind="stable")
    share = np.cumsum(area[order]) / area.sum()
    out = {"min_wall_thickness_mm": round(float(thickness[order[0]]), 3),
           "wall_thickness_p5_mm": round(float(thickness[order[np.searchsorted(share, 0.05)]]), 3),
           "wall_thickness_samples": int(thickness.size)}
    if thin_mm is not None:
        out[f"area_over_walls_under_{thin_mm:g}_mm_mm2"] = round(float(area[thickness < thin_mm].sum()), 1)
    return out


def wall_thickness_mm(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """(thickness, area) of every triangle whose ray leaves the solid: the
    distance from its centre along the inward normal to where the ray
    leaves, and the triangle's area, its weight in any share of the surface.

    Every triangle, not a sample of them: 400 area-weighted samples put
    Pelvic-Ref-003's 5th percentile anywhere from 1.90 to 2.15 mm over six
    seeds (the report warns under 2 mm) and the sample's from 3.07 to 4.86;
    every triangle gives 2.01 and 4.14, in 0.07 and 0.03 s. The rays are
    cast together in single precision (Embree), about the mesh's centre so
    that coordinates stay small: within 4e-5 mm of manifold3d's
    double-precision ray casts on Pelvic-Ref-003's and the sample's
    implants, ten times faster."""
    centre = np.asarray(mesh.bounds, dtype=np.float64).mean(axis=0)
    origins = np.asarray(mesh.triangles_center - centre, dtype=np.float32)
    inward = np.asarray(-mesh.face_normals, dtype=np.float32)
    vertices = np.asarray(mesh.vertices - centre, dtype=np.float32)
    hit, _, distance = pcu.ray_mesh_intersection(vertices, np.asarray(mesh.faces, dtype=np.int32), origins, inward,
                                                 ray_near=THICKNESS_SELF_HIT_MM)
    left = np.asarray(hit) >= 0
    return np.asarray(distance, dtype=np.float64)[left], np.asarray(mesh.area_faces, dtype=np.float64)[left]
