"""The sacrum beyond the shape model's caudal end: S4, S5 and the coccyx.

The pelvis shape model holds the sacrum down to S3 (:mod:`pipeline.segment.shape_model`);
below its fitted end the bone goes on, thinner than a 3 mm voxel and with
fatty marrow, and the image decides alone. :func:`past_s3` says what lies
beyond the end, :func:`sacral_tip` takes the tip's faint cortex at its half
maximum and :func:`tip_marrow` the marrow its sections enclose, told from
the canal's fat by its HU. :func:`~pipeline.segment.labels.label_bones`
calls them after the model's fills.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..bones import SACRUM
from ..config import SegmentConfig
from .grid import Grid, axial_axis, grow_box, voxel_indices
from .lookup import lookup, touching
from .mask import FACE_CONNECTIVITY, bounding_box, fill_bridged_plane_holes
from .model_fit import PelvisFit, landmark_plane
from .spine import SACRAL_CANAL_HU, SPINE_SMOOTHING_MM, smooth_hu, tissue_hu

# Fill beyond the fitted sacrum is allowed from this far before its caudal
# end (S3) on: the model's end is an oblique cut, the bone goes on smoothly.
S3_END_MARGIN_MM = 6.0
# The sacral tip (see sacral_tip): beyond the fitted S3 end, within
# TIP_REACH_MM of it and TIP_HALF_WIDTH_MM of the midline, voxels joined to the
# sacrum whose own HU reaches half the highest smoothed HU within TIP_PEAK_MM
# (half way from the soft tissue, about 0 HU for fat and muscle together, to
# the bone's peak: its half-maximum surface) and whose smoothed HU (as the
# spine's) reaches TIP_HU (the soft tissue around the sacrum stays under
# 40 HU; the tip's thin bone averages 100-180 HU on 3 mm voxels and fades
# below 100 HU towards the coccyx) are sacrum. At 100 HU the TotalSegmentator
# example's sacrum with S1 scored 0.825 (surface Dice 0.945), 46 % of its
# reference past S3 labelled; at 80 HU 0.836 (0.958), 56 %, and 0.80-0.85
# with 40 HU more or noise of 30-50 HU (0.79-0.85 at 100 HU), the voxels
# outside the reference 148-172 -> 162-176; Pelvic-Ref-003 gains 1-2 cm3 of
# its lower sacrum's faint cortex as given, with 40 HU more or with noise.
# A grown region over TIP_MAX_MM3 has run into something else (bowel
# contents) and is not taken.
TIP_PEAK_MM = 4.0
TIP_HU, TIP_REACH_MM, TIP_HALF_WIDTH_MM, TIP_MAX_MM3 = 80.0, 80.0, 40.0, 40_000.0


def past_s3(fit: PelvisFit, points_lps_mm: np.ndarray) -> np.ndarray:
    """Whether each point lies beyond the fitted sacrum's caudal end (S3,
    where the model stops; S4, S5 and the coccyx go on), less
    ``S3_END_MARGIN_MM`` (the end is oblique, the real sacrum goes on
    smoothly)."""
    centre, normal = _s3_end(fit)
    return (points_lps_mm - centre) @ normal > -S3_END_MARGIN_MM


def past_s3_voxels(fit: PelvisFit, grid: Grid, box: tuple[slice, ...] | None = None,
                   margin_mm: float = S3_END_MARGIN_MM) -> np.ndarray:
    """:func:`past_s3` for every voxel of ``box`` (of the labelling box; all
    of it when None), with ``margin_mm`` for ``S3_END_MARGIN_MM``, a slice
    at a time: the test is linear in the index."""
    box = box or tuple(slice(0, n) for n in grid.shape)
    centre, normal = _s3_end(fit)
    affine = grid.volume.affine
    step = normal @ affine[:3, :3]                      # per index along each axis
    start = np.array([b.start for b in box], dtype=float) + grid.offset
    at_start = normal @ (affine[:3, :3] @ start + affine[:3, 3] - centre) + margin_mm
    shape = tuple(b.stop - b.start for b in box)
    plane = at_start + np.add.outer(np.arange(shape[1]) * step[1], np.arange(shape[2]) * step[2])
    out = np.empty(shape, dtype=bool)
    for k in range(shape[0]):
        np.greater(plane, -k * step[0], out=out[k])
    return out


def _s3_end(fit: PelvisFit) -> tuple[np.ndarray, np.ndarray]:
    """(centre, unit normal pointing caudally along the sacrum) of the fitted sacrum's S3 end."""
    centre, normal = landmark_plane(fit, "s3_end")
    caudal = centre - fit.vertices_lps_mm[fit.landmarks["s1_endplate"]].mean(axis=0)
    return centre, -normal if normal @ caudal < 0 else normal


