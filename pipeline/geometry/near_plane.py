"""Bone vertices near a cut plane: put exactly on it, or moved clearly off it.

An STL stores float32 coordinates and every reader welds corners at the same
position. A plane passing within a few float32 steps of a bone vertex (a
plane typed to three decimals near a column of voxel centres, or through a
slice) makes the cut's new vertices closer to that vertex than float32 can
tell apart: the file then holds zero-area triangles and edges shared four
times, although the mesh in memory was valid. A plane exactly through bone
faces, or touching the bone at a point, gives the exact boolean nothing to
separate: it returns films of zero thickness and solids touching at a
vertex or along an edge.

So before the cut, every bone vertex closer to a plane than a clearance (a
few float32 steps, :func:`plane_clearance_mm`) is settled, each decision
taken from its ring of neighbours (its link, in order around it; neighbours
near the plane themselves count as on it):

- where the plane crosses the surface at the vertex (the link crosses the
  plane exactly twice), the vertex is put on the plane: it becomes a corner
  of the cut's outline, and no cut vertex is made near it;
- where the surface only touches the plane (the link stays on one side: a
  bump or a ridge reaching the plane, a face lying in it), at a saddle (the
  link crosses four times or more), and wherever putting vertices on the
  plane would lay a whole face or a ridge edge in it, the vertex is moved to
  the clearance from the plane: into the bone where the surface only
  touches the plane, else on its own side. Every cut vertex then lies at
  least that far from it, and touching parts come apart instead of meeting
  at a point or along an edge.

A move is along the plane's normal (both normals for a vertex near two
planes), never more than twice the clearance: a fraction of a micrometre, a
thousandth of the surface's accuracy. A move that would turn a neighbouring
face over (a needle thinner than the move) is not made.

Where two planes meet, their line can pass as near a bone edge as a plane
passes a vertex, between the edge's corners and far from both: the planes
then cross the edge a few float32 steps apart. Such an edge is moved onto
the line (both corners alike, by less than the clearance), where both
planes cross it at one point.
"""

from __future__ import annotations

import numpy as np
import trimesh

from ..config import Plane

# Bone vertices closer to a plane than this many float32 steps (at the
# solid's largest coordinate; 2.4e-4 mm for coordinates of 256-512 mm), and
# never less than PLANE_CLEARANCE_MIN_MM, are settled: cut vertices then lie
# at least that far from bone vertices and never merge with them when
# written. Moving vertices so little changes a bone's volume by well under a
# millionth.
PLANE_CLEARANCE_FLOAT32_STEPS = 8
PLANE_CLEARANCE_MIN_MM = 1e-4
# Decisions are revised until they agree with each other (a vertex moved off
# the plane changes its neighbours' links); a few rounds settle them.
ROUNDS = 6


def plane_clearance_mm(bounds_lps_mm: np.ndarray) -> float:
    step = float(np.spacing(np.float32(np.abs(np.asarray(bounds_lps_mm)).max())))
    return max(PLANE_CLEARANCE_FLOAT32_STEPS * step, PLANE_CLEARANCE_MIN_MM)


def settle_near_planes(mesh: trimesh.Trimesh, planes: tuple[Plane, ...]) -> tuple[trimesh.Trimesh, list[dict]]:
    """``mesh`` with its vertices near ``planes`` settled (see the module
    docstring), and per plane the counts put on it and moved off it."""
    clearance_mm = plane_clearance_mm(mesh.bounds)
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces, dtype=np.int64)
    normals = np.array([p.normal_lps for p in planes])
    d = v @ normals.T - np.array([p.offset_mm for p in planes])       # (V, P)
    near = np.abs(d) < clearance_mm
    if not near.any():
        moved = _clear_of_lines(v, f, planes, clearance_mm, near.any(axis=1))
        return (mesh if moved is v else trimesh.Trimesh(vertices=moved, faces=f, process=False),
                [{"vertices_put_on_plane": 0, "vertices_moved_off_plane": 0} for _ in planes])
    ids = np.flatnonzero(near.any(axis=1))
    links = _links(f, ids)
    target = np.full(d.shape, np.nan)
    counts = []
    for k in range(len(planes)):
        on, side = _decide(v, f, d[:, k], near[:, k], normals[k], ids, links)
        target[on, k] = 0.0
        target[side != 0, k] = side[side != 0] * clearance_mm
        counts.append({"vertices_put_on_plane": int(on.sum()), "vertices_moved_off_plane": int((side != 0).sum())})
    moved = v.copy()
    moved[ids] += _least_move(d[ids], target[ids], normals)
    # A move that turns a face over is not made.
    around = f[near.any(axis=1)[f].any(axis=1)]
    turned = np.einsum("ij,ij->i", _normals(moved, around), _normals(v, around)) <= 0
    moved[around[turned]] = v[around[turned]]
    moved = _clear_of_lines(moved, f, planes, clearance_mm, near.any(axis=1))
    return trimesh.Trimesh(vertices=moved, faces=f, process=False), counts


