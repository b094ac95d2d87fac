"""An anatomical pelvis phantom: real hip-bone and sacrum shapes with exact truth.

How the anatomy is built
------------------------
* **Hip bones and sacrum (S1-S3)** are an instance of the pelvis shape model
  (:mod:`pipeline.segment.shape_model`) with modest mode weights
  (:data:`MODE_WEIGHTS_SD`, at most 1 SD), plus a smooth deformation that no
  model instance contains (:data:`DEFORMATION_MM`: a sum of long sine waves,
  |u| <= ~1.5 mm, gradient far below 1, so the meshes stay closed and free of
  self-intersections), placed in LPS by a small rotation and a translation.
  The model's sacroiliac joints are closed (the atlas surfaces touch); the
  sacrum's vertices near a hip bone are pushed back along the hip's distance
  gradient until the joint is :data:`SI_GAP_MM` wide, and the pubic bones
  likewise at the symphysis.
* **What the atlas lacks** comes from primitives placed by that anatomy: S4-S5
  as an ellipsoid whose section at the S3 cut is the ellipse fitted to the cut
  face (overlapping S3, so the union has no gap), a coccyx of tapering capsules
  curving forwards; the femurs (a head sphere concentric with the sphere
  fitted to the ``acetabulum_*`` landmark vertices, its radius leaving a
  :data:`HIP_GAP_MM` joint space to the nearest point of the socket, neck,
  trochanters, a shaft to the bottom of any field of view); L5 and L4 above
  the plane fitted to the ``s1_endplate`` vertices (a disc that is thinner
  behind than in front, bodies with cortex over cancellous bone, arches around
  a spinal canal), kept :data:`FACET_GAP_MM` from the sacrum.

Truth
-----
Each model bone's truth surface is its triangle mesh: labels are the voxel
centres inside it and ``label_sdf_mm`` its exact signed distance
(:mod:`pipeline.phantom.mesh_sdf`: distances exact to ~1e-12 mm, inside by
the winding number, so folds cannot flip a sign), composed with the primitive
parts by the same CSG as :mod:`pipeline.phantom.analytic` (a mesh is one
more leaf there). The atlas surfaces have a few spots where they fold over
or run through themselves (mostly where holes were closed by fans); there a
face does not separate inside from outside, and such faces are cut out with
the rings around them and the holes refilled from their centroids
(:func:`_repair_embedding`), so every face of the truth meshes bounds the
solid. The joints the atlas leaves closed are opened by moving each bone's
vertices away from the other bone, in turns, until the surfaces are about
the designed gap apart (the tests check >= 2 mm everywhere, measured ~2.95 mm).
Volumes of bones that are one mesh are exact; the others are sampled.
At points, a mesh's distance is exact within ``POINT_DISTANCE_CAP_MM``
(30 mm) of its surface and beyond that reads +-30 mm (the right side).

Speed
-----
The anatomy is built once per process (``lru_cache``). On a grid, a mesh's
distance is needed exactly only within the blur band (``_PHI_BAND`` blur
widths) of each level surface read from it: the bone's surface, its deepest
tissue layer, and for the sacrum, L5's surface FACET_GAP_MM beyond it (a
separate leaf, only around the spine). Beyond that band a voxel only needs
its side, from the winding number along grid rays. Each leaf computes its
band once per grid, the leaves on both cores, and keeps the last grids'
values, so the phantom's variants on one grid share them.

Attribution
-----------
The hip-bone and sacrum shapes derive, through the shape model, from the Open
Source Atlas of Pelvis Segmentations and Surgical Trajectories (I-STAR Lab,
Johns Hopkins University; Han et al., Phys. Med. Biol. 2019,
doi:10.1088/1361-6560/ab1456), licensed CC BY 4.0, with the note **"This work
is not for clinical use"**, which applies to this phantom too (see
``pipeline/segment/data/README.md``).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..parallel import parallel
from ..segment.shape_model import load_model
from ..volume import Volume
from ..bones import LABEL_NAMES as _BONES
from ..errors import ConfigError
from .analytic import (Phantom, _add_noise, _Block, _capped_elliptic_cylinder, _capsule, _check_scalar,
                       _check_shape, _check_vector, _Difference, _ellipsoid, _far_mm, _Grid, _half_space,
                       _Leaf, _Level, _Node, _Offset, _p, _PHI_BAND, _render, _sphere, _Tissue, _Union,
                       axial_affine, _SAMPLED_VOLUME_STEP_MM)
from .body import HU_AIR, HU_MUSCLE, SoftLayout, soft_tissues
from .mesh_sdf import ClosedMesh, _Buckets, _Rays, fans_per_vertex

# ---------------------------------------------------------------------------
# The patient: shape, deformation, pose
# ---------------------------------------------------------------------------
MODE_WEIGHTS_SD = (1.0, -0.8, 0.6, -0.5, 0.7, -0.4)
DEFORMATION_MM = 1.5          # amplitude of the non-model deformation
_DEFORMATION_SEED = 7         # fixes the deformation's waves (part of the anatomy)
_POSE_DEG = (3.0, 1.0, 1.5)   # rotation about x (pelvic tilt), y, z
_POSE_SHIFT_MM = (0.0, 15.0, 50.0)   # model-frame origin in LPS

SI_GAP_MM = 3.0               # sacroiliac joint space
SYMPHYSIS_GAP_MM = 3.0
_JOINT_ROUNDS = 2             # turns each bone of a joint gives way to the other
HIP_GAP_MM = 3.0              # femoral head to the nearest point of its socket
FACET_GAP_MM = 2.5            # L5 to the sacrum (facet joints, disc rim)
DISC_MM = (8.0, 14.0)         # L5-S1 disc height behind and in front

# ---------------------------------------------------------------------------
# Tissues (HU) and layers (mm)
# ---------------------------------------------------------------------------
LABEL_NAMES = {k: name for k, name in _BONES.items() if name != "other"}   # the phantom has no "other" bone
HU_CORTICAL = 1350.0
HU_CORTICAL_OSTEOPOROTIC = 600.0
HU_HIP_CANCELLOUS = 280.0
HU_FEMUR_CANCELLOUS = 320.0
HU_SACRAL_MARROW = 100.0      # fatty marrow: below a 200 HU threshold, as on real CT
HU_VERTEBRAL_CANCELLOUS = 150.0
HU_FEMORAL_CANAL = 30.0
HU_CANCELLOUS_OSTEOPOROTIC = 100.0
HU_MARROW_OSTEOPOROTIC = 60.0
CORTEX_MM = 2.0               # cortex of the hip bones, sacrum and vertebrae (see the docstring)
HIP_CORTEX_EXTRA_MM = 0.8     # thicker around the acetabulum, ischium and pubis
SUBCHONDRAL_MM = 2.0          # femoral head shell (as the cortex: see CORTEX_MM)
SHAFT_CANAL_RADIUS_MM = 7.5   # femoral canal; the shaft's cortex is the rest

LESION_RADIUS_MM = 18.0


# ---------------------------------------------------------------------------
# A mesh as a leaf of the CSG
# ---------------------------------------------------------------------------
class _MeshLeaf(_Leaf):
    """A closed triangle mesh as an SDF leaf: exact signed distance at points;
    on a grid, exact where the rendering reads it and clamped beyond.

    The band: a blur band (``block.phi_mm``) around every level surface that
    is read from this distance, the deepest ``deep_mm`` inside the surface
    (tissue layers inset into the bone) and the farthest ``out_mm`` outside it
    (another bone's surface offset from this one, plus that bone's own inset).
    A grid's values are computed once, for the mesh's whole box on the grid
    (or the part of it ``within`` a box, where a leaf is read only there), and
    the last :data:`_FIELDS_KEPT` grids' are kept: the variants of a phantom
    share their grid."""

    def __init__(self, mesh: ClosedMesh, deep_mm: float = 0.0, out_mm: float = 0.0, within=None):
        self.mesh, self.deep_mm, self.out_mm = mesh, float(deep_mm), float(out_mm)
        self._fields: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        lo, hi = mesh.bounds_mm
        if within is not None:
            lo, hi = np.maximum(lo, within[0]), np.minimum(hi, within[1])
        super().__init__(self._points, lo, hi)

    def _points(self, x, y, z):
        shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
        p = np.stack([np.broadcast_to(np.asarray(a, np.float64), shape) for a in (x, y, z)], axis=-1)
        return self.mesh.signed_distance_mm(p, POINT_DISTANCE_CAP_MM)

    def render(self, block):
        sub = block.restrict(self.lo, self.hi)
        if sub is None:
            return block.far_mm
        region, values = self.field(block.grid, block.far_mm, block.phi_mm)
        sl = tuple(slice(s - r, e - r) for s, e, r in zip(sub.start, sub.stop, region.start))
        return block.embed(sub, values[sl])

    def field(self, grid: _Grid, far_mm: float, phi_mm: float):
        """(the block of ``grid`` around the mesh, the distances there)."""
        key = (grid.shape, grid.affine.tobytes(), np.dtype(grid.dtype).str, far_mm, phi_mm)
        with self._lock:
            if key not in self._fields:
                region = _Block(grid, (0, 0, 0), grid.shape, far_mm, phi_mm).restrict(self.lo, self.hi)
                band = (-(phi_mm + self.deep_mm), phi_mm + self.out_mm)
                values = None if region is None else self.mesh.grid_distance_mm(
                    grid.affine, region.start, region.stop, band).astype(grid.dtype)
                self._fields[key] = (region, values)
                while len(self._fields) > _FIELDS_KEPT:
                    self._fields.popitem(last=False)
            self._fields.move_to_end(key)
            return self._fields[key]


# At points, a mesh's distance is exact within this reach of its surface and
# +-POINT_DISTANCE_CAP_MM (the right side, "at least this far") beyond: every
# offset, inset and landmark search reads far less, and an exact distance
# 100 mm away costs ~15x more (the nearest triangles are searched in a ball of
# that radius).
POINT_DISTANCE_CAP_MM = 30.0

# Grids whose mesh distances a leaf keeps (the most recently used).
_FIELDS_KEPT = 2


# ---------------------------------------------------------------------------
# Building the bones
# ---------------------------------------------------------------------------
def _rotation(deg: Sequence[float]) -> np.ndarray:
    ax, ay, az = (math.radians(a) for a in deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def deformation_mm(points_mm: np.ndarray) -> np.ndarray:
    """The smooth non-model displacement (mm) at model-frame points ``(N, 3)``:
    six sine waves of 70-140 mm wavelength with random directions, amplitudes
    adding up to :data:`DEFORMATION_MM`."""
    rng = np.random.default_rng(_DEFORMATION_SEED)
    out = np.zeros_like(points_mm, dtype=np.float64)
    n_waves = 6
    for _ in range(n_waves):
        k = rng.normal(size=3)
        k *= 2.0 * math.pi / (rng.uniform(70.0, 140.0) * np.linalg.norm(k))
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        out += (DEFORMATION_MM / n_waves * 2.0) * direction * np.sin(points_mm @ k + rng.uniform(0, 2 * math.pi))[:, None]
    return out


def _split_pinched_vertices(vertices: np.ndarray, faces: np.ndarray, nudge_mm: float = 0.05):
    """Give each extra fan of triangles around a pinched vertex its own copy of
    the vertex, moved ``nudge_mm`` towards that fan's centre (the atlas sacrum
    has one vertex where two sheets touch)."""
    vertices, faces = vertices.copy(), faces.copy()
    for v in np.flatnonzero(fans_per_vertex(faces, len(vertices)) > 1):
        fans = _fans(faces, v, np.flatnonzero((faces == v).any(axis=1)))
        for fan in fans[1:]:
            copy = len(vertices)
            centre = vertices[faces[fan]].reshape(-1, 3).mean(axis=0)
            step = centre - vertices[v]
            vertices = np.vstack([vertices, vertices[v] + nudge_mm * step / np.linalg.norm(step)])
            sub = faces[fan]
            sub[sub == v] = copy
            faces[fan] = sub
        step = vertices[faces[fans[0]]].reshape(-1, 3).mean(axis=0) - vertices[v]
        vertices[v] = vertices[v] + nudge_mm * step / np.linalg.norm(step)
    return vertices, faces


def _fans(faces: np.ndarray, v: int, around: np.ndarray) -> list[np.ndarray]:
    """The triangles ``around`` vertex ``v``, grouped into fans joined by edges through ``v``."""
    link = {}
    for f in around:
        tri = list(faces[f])
        k = tri.index(v)
        link[f] = (tri[(k + 1) % 3], tri[(k + 2) % 3])
    left = set(around.tolist())
    fans = []
    while left:
        start = left.pop()
        fan, stack = [start], [start]
        while stack:
            f = stack.pop()
            for g in list(left):
                if set(link[f]) & set(link[g]):
                    left.remove(g)
                    fan.append(g)
                    stack.append(g)
        fans.append(np.array(sorted(fan)))
    return sorted(fans, key=len, reverse=True)


def _misplaced_faces(vertices: np.ndarray, faces: np.ndarray, which: np.ndarray | None = None,
                     step_mm: float = 1e-3) -> np.ndarray:
    """Faces (of ``which``, default all) that do not separate the solid from the
    outside: just in front of a face of an embedded closed mesh the winding
    number is 0 and just behind it 1. Where the surface folds over or runs
    through itself (the atlas has a few such spots, mostly where holes in its
    surfaces were closed by fans) it is not, and such a face is no part of the
    solid's boundary."""
    mesh = ClosedMesh(vertices, faces)
    which = np.arange(len(faces)) if which is None else which
    centre = np.mean(mesh.corners, axis=0)[which]
    step = step_mm * mesh.face_normals[which]
    winding = mesh.winding_number(np.concatenate([centre + step, centre - step])).reshape(2, -1)
    return which[(winding[0] != 0) | (winding[1] != 1)]


