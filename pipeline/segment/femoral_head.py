"""Femoral heads: the joint space's sphere about each head, found from the fitted acetabulum.

The fitted acetabulum says where to look; the head's own surface says where
it is (:func:`head_from_surface`), and the HU valley of the joint space
where its sphere lies (:func:`head_sphere`). Inside the sphere the bone is
femur, and half a joint space inside it everything is
(:func:`fill_femoral_heads`): on thick slices the head's subchondral shell
averages below the bone threshold where it faces the acetabulum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import minimize

from ..bones import FEMUR_LEFT, FEMUR_RIGHT, HIP_LEFT, HIP_RIGHT
from ..volume import apply_affine
from .grid import Grid, ball
from .model_fit import PelvisFit, mask_surface

SIDES = ((HIP_LEFT, FEMUR_LEFT, "acetabulum_left", 1.0), (HIP_RIGHT, FEMUR_RIGHT, "acetabulum_right", -1.0))

# Femoral head sphere (the joint space around the head): radius range of a
# plausible one, the half-width of the valley looked for, the rays (evenly
# spread directions, less those within HEAD_NECK_DEG of the neck) and the
# least mean valley depth (HU) that replaces the acetabulum's own sphere.
# The search may move the centre at most HEAD_SHIFT_MM from the acetabulum's,
# and find a radius at most HEAD_RADIUS_BELOW_MM under the start's and
# HEAD_RADIUS_ABOVE_MM over it: head and socket are congruent, their joint
# space a few mm. (Allowed 8 mm under, noise of 40 HU on the
# TotalSegmentator example's 3 mm voxels gave a 10.7 HU "valley" on a
# sphere of 17.4 mm hugging the dome of a 24 mm head, 7.6 mm off centre:
# right femur Dice 0.86 -> 0.69. The real valleys found, on the phantom and
# Pelvic-Ref-003, lie -2.2 to +1.3 mm from their starts.)
# Bone inside the sphere seeds the femur, no other bone within HEAD_BAND_MM
# outside it seeds its bone, and everything more than half a joint space
# (HEAD_JOINT_MM wide) inside it is femur.
HEAD_RADIUS_MM = (15.0, 35.0)
HEAD_VALLEY_MM = 2.0
HEAD_RAYS, HEAD_NECK_DEG = 400, 70.0
HEAD_MIN_VALLEY_HU = 10.0
HEAD_SHIFT_MM = 8.0
HEAD_RADIUS_BELOW_MM, HEAD_RADIUS_ABOVE_MM = 4.5, 2.0
HEAD_BAND_MM = 3.0
HEAD_JOINT_MM = 3.0
# The head's surface is looked for within HEAD_SEARCH_MM of the fitted
# acetabulum's centre: votes in HEAD_VOTE_CELL_MM cells; the peak is the
# block of 2 x 2 x 2 cells that holds the most votes, at least
# HEAD_PEAK_VOTES (Pelvic-Ref-003's heads 230-310, with 40 HU less, noise,
# a softer kernel or 6 mm slices 65-270, the phantoms' 650-1460; the faint
# joints of the 3 mm TotalSegmentator CT 14-16: no head), and HEAD_MIN_VOTES
# of the surface points on the sphere found refine it. The busiest single
# cell was the peak before: a head centred near a cell corner (cells are
# fixed in LPS) splits its votes among eight, and a smaller patch whose
# votes fell in one cell won, 3-13 mm off (Pelvic-Ref-003 with 40 HU less,
# 50 HU of noise, a softer kernel, or turned 10 degrees).
HEAD_SEARCH_MM, HEAD_VOTE_CELL_MM, HEAD_PEAK_VOTES, HEAD_MIN_VOTES = 15.0, 2.0, 40, 20
# A head's sphere, from its surface or from the valley, must fit the fitted cup,
# and the busiest peak at least HEAD_OTHER_RADIUS_MM larger or smaller is
# tried next when the first does not or finds no valley that does:
# head and socket are congruent, the joint's sphere lies a joint space's half
# inside the acetabulum's bony surface, between HEAD_CUP_BELOW_MM under and
# HEAD_CUP_ABOVE_MM over the cup's sphere (the model's error; Pelvic-Ref-003's
# joints lie 0.7 under to 1.1 over theirs, the phantom's 6 mm joints 2-3 mm
# under). Blurred 1 mm more (a softer kernel), Pelvic-Ref-003's right head
# voted 169 at 30 mm, 6 mm off, its valley at 31.8 mm about a cup of 27.6 mm;
# the next peak, 150 votes at 25 mm, was the head. With a metal ball in a
# head, the ball's surface voted first (a valley at 17.5 mm in a 27.8 mm cup).
HEAD_OTHER_RADIUS_MM, HEAD_CUP_BELOW_MM, HEAD_CUP_ABOVE_MM = 3.0, 6.0, 2.0
# The femoral neck points lateral, inferior and a little anterior (LPS, per
# side sign on x, for a patient lying straight; turned with the fitted
# pelvis, so a patient turned 20 degrees on the table still has the rays
# along the neck left out, not others); rays along it see no joint space.
NECK_DIRECTION_LPS = np.array([0.7, -0.2, -0.7])
# A filled voxel darker than water, at the edge of a head placed from the
# acetabulum alone, is fat beyond the head (under its neck, in the
# acetabular fossa), not its dome blurred with the joint space: the
# surface's level decides it (:func:`fill_femoral_heads`).
WATER_HU = 0.0


@dataclass(frozen=True)
class Head:
    """A femoral head's joint-space sphere in LPS mm, and how it was found."""

    femur: int
    centre_lps_mm: np.ndarray
    radius_mm: float
    valley_hu: float
    source: str  # "valley" (the HU valley), "head surface" or "acetabulum" (the fitted cup)
    fill_radius_mm: float  # the sphere about the centre that is certainly head (filled whatever its HU)


