"""QA images and the report page, as pure functions on the phantom's truth.

Where a pixel must be coloured comes from the phantom's landmarks and truth
labels, not from the code under test.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import trimesh

from pipeline.qa.annotate import edge_letters
from pipeline.config import Plane
from pipeline.io.export import write_outputs
from pipeline.phantom import pelvis_phantom, preset
from pipeline.qa.images import (IMPLANT_RGB, PLANE_RGB, SLICE_LONGEST_PX, SLICE_SHORTEST_PX, TEMPLATE_RGB,
                                slice_image, view_image)
from pipeline.qa.render import COLOURS, SLICE_AXES, slice_points
from pipeline.qa.report_html import report_html, report_warnings


@pytest.fixture(scope="module")
def phantom():
    return pelvis_phantom(**preset("sample"))


def pixel_of(volume, orientation, through, point):
    """(row, column) of the display pixel nearest ``point`` in the slice through ``through``."""
    image = slice_image(volume, np.zeros(volume.shape, np.uint8), orientation, through, (), [])
    pixel_mm = _pixel_mm(image.rgb.shape, volume, orientation)
    points = slice_points(volume, orientation, through, pixel_mm, SLICE_SHORTEST_PX)
    distance = np.linalg.norm(points - np.asarray(point), axis=-1)
    return np.unravel_index(np.argmin(distance), distance.shape), pixel_mm


def _pixel_mm(shape, volume, orientation):
    corners = volume.index_to_lps(np.array(np.meshgrid(*[(0, n - 1) for n in volume.shape],
                                                       indexing="ij")).reshape(3, -1).T)
    right, up = (np.asarray(v) for v in SLICE_AXES[orientation])
    return max(np.ptp(corners @ right), np.ptp(corners @ up)) / (SLICE_LONGEST_PX - 1)


def tint(rgb, row, col):
    """The label colour a pixel leans to: the channel that stands out of the grey."""
    return np.asarray(rgb[row, col], dtype=float) - np.mean(rgb[row, col])


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal"])
def test_label_overlay_lies_on_the_labelled_bone(phantom, orientation):
    volume, labels, marks = phantom.volume, phantom.labels, phantom.landmarks_lps_mm
    for landmark, label in (("left_supra_acetabular", 1), ("right_supra_acetabular", 2)):
        through = marks[landmark]
        image = slice_image(volume, labels, orientation, through, (), [])
        (row, col), _ = pixel_of(volume, orientation, through, through)
        lean = tint(image.rgb, row, col)
        assert np.argmax(lean) == np.argmax(COLOURS[label] - COLOURS[label].mean()), (landmark, lean)
        assert lean.max() > 20
    # Outside the body: grey background, untouched by any label colour.
    assert np.ptp(image.rgb[image.rgb.shape[0] // 2, 2]) == 0


def test_coronal_shows_patient_left_on_the_image_right(phantom):
    volume, marks = phantom.volume, phantom.landmarks_lps_mm
    through = marks["left_femoral_head_centre"]
    (_, left_col), _ = pixel_of(volume, "coronal", through, marks["left_femoral_head_centre"])
    (_, right_col), _ = pixel_of(volume, "coronal", through, marks["right_femoral_head_centre"])
    assert left_col > right_col
    letters = edge_letters(*SLICE_AXES["coronal"])
    assert (letters["left"], letters["right"], letters["top"], letters["bottom"]) == ("R", "L", "S", "I")
    # The letters are drawn: white text pixels near the middle of both side edges, none without them.
    image = slice_image(volume, phantom.labels, "coronal", through, (), []).rgb
    h, w = image.shape[:2]
    for edge in (image[h // 2 - 10:h // 2 + 10, :16], image[h // 2 - 10:h // 2 + 10, w - 16:]):
        assert (edge.min(axis=-1) > 240).sum() > 5
    assert edge_letters(*SLICE_AXES["axial"])["top"] == "A"
    assert edge_letters(*SLICE_AXES["sagittal"])["left"] == "A"


def test_a_caption_wider_than_its_image_goes_on_more_lines_inside_it():
    """White text on black: the caption's words reach the second line, and
    none of them the top edge's letter or the image's right margin (the
    stroke around the letters is black, invisible here)."""
    from pipeline.qa.annotate import FONT_PX, MARGIN_PX, annotate
    caption = "iliosacral screw 1: 7.3 x 76 mm, 72 mm in bone, margin 2.5 mm"
    out = annotate(np.zeros((200, 240, 3), dtype=np.uint8), right_lps=[1, 0, 0], up_lps=[0, 0, 1],
                   mm_per_pixel=0.5, caption=caption)
    white = out.min(axis=2) > 200
    first, second = slice(MARGIN_PX, MARGIN_PX + FONT_PX), slice(MARGIN_PX + FONT_PX + 4, MARGIN_PX + 2 * FONT_PX + 4)
    assert white[second].any()   # a second line
    # Beside the top letter (in the middle of the width) and past it: nothing.
    beside = slice(out.shape[1] // 2 - FONT_PX, None)
    letter = annotate(np.zeros_like(out), right_lps=[1, 0, 0], up_lps=[0, 0, 1], mm_per_pixel=0.5).min(axis=2) > 200
    assert not (white & ~letter)[first, beside].any() and not (white & ~letter)[second, beside].any()


def test_an_iliosacral_screws_slice_is_as_wide_as_the_other_slices_and_shows_the_screw(phantom):
    """A 76 mm screw across the phantom's sacrum: its slice is SLICE_LONGEST_PX
    wide (at 0.5 mm a pixel it was 272, its caption cut off), the screw's
    outline drawn in it."""
    from pipeline.design.fixation import Screw
    from pipeline.qa.images import SCREW_RGB, SLICE_LONGEST_PX, screw_slice
    centre = phantom.volume.index_to_lps(np.array(phantom.volume.shape)[None] / 2.0)[0]
    head, tip = centre + [40.0, 0.0, 0.0], centre - [36.0, 0.0, 0.0]
    screw = Screw(kind="iliosacral", plane="cut", bone="sacrum", diameter_mm=7.3, head_lps_mm=head,
                  entry_lps_mm=head, tip_lps_mm=tip, length_in_bone_mm=72.0, min_margin_mm=2.5,
                  forbidden_distance_mm=4.3)
    image = screw_slice(phantom.volume, phantom.labels, screw, 1).rgb
    assert image.shape[1] == SLICE_LONGEST_PX
    assert np.all(image == SCREW_RGB, axis=2).sum() > 100


def test_a_thin_slab_seen_from_the_side_is_widened_with_black():
    """20 slices of 2 mm seen coronally: 40 mm of scan (about 77 pixels) in a
    200-pixel-high image, the scan's rows in the middle at their own
    positions, black beyond."""
    from pipeline.volume import Volume

    hu = np.full((20, 64, 128), 40.0, dtype=np.float32)
    hu[:, 20:40, 50:70] = 1000.0
    affine = np.array([[0, 0, 2.0, -100.0], [0, 2.0, 0, -60.0], [2.0, 0, 0, 10.0], [0, 0, 0, 1.0]])
    volume = Volume(hu, affine)
    through = volume.index_to_lps(np.array([[10, 30, 60]]))[0]
    image = slice_image(volume, np.zeros(volume.shape, np.uint8), "coronal", through, (), []).rgb
    pixel_mm = _pixel_mm(image.shape, volume, "coronal")
    assert image.shape[:2] == (SLICE_SHORTEST_PX, SLICE_LONGEST_PX)
    points = slice_points(volume, "coronal", through, pixel_mm, SLICE_SHORTEST_PX)
    # The unwidened image's rows, at their own positions, in the middle.
    plain = slice_points(volume, "coronal", through, pixel_mm)
    first = int(np.argmin(np.linalg.norm(points[:, 0] - plain[0, 0], axis=1)))
    assert np.allclose(points[first:first + len(plain)], plain, atol=1e-9) and len(plain) < SLICE_SHORTEST_PX / 2
    assert abs(first + (len(plain) - 1) / 2 - (SLICE_SHORTEST_PX - 1) / 2) <= 0.5
    # Beyond the scan: black (away from the caption, letters and scale bar).
    assert image[5:20, -80:-40].max() == 0 and image[-20:-8, -80:-40].max() == 0


def test_plane_trace_and_removed_bone_are_drawn(phantom):
    volume, labels, marks = phantom.volume, phantom.labels, phantom.landmarks_lps_mm
    # A plane through the left supra-acetabular point, removing what lies above it.
    point = marks["left_supra_acetabular"] + [0.0, 0.0, -8.0]
    plane = Plane(tuple(point), (0.0, 0.0, 1.0), "cut")
    image = slice_image(volume, labels, "coronal", point, (plane,), [1])
    (row, col), pixel_mm = pixel_of(volume, "coronal", point, point)
    trace = np.all(image.rgb[row - 1:row + 2, :] == PLANE_RGB[0], axis=-1)
    assert trace.sum(axis=1).max() > 0.8 * image.rgb.shape[1]  # a line across the whole slice
    outline = np.all(image.rgb == IMPLANT_RGB, axis=-1)
    outline[-60:] = False  # not the legend's swatch
    rows, cols = np.nonzero(outline)
    assert len(rows) > 50
    assert rows.max() <= row + 1, "the removed bone is above the cut"
    assert cols.min() > image.rgb.shape[1] / 2, "only the left hip (image right) is removed"


def _ball(centre, radius):
    return trimesh.creation.icosphere(subdivisions=3, radius=radius).apply_translation(centre)


def test_views_show_host_implant_planes_and_the_mirrored_template():
    host, implant = _ball((40, 0, 0), 20), _ball((40, 0, 35), 12)
    result = SimpleNamespace(bone=trimesh.util.concatenate([host, implant, _ball((-40, 0, 0), 20)]),
                             host=host, implant=implant, context={"other": _ball((-40, 0, 0), 20)},
                             label_meshes={})
    plane = Plane((40.0, 0.0, 24.0), (0.0, 0.0, 1.0), "cut")
    image = view_image(result, (plane,), "anterior").rgb
    rgb = image.astype(int)
    orange = (rgb[..., 0] > rgb[..., 1] + 40) & (rgb[..., 1] > rgb[..., 2] + 20)
    orange[-60:] = False  # not the legend's swatch
    rows, cols = np.nonzero(orange)
    assert len(rows) > 200
    assert cols.mean() > image.shape[1] / 2, "the implant (patient left) is on the image right"
    template = _ball((-40, 0, 0), 21)
    mirrored = view_image(result, (plane,), "mirrored", template=template).rgb.astype(int)

    def green(rgb):
        found = (rgb[..., 1] > rgb[..., 0] + 40) & (rgb[..., 1] > rgb[..., 2] + 20)
        found[-60:] = False  # not the legend's swatch
        return found.sum()
    assert TEMPLATE_RGB[1] > TEMPLATE_RGB[0] + 40
    assert green(mirrored) > 200
    assert green(rgb) == 0


REPORT = {
    "frame": "LPS, millimetres",
    "input": {"modality": "CT", "spacing_mm": [1.0, 0.8, 0.8], "gantry_tilt_deg": 12.5,
              "resampled": {"spacing_mm": 1.25}, "series_uid": "1.2.840.113619.2.55.3.1234",
              "notes": ["loaded series 1.2.840.113619.2.55.3.1234: the only one"]},
    "config": {"resection": {"structures": ["hip_left"]}, "implant": {"source": "resected"}},
    "planes": [{"name": "ala", "implant_contact_area_mm2": 2077.432}],
    "implant": {"fit": {"contact_faces": [{"name": "ala", "overlap_ratio": 0.987654, "gap_mm": {"max": 0.0421}}],
                        "implant": {"mass_g": 950.63}},
                "symmetry": {"asymmetry_p95_mm": 3.4}},
    "meshes": {"implant": {"volume_mm3": 214588.0, "triangles": 43014, "area_mm2": 41957.4}},
}


def test_report_page_is_self_contained_and_holds_the_numbers():
    page = report_html(REPORT, [("a view", b"\x89PNG fake")])
    for attribute in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page):
        assert attribute.startswith("data:"), attribute
    assert "<script" not in page and "url(" not in page and "@import" not in page
    for number in ("0.987654", "0.0421", "950.63", "2077.43", "214.588"):
        assert number in page
    assert "1.2.840.113619" not in page, "UIDs stay out of the page"


def test_a_sacrum_filled_by_its_model_on_one_side_is_flagged_on_that_side():
    """The sacrum has no pair to compare with (its fat-density marrow is
    bone by the model alone: a third of it on Pelvic-Ref-003, two thirds
    on 3 mm slices), but its halves are one: a half filled more than the
    other by SACRUM_SIDE_FILLED_EXCESS is flagged, naming that side; not a
    sacrum the field of view cuts (one half by the scan's face)."""
    from pipeline.qa.report_html import SACRUM_SIDE_FILLED_EXCESS, label_warnings

    def warnings(left, right, in_view=1.0):
        sacrum = {"residual_median_mm": 1.5, "fitted_fraction": 0.73 * in_view, "in_view_fraction": in_view,
                  "model_filled_share": (left + right) / 2, "model_filled_left_share": left,
                  "model_filled_right_share": right}
        return [w for w in label_warnings({"shape_model": {"found": True, "bones": {"sacrum": sacrum}}}, {})
                if "half" in w]

    assert warnings(0.394, 0.293)[0].startswith("sacrum: 39 % of its left half is bone by its fitted shape model "
                                                "alone, where the CT shows none (29 % of its right half)")
    assert "at the right sacroiliac joint" in warnings(0.60, 0.69)[0]
    assert warnings(0.323, 0.297) == warnings(0.67, 0.67 - SACRUM_SIDE_FILLED_EXCESS + 0.001) == []
    assert warnings(0.115, 0.353, in_view=0.875) == []


def test_report_page_shows_each_bone_s_label_and_model_fit():
    """The page's bone table: each label's volume, the shape model's fit to
    the model bones (residual, share in view on bone, share in view, share of
    the label beyond the fitted shape) and each femoral head's sphere, with
    the bones the model was fitted without; what the label warnings judge."""
    from pipeline.qa.report_html import _bones_html

    segmentation = {
        "shape_model": {"modes": 20, "fitted_without": ["hip_left"], "found": True, "bones": {
            "hip_left": {"residual_median_mm": 9.5, "fitted_fraction": 0.008, "in_view_fraction": 0.998},
            "hip_right": {"residual_median_mm": 1.285, "fitted_fraction": 0.81, "in_view_fraction": 0.9,
                          "beyond_model_share": 0.054, "model_filled_share": 0.107}}},
        "femoral_heads": {"femur_right": {"centre_lps_mm": [-77.5, 97.7, 182.7], "radius_mm": 27.0,
                                          "joint_valley_hu": 30.8, "from": "valley"}},
        "labels": {"hip_right": {"label": 2, "voxels_mm3": 429123.0}, "femur_right": {"label": 5, "voxels_mm3": 329586.0}},
    }
    page = report_html({"segmentation": segmentation})
    assert "<h2>Bones (labels.nii.gz)</h2>" in page
    table = _bones_html(segmentation)
    rows = {row.split("</td>")[0]: row for row in table.split("<tr><td>")[1:]}
    assert set(rows) == {"hip_right", "femur_right", "hip_left"}
    assert all(f"<td>{v}</td>" in rows["hip_right"] for v in ("429.1", "1.285", "90 %", "5 %", "11 %"))
    assert "<td>1 %</td>" in rows["hip_left"]          # 0.008 of the 0.998 in view on bone
    assert "valley, 27 mm at [-77.5, 97.7, 182.7]" in rows["femur_right"]
    assert "fitted without hip_left" in table
    assert _bones_html({}) == ""


def test_warnings_come_from_the_report():
    found = " | ".join(report_warnings(REPORT))
    assert "resampled" in found and "12.50 deg" in found and "asymmetry 3.4 mm" in found
    calm = {"input": {"gantry_tilt_deg": 0.0}, "implant": {"symmetry": {"asymmetry_p95_mm": 1.5}}}
    assert report_warnings(calm) == []


def test_a_loose_shape_model_fit_is_flagged():
    """The fit's share on bone, over the model's bones there (one found
    missing is not counted): about half, as where a patient lying askew with
    part of a hip bone destroyed lost the sacrum (0.47-0.57 per bone), is
    flagged; Pelvic-Ref-003's (0.73-0.89) and a fit without its missing hip
    bone (the other two 0.8) are not. A bone's model beyond a face of the
    scan that no bone reaches counts as off bone: a fit that slid a hip
    bone's model wholly out of the scan, the rest 64 % / 82 % on bone, is
    flagged (49 %); beyond a face bone reaches it is not counted."""
    from pipeline.qa.report_html import label_warnings

    def fitted(*bones):
        return {"shape_model": {"found": True, "bones": {
            name: {"fitted_fraction": share, "in_view_fraction": in_view, "unreached_fraction": unreached,
                   "residual_median_mm": 1.0}
            for name, (share, in_view, unreached) in zip(("hip_left", "hip_right", "sacrum"), bones)}}}

    def loose(*bones):
        return [w for w in label_warnings(fitted(*bones), {}) if "sits loosely" in w]

    assert loose((0.54, 1.0, 0.0), (0.57, 1.0, 0.0), (0.47, 1.0, 0.0))[0].startswith(
        "the pelvis shape model sits loosely: 53 % of it lies on bone")
    for shares in ((0.889, 0.809, 0.732), (0.1, 0.8, 0.8)):
        assert not loose(*((share, 1.0, 0.0) for share in shares))
    out_of_the_scan = (0.53, 0.83, 0.0), (0.0, 0.0, 0.58), (0.50, 0.58, 0.03)
    assert loose(*out_of_the_scan)[0].startswith("the pelvis shape model sits loosely: 49 %")
    assert not loose((0.53, 0.83, 0.0), (0.0, 0.0, 0.0), (0.50, 0.58, 0.03))


def test_a_run_without_qa_images_clears_the_earlier_ones(tmp_path):
    write_outputs(tmp_path, {"report.json": b"{}", "qa/slice_axial.png": b"1", "report.html": b"x"})
    assert (tmp_path / "qa" / "slice_axial.png").read_bytes() == b"1"
    write_outputs(tmp_path, {"report.json": b"{}", "report.html": b"y"})
    assert not (tmp_path / "qa").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]