def _repair_embedding(vertices: np.ndarray, faces: np.ndarray, near: np.ndarray | None = None,
                      rings: int = 2, max_rings: int = 5):
    """Cut the misplaced faces (among those touching vertices ``near``, default
    all) out with ``rings`` rings of faces around them and close each hole by a
    fan from its centroid; with a ring more until no face is misplaced."""
    which = None if near is None else np.flatnonzero(np.isin(faces, near).any(axis=1))
    bad = _misplaced_faces(vertices, faces, which)
    if len(bad) == 0:
        return vertices, faces
    for rings in range(rings, max_rings + 1):
        cut = np.zeros(len(faces), dtype=bool)
        cut[bad] = True
        for _ in range(rings):
            cut |= np.isin(faces, faces[cut]).any(axis=1)
        v, f = _fill_holes(vertices, faces[~cut])
        if not ClosedMesh(v, f).check() and len(_misplaced_faces(v, f)) == 0:
            return _compact(v, f)
    raise RuntimeError(f"the surface still runs through itself near {len(bad)} faces")


def _fill_holes(vertices: np.ndarray, faces: np.ndarray):
    """Close every boundary loop of an open mesh by a fan from the loop's centroid."""
    n = len(vertices)
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    keys = directed[:, 0] * n + directed[:, 1]
    rim = directed[~np.isin(directed[:, 1] * n + directed[:, 0], keys)]
    # A hole's rim, walked against the direction of the triangles beside it.
    after = {int(b): int(a) for a, b in rim}
    if len(after) != len(rim):
        raise RuntimeError("a hole's rim passes a vertex twice")
    new_vertices, new_faces = [vertices], [faces]
    while after:
        loop = [next(iter(after))]
        while after[loop[-1]] != loop[0]:
            loop.append(after.pop(loop[-1]))
        del after[loop[-1]]
        new_vertices.append(vertices[loop].mean(axis=0)[None])
        new_faces.append(np.array([[n, loop[j], loop[(j + 1) % len(loop)]] for j in range(len(loop))]))
        n += 1
    return np.concatenate(new_vertices), np.concatenate(new_faces)


