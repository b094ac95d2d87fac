"""Resection: cut the bone mesh with the planned planes, exactly, on the mesh.

The resected region is the intersection of the planes' half-spaces (each
normal points into the removed part). It is built as one convex cutter — a
box around the bone trimmed by every plane — and the bone is split by it in a
single manifold3d boolean: ``implant = bone ∩ cutter`` and
``host = bone − cutter``. Both results share the cutter's faces, so each
implant contact face and the matching host cut face are the same polygon,
lying exactly in its plane (manifold3d computes in double precision here).
Which faces are cut faces is known from the boolean itself (each output
triangle carries the id of the solid it came from), not guessed from
geometry: bone faces that happen to lie in a plane (marching-cubes faces on a
plane through a slice) are bone surface, not contact.

Before the cut, bone vertices within a micrometre of a plane are put exactly
on it or moved clearly off it (:mod:`pipeline.geometry.near_plane`), so the
cut makes no vertices closer than an STL's float32 coordinates can tell
apart, no film of zero thickness and no solids touching at a point. After
it, each cut face is triangulated afresh (:mod:`pipeline.geometry.caps`);
between the two, the removed part is bridged across the joints it spans
(:mod:`pipeline.geometry.bridge`), short of every cut face.

Two options change only the implant. A clearance (cement or press-fit gap)
cuts the implant by the planes moved ``clearance_mm`` into the removed part,
so each contact face is the host's cut face's plane, shifted, still exactly
planar and parallel. Another implant source (a mirrored contralateral bone,
see :mod:`pipeline.design.implant`) is cut by the same shifted planes instead of the
patient's own bone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import manifold3d
import numpy as np
import trimesh
from scipy.optimize import linprog
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import HalfspaceIntersection, cKDTree

from ..config import Plane
from ..errors import PlanError
from .bridge import BRIDGE_INSET_MM, GRID_SHIFTS, Joints, clean_seams
from .caps import NO_CAP, Side, retriangulate_caps
from .meshes import concatenate_solids, face_shells, to_manifold
from .near_plane import settle_near_planes

# A vertex within this distance of a plane lies on it (mm). Cut vertices come
# out of manifold3d within ~1e-12 mm.
ON_PLANE_MM = 1e-6
# The cutter box extends this far beyond the bone so no bone lies on its walls.
CUTTER_MARGIN_MM = 10.0
# The cutter's corners closer than this (mm) are one corner where four or
# more faces meet (qhull places each on its own, ~1e-7 mm apart). Distinct
# corners come closer than a micrometre: a plane through the middle of a
# box edge, 2.8e-6 rad off it, leaves the box 1.6e-4 mm from the edge's end
# (at 1e-3 mm, those corners were taken for one, the cutter lost a third of
# its volume and a quarter of the removed half of a sphere stayed with the host).
SAME_CORNER_MM = 1e-5
# Two planes facing the same way closer than this (mm) everywhere across the
# bone are the same cut (under a CT voxel apart: one saw cut): the face
# between them would be a film, or, where they cross inside the bone, a
# crease of 179.9 degrees or flatter. (At 0.01 mm, two planes through one
# line of the phantom's hip bone 1e-4 rad apart made caps the triangulation
# refused, needles, or lost 2 mm3; 3e-4 to 7e-4 rad apart up to 0.6 mm3.)
SAME_PLANE_MM = 0.5
# A resected region whose largest inscribed ball is smaller than this (mm) is
# empty: a slab this thin holds no bone worth an implant.
# (At 1e-3 mm, two planes facing each other 6e-5 rad apart through one line
# left a wedge 2.4e-3 mm thick at the box's end, and the host came out with
# two edges used once.)
MIN_CUTTER_RADIUS_MM = 0.005
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
    # Per plane: bone vertices put on it and moved off it before the cut.
    settled: tuple[dict, ...] = ()


class Piece(NamedTuple):
    """A cut solid and, per face, the index of the plane it lies on (or NO_CAP)."""
    mesh: trimesh.Trimesh
    cap_of_face: np.ndarray

    def faces_on(self, plane_index: int) -> np.ndarray:
        return np.flatnonzero(self.cap_of_face == plane_index)


def cutter_for(planes: tuple[Plane, ...], bounds_lps_mm: np.ndarray) -> manifold3d.Manifold:
    """The resected region as a convex solid: a box ``CUTTER_MARGIN_MM`` around
    ``bounds`` cut down to the side every plane's normal points to (empty if
    nothing is left). Its corners are solved from the planes and box faces
    meeting there, in double precision, so each cut face lies in its plane to
    ~1e-14 mm. (manifold3d's own trim_by_plane turns the normal into angles:
    a plane within ~1e-7 rad of an axis comes out up to 1e-6 mm off.)"""
    lo = np.asarray(bounds_lps_mm[0], dtype=float) - CUTTER_MARGIN_MM
    hi = np.asarray(bounds_lps_mm[1], dtype=float) + CUTTER_MARGIN_MM
    # Half-spaces a . x + b <= 0 (unit normals): the box, then the removed side of each plane.
    a = np.vstack([-np.eye(3), np.eye(3), [-np.asarray(p.normal_lps) for p in planes]])
    b = np.concatenate([lo, -hi, [p.offset_mm for p in planes]])
    # The centre of the largest ball inside them (Chebyshev centre), if any.
    lp = linprog(c=[0, 0, 0, -1], A_ub=np.hstack([a, np.ones((len(a), 1))]), b_ub=-b,
                 bounds=[(None, None)] * 3 + [(0, None)], method="highs")
    if lp.status != 0 or lp.x[3] < MIN_CUTTER_RADIUS_MM:
        return manifold3d.Manifold()
    return manifold3d.Manifold.hull_points(_corners(a, b, lp.x[:3]))


def _corners(a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Corners of the solid {x: a . x + b <= 0} (box faces first, six of them).

    qhull finds which faces meet at each corner, but its coordinates are only
    good to ~1e-7 mm, and where four or more faces meet it places several
    corners that far apart (they are grouped here as one). Each corner is
    solved from three of its faces, well apart, the cut planes first: where a
    plane meets a box face at a box edge, the cut face keeps its plane and the
    box, far from the bone, gives way."""
    found = HalfspaceIntersection(np.hstack([a, b[:, None]]), inside)
    n = len(found.intersections)
    pairs = cKDTree(found.intersections).query_pairs(SAME_CORNER_MM, output_type="ndarray").reshape(-1, 2)
    _, group = connected_components(sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                                                      shape=(n, n)), directed=False)
    corners = []
    for g in range(group.max() + 1):
        members = np.flatnonzero(group == g)
        faces = sorted({i for k in members for i in found.dual_facets[k]}, key=lambda i: i < 6)
        chosen: list[int] = []
        for i in faces:
            if np.linalg.svd(a[chosen + [i]], compute_uv=False).min() > 1e-6:
                chosen.append(i)
            if len(chosen) == 3:
                break
        # Faces all but along one line: a corner on an edge, where qhull's is as good.
        corners.append(np.linalg.solve(a[chosen], -b[chosen]) if len(chosen) == 3
                       else found.intersections[members[0]])
    return np.ascontiguousarray(corners, dtype=np.float64)


