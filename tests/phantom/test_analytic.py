"""The phantom generator against geometry it does not compute itself.

Closed forms (sphere and ellipsoid volumes, areas and distances) and dense
surface sampling are the truth; tolerances derive from voxel sizes. The
pelvis phantom has its own tests (``test_pelvis.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.special import ndtr, ndtri

from pipeline.phantom import analytic as ph
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


def test_loud_input_checks():
    with pytest.raises(ValueError, match="shape"):
        ph.sphere_phantom(radius_mm=5.0, shape=(10, 10), spacing_mm=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="radius_mm"):
        ph.sphere_phantom(radius_mm=-1.0, shape=(10, 10, 10), spacing_mm=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="exactly one"):
        ph.sphere_phantom(radius_mm=5.0, shape=(10, 10, 10), spacing_mm=(1.0, 1.0, 1.0),
                          affine=np.eye(4))
    with pytest.raises(ValueError, match="semi_axes_mm"):
        ph.ellipsoid_distance_mm(np.zeros((2, 3)), (0, 0, 0), (1.0, 2.0))
    with pytest.raises(ValueError, match="unknown label"):
        ph.sphere_phantom(radius_mm=5.0, shape=(10, 10, 10),
                          spacing_mm=(1.0, 1.0, 1.0)).label_sdf_mm(2, np.zeros(3))
