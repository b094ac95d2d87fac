"""Resection: cut the bone mesh with the planned planes, exactly, on the mesh.

The resected region is the intersection of the planes' half-spaces (each
normal points into the removed part). It is built as one convex cutter — a
box around the bone trimmed by every plane — and the bone is split by it in a
single manifold3d boolean: ``implant = bone ∩ cutter`` and
``host = bone − cutter``. Both results share the cutter's faces, so each
implant contact face and the matching host cut face are the same polygon,
lying exactly in its plane (manifold3d computes in double precision here).

Two options change only the implant. A clearance (cement or press-fit gap)
cuts the implant by the planes moved ``clearance_mm`` into the removed part,
so each contact face is the host's cut face's plane, shifted, still exactly
planar and parallel. Another implant source (a mirrored contralateral bone,
see :mod:`pipeline.design.implant`) is cut by the same shifted planes instead of the
patient's own bone.
"""

from __future__ import annotations

from dataclasses import dataclass

import manifold3d
import numpy as np
import trimesh

from ..config import Plane
from ..errors import MeshError, PlanError
from .meshes import face_shells

# A vertex within this distance of a plane lies on it (mm). Cut vertices come
# out of manifold3d within ~1e-12 mm; bone vertices are never this close by
# chance over a whole face.
ON_PLANE_MM = 1e-6
# The cutter box extends this far beyond the bone so no bone lies on its walls.
CUTTER_MARGIN_MM = 10.0
# Less than this on either side of the cut is no resection at all (planes
# that coincide, or a region thinner than float precision).
MIN_PART_MM3 = 1.0


@dataclass(frozen=True, eq=False)
class Resection:
    host: trimesh.Trimesh
    implant: trimesh.Trimesh
    # Per plane: indices of implant / host faces lying on it.
    implant_contact_faces: tuple[np.ndarray, ...]
    host_cut_faces: tuple[np.ndarray, ...]
    # What the shell sorting did (see sort_shells), for the report.
    shells: dict
    # The planes the implant was cut by (the host's planes shifted by the clearance).
    implant_planes: tuple[Plane, ...] = ()


def to_manifold(mesh: trimesh.Trimesh, what: str) -> manifold3d.Manifold:
    m = manifold3d.Manifold(manifold3d.Mesh64(
        vert_properties=np.ascontiguousarray(mesh.vertices, dtype=np.float64),
        tri_verts=np.ascontiguousarray(mesh.faces, dtype=np.uint64)))
    if m.status() != manifold3d.Error.NoError:
        raise MeshError(f"{what} mesh is not an oriented 2-manifold ({m.status().name})")
    return m


def from_manifold(m: manifold3d.Manifold) -> trimesh.Trimesh:
    out = m.to_mesh64()
    verts = np.asarray(out.vert_properties, dtype=np.float64)[:, :3]
    return trimesh.Trimesh(vertices=verts, faces=np.asarray(out.tri_verts, dtype=np.int64), process=False)


def cutter_for(planes: tuple[Plane, ...], bounds_lps_mm: np.ndarray) -> manifold3d.Manifold:
    lo = bounds_lps_mm[0] - CUTTER_MARGIN_MM
    size = bounds_lps_mm[1] - bounds_lps_mm[0] + 2 * CUTTER_MARGIN_MM
    cutter = manifold3d.Manifold.cube(tuple(size)).translate(tuple(lo))
    for plane in planes:
        cutter = cutter.trim_by_plane(plane.normal_lps, plane.offset_mm)
    return cutter


def check_planes_cross(planes: tuple[Plane, ...], bone: trimesh.Trimesh) -> None:
    for i, plane in enumerate(planes):
        d = plane.signed_distance_mm(bone.vertices)
        if d.min() >= 0 or d.max() <= 0:
            side = "removed" if d.min() >= 0 else "kept"
            raise PlanError(f"resection.planes[{i}] ({plane.name}) misses the bone: all of it lies on "
                            f"the {side} side (closest vertex {np.abs(d).min():.1f} mm away)")


def check_plane_structures(planes: tuple[Plane, ...], bones: dict[str, trimesh.Trimesh]) -> None:
    """Each plane cuts the bones it names, and the resected region takes part
    of each such bone: not nothing (a misplaced plan). It cannot take all of
    it: a plane that crosses a bone keeps the part on its kept side."""
    for i, plane in enumerate(planes):
        for name in plane.structures:
            bone = bones.get(name)
            if bone is None:
                raise PlanError(f"resection.planes[{i}] ({plane.name}) is meant to cut {name}, "
                                "which was not found in the scan")
            d = plane.signed_distance_mm(bone.vertices)
            if d.min() >= 0 or d.max() <= 0:
                raise PlanError(f"resection.planes[{i}] ({plane.name}) does not cut {name}: all of it lies "
                                f"on the {'removed' if d.min() >= 0 else 'kept'} side")
    for name in dict.fromkeys(n for p in planes for n in p.structures):
        vertices = bones[name].vertices
        inside = np.all([p.signed_distance_mm(vertices) > 0 for p in planes], axis=0)
        which = [f"resection.planes[{i}] ({p.name})" for i, p in enumerate(planes) if name in p.structures]
        if not inside.any():
            raise PlanError(f"{', '.join(which)}: the resection removes nothing of {name}")