def _compact(vertices: np.ndarray, faces: np.ndarray):
    used = np.unique(faces)
    remap = np.full(len(vertices), -1)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces]


def _gradient(mesh: ClosedMesh, points: np.ndarray) -> np.ndarray:
    """Unit gradient of the mesh's signed distance: away from the nearest
    surface point outside, towards it inside."""
    away = points - mesh.closest_points_mm(points)
    length = np.linalg.norm(away, axis=1)
    if np.any(length < 1e-9):
        raise ValueError("the distance has no gradient on the surface")
    inside = mesh.winding_number(points) > 0
    return np.where(inside[:, None], -1.0, 1.0) * away / length[:, None]


def _open_joint(vertices: np.ndarray, other: ClosedMesh, gap_mm: float, rounds: int = 4):
    """Vertices closer than ``gap_mm`` to the ``other`` bone are pushed away
    along its distance gradient until they are ``gap_mm`` (plus a tenth of a
    millimetre) from it. Returns the vertices and which of them moved."""
    out = vertices.copy()
    lo, hi = other.bounds_mm
    movable = np.flatnonzero(np.all((out > lo - gap_mm - 1.0) & (out < hi + gap_mm + 1.0), axis=1))
    moved = []
    for _ in range(rounds):
        d = other.signed_distance_mm(out[movable], cap_mm=gap_mm + 1.0)
        near = d < gap_mm + 0.1
        if not np.any(near):
            break
        movable = movable[near]
        out[movable] += (gap_mm + 0.1 - d[near])[:, None] * _gradient(other, out[movable])
        moved.append(movable)
    return out, np.unique(np.concatenate(moved)) if moved else np.zeros(0, dtype=np.int64)


def _ring(faces: np.ndarray, vertices: np.ndarray, rings: int = 3) -> np.ndarray:
    """``vertices`` and those within ``rings`` edges of them."""
    out = np.unique(vertices)
    for _ in range(rings):
        out = np.unique(faces[np.isin(faces, out).any(axis=1)])
    return out


@dataclass(frozen=True, eq=False)
class _Bones:
    meshes: dict[str, ClosedMesh]       # hip_left, hip_right, sacrum (S1-S3, joints opened)
    head_centre: dict[float, np.ndarray]
    head_radius_mm: dict[float, float]
    s1_centre: np.ndarray               # on the endplate plane
    s1_up: np.ndarray                   # endplate normal, cranial
    s3_cut: tuple                       # centre, outward normal, in-plane axes, semi-axes


