"""Surface: labelled solid bone + HU -> one closed, outward-oriented mesh per bone, LPS mm.

Topology comes from the mask, position from the HU values:

1. The local half-maximum level is measured around every voxel: half-way
   between the brightest bone voxel and the mean of the surrounding non-bone
   tissue within ``halfmax_radius_mm``. For a blurred edge this level sits on
   the true surface, whatever the bone's density (an isosurface at the fixed
   bone threshold lies ~0.3-0.7 mm outside it).
2. The outer layer of the mask is snapped to that level: boundary voxels below
   it leave the mask (only where a voxel stays behind them, so a plate is
   thinned, not holed through), neighbours above it join.
3. Marching cubes runs on ``HU - level`` clamped so its sign equals mask
   membership. The mesh is then exactly as closed and as separated as the
   mask, while every vertex sits at the linearly interpolated half-maximum
   crossing wherever HU and mask agree. It runs once per bone label, on the
   label's own box, with every other label outside.
4. Across a coarse voxel step (thick slices) the crossing may say nothing:
   where both samples are far from the level (bone on one slice, tissue on
   the next), interpolation puts the vertex half-way whatever the surface
   does in between, and a gently tilted endplate becomes a staircase of
   flat treads. Those vertices are moved along their edge (never off it,
   so the labels' voxel centres stay on their side) to where the surface
   through their neighbours passes: :func:`settle_coarse_crossings`.

Marching cubes runs in index space; the affine moves the vertices to LPS, and
a mirroring affine (negative determinant) flips the winding back outward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from skimage.measure import marching_cubes

from ..config import SurfaceConfig
from ..segment.grid import grow_box
from ..segment.labels import BoneLabels
from ..segment.lookup import lookup
from ..segment.neighbours import dilate, erode, max3, min3_nonzero
from ..parallel import parallel
from ..segment.mask import FACE_CONNECTIVITY, fill_cavities
from ..volume import Volume, apply_affine

# Field value forced where HU and mask disagree (HU units): small against any
# bone/tissue contrast, so the surface sits at the voxel centre there.
CLAMP_HU = 1.0
# ... and outside a bone a little more: where four clamped voxels make a
# saddle on a cell face (two of the bone diagonal to each other), the
# marching cubes' face test would meet an exact tie, which the two cells
# sharing the face could break differently: two sheets along one edge, a
# mesh refused as not closed (Pelvic-Ref-003 with its left hip bone made
# soft tissue, as after a hemipelvectomy). Unequal, the diagonal voxels of
# the bone are kept apart, as their face connectivity says.
OUTSIDE_CLAMP_HU = 1.001 * CLAMP_HU
# A bone's pieces of at most this many voxels are specks (:func:`drop_specks`).
SPECK_VOXELS = 2
# Outside the scan, each voxel of the edge is mirrored below the level,
# OUTSIDE_SCAN times as far: a bone cut by the field of view is capped flat
# 1 / (1 + OUTSIDE_SCAN) of a voxel beyond the centre of its last voxel (not
# half a voxel beyond, as a plain mirror would put it), whatever the voxel's
# HU. A fixed value far below any HU (-1e6, before 2026-12-05) put the cap
# within HU / 1e6 of the centre: where a bone met two faces of the scan (a
# femur at the lowest slice and a small field of view's side), the two
# caps' strips along the scan's edge were needles 1e-6 mm thin, and the mesh
# was refused.
OUTSIDE_SCAN = 999.0
# The bone peak is the maximum over a neighbourhood, which noise biases upward
# (~2.5 sigma for ~100 voxels: +18 HU on the level at 15 HU noise, ~0.03 mm
# inward, -0.6 % volume on a 15 x 10 mm ellipsoid). The peak is therefore
# taken on HU smoothed by this Gaussian sigma (mm): bias -0.3 %, and no loss
# on noise-free data.
PEAK_SMOOTHING_MM = 0.6
# Edges at least this long (mm) are coarse: the CT's blur (a Gaussian of
# 0.5-0.9 mm) does not reach from one end to the other, so two samples that
# are bone and tissue say nothing of where the surface lies between them.
COARSE_EDGE_MM = 2.0
# A crossing on a coarse edge within this share of the edge from its middle
# has both samples about as far from the level (both saturated): its place
# within the edge is not measured.
CROSSING_BAND = 0.2
# Averaging steps that move such crossings towards their neighbours' surface,
# and the share of the edge they keep from either end. Measured on the
# phantom (mean vertex distance to the truth, lumbar spine) with 3 mm slices:
# 0.359 mm without, 0.298 with 3 steps, 0.299 with 5, 0.305 with 8 (band
# 0.2); a band of 0.15 gave 0.331, of 0.3 0.293 but moved the 2 mm hips
# outward. On 1.5 mm in-plane edges settling made the hips worse (0.112 ->
# 0.117 mm); on 3 mm isotropic voxels settling every axis made every bone
# better, the slice axis alone only some (hips 0.301 -> 0.276 against 0.307).
CROSSING_STEPS = 3
CROSSING_MARGIN = 0.1


@dataclass(frozen=True, eq=False)
class BoneSurfaces:
    """One closed mesh per bone label, in LPS mm.

    ``meshes``: label -> mesh; different labels' meshes are disjoint (their
    voxels are at least one voxel apart, so no marching-cubes cell holds two).
    ``labels``: uint8 on ``box``: the label whose mesh contains each voxel
    centre (written as ``labels.nii.gz``; ``> 0`` is ``bone_mask.nii.gz``).
    """

    meshes: dict[int, trimesh.Trimesh]
    labels: np.ndarray
    box: tuple[slice, slice, slice]

    def full_labels(self, shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=np.uint8)
        out[self.box] = self.labels
        return out


def bone_surfaces(volume: Volume, bone: BoneLabels, cfg: SurfaceConfig) -> BoneSurfaces:
    field, labels = surface_labels(volume, bone, cfg)
    offset = np.array([s.start for s in bone.box], dtype=float)
    subs = ndi.find_objects(labels)
    present = [k for k, sub in enumerate(subs, start=1) if sub is not None]
    meshes = parallel(*[(lambda k=k: label_mesh(field, labels, k, subs[k - 1], volume.affine, offset))
                        for k in present])
    return BoneSurfaces(meshes=dict(zip(present, meshes)), labels=labels, box=bone.box)


def surface_labels(volume: Volume, bone: BoneLabels, cfg: SurfaceConfig) -> tuple[np.ndarray, np.ndarray]:
    """(HU less the half-maximum level, the label of every voxel centre
    inside its bone's surface), both float32 / uint8 on ``bone.box``: where
    the meshes will lie and what they hold, before they are made."""
    hu = volume.hu[bone.box].astype(np.float32, copy=True)
    if cfg.smoothing_mm > 0:
        ndi.gaussian_filter(hu, sigma=cfg.smoothing_mm / volume.spacing_mm, output=hu)
    solid = bone.labels > 0
    grown = dilate(solid, FACE_CONNECTIVITY)
    field = halfmax_level(hu, solid, grown, volume.spacing_mm, cfg.halfmax_radius_mm)
    # No level (no tissue within reach: deep in the bone, or in a gap narrower
    # than the reach) counts as 0 HU: bone stays, and a gap joins unless it
    # is darker than water (so small holes in faint marrow are filled), but
    # not a gap the labelling keeps open (the sacrum's canal and foramina:
    # on 3 mm slices the canal, narrower than the reach, was closed here).
    no_level = np.isnan(field)
    open_gap = None if bone.kept_open is None else no_level & bone.kept_open & ~solid
    field[no_level] = 0.0
    del no_level
    np.subtract(hu, field, out=field)
    if open_gap is not None and open_gap.any():
        keep_gaps_open(field, hu, solid, open_gap)
    del hu, open_gap
    if bone.kept_in is not None:
        np.maximum(field, CLAMP_HU, out=field, where=bone.kept_in)
    inside = snap_to_level(solid, grown, field, min_piece_voxels=bone.smallest_piece_voxels // 10)
    return field, fill_label_cavities(drop_specks(carry_labels(inside, bone.labels)))


def keep_gaps_open(field: np.ndarray, hu: np.ndarray, solid: np.ndarray, gap: np.ndarray) -> None:
    """Give the ``gap`` voxels (no level of their own) the level half-way
    between their own HU, the only tissue in reach, and the brightest bone
    next to them, in ``field`` (HU - level), in place: below it, they stay
    out of the mask, and the surface crosses half-way between them and that
    bone rather than at their centres (a slit)."""
    box = grow_box(ndi.find_objects(gap.view(np.uint8))[0], gap.shape)
    peak = max3(np.where(solid[box], hu[box], np.float32(-np.inf)))
    here = gap[box]
    level = 0.5 * (peak[here] + hu[box][here])
    field[box][here] = np.minimum(hu[box][here] - level, -CLAMP_HU)


def carry_labels(inside: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Labels of the snapped mask ``inside``: voxels that were bone keep
    theirs; voxels that joined take their neighbours' label when all
    labelled 26-neighbours agree, and are dropped where two bones would meet
    (so the one-voxel gap between bones survives snapping)."""
    high = max3(labels)
    joined = inside & (labels == 0) & (high == min3_nonzero(labels))   # (no bone near: joins as 0)
    out = labels * inside
    np.copyto(out, high, where=joined)
    # Two joined voxels of different bones may still be neighbours: drop both.
    out[joined & (max3(out) != min3_nonzero(out))] = 0
    return out


def drop_specks(labels: np.ndarray, max_voxels: int = SPECK_VOXELS) -> np.ndarray:
    """``labels`` without the pieces of a bone (face-connected voxels of
    one label) of at most ``max_voxels``: where a voxel or two of one bone
    touch it only by an edge or corner, or lie against another bone, the
    bone's mesh got a speck of its own, a shell smaller than a voxel
    floating beside it."""
    out = labels.copy()
    # One bone after the other (0.18 s on the bench's 21 M voxels, 0.15 s on
    # threads, whose label arrays would all be held at once).
    for label, sub in enumerate(ndi.find_objects(labels), start=1):
        if sub is None:
            continue
        mine = labels[sub] == label
        pieces, n = ndi.label(mine, structure=FACE_CONNECTIVITY)
        small = np.bincount(pieces[mine], minlength=n + 1) <= max_voxels
        small[0] = False
        if small.any():
            out[sub][lookup(small, pieces)] = 0
    return out


def fill_label_cavities(labels: np.ndarray) -> np.ndarray:
    """Give each bone the empty voxels it encloses. Snapping and the gap
    between bones can leave a pocket of background inside one label, which
    would become an inside-out inner shell of its mesh."""
    out = labels.copy()
    found = [(label, sub) for label, sub in enumerate(ndi.find_objects(labels), start=1) if sub is not None]
    filled = parallel(*[(lambda label=label, sub=sub: fill_cavities(labels[sub] == label, FACE_CONNECTIVITY,
                                                                     [True] * 6)) for label, sub in found])
    for (label, sub), mask in zip(found, filled):
        view = out[sub]
        view[mask & (view == 0)] = label
    return out


def label_mesh(field: np.ndarray, labels: np.ndarray, label: int, sub: tuple[slice, ...],
               affine: np.ndarray, offset: np.ndarray) -> trimesh.Trimesh:
    """Mesh of one label: ``field`` clamped so its sign is membership in it."""
    sub = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(sub, labels.shape))
    f = field[sub].copy()
    member = labels[sub] == label
    np.maximum(f, CLAMP_HU, out=f, where=member)
    np.minimum(f, -OUTSIDE_CLAMP_HU, out=f, where=~member)
    # In the gap next to another bone, the crossing stays within half a voxel
    # of this bone (the other bone's surface likewise), so neighbouring bones'
    # meshes keep about a voxel between them instead of meeting in the gap.
    near_other = max3((labels[sub] > 0) & ~member) & ~member
    if near_other.any():
        peak = max3(np.where(member, f, np.float32(0)))
        np.minimum(f, -peak, out=f, where=near_other)
    return mesh_from_field(f, affine, offset + [s.start for s in sub])