def resect(bone: trimesh.Trimesh, planes: tuple[Plane, ...], *, min_fragment_mm3: float = 0.0,
           clearance_mm: float = 0.0, implant_from: trimesh.Trimesh | None = None) -> Resection:
    """Split ``bone`` into host and implant by the region behind all ``planes``.

    The implant is what fills the gap between the cut faces: pieces of bone
    inside the region that no plane touches (a rib tip, a separate bone) are
    not resected and stay with the host; pieces smaller than
    ``min_fragment_mm3`` that a cut clips off a bump of the surface are
    dropped and counted. With ``clearance_mm`` the implant is cut by the
    planes shifted that far into the removed part; with ``implant_from`` it is
    cut from that solid instead of ``bone``.
    """
    if not planes:
        raise ValueError("resect needs at least one plane")
    check_planes_cross(planes, bone)
    implant_m, host_m = to_manifold(bone, "bone").split(cutter_for(planes, bone.bounds))
    if implant_m.is_empty() or implant_m.volume() < MIN_PART_MM3:
        raise PlanError("the resection region (the side every resection.planes normal points to) "
                        "contains no bone: empty resection")
    if host_m.is_empty() or host_m.volume() < MIN_PART_MM3:
        raise PlanError("the resection removes the whole bone: nothing is left as host")
    implant, host = from_manifold(implant_m), from_manifold(host_m)
    implant, host, shells = _sorted_implant(implant, planes, min_fragment_mm3, host)
    implant_planes = tuple(p.shifted(clearance_mm) for p in planes)
    if clearance_mm != 0.0 or implant_from is not None:
        source = implant if implant_from is None else implant_from
        if implant_from is not None:
            check_planes_cross(implant_planes, implant_from)
        cut = to_manifold(source, "implant source") ^ cutter_for(implant_planes, source.bounds)
        if cut.is_empty() or cut.volume() < MIN_PART_MM3:
            raise PlanError("the implant source has no bone inside the resection region")
        implant, _, implant_shells = _sorted_implant(from_manifold(cut), implant_planes, min_fragment_mm3, None)
        shells["implant_source"] = implant_shells
    return Resection(host=host, implant=implant,
                     implant_contact_faces=tuple(faces_on_plane(implant, p, facing=-1) for p in implant_planes),
                     host_cut_faces=tuple(faces_on_plane(host, p, facing=+1) for p in planes),
                     shells=shells, implant_planes=implant_planes)


def _sorted_implant(implant: trimesh.Trimesh, planes: tuple[Plane, ...], min_fragment_mm3: float,
                    host: trimesh.Trimesh | None):
    implant_faces = tuple(faces_on_plane(implant, p, facing=-1) for p in planes)
    for i, (plane, faces) in enumerate(zip(planes, implant_faces)):
        if faces.size == 0:
            raise PlanError(f"resection.planes[{i}] ({plane.name}) does not touch the resected "
                            "region: the other planes already remove everything it would")
    implant, host, shells = sort_shells(implant, host, np.concatenate(implant_faces), min_fragment_mm3)
    if len(implant.faces) == 0:
        raise PlanError("the resection region holds only fragments smaller than "
                        f"resection.min_fragment_mm3 = {min_fragment_mm3:g} mm3: empty resection")
    return implant, host, shells


def sort_shells(implant: trimesh.Trimesh, host: trimesh.Trimesh | None, contact_faces: np.ndarray,
                min_fragment_mm3: float) -> tuple[trimesh.Trimesh, trimesh.Trimesh | None, dict]:
    """Keep the implant shells that carry a contact face and are not tiny;
    give untouched shells back to the host (they are whole pieces of bone,
    disjoint from it; without a host they are dropped); drop the tiny clipped
    fragments."""
    labels, volumes = face_shells(implant)
    touched = np.zeros(volumes.size, dtype=bool)
    touched[labels[contact_faces]] = True
    keep = touched & (volumes >= min_fragment_mm3)
    back = ~touched
    dropped = touched & ~keep
    if back.any() and host is not None:
        host = trimesh.util.concatenate([host, _shells(implant, labels, back)])
    untouched = "untouched_shells_left_in_host" if host is not None else "untouched_shells_dropped"
    shells = {
        "implant_shells": int(keep.sum()),
        untouched: int(back.sum()),
        "untouched_volume_mm3": round(float(volumes[back].sum()), 3),
        "dropped_fragments": int(dropped.sum()),
        "dropped_volume_mm3": round(float(volumes[dropped].sum()), 3),
    }
    return _shells(implant, labels, keep), host, shells


def _shells(mesh: trimesh.Trimesh, labels: np.ndarray, which: np.ndarray) -> trimesh.Trimesh:
    faces = mesh.faces[which[labels]]
    used, inverse = np.unique(faces, return_inverse=True)
    return trimesh.Trimesh(vertices=mesh.vertices[used], faces=inverse.reshape(-1, 3), process=False)


def faces_on_plane(mesh: trimesh.Trimesh, plane: Plane, *, facing: int) -> np.ndarray:
    """Faces whose three vertices lie on ``plane`` and whose outward normal is
    ``facing`` × the plane normal (−1: implant contact, +1: host cut face)."""
    d = plane.signed_distance_mm(mesh.vertices)
    candidates = np.flatnonzero(np.abs(d[mesh.faces]).max(axis=1) <= ON_PLANE_MM)
    tri = mesh.vertices[mesh.faces[candidates]]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return candidates[normals @ np.asarray(plane.normal_lps) * facing > 0]
