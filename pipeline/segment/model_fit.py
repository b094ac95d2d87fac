"""Fit the pelvis shape model to a CT: pose, scale and shape modes, in LPS mm.

The data are the outer surface points of the bone mask (threshold voxels
with a non-bone face neighbour) with their outward normals from the HU
gradient, subsampled. The fit never looks at array axes: everything is in
patient LPS millimetres, so feet-first, prone or tilted scans fit alike.

1. **Start** (:func:`initial_pose`): the mean shape at its own size (and
   smaller, larger, turned about the vertical) is slid over a coarse
   distance map of the surface points, on the midline (the bone's
   left-right centre) and beside it, at every antero-posterior and
   cranio-caudal offset within the bone's extent; the place where the
   model's points lie closest to bone wins, and turns about every axis are
   tried there. Model points beyond the scan's edge are unknown, neither
   near nor far, so a scan that stops short of the iliac crests does not
   draw the model into its view. The best place and the runner-up a coarse
   step from it are both posed (the refinement's first phase), with a bone
   left out the best few turns too (INIT_LEAVE_OUT_TURNS), and the one that
   puts more of the model on bone is refined: their scores can tie.
2. **Refine** (:func:`refine`), an active-shape-model style iteration: every
   model vertex takes the nearest data point whose normal agrees with its
   own (so the model does not snap onto the inner cortex, a femoral head or
   the other side of a joint), the pairs farther than the trimmed quantile
   are dropped (tumour, metal, parts out of view, bone the model lacks),
   and the vertex's target is the data point's tangent plane. A similarity
   transform is fitted to the targets (its size kept within
   ``SCALE_RANGE``), then the shape modes with Tikhonov regularisation,
   clipped at +-``MAX_SD``; first the pose alone, then 5, 10 and 20 modes.
3. **Restart** (:func:`fit_pelvis`): a fit that leaves too little of its
   model on bone, counting model just beyond a face of the scan that no
   bone reaches as off it (:func:`present_share`), is started again, from
   places scored robustly and then from the fit without its worse-fitting
   hip bone; a bone found missing is left out and the rest fitted again.

The result says how well each bone fits (median and 90th-percentile residual
of its matched vertices), how much of each bone the scan shows, and how many
modes were used; :mod:`pipeline.segment.labels` turns it into membership.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import csc_matrix
from scipy.spatial import cKDTree

from ..parallel import WORKERS, parallel
from ..volume import Volume, apply_affine
from .distance_map import distance_to_false
from .grid import voxel_indices
from .mask import FACE_CONNECTIVITY, BoneMask
from .neighbours import erode
from .shape_model import MODEL_BONES, ShapeModel

# Surface points taken from the bone mask (a random subset, seeded).
DATA_POINTS = 20000
# Initial search: a distance map on this grid (mm), steps of the coarse offsets
# (mm; a finer search follows, at 0.95-1.05 of the size found), the mean
# size, every n-th model vertex scored, distances clipped at CLIP_MM.
# (The search's costs quoted below were measured before it scored its grids
# of offsets from per-axis tables, which made it 2.3-2.9 times faster:
# 0.27 -> 0.12 s on Pelvic-Ref-003, 6.9 -> 2.4 s over the five searches of
# that scan without its left hip bone, tilted; 2026-12-07.)
# The coarse search also tries INIT_OTHER_SCALES, which must score better
# than the mean size by INIT_SCALE_MARGIN to be taken: a pelvis 20 % larger
# than Pelvic-Ref-003 (itself of the mean size) was met by the model at
# 1.05 of it, 18 mm too low, and its sacrum came out 0.11 against the
# labels at its own size; one 30 % smaller was met at 0.95. A patient
# turned 10-15 degrees in the scanner (which the start does not search)
# scores about the same at 0.85 as at the mean size, and a model shrunk to
# 0.85 there was not brought back by the refinement (see SCHEDULE): the
# margin keeps the mean size.
# A model point beyond the scan's edge scores INIT_UNSEEN_MM, about what a
# point of a good start scores (3.3 mm on Pelvic-Ref-003): unknown, neither
# bone nor its absence; but never less than the mean of the points in view,
# and at least INIT_MIN_SEEN of the points must be in view. Else a start that
# fits badly (a patient turned 15 degrees) escaped beyond the scan's edge.
INIT_CELL_MM, INIT_STEP_MM, INIT_SCALE, INIT_VERTEX_STRIDE, INIT_CLIP_MM = 5.0, 10.0, 1.0, 30, 30.0
INIT_OTHER_SCALES, INIT_SCALE_MARGIN = (0.8, 1.2), 0.9
INIT_UNSEEN_MM, INIT_MIN_SEEN = 5.0, 0.2
# The midline is the bone's left-right centre, which bone missing on one
# side moves: the coarse grid reaches INIT_X_MM to either side of it (the
# upper 30 % of Pelvic-Ref-003's left hip bone made soft tissue moved it 10
# mm, and a start on it lost the sacrum: 0.52), and INIT_LEAVE_OUT_X_MM when
# a bone is left out (without its whole left hip bone: 21 mm).
INIT_LEAVE_OUT_X_MM, INIT_X_MM = 40.0, 20.0
# Turns the start tries about the place found (INIT_TURNS_DEG): every pair of turns about the
# vertical and the antero-posterior axis (yaw and roll, degrees), and turns
# about the left-right axis (pitch), each taken only if it scores better
# than unturned by INIT_TURN_MARGIN. The refinement brings back a patient
# turned 10 degrees from an unturned start, but not 15 or 20 (Pelvic-Ref-003
# turned 15 degrees about the vertical: sacrum 0.57 and hip_right 0.69
# against the labels of the scan as stored; 20 degrees about the
# antero-posterior axis: both femurs 0.03; 20 degrees about the left-right
# axis: sacrum 0.64). Turned 20 degrees or more about the vertical, the
# coarse search met it at 0.76 of its size and far off: the coarse grid is
# also searched turned INIT_COARSE_YAW_DEG either way about the vertical.
INIT_TURNS_DEG, INIT_TURN_MARGIN, INIT_COARSE_YAW_DEG = (-20.0, -10.0, 10.0, 20.0), 0.9, 20.0
# With a bone left out, the INIT_LEAVE_OUT_TURNS best turns are also each
# placed anew and posed beside the best start (:func:`_fit` keeps the one
# with more of the model on bone). Without its left hip bone and lying
# diagonally by 17 degrees, Pelvic-Ref-003's start took a turn 7 degrees
# off and the fit lost the sacrum (0.30 against the intact scan's labels;
# hip_right 0.77, femur_right 0.85); among the three best turns was one
# that held it. 0.4 s more, only where a bone is missing.
INIT_LEAVE_OUT_TURNS = 3
# With a bone left out, a start whose size is more than this off the mean
# (0.8 or 1.2 of it, before the fine search's 0.95-1.05) is posed beside the
# starts of the mean size searched alone. Pelvic-Ref-003 without its left
# hip bone, tilted by 20 degrees: unturned, 0.8 of the mean sat on the
# sacrum and right hip bone better than the mean size (3.02 against 3.4
# mm), its starts 38-41 mm and up to 33 degrees off, and every bone was lost
# (sacrum 0.16); the mean size's best start lay 2 mm off (the truth's size
# 1.07) and the fit holds them (0.955-0.999). Of 16 made-up scans without
# the left hip bone (both real scans; straight, tilted by 20 degrees either
# way, lying diagonally by 15 or 20 either way, turned 25 about the
# vertical), 16 hold every other bone at 0.90-1.00 (before 6, 2026-12-07;
# 14 before the second restart's fit also took the robust search's places).
# Up to 3 s more on those scans only.
INIT_LEAVE_OUT_OTHER_SIZE = 0.1
# A fit that found a pelvis but leaves less than ROBUST_START_BELOW of its
# model on bone (:func:`present_share`: the mean over its bones not found
# missing of their vertices in view or just beyond a face no bone reaches,
# REACH_MM; 0.80-1.0 on the real scans and phantoms) is started again
# (:func:`fit_pelvis`), first from places scored by their best INIT_TRIM
# of the model's points only (bone a tumour destroyed no longer draws the
# model towards what is left), the best turns each placed anew and posed as
# with a bone left out; if that too sits under it, from the pose of the fit
# without the hip bone that fits worse (:func:`worse_hip`), itself started
# from both searches' places (the plain one alone lost the TotalSegmentator
# example without its left hip bone lying diagonally by 20 or -15 degrees,
# the robust one alone Pelvic-Ref-003 with 45 % of it gone lying diagonally
# by 20). The fit with
# most of its model on bone stands (:func:`sits_better`). Made-up scans with
# the upper 30 or 45 % of the left hip bone made soft tissue (a tumour of
# the iliac wing), tilted by 20 degrees either way, lying diagonally by 15,
# 20 or 25 degrees either way or turned 25 about the vertical, both real
# scans (36 in all): 6 lost the sacrum or every bone (0.00-0.14 against
# the intact scan's labels; about half of the model on bone) and 3 more
# fell to 0.69-0.91; started again, every other bone keeps 0.94-1.00
# (2026-12-07). Two of them needed the second restart (Pelvic-Ref-003
# lying diagonally by 20 degrees with 30 or 45 % gone: 0.50-0.54 on bone
# after the first, 0.66 / 0.83 without the left hip bone, 0.71 / 0.67 from
# there); the three that fell, ROBUST_START_BELOW at 0.7 rather than 0.65
# (they sat at 0.65-0.67). The first costs about 1 s, the second
# 1.2 s more, only where the fit was poor; every other scan's labels are
# as they were. A fit still under LOOSE_FIT_BELOW after the restarts is
# warned of in the report (the lost ones 0.49-0.54, good fits of a partly
# destroyed pelvis 0.67-0.73).
INIT_TRIM, ROBUST_START_BELOW, LOOSE_FIT_BELOW = 0.8, 0.7, 0.65
# A model vertex just beyond a face of the scan (within BEYOND_MM of it)
# may lie on bone the scan does not show only where bone reaches that face:
# within REACH_MM of the vertex's place on the face's own slice. Elsewhere
# it lies off bone as surely as one in view, and the fit's share on bone
# (:func:`present_share`) counts it so; farther beyond, a bone may begin
# that does not reach the face (a scan stopping below the sacrum), and the
# vertex is unknown. The TotalSegmentator example with the upper 30 % of
# its left hip bone made soft tissue and lying diagonally by 20 degrees was
# fitted turned 47 degrees, its right hip bone's model wholly beyond the
# scan's top face, where no hip bone reaches it (4 % of it within
# BEYOND_MM), and every bone was lost; 75 % of the model in view lay on
# bone, 49 % counted so, and it is started again. A scan cut through the
# pelvis is reached at its cut face (Pelvic-Ref-003 without its slices
# above the crests).
REACH_MM, BEYOND_MM = 10.0, 20.0
# Surface points are moved to the half-maximum along a profile of +-PROFILE_MM.
PROFILE_MM, PROFILE_STEP_MM = 3.0, 0.5
# Refinement: (modes, iterations, each bone on its own) per phase; every n-th vertex is fitted.
# The pose alone takes 20 iterations on every third of those vertices (at the
# cost of 6 on all of them): with 4, Pelvic-Ref-003's patient turned 10
# degrees about the vertical ended 21 mm off, with 20 0.6 mm.
SCHEDULE = ((0, 20, False), (5, 3, False), (10, 3, False), (20, 5, False), (20, 4, True))
FIT_VERTEX_STRIDE, POSE_VERTEX_STRIDE = 3, 3
# Correspondence: candidates within MATCH_MM among the NEIGHBOURS nearest data
# points; the first whose normal is within acos(MIN_COS) of the vertex's
# normal; pairs beyond the TRIM quantile of residuals are dropped.
MATCH_MM, NEIGHBOURS, MIN_COS, TRIM = 15.0, 6, 0.3, 0.8
# Shape regularisation (per matched vertex) and the clip of every mode (SD).
TIKHONOV, MAX_SD = 0.01, 3.0
# The size of a pelvis relative to the atlas's mean (adults): from a child's
# to a large adult's. Unbounded, a fit to a small piece of bone shrank the
# model to a point lying on it (a 15 mm sphere passed for a pelvis).
SCALE_RANGE = (0.6, 1.5)
# Per-bone motions are held back by this damping (per matched vertex).
LOCAL_DAMPING = 100.0
# A model vertex within this of a matched data point counts as fitted (mm).
FITTED_MM = 3.0
# A model bone with less than this share of its model in view lying on bone
# (0.63-1.0 on the real scans and phantoms; 0.10 for Pelvic-Ref-003 with its
# left hip bone made soft tissue, as after a hemipelvectomy) may be missing:
# the model is fitted again without it (:func:`fit_pelvis`), its fitted
# interior is not made bone (it made 9 200 voxels of hip_left where there
# was none; its model names only bone deep inside it, what is left), and
# the report warns.
MISSING_FITTED_FRACTION = 0.3
# A fit has found a pelvis when at least this share of its model's vertices
# in view lie on bone (the median over the bones it was fitted to).
MIN_FITTED_FRACTION = 0.35


@dataclass(frozen=True, eq=False)
class PelvisFit:
    """The fitted model in LPS mm.

    ``vertices_lps_mm``: (N, 3) fitted shape; ``faces``: bone -> triangles;
    ``vertex_bone``: label value per vertex; ``landmarks``: name -> vertex
    indices; ``modes_sd``: the shape's mode weights (standard deviations);
    ``bones``: per bone, ``residual_median_mm``, ``residual_p90_mm``,
    ``fitted_fraction`` (vertices within ``FITTED_MM`` of bone),
    ``in_view_fraction`` (vertices inside the scan) and
    ``unreached_fraction`` (vertices just beyond a face of the scan that no
    bone reaches where they would cross it: see REACH_MM)."""

    vertices_lps_mm: np.ndarray
    faces: dict[str, np.ndarray]
    vertex_bone: np.ndarray
    landmarks: dict[str, np.ndarray]
    modes_sd: np.ndarray
    bones: dict[str, dict]
    left_out: tuple[str, ...] = ()   # bones found missing, the model fitted without them
    pose: tuple[float, np.ndarray, np.ndarray] | None = None   # scale, rotation, translation of the whole model

    def lateral_mm(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Signed distance (mm) of points from the fitted pelvis's midsagittal
        plane, positive towards the patient's left: the plane through the S1
        endplate's centre, normal to the line between the acetabula. In LPS x
        only where the patient lies straight."""
        v = self.vertices_lps_mm
        left, right = (v[self.landmarks[f"acetabulum_{side}"]].mean(axis=0) for side in ("left", "right"))
        axis = (left - right) / np.linalg.norm(left - right)
        return (np.asarray(points_lps_mm, dtype=np.float64) - v[self.landmarks["s1_endplate"]].mean(axis=0)) @ axis

    def report(self) -> dict:
        return {"modes": int(len(self.modes_sd)), "fitted_without": list(self.left_out),
                "bones": {b: {k: round(float(v), 3) for k, v in d.items()} for b, d in self.bones.items()}}