def halfmax_level(hu: np.ndarray, solid: np.ndarray, grown: np.ndarray, spacing_mm: np.ndarray,
                  radius_mm: float) -> np.ndarray:
    """Per-voxel level half-way between local bone peak and local
    surroundings; NaN where no surroundings lie within reach.

    ``grown`` is ``solid`` dilated by one voxel."""
    size = 2 * np.maximum(np.round(radius_mm / np.asarray(spacing_mm)), 1).astype(int) + 1
    lowest = np.float32(np.finfo(np.float32).min)
    # The layer right outside the mask is partial-volume: leave it out of "surroundings".
    around = ~grown
    # Each filter runs in place on its own array (scipy's separable filters
    # pass line by line through a buffer: the same values), so the three
    # need one box-sized array each, not three.

    def peak() -> np.ndarray:
        out = ndi.gaussian_filter(hu, PEAK_SMOOTHING_MM / np.asarray(spacing_mm))
        np.copyto(out, lowest, where=~solid)
        return _in_place(ndi.maximum_filter, out, size)

    peak, weight, total = parallel(
        peak,
        lambda: _in_place(ndi.uniform_filter, around.astype(np.float32), size),
        lambda: _in_place(ndi.uniform_filter, np.where(around, hu, np.float32(0)), size))
    valid = (weight > 1e-3) & (peak > lowest)
    # level = 0.5 * (peak + total / max(weight, 1e-3)), computed in place (float32).
    np.maximum(weight, np.float32(1e-3), out=weight)
    level = np.divide(total, weight, out=total)
    del weight
    level += peak
    del peak
    level *= np.float32(0.5)
    # Far from any bone/tissue interface there is no level (NaN): the caller decides.
    level[~valid] = np.nan
    return level