def test_low_bone_density_at_a_cut_is_flagged(phantom):
    from pipeline.qa.images import LOW_DENSITY_HU, cut_bone_density
    from pipeline.volume import Volume

    marks = phantom.landmarks_lps_mm
    supra = marks["left_supra_acetabular"]
    plane = Plane(tuple(supra + [0.0, 0.0, -8.0]), (0.0, 0.0, 1.0), "cut")
    implant = trimesh.creation.box(bounds=[supra + [-60.0, -80.0, -30.0], supra + [70.0, 80.0, 60.0]])
    healthy = cut_bone_density(phantom.volume, phantom.labels, (plane,), [1], implant)[0]
    assert healthy["bone_voxels"] > 100 and healthy["median_hu"] > LOW_DENSITY_HU
    assert not healthy["low_density"]
    bone = phantom.labels > 0  # thin bone: cortex and cancellous HU a fifth of the phantom's
    hu = np.where(bone, phantom.volume.hu / 5.0, phantom.volume.hu).astype(np.float32)
    thin = cut_bone_density(Volume(hu, phantom.volume.affine), phantom.labels, (plane,), [1], implant)[0]
    assert thin["low_density"] and thin["median_hu"] < LOW_DENSITY_HU
    page = report_html({}, cut_density=[thin])
    assert "low bone density at cut cut" in page


