"""The mid-sagittal plane of the pelvis phantom, moved by known rigid motions."""

import numpy as np
import pytest

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
    verts, _, _, _ = marching_cubes((labels > 0).astype(np.float32), level=0.5)
    return apply_affine(volume.affine, verts)


@pytest.mark.parametrize("axis, degrees, shift_mm", [
    ((0, 0, 1), 8.0, (12.0, -5.0, 30.0)),
    ((1, 1, 0), 5.0, (-20.0, 7.0, 3.0)),
    ((0, 1, 0.3), -12.0, (3.0, 3.0, -40.0)),
])
def test_plane_recovered_within_half_a_millimetre_and_half_a_degree(pelvis_surface, axis, degrees, shift_mm):
    r = Rotation.from_rotvec(np.radians(degrees) * np.asarray(axis) / np.linalg.norm(axis)).as_matrix()
    t = np.asarray(shift_mm)
    moved = pelvis_surface @ r.T + t
    plane = symmetry_plane(moved)
    true_normal = r @ [1.0, 0.0, 0.0]
    angle = np.degrees(np.arccos(min(1.0, plane.normal_lps @ true_normal)))
    assert angle <= 0.5
    # Offset error where it matters: at the bone's extent, across the whole pelvis.
    for corner in (moved.min(axis=0), moved.max(axis=0), moved.mean(axis=0)):
        ours = corner @ plane.normal_lps - plane.offset_mm
        truth = (corner - t) @ true_normal
        assert ours == pytest.approx(truth, abs=0.5)
    # Reflecting twice is the identity; the reflection is a mirror (det -1).
    assert np.allclose(plane.reflect(plane.reflect(moved[:10])), moved[:10])
    assert np.linalg.det(plane.reflection_matrix()[:3, :3]) == pytest.approx(-1.0)


def test_a_lesion_on_one_side_does_not_tilt_the_plane(pelvis_surface):
    """Remove a 40 mm ball of surface from the left ilium: trimming ignores it."""
    centre = np.array([100.0, 20.0, 60.0])
    kept = pelvis_surface[np.linalg.norm(pelvis_surface - centre, axis=1) > 40.0]
    plane = symmetry_plane(kept)
    assert np.degrees(np.arccos(min(1.0, plane.normal_lps[0]))) <= 0.5
    assert abs(plane.offset_mm) <= 0.5
