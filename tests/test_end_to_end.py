"""``mesh`` on the committed sample CT through the CLI, as a user runs it.

Truth comes from the phantom generator (the sample is its DICOM rendering,
checked below), from geometry (volumes add up, cut faces lie in their
planes) and from reviewed golden statistics.
"""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import trimesh
from scipy import ndimage

from pipeline.cli import main as cli_main
from pipeline.config import load_config
from pipeline.io.dicom_write import FAKE_BIRTH_DATE, FAKE_PATIENT_ID, FAKE_PATIENT_NAME
from pipeline.io.dicom import load_ct
from pipeline.phantom import pelvis_phantom, preset

from .helpers import REPO, dice, external_references, view_meshes, winding_number, without_scripts
from .regenerate_goldens import GOLDEN, statistics

pytestmark = pytest.mark.slow

SAMPLE = REPO / "sample_ct"
CONFIG = REPO / "configs" / "default.toml"
# The budget for report.html (images, 3D view and its viewer together).
REPORT_BUDGET_BYTES = 15_000_000


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    assert cli_main(["mesh", str(SAMPLE), "--config", str(CONFIG), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def report(out):
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def phantom():
    return pelvis_phantom(**preset("sample"))


@pytest.fixture(scope="module")
def meshes(out):
    return {name: trimesh.load(out / f"{name}.stl") for name in ("bone", "host", "implant")}


def test_sample_ct_is_the_phantom(phantom):
    """The committed series is the generator's output, so its truth applies."""
    volume = load_ct(SAMPLE)
    assert np.allclose(volume.affine, phantom.volume.affine, atol=1e-4)
    assert np.abs(volume.hu - np.round(phantom.volume.hu)).max() <= 1.0


def test_three_closed_solids_at_the_planned_place(meshes, phantom, out):
    for name, mesh in meshes.items():
        assert mesh.is_watertight and mesh.is_winding_consistent, name
        assert mesh.volume > 0, name
    implant = meshes["implant"]
    lm = phantom.landmarks_lps_mm
    # The implant is the left ilium above the acetabulum with the SI joint:
    # on the patient's left (+x), cranial to the supra-acetabular cut, and it
    # contains the left SI joint region, not the acetabulum or the right side.
    assert implant.bounds[0, 0] > 0
    assert winding_number(implant, lm["left_si_joint"] + [8.0, 0, 0]) == pytest.approx(1.0, abs=1e-6)
    assert winding_number(implant, lm["left_acetabulum_centre"]) == pytest.approx(0.0, abs=1e-6)
    assert winding_number(meshes["host"], lm["right_si_joint"] - [8.0, 0, 0]) == pytest.approx(1.0, abs=1e-6)
    assert winding_number(meshes["host"], lm["left_si_joint"] + [8.0, 0, 0]) == pytest.approx(0.0, abs=1e-6)
    assert implant.bounds[1, 2] == pytest.approx(lm["left_iliac_crest_top"][2], abs=3.0)
    # bone.stl is every bone; host + implant are the cut structures, the
    # other bones come whole as bone_<name>.stl.
    context = [trimesh.load(p) for p in sorted(out.glob("bone_*.stl"))]
    assert [p.name for p in sorted(out.glob("bone_*.stl"))] == [
        "bone_femur_left.stl", "bone_femur_right.stl", "bone_lumbar.stl"]
    # The implant also holds the bridge across the SI joint (the joint space, not bone).
    bridge = json.loads((out / "report.json").read_text())["resection_shells"]["bridge_volume_mm3"]
    assert bridge > 0 and len(implant.split(only_watertight=False)) == 1
    assert meshes["bone"].volume == pytest.approx(
        meshes["host"].volume + implant.volume - bridge + sum(m.volume for m in context), rel=1e-3)


def test_mask_matches_the_phantom_truth(out, phantom):
    img = nib.load(out / "bone_mask.nii.gz")
    mask = np.transpose(np.asarray(img.dataobj), (2, 1, 0)) > 0
    assert mask.shape == phantom.labels.shape
    assert dice(mask, phantom.labels > 0) >= 0.97
    # And the NIfTI overlays the CT: its RAS affine is the CT's LPS affine, converted.
    lps = phantom.volume.affine[:, [2, 1, 0, 3]]
    assert np.allclose(img.affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-4)


def test_couch_is_not_bone(out, phantom):
    mask = np.transpose(np.asarray(nib.load(out / "bone_mask.nii.gz").dataobj), (2, 1, 0)) > 0
    spacing = phantom.volume.spacing_mm
    far_from_bone = ndimage.distance_transform_edt(phantom.labels == 0, sampling=spacing) > 5.0
    couch = tuple(np.argwhere((phantom.volume.hu > 300) & far_from_bone).T)
    assert len(couch[0]) > 1000, "the phantom has a dense couch to remove"
    assert not mask[couch].any()


def test_cut_faces_are_flat_and_shared(report):
    config = load_config(CONFIG)
    assert [p["name"] for p in report["planes"]] == [p.name for p in config.resection.planes]
    for plane in report["planes"]:
        assert plane["contact_flatness_mm"] <= 1e-4
        assert plane["implant_contact_area_mm2"] == pytest.approx(plane["host_cut_area_mm2"], rel=1e-9)
        assert plane["implant_contact_area_mm2"] > 500


def test_report_describes_the_run(report):
    assert report["input"]["dimensions"] == [116, 184, 232]
    assert report["input"]["spacing_mm"] == pytest.approx([2.0, 1.5, 1.5])
    assert report["input"]["orientation"] == "SPL"
    assert set(report["timings_s"]) >= {"load", "segment", "surface", "resect"}
    assert report["versions"]["manifold3d"] != "unknown"
    for name in ("bone", "host", "implant"):
        assert report["meshes"][name]["watertight"] is True


def test_no_patient_identity_in_any_output(out):
    for path in (p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        for secret in (FAKE_PATIENT_NAME, FAKE_PATIENT_ID, FAKE_BIRTH_DATE):
            assert str(secret).encode() not in data, (path.name, secret)


def test_stl_headers_state_the_frame(out):
    for name in ("bone", "host", "implant"):
        header = (out / f"{name}.stl").read_bytes()[:80]
        assert header.startswith(b"SPACE=LPS UNITS=mm")


def test_golden_statistics(report):
    """Against tests/golden/sample_ct.json (``make goldens`` rewrites it).

    Tolerances: volumes 0.5 % and areas 1 % (library versions may move
    vertices by float rounding, never by a voxel), triangles 2 %, bounds half
    the largest voxel spacing (1.0 mm of 2.0 mm slices)."""
    golden = json.loads(GOLDEN.read_text())
    now = statistics(report)
    assert now["meshes"].keys() == golden["meshes"].keys()
    for name, g in golden["meshes"].items():
        n = now["meshes"][name]
        assert n["shells"] == g["shells"], name
        assert n["triangles"] == pytest.approx(g["triangles"], rel=0.02), name
        assert n["volume_mm3"] == pytest.approx(g["volume_mm3"], rel=0.005), name
        assert n["area_mm2"] == pytest.approx(g["area_mm2"], rel=0.01), name
        assert np.allclose(n["bounds_lps_mm"], g["bounds_lps_mm"], atol=1.0), name
    for name, area in golden["planes"].items():
        assert now["planes"][name] == pytest.approx(area, rel=0.01), name


def test_qa_images_and_report_page(out, report):
    from PIL import Image

    from pipeline.qa.images import QA_IMAGES, SLICE_LONGEST_PX, VIEW_PX
    from pipeline.qa.report_html import _numbers

    made = sorted(p.stem for p in (out / "qa").iterdir())
    # implant.source = "resected", no [implant.fixation]: no mirrored view, no fixation views or screw slices
    fixation = {n for n in QA_IMAGES if n.startswith(("view_fixation", "slice_screw_"))}
    assert made == sorted(set(QA_IMAGES) - {"view_mirrored"} - fixation)
    for name in made:
        image = np.asarray(Image.open(out / "qa" / f"{name}.png").convert("RGB"))
        if name.startswith("slice_"):
            assert max(image.shape[:2]) == SLICE_LONGEST_PX
        else:
            assert image.shape[:2] == (VIEW_PX, VIEW_PX)
        assert image.reshape(-1, 3).std(axis=0).min() > 10, f"{name} is blank"
    page = (out / "report.html").read_text()
    assert external_references(page) == []
    assert without_scripts(page).count("data:image/png;base64,") == len(made)
    fit = report.get("fit") or (report.get("implant") or {}).get("fit") or {}
    numbers = list(_numbers(fit)) + list(_numbers(report["planes"]))
    assert len(numbers) >= 10
    for path, value in numbers:
        assert f"{value:.6g}" in page or str(int(value)) in page, path


def test_report_page_fetches_nothing_and_stays_under_its_size_budget(out):
    page = (out / "report.html").read_text()
    assert external_references(page) == []
    assert (out / "report.html").stat().st_size < REPORT_BUDGET_BYTES


def test_the_3d_view_shows_each_mesh_as_written(out):
    """The view's meshes, read back from the page, against the STLs: the
    sample's meshes fit the triangle budget, so each is its STL (float32)."""
    shown = view_meshes((out / "report.html").read_text())
    assert {"host", "implant", "femur_left", "femur_right", "lumbar", "plane sacral_ala",
            "plane supra_acetabular"} == set(shown)
    for name, mesh in shown.items():
        if name.startswith("plane "):
            continue
        stl = trimesh.load(out / (f"{name}.stl" if name in ("host", "implant") else f"bone_{name}.stl"))
        assert len(mesh.faces) == len(stl.faces), name
        assert np.abs(np.sort(mesh.vertices, axis=0) - np.sort(stl.vertices, axis=0)).max() < 1e-4, name


@pytest.fixture(scope="module")
def browser_report(out):
    from .browser import open_report, unavailable

    reason = unavailable()
    if reason:
        pytest.skip(f"browser tests skipped: {reason}")
    with open_report(out / "report.html") as opened:
        yield opened


def implant_pixels(rgb: np.ndarray) -> int:
    """Pixels of the implant's orange (any shade): red well above green, green above blue."""
    rgb = rgb.astype(int)
    return int(((rgb[..., 0] > rgb[..., 1] + 50) & (rgb[..., 1] > rgb[..., 2] + 20)).sum())


def test_report_opens_offline_in_a_browser_and_draws_the_view(browser_report):
    from .browser import view_pixels

    page, visit = browser_report
    assert visit.errors == []
    assert visit.outside == [], "the page asked for something outside itself"
    rgb = view_pixels(page)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 200, "the 3D view is blank"
    assert rgb.reshape(-1, 3).std(axis=0).min() > 10
    assert implant_pixels(rgb) > 500


def test_a_click_on_a_legend_entry_hides_and_shows_the_object(browser_report):
    from .browser import settle, view_pixels

    page, visit = browser_report
    implant_state = "() => document.getElementById('view3d').data.find(t => t.name === 'implant').visible"
    before = view_pixels(page)
    entry = page.locator("g.traces", has_text="implant").locator(".legendtoggle").first
    entry.click()  # plotly acts on it after a double-click's time (300 ms)
    page.wait_for_function(f"({implant_state})() === 'legendonly'")
    settle(page)
    hidden = view_pixels(page)
    assert implant_pixels(before) > 500 and implant_pixels(hidden) < 20
    assert (np.abs(hidden.astype(int) - before.astype(int)).max(axis=2) > 30).mean() > 0.005
    entry.click()
    page.wait_for_function(f"({implant_state})() === true")
    settle(page)
    assert implant_pixels(view_pixels(page)) == pytest.approx(implant_pixels(before), rel=0.05)
    assert visit.errors == []


def test_hovering_an_object_names_it(browser_report):
    """The pointer over the implant's pixels (from its top, near the iliac
    crest and far from the cut planes' discs, downwards) brings up its name."""
    from .browser import view_pixels

    page, visit = browser_report
    rgb = view_pixels(page).astype(int)
    rows, cols = np.nonzero((rgb[..., 0] > rgb[..., 1] + 50) & (rgb[..., 1] > rgb[..., 2] + 20))
    box = page.locator("#view3d canvas").first.bounding_box()
    names = []
    for percentile in (5, 20, 50, 80):
        row = np.percentile(rows, percentile)
        near = np.abs(rows - row) < 2
        x, y = box["x"] + float(np.median(cols[near])), box["y"] + float(row)
        page.mouse.move(x, y)
        page.mouse.move(x + 1, y)
        page.wait_for_timeout(500)
        label = page.locator(".hovertext")
        if label.count():
            names.append(label.first.text_content())
    assert any(name.startswith("implant") for name in names), names