def test_warnings_read_the_implant_report_as_run_mesh_writes_it():
    from pipeline.qa.report_html import report_warnings
    report = {"input": {}, "implant": {"asymmetry_mm": {"mean": 0.8, "p95": 2.6, "fraction_within_2mm": 0.93},
                                       "fit": {"implant": {"min_wall_thickness_mm": 0.1,
                                                           "wall_thickness_p5_mm": 1.2}}}}
    found = " ".join(report_warnings(report))
    assert "asymmetry 2.6 mm" in found and "asymmetry 0.8" not in found and "0.9" not in found
    assert "thin implant" in found
    calm = {"input": {}, "implant": {"asymmetry_mm": {"mean": 0.4, "p95": 1.1, "fraction_within_2mm": 0.99},
                                     "fit": {"implant": {"wall_thickness_p5_mm": 6.0}}}}
    assert report_warnings(calm) == []
    # A guide's thin walls are not the implant's: its own warning, in its record, says so.
    guide = {"plane": "cut", "walls": {"wall_thickness_p5_mm": 0.5}, "warnings": ["guide cut: 5 % ..."]}
    assert report_warnings({**calm, "guides": [guide]}) == ["guide cut: 5 % ..."]


def test_an_implant_in_separate_solids_is_flagged():
    """The seed case's implant is the removed bone: the ilium's piece and
    the sacrum's, either side of the sacroiliac joint, two solids that
    nothing joins (implant_fixed.stl too: the flanges join each to its own
    host bone only). It was said nowhere."""
    from pipeline.qa.report_html import report_warnings
    found = report_warnings({"meshes": {"implant": {"shells": 2}, "implant_fixed": {"shells": 2},
                                        "host": {"shells": 4}}})
    assert found == [f"{n}.stl is 2 separate solids, joined by nothing: as printed they are 2 parts (the removed "
                     "bone's pieces, e.g. either side of a joint the cuts cross); bridge them in the design"
                     for n in ("implant", "implant_fixed")]
    assert report_warnings({"meshes": {"implant": {"shells": 1}, "host": {"shells": 4}}}) == []


