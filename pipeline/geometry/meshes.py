"""Mesh validity and statistics, shared by every stage that makes or writes a mesh.

A mesh is judged as a reader of its STL file will see it, not as it is in
memory: an STL stores each triangle's corners as float32 coordinates, and
every reader (trimesh, MeshLab, slicers) welds corners at the same position
into one vertex, some also those within a small tolerance. So the vertices
are rounded to float32 and welded (exactly, and within ``WELD_MM``), and
then the welded mesh must be a closed solid: no triangle collapsed by the
welding, every edge used by exactly two triangles in opposite directions, no
vertex where two sheets of surface meet (shells touching at a point), no
needle triangle (smallest altitude, twice the area over the longest edge,
under ``MIN_ALTITUDE_MM``), and every shell outward with positive volume.

The checks run on the directed edges, in numpy (trimesh's general queries
cost ~1 s on a million-triangle pelvis). The facts are computed once per mesh
and remembered while the mesh's data is unchanged (trimesh's content hash).
"""

from __future__ import annotations

import threading
import weakref

import manifold3d
import numpy as np
import trimesh
from scipy import sparse
from scipy.spatial import cKDTree
from scipy.sparse.csgraph import connected_components

from ..errors import MeshError

# Corners of different triangles closer than this (mm) after rounding to
# float32 are one vertex to a reader that welds with a tolerance.
WELD_MM = 1e-6
# The thinnest triangle a written mesh may hold, after rounding (mm): its
# smallest altitude. A thinner one is a needle whose shape float32 rounding
# decides. Marching-cubes triangles measure at least 7e-4 mm on 1 mm voxels,
# cut triangles at least 1e-4 mm (see pipeline.geometry.resect).
MIN_ALTITUDE_MM = 1e-5


def reader_view(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """(vertices, faces) as an STL reader gets them: float32 corners, welded
    where they coincide or lie within ``WELD_MM`` of each other."""
    v = np.asarray(mesh.vertices, dtype=np.float32).astype(np.float64)
    f = np.asarray(mesh.faces, dtype=np.int64)
    order = np.lexsort(v.T[::-1])
    first = np.ones(len(v), dtype=bool)
    first[1:] = np.any(v[order[1:]] != v[order[:-1]], axis=1)
    label = np.empty(len(v), dtype=np.int64)
    label[order] = np.cumsum(first) - 1
    points = v[order[first]]
    # Distinct float32 values of magnitude 16 or more differ by at least
    # 1.9e-6 > WELD_MM: only points with a smaller coordinate can have a
    # distinct neighbour within WELD_MM (margin: 32).
    small = np.flatnonzero(np.abs(points).min(axis=1) < 32.0)
    pairs = cKDTree(points[small], balanced_tree=False,
                    compact_nodes=False).query_pairs(WELD_MM, output_type="ndarray")
    pairs = small[pairs]
    if len(pairs):
        graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(points),) * 2)
        _, group = connected_components(graph, directed=False)
        label = group[label]
        _, keep = np.unique(group, return_index=True)
        points = points[keep]
    return points, label[f]


def edge_lengths(triangles: np.ndarray) -> np.ndarray:
    """(n, 3) lengths of the edges of (n, 3, 3) triangles: edge s runs from
    corner s to corner s + 1 (an einsum: norm along an axis is ten times slower)."""
    d = np.empty(np.shape(triangles), dtype=np.result_type(triangles, np.float32))
    np.subtract(triangles[:, 1:], triangles[:, :-1], out=d[:, :-1])
    np.subtract(triangles[:, 0], triangles[:, -1], out=d[:, -1])
    return np.sqrt(np.einsum("ijk,ijk->ij", d, d))


def corner_min(values: np.ndarray) -> np.ndarray:
    """``values.min(axis=1)`` for per-triangle values of shape (n, 3, ...)
    (corners, edges): two elementwise minima, 3-5x faster than numpy's
    reduction along an axis of length 3, and the same numbers."""
    return np.minimum(np.minimum(values[:, 0], values[:, 1]), values[:, 2])