def check_distinct_planes(planes: tuple[Plane, ...], bone: trimesh.Trimesh) -> None:
    """Two planes facing the same way that lie within ``SAME_PLANE_MM`` of each
    other over the whole bone are one cut typed twice: between them they would
    leave a cut face too thin to exist in an STL. Two planes facing each
    other that leave less than that between them over the whole bone resect
    a film (found by hypothesis: 1e-4 rad apart through one line of the
    phantom's hip bone, a wedge up to 0.015 mm thick, whose caps failed to
    triangulate or lost 2 mm3)."""
    d = np.stack([p.signed_distance_mm(bone.vertices) for p in planes])
    for i in range(len(planes)):
        for j in range(i + 1, len(planes)):
            pair = f"resection.planes[{i}] ({planes[i].name}) and resection.planes[{j}] ({planes[j].name})"
            if np.dot(planes[i].normal_lps, planes[j].normal_lps) > 0:
                if np.abs(d[i] - d[j]).max() < SAME_PLANE_MM:
                    raise PlanError(f"{pair} lie within {SAME_PLANE_MM:g} mm of each other across the bone: "
                                    "they are one cut; remove one")
            elif 0.0 < (d[i] + d[j]).max() < SAME_PLANE_MM:   # none at all: an empty resection, told below
                raise PlanError(f"{pair} face each other and leave less than {SAME_PLANE_MM:g} mm between them "
                                "across the bone: nothing to resect")


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


