"""The sacrum beyond the shape model's S3 end: its faint tip taken at its
half maximum, its marrow told from the canal's fat, and nothing above the
end (the model's). Truth from synthetic scenes on 3 mm voxels."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from pipeline.bones import SACRUM
from pipeline.config import SegmentConfig
from pipeline.segment.grid import Grid
from pipeline.segment.lower_sacrum import TIP_HALF_WIDTH_MM, TIP_MAX_MM3, sacral_tip, tip_marrow
from pipeline.volume import Volume


def _tip_scene():
    """(labels, hu, grid, fit) of the sacral tip tests: 3 mm voxels, LPS
    axes, the model's S3 end at z = 63 mm, the midline at x = 60 mm."""
    shape = (40, 40, 60)   # x, y, z (mm = 3 * index)
    hu = 30.0 + np.random.default_rng(3).normal(0.0, 8.0, shape).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[12:29, 10:30, 21:45] = SACRUM          # z 63-132 mm
    hu[12:29, 10:30, 21:45] = 1200.0
    hu[12:26, 10:30, 21:31] = 300.0               # its faint lower part
    volume = Volume(hu, np.diag([3.0, 3.0, 3.0, 1.0]))
    end = np.array([[x, y, 63.0] for x in (40.0, 80.0) for y in (30.0, 90.0)] + [[60.0, 60.0, 63.0]])
    fit = SimpleNamespace(vertices_lps_mm=np.vstack([end, end + [0.0, 0.0, 69.0]]),
                          landmarks={"s3_end": np.arange(5), "s1_endplate": np.arange(5, 10)})
    return labels, hu, Grid(volume, tuple(slice(0, n) for n in shape)), fit


def test_sacral_tip_follows_thin_bone_past_s3_but_not_a_dense_bone_s_halo_nor_bowel():
    """A sacrum ending at the model's S3 plane in faint bone (300 HU) but
    dense (1200 HU) at one side, a plate of faint bone (160 HU, as S4-S5
    average on 3 mm slices) running on below it in the midline and out to
    the side, the dense part's partial-volume halo (400 HU: under half its
    peak), a bright patch (bowel contents) touching nothing, and faint bone
    on the sacrum above S3's end: only the plate becomes sacrum, as far as
    the tip's width."""
    labels, hu, grid, fit = _tip_scene()
    mid_x = 20
    hu[29, 10:30, 21:23] = 400.0                  # the halo beside the dense side
    hu[mid_x - 3:mid_x + 4, 18:20, 8:21] = 160.0  # the plate, z 24-60 mm
    hu[mid_x - 2:mid_x + 3, 30:34, 5:9] = 160.0   # bowel contents, apart from everything
    hu[mid_x:, 18:20, 16:21] = 160.0              # the plate out to the side, past the tip's width
    hu[14:24, 8:10, 26:30] = 160.0                # faint bone on the sacrum, z 78-90 mm
    added = sacral_tip(labels, hu, grid, fit, 60.0)
    taken = (labels == SACRUM) & (hu < 1000) & (hu != 300.0)
    assert added == int(taken.sum())
    # The plate, less its far end that the smoothing averages with soft tissue.
    assert taken[mid_x - 2:mid_x + 3, 18:20, 10:21].all()
    assert not taken[29, 10:30, 21:23].any()     # the halo stays out
    assert not taken[:, 30:34, 5:9].any()        # the bowel stays out
    width = int(TIP_HALF_WIDTH_MM / 3.0)         # voxels either side of the midline
    assert taken[mid_x:mid_x + width - 1, 18:20, 17:20].all()
    assert not taken[mid_x + width + 1:].any()   # beyond the width stays out
    assert not taken[:, :, 21:].any()            # nothing above S3's end (it is the model's)


