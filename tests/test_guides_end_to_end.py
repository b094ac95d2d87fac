"""Cutting guides on the sample CT (the phantom's seed plan), as a user runs
them: one guide per plane, closed as an STL reader sees it, its slot on the
cut plane, lifting off along the approach; and the same on Pelvic-Ref-003
when ../shared is present."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import trimesh
from PIL import Image

from pipeline.cli import main as cli_main
from pipeline.config import load_config
from pipeline.design.guides import THIN_WALL_MM
from pipeline.qa.images import GUIDE_VIEW_REACH_MM, VIEW_PX

from .helpers import REAL_CT, REPO

pytestmark = pytest.mark.slow


def guides_config(tmp_path, source: str) -> str:
    """The plan ``source`` with guides switched on (the default config's [guides] section)."""
    text = (REPO / "configs" / source).read_text()
    guides = (REPO / "configs" / "default.toml").read_text().split("[guides]", 1)[1]
    if "[guides]" not in text:
        text += "\n[guides]" + guides
    text = re.sub(r"(?m)^enabled = false$", "enabled = true", text)
    path = tmp_path / "plan.toml"
    path.write_text(text)
    assert load_config(path).guides.enabled
    return str(path)


def run(tmp_path_factory, ct, source: str, *extra: str):
    base = tmp_path_factory.mktemp("guides")
    out = base / "out"
    assert cli_main(["mesh", str(ct), "--config", guides_config(base, source), "--out", str(out), "--quiet",
                     *extra]) == 0
    return out, json.loads((out / "report.json").read_text())


def slot_from_stl(guide: trimesh.Trimesh, normal: np.ndarray, offset_mm: float, half_width_mm: float):
    """The slot walls as read from the STL (float32 corners): the faces
    looking at the plane from half a slot width either side; their corners'
    distances to the plane."""
    d = guide.vertices @ normal - offset_mm
    facing = guide.face_normals @ normal
    sides = []
    for sign in (1.0, -1.0):
        on = (facing * sign < -0.99) & np.all(np.abs(d[guide.faces] - sign * half_width_mm) < 1e-3, axis=1)
        sides.append(d[np.unique(guide.faces[on])])
    return sides


def check_guides(out, report):
    config = report["config"]["guides"]
    half = (config["blade_thickness_mm"] + 2 * config["slot_tolerance_mm"]) / 2
    planes = {p["name"]: p for p in report["planes"]}
    bone = trimesh.load(out / "bone.stl")
    for g in report["guides"]:
        mesh = trimesh.load(out / g["file"])          # float32 corners, welded: as any reader sees it
        assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
        plane = planes[g["plane"]]
        normal = np.asarray(plane["normal_lps"])
        offset = float(np.dot(plane["cut_point_lps_mm"], normal))
        plus, minus = slot_from_stl(mesh, normal, offset, half)
        assert len(plus) and len(minus)
        # float32 at ~100 mm from the origin: 1e-5 mm per coordinate.
        assert abs((plus.mean() + minus.mean()) / 2) <= 1e-4
        # The mesh's corners are float32 (7.6e-6 mm at 100 mm from the origin):
        # over walls at least 10 mm long, that tilts a fitted plane by < 1e-4 degrees.
        assert g["slot"]["midplane_distance_mm"] <= 1e-6 and g["slot"]["midplane_angle_deg"] <= 1e-4
        assert g["slot"]["wall_flatness_mm"] <= 0.01
        assert g["slot"]["depth_mm"] == pytest.approx(config["slot_depth_mm"], abs=1e-3)
        assert g["lift_off"]["removable"] and g["intersection_with_bone_mm3"] <= 1e-3
        assert g["blade_reach"]["reached_fraction"] == 1.0
        # No thin walls to warn of (lips, needles and tongues in grooves put
        # 5 % of the surfaces of three of these four guides on walls under
        # 0.46-0.63 mm before 2026-12-07; 1.86-3.47 mm since).
        assert g["walls"]["wall_thickness_p5_mm"] >= THIN_WALL_MM
        assert not [w for w in g["warnings"] if "walls under" in w]
        # Independently of the column heights: rays up the approach from the
        # guide's downward corners miss the bone (a sample of them).
        approach = np.asarray(g["approach_lps"])
        down = mesh.faces[mesh.face_normals @ approach < 0].ravel()
        points = mesh.vertices[np.unique(down)][::7]
        hits = trimesh.ray.ray_triangle.RayMeshIntersector(bone).intersects_any(
            points + 1e-3 * approach, np.tile(approach, (len(points), 1)))
        assert not hits.any()
        for wire in g["kwires"]:
            assert wire["length_in_bone_mm"] > 0
            tip = np.asarray(wire["tip_lps_mm"])
            assert np.dot(tip, normal) - offset < -half   # the host side
    return report


def test_one_closed_guide_per_plane_on_the_sample(tmp_path_factory):
    out, report = run(tmp_path_factory, REPO / "sample_ct", "default.toml")
    assert [g["plane"] for g in report["guides"]] == ["sacral_ala", "supra_acetabular"]
    check_guides(out, report)
    config = report["config"]["guides"]
    for g in report["guides"]:
        assert len(g["kwires"]) == 2
        # The seat never comes nearer the bone than the clearance (less the
        # linear terrain's dip between nodes at a sharp ridge); where the bone
        # slopes or has crevices narrower than the clearance's ball, the gap
        # is larger by design, so the mean lies above it.
        gap = g["contact_gap_mm"]
        assert gap["min"] >= 0.3 - 0.05 and 0.3 <= gap["mean"] <= 0.3 + 0.3
        assert g["seat_area_on_bone_mm2"] >= 1000.0
        # Its QA image: two views side by side (from the approach, and along
        # the cut line with the bone see-through), the guide's blue in both
        # over at least the slot block's cross-section (its width by the slot
        # depth) at the views' scale, which fits the guide's box and
        # GUIDE_VIEW_REACH_MM around it (its diagonal at most, plus 10 %).
        image = np.asarray(Image.open(out / "qa" / f"{g['file'][:-4]}.png").convert("RGB")).astype(int)
        assert image.shape == (VIEW_PX, 2 * VIEW_PX, 3)
        blue = (image[..., 2] > image[..., 0] + 40) & (image[..., 2] > image[..., 1] + 20)
        lo, hi = trimesh.load(out / g["file"]).bounds
        mm_per_px = 1.1 * np.linalg.norm(hi - lo + 2 * GUIDE_VIEW_REACH_MM) / VIEW_PX
        block_mm2 = (config["blade_thickness_mm"] + 2 * config["slot_tolerance_mm"] + 2 * config["wall_mm"]) \
            * config["slot_depth_mm"]
        for panel in (blue[:, :VIEW_PX], blue[:, VIEW_PX:]):
            assert panel.sum() >= block_mm2 / mm_per_px ** 2, g["plane"]
    page = (out / "report.html").read_text()
    assert "Cutting guides" in page and "guide_sacral_ala.stl" in page
    # Each guide's walls in its row of the page's table, as the report has them.
    assert "walls: 5 % of the surface under (mm)" in page
    for g in report["guides"]:
        walls = g["walls"]
        cell = f"<td>{walls['wall_thickness_p5_mm']:g}; {walls['area_over_walls_under_1_mm_mm2']:g}</td>"
        assert cell in page, (g["plane"], cell)


@pytest.mark.real_data
def test_guides_on_pelvic_ref_003(tmp_path_factory):
    case = REAL_CT / "pelvic_ref_003"
    if not case.is_dir():
        pytest.skip("real data not present (../shared/real_ct/pelvic_ref_003)")
    out, report = run(tmp_path_factory, case, "pelvic_ref_003.toml", "--no-qa")
    assert len(report["guides"]) == 2
    check_guides(out, report)