@lru_cache(maxsize=1)
def _model_bones() -> _Bones:
    model = load_model()
    x = model.shape_mm(np.asarray(MODE_WEIGHTS_SD))
    x = x + deformation_mm(x)
    rot = _rotation(_POSE_DEG)
    x = x @ rot.T + np.asarray(_POSE_SHIFT_MM)
    pieces = {}
    for bone in ("hip_left", "hip_right", "sacrum"):
        v, f = _compact(x, model.faces[bone])
        if bone == "sacrum":
            v, f = _split_pinched_vertices(v, f)
        pieces[bone] = _repair_embedding(v, f)
    # Open the joints the atlas leaves closed (sacroiliac, symphysis): the
    # vertices of each bone give way to the other bone, in turn, so that
    # neither bone's ridges reach into the gap between the other's vertices.
    vertices = {b: pieces[b][0] for b in pieces}
    faces = {b: pieces[b][1] for b in pieces}
    moved: dict[str, list] = {b: [] for b in pieces}
    for _ in range(_JOINT_ROUNDS):
        for a, b, gap in (("sacrum", "hip_left", SI_GAP_MM), ("sacrum", "hip_right", SI_GAP_MM),
                          ("hip_left", "hip_right", SYMPHYSIS_GAP_MM)):
            for bone, other in ((a, b), (b, a)):
                vertices[bone], m = _open_joint(vertices[bone], ClosedMesh(vertices[other], faces[other]), gap)
                moved[bone].append(m)
    meshes = {b: ClosedMesh.from_arrays(*_repair_embedding(vertices[b], faces[b],
                                                           _ring(faces[b], np.concatenate(moved[b]))))
              for b in pieces}
    centres, radii = {}, {}
    for side, bone in ((1.0, "hip_left"), (-1.0, "hip_right")):
        c = _fit_sphere(x[model.landmarks[f"acetabulum_{'left' if side > 0 else 'right'}"]])[0]
        centres[side] = c
        radii[side] = float(meshes[bone].signed_distance_mm(c[None])[0]) - HIP_GAP_MM
    plane = x[model.landmarks["s1_endplate"]]
    s1_centre = plane.mean(axis=0)
    up = np.linalg.svd(plane - s1_centre)[2][2]
    up = up if up[2] > 0 else -up
    return _Bones(meshes, centres, radii, s1_centre, up, _s3_cut(meshes["sacrum"]))


def _fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    a = np.c_[2.0 * points, np.ones(len(points))]
    sol = np.linalg.lstsq(a, (points ** 2).sum(axis=1), rcond=None)[0]
    return sol[:3], float(np.sqrt(sol[3] + sol[:3] @ sol[:3]))


def _s3_cut(sacrum: ClosedMesh):
    """The flat face where the atlas cut the sacrum below S3: the centre of its
    extent, outward normal, in-plane axes (lateral first) and its half-extents
    along them."""
    normals, areas = sacrum.face_normals, sacrum.areas_mm2
    big = np.argmax(areas)
    n = normals[big]
    flat = normals @ n > 0.995
    centroids = np.mean(sacrum.corners, axis=0)
    on_plane = flat & (np.abs((centroids - centroids[big]) @ n) < 1.0)
    w = areas[on_plane]
    centre = (centroids[on_plane] * w[:, None]).sum(axis=0) / w.sum()
    lateral = np.array([1.0, 0.0, 0.0]) - n[0] * n
    lateral /= np.linalg.norm(lateral)
    other = np.cross(n, lateral)
    pts = np.concatenate([c[on_plane] for c in sacrum.corners])
    u, v = (pts - centre) @ lateral, (pts - centre) @ other
    centre = centre + 0.5 * (u.max() + u.min()) * lateral + 0.5 * (v.max() + v.min()) * other
    semi = (0.5 * float(u.max() - u.min()), 0.5 * float(v.max() - v.min()))
    return centre, n, lateral, other, semi


# ---------------------------------------------------------------------------
# Primitives placed by the anatomy
# ---------------------------------------------------------------------------
def _sacral_tail(cut) -> tuple[_Node, np.ndarray]:
    """S4-S5 and the coccyx below the atlas' S3 cut (LPS), and the coccyx tip.

    S4-S5: an ellipsoid whose section by the cut plane is the cut face's
    ellipse; it reaches into S3 (so the union has no gap) and tapers to S5
    below. The coccyx: three capsules of falling radius curving forwards."""
    centre, n, lateral, other, (a_cut, b_cut) = cut
    length, depth = 36.0, 12.0                 # semi-axis along the sacrum; centre below the cut
    grow = 1.0 / math.sqrt(1.0 - (depth / length) ** 2)
    c = centre + depth * n
    rows = (tuple(lateral), tuple(other), tuple(n))
    s45 = _ellipsoid(tuple(c), (a_cut * grow, b_cut * grow, length), rows)
    # The coccyx turns forwards: each segment 25 degrees further from the sacral axis.
    start = centre + (length + depth - 8.0) * n
    direction, parts, radius = n.copy(), [], 7.0
    forward = -other if other[1] < 0 else other     # in-plane axis pointing anterior (-y)
    forward = forward if forward[1] < 0 else -forward
    for _ in range(3):
        t = math.radians(25.0)
        direction = math.cos(t) * direction + math.sin(t) * forward
        direction /= np.linalg.norm(direction)
        end = start + 12.0 * direction
        parts.append(_capsule(tuple(start), tuple(end), radius))
        start, radius = end, radius - 1.5
    return _Union(s45, *parts), start + direction * (radius + 1.5)


# The femur around its head centre (left side; x mirrored for the right), as
# offsets in mm for a 23 mm head, scaled with the head.
_NECK = (0.80, -0.12, -0.58)                  # head -> neck, ~130 deg to the shaft
_TROCHANTER_MAJOR = ((43.0, 10.0, -8.0), (12.0, 16.0, 20.0))
_TROCHANTER_MINOR = ((21.0, 16.0, -44.0), (9.0, 9.0, 11.0))
_SHAFT_TOP = (39.0, 0.0, -30.0)
_SHAFT_AXIS = (-0.15, 0.04, -0.99)
_SHAFT_RADIUS_MM = 14.0
_SHAFT_LENGTH_MM = 400.0                      # beyond the bottom of any field of view


