"""CPU 3D views: orientation by the patient, occlusion, coverage."""

import numpy as np
import pytest
import trimesh

from pipeline.qa.view3d import VIEWS, camera_for, render

RED, BLUE = (220, 40, 40), (40, 40, 220)


def ball(centre, radius=10.0):
    return trimesh.creation.icosphere(subdivisions=4, radius=radius).apply_translation(centre)


def centroid_of(image, rgb):
    """Mean (row, column) of pixels dominated by the colour's channel."""
    channel = int(np.argmax(rgb))
    others = [c for c in range(3) if c != channel]
    mask = (image[..., channel] > 60) & (image[..., channel] > 1.5 * image[..., others].max(axis=-1))
    assert mask.sum() > 50, "the object is visible"
    return np.argwhere(mask).mean(axis=0)


# Where a ball on the patient's left (+x), resp. superior (+z), lands in each view.
@pytest.mark.parametrize("view, left_is_image_right, superior_is_image_up", [
    ("anterior", True, True),
    ("posterior", False, True),
    ("superior", False, None),
])
def test_views_follow_the_patient(view, left_is_image_right, superior_is_image_up):
    left_ball, right_ball = ball((60, 0, 0)), ball((-60, 0, 0))
    bounds = np.array([[-80, -20, -40], [80, 20, 40.0]])
    image = render([(left_ball, RED), (right_ball, BLUE)], camera_for(view, bounds, (200, 200)))
    red, blue = centroid_of(image, RED), centroid_of(image, BLUE)
    assert (red[1] > blue[1]) == left_is_image_right
    if superior_is_image_up is not None:
        top, bottom = ball((0, 0, 30)), ball((0, 0, -30))
        image = render([(top, RED), (bottom, BLUE)], camera_for(view, bounds, (200, 200)))
        assert (centroid_of(image, RED)[0] < centroid_of(image, BLUE)[0]) == superior_is_image_up


def test_left_view_shows_posterior_on_the_right():
    image = render([(ball((0, 50, 0)), RED), (ball((0, -50, 0)), BLUE)],
                   camera_for("left", np.array([[-20, -70, -20], [20, 70, 20.0]]), (200, 200)))
    assert centroid_of(image, RED)[1] > centroid_of(image, BLUE)[1]


def test_nearer_object_hides_the_farther_one():
    # Anterior view: the viewer is at -y, so the ball at y = -40 is in front.
    front, back = ball((0, -40, 0), 15), ball((0, 40, 0), 15)
    image = render([(back, BLUE), (front, RED)], camera_for("anterior", np.array([[-20, -60, -20], [20, 60, 20.0]]),
                                                            (150, 150)))
    centre = image[75, 75]
    assert centre[0] > centre[2], "the front (red) ball covers the back (blue) one"


@pytest.mark.parametrize("view", VIEWS)
def test_every_view_covers_a_ball_without_holes(view):
    image = render([(ball((0, 0, 0), 20), RED)], camera_for(view, np.array([[-20.0] * 3, [20.0] * 3]), (160, 160)))
    drawn = (image != 255).any(axis=-1)
    # Disc area in pixels; the camera fits the box's projection with a 5 % margin.
    filled = drawn.sum()
    rows = np.flatnonzero(drawn.any(axis=1))
    diameter = rows[-1] - rows[0] + 1
    assert filled == pytest.approx(np.pi * diameter**2 / 4, rel=0.08)
    # No interior pinholes: every pixel inside the disc is drawn.
    inner = np.argwhere(drawn).mean(axis=0)
    yy, xx = np.mgrid[:160, :160]
    disc = (yy - inner[0]) ** 2 + (xx - inner[1]) ** 2 < (diameter / 2 - 2) ** 2
    assert drawn[disc].all()


def test_a_face_larger_than_the_sampling_is_drawn_whole():
    """A box of two triangles per face, 500 px across: every pixel of its
    front face is drawn (a triangle was sampled at most 64 times per edge,
    so one this large came out dotted)."""
    box = trimesh.creation.box(bounds=[(-50.0, -50.0, -50.0), (50.0, 50.0, 50.0)])
    image = render([(box, RED)], camera_for("anterior", box.bounds, (560, 560)))
    drawn = (image != 255).any(axis=-1)
    rows, cols = np.flatnonzero(drawn.any(axis=1)), np.flatnonzero(drawn.any(axis=0))
    assert rows[-1] - rows[0] > 480 and cols[-1] - cols[0] > 480
    assert drawn[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()


def test_see_through_layers_are_shaded_and_show_what_they_hide():
    """A red ball behind a blue ball drawn see-through (anterior view): where
    they overlap, both colours show (red through blue); the see-through ball
    keeps its shading (its rim darker than its centre, unlike a flat
    overlay); and a see-through layer does not cover a solid part in front
    of it."""
    camera = camera_for("anterior", np.array([[-20, -60, -20], [20, 60, 20.0]]), (150, 150))
    back, front = ball((0, 40, 0), 15), ball((0, -40, 0), 15)
    image = render([(back, RED)], camera, see_through=[(front, BLUE, 0.5)]).astype(int)
    centre = image[75, 75]
    assert centre[0] > 60 and centre[2] > 60, "red shows through the blue layer"
    alone = render([], camera, see_through=[(front, BLUE, 1.0)]).astype(int)
    rows = np.flatnonzero((alone != 255).any(axis=(1, 2)))
    rim = alone[rows[0] + 3, 75]
    assert rim[2] < alone[75, 75][2] - 20, "shaded: the rim is darker than the centre"
    hidden = render([(front, RED)], camera, see_through=[(back, BLUE, 0.5)])
    assert np.array_equal(hidden, render([(front, RED)], camera)), "behind a solid part: not drawn"