def resect(bone: trimesh.Trimesh | dict[str, trimesh.Trimesh], planes: tuple[Plane, ...], *,
           min_fragment_mm3: float = 0.0, clearance_mm: float = 0.0, implant_from: trimesh.Trimesh | None = None,
           joint_gap_mm: float | None = None) -> Resection:
    """Split ``bone`` (one mesh, or the bones to cut by name) into host and
    implant by the region behind all ``planes``.

    The implant is what fills the gap between the cut faces: pieces of bone
    inside the region that no plane touches (a rib tip, a separate bone) are
    not resected and stay with the host; pieces smaller than
    ``min_fragment_mm3`` that a cut clips off a bump of the surface are
    dropped and counted. With ``clearance_mm`` the implant is cut by the
    planes shifted that far into the removed part; with ``implant_from`` it is
    cut from that solid instead of ``bone``. With the bones by name and
    ``joint_gap_mm``, the implant of the bones' own is one piece across the
    joints it spans: its part of each bone is bridged to the others inside
    the region as the bone is cut (:mod:`pipeline.geometry.bridge`), and the
    report's ``shells`` say how.
    """
    if not planes:
        raise ValueError("resect needs at least one plane")
    joints = None
    if isinstance(bone, dict):
        bones, bone = bone, concatenate_solids(list(bone.values()))
        if joint_gap_mm is not None and implant_from is None:
            joints = Joints(bones, bone, planes, gap_mm=joint_gap_mm, inset_mm=clearance_mm + BRIDGE_INSET_MM)
    check_planes_cross(planes, bone)
    check_distinct_planes(planes, bone)
    implant_planes = tuple(p.shifted(clearance_mm) for p in planes)
    own_implant = clearance_mm == 0.0 and implant_from is None
    implant, host, settled, bridged = cut(bone, planes, implant_caps=own_implant, joints=joints)
    if host is None:
        raise PlanError("the resection removes the whole bone: nothing is left as host")
    implant, host, shells = _sorted_implant(implant, planes, min_fragment_mm3, host)
    shells.update(bridged)
    if not own_implant:
        source = implant.mesh if implant_from is None else implant_from
        if implant_from is not None:
            check_planes_cross(implant_planes, implant_from)
        implant, _, _, _ = cut(source, implant_planes, host=False)
        implant, _, implant_shells = _sorted_implant(implant, implant_planes, min_fragment_mm3, None)
        shells["implant_source"] = implant_shells
    return Resection(host=host.mesh, implant=implant.mesh,
                     implant_contact_faces=tuple(implant.faces_on(i) for i in range(len(planes))),
                     host_cut_faces=tuple(host.faces_on(i) for i in range(len(planes))),
                     shells=shells, implant_planes=implant_planes, settled=tuple(settled))


