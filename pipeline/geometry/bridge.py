"""Joints bridged inside the resected region: one implant where the cuts cross a joint.

The implant is the removed bone. Where the resection crosses a joint (the
seed case's sacroiliac joint) that is a piece of each bone with the joint
space between them: two solids nothing holds together, two parts if printed.
Every two bones that come within a joint's width of each other inside the
resected region (:func:`joint_gap_mm`: 4 mm and a voxel on either side) are
joined there across the space between them, by the points within half that
width of both: across a joint space up to that wide, all of it; at its rim,
a fillet. A femur's joint is not bridged: a hip joint stays a joint. The
bridge is made on a ``BRIDGE_GRID_MM`` grid (distances of voxel centres to
each bone's inside voxels), only where it joins the two, and kept
``BRIDGE_INSET_MM`` inside every cut plane. It is added to the removed part
alone, once the bone is cut (:func:`pipeline.geometry.resect.cut`): the
host, its cut faces and the implant's contact faces are those of the cut
without the bridge, and the union works on the implant's mesh rather than
the whole bone's (on the 512 x 512 x 300 bench phantom the
cut took 3.9 s with the union before it, 2.4 s now).
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
from .meshes import face_shells, reader_defects, remove_needles_in_place

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


class Joints:
    """The joints between ``bones`` that a cut by ``planes`` may bridge:
    shells of different bones over ``MIN_SHELL_MM3`` (not a femur's: a hip
    joint stays a joint) with vertices deep enough in the region for a
    bridge ``inset_mm`` inside it to reach them. ``bone`` is the bones as
    one mesh (:func:`~pipeline.geometry.meshes.concatenate_solids`, in the
    order of ``bones``)."""

    def __init__(self, bones: dict[str, trimesh.Trimesh], bone: trimesh.Trimesh, planes: tuple[Plane, ...], *,
                 gap_mm: float, inset_mm: float = BRIDGE_INSET_MM) -> None:
        self.planes, self.gap_mm, self.inset_mm = planes, gap_mm, inset_mm
        labels, volumes = face_shells(bone)
        faces = np.asarray(bone.faces)
        self.vertices = np.asarray(bone.vertices, dtype=np.float64)
        depth = np.min([p.signed_distance_mm(self.vertices) for p in planes], axis=0)
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
        self.shells = shells
        self.pairs = [(i, j) for i in range(len(shells)) for j in range(i + 1, len(shells))
                      if shells[i][0] != shells[j][0]]

    def bridges(self, shift: float) -> list[manifold3d.Manifold]:
        """The bridges across the joints that are within ``gap_mm``, made on
        the grid moved by ``shift`` of a step (see ``GRID_SHIFTS``)."""
        made = (_bridge(self.vertices, self.shells[i][1:], self.shells[j][1:], self.planes, self.inset_mm,
                        self.gap_mm, shift) for i, j in self.pairs)
        return [b for b in made if b is not None]


def clean_seams(mesh: trimesh.Trimesh, held: np.ndarray) -> tuple[trimesh.Trimesh, np.ndarray] | None:
    """(``mesh``, a solid the bridges were just added to, with the pockets
    they closed off between the bones filled and the needles left along
    their seams repaired; for each of its faces, the face of ``mesh`` it
    stands for), or None where defects an STL reader would see remain. The
    faces in ``held`` (the cut faces, triangulated afresh later) stay as
    they are, and every vertex keeps its own coordinates."""
    # A pocket is an inward shell (negative volume): it would be an inner shell of the implant.
    shell, volumes = face_shells(mesh)
    source = np.flatnonzero(volumes[shell] > 0.0)
    if source.size < len(mesh.faces):
        mesh = trimesh.Trimesh(mesh.vertices, mesh.faces[source], process=False)
        mesh.remove_unreferenced_vertices()
    mesh, kept, _ = remove_needles_in_place(mesh, held[source])
    source = source[kept]
    # Slivers the cut itself left beside its faces (on their corners) are
    # the cap triangulation's to remove, as on a cut without bridges.
    on_cut = np.zeros(len(mesh.vertices), dtype=bool)
    on_cut[mesh.faces[held[source]]] = True
    if any(reader_defects(mesh, needles_ignored_on=on_cut[mesh.faces].any(axis=1)).values()):
        return None
    return mesh, source


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
