"""The mid-sagittal plane of the pelvis phantom, moved by known rigid motions."""

import numpy as np
import pytest
import trimesh

from scipy.spatial.transform import Rotation
from skimage.measure import marching_cubes

from pipeline.design.symmetry import symmetry_plane
from pipeline.volume import apply_affine

from ..helpers import symmetric_sample


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pelvis_surface():
    """Surface of the symmetric sample phantom's true bone labels (mirrored
    about x = 0), independent of the segmentation under test elsewhere."""
    volume, labels, _ = symmetric_sample()
    verts, faces, _, _ = marching_cubes((labels > 0).astype(np.float32), level=0.5)
    return trimesh.Trimesh(apply_affine(volume.affine, verts), faces)


@pytest.mark.parametrize("axis, degrees, shift_mm", [
    ((0, 0, 1), 8.0, (12.0, -5.0, 30.0)),
    ((1, 1, 0), 5.0, (-20.0, 7.0, 3.0)),
    ((0, 1, 0.3), -12.0, (3.0, 3.0, -40.0)),
    ((0, 0, 1), 3.0, (400.0, -300.0, 900.0)),   # far from the scanner's origin, as a table position puts it
])
def test_plane_recovered_within_a_tenth_of_a_voxel(pelvis_surface, axis, degrees, shift_mm):
    """The phantom's 1 mm voxels: the plane within 0.1 mm across the whole
    pelvis and 0.05 degrees (0.13 mm at 150 mm from its centre). Point to
    plane recovers it within 0.03 mm and 0.01 degrees; with the residual to
    the partner point itself the partners slid along the surface and it
    stopped 0.1 mm and 0.04 degrees off."""
    r = Rotation.from_rotvec(np.radians(degrees) * np.asarray(axis) / np.linalg.norm(axis)).as_matrix()
    t = np.asarray(shift_mm)
    moved = pelvis_surface.vertices @ r.T + t
    plane = symmetry_plane(moved, pelvis_surface.vertex_normals @ r.T)
    true_normal = r @ [1.0, 0.0, 0.0]
    angle = np.degrees(np.arccos(min(1.0, plane.normal_lps @ true_normal)))
    assert angle <= 0.05
    # Offset error where it matters: at the bone's extent, across the whole pelvis.
    for corner in (moved.min(axis=0), moved.max(axis=0), moved.mean(axis=0)):
        ours = corner @ plane.normal_lps - plane.offset_mm
        truth = (corner - t) @ true_normal
        assert ours == pytest.approx(truth, abs=0.1)
    # Reflecting twice is the identity; the reflection is a mirror (det -1).
    assert np.allclose(plane.reflect(plane.reflect(moved[:10])), moved[:10])
    assert np.linalg.det(plane.reflection_matrix()[:3, :3]) == pytest.approx(-1.0)


def test_a_lesion_on_one_side_does_not_tilt_the_plane(pelvis_surface):
    """Remove a 40 mm ball of surface from the left ilium: trimming ignores it."""
    centre = np.array([100.0, 20.0, 60.0])
    kept = np.linalg.norm(pelvis_surface.vertices - centre, axis=1) > 40.0
    plane = symmetry_plane(pelvis_surface.vertices[kept], pelvis_surface.vertex_normals[kept])
    assert np.degrees(np.arccos(min(1.0, plane.normal_lps[0]))) <= 0.5
    assert abs(plane.offset_mm) <= 0.5


def test_the_plane_converges_as_fast_far_from_the_scanner_s_origin(pelvis_surface):
    """Moving the patient 1 m from the scanner's origin (as a table position
    can) changes no distance on the bone, so it must not change how soon the
    plane is found: the convergence test measures the plane's move at the
    bone, not its offset at the origin (there a turn far under a micrometre
    at the bone read as a large move: 17 rounds against 7 near it)."""
    r = Rotation.from_rotvec(np.radians(3.0) * np.array([0.0, 0.0, 1.0])).as_matrix()
    normals = pelvis_surface.vertex_normals @ r.T
    near = symmetry_plane(pelvis_surface.vertices @ r.T, normals)
    far = symmetry_plane(pelvis_surface.vertices @ r.T + [400.0, -300.0, 900.0], normals)
    assert far.iterations <= near.iterations + 3
    assert np.degrees(np.arccos(min(1.0, far.normal_lps @ near.normal_lps))) <= 0.05