def cut(solid: trimesh.Trimesh, planes: tuple[Plane, ...], *, host: bool = True, implant_caps: bool = True,
        joints: Joints | None = None) -> tuple[Piece, Piece | None, list[dict], dict]:
    """(inside, outside) of the region behind all ``planes``, cut faces
    triangulated afresh (inside's only when ``implant_caps``), per plane
    what settling the vertices near it did, and what bridging ``joints``
    inside did (see :func:`_bridged`); outside is None when nothing is left
    of it (or not asked for, ``host=False``)."""
    settled_solid, settled = settle_near_planes(solid, planes)
    body = to_manifold(settled_solid, "bone").as_original()
    cutter = cutter_for(planes, solid.bounds).as_original()
    inside, outside = body.split(cutter) if host else (body ^ cutter, None)
    if inside.is_empty() or inside.volume() < MIN_PART_MM3:
        what = "the resection region (the side every resection.planes normal points to)" if host \
            else "the implant source's part of the resection region"
        raise PlanError(f"{what} contains no bone: empty resection")
    parts = [None if part is None or part.is_empty() or part.volume() < MIN_PART_MM3
             else from_manifold(part, planes, cutter.original_id()) for part in (inside, outside)]
    bridged: dict = {}
    if joints is not None and parts[0] is not None:
        parts[0], bridged = _bridged(inside, parts[0], joints, planes, cutter.original_id())
    if parts[0] is not None and parts[1] is not None:
        _share_cut_corners(parts[0], parts[1])
    sides = {i: Side(part.mesh.vertices, part.mesh.faces, part.cap_of_face, facing)
             for i, (part, facing, fresh) in enumerate(zip(parts, (-1, +1), (implant_caps, True)))
             if part is not None and fresh}
    retriangulate_caps(list(sides.values()), planes)
    for i, side in sides.items():
        parts[i] = Piece(trimesh.Trimesh(vertices=side.vertices, faces=side.faces, process=False), side.cap_of_face)
    return parts[0], parts[1], settled, bridged


def _bridged(inside: manifold3d.Manifold, piece: Piece, joints: Joints, planes: tuple[Plane, ...],
             cutter_id: int) -> tuple[Piece, dict]:
    """(the removed part ``inside`` (``piece`` as a mesh) with the bridges
    across ``joints`` added, the figures for the report: joints bridged,
    volume added). The bridges lie inside the region, short of every cut
    face: the host and the cut faces stay the cut's own. Where their seams
    leave defects an STL reader would see, the grid is moved and the
    bridges made again; when every grid leaves some, ``piece`` stays
    unbridged (and the run says the implant is in pieces)."""
    made: list = []
    for shift in GRID_SHIFTS:
        made = joints.bridges(shift)
        if not made:
            return piece, {"joints_bridged": 0, "bridge_volume_mm3": 0.0}
        joined = from_manifold(manifold3d.Manifold.batch_boolean([inside, *made], manifold3d.OpType.Add),
                               planes, cutter_id)
        clean = clean_seams(joined.mesh, joined.cap_of_face != NO_CAP)
        if clean is not None:
            mesh, source = clean
            added = float(face_shells(mesh)[1].sum()) - inside.volume()
            return Piece(mesh, joined.cap_of_face[source]), {"joints_bridged": len(made),
                                                             "bridge_volume_mm3": round(added, 1)}
    return piece, {"joints_bridged": 0, "bridge_volume_mm3": 0.0, "joints_not_bridged": len(made)}


def _share_cut_corners(inside: Piece, outside: Piece) -> None:
    """Give the corners of ``inside``'s cut faces the coordinates of the same
    corners of ``outside``'s. manifold3d writes each result on its own and
    their common corners can differ in the last bit; the cut faces are then
    triangulated from the very same outline on both sides."""
    a = np.unique(inside.mesh.faces[inside.cap_of_face != NO_CAP])
    b = np.unique(outside.mesh.faces[outside.cap_of_face != NO_CAP])
    if a.size == 0 or b.size == 0:
        return
    distance, index = cKDTree(outside.mesh.vertices[b]).query(inside.mesh.vertices[a],
                                                              distance_upper_bound=ON_PLANE_MM)
    same = np.isfinite(distance)
    vertices = np.array(inside.mesh.vertices)
    vertices[a[same]] = outside.mesh.vertices[b[index[same]]]
    inside.mesh.vertices = vertices