def _clear_of_lines(v: np.ndarray, f: np.ndarray, planes: tuple[Plane, ...], clearance_mm: float,
                    settled: np.ndarray) -> np.ndarray:
    """``v`` with every bone edge that passes within ``clearance_mm`` of the
    line where two planes meet (between its corners, neither of them
    ``settled``) moved onto that line, both corners alike, square to the edge
    and the line: both planes then cross it at one point, which the cut makes
    one corner. Passing a few float32 steps off the line, the edge met the
    planes that far apart or less, and the cut's corners there merged when
    the STL was read (two planes' line 1e-5 mm from the edges of a hole: 8
    triangles collapsed); moved off it by the clearance instead, planes
    meeting at 4 degrees still crossed it 6e-6 mm apart. Returns ``v``
    itself when nothing moves."""
    if len(planes) < 2:
        return v
    normals = np.array([p.normal_lps for p in planes], dtype=float)
    d = v @ normals.T - np.array([p.offset_mm for p in planes])
    move = np.zeros_like(v)
    for i in range(len(planes)):
        for j in range(i + 1, len(planes)):
            line = np.cross(normals[i], normals[j])
            if np.linalg.norm(line) < 1e-9:
                continue
            line /= np.linalg.norm(line)
            point = np.linalg.solve(np.stack([normals[i], normals[j], line]),
                                    [planes[i].offset_mm, planes[j].offset_mm, 0.0])
            # Only a face reaching within the clearance of both planes can hold such an edge.
            reach = np.ones(len(f), dtype=bool)
            for k in (i, j):
                c0, c1, c2 = (d[f[:, m], k] for m in range(3))
                reach &= (np.minimum(np.minimum(c0, c1), c2) < clearance_mm) & \
                    (np.maximum(np.maximum(c0, c1), c2) > -clearance_mm)
            if not reach.any():
                continue
            edges = np.unique(np.sort(np.concatenate([f[reach][:, [0, 1]], f[reach][:, [1, 2]], f[reach][:, [2, 0]]]),
                                      axis=1), axis=0)
            edges = edges[~settled[edges].any(axis=1)]
            a, u = v[edges[:, 0]], v[edges[:, 1]] - v[edges[:, 0]]
            across = np.cross(u, line)                       # square to the edge and the line
            square = np.einsum("ij,ij->i", across, across)
            w = a - point
            s = ((u @ line) * (w @ line) - np.einsum("ij,ij->i", u, w)) / np.maximum(square, 1e-300)
            gap = np.einsum("ij,ij->i", w, across) / np.sqrt(np.maximum(square, 1e-300))
            close = (square > 1e-12) & (s > 0.0) & (s < 1.0) & (np.abs(gap) < clearance_mm)
            if not close.any():
                continue
            unit = across[close] / np.sqrt(square[close])[:, None]
            step = -gap[close][:, None] * unit
            for k in range(2):
                np.add.at(move, edges[close, k], step)
    if not move.any():
        return v
    return v + move


