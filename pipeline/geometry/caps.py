"""Cut faces: each flat face that a plane cut leaves, triangulated afresh.

A cut closes the bone with faces lying exactly in the plane ("caps").
manifold3d fills them with triangles between the rim's own vertices, fanned
across the face: exact and flat, but most of them slivers (smallest angle under
5 degrees). Printers accept that; offsetting (fixation flanges, cutting
guides), remeshing and FEA do not.

Here every connected cap (an outline with its holes) is triangulated again: a
constrained Delaunay triangulation of its outline, refined with Steiner points
until no triangle has an angle below ``CAP_ANGLE_DEG`` (Ruppert's refinement,
as the CDT library implements it; PythonCDT, MPL-2.0). The refinement may
split an outline edge; the triangle across that edge (a side triangle of the
bone surface, or a triangle of the neighbouring cap where two cuts meet) is
split at the same points, so the mesh stays closed with no T-junction.
Where two caps meet, each one's refinement may split their shared edge again:
the caps are re-triangulated in turn until neither splits it (a few passes).

Before that, the outline is cleaned at float32 scale: a cut passing a bone
vertex closely across a sliver triangle leaves outline corners a few 1e-5 mm
apart, or almost in line with their neighbours, which an STL reader would
weld or turn into needles; those corners are collapsed onto their neighbours.

The solids that share the caps (host and implant) are treated together:
every decision (a collapse, a split of the outline) is made only where it
suits both, and the triangulation depends only on the outline's positions,
read in a canonical order. So each host cut face and the matching implant
contact face come out as the same triangles, mirrored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pythoncdt as cdt
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..config import Plane
from .meshes import MIN_ALTITUDE_MM, corner_max, edge_lengths

# Faces that are not on a cut plane carry this in place of a plane index.
NO_CAP = -1
# The refinement's target: no cap triangle with an angle below this. Ruppert's
# refinement provably ends up to ~20.7 degrees; CDT reaches 25 on bone
# outlines in a few milliseconds, which leaves room above the 20 degrees that
# the cut faces must meet.
CAP_ANGLE_DEG = 25.0
# Outline edges shorter than this (mm) are collapsed before the cap is
# triangulated: where a cut passes a bone vertex closely across a sliver
# triangle, it leaves two outline corners a few 1e-5 mm apart.
SHORTEST_OUTLINE_EDGE_MM = 1e-3
# An outline corner this close (mm) to the straight line through its two
# neighbours, one of them nearer than the refinement's shortest edge, is
# collapsed onto that one: the three would otherwise be left to make a needle
# triangle (pipeline.geometry.meshes.MIN_ALTITUDE_MM).
STRAIGHT_CORNER_MM = 1e-4
# Cut-face corners closer than this (mm) to another vertex are welded to it
# (in memory, before anything else): a third of a float32 step at 256-512 mm,
# where every reader would weld them.
WELD_CORNERS_MM = 1e-5
# A corner of one side's outline this close (mm) to an edge of the other
# side's outline lies on it.
ON_SEGMENT_MM = 1e-9
# Collapses touching the same corner wait for the next round; a few rounds
# clear the clusters a cut leaves around a bone vertex it passes closely.
MERGE_ROUNDS = 4
# Where the refinement splits an outline edge, the triangle across it is
# split into a fan; a split that would leave a piece of the fan thinner than
# this (mm) is not made (the triangle across lies nearly in the plane).
FAN_FLOOR_MM = 10 * MIN_ALTITUDE_MM
# The refinement leaves alone triangles with an edge shorter than this
# fraction of the outline's median edge. Near a very short outline edge it
# would otherwise grade down to that edge's size, splitting the outline and
# the side triangles across it into needles.
CAP_MIN_EDGE_FRACTION = 0.1
# At most this many Steiner points per outline vertex (and a few hundred more):
# a bound on the work for an outline with a sharp corner, which refinement can
# never fix.
STEINER_PER_OUTLINE_VERTEX = 20
# Caps that share an edge (where two cuts meet) are re-triangulated in turn
# until neither splits that edge; at most this many passes per plane.
PASSES_PER_PLANE = 4


@dataclass
class Side:
    """One closed solid whose cut faces are triangulated afresh: its vertices,
    faces, each face's plane index (or ``NO_CAP``), and which way its cut
    faces face (+1: along the plane normals, as the host's; -1: against them,
    as the implant's). Changed in place."""
    vertices: np.ndarray
    faces: np.ndarray
    cap_of_face: np.ndarray
    facing: int

    def __post_init__(self) -> None:
        self.vertices = np.array(self.vertices, dtype=np.float64)
        self.faces = np.array(self.faces, dtype=np.int64)
        self.cap_of_face = np.array(self.cap_of_face, dtype=np.int64)


def retriangulate_caps(sides: list[Side], planes: tuple[Plane, ...]) -> None:
    """Replace the cap faces of ``sides`` (solids cut by the same ``planes``)
    by refined constrained Delaunay triangulations; unreferenced vertices are
    dropped. Caps whose outline all sides share get the same triangles."""
    for side in sides:
        _weld_close_corners(side, planes)
    # Everything below changes only the cut faces and the two rings of
    # triangles around them: work on those alone, the rest is put back after.
    far = [_split_off_far_faces(side) for side in sides]
    queue = sorted({int(k) for s in sides for k in np.unique(s.cap_of_face[s.cap_of_face != NO_CAP])})
    for _ in range(PASSES_PER_PLANE * max(len(queue), 1)):
        if not queue:
            break
        k = queue.pop(0)
        groups = [sides] if _align_outlines(sides, k) else [[s] for s in sides]
        touched = set()
        for group in groups:
            _merge_outline_corners(group, k)
            touched |= _triangulate_plane(group, k, planes[k])
        queue += [j for j in sorted(touched) if j != k and j not in queue]
    for side, (faces, caps) in zip(sides, far):
        _flip_flat_needles(side)
        side.faces = np.concatenate([faces, side.faces])
        side.cap_of_face = np.concatenate([caps, side.cap_of_face])
        used = np.zeros(len(side.vertices), dtype=bool)
        used[side.faces.ravel()] = True
        side.vertices, side.faces = side.vertices[used], (np.cumsum(used) - 1)[side.faces]


def _split_off_far_faces(side: Side) -> tuple[np.ndarray, np.ndarray]:
    """Keep in ``side`` the cut faces and the faces within two rings of their
    corners (every face a collapse, split or flip here can reach); return the
    others (faces, their plane indices). Vertex ids stay as they are."""
    f = side.faces
    near = np.zeros(len(side.vertices), dtype=bool)
    near[f[side.cap_of_face != NO_CAP].ravel()] = True
    for _ in range(2):
        ring = near[f].any(axis=1)
        near[f[ring].ravel()] = True
    close = near[f].any(axis=1)
    far = (f[~close], side.cap_of_face[~close])
    side.faces, side.cap_of_face = f[close], side.cap_of_face[close]
    return far


def _flip_flat_needles(side: Side) -> None:
    """Flip the longest edge of each side triangle next to a cut face that is
    a flat needle (thinner than ``FAN_FLOOR_MM`` with its third corner on that
    edge: the cut pierced a bone edge there), when both triangles it then
    makes are fatter. No vertex moves."""
    f, cap = side.faces.copy(), side.cap_of_face
    side.faces = f  # a new array: remembered outlines do not outlive the flips
    on_cut = np.zeros(len(side.vertices), dtype=bool)
    on_cut[f[cap != NO_CAP].ravel()] = True
    for _ in range(MERGE_ROUNDS):
        near = np.flatnonzero((cap == NO_CAP) & on_cut[f].any(axis=1))
        thin = near[_altitudes(side.vertices, f[near]) < FAN_FLOOR_MM]
        if not thin.size:
            return
        n = len(side.vertices)
        edges = _directed_edges(f)
        keys = edges[:, 0] * n + edges[:, 1]
        order = np.argsort(keys)
        flipped = False
        for face in thin.tolist():
            t = side.vertices[f[face]]
            slot = int(np.argmax(np.linalg.norm(t - np.roll(t, -1, axis=0), axis=1)))
            p, q, r = f[face, slot], f[face, (slot + 1) % 3], f[face, (slot + 2) % 3]
            hit = np.searchsorted(keys[order], q * n + p)
            if hit >= len(order) or keys[order[hit]] != q * n + p:
                continue
            other = int(order[hit] // 3)
            s_ = int(sum(f[other]) - p - q)
            if cap[other] != NO_CAP or np.isin(s_ * n + r, keys) or np.isin(r * n + s_, keys):
                continue
            new = np.array([[q, r, s_], [r, p, s_]])
            old_thinnest = _altitudes(side.vertices, f[[face, other]]).min()
            normals = _face_normals(side.vertices, new)
            if (_altitudes(side.vertices, new).min() <= old_thinnest
                    or (normals @ _face_normals(side.vertices, f[[other]])[0] <= 0).any()):
                continue
            f[face], f[other] = new
            keys[3 * face:3 * face + 3] = new[0] * n + np.roll(new[0], -1)
            keys[3 * other:3 * other + 3] = new[1] * n + np.roll(new[1], -1)
            order = np.argsort(keys)
            flipped = True
        if not flipped:
            return


def _weld_close_corners(side: Side, planes: tuple[Plane, ...]) -> None:
    """Weld the cut faces' corners that lie within ``WELD_CORNERS_MM`` of
    another vertex, as a reader would, but in memory and onto the member
    lying on the most cut planes (where two cuts meet), and drop the
    triangles the welding collapses. Where two cuts meet, a bone edge almost
    in a plane makes manifold3d write one corner two or three times, 1e-8 to
    1e-7 mm apart, each copy on one plane only."""
    v, f, cap = side.vertices, side.faces, side.cap_of_face
    corners = np.unique(f[cap != NO_CAP])
    if not corners.size:
        return
    # Only vertices this close to a plane can be this close to a corner.
    candidates = np.flatnonzero((np.abs(np.stack([p.signed_distance_mm(v) for p in planes])) < WELD_CORNERS_MM)
                                .any(axis=0))
    near = cKDTree(v[candidates]).query_ball_point(v[corners], WELD_CORNERS_MM)
    rows = [(c, int(candidates[x])) for c, found in zip(corners.tolist(), near) for x in found
            if candidates[x] != c]
    if not rows:
        return
    rows = np.array(rows)
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows[:, 0], rows[:, 1])), shape=(len(v), len(v)))
    _, group = connected_components(graph, directed=False)
    planes_at = _planes_at(side)
    on_planes = np.array([bin(x).count("1") for x in planes_at.tolist()])
    # Per group, the member on most planes, then the first by position.
    order = np.lexsort((*v.T[::-1], -on_planes, group))
    first = np.ones(len(order), dtype=bool)
    first[1:] = group[order[1:]] != group[order[:-1]]
    keeper = np.empty(group.max() + 1, dtype=np.int64)
    keeper[group[order[first]]] = order[first]
    # The keeper goes onto every plane its group lies on (each copy was on one).
    welded_together = np.flatnonzero(np.bincount(group) > 1)
    union = np.zeros(group.max() + 1, dtype=np.int64)
    np.bitwise_or.at(union, group, planes_at)
    normals = np.array([p.normal_lps for p in planes])
    offsets = np.array([p.offset_mm for p in planes])
    for g in welded_together.tolist():
        on = [j for j in range(len(planes)) if union[g] >> j & 1]
        if on:
            k = keeper[g]
            v[k] += np.linalg.pinv(normals[on]) @ (offsets[on] - normals[on] @ v[k])
    welded = keeper[group][f]
    whole = (welded[:, 0] != welded[:, 1]) & (welded[:, 1] != welded[:, 2]) & (welded[:, 2] != welded[:, 0])
    side.faces, side.cap_of_face = welded[whole], cap[whole]