def test_designed_parts_past_the_scanned_volume_are_flagged():
    """On the 3 mm TotalSegmentator CT a tilted plan's sacral guide reached
    13 mm below the scan's floor and periacetabular flanges wrapped the
    host's flat cap there (the bone cut by the field of view), with only the
    generic field-of-view warning. How far a designed part reaches past the
    outer voxel faces is measured along the grid's axes."""
    from pipeline.qa.report_html import report_warnings
    from pipeline.run import beyond_scan_mm
    from pipeline.volume import Volume

    affine = np.diag([2.0, 1.0, 0.5, 1.0])
    affine[:3, 3] = [10.0, -5.0, 3.0]
    volume = Volume(np.zeros((10, 20, 40), np.float32), affine)
    # Voxel faces: x from 9 to 29, y from -5.5 to 14.5, z from 2.75 to 22.75 (mm; index axes along x, y, z).
    inside = trimesh.creation.box(bounds=[(9.5, -5.0, 3.0), (28.0, 14.0, 22.0)])
    assert beyond_scan_mm(inside, volume) == 0.0
    past = trimesh.creation.box(bounds=[(12.0, -8.5, 5.0), (20.0, 0.0, 23.75)])
    assert beyond_scan_mm(past, volume) == pytest.approx(3.0)     # 3 mm in y; 1 mm in z
    found = report_warnings({"meshes": {"guide_x": {"beyond_scan_mm": 11.8}, "screws": {"beyond_scan_mm": 0.0},
                                        "bone": {"shells": 1}}})
    assert len(found) == 1 and found[0].startswith("guide_x.stl reaches 11.8 mm past the scanned volume")


