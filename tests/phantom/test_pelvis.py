"""The pelvis phantom against truth it does not compute itself.

Inside and outside of the shape-model bones come from the generalised winding
number and distances from every triangle (:mod:`tests.phantom.mesh_truth`);
joint spaces, landmarks and HU profiles from the stated anatomy and the
blurred-step model of :mod:`pipeline.phantom.analytic`. Tolerances derive
from the voxel size and the blur.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.special import ndtr

from pipeline.errors import ConfigError
from pipeline.phantom import analytic as ph
from pipeline.phantom import body
from pipeline.phantom import pelvis as an

from .mesh_truth import brute_force_distance_mm, winding_number

PRESET = an.preset("sample")
BLUR_MM = PRESET["blur_mm"]
MODEL_BONES = {1: "hip_left", 2: "hip_right", 3: "sacrum"}


@pytest.fixture(scope="module")
def sample():
    return an.pelvis_phantom(**PRESET)


@pytest.fixture(scope="module")
def clean():
    """The sample grid without noise."""
    return an.pelvis_phantom(**{**PRESET, "noise_hu": 0.0})


def meshes():
    """The model bones' truth meshes (hip bones, sacrum S1-S3)."""
    leaves = an._anatomy().leaves
    return {label: leaves[name].mesh for label, name in MODEL_BONES.items()}


def voxel_lps(volume, index: np.ndarray) -> np.ndarray:
    return volume.index_to_lps(index)


def near_surface_points(mesh, n: int, spread_mm: float, seed: int) -> np.ndarray:
    """Points on random triangles, moved along the normal by up to ``spread_mm``."""
    rng = np.random.default_rng(seed)
    face = rng.integers(0, len(mesh.faces), n)
    a, b, c = (corner[face] for corner in mesh.corners)
    u, v = rng.random((2, n))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    on = a + u[:, None] * (b - a) + v[:, None] * (c - a)
    return on + rng.uniform(-spread_mm, spread_mm, (n, 1)) * mesh.face_normals[face]


def surface_samples(mesh, parts: int = 3) -> np.ndarray:
    """Every vertex and a regular lattice of points on every triangle."""
    a, b, c = mesh.corners
    out = [mesh.vertices_mm]
    for i in range(parts + 1):
        for j in range(parts + 1 - i):
            if (i, j) not in ((0, 0), (parts, 0), (0, parts)):
                out.append(a + i / parts * (b - a) + j / parts * (c - a))
    return np.concatenate(out)


# ---------------------------------------------------------------------------
# Truth: inside, distance, clean surfaces
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("label", sorted(MODEL_BONES))
def test_inside_is_the_independent_winding_number(label):
    mesh = meshes()[label]
    rng = np.random.default_rng(label)
    lo, hi = mesh.bounds_mm
    pts = np.concatenate([near_surface_points(mesh, 1500, 4.0, label), rng.uniform(lo - 5, hi + 5, (500, 3))])
    truth = winding_number(mesh.vertices_mm, mesh.faces, pts) > 0.5
    np.testing.assert_array_equal(mesh.signed_distance_mm(pts) < 0, truth)


@pytest.mark.parametrize("label", [1, 2])
def test_rendered_labels_are_the_winding_number_at_voxel_centres(sample, label):
    """Hip bones are their meshes alone: a voxel is labelled iff its centre is
    inside. Voxels on both sides of the label's border, and anywhere near the bone."""
    mesh = meshes()[label]
    mask = sample.labels == label
    border = np.argwhere(ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask))
    lo, hi = (np.round(c).astype(int) for c in
              np.sort(np.linalg.inv(sample.volume.affine)[:3, :3] @ mesh.bounds_mm.T, axis=1).T
              + np.linalg.inv(sample.volume.affine)[:3, 3])
    rng = np.random.default_rng(label)
    box = rng.integers(np.maximum(lo, 0), np.minimum(hi, sample.labels.shape), (800, 3))
    index = np.concatenate([border[rng.choice(len(border), 1700, replace=False)], box])
    truth = winding_number(mesh.vertices_mm, mesh.faces, voxel_lps(sample.volume, index)) > 0.5
    np.testing.assert_array_equal(sample.labels[tuple(index.T)] == label, truth)
    assert truth.sum() > 400 and (~truth).sum() > 400


