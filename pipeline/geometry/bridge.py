"""Joints bridged inside the resected region: one implant where the cuts cross a joint.

The implant is the removed bone. Where the resection crosses a joint (the
seed case's sacroiliac joint) that is a piece of each bone with the joint
space between them: two solids nothing holds together, two parts if printed.
Before the cut, every two bones that come within a joint's width of each
other inside the resected region (:func:`joint_gap_mm`: 4 mm and a voxel on
either side) are joined there across the space between them, by the points
within half that width of both: across a joint space up to that wide, all of
it; at its rim, a fillet. A femur's joint is not bridged: a hip joint stays
a joint. The bridge is made on a ``BRIDGE_GRID_MM`` grid (distances of voxel
centres to each bone's inside voxels), only where it joins the two, and kept
``BRIDGE_INSET_MM`` inside every cut plane, so the host, its cut faces and
the implant's contact faces are those of the cut without the bridge.
"""

from __future__ import annotations

import manifold3d
import numpy as np
import trimesh
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from ..config import Plane
from ..errors import MeshError
from ..segment.voxelise import inside_mesh
from .level_set import field_solid
from .meshes import concatenate_solids, face_shells, reader_defects, remove_needles, to_manifold

# A joint space's width (mm): the sacroiliac joint's is 2-4 mm (see joint_gap_mm).
JOINT_MM = 4.0
BRIDGE_GRID_MM = 1.0
# The bridge keeps this far inside every cut plane (mm), beyond the implant's
# clearance: the contact faces stay the cut's own.
BRIDGE_INSET_MM = 1.0
# Shells smaller than this (mm3) are specks, not bones to bridge.
MIN_SHELL_MM3 = 100.0
# Beyond this many voxels the grid is made coarser (a joint along a whole cut).
MAX_VOXELS = 8_000_000
# Where the bridge's seam with a bone leaves a sliver an STL reader would
# read as a needle, the grid is moved by these shares of a step and the
# bridge made again; the first clean union is kept.
GRID_SHIFTS = (0.0, 0.37, 0.71)


def joint_gap_mm(spacing_mm) -> float:
    """The widest joint space bridged on a CT of this voxel spacing (mm): a
    joint's 2-4 mm, and a voxel more on each side, where each bone's
    half-maximum surface may lie (on the 3 mm TotalSegmentator example the
    sacroiliac joint's surfaces are 5-7 mm apart over most of it)."""
    return JOINT_MM + 2.0 * float(np.max(spacing_mm))


def bridge_joints(bones: dict[str, trimesh.Trimesh], planes: tuple[Plane, ...], *, gap_mm: float,
                  inset_mm: float = BRIDGE_INSET_MM) -> tuple[trimesh.Trimesh, dict]:
    """(the ``bones`` as one mesh, bridged across the joints between them
    inside the region behind all ``planes`` at least ``inset_mm`` deep, the
    figures for the report: joints bridged, volume added). Joints up to
    ``gap_mm`` wide are bridged, between shells of different bones over
    ``MIN_SHELL_MM3``; a femur's is not: a hip joint stays a joint. The
    bones are returned as they are (concatenated) when no joint is bridged."""
    bone = concatenate_solids(list(bones.values()))
    labels, volumes = face_shells(bone)
    faces = np.asarray(bone.faces)
    vertices = np.asarray(bone.vertices, dtype=np.float64)
    depth = np.min([p.signed_distance_mm(vertices) for p in planes], axis=0)
    owner = np.repeat(list(bones), [len(m.faces) for m in bones.values()])   # the bone of each face
    shells = []
    for k in np.flatnonzero(volumes > MIN_SHELL_MM3):
        mine = labels == k
        name = str(owner[np.flatnonzero(mine)[0]])
        own = faces[mine]
        near = np.unique(own)
        near = near[depth[near] >= inset_mm - gap_mm / 2 - BRIDGE_GRID_MM]
        if near.size and not name.startswith("femur"):
            shells.append((name, own, near))
    pairs = [(i, j) for i in range(len(shells)) for j in range(i + 1, len(shells)) if shells[i][0] != shells[j][0]]
    none = {"joints_bridged": 0, "bridge_volume_mm3": 0.0}
    if not pairs:
        return bone, none
    for shift in GRID_SHIFTS:
        bridges = [b for b in (_bridge(vertices, shells[i][1:], shells[j][1:], planes, inset_mm, gap_mm, shift)
                               for i, j in pairs) if b is not None]
        if not bridges:
            return bone, none
        # One big solid at a time (on a 512 x 512 x 300 CT's bones each is
        # ~100 MB): the bone's, then the union's, then its mesh.
        joined = manifold3d.Manifold.batch_boolean([to_manifold(bone, "bone")] + bridges, manifold3d.OpType.Add)
        added = round(joined.volume() - float(volumes.sum()), 1)
        out = joined.to_mesh64()
        del joined
        mesh = trimesh.Trimesh(np.array(out.vert_properties, dtype=np.float64)[:, :3].copy(),
                               np.array(out.tri_verts, dtype=np.int64), process=False)
        del out
        # Pockets the bridge closes off between the bones (each an inward
        # shell, of negative volume) are filled: they would be inner shells of the implant.
        pocket, shell_volumes = face_shells(mesh)
        if (shell_volumes <= 0.0).any():
            mesh = trimesh.Trimesh(mesh.vertices, mesh.faces[shell_volumes[pocket] > 0.0], process=False)
            mesh.remove_unreferenced_vertices()
            added = round(float(face_shells(mesh)[1].sum()) - float(volumes.sum()), 1)
        mesh, _ = remove_needles(mesh)
        if not any(reader_defects(mesh).values()):
            return mesh, {"joints_bridged": len(bridges), "bridge_volume_mm3": added}
    # Where the seams leave slivers on every grid, the bones stay apart (and the run says the implant is in pieces).
    return bone, {**none, "joints_not_bridged": len(bridges)}


