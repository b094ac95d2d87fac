"""Config validation: every mistake names its key."""

import numpy as np
import pytest

from pipeline.config import Config, load_config, parse_config
from pipeline.errors import ConfigError

PLANE = {"point_lps_mm": [10, 0, 5], "normal_lps": [0, 0, 2]}


def test_defaults_have_no_planes():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.resection.planes == ()


def test_plane_normal_is_normalised_and_offset_is_along_it():
    plane = parse_config({"resection": {"planes": [PLANE]}}).resection.planes[0]
    assert plane.normal_lps == (0.0, 0.0, 1.0)
    assert plane.offset_mm == 5.0
    assert plane.signed_distance_mm(np.array([[0, 0, 7.5]]))[0] == pytest.approx(2.5)


def test_shipped_configs_load():
    from pathlib import Path
    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))
    assert configs, "configs/ holds at least the default config"
    for path in configs:
        load_config(path)


@pytest.mark.parametrize("raw, key", [
    ({"segmnt": {}}, "unknown key segmnt"),
    ({"segment": {"threshold": 200}}, "unknown key segment.threshold"),
    ({"segment": {"threshold_hu": "200"}}, "segment.threshold_hu must be a number"),
    ({"segment": {"threshold_hu": True}}, "segment.threshold_hu must be a number"),
    ({"segment": {"threshold_hu": -600}}, "segment.body_threshold_hu must be below"),
    ({"segment": {"min_island_mm3": -1}}, "segment.min_island_mm3"),
    ({"surface": {"halfmax_radius_mm": 0}}, "surface.halfmax_radius_mm"),
    ({"resection": {"planes": [{**PLANE, "normal_lps": [0, 0]}]}}, r"resection.planes\[0\].normal_lps must be a list of 3"),
    ({"resection": {"planes": [{**PLANE, "normal_lps": [0, 0, 0]}]}}, r"resection.planes\[0\].normal_lps must not be the zero"),
    ({"resection": {"planes": [PLANE, {"point_lps_mm": [0, 0, 0]}]}}, r"resection.planes\[1\].normal_lps is missing"),
    ({"resection": {"planes": [{**PLANE, "origin": [0, 0, 0]}]}}, r"unknown key resection.planes\[0\].origin"),
    ({"resection": {"planes": [{**PLANE, "point_lps_mm": [0, "a", 0]}]}}, r"resection.planes\[0\].point_lps_mm\[1\] must be a number"),
    ({"resection": {"planes": {"point_lps_mm": [0, 0, 0]}}}, "resection.planes must be an array"),
    # The report, the flanges and the guides go by plane name: one of two flanges named
    # alike was lost from the fixation's flanges (2026-12-06).
    ({"resection": {"planes": [{**PLANE, "name": "cut"}, {**PLANE, "name": "cut"}]}},
     r"resection.planes\[1\].name 'cut' is the name of resection.planes\[0\] too"),
    ({"resection": {"planes": [{**PLANE, "name": " "}]}}, r"resection.planes\[0\].name must be a non-empty string"),
])
def test_mistakes_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key):
        parse_config(raw)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[segment\nthreshold_hu = 1")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="missing.toml: cannot read"):
        load_config(tmp_path / "missing.toml")
    bad.write_text("[segment]\nthreshold_hu = 'high'\n")
    with pytest.raises(ConfigError, match="bad.toml: segment.threshold_hu"):
        load_config(bad)


def test_readme_plan_examples_are_valid_configs(tmp_path):
    """The plans shown in README.md parse, markups path relative to the config."""
    import json
    import re
    from pathlib import Path
    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "cut_b.mrk.json").write_text(json.dumps(
        {"markups": [{"type": "Plane", "coordinateSystem": "RAS", "center": [-30, -40, 50], "normal": [-1, 0, 0]}]}))
    (tmp_path / "out").mkdir()   # a run's plan.mrk.json: one named markup per cut
    (tmp_path / "out" / "plan.mrk.json").write_text(json.dumps({"markups": [
        {"type": "Plane", "name": name, "center": [0, 0, z], "normal": [0, 0, 1]}
        for name, z in (("sacral_ala", 40), ("supra_acetabular", 20))]}))
    for block in blocks:
        (tmp_path / "plan.toml").write_text(block)
        assert load_config(tmp_path / "plan.toml").resection.planes