@pytest.mark.parametrize("label", sorted(MODEL_BONES))
def test_every_face_separates_inside_from_outside(label):
    """No fold or self-intersection: just behind every sampled face the winding
    number is 1, just in front 0 (faces sampled at random)."""
    mesh = meshes()[label]
    face = np.random.default_rng(label).choice(len(mesh.faces), 400, replace=False)
    centre = np.mean(mesh.corners, axis=0)[face]
    step = 1e-3 * mesh.face_normals[face]
    inside = winding_number(mesh.vertices_mm, mesh.faces, centre - step)
    outside = winding_number(mesh.vertices_mm, mesh.faces, centre + step)
    np.testing.assert_allclose(inside, 1.0, atol=1e-6)
    np.testing.assert_allclose(outside, 0.0, atol=1e-6)
    assert mesh.check() == ""


@pytest.mark.parametrize("label", sorted(MODEL_BONES))
def test_distance_is_the_nearest_of_all_triangles(label):
    mesh = meshes()[label]
    pts = near_surface_points(mesh, 600, 6.0, 10 + label)
    np.testing.assert_allclose(np.abs(mesh.signed_distance_mm(pts)),
                               brute_force_distance_mm(mesh.vertices_mm, mesh.faces, pts), atol=1e-9)


def test_grid_distances_are_exact_in_their_band():
    mesh = meshes()[1]
    affine = ph.axial_affine(PRESET["shape"], PRESET["spacing_mm"], an.GRID_CENTRE_LPS_MM)
    inverse = np.linalg.inv(affine)
    lo, hi = mesh.bounds_mm
    corners = np.array([lo - 6, hi + 6]) @ inverse[:3, :3].T + inverse[:3, 3]
    start = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    stop = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 1, PRESET["shape"])
    band = (-5.4, 3.6)
    grid = mesh.grid_distance_mm(affine, start, stop, band)
    index = np.argwhere(np.ones(grid.shape, bool))[::7]
    values = grid[tuple(index.T)]
    pts = (index + start) @ affine[:3, :3].T + affine[:3, 3]
    within = np.flatnonzero((values > band[0]) & (values < band[1]))
    pick = np.random.default_rng(3).choice(within, 1500, replace=False)
    np.testing.assert_allclose(np.abs(values[pick]), brute_force_distance_mm(mesh.vertices_mm, mesh.faces, pts[pick]),
                               atol=1e-9)
    # beyond the band: the band's edge on the side the winding number says
    beyond = np.random.default_rng(4).choice(np.flatnonzero((values <= band[0]) | (values >= band[1])), 300)
    exact = mesh.signed_distance_mm(pts[beyond])
    np.testing.assert_array_equal(values[beyond] < 0, exact < 0)
    assert np.all(np.abs(exact) >= np.where(exact < 0, -band[0], band[1]) - 1e-9)


# ---------------------------------------------------------------------------
# Anatomy: joint spaces and landmarks
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("a, b", [(1, 3), (2, 3), (1, 2), (4, 1), (5, 2), (6, 3), (6, 1), (6, 2)])
def test_joint_spaces_are_open(a, b):
    """Sacroiliac joints, symphysis, hip joints (femoral heads, necks and
    trochanters against the hip bones), L5/S1: the truth surfaces keep at
    least 2 mm apart (3 mm designed; 2.5 mm at L5/S1). The model bone's surface
    is sampled every ~1.3 mm (vertices and a lattice on each triangle); the
    other bone's distance is 1-Lipschitz, so 2.4 mm at the samples leaves at
    least 2 mm between them."""
    mesh_label = a if a in MODEL_BONES else b
    other = an._anatomy().bones[b if mesh_label == a else a]
    pts = surface_samples(meshes()[mesh_label], parts=3)
    pts = pts[np.all((pts > other.lo - 5.0) & (pts < other.hi + 5.0), axis=1)]
    assert float(np.min(other.sdf(*pts.T))) >= 2.4