def test_labels_that_deserve_a_look_are_flagged():
    from pipeline.qa.report_html import report_warnings
    config = {"segment": {"core_hu": 500.0}}
    pelvis = {"labels": {"hip_left": {}, "femur_left": {}, "femur_right": {}},
              "femoral_heads": {"femur_left": {"radius_mm": 24.5, "from": "valley"},
                                "femur_right": {"radius_mm": 23.0, "from": "acetabulum"}}, "core_hu": 500.0}
    found = " | ".join(report_warnings({"segmentation": pelvis, "config": config}))
    assert "femur_right: no joint-space valley found" in found and "the acetabulum (23.0 mm)" in found
    assert "its dome follows that sphere, not the image" in found     # held against the level (kept_in)
    assert "femur_left" not in found and "no femur" not in found and "weak bone" not in found
    assert "differ" not in found   # 1.5 mm apart
    apart = {**pelvis, "femoral_heads": {"femur_left": {"radius_mm": 27.9, "from": "valley"},
                                         "femur_right": {"radius_mm": 23.0, "from": "valley"}}}
    found = " | ".join(report_warnings({"segmentation": apart, "config": config}))
    assert "the femoral heads' joint spheres differ by 4.9 mm in radius (left 27.9 mm, right 23.0 mm" in found
    surface = {**pelvis, "femoral_heads": {"femur_right": {"radius_mm": 23.0, "from": "head surface"}}}
    found = " | ".join(report_warnings({"segmentation": surface, "config": config}))
    assert "the head surface (23.0 mm)" in found and "dome follows" not in found
    abdomen = {"labels": {"hip_left": {}, "sacrum": {}}, "femoral_heads": {}, "core_hu": 289.1}
    found = " | ".join(report_warnings({"segmentation": abdomen, "config": config}))
    assert "no femur found" in found and "lowered to 289.1 HU" in found
    both = {**pelvis, "femoral_heads": {"femur_left": {"from": "valley"}, "femur_right": {"from": "valley"}}}
    assert report_warnings({"segmentation": both, "config": config}) == []
    model = {**both, "shape_model": {"found": True, "bones": {
        "sacrum": {"residual_median_mm": 4.2, "in_view_fraction": 0.97},
        "hip_left": {"residual_median_mm": 0.8, "in_view_fraction": 0.4}}}}
    found = " | ".join(report_warnings({"segmentation": model, "config": config}))
    assert "sacrum: the shape model fits it poorly (median residual 4.2 mm" in found
    assert "hip_left: only 40 % of it is in the field of view" in found
    gone = {**both, "shape_model": {"found": True, "bones": {
        "hip_left": {"residual_median_mm": 2.5, "fitted_fraction": 0.097, "in_view_fraction": 1.0},
        "hip_right": {"residual_median_mm": 1.6, "fitted_fraction": 0.62, "in_view_fraction": 1.0}}}}
    found = " | ".join(report_warnings({"segmentation": gone, "config": config}))
    assert "hip_left: only 10 % of its shape model in view lies on bone" in found and "hip_right" not in found
    lost = {**both, "shape_model": {"found": False}}
    assert "no pelvis found" in " ".join(report_warnings({"segmentation": lost, "config": config}))
    screws = {**both, "metal_mm3": 560.0}
    assert "metal in the bone (0.6 cm3" in " ".join(report_warnings({"segmentation": screws, "config": config}))
    bladder = {**both, "contrast_mm3": 41200.0}
    assert "contrast: 41.2 cm3 dense throughout" in " ".join(report_warnings({"segmentation": bladder,
                                                                               "config": config}))
    assert report_warnings({"segmentation": {**both, "contrast_mm3": 0.0}, "config": config}) == []