def femoral_head(fit: PelvisFit, hu: np.ndarray, grid: Grid, raw: np.ndarray, hip: int, femur: int,
                 landmark: str, side: float, turn: np.ndarray = np.eye(3)) -> Head | None:
    """The joint-space sphere of one femoral head, or None when the
    acetabulum is out of view. The fitted acetabulum says where to look
    (the model can be several mm off there: the joint space blurs the
    cup's surface in the mask); the head's own surface says where it is
    (:func:`head_from_surface`), and the HU valley of the joint space
    where its sphere lies (:func:`head_sphere`). Without a valley deep
    enough the head's surface sphere, grown by half a joint space, stands;
    without that, the acetabulum's. ``turn``: how the fitted pelvis lies
    turned (:func:`~pipeline.segment.model_fit.pelvis_turn`); the neck turns
    with it."""
    cup = fit.vertices_lps_mm[fit.landmarks[landmark]]
    index = grid.index(cup)
    if np.mean(np.all((index >= 0) & (index <= np.array(grid.shape) - 1), axis=1)) < 0.5:
        return None
    neck = turn @ (NECK_DIRECTION_LPS * [side, 1.0, 1.0])
    neck = neck / np.linalg.norm(neck)
    cup_centre, cup_radius = fit_sphere(cup)
    surfaces = head_from_surface(grid, raw, cup_centre)

    def fits_cup(joint_radius: float) -> bool:
        return -HEAD_CUP_BELOW_MM <= joint_radius - cup_radius <= HEAD_CUP_ABOVE_MM

    # Each start: (centre, joint radius, source, the head's surface sphere or None).
    # The cup's surface is the acetabulum's; the joint lies inside it.
    starts = [(c, r + HEAD_JOINT_MM / 2, "head surface", (c, r)) for c, r in surfaces
              if fits_cup(r + HEAD_JOINT_MM / 2)] or [(cup_centre, cup_radius - HEAD_JOINT_MM / 2, "acetabulum", None)]
    centre, radius, source, surface = starts[0]
    valley_hu = 0.0
    for start in starts:   # the first start with a valley that fits the cup; without one the first stands
        found = head_sphere(hu, grid, start[0], start[1], neck)
        if found is not None and fits_cup(found[1]):
            (centre, radius, valley_hu), source, surface = found, "valley", start[3]
            break
    # Filled: half a joint space inside the joint's sphere, and inside the
    # head's own surface where that was found (a joint wider than
    # HEAD_JOINT_MM, 6 mm above the phantom's heads, took 1.8 mm of it).
    fill = radius - HEAD_JOINT_MM / 2
    if surface is not None:
        fill = min(fill, surface[1] - float(np.linalg.norm(centre - surface[0])))
    return Head(femur, centre, radius, valley_hu, source, fill)