def test_sacral_tail_is_clear_of_the_hip_bones():
    tail = an._anatomy().bones[3].children[1]      # S4-S5 and the coccyx
    for label in (1, 2):
        pts = surface_samples(meshes()[label], parts=3)
        pts = pts[np.all((pts > tail.lo - 5.0) & (pts < tail.hi + 5.0), axis=1)]
        assert len(pts) == 0 or float(np.min(tail.sdf(*pts.T))) >= 2.4


def rays_hit(phantom, label: int, origin: np.ndarray, directions: np.ndarray, reach_mm: float,
             step_mm: float = 0.25) -> np.ndarray:
    """Whether rays from ``origin`` enter bone ``label`` within ``reach_mm``."""
    t = np.arange(step_mm, reach_mm, step_mm)
    pts = origin + t[None, :, None] * directions[:, None, :]
    return (phantom.label_sdf_mm(label, pts) < 0).any(axis=1)


def fibonacci_directions(n: int) -> np.ndarray:
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5 ** 0.5) * k
    return np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], axis=1)


@pytest.mark.parametrize("side, hip, femur", [("left", 1, 4), ("right", 2, 5)])
def test_femoral_head_centre_is_in_the_head_and_the_acetabulum_around_it(sample, side, hip, femur):
    """The centre lies deep in the femoral head; the socket wall closes over it
    within a few mm of the joint space in every direction within 60 degrees of
    medial-superior (the cup's fundus and roof), and leaves it open laterally."""
    c = sample.landmarks_lps_mm[f"{side}_femoral_head_centre"]
    np.testing.assert_array_equal(c, sample.landmarks_lps_mm[f"{side}_acetabulum_centre"])
    radius_mm = -float(sample.label_sdf_mm(femur, c))
    assert radius_mm > 15.0
    lateral = np.array([1.0 if side == "left" else -1.0, 0.0, 0.0])
    directions = fibonacci_directions(400)
    cup = directions[directions @ (np.array([0.0, 0.0, 1.0]) - lateral) / np.sqrt(2) > 0.5]
    wall_mm = radius_mm + an.HIP_GAP_MM + 8.0
    assert rays_hit(sample, hip, c, cup, wall_mm).all()
    opening = directions[directions @ lateral > np.cos(np.radians(20))]
    assert not rays_hit(sample, hip, c, opening, wall_mm).any()