def _femur(side: float, head: np.ndarray, radius_mm: float) -> tuple[_Node, dict]:
    """Head sphere, neck, trochanters, shaft; and the places its tissues need."""
    k = radius_mm / 23.0

    def at(offset):
        return tuple(head + k * np.asarray(_p(offset, side)))
    neck_dir = np.asarray(_p(_NECK, side)) / np.linalg.norm(_NECK)
    axis = np.asarray(_p(_SHAFT_AXIS, side)) / np.linalg.norm(_SHAFT_AXIS)
    top = np.asarray(at(_SHAFT_TOP))
    bottom = top + _SHAFT_LENGTH_MM * axis
    greater = _ellipsoid(at(_TROCHANTER_MAJOR[0]), tuple(k * np.asarray(_TROCHANTER_MAJOR[1])))
    node = _Union(_sphere(tuple(head), radius_mm),
                  _capsule(tuple(head), tuple(head + 50.0 * k * neck_dir), 14.0 * k),
                  greater,
                  _ellipsoid(at(_TROCHANTER_MINOR[0]), tuple(k * np.asarray(_TROCHANTER_MINOR[1]))),
                  _capsule(tuple(top), tuple(bottom), _SHAFT_RADIUS_MM * k))
    # The diaphysis starts below the lesser trochanter: cortex there, a marrow canal inside.
    diaphysis_top = np.asarray(at(_TROCHANTER_MINOR[0])) - 20.0 * k * np.array([0.0, 0.0, 1.0])
    places = {"greater_trochanter_top": np.asarray(at(_TROCHANTER_MAJOR[0]))
              + np.array([0.0, 0.0, k * _TROCHANTER_MAJOR[1][2]]),
              "diaphysis_top": diaphysis_top, "shaft": (top, bottom)}
    return node, places


def _vertebra(centre, rows, half_ap: float, half_h: float, scale: float = 1.0) -> _Node:
    """A lumbar vertebra around its body ``centre`` (LPS mm) in the frame ``rows``
    (lateral, dorsal, cranial unit vectors): an elliptic-cylinder body of
    half-depth ``half_ap`` and half-height ``half_h``; pedicles, laminae around
    the spinal canal, spinous and transverse processes. ``scale`` sizes the
    arch and the body's width."""
    centre = np.asarray(centre, np.float64)

    def at(lateral, dorsal, up):
        return tuple(centre + scale * (lateral * np.asarray(rows[0]) + dorsal * np.asarray(rows[1])
                                       + up * np.asarray(rows[2])))
    r = 5.0 * scale
    parts = [_capped_elliptic_cylinder(tuple(centre), rows, (25.0 * scale, half_ap), half_h),
             _capsule(at(0, 40, 2), at(0, 62, -6), r)]                     # spinous process
    for s in (1.0, -1.0):
        parts += [_capsule(at(12 * s, 14, 4), at(12 * s, 30, 4), r),      # pedicle
                  _capsule(at(12 * s, 30, 4), at(0, 40, 2), r),            # lamina
                  _capsule(at(12 * s, 24, 2), at(42 * s, 28, 0), r)]       # transverse process
    return _Union(*parts)


def _lumbar_frames(bones: _Bones):
    """L5 and L4 body centres and frames (lateral, dorsal, cranial) above the S1 endplate."""
    up = bones.s1_up
    dorsal0 = np.array([0.0, 1.0, 0.0]) - up[1] * up
    dorsal0 /= np.linalg.norm(dorsal0)
    frames = []
    base, base_up, base_dorsal = bones.s1_centre, up, dorsal0
    half_ap, half_h = 18.0, 13.5
    for wedge_deg in (10.0, 8.0):              # lordosis: each disc opens to the front
        t = math.radians(wedge_deg)
        # Tilting back by the wedge angle makes the disc taller in front.
        cranial = math.cos(t) * base_up + math.sin(t) * base_dorsal
        dorsal = math.cos(t) * base_dorsal - math.sin(t) * base_up
        lateral = np.cross(dorsal, cranial)
        # The disc's posterior height is DISC_MM[0] where the body's back rim meets it.
        rise = DISC_MM[0] + half_ap * math.sin(t) + half_h * math.cos(t)
        centre = base + rise * base_up
        frames.append((centre, (tuple(lateral), tuple(dorsal), tuple(cranial)), half_ap, half_h))
        base, base_up, base_dorsal = centre + half_h * cranial, cranial, dorsal
    return frames


# ---------------------------------------------------------------------------
# The anatomy: bones with their tissues, soft tissues, landmarks
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Anatomy:
    bones: dict[int, _Node]             # label -> truth shape
    meshes: dict[int, ClosedMesh]       # label -> mesh, for bones that are one mesh
    tissues: dict                       # label -> levels builder inputs
    landmarks: dict[str, np.ndarray]
    soft: SoftLayout
    leaves: dict[str, _MeshLeaf]


@lru_cache(maxsize=1)
def _anatomy() -> _Anatomy:
    bones = _model_bones()
    # The bones' deepest layers: the cortex, the hips' thickened near the acetabulum.
    leaves = {"hip_left": _MeshLeaf(bones.meshes["hip_left"], CORTEX_MM + HIP_CORTEX_EXTRA_MM),
              "hip_right": _MeshLeaf(bones.meshes["hip_right"], CORTEX_MM + HIP_CORTEX_EXTRA_MM),
              "sacrum": _MeshLeaf(bones.meshes["sacrum"], CORTEX_MM)}
    tail, coccyx_tip = _sacral_tail(bones.s3_cut)
    femurs = {side: _femur(side, bones.head_centre[side], bones.head_radius_mm[side]) for side in (1.0, -1.0)}
    frames = _lumbar_frames(bones)
    spine = _Union(*[_vertebra(c, rows, ap, h) for c, rows, ap, h in frames])
    # L5 keeps FACET_GAP_MM from the sacrum: its surface and cortex read the
    # sacrum's distance that far outside the sacrum, only around the spine.
    leaves["sacrum_below_l5"] = _MeshLeaf(bones.meshes["sacrum"], 0.0, FACET_GAP_MM + CORTEX_MM,
                                          within=(spine.lo, spine.hi))
    lumbar = _Difference(spine, _Offset(leaves["sacrum_below_l5"], FACET_GAP_MM))
    shapes = {1: leaves["hip_left"], 2: leaves["hip_right"], 3: _Union(leaves["sacrum"], tail),
              4: femurs[1.0][0], 5: femurs[-1.0][0], 6: lumbar}
    meshes = {1: bones.meshes["hip_left"], 2: bones.meshes["hip_right"]}
    landmarks = _landmarks(bones, shapes, femurs, frames)
    soft = _soft_layout(landmarks)
    return _Anatomy(shapes, meshes, {"femurs": femurs, "heads": bones.head_centre,
                                      "coccyx_tip": coccyx_tip}, landmarks, soft, leaves)


def _thick_cortex(head: np.ndarray):
    """Extra cortical thickness (mm) of a hip bone: HIP_CORTEX_EXTRA_MM within
    45 mm of the acetabulum's centre, fading to none at 65 mm (the iliac wing)."""
    cx, cy, cz = (np.float32(v) for v in head)

    def extra(x, y, z):
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)
        return np.float32(HIP_CORTEX_EXTRA_MM) * np.clip((np.float32(65.0) - r) / np.float32(20.0), 0, 1)
    return extra


