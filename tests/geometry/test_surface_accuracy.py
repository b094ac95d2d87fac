"""Surface accuracy against analytic shapes written as DICOM on anisotropic grids.

Truth: closed-form volume and the exact point-to-ellipsoid distance. The
tolerances are the issue's: volume within 1 %, mean vertex distance to the
analytic surface within 0.15 x the smallest voxel spacing.
"""

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipeline.phantom.analytic import ellipsoid_distance_mm, ellipsoid_phantom, sphere_phantom

from ..helpers import mesh_through_dicom, rotation

GRIDS = {
    # (slice, row, column) spacing in mm: thick slices, non-square pixels.
    "thick-slices": (2.0, 0.7, 0.9),
    "fine": (1.0, 0.6, 0.6),
}
# Isotropic Gaussian PSF (sigma, mm) of the phantoms. A real 2 mm slice has a
# slice-direction sigma of ~0.85 mm, so 0.6 mm is the harder, under-sampled case.
BLUR_MM = 0.6


@pytest.mark.parametrize("grid", GRIDS)
def test_sphere_volume_and_surface_distance(tmp_path, grid):
    spacing = np.array(GRIDS[grid])
    radius = 18.0
    shape = tuple(int(np.ceil(2 * radius / s + 10)) for s in spacing)
    ph = sphere_phantom(radius_mm=radius, center_lps_mm=(12.3, -40.1, 101.7), shape=shape,
                        spacing_mm=spacing, hu_inside=1200.0, hu_outside=30.0, noise_hu=15.0, seed=3,
                        blur_mm=BLUR_MM)
    mesh = mesh_through_dicom(ph.volume, tmp_path).bone
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * radius**3, rel=0.01)
    dist = np.abs(np.linalg.norm(mesh.vertices - [12.3, -40.1, 101.7], axis=1) - radius)
    assert dist.mean() <= 0.15 * spacing.min()


@pytest.mark.parametrize("grid", GRIDS)
def test_rotated_ellipsoid_volume_and_surface_distance(tmp_path, grid):
    spacing = np.array(GRIDS[grid])
    semi = np.array([24.0, 15.0, 10.0])
    axes = rotation([1, 2, 0.5], 0.6)
    centre = (-30.0, 15.0, -600.0)
    shape = tuple(int(np.ceil(2 * semi.max() / s + 10)) for s in spacing)
    ph = ellipsoid_phantom(semi_axes_mm=semi, axes_lps=axes, center_lps_mm=centre, shape=shape,
                           spacing_mm=spacing, hu_inside=900.0, hu_outside=-80.0, noise_hu=15.0,
                           seed=4, blur_mm=BLUR_MM)
    mesh = mesh_through_dicom(ph.volume, tmp_path).bone
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * semi.prod(), rel=0.01)
    dist = ellipsoid_distance_mm(mesh.vertices, centre, semi, axes_lps=axes)
    assert dist.mean() <= 0.15 * spacing.min()


def test_surface_sits_at_half_maximum_not_at_the_threshold(tmp_path):
    """Dense bone in fat: the 200 HU isosurface would lie ~blur x 1.4 outside;
    the half-maximum surface must not be biased outward."""
    spacing = np.array([1.0, 0.8, 0.8])
    ph = sphere_phantom(radius_mm=15.0, shape=(45, 55, 55), spacing_mm=spacing, hu_inside=1500.0,
                        hu_outside=-100.0, blur_mm=0.8, noise_hu=0.0)
    mesh = mesh_through_dicom(ph.volume, tmp_path).bone
    signed = np.linalg.norm(mesh.vertices - ph.landmarks_lps_mm["centre"], axis=1) - 15.0
    assert abs(signed.mean()) <= 0.05 * spacing.min()


def test_snapping_thins_a_plate_to_the_level_but_never_perforates_it():
    """Three plates (along axis 0) in one mask, the level given: a two-voxel
    plate whose outer voxel is below the level loses that voxel (the inner
    one stays behind it); a one-voxel plate below the level and a two-voxel
    plate wholly below it stay whole, as nothing would stay behind them."""
    from pipeline.geometry.surface import snap_to_level
    from pipeline.segment.mask import FACE_CONNECTIVITY
    from scipy import ndimage

    solid = np.zeros((30, 12, 12), dtype=bool)
    field = np.full(solid.shape, -100.0, dtype=np.float32)
    solid[4:6, 2:10, 2:10] = True          # plate A: outer voxel 4 below the level, 5 above
    field[4, 2:10, 2:10], field[5, 2:10, 2:10] = -10.0, 50.0
    solid[12, 2:10, 2:10] = True           # plate B: one voxel, below the level
    field[12, 2:10, 2:10] = -10.0
    solid[20:22, 2:10, 2:10] = True        # plate C: two voxels, both below the level
    field[20:22, 2:10, 2:10] = -10.0
    grown = ndimage.binary_dilation(solid, structure=FACE_CONNECTIVITY)
    snapped = snap_to_level(solid, grown, field, min_piece_voxels=1)
    assert not snapped[4, 3:9, 3:9].any() and snapped[5, 2:10, 2:10].all()
    assert snapped[12, 2:10, 2:10].all()
    assert snapped[20:22, 2:10, 2:10].all()