@pytest.mark.parametrize("side, hip", [("left", 1), ("right", 2)])
def test_obturator_foramen_centre_lies_in_the_open_foramen(sample, side, hip):
    """Outside every bone; lines through it in a cone of directions (the
    foramen's axis) miss the hip bone, and in a plane across that cone the hip
    bone encloses the point: rays in every direction of the plane enter it
    within 45 mm."""
    c = sample.landmarks_lps_mm[f"{side}_obturator_foramen_centre"]
    assert min(float(sample.label_sdf_mm(k, c)) for k in sample.label_names) > 5.0
    directions = fibonacci_directions(1000)
    directions = directions[directions[:, 2] >= 0]
    free = directions[~rays_hit(sample, hip, c, directions, 60.0, 0.5)
                      & ~rays_hit(sample, hip, c, -directions, 60.0, 0.5)]
    assert len(free) > 20
    axis = np.linalg.eigh(free.T @ free)[1][:, -1]
    angle = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    enclosed = False
    for n in free[np.abs(free @ axis) > np.cos(np.radians(15))]:
        e1 = np.cross(n, [0.0, 0.0, 1.0]) if abs(n[2]) < 0.9 else np.cross(n, [1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1)
        around = np.cos(angle)[:, None] * e1 + np.sin(angle)[:, None] * np.cross(n, e1)
        if rays_hit(sample, hip, c, around, 45.0, 0.5).all():
            enclosed = True
            break
    assert enclosed


def test_symphysis_lies_in_the_gap_between_the_pubic_bones(sample):
    s = sample.landmarks_lps_mm["symphysis"]
    d_left, d_right = sample.label_sdf_mm(1, s), sample.label_sdf_mm(2, s)
    assert d_left > 0.5 and d_right > 0.5
    assert abs(d_left - d_right) < 0.5 and d_left + d_right < an.SYMPHYSIS_GAP_MM + 1.0
    x = np.array([[1.0, 0.0, 0.0]])
    assert rays_hit(sample, 1, s, x, 10.0)[0] and rays_hit(sample, 2, s, -x, 10.0)[0]


@pytest.mark.parametrize("side, hip", [("left", 1), ("right", 2)])
def test_sacroiliac_landmarks(sample, side, hip):
    lm = sample.landmarks_lps_mm
    si = lm[f"{side}_si_joint"]
    d_hip, d_sacrum = sample.label_sdf_mm(hip, si), sample.label_sdf_mm(3, si)
    assert d_hip > 0.5 and d_sacrum > 0.5 and d_hip + d_sacrum < an.SI_GAP_MM + 1.0
    assert sample.label_sdf_mm(3, lm[f"{side}_sacral_ala"]) < -2.0
    assert sample.label_sdf_mm(hip, lm[f"{side}_supra_acetabular"]) < -2.0


def test_surface_and_interior_landmarks(sample):
    lm, f = sample.landmarks_lps_mm, sample.label_sdf_mm
    for side, hip, femur in (("left", 1, 4), ("right", 2, 5)):
        for name in ("iliac_crest_top", "asis", "ischial_tuberosity"):
            assert abs(f(hip, lm[f"{side}_{name}"])) < 1e-6
        assert abs(f(femur, lm[f"{side}_greater_trochanter_top"])) < 1e-6
        assert lm[f"{side}_iliac_crest_top"][2] > lm[f"{side}_supra_acetabular"][2] > \
            lm[f"{side}_ischial_tuberosity"][2]
    for name in ("s1_endplate_centre", "sacral_promontory"):
        assert abs(f(3, lm[name])) < 1e-6
    assert lm["sacral_promontory"][1] < lm["s1_endplate_centre"][1]        # in front of it
    assert f(6, lm["l5_body_centre"]) < -5.0
    assert lm["left_asis"][0] > 0 > lm["right_asis"][0]


# ---------------------------------------------------------------------------
# HU: the blurred-step model over the truth distances
# ---------------------------------------------------------------------------
def test_hu_is_the_blurred_layers_of_the_hip_surface(clean):
    """Near the iliac wings, away from the acetabulum (no thickened cortex) and
    from everything else, HU = muscle + (cortex - muscle) Phi(-d / blur) +
    (cancellous - cortex) Phi(-(d + 1 mm) / blur) with d the truth distance."""
    anatomy = an._anatomy()
    for label, side in ((1, 1.0), (2, -1.0)):
        mask = clean.labels == label
        shell = ndimage.binary_dilation(mask, iterations=2) & ~ndimage.binary_erosion(mask, iterations=2)
        index = np.argwhere(shell)
        index = index[np.random.default_rng(label).choice(len(index), 8000, replace=False)]
        pts = voxel_lps(clean.volume, index)
        keep = (np.linalg.norm(pts - anatomy.tissues["heads"][side], axis=1) > 70.0) \
            & ((pts[:, 0] / 140.0) ** 2 + (pts[:, 1] / 90.0) ** 2 < 1.0)      # well inside the muscle
        index, pts = index[keep], pts[keep]
        others = np.min([clean.label_sdf_mm(k, pts) for k in clean.label_names if k != label], axis=0)
        d = clean.label_sdf_mm(label, pts)
        pick = (np.abs(d) < 3.0) & (others > 8.0)
        assert pick.sum() > 500
        expected = (body.HU_MUSCLE + (an.HU_CORTICAL - body.HU_MUSCLE) * ndtr(-d[pick] / BLUR_MM)
                    + (an.HU_HIP_CANCELLOUS - an.HU_CORTICAL) * ndtr(-(d[pick] + an.CORTEX_MM) / BLUR_MM))
        np.testing.assert_allclose(clean.volume.hu[tuple(index[pick].T)], expected, atol=0.05)


def test_marrow_and_cancellous_bone_below_a_bone_threshold(clean):
    """The sacrum's interior (fatty marrow) and the vertebral bodies'
    cancellous bone lie below 200 HU, as on real CT; the hip's cancellous bone
    is HU_HIP_CANCELLOUS. Voxels at least cortex + blur band inside the truth surface."""
    rng = np.random.default_rng(5)
    for label, deep_mm, check in ((3, an.CORTEX_MM, lambda hu: hu.max() < 200.0),
                                  (6, an.CORTEX_MM, lambda hu: hu.max() < 200.0),
                                  (1, an.CORTEX_MM + an.HIP_CORTEX_EXTRA_MM,
                                   lambda hu: np.allclose(hu, an.HU_HIP_CANCELLOUS, atol=0.05))):
        index = np.argwhere(ndimage.binary_erosion(clean.labels == label, iterations=2))
        index = index[rng.choice(len(index), min(len(index), 3000), replace=False)]
        d = clean.label_sdf_mm(label, voxel_lps(clean.volume, index))
        deep = d < -(deep_mm + 6 * BLUR_MM)
        assert deep.sum() > 100
        assert check(clean.volume.hu[tuple(index[deep].T)].astype(np.float64))


def test_half_hu_crossing_of_a_blurred_edge_lies_on_the_truth_surface():
    """A line along x through the ilium's lateral surface above the acetabulum
    (thick cortex, normal close to x), rendered at 0.02 mm: the HU half-way
    between muscle and cortex is crossed within 2 % of the blur of where the
    line leaves the truth surface."""
    mesh = meshes()[1]
    head = an._anatomy().tissues["heads"][1.0]
    v = mesh.vertices_mm
    normals = mesh.vertex_normals / np.linalg.norm(mesh.vertex_normals, axis=1)[:, None]
    r = np.linalg.norm(v - head, axis=1)
    ok = (r > 30) & (r < 42) & (v[:, 2] > head[2] + 20) & (normals[:, 0] > 0.95)
    p = v[np.flatnonzero(ok)[0]]
    step = 0.02
    line = an.pelvis_phantom(shape=(1, 1, 801), spacing_mm=(1.0, 1.0, step), noise_hu=0.0,
                                        blur_mm=BLUR_MM, center_lps_mm=p, couch=False)
    x = voxel_lps(line.volume, np.argwhere(np.ones((1, 1, 801), bool)))[:, 0]
    hu = line.volume.hu[0, 0].astype(np.float64)
    half = 0.5 * (body.HU_MUSCLE + an.HU_CORTICAL)
    k = np.flatnonzero((hu[:-1] >= half) & (hu[1:] < half))
    assert len(k) == 1
    k = int(k[0])
    crossing = x[k] + (hu[k] - half) / (hu[k] - hu[k + 1]) * step
    sdf = line.label_sdf_mm(1, np.stack([x, np.full_like(x, p[1]), np.full_like(x, p[2])], axis=1))
    j = int(np.flatnonzero((sdf[:-1] < 0) & (sdf[1:] >= 0))[-1])
    surface = x[j] + (-sdf[j]) / (sdf[j + 1] - sdf[j]) * step
    assert abs(crossing - surface) < 0.02 * BLUR_MM


# ---------------------------------------------------------------------------
# Variants, determinism, presets
# ---------------------------------------------------------------------------
def test_variants_change_what_they_say_and_nothing_else(clean):
    kwargs = {**PRESET, "noise_hu": 0.0}
    base, lm = clean, clean.landmarks_lps_mm
    spacing = np.asarray(PRESET["spacing_mm"])
    # A voxel within the blur band (6 blur widths) of a bone: near a labelled
    # voxel, or (thin bone between voxel centres) by the truth distance.
    from_bone = ndimage.distance_transform_edt(base.labels == 0, sampling=spacing)
    reach = 6 * BLUR_MM

    osteo = an.pelvis_phantom(**kwargs, osteoporotic=True)
    np.testing.assert_array_equal(osteo.labels, base.labels)
    changed = np.abs(osteo.volume.hu - base.volume.hu) > 1e-3      # float32 sums differ in the last bit
    assert changed.any()
    unsure = np.argwhere(changed & (from_bone > reach - 0.5 * float(np.linalg.norm(spacing))))
    pts = voxel_lps(base.volume, unsure)
    assert np.all(np.min([base.label_sdf_mm(k, pts) for k in base.label_names], axis=0) < reach)
    assert osteo.volume.hu[base.labels > 0].mean() < base.volume.hu[base.labels > 0].mean() - 100

    contrast = an.pelvis_phantom(**kwargs, contrast=True)
    np.testing.assert_array_equal(contrast.labels, base.labels)
    changed = np.argwhere(np.abs(contrast.volume.hu - base.volume.hu) > 1e-3)
    assert (contrast.volume.hu - base.volume.hu).max() > 200
    # the changes are vessels, bladder and calcifications: none deep in a bone
    some = voxel_lps(base.volume, changed[np.random.default_rng(0).choice(len(changed), 3000)])
    assert np.min([base.label_sdf_mm(k, some) for k in base.label_names]) > -an.CORTEX_MM

    lesion = an.pelvis_phantom(**kwargs, lesion=True)
    c = lesion.landmarks_lps_mm["lesion_centre"]
    assert set(lesion.landmarks_lps_mm) - set(lm) == {"lesion_centre"}
    assert lesion.intact_label_sdf_mm(1, c) < 0 < lesion.label_sdf_mm(1, c)
    lost = lesion.labels != base.labels
    assert lost.any() and np.all(base.labels[lost] == 1) and np.all(lesion.labels[lost] == 0)
    changed = np.argwhere(np.abs(lesion.volume.hu - base.volume.hu) > 1e-3)
    far = np.linalg.norm(voxel_lps(base.volume, changed) - c, axis=1)
    # the bone's layers follow the lesion's wall inwards: cortex, thickened near the acetabulum
    assert far.max() <= an.LESION_RADIUS_MM + an.CORTEX_MM + an.HIP_CORTEX_EXTRA_MM + 6 * BLUR_MM + 1e-3
    for other in (osteo, contrast, lesion):
        for name, point in lm.items():
            np.testing.assert_array_equal(other.landmarks_lps_mm[name], point)


def test_deterministic_for_a_seed(sample):
    again = an.pelvis_phantom(**PRESET)
    np.testing.assert_array_equal(again.volume.hu, sample.volume.hu)
    np.testing.assert_array_equal(again.labels, sample.labels)
    other = an.pelvis_phantom(**{**PRESET, "seed": PRESET["seed"] + 1})
    np.testing.assert_array_equal(other.labels, sample.labels)
    diff = other.volume.hu - sample.volume.hu
    assert diff.std() == pytest.approx(np.sqrt(2) * PRESET["noise_hu"], rel=0.02)


def test_sample_holds_the_anatomy_and_presets_are_fresh(sample):
    counts = {name: int((sample.labels == k).sum()) for k, name in sample.label_names.items()}
    assert all(n > 10000 for n in counts.values()), counts
    # the hip bones' voxel counts agree with their meshes' volumes (exact, divergence theorem)
    voxel_mm3 = float(np.prod(PRESET["spacing_mm"]))
    for label in (1, 2):
        assert counts[sample.label_names[label]] * voxel_mm3 == pytest.approx(meshes()[label].volume_mm3, rel=0.02)
    a = an.preset("sample")
    a["shape"] = (1, 1, 1)
    assert an.preset("sample")["shape"] == PRESET["shape"]


# ---------------------------------------------------------------------------
# The scan around the bones
# ---------------------------------------------------------------------------
def test_each_bone_is_one_piece_on_the_left_where_left_is_plus_x(sample):
    structure = np.ones((3, 3, 3))
    for k, name in sample.label_names.items():
        _, n = ndimage.label(sample.labels == k, structure=structure)
        assert n == (2 if name == "lumbar" else 1), name     # L5 and L4, a disc apart
    x = {k: sample.volume.index_to_lps(np.argwhere(sample.labels == k))[:, 0].mean()
         for k in sample.label_names}
    assert x[1] > 40 and x[4] > 40 and x[2] < -40 and x[5] < -40
    assert abs(x[3]) < 10 and abs(x[6]) < 10


def test_pelvis_dimensions_are_adult(sample):
    """Width at the iliac crests and height from L4 to the femoral shafts as in
    adult pelves (the atlas mean is ~280 mm wide)."""
    hips = sample.volume.index_to_lps(np.argwhere(np.isin(sample.labels, (1, 2))))[:, 0]
    assert 250.0 <= hips.max() - hips.min() <= 310.0
    z = sample.volume.index_to_lps(np.argwhere(sample.labels > 0))[:, 2]
    assert 200.0 <= z.max() - z.min() <= 240.0


def test_couch_is_denser_than_a_bone_threshold_and_not_bone(sample):
    v = sample.volume
    y = v.index_to_lps(np.stack([np.zeros(v.shape[1]), np.arange(v.shape[1]), np.zeros(v.shape[1])], axis=1))[:, 1]
    below_body = y > body.BODY_SEMI_AXES_MM[1]
    couch_hu = v.hu[:, below_body, :]
    assert (couch_hu > 200).sum() > 1000
    assert (couch_hu > 1500).sum() > 100                 # metal rails
    assert not sample.labels[:, below_body, :].any()
    dense_columns = (couch_hu > 200).any(axis=(0, 1))   # the plate spans the field of view
    n = v.shape[2]
    assert dense_columns[n // 2] and dense_columns[: n // 10].any() and dense_columns[-n // 10:].any()


def test_anatomy_is_independent_of_the_grid(sample):
    coarse = an.pelvis_phantom(shape=(58, 80, 100), spacing_mm=(4.0, 3.5, 3.5), noise_hu=0.0)
    assert coarse.landmarks_lps_mm.keys() == sample.landmarks_lps_mm.keys()
    for name, point in sample.landmarks_lps_mm.items():
        np.testing.assert_array_equal(coarse.landmarks_lps_mm[name], point)
    for k, name in sample.label_names.items():
        fine_mm3 = (sample.labels == k).sum() * sample.volume.voxel_volume_mm3
        coarse_mm3 = (coarse.labels == k).sum() * coarse.volume.voxel_volume_mm3
        assert coarse_mm3 == pytest.approx(fine_mm3, rel=0.1), name


def test_loud_input_checks():
    with pytest.raises(ValueError, match="spacing_mm"):
        an.pelvis_phantom(shape=(10, 10, 10), spacing_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        an.pelvis_phantom(shape=(10, 10), spacing_mm=(1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="nosuch"):
        an.preset("nosuch")