def head_from_surface(grid: Grid, raw: np.ndarray, near_lps_mm: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Spheres (centre LPS mm, radius mm) that may be the femoral head near
    ``near_lps_mm``, the likeliest first, by a Hough vote: every outer voxel
    of the bone mask within ``HEAD_SEARCH_MM`` votes for the points one radius
    behind it along its outward normal, for each head radius; the head's
    convex surface concentrates its votes at its centre, and a least-squares
    sphere through the surface points on it refines centre and radius. The
    busiest peak comes first, then the busiest at least ``HEAD_OTHER_RADIUS_MM``
    larger or smaller, if it is a clear peak too (the joint-space valley
    chooses between them: :func:`femoral_head`). Empty without a clear peak."""
    box, dist = ball(near_lps_mm, HEAD_SEARCH_MM + HEAD_RADIUS_MM[1], grid)
    if box is None:
        return []
    full_box = tuple(slice(s.start + o, s.stop + o) for s, o in zip(box, grid.offset.astype(int)))
    points, normals = mask_surface(grid.volume, raw[box] & (dist <= HEAD_SEARCH_MM + HEAD_RADIUS_MM[1]), full_box)
    if len(points) < 50:
        return []
    radii = np.arange(HEAD_RADIUS_MM[0], HEAD_RADIUS_MM[1] + 0.1, 1.0)
    votes = points[None] - radii[:, None, None] * normals[None]        # (R, P, 3)
    near = np.linalg.norm(votes - near_lps_mm, axis=2) <= HEAD_SEARCH_MM
    cells = np.floor((votes - near_lps_mm) / HEAD_VOTE_CELL_MM).astype(np.int64)
    if np.count_nonzero(near) < 50:
        return []
    # Votes counted per (radius, cell): one integer key each, in that order
    # (the first of equal peaks, as a lexicographic count would give).
    side = int(np.ceil(HEAD_SEARCH_MM / HEAD_VOTE_CELL_MM)) + 1     # cells lie in [-side, side)
    shifted = cells[near] + side
    keys = ((np.nonzero(near)[0] * (2 * side) + shifted[:, 0]) * (2 * side) + shifted[:, 1]) * (2 * side) \
        + shifted[:, 2]
    counts = np.bincount(keys, minlength=len(radii) * (2 * side) ** 3).reshape(len(radii), *[2 * side] * 3)
    # The votes of each block of 2 x 2 x 2 cells (a centre on a cell corner splits its votes among 8).
    padded = np.pad(counts, ((0, 0), (0, 1), (0, 1), (0, 1)))
    n = 2 * side
    around = sum(padded[:, a:a + n, b:b + n, c:c + n] for a in (0, 1) for b in (0, 1) for c in (0, 1))
    found = []
    for _ in range(2):
        r_index, *at = np.unravel_index(int(np.argmax(around)), around.shape)
        if around[(r_index, *at)] < HEAD_PEAK_VOTES:
            break
        best = np.array(at) - side
        # The centre: the mean of the votes in the block and the cells around it.
        chosen = near[r_index] & np.all((cells[r_index] >= best - 1) & (cells[r_index] <= best + 2), axis=1)
        centre, radius = votes[r_index][chosen].mean(axis=0), float(radii[r_index])
        # Refined by a least-squares sphere through the head's surface points (facing out from it).
        arm = points - centre
        dist = np.linalg.norm(arm, axis=1)
        on_head = (np.abs(dist - radius) < HEAD_VOTE_CELL_MM) & (np.einsum("ij,ij->i", arm, normals) > 0.7 * dist)
        found.append(fit_sphere(points[on_head]) if on_head.sum() >= HEAD_MIN_VOTES else (centre, radius))
        around[np.abs(radii - radius) < HEAD_OTHER_RADIUS_MM] = 0
    return found


def head_sphere(hu: np.ndarray, grid: Grid, centre_lps_mm: np.ndarray, radius_mm: float,
                neck_lps: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """(centre LPS mm, radius mm, mean valley depth HU) of the joint space's
    HU valley around a femoral head, searched from the acetabulum's sphere:
    centre and radius maximise the mean depth of the valley (the darker of
    HU at radius -/+ ``HEAD_VALLEY_MM`` less HU at radius, floored at 0)
    along rays from the centre, leaving out those within ``HEAD_NECK_DEG``
    of the neck. None when no valley reaches ``HEAD_MIN_VALLEY_HU`` within
    ``HEAD_SHIFT_MM`` of the start and ``HEAD_RADIUS_BELOW_MM`` /
    ``HEAD_RADIUS_ABOVE_MM`` of its radius. Rays are laid out in LPS, so the search
    does not depend on how the slices are stored."""
    rays = sphere_directions(HEAD_RAYS)
    rays = rays[rays @ neck_lps < np.cos(np.radians(HEAD_NECK_DEG))]
    h = hu if hu.dtype == np.float32 else hu.astype(np.float32)
    to_index = np.linalg.inv(grid.volume.affine)

    def depth(c: np.ndarray, r: float) -> float:
        at = c + np.multiply.outer(np.array([r - HEAD_VALLEY_MM, r, r + HEAD_VALLEY_MM]), rays)
        idx = apply_affine(to_index, at.reshape(-1, 3)) - grid.offset
        v = ndi.map_coordinates(h, idx.T, order=1, mode="nearest").reshape(3, -1)
        return float(np.mean(np.maximum(np.minimum(v[0], v[2]) - v[1], 0.0)))

    low = max(HEAD_RADIUS_MM[0], radius_mm - HEAD_RADIUS_BELOW_MM)
    high = min(HEAD_RADIUS_MM[1], radius_mm + HEAD_RADIUS_ABOVE_MM)
    radii = np.arange(low, high, 0.5)
    if radii.size == 0:
        return None
    r0 = radii[np.argmax([depth(centre_lps_mm, r) for r in radii])]
    start = np.r_[centre_lps_mm, r0]
    best = minimize(lambda p: -depth(p[:3], p[3]), start, method="Nelder-Mead",
                    options={"xatol": 0.2, "fatol": 0.5, "initial_simplex": np.r_[[start], start + 3.0 * np.eye(4)]})
    c, r, valley = best.x[:3], float(best.x[3]), -float(best.fun)
    if (valley < HEAD_MIN_VALLEY_HU or np.linalg.norm(c - centre_lps_mm) > HEAD_SHIFT_MM
            or not low <= r <= high):
        return None
    return c, r, valley


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares sphere through points (algebraic fit)."""
    a = np.c_[2.0 * points, np.ones(len(points))]
    x = np.linalg.lstsq(a, (points ** 2).sum(axis=1), rcond=None)[0]
    return x[:3], float(np.sqrt(max(x[3] + x[:3] @ x[:3], 0.0)))


def sphere_directions(n: int) -> np.ndarray:
    """``n`` unit vectors spread evenly over the sphere (Fibonacci lattice)."""
    i = np.arange(n) + 0.5
    polar, azimuth = np.arccos(1.0 - 2.0 * i / n), np.pi * (1.0 + 5.0 ** 0.5) * i
    return np.c_[np.cos(polar), np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth)]