def test_metal_in_the_bone_is_measured():
    """A titanium screw (3000 HU, 3 mm radius, 30 mm between its rounded
    ends) put into the phantom's right ilium is counted as metal, to the
    voxel; the phantom alone (its couch rails are 2000 HU and outside the
    body) has none."""
    from pipeline.config import SegmentConfig
    from pipeline.phantom import pelvis_phantom, preset
    from pipeline.segment.mask import METAL_HU, segment_bone
    from pipeline.volume import Volume

    phantom = pelvis_phantom(**preset("sample"))
    volume = phantom.volume
    assert segment_bone(volume, SegmentConfig()).stats["metal_mm3"] == 0.0
    centre = phantom.landmarks_lps_mm["right_supra_acetabular"]
    lps = volume.index_to_lps(np.argwhere(np.ones(volume.shape, dtype=bool))).reshape(*volume.shape, 3)
    along = np.clip((lps - centre)[..., 0], -15.0, 15.0)
    axis_point = centre + np.stack([along, np.zeros_like(along), np.zeros_like(along)], axis=-1)
    screw = np.linalg.norm(lps - axis_point, axis=-1) <= 3.0
    assert volume.hu.max() < METAL_HU
    hu = np.where(screw, np.float32(3000.0), volume.hu)
    metal = segment_bone(Volume(hu, volume.affine), SegmentConfig()).stats["metal_mm3"]
    assert metal == pytest.approx(np.count_nonzero(screw) * volume.voxel_volume_mm3, abs=0.1)