def _bone_tissue(label: int, node: _Node, anatomy: _Anatomy, osteoporotic: bool) -> _Tissue:
    cortical = HU_CORTICAL_OSTEOPOROTIC if osteoporotic else HU_CORTICAL
    if label in (1, 2):
        side = 1.0 if label == 1 else -1.0
        hu = HU_CANCELLOUS_OSTEOPOROTIC if osteoporotic else HU_HIP_CANCELLOUS
        levels = (_Level(0.0, cortical),
                  _Level(CORTEX_MM, hu, more_inset_mm=_thick_cortex(anatomy.tissues["heads"][side])))
    elif label == 3:
        levels = (_Level(0.0, cortical),
                  _Level(CORTEX_MM, HU_MARROW_OSTEOPOROTIC if osteoporotic else HU_SACRAL_MARROW))
    elif label == 6:
        levels = (_Level(0.0, cortical),
                  _Level(CORTEX_MM, HU_CANCELLOUS_OSTEOPOROTIC if osteoporotic else HU_VERTEBRAL_CANCELLOUS))
    else:
        places = anatomy.tissues["femurs"][1.0 if label == 4 else -1.0][1]
        top, bottom = places["shaft"]
        canal = _capsule(tuple(places["diaphysis_top"]), tuple(bottom), SHAFT_CANAL_RADIUS_MM)
        metaphysis = _half_space(places["diaphysis_top"], (0.0, 0.0, -1.0))
        hu = HU_CANCELLOUS_OSTEOPOROTIC if osteoporotic else HU_FEMUR_CANCELLOUS
        levels = (_Level(0.0, cortical),
                  _Level(SUBCHONDRAL_MM, hu, _Union(metaphysis, canal)),
                  _Level(SUBCHONDRAL_MM, HU_FEMORAL_CANAL, canal))
    return _Tissue(node, HU_MUSCLE, levels, label=label)


def _landmarks(bones: _Bones, shapes: dict, femurs: dict, frames) -> dict[str, np.ndarray]:
    """Named points (LPS mm); each is documented in :func:`pelvis_phantom`."""
    out: dict[str, np.ndarray] = {}
    sacrum = bones.meshes["sacrum"]
    for side, name, label in ((1.0, "left", 1), (-1.0, "right", 2)):
        hip = bones.meshes[f"hip_{name}"]
        v = hip.vertices_mm
        head = bones.head_centre[side]
        # The SI joint: half-way across the joint space from the sacral vertex
        # nearest the middle of the auricular surface (vertices SI_GAP_MM + 0.5 from the ilium).
        on_side = sacrum.vertices_mm[(sacrum.vertices_mm[:, 0] - bones.s1_centre[0]) * side > 20.0]
        d = hip.signed_distance_mm(on_side, cap_mm=SI_GAP_MM + 1.0)
        joint = on_side[d < SI_GAP_MM + 0.5]
        mid = joint[np.argmin(np.linalg.norm(joint - joint.mean(axis=0), axis=1))]
        si = mid - 0.5 * SI_GAP_MM * _gradient(hip, mid[None])[0]
        out[f"{name}_si_joint"] = si
        ala = si - side * np.array([15.0, 0.0, 0.0])
        out[f"{name}_sacral_ala"] = ala
        out[f"{name}_femoral_head_centre"] = head.copy()
        out[f"{name}_acetabulum_centre"] = head.copy()
        roof = head + np.array([0.0, 0.0, bones.head_radius_mm[side] + HIP_GAP_MM])
        out[f"{name}_supra_acetabular"] = roof + np.array([0.0, 0.0, 12.0])
        out[f"{name}_iliac_crest_top"] = v[np.argmax(v[:, 2])].copy()
        upper = v[:, 2] > head[2] + 30.0
        out[f"{name}_asis"] = v[upper][np.argmin(v[upper][:, 1])].copy()
        out[f"{name}_ischial_tuberosity"] = v[np.argmin(v[:, 2])].copy()
        out[f"{name}_obturator_foramen_centre"] = _foramen_centre(hip, head, bones.head_radius_mm[side])
        out[f"{name}_greater_trochanter_top"] = femurs[side][1]["greater_trochanter_top"].copy()
    left, right = bones.meshes["hip_left"], bones.meshes["hip_right"]
    d = right.signed_distance_mm(left.vertices_mm, cap_mm=SYMPHYSIS_GAP_MM + 1.0)
    closest = left.vertices_mm[np.argmin(d)]
    out["symphysis"] = closest - 0.5 * float(d.min()) * _gradient(right, closest[None])[0]
    up = bones.s1_up
    out["s1_endplate_centre"] = _top_surface(sacrum, bones.s1_centre, up)
    dorsal = np.array([0.0, 1.0, 0.0]) - up[1] * up
    just_below = out["s1_endplate_centre"] - 0.5 * up
    out["sacral_promontory"] = _crossing(lambda p: shapes[3].sdf(*p.T), just_below,
                                         just_below - 60.0 * dorsal / np.linalg.norm(dorsal))
    out["l5_body_centre"] = np.asarray(frames[0][0], np.float64)
    return out


