"""The seeds and the flood between them (:mod:`pipeline.segment.flood`):
bone no seed reaches, pools of contrast, the spine's seeds, the watershed
per piece and its ties, the femurs' seeds below the hip bones."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from pipeline.config import Config


@pytest.mark.parametrize("spacing_mm", [(1.0, 1.0, 1.0), (3.0, 1.0, 1.0), (3.0, 3.0, 3.0)])
def test_pools_of_contrast_are_not_other_bone_but_bones_with_a_thick_cortex_are(spacing_mm):
    """Bone no seed reached, in soft tissue blurred as a scanner does: a long
    bone (a 3 mm cortex at 1400 HU over cancellous bone at 300 HU), a shaft
    with a 6 mm cortex around fatty marrow, a rib (a 5 mm rod as dense as
    cortex), and a bladder of contrast (a 20 mm ball at 1200 HU, dense
    throughout). The bones are other bone; the bladder is not bone, and its
    volume is counted, on thin and thick slices alike."""
    from pipeline.segment.flood import OTHER, label_other_bone
    from pipeline.segment.mask import segment_bone
    from pipeline.volume import Volume

    extent = np.array([60.0, 150.0, 120.0])  # along the array's axes (mm)
    shape = tuple(int(n) for n in np.round(extent / spacing_mm))
    k, j, i = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing_mm)), indexing="ij")
    hu = np.full(shape, 40.0, dtype=np.float32)
    long_bone, shaft = np.hypot(j - 30, i - 30) < 12, np.hypot(j - 30, i - 85) < 15
    hu[long_bone] = 300.0
    hu[long_bone & (np.hypot(j - 30, i - 30) >= 9)] = 1400.0
    hu[shaft] = 1600.0
    hu[np.hypot(j - 30, i - 85) < 9] = -50.0
    rib = np.hypot(j - 70, i - 90) < 2.5
    hu[rib] = 1100.0
    bladder = np.sqrt((k - 30) ** 2 + (j - 110) ** 2 + (i - 45) ** 2) < 20
    hu[bladder] = 1200.0
    hu = ndimage.gaussian_filter(hu, 0.7 / np.asarray(spacing_mm)).astype(np.float32)
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = spacing_mm[2], spacing_mm[1], spacing_mm[0], 1.0
    volume = Volume(hu, affine)
    bone = segment_bone(volume, Config().segment)
    raw = bone.full(shape)
    cored, core = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    cored[bone.box], core[bone.box] = bone.with_core(), volume.hu[bone.box] > bone.core_hu
    labels, pool_voxels = label_other_bone(np.zeros(shape, dtype=np.uint8), cored, core, spacing_mm)
    assert not labels[bladder].any()
    for bone_ in (long_bone, shaft, rib):
        assert np.count_nonzero(bone_ & raw) > 10 and np.all(labels[bone_ & raw] == OTHER)
    assert pool_voxels * np.prod(spacing_mm) == pytest.approx(4 / 3 * np.pi * 20 ** 3, rel=0.15)


def test_a_pool_of_contrast_in_front_of_the_spine_seeds_no_vertebra_but_a_sclerotic_vertebra_does():
    """On 1 x 1 x 3 mm voxels, axial: a vertebra dense throughout (sclerotic
    metastases: body and arch at 900 HU around its canal), a normal one (a
    1.5 mm cortex over cancellous bone at 250 HU) and an aorta of an
    angiogram (20 mm across, 600 HU) in front of them. The spine may be
    seeded in both vertebrae, not in the aorta, dense throughout without a
    canal (it was: 7 600 voxels of lumbar on Pelvic-Ref-003)."""
    from pipeline.segment.grid import Grid
    from pipeline.segment.flood import vertebral_pieces
    from pipeline.volume import Volume

    spacing = np.array([3.0, 1.0, 1.0])
    shape = (20, 120, 160)
    k, j, i = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    hu = np.full(shape, 40.0, dtype=np.float32)
    pieces = {}
    for name, x0, dense in (("sclerotic", 40.0, True), ("normal", 110.0, False)):
        body = (np.hypot(j - 70.0, i - x0) < 20.0) & (k > 6) & (k < 51)
        arch = (np.hypot((j - 100.0) / 1.3, i - x0) < 16.0) & ~(np.hypot((j - 100.0) / 1.3, i - x0) < 9.0) & (k > 6) & (k < 51)
        whole = body | arch
        if dense:
            hu[whole] = 900.0
        else:
            hu[whole] = 250.0
            hu[whole & ~ndimage.binary_erosion(whole, iterations=2)] = 1000.0
        pieces[name] = whole
    aorta = (np.hypot(j - 30.0, i - 75.0) < 10.0)
    hu[aorta] = 600.0
    pieces["aorta"] = aorta
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = 1.0, 1.0, 3.0, 1.0
    grid = Grid(Volume(hu, affine), tuple(slice(0, n) for n in shape))
    raw = hu >= 200.0
    at = np.argwhere(raw)
    allowed = np.zeros(shape, dtype=bool)
    allowed[tuple(at.T)] = vertebral_pieces(raw, at, hu > 500.0, grid)
    assert allowed[pieces["sclerotic"]].all() and allowed[pieces["normal"]].all()
    assert not allowed[pieces["aorta"]].any()


def test_watershed_by_piece_is_one_watershed_over_the_whole_box():
    """Flooding per connected piece of the unseeded voxels, from the seeds
    beside each, and labelling a piece beside one label's seeds without a
    flood, gives what one watershed over the whole box gives, with the same
    tie-break: on sparse bone (many pieces, most beside one label) and dense
    (one piece where all labels meet). HU without ties among the seeds: on
    whole-number HU, which of two seeds of equal HU the queue takes first
    decides a voxel between them, and that order is the heap's (per piece
    or over the whole box, 0-14 voxels of 30 000 differ)."""
    from skimage.segmentation import watershed

    from pipeline.segment.flood import WATERSHED_TIE_BREAK, watershed_by_piece
    rng = np.random.default_rng(3)
    for density in (0.2, 0.35, 0.6):
        hu = rng.normal(400.0, 150.0, (30, 40, 50)).astype(np.float32)
        solid = rng.random(hu.shape) < density
        seeds = np.where(solid & (rng.random(hu.shape) < 0.05), rng.integers(1, 5, hu.shape), 0).astype(np.int32)
        whole = watershed(-hu, seeds, mask=solid, compactness=WATERSHED_TIE_BREAK)
        assert np.array_equal(watershed_by_piece(hu, seeds, solid), whole)


def test_the_flood_gives_a_plateau_to_the_nearer_seed_however_stored():
    """One HU everywhere (whole-number HU make such ties on real scans) and
    two one-voxel seeds: every voxel goes to the nearer seed (no voxel is
    equally near both: the seeds' squared distance, 4^2 + 6^2 + 9^2, is
    odd), and the array stored the other way round along every axis gives
    the same. The queue order alone leaves 200 voxels to the farther seed."""
    from pipeline.segment.flood import watershed_by_piece

    shape = (12, 14, 16)
    hu = np.full(shape, 300.0, dtype=np.float32)
    solid = np.ones(shape, dtype=bool)
    first, second = np.array([2, 2, 2]), np.array([6, 8, 11])
    seeds = np.zeros(shape, dtype=np.int32)
    seeds[tuple(first)], seeds[tuple(second)] = 1, 2
    index = np.indices(shape).reshape(3, -1).T
    nearer = np.where(((index - first) ** 2).sum(axis=1) < ((index - second) ** 2).sum(axis=1), 1, 2).reshape(shape)
    assert np.array_equal(watershed_by_piece(hu, seeds, solid), nearer)
    flip = (slice(None, None, -1),) * 3
    assert np.array_equal(watershed_by_piece(hu[flip].copy(), seeds[flip].copy(), solid)[flip], nearer)


def test_bone_below_the_hip_bone_seeds_the_femur_only_on_a_side_without_a_head():
    """Threshold bone below the fitted hip bones on both sides (3 mm voxels,
    LPS axes, midline x = 60 mm, the hips' lowest point at z = 100 mm): with
    no head found it seeds each side's femur; with the left head found, the
    left femur is flooded from the head alone (below the hip bone lie a
    forearm against the thigh, or the ischium below the fit's lowest point),
    and the right side, without its head, is seeded as before."""

    from pipeline.bones import FEMUR_LEFT, FEMUR_RIGHT
    from pipeline.segment.femoral_head import Head
    from pipeline.segment.grid import Grid
    from pipeline.segment.flood import seed_labels
    from pipeline.segment.model_fit import PelvisFit
    from pipeline.volume import Volume

    shape = (40, 40, 60)   # x, y, z (mm = 3 * index)
    volume = Volume(np.zeros(shape, dtype=np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    grid = Grid(volume, tuple(slice(0, n) for n in shape))
    hip = np.array([[0.0, 0.0, 100.0], [0.0, 100.0, 130.0], [100.0, 0.0, 130.0]])
    fit = SimpleNamespace(vertices_lps_mm=np.vstack([hip, hip + [20.0, 0.0, 0.0],
                                                     [[40.0, 60.0, 150.0], [80.0, 60.0, 150.0], [60.0, 90.0, 150.0],
                                                      [100.0, 60.0, 110.0], [20.0, 60.0, 110.0]]]),
                          faces={"hip_left": np.array([[3, 4, 5]]), "hip_right": np.array([[0, 1, 2]])},
                          landmarks={"s1_endplate": np.array([6, 7, 8]), "acetabulum_left": np.array([9]),
                                     "acetabulum_right": np.array([10])})
    fit.lateral_mm = functools.partial(PelvisFit.lateral_mm, fit)
    raw = np.zeros(shape, dtype=bool)
    left, right = (slice(38, 40), slice(18, 22), slice(10, 20)), (slice(0, 2), slice(18, 22), slice(10, 20))
    raw[left] = raw[right] = True   # x 114-117 and 0-3 mm, z 30-57 mm
    head = Head(femur=FEMUR_LEFT, centre_lps_mm=np.array([110.0, 60.0, 150.0]), radius_mm=20.0, valley_hu=30.0,
                source="valley", fill_radius_mm=18.5)
    core = np.zeros(shape, dtype=bool)
    without = seed_labels(raw, grid, fit, {}, [], raw, core)
    assert np.all(without[left] == FEMUR_LEFT) and np.all(without[right] == FEMUR_RIGHT)
    found = seed_labels(raw, grid, fit, {}, [head], raw, core)
    assert not found[left].any() and np.all(found[right] == FEMUR_RIGHT)