def test_the_fixation_view_shows_screws_buried_in_the_implant_and_the_host():
    """A screw wholly inside a block of host bone and through the implant
    block beside it (posterior view: the viewer looks at the host and
    implant, never at the screw's surface): the view still shows it, in the
    screws' colour (blue over the warm implant and host), where the screw
    projects."""
    from pipeline.qa.images import SCREW_RGB, fixation_view

    def fine(mesh):   # triangles of a bone mesh's size (~1 mm), as the views draw
        return trimesh.Trimesh(*trimesh.remesh.subdivide_to_size(mesh.vertices, mesh.faces, max_edge=1.0))

    host = fine(trimesh.creation.box(bounds=[[0.0, 0.0, 0.0], [40.0, 40.0, 40.0]]))
    implant = fine(trimesh.creation.box(bounds=[[40.0, 0.0, 0.0], [80.0, 40.0, 40.0]]))
    screw = fine(trimesh.creation.cylinder(radius=3.0, segment=[[20.0, 20.0, 20.0], [60.0, 20.0, 20.0]]))
    result = SimpleNamespace(host=host, implant=implant, bone=trimesh.util.concatenate([host, implant]),
                             fixation=SimpleNamespace(implant_fixed=implant, screws_mesh=screw))
    rgb = fixation_view(result, "posterior").rgb.astype(int)[:300]   # above the legend
    assert SCREW_RGB[2] > SCREW_RGB[0] + 40
    blue = (rgb[..., 2] > rgb[..., 0] + 40) & (rgb[..., 2] > rgb[..., 1] + 20)
    rows, cols = np.nonzero(blue)
    assert len(rows) > 500, "the buried screw shows"
    # 40 mm long, 6 mm wide: so on the image.
    assert np.ptp(cols) > 5 * np.ptp(rows)