def surface_points(volume: Volume, bone: BoneMask, n_max: int = DATA_POINTS,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(points, outward unit normals), LPS mm, of the bone mask's outer voxels
    (a random subset of ``n_max``), in pieces with a dense core (not the
    surface of an artery full of contrast, which drew the sacrum's alae)."""
    return mask_surface(volume, bone.with_core(), bone.box, n_max, seed)


def mask_surface(volume: Volume, mask: np.ndarray, box: tuple[slice, ...], n_max: int | None = None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(points, outward unit normals), LPS mm, of the outer voxels of
    ``mask`` (which fills ``box`` of the volume's grid).

    Normals are minus the HU gradient (a 3x3x3 Sobel operator at each
    point, mapped from index to LPS space by the inverse-transpose of the
    affine's linear part)."""
    outer = mask & ~erode(mask, FACE_CONNECTIVITY, border=True)
    idx = voxel_indices(outer) + np.array([s.start for s in box])
    if n_max is not None and len(idx) > n_max:
        # Drawn in the order of their LPS positions, not the array's: the same
        # points however the slices are stored.
        lps = np.round(apply_affine(volume.affine, idx.astype(np.float64)), 3)
        idx = idx[np.lexsort(lps.T[::-1])]
        idx = idx[np.sort(np.random.default_rng(seed).choice(len(idx), n_max, replace=False))]
    # Sobel gradient from each point's 3x3x3 neighbourhood, gathered once.
    limit = np.array(volume.shape) - 1
    offsets = np.argwhere(np.ones((3, 3, 3), dtype=bool)) - 1
    around = np.stack([volume.hu[tuple(np.clip(idx + o, 0, limit).T)] for o in offsets], axis=1)  # (P, 27)
    smooth = np.array([1.0, 2.0, 1.0])
    weights = np.stack([offsets[:, a] * np.prod([smooth[offsets[:, b] + 1] for b in range(3) if b != a], axis=0)
                        for a in range(3)], axis=1)  # (27, 3)
    gradient = around @ weights
    g_lps = gradient @ np.linalg.inv(volume.affine[:3, :3])
    normals = -g_lps / np.maximum(np.linalg.norm(g_lps, axis=1, keepdims=True), 1e-9)
    return halfmax_points(volume, apply_affine(volume.affine, idx.astype(np.float64)), normals), normals


def halfmax_points(volume: Volume, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Each point moved along its normal to where the HU profile crosses
    half-way between the bone's peak (inward) and the tissue (outward), the
    surface the meshes follow: a mask voxel's centre lies anywhere within a
    voxel of it, and a fit to voxel centres would sit that much inside."""
    steps = np.arange(-PROFILE_MM, PROFILE_MM + 1e-9, PROFILE_STEP_MM)
    along = points[:, None, :] + steps[None, :, None] * normals[:, None, :]
    index = apply_affine(np.linalg.inv(volume.affine), along.reshape(-1, 3))
    hu = ndi.map_coordinates(volume.hu, index.T, order=1, mode="nearest").reshape(len(points), len(steps))
    middle = len(steps) // 2
    level = 0.5 * (hu[:, :middle + 1].max(axis=1) + hu[:, middle:].min(axis=1))
    above = hu >= level[:, None]
    # The last step still above the level before the profile falls below it, nearest the voxel.
    falls = above[:, :-1] & ~above[:, 1:]
    candidates = np.where(falls, np.abs(np.arange(len(steps) - 1) + 0.5 - middle), np.inf)
    k = np.argmin(candidates, axis=1)
    found = np.isfinite(candidates[np.arange(len(points)), k])
    h0, h1 = hu[np.arange(len(points)), k], hu[np.arange(len(points)), k + 1]
    s = steps[k] + PROFILE_STEP_MM * np.clip((h0 - level) / np.maximum(h0 - h1, 1e-6), 0.0, 1.0)
    return points + np.where(found, s, 0.0)[:, None] * normals


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals of a closed triangle mesh."""
    return VertexNormals(faces, len(vertices))(vertices)


class VertexNormals:
    """Area-weighted unit normals at the vertices ``at`` (all by default) of
    meshes with the triangles ``faces``, for any vertex positions: each
    vertex's faces are found once (a sparse sum), not at every iteration."""

    def __init__(self, faces: np.ndarray, n_vertices: int, at: np.ndarray | None = None):
        row = np.arange(n_vertices)
        if at is not None:
            row = np.full(n_vertices, -1, dtype=np.int64)
            row[at] = np.arange(len(at))
        corner_row = row[faces.ravel()].reshape(faces.shape)
        used = np.any(corner_row >= 0, axis=1)
        self.faces, corner_row = faces[used], corner_row[used]
        kept = corner_row >= 0
        # Column j (a face) holds a 1 in the row of each of its corners among ``at``.
        rows = n_vertices if at is None else len(at)
        self.sum = csc_matrix((np.ones(int(kept.sum())), corner_row[kept], np.r_[0, np.cumsum(kept.sum(axis=1))]),
                              shape=(rows, len(self.faces)))

    def __call__(self, vertices: np.ndarray) -> np.ndarray:
        a, b, c = (vertices[self.faces[:, k]] for k in range(3))
        normals = self.sum @ np.cross(b - a, c - a)
        return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


# A grid of offsets (LPS mm): the values along x, y and z; its offsets are
# every combination, in that ('ij') order.
Offsets = tuple[np.ndarray, np.ndarray, np.ndarray]


def initial_pose(model: ShapeModel, points: np.ndarray, midline_x_lps_mm: float, volume: Volume,
                 leave_out: tuple[str, ...] = (), robust: bool = False
                 ) -> list[tuple[float, np.ndarray, np.ndarray, float]]:
    """(scale, rotation, translation LPS mm, mean distance mm) of the best
    start, the runner-up (the best a coarse step or more from it) and, with
    bones in ``leave_out`` or ``robust``, the best places of the
    INIT_LEAVE_OUT_TURNS best turns, scored on the model's bones but those in
    ``leave_out``; :func:`_fit` poses them all. ``robust``: a place scores
    the mean distance of its best INIT_TRIM of the points only (see
    ROBUST_START_BELOW).

    The model frame is LPS-like, so the search is mostly of position and
    size: a coarse grid of offsets (on the midline, every antero-posterior
    and cranio-caudal one) at the mean size, also INIT_X_MM to either side
    of the midline, and on it at INIT_OTHER_SCALES of the mean size and
    turned INIT_COARSE_YAW_DEG either way about the vertical; a finer grid
    around the best at 0.95-1.05 of its size; then the turns of INIT_TURNS_DEG (see
    there) about the place found, and a finer grid again about the best of
    them if it is better by INIT_TURN_MARGIN. Model points beyond the scan's
    edge score ``INIT_UNSEEN_MM`` (or the mean of those in view, if higher;
    see there): a scan that stops below the iliac crests drew the model down
    and shrank it to fit the bone in view (cut 125 mm above the femoral
    heads, Pelvic-Ref-003's fit ended 27 mm from the whole scan's). With
    bones left out, the bone's left-right centre is not the pelvis's
    (without its left hip bone, Pelvic-Ref-003's lay 21 mm to the right of
    it), and the coarse grid also reaches ``INIT_LEAVE_OUT_X_MM`` to either
    side of it."""
    lo = points.min(axis=0) - 2 * INIT_CLIP_MM
    shape = np.ceil((points.max(axis=0) + 2 * INIT_CLIP_MM - lo) / INIT_CELL_MM).astype(np.int64) + 1
    occupied = np.zeros(shape, dtype=bool)
    occupied[tuple(np.floor((points - lo) / INIT_CELL_MM).astype(np.int64).T)] = True
    distance = np.minimum(distance_to_false(~occupied, INIT_CELL_MM), INIT_CLIP_MM)
    sample = model.mean_mm[::INIT_VERTEX_STRIDE][~_of_bones(model, leave_out)[::INIT_VERTEX_STRIDE]]
    to_index = np.linalg.inv(volume.affine)
    last = np.array(volume.shape) - 0.5
    kept = max(1, int(INIT_TRIM * len(sample)))

    # The distance map flat, and INIT_CLIP_MM last for the cells beyond it.
    flat_distance = np.append(distance.ravel(), INIT_CLIP_MM).astype(np.float32)
    strides = np.array([shape[1] * shape[2], shape[2], 1])

    def scores(scale: float, rotation: np.ndarray, offsets: Offsets) -> np.ndarray:
        # Per offset of the grid (flat, in its 'ij' order) and model point, from
        # tables of one axis's offsets (or two's) by points, broadcast over the
        # grid: each sum is the one the (offset, point) pair would give alone,
        # the same float, at a fraction of the work.
        placed = scale * (sample @ rotation.T)
        at = [placed[:, a][None] + offsets[a][:, None] for a in range(3)]   # (offsets on axis a, points)

        def along(a: int, table: np.ndarray) -> np.ndarray:
            return table.reshape([len(offsets[a]) if b == a else 1 for b in range(3)] + [-1])

        # The distance map's cell: beyond the map on any axis, past the sum of any cells (the last entry).
        beyond = np.int64(len(flat_distance))
        flat = 0
        for a in range(3):
            cell = np.floor((at[a] - lo[a]) / INIT_CELL_MM).astype(np.int64)
            flat = flat + along(a, np.where(cell.view(np.uint64) < np.uint64(shape[a]), cell * strides[a], beyond))
        d = flat_distance[np.minimum(flat, beyond - 1)].reshape(-1, len(sample))
        # In view: the voxel index along each of the scan's axes, summed over the
        # offsets' axes it depends on (a term of 0 adds nothing), in range.
        seen = True
        for b in range(3):
            index = 0
            for a in np.flatnonzero(to_index[b, :3]):
                index = index + along(a, at[a] * to_index[b, a])
            index = index + to_index[b, 3]
            seen = seen & (index > -0.5) & (index < last[b])
        seen = np.broadcast_to(seen, [len(o) for o in offsets] + [len(sample)]).reshape(-1, len(sample))
        n_seen = seen.sum(axis=1)
        seen_mean = np.where(seen, d, 0.0).sum(axis=1) / np.maximum(n_seen, 1)
        unseen = np.maximum(INIT_UNSEEN_MM, seen_mean)
        if robust:
            values = np.where(seen, d, unseen[:, None].astype(np.float32))
            score = np.partition(values, kept - 1, axis=1)[:, :kept].mean(axis=1)
        else:
            score = (seen_mean * n_seen + unseen * (len(sample) - n_seen)) / len(sample)
        return np.where(n_seen >= INIT_MIN_SEEN * len(sample), score, np.inf)

    def best_of(poses: list[tuple[float, np.ndarray, float, Offsets]], keep: np.ndarray | None = None):
        """(weighted score, scale, rotation, offset) of the best of the poses
        (scale, rotation, weight, offsets), each at each of its offsets (but
        those ``keep``, flat over the grid, leaves out), on both cores
        (numpy's array work releases the GIL)."""
        def offset(grid: Offsets, i: int) -> np.ndarray:
            return np.array([g[j] for g, j in zip(grid, np.unravel_index(i, [len(g) for g in grid]))])

        best = (np.inf, 1.0, np.eye(3), offset(poses[0][3], 0 if keep is None else int(np.argmax(keep))))
        for (scale, rotation, weight, offsets), score in zip(poses, parallel(*[lambda p=p: scores(*p[:2], p[3])
                                                                              for p in poses])):
            if keep is not None:
                score = np.where(keep, score, np.inf)
            i = int(np.argmin(score))
            if weight * score[i] < best[0]:
                best = (float(weight * score[i]), scale, rotation, offset(offsets, i))
        return best

    ys = np.arange(points[:, 1].min(), points[:, 1].max() + INIT_STEP_MM, INIT_STEP_MM)
    zs = np.arange(points[:, 2].min() - INIT_CLIP_MM, points[:, 2].max() + INIT_CLIP_MM, INIT_STEP_MM)

    def plane(x_mm: float) -> Offsets:
        """The coarse offsets in the sagittal plane ``x_mm`` beside the midline."""
        return np.array([midline_x_lps_mm + x_mm]), ys, zs

    reach = INIT_LEAVE_OUT_X_MM if leave_out else INIT_X_MM
    other = 1.0 / INIT_SCALE_MARGIN
    # The mean size unturned, on the midline first (it wins ties), then to either side of it.
    sides = [sign * x for x in np.arange(INIT_STEP_MM, reach + 0.1, INIT_STEP_MM) for sign in (-1.0, 1.0)]
    # Without a bone, the turned mean size is looked for beside the midline
    # too: Pelvic-Ref-003 without its left hip bone, rolled 15 degrees, was
    # lost from the midline (sacrum 0.31).
    mean_size = [(INIT_SCALE, np.eye(3), 1.0, plane(x)) for x in (0.0, *sides)] + [
        (INIT_SCALE, _turn(yaw, 0.0, 0.0), other, plane(x))
        for yaw in (-INIT_COARSE_YAW_DEG, INIT_COARSE_YAW_DEG) for x in ((0.0, *sides) if leave_out else (0.0,))]
    other_sizes = [(INIT_SCALE * k, np.eye(3), other, plane(0.0)) for k in INIT_OTHER_SCALES]
    steps = np.arange(-INIT_STEP_MM, INIT_STEP_MM + 0.1, INIT_STEP_MM / 4)
    fine = (steps / 2, steps, steps)

    def about(centre: np.ndarray, grid: Offsets) -> Offsets:
        return tuple(c + g for c, g in zip(centre, grid))

    def finer(scale: float, rotation: np.ndarray, centre: np.ndarray):
        """The fine grid about ``centre``, at 0.95-1.05 of ``scale``."""
        return best_of([(k * scale, rotation, 1.0, about(centre, fine)) for k in (0.95, 1.0, 1.05)])

    steps = np.arange(-INIT_STEP_MM, INIT_STEP_MM + 0.1, INIT_STEP_MM / 2)
    nearby = (steps, steps, steps)
    angles = (0.0, *INIT_TURNS_DEG)
    turns = [_turn(yaw, roll, 0.0) for yaw in angles for roll in angles if yaw or roll]
    turns += [_turn(0.0, 0.0, pitch) for pitch in INIT_TURNS_DEG]

    def search(coarse: list) -> list[tuple[float, np.ndarray, np.ndarray, float]]:
        """The starts from the best of the ``coarse`` poses."""
        _, scale, rotation, centre = best_of(coarse)
        score, scale, rotation, centre = finer(scale, rotation, centre)
        near = about(centre, nearby)
        turned = [turn @ rotation for turn in turns]
        # Each turn's best score about the place found (both cores).
        turn_scores = [float(np.min(t)) for t in parallel(*[lambda r=r: scores(scale, r, near) for r in turned])]
        unturned_scale = scale

        def placed(rotation: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
            """(score, scale, rotation, offset) of the best place for the model
            turned so: the coarse grid again (and beside the midline), then the
            fine one."""
            _, _, rotation, centre = best_of([(unturned_scale, rotation, 1.0, plane(x)) for x in (0.0, *sides)])
            return finer(unturned_scale, rotation, centre)

        best_turn = int(np.argmin(turn_scores))
        taken = turn_scores[best_turn] < INIT_TURN_MARGIN * score
        if taken:
            # Turned, the best place moves: from the unturned place alone,
            # Pelvic-Ref-003 lying diagonally by 15 degrees without its left hip
            # bone started off and lost its sacrum (0.67).
            score, scale, rotation, centre = placed(turned[best_turn])
        # The runner-up: the best place of the fine grid about the best that lies
        # a coarse step or more from it (:func:`_fit` poses both).
        away = np.linalg.norm(np.stack(np.meshgrid(*fine, indexing="ij"), axis=-1), axis=-1).ravel() >= INIT_STEP_MM
        second = best_of([(scale, rotation, 1.0, about(centre, fine))], keep=away)
        starts = [(scale, rotation, centre, score)] + ([(scale, rotation, second[3], second[0])]
                                                       if np.isfinite(second[0]) else [])
        if leave_out or robust:
            # Without a bone the turns' scores lie close (see INIT_LEAVE_OUT_TURNS):
            # the best few are each placed anew and posed too.
            for i in np.argsort(turn_scores, kind="stable")[:INIT_LEAVE_OUT_TURNS]:
                if not (taken and i == best_turn):
                    found, size, rotation_i, centre_i = placed(turned[i])
                    starts.append((size, rotation_i, centre_i, found))
        return starts

    starts = search(mean_size + other_sizes)
    if leave_out and abs(starts[0][0] / INIT_SCALE - 1.0) > INIT_LEAVE_OUT_OTHER_SIZE:
        # Without a bone a smaller model can sit on what is left better than
        # the mean size before either is turned (see INIT_LEAVE_OUT_OTHER_SIZE):
        # the mean size's own starts are posed too.
        starts += search(mean_size)
    return starts


def _turn(yaw_deg: float, roll_deg: float, pitch_deg: float) -> np.ndarray:
    """Rotation about the vertical (LPS z) by ``yaw_deg``, after one about the
    antero-posterior axis (y) by ``roll_deg``, after one about the left-right
    axis (x) by ``pitch_deg``."""
    return (_rotation(np.array([0.0, 0.0, np.radians(yaw_deg)])) @ _rotation(np.array([0.0, np.radians(roll_deg), 0.0]))
            @ _rotation(np.array([np.radians(pitch_deg), 0.0, 0.0])))


def _matches(tree: cKDTree, points: np.ndarray, normals: np.ndarray, x: np.ndarray,
             n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(matched?, signed point-to-plane offset along the data normal) per vertex,
    and the data normal, for vertices ``x`` with normals ``n``."""
    d, j = tree.query(x, k=NEIGHBOURS, distance_upper_bound=MATCH_MM, workers=WORKERS)   # 20 -> 14 ms on 2 cores
    valid = np.isfinite(d)
    j = np.where(valid, j, 0)
    agree = valid & (np.einsum("ikj,ij->ik", normals[j], n) > MIN_COS)
    first = np.argmax(agree, axis=1)
    rows = np.arange(len(x))
    matched = agree[rows, first]
    chosen = j[rows, first]
    data_normal = normals[chosen]
    offset = np.einsum("ij,ij->i", points[chosen] - x, data_normal)
    return matched, offset, data_normal


def _rotation(omega: np.ndarray) -> np.ndarray:
    """Rotation matrix of the rotation vector ``omega`` (Rodrigues)."""
    angle = float(np.linalg.norm(omega))
    if angle < 1e-12:
        return np.eye(3)
    k = omega / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def refine(model: ShapeModel, points: np.ndarray, normals: np.ndarray, scale: float, rotation: np.ndarray,
           translation: np.ndarray, leave_out: tuple[str, ...] = (),
           schedule: tuple[tuple[int, int, bool], ...] = SCHEDULE
           ) -> tuple[np.ndarray, np.ndarray, tuple[float, np.ndarray, np.ndarray]]:
    """(fitted vertices (N, 3) LPS mm, mode weights, (scale, rotation,
    translation)) after the Gauss-Newton iterations of ``schedule`` on the
    point-to-plane residuals of the model's vertices but those of the bones
    in ``leave_out`` (which follow the others through the shape modes).

    The shape is ``x = s R (mean + modes b) + t`` and, in the last phase,
    each bone also moves by a small similarity transform of its own about
    its centre (how the hip bones sit on the sacrum varies more between
    patients than 20 joint modes say). Every iteration linearises all
    parameters together (pose, scale, modes, per-bone poses) and solves one
    regularised least-squares problem: the modes are held towards 0 by
    Tikhonov regularisation and clipped at +-``MAX_SD``, the per-bone
    motions towards none."""
    tree = cKDTree(points)
    faces = np.concatenate([model.faces[b] for b in MODEL_BONES])
    fit_vertices = np.arange(0, len(model.mean_mm), FIT_VERTEX_STRIDE)
    fit_vertices = fit_vertices[~_of_bones(model, leave_out)[fit_vertices]]
    bones = np.unique(model.vertex_bone[fit_vertices])
    bone_of = model.vertex_bone
    b = np.zeros(0)
    # Each bone's own motion (rotation, translation, log-scale), once the per-bone phase has begun.
    local: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
    members = {int(k): np.flatnonzero(bone_of == k) for k in bones}

    def place(shape: np.ndarray) -> np.ndarray:
        x = scale * shape @ rotation.T + translation
        for k, (r, t, ls) in local.items():
            mine = members[k]
            c = x[mine].mean(axis=0)
            x[mine] = np.exp(ls) * (x[mine] - c) @ r.T + c + t
        return x

    # What every iteration reads at the fitted vertices, gathered once: the
    # faces round each (for its normal) and the modes scaled to mm.
    normals_at = VertexNormals(faces, len(model.mean_mm), fit_vertices)
    modes_at = model.modes[:, fit_vertices] * model.sd_mm[:, None, None]
    for n_modes, iterations, per_bone in schedule:
        b = np.r_[b, np.zeros(max(n_modes - len(b), 0))][:n_modes]
        # The pose alone (7 parameters) is fitted on a third of the vertices.
        among = slice(None) if n_modes else slice(None, None, POSE_VERTEX_STRIDE)
        fitted = fit_vertices[among]
        # The pose alone turns the mean shape, and its normals turn with it.
        pose_only = not n_modes and not per_bone and not local
        if pose_only:
            mean_at, mean_normals = model.mean_mm[fitted], normals_at(model.mean_mm)[among]
        for _ in range(iterations):
            if pose_only:
                x, n = scale * mean_at @ rotation.T + translation, mean_normals @ rotation.T
            else:
                x_all = place(model.shape_mm(b))
                x, n = x_all[fitted], normals_at(x_all)[among]
            matched, offset, data_normal = _matches(tree, points, normals, x, n)
            if matched.sum() < 3 * max(n_modes, 7):
                return place(model.shape_mm(b)), b, (scale, rotation, translation)
            use = matched & (np.abs(offset) <= np.quantile(np.abs(offset[matched]), TRIM))
            xv, nv, ev = x[use], data_normal[use], -offset[use]      # residual: n . (x - d)
            arm = xv - translation
            columns = [nv, np.cross(arm, nv), np.einsum("ij,ij->i", nv, arm)[:, None]]  # t, rotation, log scale
            if n_modes:
                # n . (s R m) = s (R^T n) . m for each mode m
                columns.append(scale * np.einsum("ij,kij->ik", nv @ rotation, modes_at[:n_modes, among][:, use]))
            if per_bone:
                for k in bones:
                    mine = (bone_of[fitted[use]] == k)[:, None]
                    c = x_all[members[int(k)]].mean(axis=0)
                    columns += [nv * mine, np.cross(xv - c, nv) * mine,
                                (np.einsum("ij,ij->i", nv, xv - c) * mine[:, 0])[:, None]]
            jac = np.concatenate(columns, axis=1)
            lhs = jac.T @ jac
            rhs = -jac.T @ ev
            weight = TIKHONOV * len(ev)
            shape_cols = slice(7, 7 + n_modes)
            lhs[shape_cols, shape_cols] += weight * np.eye(n_modes)
            rhs[shape_cols] -= weight * b
            if per_bone:
                extra = np.arange(7 + n_modes, jac.shape[1])
                lhs[extra, extra] += LOCAL_DAMPING * len(ev)
            step = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
            translation = translation + step[:3]
            rotation = _rotation(step[3:6]) @ rotation
            scale = float(np.clip(scale * np.exp(step[6]), *SCALE_RANGE))
            if n_modes:
                b = np.clip(b + step[shape_cols], -MAX_SD, MAX_SD)
            if per_bone:
                for i, k in enumerate(bones):
                    d = step[7 + n_modes + 7 * i:7 + n_modes + 7 * (i + 1)]
                    r, t, ls = local.get(int(k), (np.eye(3), np.zeros(3), 0.0))
                    local[int(k)] = (_rotation(d[3:6]) @ r, t + d[:3], ls + d[6])
    return place(model.shape_mm(b)), b, (scale, rotation, translation)


def fit_pelvis(volume: Volume, bone: BoneMask, model: ShapeModel) -> PelvisFit:
    """The shape model fitted to the bone of ``volume`` (see the module
    docstring). Where a bone of the model is missing from the scan
    (:func:`bone_missing`: resected, or destroyed by a tumour), the model is
    fitted again without it: pulled towards whatever bone lay near, it had
    pulled the others off theirs (Pelvic-Ref-003 without its left hip bone:
    sacrum 0.61, right hip bone 0.92 against the intact scan's labels).
    A fit that sits loosely is started again first (ROBUST_START_BELOW).
    Where the first fit finds no pelvis (:func:`pelvis_found`), it is
    fitted without either hip bone in turn."""
    (points, normals), reach = parallel(lambda: surface_points(volume, bone), lambda: face_reach(volume, bone))
    data = (points, normals, reach)
    fit = _fit(volume, bone, model, data, ())
    if pelvis_found(fit):
        # A poor fit is started again until one sits well (ROBUST_START_BELOW);
        # the one that sits better stands (:func:`sits_better`).
        def without(leave_out: tuple[str, ...]) -> PelvisFit:
            starts = [s[:3] for robust in (False, True)
                      for s in initial_pose(model, data[0], bone.midline_x_lps_mm, volume, leave_out, robust)]
            return _fit(volume, bone, model, data, leave_out, starts=starts)

        restarts = (lambda: _fit(volume, bone, model, data, (), robust=True),
                    lambda: _fit(volume, bone, model, data, (), starts=[without((worse_hip(fit.bones),)).pose]))
        for restart in restarts:
            if present_share(fit.bones) >= ROBUST_START_BELOW:
                break
            again = restart()
            if sits_better(again.bones, fit.bones):
                fit = again
    missing = tuple(missing_bones(fit))
    if pelvis_found(fit):
        if missing:
            # The fit's own pose is posed beside the start's places: it held
            # the other bones where those lost them (the TotalSegmentator
            # example without its left hip bone: sacrum 0.28 from them).
            starts = [s[:3] for s in initial_pose(model, data[0], bone.midline_x_lps_mm, volume, missing)]
            fit = _fit(volume, bone, model, data, missing, starts=starts + [fit.pose])
        return fit
    # Nothing found: a hip bone may be gone as well as the rest lying askew
    # or partly out of view (the phantom without its left hip bone, rolled
    # 15 degrees: every bone under a third on bone). Fitted without either
    # hip bone, a fit that finds it missing and each other bone mostly in
    # view and on bone stands (the better of two). An upper abdomen's
    # vertebrae hold the sacrum's model (62 % on bone) but neither hip's.
    trials = [_fit(volume, bone, model, data, (hip,)) for hip in ("hip_left", "hip_right")]
    trials = [t for t in trials if bone_missing(t.bones[t.left_out[0]]) and all(
        d["in_view_fraction"] >= 0.5 and on_bone_share(d) >= MIN_FITTED_FRACTION
        for b, d in t.bones.items() if b not in t.left_out)]
    return max(trials, key=_found_share) if trials else fit


def landmark_plane(fit: PelvisFit, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(centre, unit normal pointing superior) of the plane through a
    landmark's fitted vertices (least squares)."""
    points = fit.vertices_lps_mm[fit.landmarks[name]]
    centre = points.mean(axis=0)
    normal = np.linalg.svd(points - centre)[2][-1]
    return centre, normal if normal[2] > 0 else -normal


def pelvis_turn(model: ShapeModel, fit: PelvisFit) -> np.ndarray:
    """The rotation (3x3, LPS) from the model's mean pelvis, lying straight
    in the LPS frame, to the fitted one: how the patient lies turned
    (least squares over the vertices, Kabsch)."""
    a = model.mean_mm - model.mean_mm.mean(axis=0)
    b = fit.vertices_lps_mm - fit.vertices_lps_mm.mean(axis=0)
    u, _, vt = np.linalg.svd(a.T @ b)
    flip = np.diag([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T))])
    return vt.T @ flip @ u.T


def pelvis_found(fit: PelvisFit) -> bool:
    """Whether the fit found a pelvis: at least MIN_FITTED_FRACTION of the
    model in view lies on bone, over the bones it was fitted to."""
    share = _found_share(fit)
    return share is not None and share >= MIN_FITTED_FRACTION


def _found_share(fit: PelvisFit) -> float | None:
    """The median share on bone of the model's bones in view that were fitted."""
    fitted = [on_bone_share(d) for b, d in fit.bones.items() if d["in_view_fraction"] > 0.2 and b not in fit.left_out]
    return float(np.median(fitted)) if fitted else None


def present_share(bones: dict[str, dict]) -> float:
    """How well the fit sits (see ROBUST_START_BELOW, LOOSE_FIT_BELOW): the
    mean over the model's bones that are there (not found missing) of their
    share on bone of their vertices in view or just beyond a face no bone
    reaches (REACH_MM), from each bone's fit (as :attr:`PelvisFit.bones`
    and the report hold them)."""
    return _mean_share(bones, {b for b, d in bones.items() if bone_missing(d)})


def _mean_share(bones: dict[str, dict], leave: set[str]) -> float:
    """The mean :func:`judged_share` over the bones but those in ``leave``."""
    shares = [share for b, d in bones.items() if b not in leave and (share := judged_share(d)) is not None]
    return float(np.mean(shares)) if shares else 0.0


def sits_better(bones: dict[str, dict], than: dict[str, dict]) -> bool:
    """Whether a fit (its bones, as :attr:`PelvisFit.bones` holds them) sits
    better than another: more of it on bone (:func:`judged_share`, the mean)
    over the bones neither finds missing, and at most one bone missing. Over
    every bone, a fit that drapes a missing hip bone's model over other bone
    (37 % on bone) beat the fit that found it missing (7 %) though this held
    the others better (Pelvic-Ref-003 without its left hip bone, lying
    diagonally by 13 degrees: every bone lost); over the bones each finds
    there, a fit that found both hips missing beat one that held them (the
    TotalSegmentator example with 45 % of its left hip bone gone, lying
    diagonally by 20 degrees: every bone lost)."""
    missing = {b for b, d in bones.items() if bone_missing(d)}
    if len(missing) > 1:
        return False
    missing |= {b for b, d in than.items() if bone_missing(d)}
    return _mean_share(bones, missing) > _mean_share(than, missing)


def judged_share(fit: dict) -> float | None:
    """The share on bone of a model bone's vertices in view or beyond a face
    no bone reaches (REACH_MM), from its fit (as in the report); None when
    there are none."""
    fitted, in_view, off = (fit.get(k) for k in ("fitted_fraction", "in_view_fraction", "unreached_fraction"))
    if not all(isinstance(v, (int, float)) for v in (fitted, in_view)):
        return None
    judged = in_view + (off if isinstance(off, (int, float)) else 0.0)
    return fitted / judged if judged > 0 else None


def worse_hip(bones: dict[str, dict]) -> str:
    """The hip bone with the smaller share on bone (:func:`judged_share`)."""
    return min(("hip_left", "hip_right"), key=lambda hip: judged_share(bones[hip]) or 0.0)


def on_bone_share(fit: dict) -> float | None:
    """The share of a model bone's vertices in view that lie on bone, from
    its fit (``fitted_fraction`` and ``in_view_fraction``, as in the report);
    None when none is in view."""
    fitted, in_view = fit.get("fitted_fraction"), fit.get("in_view_fraction")
    if not (isinstance(fitted, (int, float)) and isinstance(in_view, (int, float)) and in_view > 0):
        return None
    return fitted / in_view


def face_reach(volume: Volume, bone: BoneMask) -> list[tuple[int, int, float, np.ndarray]]:
    """Per face of the scan: the axis it closes, the index of its slice, the
    spacing (mm) along that axis, and each of that slice's voxels' distance
    (mm) to bone in it (REACH_MM)."""
    spacing = volume.spacing_mm
    reach = []
    for axis in range(3):
        kept = [a for a in range(3) if a != axis]
        for end in (0, volume.shape[axis] - 1):
            face = np.zeros([volume.shape[a] for a in kept], dtype=bool)
            start = bone.box[axis].start
            if start <= end < start + bone.voxels.shape[axis]:
                face[bone.box[kept[0]], bone.box[kept[1]]] = np.take(bone.voxels, end - start, axis=axis)
            distance = (ndi.distance_transform_edt(~face, sampling=spacing[kept]) if face.any()
                        else np.full(face.shape, np.inf))
            reach.append((axis, end, float(spacing[axis]), distance))
    return reach


def unreached(index: np.ndarray, shape: tuple[int, int, int],
              reach: list[tuple[int, int, float, np.ndarray]]) -> np.ndarray:
    """Per point (voxel index, fractional): whether it lies beyond a face of
    the scan, within BEYOND_MM of every face it lies beyond, and no bone
    reaches any of them within REACH_MM of where it would cross it (its place
    clamped into the scan): a point that is off bone though out of view."""
    upper = np.array(shape) - 0.5
    place = np.clip(np.rint(index), 0, np.array(shape) - 1).astype(np.intp)
    beyond = np.zeros(len(index), dtype=bool)
    unknown = np.zeros(len(index), dtype=bool)
    for axis, end, spacing_mm, distance in reach:
        past_mm = (-0.5 - index[:, axis] if end == 0 else index[:, axis] - upper[axis]) * spacing_mm
        out = np.flatnonzero(past_mm > 0)
        at = np.delete(place[out], axis, axis=1)
        beyond[out] = True
        unknown[out[(distance[at[:, 0], at[:, 1]] <= REACH_MM) | (past_mm[out] > BEYOND_MM)]] = True
    return beyond & ~unknown


def _fit(volume: Volume, bone: BoneMask, model: ShapeModel, data: tuple[np.ndarray, np.ndarray, list],
         leave_out: tuple[str, ...], robust: bool = False,
         starts: list[tuple[float, np.ndarray, np.ndarray]] | None = None) -> PelvisFit:
    """The model fitted to the surface points and normals of ``data``
    (:func:`surface_points`) without the bones ``leave_out``, from the best
    of the ``starts`` (poses: scale, rotation, translation) if given, else
    of :func:`initial_pose`'s (``robust``); the scan's faces' reach
    (:func:`face_reach`, the data's third part) tells
    ``unreached_fraction``."""
    points, normals, reach = data
    tree = cKDTree(points)
    faces = np.concatenate([model.faces[name] for name in MODEL_BONES])
    fitted = ~_of_bones(model, leave_out)
    normals_of = VertexNormals(faces, len(model.mean_mm))

    def on_bone(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(matched?, offset) per vertex, and the share of the fitted bones' vertices on bone."""
        matched, offset, _ = _matches(tree, points, normals, x, normals_of(x))
        return matched, offset, float(np.mean((matched & (np.abs(offset) <= FITTED_MM))[fitted]))

    # The starts are posed (SCHEDULE's first phase), and the one that puts
    # more of the model on bone is refined. The start's scores of places 10
    # mm apart lie within 1-6 % (Pelvic-Ref-003 2.5 %; without its left hip
    # bone, lying diagonally by 15 degrees, 1-6 %), and which one won could
    # turn on a few voxels: 17 of that hip bone's 144 000 removed or not
    # moved the start 10 mm up, from where the fit lost the sacrum (0.77
    # against the intact scan's labels; 0.97 from the other). Posed, the
    # share on bone tells them apart (0.55 against 0.60). Posing the second
    # (beside the first) costs 0.1 s; refining both to the end took 0.3 s
    # more.
    if starts is None:
        starts = [s[:3] for s in initial_pose(model, points, bone.midline_x_lps_mm, volume, leave_out, robust)]
    posed = parallel(*[lambda s=s: refine(model, points, normals, *s, leave_out, SCHEDULE[:1]) for s in starts])
    shares = parallel(*[lambda p=p: on_bone(p[0])[2] for p in posed])
    _, _, pose = posed[int(np.argmax(shares))]   # the first of equal shares, as max() took
    x, b, pose = refine(model, points, normals, *pose, leave_out, SCHEDULE[1:])
    matched, offset, _ = on_bone(x)
    index = apply_affine(np.linalg.inv(volume.affine), x)
    in_view = np.all((index > -0.5) & (index < np.array(volume.shape) - 0.5), axis=1)
    beyond = unreached(index, volume.shape, reach)
    bones = {}
    for name in MODEL_BONES:
        mine = _of_bones(model, (name,))
        r = np.abs(offset[mine & matched])
        bones[name] = {
            "residual_median_mm": float(np.median(r)) if r.size else float("nan"),
            "residual_p90_mm": float(np.quantile(r, 0.9)) if r.size else float("nan"),
            "fitted_fraction": float(np.mean(matched[mine] & (np.abs(offset[mine]) <= FITTED_MM))),
            "in_view_fraction": float(np.mean(in_view[mine])),
            "unreached_fraction": float(np.mean(beyond[mine])),
        }
    return PelvisFit(vertices_lps_mm=x, faces=dict(model.faces), vertex_bone=model.vertex_bone,
                     landmarks=dict(model.landmarks), modes_sd=b, bones=bones, left_out=leave_out, pose=pose)


def _of_bones(model: ShapeModel, names: tuple[str, ...]) -> np.ndarray:
    """Per model vertex: whether it belongs to one of the bones ``names``."""
    values = [model.vertex_bone[model.faces[name][0, 0]] for name in names]
    return np.isin(model.vertex_bone, values)


def missing_bones(fit: PelvisFit) -> list[str]:
    """The model bones that may be missing (:func:`bone_missing`)."""
    return [b for b, d in fit.bones.items() if bone_missing(d)]


def bone_missing(fit: dict) -> bool:
    """Whether a model bone's fit (its ``fitted_fraction`` and
    ``in_view_fraction``, as in the report) says it may be missing: mostly in
    view, and under MISSING_FITTED_FRACTION of that on bone."""
    share = on_bone_share(fit)
    return share is not None and fit["in_view_fraction"] >= 0.5 and share < MISSING_FITTED_FRACTION