def _top_surface(mesh: ClosedMesh, point: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Where the line through ``point`` along ``up`` leaves the mesh for the last time."""
    t = np.arange(-40.0, 40.0, 0.25)
    inside = mesh.winding_number(point + t[:, None] * up) > 0
    k = np.flatnonzero(inside[:-1] & ~inside[1:])[-1]
    return _crossing(mesh.signed_distance_mm, point + t[k] * up, point + t[k + 1] * up)


def _crossing(sdf, inside, outside, rounds: int = 5, samples: int = 64) -> np.ndarray:
    """The point of the segment from ``inside`` (sdf < 0) to ``outside`` (sdf >
    0) where the sdf (of points ``(N, 3)``) changes sign: the segment is
    sampled and cut down to the step holding the change, ``rounds`` times
    (64^5: ~1e-9 of its length)."""
    a, b = np.asarray(inside, np.float64), np.asarray(outside, np.float64)
    t = np.linspace(0.0, 1.0, samples + 1)
    for _ in range(rounds):
        negative = np.asarray(sdf(a + t[:, None] * (b - a))) < 0
        if not (negative[0] and not negative[-1]):
            raise RuntimeError("landmark search does not bracket the surface")
        k = np.flatnonzero(negative[:-1] & ~negative[1:])[0]
        a, b = a + t[k] * (b - a), a + t[k + 1] * (b - a)
    return 0.5 * (a + b)


def _foramen_centre(hip: ClosedMesh, head: np.ndarray, radius_mm: float) -> np.ndarray:
    """The middle of the obturator foramen, the hip bone's one hole through
    it, below the acetabulum. Seen along the normal of the bone around and below
    the socket (the pubic and ischial rami; the socket and the ilium left out)
    its shadow has a hole, the foramen; the point of the hole farthest from the
    shadow, at the depth of the rim of bone around it, is its middle. The view
    is then turned to face the rim and the point found again."""
    v = hip.vertices_mm
    below = hip.faces[np.all(v[hip.faces][:, :, 2] < head[2], axis=1)]
    far = np.linalg.norm(v - head, axis=1)
    ring = v[(v[:, 2] < head[2] - 10.0) & (far > radius_mm + 10.0) & (far < 90.0)]
    normal = np.linalg.svd(ring - ring.mean(axis=0))[2][2]
    for _ in range(2):
        point, rim = _hole_in_shadow(v, below, ring.mean(axis=0), normal)
        normal = np.linalg.svd(rim - rim.mean(axis=0))[2][2]
    return point


def _hole_in_shadow(vertices: np.ndarray, faces: np.ndarray, centre: np.ndarray, normal: np.ndarray,
                    step_mm: float = 1.0, half_mm: float = 70.0):
    """The largest hole in the shadow of the triangles ``faces`` seen along
    ``normal`` (on a ``step_mm`` grid of rays within ``half_mm`` of ``centre``):
    its point farthest from the shadow, at the mean depth of the vertices within
    3 mm of the hole's edge, and those vertices."""
    axes = np.linalg.svd(normal[None, :])[2]           # normal first, then two axes across it
    local = (vertices - centre) @ axes[[1, 2, 0]].T
    used = np.unique(faces)
    remap = np.zeros(len(vertices), dtype=np.int64)
    remap[used] = np.arange(len(used))
    sub = remap[faces]
    uv, depth = local[used, :2], local[used, 2]
    t = np.arange(-half_mm, half_mm + 0.5 * step_mm, step_mm)
    grid = np.stack(np.meshgrid(t, t, indexing="ij"), axis=-1).reshape(-1, 2)
    buckets, rays = _Buckets.of(uv, sub), _Rays(uv, depth, sub)
    ray, face = buckets.pairs(grid)
    hit = rays.crossings(grid[ray, 0], grid[ray, 1], face)[0]
    shadow = np.bincount(ray[hit], minlength=len(grid)).reshape(len(t), len(t)) > 0
    regions, _ = ndimage.label(~shadow)
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    sizes[np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]])] = 0   # open to the edge
    if sizes.max() == 0:
        raise RuntimeError("no hole through the hip bone below its acetabulum")
    hole = regions == np.argmax(sizes)
    inner = ndimage.distance_transform_edt(hole)
    middle = np.unravel_index(np.argmax(inner), inner.shape)
    edge = ndimage.distance_transform_edt(~hole) * step_mm
    at = np.clip(np.round((uv + half_mm) / step_mm).astype(np.int64), 0, len(t) - 1)
    near = edge[at[:, 0], at[:, 1]] < 3.0
    rim_depth = float(depth[near].mean())
    point = np.array([t[middle[0]], t[middle[1]], rim_depth]) @ axes[[1, 2, 0]] + centre
    return point, vertices[used][near]


def _soft_layout(landmarks: dict) -> SoftLayout:
    """Bladder behind the symphysis; the aorta in front of the lumbar spine
    (11 mm from L5's body) down to where the iliac arteries start, beside
    L5, and run along the pelvic brim to the groin in front of the femoral
    head; plaques on their walls; phleboliths beside the bladder."""
    sym, head = landmarks["symphysis"], landmarks["left_femoral_head_centre"]
    l5 = landmarks["l5_body_centre"]
    bladder = (tuple(sym + np.array([0.0, 38.0, 32.0])), (33.0, 25.0, 25.0))
    start = np.array([12.0, l5[1] - 38.0, l5[2] - 5.0])
    end = head + np.array([-18.0, -38.0, 8.0])
    radius = 4.0
    axis = (end - start) / np.linalg.norm(end - start)
    wall = np.cross(axis, [0.0, 1.0, 0.0])
    wall /= np.linalg.norm(wall)
    plaques = tuple((tuple(start + t * (end - start) + radius * wall), 1.5) for t in (0.35, 0.7))
    centre = np.asarray(bladder[0])
    phleboliths = ((tuple(centre + np.array([40.0, 18.0, -27.0])), 2.0),
                   (tuple(centre + np.array([-35.0, 13.0, -22.0])), 2.0))
    fork = np.array([0.0, start[1], start[2] + 5.0])
    aorta = (tuple(fork), tuple(fork + np.array([0.0, 0.0, 80.0])), 9.0)
    return SoftLayout(bladder, (tuple(start), tuple(end), radius), aorta, plaques, phleboliths)


# ---------------------------------------------------------------------------
# The phantom
# ---------------------------------------------------------------------------
def _lesion(anatomy: _Anatomy) -> np.ndarray:
    """Centre of the lytic lesion: in the left iliac wing, a third of the way
    from the supra-acetabular point to the SI joint, on the wing's mid-surface
    (inside the region the seed plan resects)."""
    lm = anatomy.landmarks
    p = lm["left_supra_acetabular"] + (lm["left_si_joint"] - lm["left_supra_acetabular"]) / 3.0
    mesh = anatomy.leaves["hip_left"].mesh
    for _ in range(20):       # walk down the distance to the deepest point nearby
        p = p - 0.5 * mesh.signed_distance_mm(p[None])[0] * _gradient(mesh, p[None])[0]
    return p