@pytest.mark.parametrize("flip", [False, True])
def test_the_model_outline_is_the_section_of_the_fitted_mesh(flip):
    """A sphere of 30 mm as a fitted bone, cut by display grids 12 mm from its
    centre along each axis and one tilted: the pixels inside are those within
    sqrt(30^2 - 12^2) mm of the section's centre, to the facets' sagitta and
    half a pixel (a grid read right to left as well: a mirrored frame; the
    grid's centre off the section's, so rows and columns are told apart)."""
    from pipeline.qa.images import model_section

    centre, radius, offset, pixel = np.array([5.0, -20.0, 40.0]), 30.0, 12.0, 0.7
    ball = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    fit = SimpleNamespace(vertices_lps_mm=np.asarray(ball.vertices) + centre, faces={"bone": np.asarray(ball.faces)})
    sagitta = radius * (1 - np.cos(np.radians(180 / 64)))   # level 4: edges about 1/64 of a great circle
    tilted = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    for normal in (np.eye(3)[0], np.eye(3)[1], np.eye(3)[2], tilted):
        down = np.cross(normal, [1.0, 0.0, 0.0] if abs(normal[0]) < 0.9 else [0.0, 1.0, 0.0])
        down /= np.linalg.norm(down)
        right = np.cross(normal, down)
        section_centre = centre + offset * normal
        k = np.arange(-60, 61) * pixel
        # The grid off the circle's centre: its rows and columns are told apart.
        points = section_centre + 9.0 * down - 5.0 * right + k[:, None, None] * down + k[None, :, None] * right
        if flip:
            points = points[:, ::-1]
        inside = model_section(fit, "bone", points)
        r = np.linalg.norm(points - section_centre, axis=-1)
        cut = np.sqrt(radius ** 2 - offset ** 2)
        slack = sagitta * radius / cut + pixel / 2
        assert inside.shape == r.shape
        assert inside[r < cut - slack].all() and not inside[r > cut + slack].any()