def _planes_at(side: Side) -> np.ndarray:
    """Per vertex, a bit mask of the planes whose cut faces it is a corner of."""
    mask = np.zeros(len(side.vertices), dtype=np.int64)
    for j in np.unique(side.cap_of_face[side.cap_of_face != NO_CAP]).tolist():
        mask[side.faces[side.cap_of_face == j].ravel()] |= 1 << j
    return mask


@dataclass
class _Outline:
    """The outline of one side's cap on one plane."""
    edges: np.ndarray        # (m, 2) vertex ids, in the cap faces' direction
    region: np.ndarray       # (m,) which connected cap each edge bounds
    across: np.ndarray       # (m, 2) the face across each edge and the edge's slot in it
    cap_faces: np.ndarray    # the cap's faces
    face_region: np.ndarray  # which connected cap each of them belongs to


def _outline(side: Side, k: int) -> _Outline:
    """The outline of ``side``'s cap on plane ``k``, remembered while the
    side's face array stays the same object (every change of topology here
    replaces it)."""
    cache = side.__dict__.setdefault("_outlines", {})
    found = cache.get(k)
    if found is None or found[0] is not side.faces:
        found = cache[k] = (side.faces, _find_outline(side, k))
    return found[1]


def _find_outline(side: Side, k: int) -> _Outline:
    f, n = side.faces, len(side.vertices)
    selected = np.flatnonzero(side.cap_of_face == k)
    edges = _directed_edges(f[selected])             # face i's edges at 3i..3i+2
    keys = edges[:, 0] * n + edges[:, 1]
    reverse = edges[:, 1] * n + edges[:, 0]
    inner = np.isin(reverse, keys)
    # Faces sharing an inner edge belong to one connected cap.
    order = np.argsort(keys)
    partner = order[np.searchsorted(keys[order], reverse[inner])]
    rows = np.flatnonzero(inner) // 3
    m = len(selected)
    graph = sparse.coo_matrix((np.ones(rows.size), (rows, partner // 3)), shape=(m, m))
    face_region = connected_components(graph, directed=False)[1]
    outline = edges[~inner]
    # The face across outline edge a -> b holds b -> a; look among the faces
    # touching the outline only.
    on_outline = np.zeros(n, dtype=bool)
    on_outline[outline.ravel()] = True
    near = np.flatnonzero(on_outline[f].any(axis=1))
    near_edges = _directed_edges(f[near])
    near_keys = near_edges[:, 0] * n + near_edges[:, 1]
    order = np.argsort(near_keys)
    hit = order[np.searchsorted(near_keys[order], outline[:, 1] * n + outline[:, 0])]
    return _Outline(edges=outline, region=face_region[np.flatnonzero(~inner) // 3],
                    across=np.stack([near[hit // 3], hit % 3], axis=1), cap_faces=selected,
                    face_region=face_region)


def _key(point: np.ndarray) -> bytes:
    return np.ascontiguousarray(point, dtype=np.float64).tobytes()


def _align_outlines(sides: list[Side], k: int) -> bool:
    """Make every side's outline of the cap on plane ``k`` the same (edges
    between the same positions), and say whether that worked. manifold3d may
    keep on one side's outline a corner that lies on a straight edge of the
    other's: that edge is split there (its two triangles with it)."""
    outlines = [_outline(side, k) for side in sides]
    corners = [{_key(side.vertices[i]): side.vertices[i] for i in np.unique(o.edges)} for side, o in zip(sides, outlines)]
    everywhere = {key: point for found in corners for key, point in found.items()}
    for side, o, found in zip(sides, outlines, corners):
        missing = np.array([point for key, point in everywhere.items() if key not in found])
        if len(missing):
            _insert_on_outline(side, o, missing)
    edge_sets = []
    for side in sides:
        edges = _outline(side, k).edges
        edge_sets.append({frozenset((_key(side.vertices[a]), _key(side.vertices[b]))) for a, b in edges.tolist()})
    return all(x == edge_sets[0] for x in edge_sets[1:])


def _insert_on_outline(side: Side, outline: _Outline, points: np.ndarray) -> None:
    """Split the outline edges of ``side`` at ``points`` lying on them (to
    1e-9 mm), with the cap triangle and the triangle across each."""
    a, b = side.vertices[outline.edges[:, 0]], side.vertices[outline.edges[:, 1]]
    d = b - a
    splits: dict[int, dict[int, list[int]]] = {}
    new_points = []
    for e in range(len(outline.edges)):
        if not d[e].any():
            continue
        t = (points - a[e]) @ d[e] / (d[e] @ d[e])
        inside = (t > 0) & (t < 1) & (np.linalg.norm(a[e] + t[:, None] * d[e] - points, axis=1) < ON_SEGMENT_MM)
        if not inside.any():
            continue
        order = np.argsort(t[inside])
        ids = len(side.vertices) + len(new_points) + np.arange(inside.sum())
        new_points.extend(points[inside][order])
        cap_face = outline.cap_faces[np.flatnonzero(
            (side.faces[outline.cap_faces] == outline.edges[e, 0]).any(axis=1)
            & (side.faces[outline.cap_faces] == outline.edges[e, 1]).any(axis=1))[0]]
        slot = int(np.flatnonzero(side.faces[cap_face] == outline.edges[e, 0])[0])
        splits.setdefault(int(cap_face), {})[slot] = ids.tolist()
        splits.setdefault(int(outline.across[e, 0]), {})[int(outline.across[e, 1])] = ids[::-1].tolist()
    if not new_points:
        return
    side.vertices = np.concatenate([side.vertices, np.asarray(new_points)])
    faces, caps, centroids, _ = _split_faces(side, splits)
    if centroids:
        side.vertices = np.concatenate([side.vertices, np.asarray(centroids)])
    keep = np.ones(len(side.faces), dtype=bool)
    keep[list(splits)] = False
    side.faces = np.concatenate([side.faces[keep], faces])
    side.cap_of_face = np.concatenate([side.cap_of_face[keep], caps])


def _ids_by_position(side: Side, ids: np.ndarray) -> dict[bytes, int]:
    return {_key(side.vertices[i]): int(i) for i in np.unique(ids)}


def _merge_outline_corners(sides: list[Side], k: int) -> None:
    """Collapse outline corners (see :func:`_merge_once`) until none is left
    to collapse: neighbouring collapses wait for the next round. First each
    side's vertices off the outline but closer than
    ``SHORTEST_OUTLINE_EDGE_MM`` to one of its corners go into that corner
    (manifold3d leaves such pairs where a bone edge lies in the plane); that
    leaves the outline as it is."""
    for side in sides:
        for _ in range(MERGE_ROUNDS):
            if not _absorb_near_corners(side, k):
                break
    for _ in range(MERGE_ROUNDS):
        if not _merge_once(sides, k):
            break


def _merge_candidates(side: Side, k: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The collapses :func:`_merge_once` asks for on one side's outline. A
    corner may only move onto a point of every cut plane it lies on: onto a
    corner lying on those planes too (where two cuts meet), or to the
    midpoint of an edge whose corners lie on the same planes."""
    v, f = side.vertices, side.faces
    outline = _outline(side, k).edges
    if not len(outline):
        return []
    planes_at = _planes_at(side)

    def onto(a: int, b: int):
        """Where a and b may meet, or None."""
        if planes_at[a] == planes_at[b]:
            return (v[a] + v[b]) / 2
        if planes_at[b] & ~planes_at[a] == 0:
            return v[a]
        if planes_at[a] & ~planes_at[b] == 0:
            return v[b]
        return None

    merges = []
    length = np.linalg.norm(v[outline[:, 0]] - v[outline[:, 1]], axis=1)
    reach = _shortest_refined_edge_mm(v, outline)
    short = (length < SHORTEST_OUTLINE_EDGE_MM) | (_shortest_edge_of_a_needle(v, f, outline) & (length < reach))
    for p, q in outline[short].tolist():
        target = onto(p, q)
        if target is not None:
            merges.append((v[p], v[q], target))
    # Each corner b with the corners before (a) and after (c) it on the outline.
    following = dict(outline.tolist())
    a, b = outline[:, 0], outline[:, 1]
    c = np.array([following.get(x, -1) for x in b.tolist()], dtype=np.int64)
    ok = (c >= 0) & (c != a)
    a, b, c = a[ok], b[ok], c[ok]
    chord = v[c] - v[a]
    off = np.linalg.norm(np.cross(chord, v[b] - v[a]), axis=1) / np.maximum(np.linalg.norm(chord, axis=1), 1e-300)
    keep = np.where(np.linalg.norm(v[a] - v[b], axis=1) <= np.linalg.norm(v[c] - v[b], axis=1), a, c)
    straight = ((off < STRAIGHT_CORNER_MM) & (np.linalg.norm(v[keep] - v[b], axis=1) < reach)
                & (planes_at[b] & ~planes_at[keep] == 0))
    merges += [(v[x], v[y], v[x]) for x, y in zip(keep[straight].tolist(), b[straight].tolist())]
    return merges


def _absorb_near_corners(side: Side, k: int) -> bool:
    v, f, cap = side.vertices, side.faces, side.cap_of_face
    outline = _outline(side, k).edges
    corners = np.unique(outline)
    if not corners.size:
        return False
    on_outline = np.zeros(len(v), dtype=bool)
    on_outline[corners] = True
    pinned = np.zeros(len(v), dtype=bool)
    pinned[f[cap != NO_CAP].ravel()] = True  # on a cut face: leave it to the outline's own clean-up
    edges = _directed_edges(f)
    pairs = edges[on_outline[edges[:, 0]] & ~on_outline[edges[:, 1]] & ~pinned[edges[:, 1]]]
    length = np.linalg.norm(v[pairs[:, 0]] - v[pairs[:, 1]], axis=1)
    reach = _shortest_refined_edge_mm(v, outline)
    pairs = pairs[(length < SHORTEST_OUTLINE_EDGE_MM) | (_shortest_edge_of_a_needle(v, f, pairs) & (length < reach))]
    if not len(pairs):
        return False
    state = _CollapseState(side, pairs.ravel().tolist(), k)
    absorbed = False
    for p, q in pairs.tolist():
        plan = state.plan(p, q, v[p].copy())
        if plan is not None:
            state.apply(plan, v[p].copy())
            absorbed = True
    state.finish()
    return absorbed


def _merge_once(sides: list[Side], k: int) -> bool:
    """Clean the outline of cap ``k`` at float32 scale by collapsing outline
    edges: an edge shorter than ``SHORTEST_OUTLINE_EDGE_MM``, or than the
    refinement's shortest edge if it is the shortest edge of a triangle
    thinner than ``FAN_FLOOR_MM`` (one corner moves
    to its midpoint, or onto the other corner where that one also lies on
    another cut plane), and a corner lying within ``STRAIGHT_CORNER_MM`` of the
    line through its two neighbours, one of them closer than the refinement's
    shortest edge (it moves onto that one: the refinement would leave the
    three to make a needle; along a longer edge it splits the edge instead).
    The two triangles on the edge go. A collapse is made on every side or on
    none; not where it would pinch a side's surface (the corners share more
    neighbours than the two triangles' third corners), turn a triangle over
    or make one a needle."""
    merges = {}  # (position kept, position removed, where the kept one goes), once per pair of positions
    for side in sides:
        for p, q, target in _merge_candidates(side, k):
            merges.setdefault(frozenset((_key(p), _key(q))), (p, q, target))
    merges = list(merges.values())
    if not merges:
        return False
    by_position = [_ids_by_position(side, _outline(side, k).edges) for side in sides]
    states = [_CollapseState(side, [ids[_key(x)] for p, q, _ in merges for x in (p, q) if _key(x) in ids], k)
              for side, ids in zip(sides, by_position)]
    # In an order set by position alone, so every side sees the same sequence.
    where = np.array([(p + q) / 2 for p, q, _ in merges])
    merged = False
    for i in np.lexsort(where.T[::-1]).tolist():
        p, q, target = merges[i]
        plans = [state.plan(ids.get(_key(p)), ids.get(_key(q)), target) for state, ids in zip(states, by_position)]
        if all(plan is not None for plan in plans):
            for state, plan in zip(states, plans):
                state.apply(plan, target)
            merged = True
    for state in states:
        state.finish()
    return merged


class _CollapseState:
    """Edge collapses on one side, with the faces around the corners involved."""

    def __init__(self, side: Side, involved: list[int], k: int) -> None:
        self.side = side
        self.k = k
        self.on_cap = np.zeros(len(side.vertices), dtype=bool)
        self.on_cap[side.faces[side.cap_of_face == k].ravel()] = True
        self.alive = np.ones(len(side.faces), dtype=bool)
        self.done: set[int] = set()
        touches = np.zeros(len(side.vertices), dtype=bool)
        touches[involved] = True
        self.around: dict[int, list[int]] = {}
        for face in np.flatnonzero(touches[side.faces].any(axis=1)).tolist():
            for corner in side.faces[face].tolist():
                if touches[corner]:
                    self.around.setdefault(corner, []).append(face)

    def plan(self, p: int | None, q: int | None, target: np.ndarray):
        """Collapsing q into p, p moving to ``target``: (p, q, faces on the
        edge, faces changed, their new corners), or None where it is not made."""
        if p is None or q is None or p in self.done or q in self.done:
            return None
        v, f = self.side.vertices, self.side.faces
        faces_p = [x for x in self.around[p] if self.alive[x]]
        faces_q = [x for x in self.around[q] if self.alive[x]]
        on_edge = set(faces_p) & set(faces_q)
        thirds = {c for x in on_edge for c in f[x].tolist()} - {p, q}
        if len(on_edge) != 2 or (set(f[faces_p].ravel()) & set(f[faces_q].ravel())) - {p, q} != thirds:
            return None
        changed = [x for x in set(faces_p) | set(faces_q) if x not in on_edge]
        moved = np.where(f[changed] == q, p, f[changed])
        # The cap's own faces are triangulated afresh: only the others must
        # keep their shape, and none may come to lie in the cap's plane.
        kept = self.side.cap_of_face[changed] != self.k
        before, after = v[f[changed][kept]], v[moved[kept]]
        after[moved[kept] == p] = target
        turned = np.einsum("ij,ij->i", _triangle_normals(after), _triangle_normals(before)) <= 0
        thinned = _triangle_altitudes(after) < np.minimum(_triangle_altitudes(before), FAN_FLOOR_MM)
        flattened = self.on_cap[moved[kept]].all(axis=1)
        if (turned | thinned | flattened).any():
            return None
        return p, q, on_edge, changed, moved

    def apply(self, plan, target: np.ndarray) -> None:
        p, q, on_edge, changed, moved = plan
        self.side.vertices[p] = target
        self.side.faces[changed] = moved
        self.alive[list(on_edge)] = False
        self.around[p] += [x for x in self.around[q] if self.alive[x] and x not in self.around[p]]
        self.done.update((p, q))

    def finish(self) -> None:
        self.side.faces = self.side.faces[self.alive]
        self.side.cap_of_face = self.side.cap_of_face[self.alive]


def _triangulate_plane(sides: list[Side], k: int, plane: Plane) -> set[int]:
    """Triangulate every connected cap on plane ``k`` once, from the first
    side's outline, and put the triangles into every side. Returns the other
    planes whose caps had triangles split."""
    outlines = [_outline(side, k) for side in sides]
    base, base_outline = sides[0], outlines[0]
    # Per side, each outline edge's corners as position keys.
    keyed = [[(_key(side.vertices[a]), _key(side.vertices[b])) for a, b in o.edges.tolist()]
             for side, o in zip(sides, outlines)]
    work = [{"points": [], "faces": [], "splits": {}, "replaced": [], "next": len(s.vertices)} for s in sides]
    for r in range(int(base_outline.region.max()) + 1 if base_outline.region.size else 0):
        rim = np.unique(base_outline.edges[base_outline.region == r])
        corners = np.unique(base.vertices[rim], axis=0)   # sorted by position: the canonical order
        if len(corners) < len(rim):
            continue  # two corners in one place: left as the cut made it
        index = {_key(c): i for i, c in enumerate(corners)}
        # Each side's edges of this cap: canonical (lo, hi) -> (edge number, whether a -> b runs lo -> hi).
        edges_of = []
        for keys in keyed:
            mine = {}
            for e, (ka, kb) in enumerate(keys):
                if ka in index and kb in index:
                    a, b = index[ka], index[kb]
                    mine[(min(a, b), max(a, b))] = (e, a < b)
            edges_of.append(mine)
        apexes = {pair: [side.vertices[side.faces[o.across[e, 0], (o.across[e, 1] + 2) % 3]]
                         for side, o, mine in zip(sides, outlines, edges_of) for e, _ in [mine[pair]]]
                  for pair in edges_of[0]}
        result = _triangulate_outline(corners, apexes, plane)
        if result is None:
            continue
        points, triangles, along = result
        for side, o, mine, w in zip(sides, outlines, edges_of, work):
            e0 = next(iter(mine.values()))[0]
            rim_ids = np.empty(len(corners), dtype=np.int64)
            for (lo, hi), (e, forward) in mine.items():
                a, b = o.edges[e]
                rim_ids[lo], rim_ids[hi] = (a, b) if forward else (b, a)
            local_to_global = np.concatenate([rim_ids, w["next"] + np.arange(len(points))])
            faces = local_to_global[triangles]
            w["points"].append(points)
            w["faces"].append(faces if side.facing > 0 else faces[:, ::-1])
            w["next"] += len(points)
            w["replaced"].append(o.cap_faces[o.face_region == o.region[e0]])
            for pair, new in along.items():
                e, forward = mine[pair]
                # The face across holds the edge the other way round: from b to a.
                chain = local_to_global[new[::-1] if forward else new]
                w["splits"].setdefault(int(o.across[e, 0]), {})[int(o.across[e, 1])] = chain.tolist()
    touched: set[int] = set()
    for side, w in zip(sides, work):
        if not w["faces"]:
            continue
        keep = np.ones(len(side.faces), dtype=bool)
        keep[np.concatenate(w["replaced"])] = False
        side.vertices = np.concatenate([side.vertices, *w["points"]])
        split_faces, split_caps, centroids, hit = _split_faces(side, w["splits"])
        touched |= hit
        if centroids:
            side.vertices = np.concatenate([side.vertices, np.asarray(centroids)])
        keep[list(w["splits"])] = False
        cap_faces = np.concatenate(w["faces"])
        side.faces = np.concatenate([side.faces[keep], cap_faces, split_faces])
        side.cap_of_face = np.concatenate([side.cap_of_face[keep], np.full(len(cap_faces), k), split_caps])
    return touched


def _triangulate_outline(corners: np.ndarray, apexes: dict[tuple[int, int], list[np.ndarray]], plane: Plane):
    """Refined constrained Delaunay triangulation of one cap's outline.

    ``corners``: the outline's corners (C, 3), sorted by position; ``apexes``:
    for each outline edge (lo, hi) (indices into ``corners``, lo < hi), the
    third corner of the triangle across it on each side, which is split where
    the refinement splits the edge. Where that would leave a piece thinner
    than ``FAN_FLOOR_MM`` on any side, the edge is kept whole and the cap
    triangulated again with the refinement's other points.

    Returns (new points (P, 3), triangles (T, 3) facing along the plane
    normal, in indices into ``corners`` followed by the new points, {outline
    edge (lo, hi): indices of the new points on it, from lo to hi}), or None
    when the outline cannot be triangulated as given (two corners in the
    same place in the plane)."""
    u, w = plane.in_plane_axes()
    origin = corners.mean(axis=0)
    xy = (corners - origin) @ np.stack([u, w], axis=1)
    if len(np.unique(xy, axis=0)) < len(xy):
        return None
    edges = np.array(sorted(apexes), dtype=np.int64)
    t = _constrained(xy, edges)
    outside = t.collect_outer_triangles_and_holes()
    lengths = np.linalg.norm(corners[edges[:, 0]] - corners[edges[:, 1]], axis=1)
    t.refine_triangles(STEINER_PER_OUTLINE_VERTEX * len(corners) + 500, cdt.RefinementCriterion.SMALLEST_ANGLE,
                       cdt.deg_to_rad(CAP_ANGLE_DEG), outside, CAP_MIN_EDGE_FRACTION * float(np.median(lengths)))
    t.finalize_triangulation(outside)
    out = t.vertices_array()
    out_xy = np.stack([out["x"], out["y"]], axis=1)
    triangles = t.triangles_array()["vertices"].astype(np.int64)
    c = len(corners)
    points = origin + out_xy[c:] @ np.stack([u, w])
    along = _points_on_outline(t, out_xy, c)
    # The fans the splits would make: (piece start, piece end, apex, edge) rows.
    starts, ends, tips, owner = [], [], [], []
    for (lo, hi), ids in along.items():
        d = out_xy[hi] - out_xy[lo]
        s = (out_xy[ids] - out_xy[lo]) @ d / (d @ d)
        # Exactly on the outline edge (the triangle across is split at these
        # points): the same arithmetic on every side, so they agree to the bit.
        points[ids - c] = corners[lo] + s[:, None] * (corners[hi] - corners[lo])
        chain = np.concatenate([corners[lo][None], points[ids - c], corners[hi][None]])
        for apex in apexes[(lo, hi)]:
            starts.append(chain[:-1])
            ends.append(chain[1:])
            tips.append(np.broadcast_to(apex, chain[1:].shape))
            owner += [(lo, hi)] * (len(chain) - 1)
    dropped = set()
    if starts:
        pieces = np.stack([np.concatenate(starts), np.concatenate(ends), np.concatenate(tips)], axis=1)
        thin = _altitudes(pieces.reshape(-1, 3), np.arange(3 * len(pieces)).reshape(-1, 3)) < FAN_FLOOR_MM
        for key in {owner[i] for i in np.flatnonzero(thin)}:
            dropped.update(along[key].tolist())
    if dropped:
        kept = np.array([i for i in range(len(out_xy)) if i not in dropped])
        renumber = np.full(len(out_xy), -1)
        renumber[kept] = np.arange(len(kept))
        pieces = []
        for lo, hi in edges.tolist():
            ids = along.get((lo, hi))
            chain = [lo, hi] if ids is None or ids[0] in dropped else [lo, *ids.tolist(), hi]
            pieces += list(zip(chain[:-1], chain[1:]))
        t = _constrained(out_xy[kept], renumber[np.array(pieces)])
        t.erase_outer_triangles_and_holes()
        triangles = kept[t.triangles_array()["vertices"].astype(np.int64)]
        along = {key: ids for key, ids in along.items() if ids[0] not in dropped}
    # u x w = normal: counter-clockwise in (u, w) faces along the normal.
    p = out_xy[triangles]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    clockwise = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0] < 0
    triangles[clockwise] = triangles[clockwise][:, ::-1]
    return points, triangles, along


def _constrained(xy: np.ndarray, edges: np.ndarray) -> cdt.Triangulation:
    t = cdt.Triangulation(cdt.VertexInsertionOrder.AS_PROVIDED, cdt.IntersectingConstraintEdges.NOT_ALLOWED, 0.0)
    t.insert_vertices(xy)
    t.insert_edges(np.asarray(edges, dtype=np.uintc))
    return t


def _points_on_outline(t: cdt.Triangulation, xy: np.ndarray, corner_count: int) -> dict[tuple[int, int], np.ndarray]:
    """New points that the refinement put on each outline edge (lo, hi),
    ordered from lo to hi."""
    found: dict[tuple[int, int], set[int]] = {}
    for piece, originals in t.piece_to_originals.items():
        for original in originals:
            key = (min(original.v1, original.v2), max(original.v1, original.v2))
            found.setdefault(key, set()).update(i for i in (piece.v1, piece.v2) if i >= corner_count)
    along = {}
    for (lo, hi), ids in found.items():
        if ids:
            ids = np.fromiter(ids, dtype=np.int64)
            along[(lo, hi)] = ids[np.argsort((xy[ids] - xy[lo]) @ (xy[hi] - xy[lo]))]
    return along


def _split_faces(side: Side, splits: dict[int, dict[int, list[int]]]):
    """Faces with points inserted on their edges, re-triangulated: a fan from
    the opposite corner when one edge is split, from the centroid otherwise.
    Returns (faces, their plane indices, centroids to append, planes whose
    cap faces were split)."""
    out_faces, out_caps, centroids, touched = [], [], [], set()
    first_new = len(side.vertices)
    for face, by_edge in splits.items():
        corners = side.faces[face]
        label = int(side.cap_of_face[face])
        if label != NO_CAP:
            touched.add(label)
        if len(by_edge) == 1:
            (slot, points), = by_edge.items()
            chain = [corners[slot], *points, corners[(slot + 1) % 3]]
            apex = corners[(slot + 2) % 3]
            out_faces += [(chain[i], chain[i + 1], apex) for i in range(len(chain) - 1)]
        else:
            ring = []
            for slot in range(3):
                ring += [corners[slot], *by_edge.get(slot, [])]
            centre = first_new + len(centroids)
            centroids.append(side.vertices[corners].mean(axis=0))
            out_faces += [(ring[i], ring[(i + 1) % len(ring)], centre) for i in range(len(ring))]
        out_caps += [label] * (len(out_faces) - len(out_caps))
    return (np.asarray(out_faces, dtype=np.int64).reshape(-1, 3), np.asarray(out_caps, dtype=np.int64),
            centroids, touched)


def _shortest_edge_of_a_needle(v: np.ndarray, f: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Whether each edge (either way round) is the shortest edge of a
    triangle thinner than ``FAN_FLOOR_MM``."""
    if not len(edges):
        return np.zeros(0, dtype=bool)
    n = len(v)
    touching = np.zeros(n, dtype=bool)
    touching[edges.ravel()] = True
    around = f[touching[f].any(axis=1)]
    thin = around[_altitudes(v, around) < FAN_FLOOR_MM]
    if not len(thin):
        return np.zeros(len(edges), dtype=bool)
    t = v[thin]
    shortest = np.argmin(edge_lengths(t), axis=1)
    a = thin[np.arange(len(thin)), shortest]
    b = thin[np.arange(len(thin)), (shortest + 1) % 3]
    keys = np.concatenate([a * n + b, b * n + a])
    return np.isin(edges[:, 0] * n + edges[:, 1], keys)


def _shortest_refined_edge_mm(v: np.ndarray, outline: np.ndarray) -> float:
    """The refinement leaves alone triangles with an edge shorter than this."""
    return CAP_MIN_EDGE_FRACTION * float(np.median(np.linalg.norm(v[outline[:, 0]] - v[outline[:, 1]], axis=1)))


def _altitudes(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Smallest altitude of each triangle: twice its area over its longest edge."""
    return _triangle_altitudes(v[f])


def _triangle_altitudes(t: np.ndarray) -> np.ndarray:
    longest = corner_max(edge_lengths(t))
    return np.linalg.norm(_triangle_normals(t), axis=1) / np.maximum(longest, 1e-300)


def _face_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    return _triangle_normals(v[f])


def _triangle_normals(t: np.ndarray) -> np.ndarray:
    return np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])


def _directed_edges(f: np.ndarray) -> np.ndarray:
    return np.stack([f, np.roll(f, -1, axis=1)], axis=2).reshape(-1, 2)


def outline_loops(faces: np.ndarray) -> list[np.ndarray]:
    """The boundary of a set of faces as closed loops of vertex ids, each
    running the way the faces' edges run (counter-clockwise round the faces
    seen from the side their normals point to)."""
    edges = _directed_edges(np.asarray(faces, dtype=np.int64))
    n = int(edges.max()) + 1 if edges.size else 0
    keys = edges[:, 0] * n + edges[:, 1]
    boundary = edges[~np.isin(edges[:, 1] * n + edges[:, 0], keys)]
    following: dict[int, list[int]] = {}
    for a, b in boundary.tolist():
        following.setdefault(a, []).append(b)
    loops = []
    while following:
        start = next(iter(following))
        loop, here = [start], start
        while True:
            nxt = following[here].pop()
            if not following[here]:
                del following[here]
            if nxt == start:
                break
            loop.append(nxt)
            here = nxt
        loops.append(np.array(loop))
    return loops


def min_angles_deg(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Smallest interior angle of each triangle, degrees."""
    t = np.asarray(vertices, dtype=np.float64)[faces]
    smallest = np.full(len(faces), 180.0)
    for i in range(3):
        a = t[:, (i + 1) % 3] - t[:, i]
        b = t[:, (i + 2) % 3] - t[:, i]
        cos = np.einsum("ij,ij->i", a, b) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
        smallest = np.minimum(smallest, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return smallest
