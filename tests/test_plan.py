"""Planes from three points and from 3D Slicer markups files, in LPS or RAS."""

import json

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.plan import plane_through_points, read_markups_plane

POINT = np.array([26.0, 40.0, 44.0])
NORMAL = np.array([1.0, 0.0, -0.6]) / np.linalg.norm([1.0, 0.0, -0.6])


def three_points_on_plane():
    u = np.cross(NORMAL, [0, 1.0, 0])
    u /= np.linalg.norm(u)
    v = np.cross(NORMAL, u)
    return np.array([POINT + 30 * u, POINT - 20 * u + 10 * v, POINT + 25 * v])


def same_plane(point, normal):
    assert np.allclose(normal, NORMAL, atol=1e-9)
    assert np.dot(point - POINT, NORMAL) == pytest.approx(0.0, abs=1e-9)


def test_three_points_and_the_removed_side_fix_the_normal():
    pts = three_points_on_plane()
    same_plane(*plane_through_points(pts, POINT + 5 * NORMAL, "p"))
    point, normal = plane_through_points(pts, POINT - 5 * NORMAL, "p")
    assert np.allclose(normal, -NORMAL)


def test_collinear_points_and_a_side_point_on_the_plane_are_refused():
    with pytest.raises(ConfigError, match="one line"):
        plane_through_points(np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2.0]]), None, "p")
    with pytest.raises(ConfigError, match="removed-side point lies on the plane"):
        plane_through_points(three_points_on_plane(), POINT, "p")


def write(tmp_path, markup):
    path = tmp_path / "cut.mrk.json"
    path.write_text(json.dumps({"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/"
                                "Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
                                "markups": [markup]}))
    return path


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_slicer_plane_node_in_either_coordinate_system(tmp_path, system):
    flip = np.array([-1.0, -1.0, 1.0]) if system == "RAS" else np.ones(3)
    markup = {"type": "Plane", "coordinateSystem": system, "planeType": "pointNormal",
              "center": list(POINT * flip), "normal": list(NORMAL * flip),
              "controlPoints": [{"position": list(POINT * flip), "positionStatus": "defined"}]}
    same_plane(*read_markups_plane(write(tmp_path, markup), "p"))


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_three_point_list_follows_the_right_hand_rule(tmp_path, system):
    flip = np.array([-1.0, -1.0, 1.0]) if system == "RAS" else np.ones(3)
    pts = three_points_on_plane()
    markup = {"type": "Fiducial", "coordinateSystem": system,
              "controlPoints": [{"position": list(p * flip)} for p in pts]}
    point, normal = read_markups_plane(write(tmp_path, markup), "p")
    expected = np.cross(pts[1] - pts[0], pts[2] - pts[0])
    assert np.allclose(normal, expected / np.linalg.norm(expected))
    assert np.allclose(normal, NORMAL) or np.allclose(normal, -NORMAL)


@pytest.mark.parametrize("content, message", [
    ("not json", "is not JSON"),
    (json.dumps({"markups": []}), "holds no markup"),
    (json.dumps({"markups": [{"type": "Plane", "name": "a"}, {"type": "Plane", "name": "b"}]}),
     r"holds 2 markups \(a, b\); no markup is named None"),
    (json.dumps({"markups": [{"type": "Line", "controlPoints": [{"position": [0, 0, 0]}, {"position": [1, 0, 0]}]}]}),
     "expected a Plane or a list of three points"),
    (json.dumps({"markups": [{"type": "Plane", "coordinateSystem": "XYZ"}]}), "coordinate system 'XYZ'"),
    (json.dumps({"markups": [{"type": "Plane", "coordinateUnits": "um"}]}), "units 'um'"),
])
def test_bad_markups_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.mrk.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_markups_plane(path, "resection.planes[0].markups")