def test_specks_of_a_bone_are_dropped_but_its_small_pieces_kept():
    """A bone's piece of one or two voxels (touching the bone only at an edge,
    or lying against another bone) would be a shell of its own in the bone's
    mesh, smaller than a voxel: it goes. A piece of three voxels stays, and
    so does everything else."""
    from pipeline.geometry.surface import SPECK_VOXELS, drop_specks

    assert SPECK_VOXELS == 2
    labels = np.zeros((12, 12, 12), dtype=np.uint8)
    labels[2:6, 2:6, 2:6] = 1
    labels[6, 6, 5] = 1                     # touches bone 1 at an edge only
    labels[8:10, 2:6, 2:6] = 2              # another bone
    labels[10, 3, 3:5] = 1                  # two voxels of bone 1 against bone 2
    labels[2, 9, 8:11] = 1                  # three voxels of bone 1 on their own
    out = drop_specks(labels)
    assert out[6, 6, 5] == 0 and (out[10, 3, 3:5] == 0).all()
    assert (out[2, 9, 8:11] == 1).all()
    assert (out[2:6, 2:6, 2:6] == 1).all() and (out[8:10, 2:6, 2:6] == 2).all()
    assert int((out != labels).sum()) == 3


def test_a_gap_the_labelling_keeps_open_is_not_closed_where_there_is_no_level():
    """A bone with a tunnel one voxel wide (3 mm voxels, 50 HU, as a sacral
    canal on thick slices): no tissue lies within the level's reach there,
    and the snap closed it (50 HU above a level of 0); kept open by the
    labelling (``BoneLabels.kept_open``), it stays open, label and mesh."""
    from pipeline.config import SurfaceConfig
    from pipeline.geometry import validate_solid
    from pipeline.geometry.surface import bone_surfaces
    from pipeline.segment.labels import BoneLabels
    from pipeline.volume import Volume

    hu = np.full((14, 14, 14), -50.0, dtype=np.float32)
    hu[3:11, 3:11, 3:11] = 1000.0
    tunnel = np.zeros(hu.shape, dtype=bool)
    tunnel[3:11, 7, 7] = True
    hu[tunnel] = 50.0
    labels = np.where((hu > 500), 3, 0).astype(np.uint8)
    box = (slice(0, 14),) * 3
    volume = Volume(hu, np.diag([3.0, 3.0, 3.0, 1.0]))
    closed = bone_surfaces(volume, BoneLabels(labels, box, int(labels.astype(bool).sum()), {}), SurfaceConfig())
    inner = tunnel.copy()
    inner[[3, 10], 7, 7] = False   # the tunnel's ends see the tissue outside: they have a level
    assert (closed.labels[inner] == 3).all()      # without kept_open the snap closes the rest
    kept = bone_surfaces(volume, BoneLabels(labels, box, int(labels.astype(bool).sum()), {}, kept_open=tunnel),
                         SurfaceConfig())
    assert (kept.labels[tunnel] == 0).all()
    # The mesh keeps it too: a block with a tunnel through it (Euler number
    # 0), where the closed one is a block (2); a bore, not a slit. The
    # tunnel voxels' level is (1000 + 50) / 2, so their field is -475 HU
    # against the bone's +1000 (no level there either): the wall crosses
    # t = 3 mm x 475 / 1475 from the tunnel's axis, a cross-section of
    # 2 t² (~1.87 mm²) along the six inner voxels (18 mm) at least and
    # along all eight (24 mm) at most (the ends have a level of their own).
    validate_solid(kept.meshes[3], "kept open")
    assert closed.meshes[3].euler_number == 2 and kept.meshes[3].euler_number == 0
    section = 2.0 * (3.0 * 475.0 / 1475.0) ** 2
    assert section * 18.0 <= closed.meshes[3].volume - kept.meshes[3].volume <= section * 24.0


