"""The phantom generator against geometry it does not compute itself.

Closed forms (sphere and ellipsoid volumes, areas and distances), dense
surface sampling, Monte Carlo volumes and the stated anatomy (joint spaces,
mirror symmetry, landmarks) are the truth; tolerances derive from voxel sizes.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from scipy.special import ndtr, ndtri

from pipeline.phantom import analytic as ph
from pipeline.errors import ConfigError
from pipeline.volume import orientation_code


def voxel_centres_lps(volume) -> np.ndarray:
    """(N, 3) LPS mm of every voxel centre, in C order of the array."""
    idx = np.indices(volume.shape).reshape(3, -1).T
    return volume.index_to_lps(idx)


def shell_volume_mm3(radius_mm: float, half_width_mm: float) -> float:
    """Volume within ``half_width_mm`` of a sphere's surface."""
    r0, r1 = max(radius_mm - half_width_mm, 0.0), radius_mm + half_width_mm
    return 4.0 / 3.0 * math.pi * (r1 ** 3 - r0 ** 3)


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def oblique_affine(rng, shape, spacing_mm, centre_lps_mm, *, mirrored: bool) -> np.ndarray:
    """A rotated grid centred on ``centre_lps_mm``; ``mirrored`` gives det < 0."""
    rot = random_rotation(rng)
    if (np.linalg.det(rot) > 0) == mirrored:
        rot[:, 0] *= -1.0
    a = np.eye(4)
    a[:3, :3] = rot * np.asarray(spacing_mm)
    a[:3, 3] = np.asarray(centre_lps_mm) - a[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return a


# ---------------------------------------------------------------------------
# Sphere
# ---------------------------------------------------------------------------
def test_sphere_centre_is_hu_inside_and_far_voxels_are_hu_outside():
    p = ph.sphere_phantom(radius_mm=12.0, center_lps_mm=(3.0, -4.0, 5.0), shape=(41, 41, 41),
                          spacing_mm=(1.0, 1.0, 1.0), hu_inside=900.0, hu_outside=-50.0)
    hu = p.volume.hu
    assert hu.dtype == np.float32 and p.labels.dtype == np.uint8
    np.testing.assert_allclose(p.volume.index_to_lps(np.array([20, 20, 20])), [3.0, -4.0, 5.0])
    assert hu[20, 20, 20] == pytest.approx(900.0, abs=1e-3)
    assert hu[0, 0, 0] == pytest.approx(-50.0, abs=1e-3)
    assert orientation_code(p.volume.affine) == "SPL"


def test_sphere_blurred_edge_crosses_half_level_at_the_radius():
    radius, blur = 10.0, 0.5
    p = ph.sphere_phantom(radius_mm=radius, shape=(33, 31, 29), spacing_mm=(0.7, 0.8, 0.9),
                          blur_mm=blur, hu_inside=1000.0, hu_outside=0.0)
    r = np.linalg.norm(voxel_centres_lps(p.volume), axis=1)
    f = p.volume.hu.ravel().astype(np.float64) / 1000.0
    band = (f > 0.02) & (f < 0.98)
    assert band.sum() > 500
    # Inverting the Gaussian edge puts every band voxel's surface at the radius.
    np.testing.assert_allclose(r[band] + blur * ndtri(f[band]), radius, atol=1e-3)
    # Voxels either side of the half level sit either side of the radius.
    assert np.all(r[f > 0.5] < radius) and np.all(r[f < 0.5] > radius)


def test_sphere_label_volume_within_voxel_tolerance_and_closed_form_truth():
    radius, spacing = 15.0, (1.0, 1.2, 0.9)
    p = ph.sphere_phantom(radius_mm=radius, shape=(40, 34, 44), spacing_mm=spacing)
    counted = p.labels.sum() * p.volume.voxel_volume_mm3
    exact = 4.0 / 3.0 * math.pi * radius ** 3
    assert p.truth_volume_mm3 == {1: pytest.approx(exact)}
    assert p.truth_area_mm2 == {1: pytest.approx(4.0 * math.pi * radius ** 2)}
    # Counted voxels differ from the ball only within half a voxel diagonal of the surface.
    half_diagonal = 0.5 * float(np.linalg.norm(spacing))
    assert abs(counted - exact) <= shell_volume_mm3(radius, half_diagonal)
    assert abs(counted - exact) <= 0.02 * exact


@pytest.mark.parametrize("mirrored", [False, True])
def test_sphere_on_oblique_grid_matches_analytic_profile(mirrored):
    rng = np.random.default_rng(7)
    centre, radius, blur, shape = np.array([20.0, -30.0, 12.0]), 9.0, 0.6, (26, 24, 28)
    affine = oblique_affine(rng, shape, (0.9, 1.1, 1.0), centre + 1.3, mirrored=mirrored)
    assert (np.linalg.det(affine[:3, :3]) < 0) == mirrored
    p = ph.sphere_phantom(radius_mm=radius, center_lps_mm=centre, shape=shape, affine=affine,
                          blur_mm=blur, hu_inside=1200.0, hu_outside=-100.0)
    np.testing.assert_array_equal(p.volume.affine, affine)
    d = np.linalg.norm(voxel_centres_lps(p.volume) - centre, axis=1) - radius
    expected = -100.0 + 1300.0 * ndtr(-d / blur)
    np.testing.assert_allclose(p.volume.hu.ravel(), expected, atol=0.02)
    np.testing.assert_array_equal(p.labels.ravel() == 1, d < 0)


def test_noise_is_gaussian_with_the_requested_sigma_and_seeded():
    kwargs = dict(radius_mm=5.0, shape=(30, 30, 30), spacing_mm=(1.0, 1.0, 1.0), noise_hu=25.0)
    a = ph.sphere_phantom(seed=1, **kwargs).volume.hu
    b = ph.sphere_phantom(seed=1, **kwargs).volume.hu
    c = ph.sphere_phantom(seed=2, **kwargs).volume.hu
    clean = ph.sphere_phantom(**{**kwargs, "noise_hu": 0.0}).volume.hu
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.std(a - clean) == pytest.approx(25.0, rel=0.02)


# ---------------------------------------------------------------------------
# Ellipsoid distance, area and phantom
# ---------------------------------------------------------------------------
def test_ellipsoid_distance_exact_on_the_axes():
    c = np.array([5.0, -3.0, 2.0])
    semi = (20.0, 30.0, 10.0)          # x, y, z; deliberately not sorted
    e_x, e_y, e_z = semi
    cases = {
        (45.0, 0.0, 0.0): 45.0 - e_x,                     # outside, on each axis
        (0.0, -41.0, 0.0): 41.0 - e_y,
        (0.0, 0.0, 13.0): 13.0 - e_z,
        (0.0, 0.0, 0.0): -e_z,                            # centre: nearest is the smallest axis
        (0.0, 0.0, -4.0): -(e_z - 4.0),                   # inside on the smallest axis
        (0.0, 29.0, 0.0): -(e_y - 29.0),                  # inside near the end of the longest
        # inside near the centre of a longer axis: closed form off the axis
        (0.0, 6.0, 0.0): -e_z * math.sqrt(1.0 - 6.0 ** 2 / (e_y ** 2 - e_z ** 2)),
        (-5.0, 0.0, 0.0): -e_z * math.sqrt(1.0 - 5.0 ** 2 / (e_x ** 2 - e_z ** 2)),
        (20.0, 0.0, 0.0): 0.0,                            # on the surface
    }
    pts = c + np.array(list(cases))
    expected = np.array(list(cases.values()))
    np.testing.assert_allclose(ph.ellipsoid_distance_mm(pts, c, semi, signed=True), expected,
                               atol=1e-9)
    np.testing.assert_allclose(ph.ellipsoid_distance_mm(pts, c, semi), np.abs(expected), atol=1e-9)


@pytest.mark.parametrize("rotated", [False, True])
def test_ellipsoid_distance_agrees_with_dense_surface_sampling(rotated):
    rng = np.random.default_rng(3)
    semi = np.array([30.0, 18.0, 11.0])
    c = np.array([-4.0, 7.0, 1.0])
    rot = random_rotation(rng) if rotated else np.eye(3)
    theta, phi = np.meshgrid(np.linspace(0, np.pi, 700), np.linspace(0, 2 * np.pi, 1400),
                             indexing="ij")
    local = np.stack([semi[0] * np.sin(theta) * np.cos(phi), semi[1] * np.sin(theta) * np.sin(phi),
                      semi[2] * np.cos(theta)], axis=-1)
    surface = (local @ rot.T + c).reshape(-1, 3)
    # A surface point is within one parameter step (in mm) of some sample.
    step_mm = float(semi.max()) * np.pi / 699 * math.sqrt(2.0)
    pts = c + np.concatenate([rng.uniform(-45, 45, (150, 3)), rng.uniform(-9, 9, (150, 3))])
    exact = ph.ellipsoid_distance_mm(pts, c, semi, axes_lps=rot)
    sampled, _ = cKDTree(surface).query(pts)
    assert np.all(sampled >= exact - 1e-9)
    assert np.all(sampled <= exact + step_mm)
    inside = ph.ellipsoid_distance_mm(pts, c, semi, axes_lps=rot, signed=True) < 0
    local_pts = (pts - c) @ rot
    np.testing.assert_array_equal(inside, ((local_pts / semi) ** 2).sum(axis=1) < 1)


def test_ellipsoid_surface_area_closed_form():
    assert ph.ellipsoid_surface_area_mm2((7.0, 7.0, 7.0)) == pytest.approx(4 * math.pi * 49)
    a, b = 30.0, 12.0                  # prolate spheroid, its own closed form
    ecc = math.sqrt(1 - b * b / (a * a))
    prolate = 2 * math.pi * b * b * (1 + a / (b * ecc) * math.asin(ecc))
    assert ph.ellipsoid_surface_area_mm2((b, a, b)) == pytest.approx(prolate, rel=1e-12)
    a, c = 25.0, 9.0                   # oblate spheroid
    ecc = math.sqrt(1 - c * c / (a * a))
    oblate = 2 * math.pi * a * a * (1 + (1 - ecc ** 2) / ecc * math.atanh(ecc))
    assert ph.ellipsoid_surface_area_mm2((a, c, a)) == pytest.approx(oblate, rel=1e-12)
    semi = (31.0, 17.0, 8.0)           # general: Thomsen's formula is within 1.061 %
    p = 1.6075
    ab, ac, bc = semi[0] * semi[1], semi[0] * semi[2], semi[1] * semi[2]
    thomsen = 4 * math.pi * ((ab ** p + ac ** p + bc ** p) / 3) ** (1 / p)
    assert ph.ellipsoid_surface_area_mm2(semi) == pytest.approx(thomsen, rel=0.0107)


def test_ellipsoid_phantom_follows_exact_distance_on_oblique_grid():
    rng = np.random.default_rng(11)
    semi, c, blur, shape = (24.0, 14.0, 9.0), np.array([5.0, 3.0, -2.0]), 0.45, (44, 40, 52)
    axes = random_rotation(rng)
    affine = oblique_affine(rng, shape, (1.2, 0.9, 1.1), c, mirrored=True)
    p = ph.ellipsoid_phantom(semi_axes_mm=semi, center_lps_mm=c, axes_lps=axes, shape=shape,
                             affine=affine, blur_mm=blur)
    d = ph.ellipsoid_distance_mm(voxel_centres_lps(p.volume), c, semi, axes_lps=axes, signed=True)
    np.testing.assert_allclose(p.volume.hu.ravel(), 1000.0 * ndtr(-d / blur), atol=0.02)
    np.testing.assert_array_equal(p.labels.ravel() == 1, d < 0)
    pts = voxel_centres_lps(p.volume)[::97]
    np.testing.assert_allclose(p.sdf_mm(pts), d[::97], atol=1e-9)
    exact = 4.0 / 3.0 * math.pi * np.prod(semi)
    assert p.truth_volume_mm3[1] == pytest.approx(exact)
    counted = p.labels.sum() * p.volume.voxel_volume_mm3
    half_diagonal = 0.5 * float(np.linalg.norm(p.volume.spacing_mm))
    assert abs(counted - exact) <= p.truth_area_mm2[1] * 2 * half_diagonal


# ---------------------------------------------------------------------------
# Pelvis
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pelvis():
    """The sample preset without noise: HU values are then exact functions of geometry."""
    return ph.pelvis_phantom(**{**ph.preset("sample"), "noise_hu": 0.0})


@pytest.fixture(scope="module")
def centres(pelvis):
    return voxel_centres_lps(pelvis.volume)


def test_sample_preset_fits_the_repository_budget_and_is_fast():
    kwargs = ph.preset("sample")
    assert np.prod(kwargs["shape"]) * 2 <= 9e6             # bytes as int16
    assert len(set(kwargs["spacing_mm"])) > 1               # anisotropic on purpose
    start = time.perf_counter()
    p = ph.pelvis_phantom(**kwargs)
    assert time.perf_counter() - start < 2.0
    assert p.volume.shape == tuple(kwargs["shape"])
    np.testing.assert_allclose(p.volume.spacing_mm, kwargs["spacing_mm"])
    assert orientation_code(p.volume.affine) == "SPL"
    assert ph.preset("bench")["shape"] == (300, 512, 512)
    with pytest.raises(ConfigError, match="nosuch"):
        ph.preset("nosuch")


def test_every_label_present_and_named(pelvis):
    assert pelvis.label_names == {1: "hip_left", 2: "hip_right", 3: "sacrum",
                                  4: "femur_left", 5: "femur_right", 6: "lumbar"}
    counts = np.bincount(pelvis.labels.ravel(), minlength=7)
    assert len(counts) == 7 and np.all(counts[1:] > 1000)


def test_each_bone_is_one_piece_inside_the_field_of_view(pelvis):
    for k in pelvis.label_names:
        _, n = ndi.label(pelvis.labels == k, structure=np.ones((3, 3, 3)))
        assert n == 1, pelvis.label_names[k]
    lab = pelvis.labels
    for face in (lab[0], lab[-1], lab[:, 0], lab[:, -1], lab[:, :, 0], lab[:, :, -1]):
        assert not face.any()


def test_joint_spaces_separate_every_pair_of_bones(pelvis):
    """Dilating any bone by one voxel (26-neighbourhood) never reaches another."""
    for k in pelvis.label_names:
        grown = ndi.binary_dilation(pelvis.labels == k, structure=np.ones((3, 3, 3)))
        others = np.unique(pelvis.labels[grown])
        assert set(others.tolist()) <= {0, k}, pelvis.label_names[k]


def surface_voxels(labels: np.ndarray, label: int) -> np.ndarray:
    """Flat indices of voxels of ``label`` with a face neighbour outside it."""
    mask = labels == label
    return np.flatnonzero(mask & ~ndi.binary_erosion(mask))


def test_joint_spaces_are_the_stated_width(pelvis, centres):
    """Surface voxels of one bone lie JOINT_GAP_MM or more from every other bone."""
    surface = {k: centres[surface_voxels(pelvis.labels, k)] for k in pelvis.label_names}
    closest = {}
    for a, b in itertools.combinations(pelvis.label_names, 2):
        lo, hi = surface[b].min(axis=0) - 10.0, surface[b].max(axis=0) + 10.0
        near_b = surface[a][np.all((surface[a] > lo) & (surface[a] < hi), axis=1)]
        closest[a, b] = float(pelvis.label_sdf_mm(b, near_b).min()) if len(near_b) else 10.0
        assert closest[a, b] >= ph.JOINT_GAP_MM, (a, b)
    # The joints are contacts, not distant bones: the closest surface voxels sit
    # JOINT_GAP_MM plus at most their depth below the surface (< half a voxel diagonal).
    half_diagonal = 0.5 * float(np.linalg.norm(pelvis.volume.spacing_mm))
    for pair in [(1, 3), (2, 3), (1, 4), (2, 5), (1, 2)]:
        assert closest[pair] <= ph.JOINT_GAP_MM + half_diagonal, pair
    assert closest[3, 6] >= 8.0                            # the L5-S1 disc


def test_left_is_plus_x_and_left_right_mirror(pelvis):
    v = pelvis.volume
    centroid_x = {k: v.index_to_lps(np.argwhere(pelvis.labels == k)).mean(axis=0)[0]
                  for k in pelvis.label_names}
    assert centroid_x[1] > 40 and centroid_x[4] > 40
    assert centroid_x[2] < -40 and centroid_x[5] < -40
    # The grid is symmetric about x = 0 (columns run along +x), so flipping columns mirrors.
    np.testing.assert_allclose(v.index_to_lps(np.array([0, 0, 0]))[0],
                               -v.index_to_lps(np.array([0, 0, v.shape[2] - 1]))[0])
    flipped = pelvis.labels[:, :, ::-1]
    for left, right in [(1, 2), (4, 5)]:
        a, b = flipped == left, pelvis.labels == right
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice >= 0.99
    assert abs(centroid_x[3]) < 1.0 and abs(centroid_x[6]) < 1.0


def test_pelvis_dimensions_are_adult(pelvis):
    hips = np.isin(pelvis.labels, (1, 2))
    x = pelvis.volume.index_to_lps(np.argwhere(hips))[:, 0]
    assert 270.0 <= x.max() - x.min() <= 295.0          # width at the iliac crests
    bone = pelvis.volume.index_to_lps(np.argwhere(pelvis.labels > 0))[:, 2]
    assert 170.0 <= bone.max() - bone.min() <= 200.0     # L5 to proximal femoral shaft


def test_couch_is_denser_than_bone_threshold_and_not_bone(pelvis):
    v = pelvis.volume
    y = v.index_to_lps(np.stack([np.zeros(v.shape[1]), np.arange(v.shape[1]),
                                 np.zeros(v.shape[1])], axis=1))[:, 1]
    below_body = y > ph.BODY_SEMI_AXES_MM[1]
    couch_hu = v.hu[:, below_body, :]
    assert (couch_hu > 200).sum() > 1000
    assert (couch_hu > 1500).sum() > 100                 # metal rails
    assert not pelvis.labels[:, below_body, :].any()
    # The plate spans the field of view: dense in the middle and near both edges.
    dense_columns = (couch_hu > 200).any(axis=(0, 1))
    n = v.shape[2]
    assert dense_columns[n // 2]
    assert dense_columns[: n // 10].any() and dense_columns[-n // 10:].any()


def test_bone_interior_is_not_uniformly_above_threshold(pelvis):
    hu, lab = pelvis.volume.hu, pelvis.labels
    for k in pelvis.label_names:
        marrow = (lab == k) & (hu < 200.0)
        assert marrow.sum() > 50, pelvis.label_names[k]
    cortex_peak = hu[lab > 0].max()
    assert cortex_peak > 0.9 * ph.HU_CORTICAL


def test_half_level_lies_on_the_truth_surface(pelvis, centres):
    """Voxels at the outer bone surface follow the blurred-step model of their bone."""
    pts = centres
    blur = ph.preset("sample")["blur_mm"]
    for k in (1, 3, 4):
        near = surface_voxels(pelvis.labels, k)
        near = near[np.abs(pelvis.label_sdf_mm(k, pts[near])) < 0.4]
        assert len(near) > 500
        d = pelvis.label_sdf_mm(k, pts[near])
        expected = (ph.HU_MUSCLE + (ph.HU_CORTICAL - ph.HU_MUSCLE) * ndtr(-d / blur)
                    + (ph.HU_CANCELLOUS - ph.HU_CORTICAL) * ndtr(-(d + ph.CORTEX_MM) / blur))
        np.testing.assert_allclose(pelvis.volume.hu.ravel()[near], expected, atol=1.0)


def test_sdf_sign_matches_labels(pelvis, centres):
    rng = np.random.default_rng(5)
    pick = rng.choice(pelvis.labels.size, 30000, replace=False)
    pick = np.concatenate([pick, np.flatnonzero(pelvis.labels.ravel())[::20]])
    pts = centres[pick]
    lab = pelvis.labels.ravel()[pick]
    np.testing.assert_array_equal(pelvis.sdf_mm(pts) < 0, lab > 0)
    for k in pelvis.label_names:
        np.testing.assert_array_equal(pelvis.label_sdf_mm(k, pts) < 0, lab == k)


def test_landmarks_lie_where_stated(pelvis):
    lm = pelvis.landmarks_lps_mm
    sdf = pelvis.label_sdf_mm
    gap = ph.JOINT_GAP_MM
    for name, point in lm.items():
        assert point.shape == (3,)
        if name.startswith("left_"):
            assert point[0] > 0
            np.testing.assert_allclose(lm["right_" + name[5:]], point * [-1, 1, 1])
    for side, hip, femur in (("left", 1, 4), ("right", 2, 5)):
        head = lm[f"{side}_femoral_head_centre"]
        assert sdf(femur, head) == pytest.approx(-23.0, abs=1.0)        # deep in the head
        np.testing.assert_allclose(lm[f"{side}_acetabulum_centre"], head)
        assert sdf(hip, head) == pytest.approx(23.0 + gap, abs=0.5)       # socket around it
        si = lm[f"{side}_si_joint"]
        assert pelvis.sdf_mm(si) > 0                                     # in the joint space
        assert 0 < sdf(hip, si) <= gap and 0 < sdf(3, si) <= gap
        assert sdf(3, lm[f"{side}_sacral_ala"]) < -2.0
        supra = lm[f"{side}_supra_acetabular"]
        assert sdf(hip, supra) < -2.0 and supra[2] > head[2] + 23.0 + gap
        assert pelvis.sdf_mm(lm[f"{side}_obturator_foramen_centre"]) > 5.0   # foramen is open
        for surface_point in ("iliac_crest_top", "asis", "ischial_tuberosity"):
            assert abs(sdf(hip, lm[f"{side}_{surface_point}"])) < 1e-6
        assert abs(sdf(femur, lm[f"{side}_greater_trochanter_top"])) < 1e-6
        hip_z = pelvis.volume.index_to_lps(np.argwhere(pelvis.labels == hip))[:, 2]
        top, bottom = lm[f"{side}_iliac_crest_top"][2], lm[f"{side}_ischial_tuberosity"][2]
        slice_mm = pelvis.volume.spacing_mm[0]
        assert top - 2 * slice_mm <= hip_z.max() <= top              # highest point of the hip
        assert bottom <= hip_z.min() <= bottom + 2 * slice_mm        # lowest point of the hip
    assert lm["symphysis"][0] == 0.0
    assert sdf(1, lm["symphysis"]) == pytest.approx(gap / 2) == sdf(2, lm["symphysis"])
    assert abs(sdf(3, lm["sacral_promontory"])) < 1e-6
    assert abs(sdf(3, lm["s1_endplate_centre"])) < 1e-6
    assert sdf(6, lm["l5_body_centre"]) < -5.0


def test_landmark_voxels_carry_the_expected_labels(pelvis):
    inv = np.linalg.inv(pelvis.volume.affine)
    expected = {"left_femoral_head_centre": 4, "right_femoral_head_centre": 5,
                "left_sacral_ala": 3, "left_supra_acetabular": 1, "right_supra_acetabular": 2,
                "l5_body_centre": 6, "symphysis": 0, "left_obturator_foramen_centre": 0}
    for name, label in expected.items():
        k, j, i = np.rint(inv[:3, :3] @ pelvis.landmarks_lps_mm[name] + inv[:3, 3]).astype(int)
        assert pelvis.labels[k, j, i] == label, name


def test_anatomy_is_independent_of_the_grid(pelvis):
    coarse = ph.pelvis_phantom(shape=(50, 80, 100), spacing_mm=(4.0, 3.5, 3.5), noise_hu=0.0)
    assert coarse.landmarks_lps_mm.keys() == pelvis.landmarks_lps_mm.keys()
    for name, point in pelvis.landmarks_lps_mm.items():
        np.testing.assert_array_equal(coarse.landmarks_lps_mm[name], point)
    for k in pelvis.label_names:
        fine_mm3 = (pelvis.labels == k).sum() * pelvis.volume.voxel_volume_mm3
        coarse_mm3 = (coarse.labels == k).sum() * coarse.volume.voxel_volume_mm3
        assert coarse_mm3 == pytest.approx(fine_mm3, rel=0.1)


def test_truth_volumes_agree_with_monte_carlo(pelvis, centres):
    rng = np.random.default_rng(13)
    n = 200_000
    truth = pelvis.truth_volume_mm3
    assert set(truth) == set(pelvis.label_names) and "1 mm grid" in pelvis.truth_notes
    for k in pelvis.label_names:
        pts = centres[pelvis.labels.ravel() == k]
        lo, hi = pts.min(axis=0) - 5.0, pts.max(axis=0) + 5.0      # 5 mm > 2 voxel margin
        box_mm3 = float(np.prod(hi - lo))
        inside = pelvis.label_sdf_mm(k, rng.uniform(lo, hi, (n, 3))) < 0
        frac = inside.mean()
        sigma = box_mm3 * math.sqrt(frac * (1 - frac) / n)
        assert abs(box_mm3 * frac - truth[k]) < 4.5 * sigma, pelvis.label_names[k]
    assert truth[1] == pytest.approx(truth[2], rel=1e-3)


def test_pelvis_is_deterministic_for_a_seed():
    kwargs = dict(shape=(40, 60, 80), spacing_mm=(5.0, 5.0, 5.0), noise_hu=20.0)
    a = ph.pelvis_phantom(seed=3, **kwargs)
    b = ph.pelvis_phantom(seed=3, **kwargs)
    c = ph.pelvis_phantom(seed=4, **kwargs)
    np.testing.assert_array_equal(a.volume.hu, b.volume.hu)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.volume.hu, c.volume.hu)
    np.testing.assert_array_equal(a.labels, c.labels)


def test_loud_input_checks():
    with pytest.raises(ValueError, match="shape"):
        ph.sphere_phantom(radius_mm=5.0, shape=(10, 10), spacing_mm=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="radius_mm"):
        ph.sphere_phantom(radius_mm=-1.0, shape=(10, 10, 10), spacing_mm=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="exactly one"):
        ph.sphere_phantom(radius_mm=5.0, shape=(10, 10, 10), spacing_mm=(1.0, 1.0, 1.0),
                          affine=np.eye(4))
    with pytest.raises(ValueError, match="spacing_mm"):
        ph.pelvis_phantom(shape=(10, 10, 10), spacing_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="semi_axes_mm"):
        ph.ellipsoid_distance_mm(np.zeros((2, 3)), (0, 0, 0), (1.0, 2.0))
    with pytest.raises(ValueError, match="unknown label"):
        ph.sphere_phantom(radius_mm=5.0, shape=(10, 10, 10),
                          spacing_mm=(1.0, 1.0, 1.0)).label_sdf_mm(2, np.zeros(3))