def _in_place(separable_filter, array: np.ndarray, size) -> np.ndarray:
    separable_filter(array, size=size, output=array)
    return array


def snap_to_level(solid: np.ndarray, grown: np.ndarray, field: np.ndarray, *,
                  min_piece_voxels: int) -> np.ndarray:
    """Move the mask's outer layer one voxel to agree with ``field > 0``
    (``grown``: ``solid`` dilated by one voxel).

    Boundary voxels below the level leave only when a voxel that stays lies
    behind them: a core voxel (bone at least three voxels thick there), or,
    along an axis on which they face out of the bone, a neighbour above the
    level (a plate two voxels thick, :func:`_edge_of_staying`). So plates are
    thinned to the level but never holed through (a strand only two voxels
    wide can still part where its two sides fall below the level by turns:
    the half-maximum surface parts there too); outer neighbours above the
    level join. (Until 2026-12-04 only core-backed voxels left: the outer
    voxel of a two-voxel plate stayed below the level, outside the
    half-maximum surface the labels follow; on the phantom that was most of
    the lumbar spine's excess, whose arches and processes are such plates.)
    """
    # In place, a box-sized mask at a time (each is ~35 MB on a 512 x 512 x 300 CT).
    core = erode(solid, FACE_CONNECTIVITY)
    leave = _edge_of_staying(solid, field)
    leave |= dilate(core, FACE_CONNECTIVITY)                           # backed
    leave &= ~core                                                     # the shell ...
    del core
    leave &= solid
    leave &= field <= 0                                                # ... below the level
    snapped = solid & ~leave
    del leave
    snapped |= grown & ~solid & (field > 0)                            # joined
    return keep_mask_topology(snapped, min_piece_voxels)