def sacral_tip(labels: np.ndarray, hu: np.ndarray, grid: Grid, fit: PelvisFit, midline_x_lps_mm: float) -> int:
    """S4, S5 and the coccyx, in place: the sacrum goes on beyond the
    model's S3 end as bone thinner than a 3 mm voxel, which the scan
    averages below the bone threshold. There the unlabelled voxels whose
    own HU reaches half the local smoothed peak and whose smoothed HU
    reaches ``TIP_HU`` (see :data:`TIP_PEAK_MM`: the half-maximum surface
    the labels follow), within
    the tip's reach (:data:`TIP_REACH_MM`, :data:`TIP_HALF_WIDTH_MM`) and
    joined to the sacrum through such voxels, become sacrum, unless they
    add more than ``TIP_MAX_MM3`` (then the growth has run into something
    else). Returns the voxels added."""
    end = fit.vertices_lps_mm[fit.landmarks["s3_end"]]
    # Within the tip's reach, and across the body only as far as a candidate
    # may lie from the midline and the filters below reach beyond it (their
    # values there are those of the whole reach's box): a third of the box
    # on the bench phantom (0.55 -> 0.2 s), the same voxels added.
    lo, hi = end.min(axis=0) - TIP_REACH_MM, end.max(axis=0) + TIP_REACH_MM
    spacing = np.asarray(grid.volume.spacing_mm, dtype=float)
    across = TIP_HALF_WIDTH_MM + 4.0 * SPINE_SMOOTHING_MM + TIP_PEAK_MM + 2.0 * float(spacing.max())
    lo[0], hi[0] = max(lo[0], midline_x_lps_mm - across), min(hi[0], midline_x_lps_mm + across)
    sub = grid.sub_box(np.array([lo, hi]), 0.0) if lo[0] < hi[0] else None
    if sub is None:
        return 0
    local = grid.local(sub)
    view = labels[local]
    sacrum = view == SACRUM
    if not sacrum.any():
        return 0
    smooth = smooth_hu(hu[local], spacing)
    peak = ndi.maximum_filter(smooth, size=2 * np.maximum(np.round(TIP_PEAK_MM / spacing), 1).astype(int) + 1)
    # The voxel's own HU against the half maximum: smoothing carries a bright
    # neighbour's HU into the partial-volume layer outside it.
    candidate = (view == 0) & (smooth >= TIP_HU) & (hu[local] >= 0.5 * peak)
    at = voxel_indices(candidate)
    lps = grid.lps(at + [s.start for s in local])
    keep = past_s3(fit, lps) & (np.abs(lps[:, 0] - midline_x_lps_mm) < TIP_HALF_WIDTH_MM)
    candidate[tuple(at[~keep].T)] = False
    pieces, n = ndi.label(candidate | sacrum, structure=FACE_CONNECTIVITY)
    grown = candidate & lookup(touching(pieces, n, sacrum), pieces)
    added = int(np.count_nonzero(grown))
    if added * grid.volume.voxel_volume_mm3 > TIP_MAX_MM3:
        return 0
    view[grown] = SACRUM
    return added


def tip_marrow(labels: np.ndarray, hu: np.ndarray, grid: Grid, fit: PelvisFit, core_hu: float,
               cfg: SegmentConfig) -> tuple[tuple[slice, ...], np.ndarray]:
    """(a box, the voxels in it that are the marrow of the sacrum beyond the
    model's S3 end, S4 and S5; the caller labels them and holds them through
    the surface's snap, which peeled a quarter of them on Pelvic-Ref-003:
    marrow lies under the half-maximum level its cortex sets). Where the
    model's interior does not reach, the holes the sacrum's axial
    sections enclose (gaps in a thin cortex bridged up to a slice's
    thickness, :func:`~pipeline.segment.mask.fill_bridged_plane_holes`) are
    sacrum where the soft tissue's smoothed HU (:func:`tissue_hu`) reaches
    ``SACRAL_CANAL_HU``: marrow, fatty as it may be, and not the canal,
    which past S2 holds epidural fat and nerve roots only. On Pelvic-Ref-003
    the lower sacrum was a hollow ring of cortex (marrow at 0-100 HU), its
    canal a tube of fat under -20 HU. Only past the fitted end itself (no
    margin, unlike :func:`past_s3`): in the model's last millimetres the
    canal is narrow and as gray as marrow (Pelvic-Ref-003's at S3, 0-60 HU
    with the cortex's partial volume; 450 of its voxels were filled with
    the margin), and the model holds it open."""
    nothing = (slice(0, 0),) * 3, np.zeros((0, 0, 0), dtype=bool)
    end = fit.vertices_lps_mm[fit.landmarks["s3_end"]]
    sub = grid.sub_box(end, TIP_REACH_MM)
    if sub is None:
        return nothing
    local = grid.local(sub)
    axial = axial_axis(grid.volume)
    past = past_s3_voxels(fit, grid, local, margin_mm=0.0)
    # The sacrum in the axial slices that reach past the end (a slice is filled as a whole).
    reaches = np.moveaxis(past, axial, 0).any(axis=(1, 2))
    around = bounding_box((labels[local] == SACRUM) & np.expand_dims(reaches, [a for a in range(3) if a != axial]))
    if around is None:
        return nothing
    around = grow_box(around, past.shape, 2)
    local = tuple(slice(s.start + a.start, s.start + a.stop) for s, a in zip(local, around))
    past = past[around]
    view = labels[local]
    sacrum = view == SACRUM
    spacing = np.asarray(grid.volume.spacing_mm, dtype=float)
    holes = fill_bridged_plane_holes(sacrum, spacing, float(spacing.max()), (view > 0) & ~sacrum,
                                     cfg.max_slice_hole_mm2, (axial,)) & (view == 0) & past
    if holes.any():
        holes &= tissue_hu(hu[local], spacing, core_hu) >= SACRAL_CANAL_HU
    return local, holes