def fill_femoral_heads(labels: np.ndarray, heads: list[Head], grid: Grid,
                       hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill each femoral head, in place: all voxels within its fill sphere
    (:attr:`Head.fill_radius_mm`) are femur, whatever their HU (the head's
    subchondral shell, facing the acetabulum on thick slices, averages below
    the threshold over much of its surface). Returns where (there the femur
    is as certain as its own threshold bone), and where of that the sphere
    came from the fitted acetabulum alone (:attr:`Head.source`): neither a
    joint-space valley nor the head's own surface showed in the image (3 mm
    voxels), the HU cannot tell where the head ends, and the sphere stands
    against the half-maximum level too, but for voxels darker than
    ``WATER_HU``. (The TotalSegmentator example's heads, 120-180 HU at
    their dome: the level peeled a voxel layer off them, 2-3 voxels short
    of its reference's heads; femurs Dice 0.859 / 0.864 -> 0.881 / 0.884,
    surface Dice 0.929 / 0.915 -> 0.965 / 0.942.)"""
    inside = np.zeros(labels.shape, dtype=bool)
    unresolved = np.zeros(labels.shape, dtype=bool)
    for head in heads:
        box, dist = ball(head.centre_lps_mm, head.radius_mm, grid)
        if box is None:
            continue
        inner = dist <= head.fill_radius_mm
        labels[box][inner] = head.femur
        inside[box] |= inner
        if head.source == "acetabulum":
            unresolved[box] |= inner & (hu[box] >= WATER_HU)
    return inside, unresolved