def _edge_of_staying(solid: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Bone voxels with, along some axis, no bone on one side (or the box's
    edge) and, on the other, a bone voxel above the level, which stays: the
    outer voxel of a plate at least two voxels thick along that axis. It
    can leave without holing the plate: the neighbour stays."""
    above = solid & (field > 0)
    out = np.zeros(solid.shape, dtype=bool)
    for axis in range(solid.ndim):
        if solid.shape[axis] < 2:
            continue
        a, o, s_ = (np.moveaxis(x, axis, 0) for x in (above, out, solid))
        # Inner neighbour after the voxel, outer before it (none before the first) ...
        o[0] |= a[1]
        step = np.logical_not(s_[:-2])
        step &= a[2:]
        o[1:-1] |= step
        # ... and the mirror.
        o[-1] |= a[-2]
        np.logical_not(s_[2:], out=step)
        step &= a[:-2]
        o[1:-1] |= step
        del step
    out &= solid
    return out


def keep_mask_topology(snapped: np.ndarray, min_piece_voxels: int) -> np.ndarray:
    """Undo what one-voxel snapping can do to topology on coarse or noisy
    data: drop specks it cut loose (smaller than ``min_piece_voxels``; a tenth
    of the smallest bone piece, as peeling one layer never shrinks a real
    piece that much) and fill cavities it enclosed (the solid mask has none)."""
    labels, n = ndi.label(snapped, structure=FACE_CONNECTIVITY)
    keep = np.bincount(labels[snapped], minlength=n + 1) >= min_piece_voxels
    keep[0] = False
    return fill_cavities(snapped if keep[1:].all() else lookup(keep, labels), FACE_CONNECTIVITY, [True] * 6)


def mesh_from_field(field: np.ndarray, affine: np.ndarray, offset_index: np.ndarray) -> trimesh.Trimesh:
    """Zero isosurface of ``field`` (positive inside) placed in LPS by ``affine``.

    ``offset_index`` is the index of ``field[0, 0, 0]`` in the affine's grid.
    """
    padded = np.pad(field, 1, mode="edge")
    for axis in range(3):
        for end in (0, -1):
            face = np.moveaxis(padded, axis, 0)[end]
            face[...] = -OUTSIDE_SCAN * np.abs(face) - 1.0
    verts, faces, _, _ = marching_cubes(padded, level=0.0, allow_degenerate=False)
    verts = settle_coarse_crossings(verts, faces, np.linalg.norm(affine[:3, :3], axis=0), padded > 0)
    verts = apply_affine(affine, verts - 1.0 + offset_index)
    # skimage orients faces outward for a field that is higher inside when the
    # grid is right-handed in index space; a mirroring affine reverses that.
    faces = faces[:, ::-1] if np.linalg.det(affine[:3, :3]) > 0 else faces
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=False)
    return mesh


def settle_coarse_crossings(index: np.ndarray, faces: np.ndarray, spacing_mm, inside: np.ndarray) -> np.ndarray:
    """Marching-cubes vertices (index space) with the crossings that carry
    no position moved: on edges along an axis whose spacing is at least
    ``COARSE_EDGE_MM``, those within ``CROSSING_BAND`` of their edge's
    middle take a few steps (``CROSSING_STEPS``) towards the mean
    coordinate of their mesh neighbours along that axis, each along its own
    edge, and keep ``CROSSING_MARGIN`` of the edge from either end. Only a
    step is settled: each of the edge's two samples has the next sample
    along the axis on its own side (``inside``: the field's sign on the
    grid). Where a gap or a plate is one sample thick, that sample places
    both of its surfaces, and averaging them towards the neighbours would
    close a one-voxel canal (the sacrum's on 3 mm voxels) or thin a plate.
    Other crossings (on finer axes, or placed by the samples nearer one
    end) do not move; they hold the others.

    Each such vertex stays on its edge, between the voxel inside and the one
    outside: the mesh separates the same voxel centres as before, its
    triangles stay in their cells, and its topology is unchanged."""
    coarse = [a for a in range(3) if float(spacing_mm[a]) >= COARSE_EDGE_MM]
    if not coarse or len(faces) == 0:
        return index
    whole = np.rint(index)
    on_grid = index == whole
    free = []   # per coarse axis: (axis, the vertices on its edges that move)
    for a in coarse:
        others = [b for b in range(3) if b != a]
        middle = np.abs(index[:, a] - np.floor(index[:, a]) - 0.5) <= CROSSING_BAND
        mine = np.flatnonzero(on_grid[:, others[0]] & on_grid[:, others[1]] & middle)
        low = whole[mine].astype(np.int64)
        low[:, a] = np.floor(index[mine, a]).astype(np.int64)
        step = np.ones(low.shape[0], dtype=bool)
        for reach, of in ((-1, 0), (2, 1)):   # the sample before the edge, and the one after it
            beyond = low.copy()
            beyond[:, a] += reach
            ends = low.copy()
            ends[:, a] += of
            valid = (beyond[:, a] >= 0) & (beyond[:, a] < inside.shape[a])
            side = inside[tuple(ends.T)]
            step &= valid & (inside[tuple(np.where(valid[:, None], beyond, 0).T)] == side)
        free.append((a, mine[step]))
    if not any(len(mine) for _, mine in free):
        return index
    n = len(index)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    adjacency = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    adjacency.data[:] = 1.0
    moves = []   # per coarse axis: (axis, free vertices, their neighbours, neighbour count, lowest, highest)
    for a, mine in free:
        if len(mine):
            rows = adjacency[mine]
            below = np.floor(index[mine, a])
            moves.append((a, mine, rows, np.asarray(rows.sum(axis=1)).ravel(),
                          below + CROSSING_MARGIN, below + 1.0 - CROSSING_MARGIN))
    out = index.copy()
    for _ in range(CROSSING_STEPS):
        # Each free vertex averages its neighbours' coordinate along its own axis (all from the last step).
        means = [(rows @ out[:, a]) / count for a, _, rows, count, _, _ in moves]
        for (a, mine, _, _, lo, hi), mean in zip(moves, means):
            out[mine, a] = np.clip(mean, lo, hi)
    return out