def _bridge(vertices: np.ndarray, a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
            planes: tuple[Plane, ...], inset_mm: float, gap_mm: float, shift: float) -> manifold3d.Manifold | None:
    """The bridge between shells ``a`` and ``b`` ((faces, candidate vertices)
    each), or None where they do not come within ``gap_mm``; its grid moved
    by ``shift`` of a step along each axis."""
    pa, pb = vertices[a[1]], vertices[b[1]]
    close_a = cKDTree(pb).query(pa, distance_upper_bound=gap_mm)[0] <= gap_mm
    if not close_a.any():
        return None
    close_b = cKDTree(pa).query(pb, distance_upper_bound=gap_mm)[0] <= gap_mm
    close = np.concatenate([pa[close_a], pb[close_b]])
    step = BRIDGE_GRID_MM
    while True:
        # Beyond half the gap by one and a half grid steps (distances between voxel centres are a step off
        # either way): across a joint that wide the bridge still reaches into both bones.
        reach = gap_mm / 2 + 1.5 * step
        lo, hi = close.min(axis=0) - reach - 2 * step, close.max(axis=0) + reach + 2 * step
        if np.prod(np.ceil((hi - lo) / step) + 1) <= MAX_VOXELS:
            break
        step *= 1.5
    lo = lo - shift * step
    shape = tuple(int(n) for n in np.ceil((hi - lo) / step) + 1)
    affine = np.diag([step, step, step, 1.0])
    affine[:3, 3] = lo
    box = tuple(slice(0, n) for n in shape)
    distances = []
    for faces, _ in (a, b):
        inside = inside_mesh(vertices, faces, affine, box)
        if not inside.any():
            return None
        distances.append(ndi.distance_transform_edt(~inside).astype(np.float32) * np.float32(step))
    farthest = np.maximum(*distances)
    points = lo + np.indices(shape, dtype=np.float32).reshape(3, -1).T * np.float32(step)
    depth = np.min([p.signed_distance_mm(points) for p in planes], axis=0).reshape(shape)
    field = np.maximum(farthest - reach, inset_mm - depth)
    # Only what joins the two, reaching into both: a part that meets one
    # bone or neither (where the surfaces only come near, or the inset cuts a
    # part off) would be a loose piece of metal, or a lump on one bone.
    parts, n = ndi.label(field < 0)
    joins = np.zeros(n + 1, dtype=bool)
    joins[np.intersect1d(parts[distances[0] == 0], parts[distances[1] == 0])] = True
    joins[0] = False
    if not joins.any():
        return None
    field[~joins[parts]] = np.maximum(field[~joins[parts]], np.float32(step))
    try:
        return field_solid(field, lo, step, "joint bridge")
    except MeshError:   # marching cubes made no clean solid of it: this joint stays open (and the run says so)
        return None
