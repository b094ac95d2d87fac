"""Holes through a bone's thin plates, closed where the image shows the plate.

Where a plate of bone (the iliac fossa, the sacrum's dorsal wall around its
canal) is thinner than the scan resolves, its voxels peak under the bone
threshold, and the label, and with it the mesh and an implant cut from it,
has a hole there (Pelvic-Ref-003's left iliac fossa: 5 mm, through the
implant). The plate is still in the image as
a ridge: a voxel brighter by ``RIDGE_MARGIN_HU`` than both its neighbours
along some direction, with tissue (under ``FAINT_CORTEX_HU``) two voxels
out on both sides. Ridge voxels around a bone are not all plate, though:
noise and the partial-volume layer beside bone make ridges too, which the
phantom's truth puts outside the bone (all of them added: 330 voxels per
hip bone, Dice 0.992 -> 0.990). So a connected piece of ridge is added only
where it joins two parts of the bone within a slice, as a patch over a hole
through a plate does in the slices through the hole; a piece lying on the
surface joins nothing (the phantom: 5 voxels added in all).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .mask import FACE_CONNECTIVITY, FAINT_CORTEX_HU, IN_SLICE_CONNECTIVITY
from .neighbours import pairs

# How much brighter than both its neighbours a ridge voxel is (HU): the
# fossa's plate peaks at 146-194 HU between muscle at 40-70 HU. With every
# ridge voxel added (no joining asked), a margin of 30 HU cost the phantom's
# hips 0.005 of Dice and 60 HU 0.0025: fewer noise ridges.
RIDGE_MARGIN_HU = 60.0
# The 13 directions to a voxel's 26 neighbours, one of each opposite pair.
_DIRECTIONS = np.array([d for d in np.ndindex(3, 3, 3) if d > (1, 1, 1)]) - 1


def ridge_voxels(hu: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The ``candidates`` at or above ``FAINT_CORTEX_HU`` that are a ridge
    along one of the 13 directions (see the module docstring); voxels within
    two of the array's edge are not."""
    at = np.argwhere(candidates & (hu >= FAINT_CORTEX_HU))
    at = at[np.all((at >= 2) & (at < np.array(hu.shape) - 2), axis=1)]
    own = hu[tuple(at.T)]
    ridge = np.zeros(len(at), dtype=bool)
    for d in _DIRECTIONS:
        near_a, near_b = hu[tuple((at + d).T)], hu[tuple((at - d).T)]
        far_a, far_b = hu[tuple((at + 2 * d).T)], hu[tuple((at - 2 * d).T)]
        ridge |= ((own >= near_a + RIDGE_MARGIN_HU) & (own >= near_b + RIDGE_MARGIN_HU)
                  & (far_a < FAINT_CORTEX_HU) & (far_b < FAINT_CORTEX_HU))
    out = np.zeros(hu.shape, dtype=bool)
    out[tuple(at[ridge].T)] = True
    return out


def plate_patches(bone: np.ndarray, ridge: np.ndarray, axial: int = 0) -> np.ndarray:
    """The face-connected pieces of ``ridge`` (outside ``bone``) that join
    two parts of ``bone`` within an axial slice (parts face-connected within
    the slice): patches over holes through a plate, which parts it in the
    slices through the hole. A piece lying on the surface joins nothing."""
    in_plane = np.moveaxis(IN_SLICE_CONNECTIVITY, 0, axial)
    pieces, n = ndi.label(ridge & ~bone, structure=FACE_CONNECTIVITY)
    if n == 0:
        return np.zeros(bone.shape, dtype=bool)
    parts, _ = ndi.label(bone, structure=in_plane)    # each part lies in one slice
    found = []
    for here, there, _ in pairs(bone.shape, in_plane):
        piece, part = pieces[here], parts[there]
        beside = (piece > 0) & (part > 0)
        found.append(np.stack([piece[beside], part[beside]], axis=1))
    piece_part = np.unique(np.concatenate(found), axis=0)
    # Two parts beside one piece in one slice: the parts' slices, counted per piece.
    slice_of = np.zeros(parts.max() + 1, dtype=np.int64)
    for k, box in enumerate(ndi.find_objects(parts), start=1):
        slice_of[k] = box[axial].start
    keys, per_slice = np.unique(np.stack([piece_part[:, 0], slice_of[piece_part[:, 1]]], axis=1), axis=0,
                                return_counts=True)
    joining = np.zeros(n + 1, dtype=bool)
    joining[keys[per_slice >= 2, 0]] = True
    return joining[pieces]