def from_manifold(m: manifold3d.Manifold, planes: tuple[Plane, ...], cutter_id: int) -> Piece:
    """The mesh of a cut solid and, per face, the plane its cut face lies on:
    faces that came from the cutter are cut faces; each lies in one plane."""
    out = m.to_mesh64()
    verts = np.asarray(out.vert_properties, dtype=np.float64)[:, :3]
    faces = np.asarray(out.tri_verts, dtype=np.int64)
    runs = np.asarray(out.run_index, dtype=np.int64) // 3
    from_cutter = np.repeat(np.asarray(out.run_original_id) == cutter_id, np.diff(runs))
    cap_of_face = np.full(len(faces), NO_CAP, dtype=np.int64)
    candidates = np.flatnonzero(from_cutter)
    if candidates.size:
        off = np.stack([np.abs(p.signed_distance_mm(verts[faces[candidates]].reshape(-1, 3))).reshape(-1, 3).max(axis=1)
                        for p in planes])
        cap_of_face[candidates] = np.argmin(off, axis=0)
    return Piece(trimesh.Trimesh(vertices=verts, faces=faces, process=False), cap_of_face)


def _sorted_implant(implant: Piece, planes: tuple[Plane, ...], min_fragment_mm3: float, host: Piece | None):
    for i, plane in enumerate(planes):
        if implant.faces_on(i).size == 0:
            raise PlanError(f"resection.planes[{i}] ({plane.name}) does not touch the resected "
                            "region: the other planes already remove everything it would")
    implant, host, shells = sort_shells(implant, host, min_fragment_mm3)
    if len(implant.mesh.faces) == 0:
        raise PlanError("the resection region holds only fragments smaller than "
                        f"resection.min_fragment_mm3 = {min_fragment_mm3:g} mm3: empty resection")
    return implant, host, shells


def sort_shells(implant: Piece, host: Piece | None, min_fragment_mm3: float) -> tuple[Piece, Piece | None, dict]:
    """Keep the implant shells that carry a contact face and are not tiny;
    give untouched shells back to the host (they are whole pieces of bone,
    disjoint from it; without a host they are dropped); drop the tiny clipped
    fragments."""
    labels, volumes = face_shells(implant.mesh)
    touched = np.zeros(volumes.size, dtype=bool)
    touched[labels[implant.cap_of_face != NO_CAP]] = True
    keep = touched & (volumes >= min_fragment_mm3)
    back = ~touched
    dropped = touched & ~keep
    if back.any() and host is not None:
        returned = _shells(implant, labels, back)
        host = Piece(trimesh.util.concatenate([host.mesh, returned.mesh]),
                     np.concatenate([host.cap_of_face, returned.cap_of_face]))
    untouched = "untouched_shells_left_in_host" if host is not None else "untouched_shells_dropped"
    shells = {
        "implant_shells": int(keep.sum()),
        untouched: int(back.sum()),
        "untouched_volume_mm3": round(float(volumes[back].sum()), 3),
        "dropped_fragments": int(dropped.sum()),
        "dropped_volume_mm3": round(float(volumes[dropped].sum()), 3),
    }
    return _shells(implant, labels, keep), host, shells


def _shells(piece: Piece, labels: np.ndarray, which: np.ndarray) -> Piece:
    chosen = which[labels]
    used, inverse = np.unique(piece.mesh.faces[chosen], return_inverse=True)
    return Piece(trimesh.Trimesh(vertices=piece.mesh.vertices[used], faces=inverse.reshape(-1, 3), process=False),
                 piece.cap_of_face[chosen])