def corner_max(values: np.ndarray) -> np.ndarray:
    """``values.max(axis=1)`` for per-triangle values of shape (n, 3, ...) (see :func:`corner_min`)."""
    return np.maximum(np.maximum(values[:, 0], values[:, 1]), values[:, 2])


def reader_defects(mesh: trimesh.Trimesh, needles_ignored_on: np.ndarray | None = None) -> dict[str, int]:
    """Counts of what keeps the read-back mesh from being a closed solid (all
    zero for a valid one); see the module docstring. Needles among the faces
    in the mask ``needles_ignored_on`` are not counted (cut faces that are
    triangulated afresh later)."""
    defects = mesh_facts(mesh)["defects"]
    if needles_ignored_on is not None and defects["needle_triangles"]:
        g = _reader_geometry(mesh)
        thin = ~g.collapsed & g.thinner_than(MIN_ALTITUDE_MM) & ~needles_ignored_on
        defects = {**defects, "needle_triangles": int(thin.sum())}
    return defects


class _ReaderGeometry:
    """The mesh as read back (:func:`reader_view`) with each triangle's
    doubled area and longest edge: what the check and the needle repair
    both start from, computed once per mesh."""

    def __init__(self, mesh: trimesh.Trimesh) -> None:
        self.v, self.f = reader_view(mesh)
        f = self.f
        self.collapsed = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 2] == f[:, 0])
        self.doubled_area, self.longest = _doubled_area_and_longest(self.v[self.f])

    def thinner_than(self, altitude_mm: float) -> np.ndarray:
        """Mask of the triangles (collapsed ones too) whose smallest altitude is under ``altitude_mm``."""
        return self.doubled_area < altitude_mm * self.longest


def doubled_areas(triangles: np.ndarray) -> np.ndarray:
    """Twice the area of each of (n, 3, 3) triangles (the length of the cross
    product of two edges), for just these triangles: trimesh's ``area_faces``
    measures and caches every face of a mesh."""
    t = triangles
    normal = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    return np.sqrt(np.einsum("ij,ij->i", normal, normal))