def _decide(v, f, d, near, n, ids, links) -> tuple[np.ndarray, np.ndarray]:
    """For one plane: (put on the plane: bool per vertex, moved off: -1/+1 per vertex, 0 if not)."""
    on = near.copy()
    side = np.zeros(len(v), dtype=np.int8)
    fixed = np.where(near, 0, np.sign(d)).astype(np.int8)
    into_bone = _into_bone(v, f, near, n)
    for _ in range(ROUNDS):
        sgn = np.where(on, 0, np.where(side != 0, side, fixed))
        off = np.zeros(len(v), dtype=bool)
        for i, link in zip(ids, links):
            if on[i] and (link is None or _crossings(sgn[link]) != 2):
                off[i] = True
        # A face with every corner on the plane would lie in it; an edge on the
        # plane with both neighbouring faces on one side is a ridge touching it.
        corners_on = on[f]
        off[f[corners_on.all(axis=1)].ravel()] = True
        for k in range(3):
            a, b, c = f[:, k], f[:, (k + 1) % 3], f[:, (k + 2) % 3]
            ridge = on[a] & on[b] & ~on[c]
            if ridge.any():
                _mark_ridges(off, a[ridge], b[ridge], sgn[c[ridge]], f, on, sgn)
        off &= on
        if not off.any():
            break
        on &= ~off
        for i in np.flatnonzero(off):
            link = links[np.searchsorted(ids, i)]
            around = np.zeros(0) if link is None else sgn[link][sgn[link] != 0]
            if len(around) and (around == around[0]).all():
                side[i] = around[0]          # the surface touches the plane: into the bone
            else:
                side[i] = np.sign(d[i]) if d[i] != 0 else into_bone[i]
    return on, side


def _mark_ridges(off, a, b, apex_side, f, on, sgn) -> None:
    """Mark edges (a, b) lying on the plane whose faces on both sides have
    their third corner on the same side of it."""
    n = int(f.max()) + 1
    key = a * n + b
    # The face across edge a -> b holds b -> a; its third corner's side.
    across = {}
    for k in range(3):
        p, q, r = f[:, k], f[:, (k + 1) % 3], f[:, (k + 2) % 3]
        both = on[p] & on[q]
        across.update(zip((q[both] * n + p[both]).tolist(), sgn[r[both]].tolist()))
    for i, (kk, s) in enumerate(zip(key.tolist(), apex_side.tolist())):
        if s != 0 and across.get(kk) == s:
            off[a[i]] = off[b[i]] = True


def _crossings(signs: np.ndarray) -> int:
    """Sign changes around a cyclic sequence, zeros left out."""
    s = signs[signs != 0]
    return int(np.count_nonzero(s != np.roll(s, 1))) if s.size else 0


def _into_bone(v, f, near, n) -> np.ndarray:
    """Per vertex, the side of the plane (+1/-1) its bone lies on: against its
    area-weighted normal."""
    around = f[near[f].any(axis=1)]
    outward = np.zeros((len(v), 3))
    np.add.at(outward, around.ravel(), np.repeat(_normals(v, around), 3, axis=0))
    return np.where(outward @ n > 0, -1, 1).astype(np.int8)


def _links(f: np.ndarray, ids: np.ndarray) -> list[np.ndarray | None]:
    """Each vertex's neighbours in order around it (None if they do not form
    one cycle, which a closed 2-manifold never gives)."""
    wanted = np.zeros(int(f.max()) + 1, dtype=bool)
    wanted[ids] = True
    rows = []
    for k in range(3):
        keep = wanted[f[:, k]]
        rows.append(np.stack([f[keep, k], f[keep, (k + 1) % 3], f[keep, (k + 2) % 3]], axis=1))
    rows = np.concatenate(rows)
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    starts = np.searchsorted(rows[:, 0], ids)
    ends = np.searchsorted(rows[:, 0], ids, side="right")
    out = []
    for s, e in zip(starts, ends):
        following = dict(zip(rows[s:e, 1].tolist(), rows[s:e, 2].tolist()))
        cycle = [int(rows[s, 1])]
        while len(cycle) <= len(following):
            nxt = following.get(cycle[-1])
            if nxt is None or nxt == cycle[0]:
                break
            cycle.append(nxt)
        out.append(np.array(cycle) if len(cycle) == len(following) and following.get(cycle[-1]) == cycle[0]
                   else None)
    return out


def _least_move(d: np.ndarray, target: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Smallest displacement per vertex that brings each plane's signed
    distance ``d`` to ``target`` where the target is set (not NaN)."""
    move = np.zeros((len(d), 3))
    involved = ~np.isnan(target)
    for mask in np.unique(involved, axis=0):
        if not mask.any():
            continue
        rows = np.flatnonzero((involved == mask).all(axis=1))
        n = normals[mask]                                   # (k, 3)
        residual = (target[rows][:, mask] - d[rows][:, mask])  # (r, k)
        # Least-norm: exact for planes at an angle, a compromise for parallel ones.
        move[rows] = residual @ np.linalg.pinv(n).T
    return move


def _normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    return np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
