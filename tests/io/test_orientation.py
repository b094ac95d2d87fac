"""Metamorphic: the same physical object stored in different ways on disk
must give the same LPS mesh (centroid within 0.1 mm, volume within 0.5 %)."""

import numpy as np
import pytest

from pipeline.phantom.analytic import ellipsoid_phantom
from pipeline.volume import Volume, flip_axis

from ..helpers import mesh_through_dicom, rotation

SPACING = (1.5, 0.8, 0.9)   # slice, row, column (mm)
SHAPE = (30, 70, 64)
CENTRE = np.array([14.0, -22.0, 130.0])  # LPS mm, deliberately off the grid centre


def axial_hfs_affine() -> np.ndarray:
    """Head-first supine axial grid: slices go S, rows go P, columns go L."""
    a = np.zeros((4, 4))
    a[2, 0], a[1, 1], a[0, 2], a[3, 3] = SPACING[0], SPACING[1], SPACING[2], 1.0
    a[:3, 3] = CENTRE - [0.38 * SHAPE[2] * SPACING[2], 0.6 * SHAPE[1] * SPACING[1], 0.45 * SHAPE[0] * SPACING[0]]
    return a


@pytest.fixture(scope="module")
def reference():
    ph = ellipsoid_phantom(semi_axes_mm=(20.0, 13.0, 9.0), axes_lps=rotation([1, -1, 2], 0.7),
                           center_lps_mm=CENTRE, shape=SHAPE, affine=axial_hfs_affine(),
                           hu_inside=1100.0, hu_outside=20.0, blur_mm=0.6, noise_hu=10.0, seed=7)
    return ph.volume


def feet_first(v: Volume) -> Volume:
    """FFS as scanners write it: columns run to the patient's right, and the
    acquisition (file) order runs from the feet up."""
    return flip_axis(flip_axis(v, 2), 0)


VARIANTS = {
    "head-first": (lambda v: v, {"patient_position": "HFS"}),
    "feet-first": (feet_first, {"patient_position": "FFS"}),
    "rows-flipped": (lambda v: flip_axis(v, 1), {}),
    "slices-reversed": (lambda v: flip_axis(v, 0), {}),
    "shuffled-no-extension": (lambda v: v, {"slice_order": list(np.random.default_rng(1).permutation(SHAPE[0])),
                                             "file_names": lambda n: f"slice {n:03d} (copy)"}),
}


@pytest.fixture(scope="module")
def reference_mesh(reference, tmp_path_factory):
    return mesh_through_dicom(reference, tmp_path_factory.mktemp("ref")).bone


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_lps_mesh_however_stored(variant, reference, reference_mesh, tmp_path):
    transform, write_kwargs = VARIANTS[variant]
    stored = transform(reference)
    mesh = mesh_through_dicom(stored, tmp_path, **write_kwargs).bone
    assert not any(p.suffix == ".dcm" for p in tmp_path.iterdir())
    assert np.linalg.norm(mesh.center_mass - reference_mesh.center_mass) <= 0.1
    assert mesh.volume == pytest.approx(reference_mesh.volume, rel=0.005)
    # And both sit where the object is.
    assert np.linalg.norm(mesh.center_mass - CENTRE) <= 0.1


def test_a_flipped_axis_would_be_caught(reference, reference_mesh, tmp_path):
    """Guard on the test itself: an array flipped without fixing the affine
    (the classic loader bug) moves the object well beyond the tolerance."""
    wrong = Volume(np.flip(reference.hu, axis=2).copy(), reference.affine)
    mesh = mesh_through_dicom(wrong, tmp_path).bone
    assert np.linalg.norm(mesh.center_mass - reference_mesh.center_mass) > 1.0


@pytest.mark.parametrize("degrees", [-20.0, -10.0, 10.0, 20.0])
def test_spacing_of_a_turned_grid_is_its_own_to_the_nanometre(degrees):
    """Pelvic-Ref-003 with its patient turned 10 degrees on the table read
    its 1.0 mm pixels as 0.9999999999999999 mm: the half-maximum window (2.5
    mm over the spacing, rounded) then took 7 voxels for 5, and the sacrum
    came out 0.946 in Dice against the same scan unturned (0.966 now). The
    voxel spacing is read to a nanometre; the axes' directions stay exact."""
    affine = np.diag([3.0, 1.0, 1.0, 1.0])
    affine[:3, :3] = rotation([0, 0, 1], np.radians(degrees)) @ affine[:3, :3]
    volume = Volume(np.zeros((3, 3, 3), np.float32), affine)
    assert volume.spacing_mm.tolist() == [3.0, 1.0, 1.0]
    assert np.abs(volume.direction.T @ volume.direction - np.eye(3)).max() < 1e-15