def _doubled_area_and_longest(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return doubled_areas(t), corner_max(edge_lengths(t))


# The read-back geometry of the last few meshes (tens of MB each for a
# pelvis: kept only while a repair and its check follow each other).
_GEOMETRY: list[tuple["weakref.ref[trimesh.Trimesh]", int, _ReaderGeometry]] = []
_GEOMETRY_KEPT = 2
_GEOMETRY_LOCK = threading.Lock()


def _reader_geometry(mesh: trimesh.Trimesh) -> _ReaderGeometry:
    key = hash(mesh)
    with _GEOMETRY_LOCK:
        for ref, k, geometry in _GEOMETRY:
            if ref() is mesh and k == key:
                return geometry
    geometry = _ReaderGeometry(mesh)
    with _GEOMETRY_LOCK:
        _GEOMETRY.insert(0, (weakref.ref(mesh), key, geometry))
        del _GEOMETRY[_GEOMETRY_KEPT:]
    return geometry


def _reader_facts(mesh: trimesh.Trimesh) -> tuple[dict[str, int], np.ndarray, float]:
    """(defect counts, shell volumes, area) of the mesh as read back."""
    g = _reader_geometry(mesh)
    v, f, collapsed = g.v, g.f, g.collapsed
    thin = ~collapsed & g.thinner_than(MIN_ALTITUDE_MM)
    whole = f[~collapsed]
    edges, pinched = _edge_and_vertex_defects(whole, len(v))
    defects = {"collapsed_triangles": int(collapsed.sum()), "needle_triangles": int(thin.sum()),
               "bad_edges": edges, "pinched_vertices": pinched}
    return defects, _shells(v, whole)[1], float(g.doubled_area.sum()) / 2


def _edge_runs(f: np.ndarray, n: int):
    """(first corners of the half-edges, their order sorted by undirected
    edge, each sorted half-edge's undirected edge id (lower vertex * n +
    higher), where each edge's run starts, and per run its half-edges and
    how many of them run from the lower vertex to the higher)."""
    a, b = f.ravel(), np.roll(f, -1, axis=1).ravel()
    # Key = undirected edge * 2 + direction; sorted, each edge is one run.
    keys = (np.minimum(a, b) * np.int64(n) + np.maximum(a, b)) * 2 + (a < b)
    # A stable sort of integers is a radix sort: 3x faster, and a valid mesh's keys are all distinct.
    order = np.argsort(keys, kind="stable")
    edge = keys[order] >> 1
    starts = np.flatnonzero(np.r_[True, edge[1:] != edge[:-1]])
    uses = np.diff(np.r_[starts, keys.size])
    forward = np.add.reduceat(keys[order] & 1, starts)
    return a, order, edge, starts, uses, forward


def reader_touching_edges(mesh: trimesh.Trimesh) -> np.ndarray:
    """(k, 2, 3): the ends of the edges an STL reader sees shared by four
    triangles, two in each direction (collapsed triangles left out, as the
    check does): two parts of the solid touching along the edge."""
    g = _reader_geometry(mesh)
    _, _, edge, starts, uses, forward = _edge_runs(g.f[~g.collapsed], len(g.v))
    ids = edge[starts[(uses == 4) & (forward == 2)]]
    return g.v[np.stack([ids // len(g.v), ids % len(g.v)], axis=1)]


def _edge_and_vertex_defects(f: np.ndarray, n: int) -> tuple[int, int]:
    """(undirected edges not used exactly twice, once in each direction;
    vertices whose triangles form more than one fan: two sheets of surface
    meeting at a point, counted only when every edge is right).

    Half-edge h = 3 * face + slot runs from corner h to the next corner of
    its face. Around a vertex, corner h is followed by the corner that starts
    the half-edge opposite h's incoming one; a manifold vertex's corners form
    a single cycle."""
    a, order, _, _, uses, forward = _edge_runs(f, n)
    bad = int(np.count_nonzero((uses != 2) | (forward != 1)))
    if bad:
        return bad, 0
    opposite = np.empty_like(order)
    opposite[order[0::2]] = order[1::2]
    opposite[order[1::2]] = order[0::2]
    successor = opposite[np.arange(a.size).reshape(-1, 3)[:, [2, 0, 1]].ravel()]
    graph = sparse.coo_matrix((np.ones(a.size, dtype=np.int8), (np.arange(a.size), successor)), shape=(a.size,) * 2)
    count, cycle = connected_components(graph, directed=True, connection="weak")
    # Each cycle goes round one vertex: count the cycles per vertex.
    vertex_of_cycle = np.empty(count, dtype=np.int64)
    vertex_of_cycle[cycle] = a
    return 0, int(np.count_nonzero(np.bincount(vertex_of_cycle) > 1))


def face_shells(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """(shell label of every face, signed volume of every shell).

    Shells are the connected pieces of the surface; labels are 0..n-1.
    Volumes come from the divergence theorem, face by face."""
    return _shells(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64))


def _shells(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(v)
    if len(f) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    # Each triangle links its first vertex to the other two: enough for connectivity.
    rows = np.concatenate([f[:, 0], f[:, 0]])
    graph = sparse.csr_matrix((np.ones(rows.size, dtype=np.int8), (rows, f[:, 1:].T.ravel())), shape=(n, n))
    count, vertex_label = connected_components(graph, directed=False)
    per_face = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])) / 6.0
    # The pieces holding faces (not lone vertices), numbered in order.
    _, labels = compact_indices(vertex_label[f[:, 0]], count)
    return labels, np.bincount(labels, weights=per_face)


def compact_indices(indices: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(the values in ``indices`` (each in 0..n-1), ascending; ``indices``
    renumbered 0..k-1 in that order, int32): ``np.unique(indices,
    return_inverse=True)`` by a lookup table, without its sort."""
    used = np.zeros(n, dtype=bool)
    used[indices.ravel()] = True
    return np.flatnonzero(used), (np.cumsum(used, dtype=np.int32) - 1)[indices]


_FACTS: "weakref.WeakKeyDictionary[trimesh.Trimesh, tuple[int, dict]]" = weakref.WeakKeyDictionary()


def mesh_facts(mesh: trimesh.Trimesh) -> dict:
    """Validity, shell volumes, area and bounds of ``mesh``, computed once."""
    key = hash(mesh)
    cached = _FACTS.get(mesh)
    if cached is not None and cached[0] == key:
        return cached[1]
    empty = len(mesh.faces) == 0
    # The area as read back too: trimesh's own would keep a copy of every
    # triangle's corners in its cache (~70 MB for a whole pelvis).
    defects, volumes, area = ({}, np.zeros(0), 0.0) if empty else _reader_facts(mesh)
    facts = {
        "manifold": not empty and not any(defects.values()),
        "defects": defects,
        "shell_volumes_mm3": volumes,
        "area_mm2": area,
        "bounds_lps_mm": np.zeros((2, 3)) if empty else np.asarray(mesh.bounds, dtype=float),
    }
    _FACTS[mesh] = (key, facts)
    return facts


# What each defect means to the user, for the one-line error.
DEFECT_TEXT = {
    "collapsed_triangles": "triangles collapse when the STL is read (corners closer than "
                           f"{WELD_MM:g} mm after rounding to float32)",
    "bad_edges": "edges as read back are not shared by exactly two triangles in opposite directions "
                 "(not closed, not consistently oriented)",
    "pinched_vertices": "vertices as read back join two sheets of surface (solids touching at a point)",
    "needle_triangles": f"triangles as read back are needles thinner than {MIN_ALTITUDE_MM:g} mm",
}


def validate_solid(mesh: trimesh.Trimesh, name: str) -> None:
    """Raise :class:`MeshError` unless ``mesh``, as an STL reader will see it,
    is a closed, consistently and outward-oriented solid with positive volume
    in every shell (see the module docstring)."""
    if len(mesh.faces) == 0:
        raise MeshError(f"{name}: mesh is empty")
    facts = mesh_facts(mesh)
    for kind, count in facts["defects"].items():
        if count:
            raise MeshError(f"{name}: {count} {DEFECT_TEXT[kind]}")
    volumes = facts["shell_volumes_mm3"]
    if volumes.sum() <= 0:
        raise MeshError(f"{name}: mesh volume is {volumes.sum():.3g} mm3; normals point inward")
    # An inward-facing shell inside a larger one would silently cancel volume.
    if volumes.min() <= 0:
        raise MeshError(f"{name}: {int((volumes <= 0).sum())} of {volumes.size} shells are inside-out")


def mesh_stats(mesh: trimesh.Trimesh) -> dict:
    facts = mesh_facts(mesh)
    volumes = facts["shell_volumes_mm3"]
    return {
        "triangles": int(len(mesh.faces)),
        "vertices": int(len(mesh.vertices)),
        "shells": int(volumes.size),
        "volume_mm3": round(float(volumes.sum()), 3),
        "area_mm2": round(facts["area_mm2"], 3),
        "bounds_lps_mm": [[round(float(v), 3) for v in row] for row in facts["bounds_lps_mm"]],
        "watertight": facts["manifold"],
    }


def concatenate_solids(parts: list[trimesh.Trimesh]) -> trimesh.Trimesh:
    """Disjoint solids as one mesh, with its facts derived from the parts'.

    Every edge of the result is an edge of exactly one part, and every shell
    a shell of one part, so the result is a valid solid exactly when all
    parts are; its facts are assembled instead of recomputed (0.5-1 s on a
    pelvis). This holds for the mesh as read back too as long as no two parts
    come within ``WELD_MM`` of each other: bones are a voxel apart."""
    mesh = trimesh.util.concatenate(parts)
    facts = [mesh_facts(p) for p in parts]
    _FACTS[mesh] = (hash(mesh), {
        "manifold": all(f["manifold"] for f in facts),
        "defects": {k: sum(f["defects"].get(k, 0) for f in facts) for k in DEFECT_TEXT},
        "shell_volumes_mm3": np.concatenate([f["shell_volumes_mm3"] for f in facts]),
        "area_mm2": float(sum(f["area_mm2"] for f in facts)),
        "bounds_lps_mm": np.array([np.min([f["bounds_lps_mm"][0] for f in facts], axis=0),
                                   np.max([f["bounds_lps_mm"][1] for f in facts], axis=0)]),
    })
    return mesh


def remove_needles(mesh: trimesh.Trimesh, min_altitude_mm: float = 10 * MIN_ALTITUDE_MM,
                   passes: int = 10) -> tuple[trimesh.Trimesh, int]:
    """(``mesh`` as an STL reader will read it (float32, welded; triangles
    collapsed there and fins, two triangles on the same corners back to
    back, removed), with its needle triangles (smallest altitude under
    ``min_altitude_mm``) taken out, and the number of triangles removed or
    changed); ``mesh`` itself when it has none of them. With no change, the
    needles left are ones the repair cannot take out: another call changes
    nothing either.

    Booleans of surfaces that meet at grazing angles leave them: a corner
    ``k`` a hair off the opposite, longest edge ``i-j`` (two corners a hair
    apart are a case of it). Each is taken out by whichever works first:

    - collapsing ``k`` into ``i`` or ``j`` (the nearer first): the two
      triangles on that edge go, the others around ``k`` take the new
      corner. Only where the two corners share exactly the two neighbours
      across the edge (else the collapse would pinch the surface), no
      triangle turns over, and ``k`` lies within ``COLLAPSE_MM`` of every
      changed triangle's plane (the surface moves by no more);
    - flipping the edge ``i-j``: the needle and its neighbour ``(j, i, l)``
      cover the triangle ``i-l-j`` split at ``k``; they become
      ``(k, i, l)`` and ``(k, l, j)``: the same vertices, the surface moved
      by less than the needle's altitude. Not where the edge ``k-l`` exists.

    The work is local: only the faces within ``REPAIR_RINGS`` rings of the
    needles are handed to the repair, their outer rim held fixed.
    """
    g = _reader_geometry(mesh)
    repaired = _repaired(g, None, min_altitude_mm, passes)
    if repaired is None:
        return mesh, 0   # nothing to repair: the mesh itself, not its reader's view
    f, _, count = repaired
    used, inverse = np.unique(f, return_inverse=True)
    return trimesh.Trimesh(vertices=g.v[used], faces=inverse.reshape(-1, 3), process=False), count


def remove_needles_in_place(mesh: trimesh.Trimesh, held: np.ndarray, min_altitude_mm: float = 10 * MIN_ALTITUDE_MM,
                            passes: int = 10) -> tuple[trimesh.Trimesh, np.ndarray, int]:
    """:func:`remove_needles` that leaves the faces in the mask ``held`` and
    their corners as they are and every vertex at its own coordinates (of
    corners a reader welds into one, those of one of them), not rounded to
    float32: (the mesh, for each of its faces the face of ``mesh`` it stands
    for, the number of triangles removed or changed)."""
    g = _reader_geometry(mesh)
    repaired = _repaired(g, held, min_altitude_mm, passes)
    if repaired is None:
        return mesh, np.arange(len(mesh.faces)), 0
    f, source, count = repaired
    own = np.empty((len(g.v), 3))
    own[g.f.ravel()] = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces).ravel()]
    used, inverse = np.unique(f, return_inverse=True)
    return trimesh.Trimesh(vertices=own[used], faces=inverse.reshape(-1, 3), process=False), source, count


def _repaired(g: _ReaderGeometry, held: np.ndarray | None, min_altitude_mm: float, passes: int):
    """(the faces of the read-back mesh ``g`` repaired, in its vertices; for
    each, the face it stands for; the number removed or changed), or None
    when there is nothing to repair. Needles in ``held`` stay, and so does
    every face on one of their corners."""
    v = g.v
    doubled = _doubled(g.f, len(v))
    thin = g.thinner_than(min_altitude_mm)
    if held is not None:
        thin &= ~held
    if not g.collapsed.any() and not doubled.any() and not thin.any():
        return None
    keep = ~g.collapsed & ~doubled
    count = len(keep) - int(keep.sum())
    f, source = g.f[keep].copy(), np.flatnonzero(keep)
    needles = np.flatnonzero(thin[keep])
    if needles.size:
        region = _rings(f, needles, REPAIR_RINGS)
        # Vertices with a face outside the region: their fans are not all
        # there, so nothing that touches them may change.
        rim = np.zeros(len(v), dtype=bool)
        rim[f[~region]] = True
        if held is not None:
            rim[g.f[held]] = True
        local, local_source = f[region], source[region]
        for _ in range(passes):
            needles = _needle_faces(v, local, min_altitude_mm)
            if needles.size == 0:
                break
            changed = _Needles(v, local, rim).clean(needles, edge_lengths(v[local]))
            local, local_source = local[~changed.removed], local_source[~changed.removed]
            if not changed.count:
                break
            count += changed.count
        f, source = np.concatenate([f[~region], local]), np.concatenate([source[~region], local_source])
    return f, source, count


# Needles are repaired on the faces within this many rings of them.
REPAIR_RINGS = 4


def _needle_faces(v: np.ndarray, f: np.ndarray, min_altitude_mm: float) -> np.ndarray:
    doubled, longest = _doubled_area_and_longest(v[f])
    return np.flatnonzero(doubled < min_altitude_mm * longest)


def _doubled(f: np.ndarray, n: int) -> np.ndarray:
    """Faces on the same three corners as another face (both are marked)."""
    s = np.sort(f, axis=1)
    if n < 2 ** 21:   # three indices fit one int64 key
        key = (s[:, 0] * np.int64(n) + s[:, 1]) * np.int64(n) + s[:, 2]
        _, which, count = np.unique(key, return_inverse=True, return_counts=True)
    else:
        _, which, count = np.unique(s, axis=0, return_inverse=True, return_counts=True)
    return count[which.reshape(-1)] > 1


def _rings(f: np.ndarray, faces: np.ndarray, rings: int) -> np.ndarray:
    """Mask of the faces within ``rings`` rings of ``faces`` (sharing a corner, repeatedly)."""
    mark = np.zeros(int(f.max()) + 1, dtype=bool)
    mark[f[faces]] = True
    for _ in range(rings):
        region = mark[f].any(axis=1)
        mark[f[region]] = True
    return region


# A needle's corner off its longest edge is collapsed into a neighbour when
# that moves the surface by at most this (mm); else the longest edge is flipped.
COLLAPSE_MM = 1e-2


class _Needles:
    """One pass of :func:`remove_needles` over ``f`` (changed in place): each
    triangle is changed at most once a pass, so the adjacency built at the
    start stays true for every triangle not yet touched."""

    def __init__(self, v: np.ndarray, f: np.ndarray, fixed: np.ndarray) -> None:
        self.v, self.f = v, f
        n = np.int64(len(v))
        self.n = n
        keys = f.ravel() * n + np.roll(f, -1, axis=1).ravel()   # half-edge 3 * face + s: f[face, s] -> next
        self.order = np.argsort(keys)
        self.keys = keys[self.order]
        corner = np.argsort(f.ravel(), kind="stable")           # faces around each vertex
        self.around_order = corner // 3
        self.around_start = np.searchsorted(f.ravel()[corner], np.arange(len(v) + 1))
        # Faces on a fixed vertex count as touched: nothing changes them.
        self.touched = fixed[f].any(axis=1)
        self.removed = np.zeros(len(f), dtype=bool)
        self.made: set[tuple[int, int]] = set()
        self.count = 0

    def owner(self, a: int, b: int) -> int | None:
        key = a * self.n + b
        at = int(np.searchsorted(self.keys, key))
        return int(self.order[at]) // 3 if at < len(self.keys) and self.keys[at] == key else None

    def around(self, vertex: int) -> np.ndarray:
        return self.around_order[self.around_start[vertex]:self.around_start[vertex + 1]]

    def clean(self, needles: np.ndarray, length: np.ndarray) -> "_Needles":
        # Collapses first: a flip next to a needle that a collapse removes
        # could only make another needle there.
        flips = []
        for face in needles.tolist():
            if self.touched[face]:
                continue
            s = int(length[face].argmax())
            i, j, k = (int(self.f[face, (s + m) % 3]) for m in range(3))
            near, far = (i, j) if length[face, (s + 2) % 3] <= length[face, (s + 1) % 3] else (j, i)
            if not (self._collapse(face, k, near) or self._collapse(face, k, far)):
                flips.append((face, s))
        for face, s in flips:
            if not self.touched[face]:
                self._flip(face, s)
        return self

    def _collapse(self, face: int, b: int, a: int) -> bool:
        """Collapse the edge a-b of ``face``, ``b`` into ``a``, if the
        surface moves by at most ``COLLAPSE_MM`` there; whether it was done."""
        f, v = self.f, self.v
        other = self.owner(b, a) if self.owner(a, b) == face else self.owner(a, b)
        if other is None or self.touched[other]:
            return False
        faces_a, faces_b = self.around(a), self.around(b)
        ring = np.concatenate([faces_a, faces_b])
        if self.touched[ring].any():
            return False
        ring_a, ring_b = set(f[faces_a].ravel()) - {a}, set(f[faces_b].ravel()) - {b}
        across = {int(x) for x in f[face] if x not in (a, b)} | {int(x) for x in f[other] if x not in (a, b)}
        if (ring_a & ring_b) != across or len(across) != 2:
            return False
        moved = np.setdiff1d(faces_b, [face, other])
        new = np.where(f[moved] == b, a, f[moved])
        before = np.cross(v[f[moved, 1]] - v[f[moved, 0]], v[f[moved, 2]] - v[f[moved, 0]])
        after = np.cross(v[new[:, 1]] - v[new[:, 0]], v[new[:, 2]] - v[new[:, 0]])
        if np.any(np.einsum("ij,ij->i", before, after) <= 0):
            return False
        # How far the old corner lies from the new triangles (their planes).
        unit = after / np.linalg.norm(after, axis=1, keepdims=True)
        if np.any(np.abs(np.einsum("ij,ij->i", v[b] - v[new[:, 0]], unit)) > COLLAPSE_MM):
            return False
        f[moved] = new
        self.removed[[face, other]] = True
        self.touched[ring] = True
        self.count += 1
        return True

    def _flip(self, face: int, s: int) -> None:
        f = self.f
        i, j, k = (int(f[face, (s + m) % 3]) for m in range(3))
        across = self.owner(j, i)
        if across is None or self.touched[across]:
            return
        l = next(int(x) for x in f[across] if x not in (i, j))
        if l == k or self.owner(k, l) is not None or self.owner(l, k) is not None or (min(k, l), max(k, l)) in self.made:
            return
        f[face], f[across] = (k, i, l), (k, l, j)
        self.made.add((min(k, l), max(k, l)))
        self.touched[[face, across]] = True
        self.count += 1


def to_manifold(mesh: trimesh.Trimesh, what: str) -> manifold3d.Manifold:
    """``mesh`` as a manifold3d solid, for booleans; a :class:`MeshError`
    naming ``what`` when it is no oriented 2-manifold."""
    m = manifold3d.Manifold(manifold3d.Mesh64(
        vert_properties=np.ascontiguousarray(mesh.vertices, dtype=np.float64),
        tri_verts=np.ascontiguousarray(mesh.faces, dtype=np.uint64)))
    if m.status() != manifold3d.Error.NoError:
        raise MeshError(f"{what} mesh is not an oriented 2-manifold ({m.status().name})")
    return m