def pelvis_phantom(*, shape: Sequence[int], spacing_mm: Sequence[float], noise_hu: float = 20.0,
                              blur_mm: float = 0.6, seed: int = 0,
                              center_lps_mm: Sequence[float] | None = None, couch: bool = True,
                              lesion: bool = False, contrast: bool = False,
                              osteoporotic: bool = False) -> Phantom:
    """A CT of an anatomical pelvis: six labelled bones in soft tissue on a couch.

    ``shape`` (slices, rows, columns) and ``spacing_mm`` give the axial grid
    (:func:`~pipeline.phantom.analytic.axial_affine`), ``blur_mm`` the
    Gaussian point-spread and ``noise_hu`` the noise (``seed`` fixes it),
    ``couch`` puts the CT couch under the body; the variants are ``lesion``
    (a lytic sphere of ``LESION_RADIUS_MM`` in the left ilium: the label loses
    it, the intact truth is kept), ``contrast`` (enhanced arteries and bladder,
    calcifications: bright, not bone) and ``osteoporotic`` (thin-density bone).
    The default grid centre (``center_lps_mm=None``) is the middle of the
    anatomy from the lesser trochanters to the top of L5.

    Labels (:data:`LABEL_NAMES`): 1 hip_left, 2 hip_right (shape-model
    meshes), 3 sacrum (model S1-S3 with S4-S5 and the coccyx), 4 femur_left,
    5 femur_right, 6 lumbar (L5 and L4). Tissues: a ``CORTEX_MM`` (2 mm)
    cortex (``HU_CORTICAL``), thicker (+``HIP_CORTEX_EXTRA_MM``) around the
    acetabulum (a thinner cortex, as on iliac wings, moves the half-maximum
    surface outwards: +0.28 mm at 1 mm with this blur);
    hip bones ``HU_HIP_CANCELLOUS`` inside; the sacrum's interior is fatty
    marrow (``HU_SACRAL_MARROW``) and the vertebral bodies'
    ``HU_VERTEBRAL_CANCELLOUS``, both below a 200 HU threshold; femoral heads
    with a ``SUBCHONDRAL_MM`` shell over ``HU_FEMUR_CANCELLOUS``, shafts with a
    thick cortex around a marrow canal. Body, fat, muscle, bladder, couch
    and contrast from :mod:`pipeline.phantom.body`.

    Landmarks (``left_*`` / ``right_*``): ``*_femoral_head_centre`` =
    ``*_acetabulum_centre`` (the head is concentric with the sphere fitted to
    the socket), ``*_si_joint`` (in the joint space), ``*_sacral_ala`` (15 mm
    medial of it), ``*_supra_acetabular`` (12 mm above the socket roof),
    ``*_iliac_crest_top``, ``*_asis``, ``*_ischial_tuberosity`` (the hip mesh's
    highest, most anterior upper and lowest vertices: surface points),
    ``*_obturator_foramen_centre`` (the foramen's point farthest from bone),
    ``*_greater_trochanter_top`` (surface); ``symphysis`` (mid-gap),
    ``s1_endplate_centre`` and ``sacral_promontory`` (surface points),
    ``l5_body_centre``; with ``lesion``, ``lesion_centre``.
    """
    shape = _check_shape(shape)
    spacing = _check_vector("spacing_mm", spacing_mm, positive=True)
    blur = _check_scalar("blur_mm", blur_mm)
    noise = _check_scalar("noise_hu", noise_hu, strict=False)
    anatomy = _anatomy()
    centre = GRID_CENTRE_LPS_MM if center_lps_mm is None else center_lps_mm
    affine = axial_affine(shape, spacing, centre)
    shapes, landmarks = dict(anatomy.bones), {k: v.copy() for k, v in anatomy.landmarks.items()}
    intact = None
    if lesion:
        intact = dict(shapes)
        c = _lesion(anatomy)
        shapes[1] = _Difference(shapes[1], _sphere(tuple(c), LESION_RADIUS_MM))
        landmarks["lesion_centre"] = c
    fov_x_mm = affine[0, 3] - spacing[2] / 2.0, affine[0, 3] + (shape[2] - 0.5) * spacing[2]
    tissues = soft_tissues(fov_x_mm, couch, contrast, anatomy.soft)
    tissues += [_bone_tissue(k, shapes[k], anatomy, osteoporotic) for k in sorted(shapes)]
    grid = _Grid(shape, affine)
    # The meshes' distances are most of the work: on both cores, before the tissues read them.
    parallel(*(partial(leaf.field, grid, _far_mm(blur), _PHI_BAND * blur) for leaf in anatomy.leaves.values()))
    hu, labels = _render(grid, HU_AIR, tissues, blur)
    notes = (f"anatomical pelvis phantom (shape model of the JHU pelvis atlas, CC BY 4.0, not for "
             f"clinical use): blur {blur} mm, noise {noise} HU, seed {seed}, couch {'on' if couch else 'off'}"
             + (", lytic lesion in the left ilium" if lesion else "")
             + (", contrast-enhanced arteries and bladder, calcifications" if contrast else "")
             + (", osteoporotic bone" if osteoporotic else ""),)
    _add_noise(hu, noise, seed)
    volume = Volume(hu, affine, meta={"phantom": "anatomical pelvis"}, notes=notes)
    closed = {k: m.volume_mm3 for k, m in anatomy.meshes.items() if shapes[k] is anatomy.bones[k]}
    return Phantom(volume, labels, dict(LABEL_NAMES), landmarks, truth_area_mm2={},
                   truth_notes=("hip bones: volume of their meshes (exact); other bones sampled on a "
                                f"{_SAMPLED_VOLUME_STEP_MM:g} mm grid (relative error <= 0.15 %)"),
                   _shapes=shapes, _closed_form_volume_mm3=closed, _intact_shapes=intact)


# The grid centre that holds the lesser trochanters and L5 (LPS mm).
GRID_CENTRE_LPS_MM = (0.0, 20.0, 42.0)

_PRESETS = {
    # 116 slices hold the lesser trochanters to L4's lower half at 2 mm.
    # As a DICOM series: 116 x 184 x 232 int16 = 9.9 MB.
    "sample": {"shape": (116, 184, 232), "spacing_mm": (2.0, 1.5, 1.5),
               "noise_hu": 20.0, "blur_mm": 0.6, "seed": 0},
    "bench": {"shape": (300, 512, 512), "spacing_mm": (1.0, 0.8, 0.8),
              "noise_hu": 20.0, "blur_mm": 0.6, "seed": 0},
}


def preset(name: str) -> dict:
    """Keyword arguments of :func:`pelvis_phantom` for a named preset (a fresh
    dict): ``sample`` (the committed ``sample_ct/``) or ``bench`` (``make bench``).
    An unknown name is a ConfigError naming the choices."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown phantom preset {name!r}; choose one of {sorted(_PRESETS)}")
    return dict(_PRESETS[name])