NAMED = {**PLANE, "name": "cut_a"}   # normal +z: an approach must lie within 45 degrees of the xy plane
GUIDES = {"enabled": True, "approach_lps": [0, 1, 0]}


@pytest.mark.parametrize("guides, key", [
    ({"enabled": 1}, "guides.enabled must be true or false"),
    ({"slot_width_mm": 2}, "unknown key guides.slot_width_mm"),
    ({"approach_per_plane": {}}, "unknown key guides.approach_per_plane"),
    ({"blade_thickness_mm": "1.27"}, "guides.blade_thickness_mm must be a number"),
    ({"slot_depth_mm": 5}, "guides.slot_depth_mm must be between 10"),
    ({"contact_clearance_mm": -0.1}, "guides.contact_clearance_mm must be between 0"),
    ({"kwire_guide_mm": 50}, "guides.kwire_guide_mm must be between 0 and 40 mm"),
    ({"kwires": 1}, "guides.kwires must be a whole number from 2"),
    ({"kwires": 2.5}, "guides.kwires must be a whole number"),
    ({"approach_lps": [0, 0, 0]}, "guides.approach_lps must not be the zero vector"),
    ({"approach_lps": [0, 1]}, "guides.approach_lps must be a list of 3"),
    ({"approach_lps": {"cut_b": [0, 1, 0]}}, "guides.approach_lps.cut_b names no plane"),
    ({**GUIDES, "approach_lps": [0, 0.5, 1]}, r"guides.approach_lps meets resection.planes\[0\] \(cut_a\) at 63 degrees"),
    ({**GUIDES, "approach_lps": {}}, "guides.approach_lps is missing for resection.planes"),
    ({**GUIDES, "footprint_mm": 6}, "guides.footprint_mm must be at least 8.9 mm"),
])
def test_guide_mistakes_name_the_key(guides, key):
    with pytest.raises(ConfigError, match=key):
        parse_config({"resection": {"planes": [NAMED]}, "guides": guides})


def test_guides_are_off_by_default_and_take_an_approach_per_plane():
    assert not parse_config({"resection": {"planes": [NAMED]}}).guides.enabled
    with pytest.raises(ConfigError, match="guides.enabled needs resection.planes"):
        parse_config({"guides": GUIDES})
    guides = parse_config({"resection": {"planes": [NAMED, {**PLANE, "name": "cut b"}]},
                           "guides": {"enabled": True, "approach_lps": [1, 0, 0],
                                      "kwires": 3, "slot_tolerance_mm": 0.1}}).guides
    assert guides.approach_for("cut b") == (1.0, 0.0, 0.0) and guides.kwires == 3
    assert guides.slot_width_mm == pytest.approx(1.27 + 0.2)
    cfg = parse_config({"resection": {"planes": [NAMED]}, "guides": {"enabled": True, "approach_lps": {"cut_a": [0, 2, 0]}}})
    assert cfg.guides.approach_for("cut_a") == (0.0, 1.0, 0.0)
    assert cfg.as_dict()["guides"]["approach_per_plane"] == {"cut_a": [0.0, 1.0, 0.0]}


def test_plane_names_that_make_the_same_guide_file_are_refused():
    planes = [{**PLANE, "name": "cut/a"}, {**PLANE, "name": "cut a"}]
    with pytest.raises(ConfigError, match="same guide file name"):
        parse_config({"resection": {"planes": planes}, "guides": {**GUIDES, "approach_lps": [1, 0, 0]}})