def test_bone_the_labelling_keeps_in_is_not_peeled_below_the_level():
    """A block of 600 HU in a one-voxel shell of 150 HU, in tissue of 0 HU
    (a femoral head whose dome, against its socket, averages with the joint
    space): the level there is half-way between peak and tissue, 300 HU, so
    the snap peels the shell. Kept in by the labelling
    (``BoneLabels.kept_in``: a head placed from the acetabulum alone), the
    shell stays, label and mesh, and the mesh closes around it."""
    from pipeline.config import SurfaceConfig
    from pipeline.geometry import validate_solid
    from pipeline.geometry.surface import bone_surfaces
    from pipeline.segment.labels import BoneLabels
    from pipeline.volume import Volume

    hu = np.zeros((18, 18, 18), dtype=np.float32)
    hu[4:14, 4:14, 4:14] = 150.0
    hu[5:13, 5:13, 5:13] = 600.0
    labels = np.where(hu > 0, 4, 0).astype(np.uint8)
    shell = (labels > 0) & (hu < 600)
    box = (slice(0, 18),) * 3
    volume = Volume(hu, np.eye(4))
    n = int(labels.astype(bool).sum())
    peeled = bone_surfaces(volume, BoneLabels(labels, box, n, {}), SurfaceConfig())
    faces = shell & ndi.binary_dilation(hu == 600)   # the shell's faces, not its edges and corners
    assert (peeled.labels[faces] == 0).all() and (peeled.labels[hu == 600] == 4).all()
    kept = bone_surfaces(volume, BoneLabels(labels, box, n, {}, kept_in=labels > 0), SurfaceConfig())
    assert np.array_equal(kept.labels, labels)
    validate_solid(kept.meshes[4], "kept in")
    # Across the middle of the faces: the block's outer voxels see no tissue
    # within the level's reach (2.5 mm; the layer just outside the mask does
    # not count), so no level: field +600. The shell's level is about 300
    # (half its peak, tissue 0): field about -150. Peeled, the surface crosses
    # about 600/750 of a voxel beyond the block's outer centres (7 + 1.6 mm
    # across). Kept, the shell's field is held at +CLAMP_HU against the
    # tissue's -260: within 1/100 of a voxel beyond the shell's centres (9 mm).
    for mesh, across in ((peeled.meshes[4], 7.0 + 2 * 0.8), (kept.meshes[4], 9.0)):
        v = mesh.vertices
        for axis in range(3):
            others = np.delete(np.arange(3), axis)
            middle = v[np.all(np.abs(v[:, others] - 8.5) < 2.0, axis=1), axis]
            assert middle.max() - middle.min() == pytest.approx(across, abs=2 * 0.01)


@pytest.mark.parametrize("spacing_mm", [(3.0, 1.0, 1.0), (3.0, 3.0, 3.0)], ids=["thick-slices", "coarse"])
def test_crossings_between_saturated_samples_settle_towards_a_tilted_plane(spacing_mm):
    """A tilted plane sampled without partial volume (bone 100 on one
    side, tissue -100 on the next): interpolation puts every crossing
    half-way, a staircase of flat treads. Settling moves the crossings on
    coarse edges (>= 2 mm: the slice axis of 3 x 1 x 1 mm voxels, every
    axis of 3 mm ones) along their edges only: crossings on fine edges stay
    put, each moved vertex keeps the edge's margin from both ends, the
    faces are unchanged. It brings them nearer the plane (mean distance
    along the slice axis 0.238 -> 0.181 slices on thick slices), the largest
    not beyond the staircase's (half a slice). An exactly flat surface
    half-way between slices stays where it is."""
    from skimage.measure import marching_cubes

    from pipeline.geometry.surface import CROSSING_MARGIN, settle_coarse_crossings

    z, y, x = np.meshgrid(np.arange(10), np.arange(24), np.arange(40), indexing="ij")
    plane = 3.3 + 0.07 * x + 0.03 * y
    field = np.where(z < plane, 100.0, -100.0)
    vertices, faces, _, _ = marching_cubes(field, 0.0, allow_degenerate=False)
    settled = settle_coarse_crossings(vertices, faces, spacing_mm, field > 0)
    moved = np.any(settled != vertices, axis=1)
    assert moved.sum() > len(vertices) // 3
    # A moved vertex moved along one axis only, a coarse one, and stays on its edge.
    axis = np.argmax(settled != vertices, axis=1)
    assert np.all((settled != vertices).sum(axis=1)[moved] == 1)
    assert set(np.unique(axis[moved])) == {a for a in range(3) if spacing_mm[a] >= 2.0}
    rows = np.flatnonzero(moved)
    before, after = vertices[rows, axis[moved]], settled[rows, axis[moved]]
    assert np.all(np.floor(before) == np.floor(after))
    within = after - np.floor(before)
    assert within.min() >= CROSSING_MARGIN - 1e-6 and within.max() <= 1 - CROSSING_MARGIN + 1e-6
    inner = (vertices[:, 1] > 2) & (vertices[:, 1] < 21) & (vertices[:, 2] > 2) & (vertices[:, 2] < 37)

    def off(points):
        return np.abs(points[:, 0] - (3.3 + 0.07 * points[:, 2] + 0.03 * points[:, 1]))

    assert off(settled[inner]).mean() <= 0.8 * off(vertices[inner]).mean()
    assert off(settled[inner]).max() <= 0.5

    field = np.where(z < 3.5, 100.0, -100.0)
    vertices, faces, _, _ = marching_cubes(field, 0.0, allow_degenerate=False)
    assert np.array_equal(settle_coarse_crossings(vertices, faces, spacing_mm, field > 0), vertices)