def test_sacral_tip_takes_bone_fading_under_100_hu_but_not_soft_tissue():
    """Past S3 the tip fades towards the coccyx: below the sacrum a stem at
    160 HU, then 120 HU, then a block at 90 HU (between TIP_HU, 80, and the
    100 HU the tip once needed). The block is taken, its core at least (its
    rim the smoothing averages with the soft tissue at 30 HU); the same
    block at 70 HU (under TIP_HU: too close to the soft tissue) is not, the
    stem is. A level of 100 HU fails the first, one of 60 HU the second."""
    mid_x = 20
    across = (slice(mid_x - 3, mid_x + 4), slice(14, 22))
    stem = (*across, slice(17, 21))                 # z 51-60 mm, just below the S3 end
    fading = (*across, slice(15, 17))               # z 45-48 mm
    block = (*across, slice(4, 15))                 # z 12-42 mm
    core = (slice(mid_x - 1, mid_x + 2), slice(16, 20), slice(6, 13))
    for faint, taken in ((90.0, True), (70.0, False)):
        labels, hu, grid, fit = _tip_scene()
        hu[stem], hu[fading], hu[block] = 160.0, 120.0, faint
        assert sacral_tip(labels, hu, grid, fit, 60.0) > 0
        assert (labels[stem][2:-2, 2:-2] == SACRUM).all()
        if taken:
            assert (labels[core] == SACRUM).all()
        else:
            assert not (labels[block] == SACRUM).any()


def test_sacral_tip_not_taken_when_the_growth_runs_into_a_large_bright_region():
    """Faint-bone HU joined to the sacrum's end over more than a sacral tip's
    volume (bowel contents against the bone): nothing is added."""
    labels, hu, grid, fit = _tip_scene()
    hu[14:24, 10:30, 21 - 12:21] = 160.0          # 10 x 20 x 12 voxels of 27 mm3 under the sacrum
    assert 2400 * 27.0 > TIP_MAX_MM3
    before = labels.copy()
    assert sacral_tip(labels, hu, grid, fit, 60.0) == 0
    assert np.array_equal(labels, before)
    hu[14:24, 10:30, 21 - 12:21 - 6] = 30.0       # half of it: within the cap, taken
    assert sacral_tip(labels, hu, grid, fit, 60.0) > 0
    assert (labels == SACRUM).sum() > (before == SACRUM).sum()


def test_past_s3_the_sacrum_s_fatty_marrow_is_filled_and_its_fat_canal_left_open():
    """Below the model's S3 end, two sections of sacrum as hollow rings of
    cortex (400 HU; one with a gap of a voxel): inside the first fatty
    marrow (20 HU), inside the second the canal's fat (-80 HU). The marrow
    becomes sacrum, the canal stays open; a hole of marrow HU in the sacrum
    above the S3 end, even within ``past_s3``'s margin, is the model's to
    fill or hold open, not this."""
    labels, hu, grid, fit = _tip_scene()
    below = slice(12, 20)                           # z 36-57 mm, past the S3 end at 63 mm
    for x, inside in ((slice(6, 13), 20.0), (slice(22, 29), -80.0)):
        labels[x, 12:19, below] = SACRUM
        hu[x, 12:19, below] = 400.0
        hollow = (slice(x.start + 1, x.stop - 1), slice(13, 18), below)
        labels[hollow] = 0
        hu[hollow] = inside
    labels[6, 15, below] = 0                        # a gap in the first ring's wall
    hu[6, 15, below] = 30.0
    labels[16:20, 14:18, 21:36] = 0                 # a hole in the sacrum from S3's end up, z 63-105 mm
    hu[16:20, 14:18, 21:36] = 20.0
    before = labels.copy()
    sub, marrow = tip_marrow(labels, hu, grid, fit, 350.0, SegmentConfig())
    assert np.array_equal(labels, before)                   # the caller labels them
    labels[sub][marrow] = SACRUM
    new = (labels == SACRUM) & (before != SACRUM)
    assert int(marrow.sum()) == int(new.sum()) > 0
    assert (labels[7:12, 13:18, below] == SACRUM).all()     # the marrow
    assert not new[23:28, 13:18, below].any()               # the canal
    assert not new[:, :, 21:].any()                         # nothing above S3's end
