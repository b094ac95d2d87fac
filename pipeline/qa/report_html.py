"""report.html: one self-contained page to read a run in a minute.

Built from report.json's content (the same dict) and the QA images as PNG
bytes, embedded as base64 data URIs, and the interactive 3D view with its
viewer (plotly.js) written into the page: no external files, fonts or
network access, so the page opens in any browser and can be mailed as one
file. Sections the report does not hold (no planes, no fit yet) are left
out; values of unknown shape are shown as they are rather than refused.

No patient identity: the input summary lists acquisition geometry only, and
DICOM UIDs are masked in the notes.
"""

from __future__ import annotations

import base64
import html
import re
from typing import TYPE_CHECKING, Any, Iterable

from ..design.guides import THIN_WALL_MM
from ..segment.labels import SEED_MARGIN_MM
from ..segment.mask import METAL_HU
from ..segment.model_fit import LOOSE_FIT_BELOW, bone_missing, on_bone_share, present_share

if TYPE_CHECKING:
    from .interactive import InteractiveView

# Warnings: gantry tilt above this (degrees) shears the grid; left-right
# differences above this (mm) are worth a look before trusting a mirrored plan.
TILT_WARN_DEG = 0.01
ASYMMETRY_WARN_MM = 2.0
# A printed titanium wall thinner than this over 5 % of the implant's surface
# deserves a look (knife edges where an oblique cut meets the bone surface).
THIN_WALL_WARN_MM = 2.0
# Metal inside the bone mask above this volume is reported (a screw of 3 mm
# radius and 10 mm length is ~280 mm3; single bright voxels are noise).
METAL_WARN_MM3 = 50.0
# Contrast left out of the bone above this volume is reported: a scan with
# it may also have vessels or bowel full of contrast against a bone.
CONTRAST_WARN_MM3 = 1000.0
# A bone whose fitted shape model lies farther than this from its surface
# (median, mm) is fitted poorly (a good fit: 1-2 mm), and one with less
# than this share of its model in the scan is only partly in view.
POOR_FIT_MM = 3.0
PARTLY_IN_VIEW_FRACTION = 0.9
# A bone with more of its label than this beyond its fitted shape is flagged
# (0.00-0.05 on the real scans and the phantom).
BEYOND_MODEL_SHARE = 0.15
# A hip bone whose label is bone by its fitted model alone (no bone seen in
# the CT) for this much more of it than the other hip bone's is flagged:
# Pelvic-Ref-003 reads -0.03, the TotalSegmentator example +0.01, the phantom
# 0; with the top 5 / 10 / 15 / 30 % of Pelvic-Ref-003's left hip bone made
# soft tissue +0.02 / +0.08 / +0.12 / +0.24.
MODEL_FILLED_EXCESS = 0.06
# The sacrum, which has no pair, is flagged where one half of its label
# (either side of its fitted model's centre) is bone by its model alone for
# this much more of it than the other half: both real scans read 0.00-0.03
# (turned 20 degrees about any axis, 0.8 or 1.2 times as large), 0.04-0.05
# with the upper 30 % or all of a hip bone made soft tissue; a ball of soft
# tissue at Pelvic-Ref-003's left sacroiliac joint, 20 / 30 / 40 mm in
# radius (a lytic tumour), 0.10 / 0.13 / 0.21 (2026-12-07). Only a sacrum
# in view (PARTLY_IN_VIEW_FRACTION) is judged so: a field of view through
# it leaves one half by the scan's face, where the image's own fills stop
# and the model fills more (Pelvic-Ref-003 cut at x = 0 or 20 mm: 0.10 /
# 0.24 between the halves, 66 / 88 % of its model in view).
SACRUM_SIDE_FILLED_EXCESS = 0.075
# What a bone restored by its model asks of the user (both warnings above).
RESTORED = ("The model restores the bone's shape there, as an implant replacing it must: check its label over "
            "the CT, and keep the cuts out of it")
# A patient's two femoral heads differ in radius by about a millimetre
# (Pelvic-Ref-003 1.1 mm, the phantoms 0.8-1.0 mm): a difference beyond this
# says one sphere was found on something else (a fossa, the acetabular roof:
# 4.6-4.9 mm on Pelvic-Ref-003 with 40 HU less, 6 mm slices or 50 HU of noise).
HEAD_RADII_DIFFER_MM = 3.0
PAIRED = {"hip_left": "hip_right", "hip_right": "hip_left"}
# Labels from a file with less than this many times the bone share under them
# as just around them are flagged (those under 1.5 times are refused): a
# scan's own labels give 7-150 (the TotalSegmentator example's 147, ours fed
# back 17, regridded to 6 mm 7.1); shifted 9 / 10 mm, 2.1 / 1.5.
LOOSE_LABELS_CONTRAST = 4.0
# Input facts shown (never names, IDs, dates or UIDs).
INPUT_KEYS = ("modality", "description", "manufacturer", "model", "patient_position", "n_slices",
              "dimensions", "spacing_mm", "orientation", "gantry_tilt_deg", "resampled")
_UID = re.compile(r"\b\d+(?:\.\d+){4,}\b")
STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
font-size:13px;vertical-align:top}th{background:#f2f2f2}
.warn{background:#fff4d6;border-left:4px solid #e0a000;padding:6px 10px;margin:4px 0}
.ok{background:#eaf7ea;border-left:4px solid #3a3;padding:6px 10px}
figure{display:inline-block;margin:6px;vertical-align:top}figcaption{font-size:12px;max-width:512px}
img{border:1px solid #ccc}
"""


def report_html(report: dict, images: Iterable[tuple[str, bytes]] = (), *, missing: Iterable[str] = (),
                cut_density: list[dict] = (), view3d: InteractiveView | None = None) -> str:
    """The page: ``report`` (report.json's dict), ``images`` as (title, PNG
    bytes), ``missing``: notes on images that could not be made,
    ``cut_density``: the QA's bone density at each cut (qa.cut_bone_density),
    ``view3d``: the interactive 3D view (qa.interactive_view)."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>Implant geometry QA</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>Implant geometry QA report</h1>",
             f"<p>All coordinates are {_e(report.get('frame', 'LPS millimetres'))}. Slices are shown in "
             "the radiological convention (patient left on the image right).</p>"]
    found = report_warnings(report) + [
        f"low bone density at cut {c['name']}: median {c['median_hu']} HU within {c['band_mm']} mm "
        "of the cut face" for c in cut_density if c.get("low_density")]
    parts += _section("Warnings", _warnings_html(found))
    parts += _section("Plan", _plan_html(report))
    parts += _section("3D view", _view3d_html(view3d) if view3d else "")
    figures = "".join(f'<figure><img alt="{_e(title)}" src="data:image/png;base64,'
                      f'{base64.b64encode(png).decode("ascii")}"><figcaption>{_e(title)}</figcaption></figure>'
                      for title, png in images)
    figures += "".join(f'<p class="warn">{_e(note)}</p>' for note in missing)
    parts += _section("Images", figures)
    parts += _section("Bone at the cuts (host side)", _records_html(list(cut_density)) if cut_density else "")
    implant = report.get("implant") if isinstance(report.get("implant"), dict) else {}
    fit = report.get("fit") or implant.get("fit")
    parts += _section("Fit", _value_html(fit) if fit else "")
    parts += _section("Cutting guides", _guides_html(report.get("guides") or []))
    parts += _section("Implant source", _value_html({k: v for k, v in implant.items()
                                                      if k not in ("fit", "fixation")}))
    fixation = implant.get("fixation")
    if isinstance(fixation, dict):
        parts += _section("Fixation: flanges", _records_html(list(fixation.get("flanges") or [])))
        screws = list(fixation.get("screws") or [])
        parts += _section("Fixation: screws", _records_html(screws) if screws else "<p>no screw fits</p>")
    parts += _section("Bones (labels.nii.gz)", _bones_html(report.get("segmentation") or {}))
    parts += _section("Meshes", _meshes_html(report.get("meshes", {})))
    parts += _section("Labels from a file", _value_html((report.get("segmentation") or {}).get("labels_file")))
    parts += _section("Input", _input_html(report.get("input", {})))
    parts += _section("Timings (s)", _value_html(report.get("timings_s", {})))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def report_warnings(report: dict) -> list[str]:
    """What an engineer should know before trusting the geometry, from the report."""
    meta = report.get("input", {})
    found = [str(w) for w in report.get("warnings", []) or []]
    if meta.get("resampled"):
        found.append(f"slices were resampled onto a uniform grid: {_plain(meta['resampled'])}")
    tilt = meta.get("gantry_tilt_deg")
    if isinstance(tilt, (int, float)) and abs(tilt) > TILT_WARN_DEG:
        found.append(f"gantry tilt {tilt:.2f} deg: the grid is sheared (handled in the affine)")
    for path, value in _numbers(report):
        key = path[-1].lower()
        # report["implant"]["asymmetry_mm"] = {"mean": .., "p95": ..} (distances),
        # or a single "*asymmetry*_mm" number.
        distance = (key.endswith("_mm") or key in ("mean", "p95")) and "fraction" not in key
        if distance and any("asymmetry" in p.lower() for p in path) and abs(value) > ASYMMETRY_WARN_MM:
            found.append(f"asymmetry {value:.1f} mm at {'.'.join(path)} (beyond {ASYMMETRY_WARN_MM:g} mm)")
        # The implant's walls (a guide's are its own warning, on its own threshold).
        if key == "wall_thickness_p5_mm" and path[0] == "implant" and value < THIN_WALL_WARN_MM:
            found.append(f"thin implant: 5 % of its surface has walls under {value:.1f} mm "
                         f"(below {THIN_WALL_WARN_MM:g} mm; check where the cuts meet the bone obliquely)")
        if "low_density" in key and value:
            found.append(f"low bone density: {'.'.join(path)} = {value:g}")
    for name, stats in (report.get("meshes") or {}).items():
        beyond = (stats or {}).get("beyond_scan_mm") if isinstance(stats, dict) else None
        if isinstance(beyond, (int, float)) and beyond > 0:
            found.append(f"{name}.stl reaches {beyond:.1f} mm past the scanned volume: it is designed against "
                         "bone the scan does not show there (the bone's cut at the scan's edge looks flat); "
                         "check it on a scan that covers it")
    for name in ("implant", "implant_fixed"):
        shells = ((report.get("meshes") or {}).get(name) or {}).get("shells")
        if isinstance(shells, int) and shells > 1:
            # The removed bone's pieces (either side of a joint the cuts cross): one part only once bridged.
            found.append(f"{name}.stl is {shells} separate solids, joined by nothing: as printed they are "
                         f"{shells} parts (the removed bone's pieces, e.g. either side of a joint the cuts "
                         "cross); bridge them in the design")
    found += [str(w) for g in report.get("guides") or [] if isinstance(g, dict) for w in g.get("warnings") or []]
    found += label_warnings(report.get("segmentation") or {}, (report.get("config") or {}).get("segment") or {})
    return found


def label_warnings(segmentation: dict, segment_config: dict) -> list[str]:
    """Where the bone names deserve a look over the CT (labels.nii.gz): the
    pelvis shape model decides which bone is which, so a pelvis it did not
    find, a bone it fits poorly or sees only in part, and a femoral head
    found without its joint space are flagged; labels read from a file say
    where they came from."""
    found = labels_file_lines(segmentation.get("labels_file"))
    model = segmentation.get("shape_model")
    if isinstance(model, dict):
        if not model.get("found", True):
            found.append("no pelvis found: the pelvis shape model fits no bone of this scan; all bone is "
                         "labelled 'other' (is the pelvis in the field of view?)")
        for bone, fit in (model.get("bones") or {}).items() if model.get("found", True) else ():
            residual, in_view = fit.get("residual_median_mm"), fit.get("in_view_fraction")
            if isinstance(in_view, (int, float)) and in_view < PARTLY_IN_VIEW_FRACTION:
                found.append(f"{bone}: only {100 * in_view:.0f} % of it is in the field of view; its label "
                             "and any cut near the edge of the scan deserve a look")
            if bone_missing(fit):
                found.append(f"{bone}: only {100 * on_bone_share(fit):.0f} % of its shape model in view lies on "
                             "bone: is it missing (resected, destroyed by a tumour)? The model was fitted to the "
                             "other bones without it; its model fills nothing and names only bone deep inside it "
                             "(what is left of it): check the labels over the CT")
            beyond = fit.get("beyond_model_share")
            if isinstance(beyond, (int, float)) and beyond > BEYOND_MODEL_SHARE and not bone_missing(fit):
                found.append(f"{bone}: {100 * beyond:.0f} % of its label lies more than {SEED_MARGIN_MM:g} mm outside "
                             "its fitted shape model: bone the model does not explain (a tumour's mineralised "
                             "mass, osteophytes, heterotopic bone), or a model fitted off the bone (see its "
                             "outline on the QA slices); there the bone is named from the image alone: check "
                             "its label over the CT")
            filled, other = fit.get("model_filled_share"), (model.get("bones") or {}).get(PAIRED.get(bone))
            if (isinstance(filled, (int, float)) and isinstance(other, dict) and not bone_missing(fit)
                    and not bone_missing(other) and isinstance(other.get("model_filled_share"), (int, float))
                    and filled - other["model_filled_share"] > MODEL_FILLED_EXCESS):
                found.append(f"{bone}: {100 * filled:.0f} % of its label is bone by its fitted shape model alone, "
                             f"where the CT shows none ({100 * other['model_filled_share']:.0f} % of "
                             f"{PAIRED[bone]}'s): bone destroyed (a lytic tumour)? {RESTORED}")
            halves = fit.get("model_filled_left_share"), fit.get("model_filled_right_share")
            if (all(isinstance(h, (int, float)) for h in halves) and isinstance(in_view, (int, float))
                    and in_view >= PARTLY_IN_VIEW_FRACTION and abs(halves[0] - halves[1]) > SACRUM_SIDE_FILLED_EXCESS):
                (more, fuller), (less, emptier) = sorted(zip(("left", "right"), halves), key=lambda h: -h[1])
                found.append(f"{bone}: {100 * fuller:.0f} % of its {more} half is bone by its fitted shape model "
                             f"alone, where the CT shows none ({100 * emptier:.0f} % of its {less} half): bone "
                             f"destroyed (a lytic tumour) at the {more} sacroiliac joint? {RESTORED}")
            if isinstance(residual, (int, float)) and residual > POOR_FIT_MM:
                found.append(f"{bone}: the shape model fits it poorly (median residual {residual:.1f} mm > "
                             f"{POOR_FIT_MM:g} mm: unusual anatomy, a large tumour or fracture); check its label")
        bones = model.get("bones") or {}
        if model.get("found", True) and bones and (share := present_share(bones)) < LOOSE_FIT_BELOW:
            found.append(f"the pelvis shape model sits loosely: {100 * share:.0f} % of it lies on bone (of what "
                         "is in view or just beyond a face of the scan no bone reaches; a good fit 80 % or more); "
                         "it names the bones and fills the sacrum, so check its outline on the QA slices and the labels over the CT (a "
                         "patient lying askew with bone destroyed is the known case)")
    names = set(segmentation.get("labels") or {})
    if names and not names & {"femur_left", "femur_right"} and not segmentation.get("labels_file"):
        found.append("no femur found: check labels.nii.gz before relying on bone names near the hip joints")
    heads = segmentation.get("femoral_heads")
    if isinstance(heads, dict):
        for femur, head in sorted(heads.items()):
            if isinstance(head, dict) and head.get("from") != "valley":
                found.append(f"{femur}: no joint-space valley found around its head (faint joint); the head "
                             f"is the sphere of the {head.get('from')} ({head.get('radius_mm')} mm)"
                             + ("; its dome follows that sphere, not the image: check the head over the CT"
                                if head.get("from") == "acetabulum" else ""))
        radii = {f: h.get("radius_mm") for f, h in heads.items() if isinstance(h, dict)}
        left, right = radii.get("femur_left"), radii.get("femur_right")
        if (isinstance(left, (int, float)) and isinstance(right, (int, float))
                and abs(left - right) > HEAD_RADII_DIFFER_MM):
            found.append(f"the femoral heads' joint spheres differ by {abs(left - right):.1f} mm in radius "
                         f"(left {left} mm, right {right} mm; a patient's two heads differ by about 1 mm unless one "
                         "is diseased): one was likely found on something else; check both heads over the CT")
    metal = segmentation.get("metal_mm3")
    if isinstance(metal, (int, float)) and metal >= METAL_WARN_MM3:
        found.append(f"metal in the bone ({metal / 1000:.1f} cm3 above {METAL_HU:g} HU, e.g. an implant or "
                     f"screws): it is labelled as the bone that holds it, and its streak artefacts can "
                     f"add false bone near it")
    contrast = segmentation.get("contrast_mm3")
    if isinstance(contrast, (int, float)) and contrast >= CONTRAST_WARN_MM3:
        found.append(f"contrast: {contrast / 1000:.1f} cm3 dense throughout (a bladder, bowel or vessels full of "
                     f"contrast) was left out of the bone; contrast that touches a bone is not told apart "
                     f"from it: check the bones over the CT where vessels or bowel lie against them")
    core, configured = segmentation.get("core_hu"), segment_config.get("core_hu")
    if isinstance(core, (int, float)) and isinstance(configured, (int, float)) and core < configured:
        found.append(f"weak bone: the dense-core level that tells bone from contrast and calcifications was "
                     f"lowered to {core:g} HU (segment.core_hu = {configured:g})")
    return found


def labels_file_lines(source: Any) -> list[str]:
    """What a reader must know when the labels came from a file (--labels):
    its format, which of its segments became which bone and which were
    ignored, and whether it was resampled onto the CT's grid."""
    if not isinstance(source, dict):
        return []
    mapped = source.get("mapped") or {}
    bones = {}
    for segment, bone in mapped.items():
        bones.setdefault(bone, []).append(segment)
    taken = "; ".join(f"{bone} from {', '.join(segments)}" for bone, segments in bones.items())
    ignored = list(source.get("ignored") or [])
    skipped = (f"; {len(ignored)} segments ignored ({', '.join(ignored[:8])}{', ...' if len(ignored) > 8 else ''})"
               if ignored else "")
    found = [f"labels from a file, not the automatic labelling: {source.get('format')}: {taken}{skipped}"]
    if source.get("resampled"):
        found.append(f"labels {source.get('grid')}")
    inside, around = source.get("bone_fraction"), source.get("bone_fraction_around")
    if isinstance(inside, (int, float)) and isinstance(around, (int, float)) and inside < LOOSE_LABELS_CONTRAST * around:
        found.append(f"labels file: loosely on the bone: {100 * inside:.0f} % of its labelled voxels are bone, "
                     f"against {100 * around:.0f} % just around them (a scan's own labels: 7 to 150 times "
                     "more); shifted by some millimetres, or from another frame? Look at the overlay")
    return found + [f"labels file: {note}" for note in source.get("notes") or []]


def _numbers(obj: Any, path: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], float]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, path + (str(k),))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, path + (str(i),))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and path:
        yield path, float(obj)


def _warnings_html(found: list[str]) -> str:
    if not found:
        return '<p class="ok">none: no resampling, no gantry tilt, no asymmetry or density flags in the report</p>'
    return "".join(f'<p class="warn">{_e(w)}</p>' for w in found)


def _plan_html(report: dict) -> str:
    config = report.get("config", {})
    resection = config.get("resection", {}) if isinstance(config, dict) else {}
    rows = [("structures", ", ".join(map(str, resection.get("structures", [])))),
            ("implant source", _plain((config.get("implant") or {}).get("source", "")))]
    text = _table(["setting", "value"], rows)
    planes = report.get("planes") or []
    if not planes:
        return text + "<p>No resection planes: bone outputs only.</p>"
    return text + _records_html(planes)


def _guides_html(guides: list) -> str:
    """One row per guide with the figures that say it fits and can be
    used; the full record (K-wires, footprint) below."""
    if not guides:
        return ""
    rows = []
    for g in guides:
        gap, slot, lift = g.get("contact_gap_mm") or {}, g.get("slot") or {}, g.get("lift_off") or {}
        rows.append((g.get("file", ""), _num(g.get("seat_area_on_bone_mm2")),
                     " / ".join(_num(gap.get(k)) for k in ("min", "mean", "max")) if gap else "none",
                     f"{slot.get('midplane_distance_mm', float('nan')):.2g} mm, "
                     f"{slot.get('midplane_angle_deg', float('nan')):.2g} deg",
                     f"{_num(slot.get('width_mm'))} x {_num(slot.get('depth_mm'))}",
                     "; ".join(f"{_plain(w['entry_lps_mm'])}: {_num(w['length_in_bone_mm'])} mm"
                               for w in g.get("kwires", [])),
                     "yes" if lift.get("removable") else f"no ({lift.get('points_under_bone')} points)",
                     _num(g.get("intersection_with_bone_mm3")),
                     _num((g.get("blade_reach") or {}).get("reached_fraction")),
                     _walls(g.get("walls") or {})))
    header = ["guide", "seat on bone (mm2)", "gap min / mean / max (mm)", "slot mid-plane to cut plane",
              "slot width x depth (mm)", "K-wires: entry (LPS mm): length in bone", "lifts off along approach",
              "overlap with bone (mm3)", "cut face reached by blade",
              f"walls: 5 % of the surface under (mm); area on walls under {THIN_WALL_MM:g} mm (mm2)"]
    details = "".join(f"<details><summary>{_e(g.get('file', ''))}</summary>"
                      f"{_value_html({k: v for k, v in g.items() if k != 'warnings'})}</details>" for g in guides)
    return _table(header, rows) + details


def _walls(walls: dict) -> str:
    """A guide's wall figures (:func:`pipeline.design.fit.wall_figures`) as one cell."""
    p5, thin = walls.get("wall_thickness_p5_mm"), walls.get(f"area_over_walls_under_{THIN_WALL_MM:g}_mm_mm2")
    return "none" if p5 is None else f"{_num(p5)}; {_num(thin)}"


def _view3d_html(view: InteractiveView) -> str:
    worst = max((m["hausdorff_mm"] for m in view.meshes), default=0.0)
    shown = sum(m["view_triangles"] for m in view.meshes)
    note = ("<p>Drag to turn, scroll to zoom, right-drag (or the cross in the toolbar) to pan; the house "
            "resets the view, the buttons above it show the patient from each side. Click a legend entry to "
            "hide or show it, double-click to show it alone; hovering names an object and gives the point in "
            "LPS mm. ")
    if any(m["view_triangles"] < m["triangles"] for m in view.meshes):
        note += (f"Meshes are lightened for this view only (the STLs are untouched), all to {view.per_mm2:.2f} "
                 f"triangles per mm² (at which the scan's bones, or where they fit whole the whole view, hold "
                 f"{view.max_triangles}): {shown} triangles, each within {worst:.2f} mm of its full mesh, "
                 "measured both ways.</p>")
    else:
        note += f"Meshes are shown whole ({shown} triangles, within the view's budget of {view.max_triangles}).</p>"
    if worst > view.tolerance_mm:
        note += (f'<p class="warn">a view mesh is {worst:.2f} mm from its STL, beyond the '
                 f"{view.tolerance_mm:g} mm aimed at: look at the STLs before judging fine detail</p>")
    rows = [(m["name"], m["triangles"], m["view_triangles"], _num(float(m["hausdorff_mm"]))) for m in view.meshes]
    return (note + f'<div class="view3d">{view.html}</div>'
            + _table(["object", "triangles (mesh)", "triangles (view)", "within (mm) of its mesh"], rows))


def _bones_html(segmentation: dict) -> str:
    """Per labelled bone: its volume, the shape model's fit to it (median
    residual, share of the model in view lying on bone, share in view,
    share of the label beyond the fitted shape) and its femoral head's joint
    sphere (found from, radius, centre): what the label warnings judge."""
    labels = segmentation.get("labels") or {}
    model = segmentation.get("shape_model") if isinstance(segmentation.get("shape_model"), dict) else {}
    fits = model.get("bones") or {}
    heads = segmentation.get("femoral_heads") or {}
    if not labels and not fits:
        return ""

    def share(value: Any) -> str:
        return f"{100 * value:.0f} %" if isinstance(value, (int, float)) else ""

    rows = []
    for name in dict.fromkeys([*labels, *fits]):
        fit, head = fits.get(name) or {}, heads.get(name) or {}
        volume = (labels.get(name) or {}).get("voxels_mm3")
        rows.append((name, f"{volume / 1000:.1f}" if isinstance(volume, (int, float)) else "",
                     _num(fit["residual_median_mm"]) if "residual_median_mm" in fit else "",
                     share(on_bone_share(fit)), share(fit.get("in_view_fraction")),
                     share(fit.get("beyond_model_share")), share(fit.get("model_filled_share")),
                     f"{head.get('from')}, {_num(head.get('radius_mm'))} mm at {_plain(head.get('centre_lps_mm'))}"
                     if head else ""))
    note = ""
    if model:
        note = (f"<p>Shape model: {model.get('modes')} modes"
                + (f", fitted without {', '.join(model['fitted_without'])} (found missing)"
                   if model.get("fitted_without") else "")
                + ("" if model.get("found", True) else "; no pelvis found: all bone is 'other'") + ".</p>")
    return note + _table(["bone", "volume (cm3)", "model: median residual (mm)", "model in view on bone",
                          "model in view", "label beyond the model", "label bone by the model alone",
                          "femoral head's joint sphere (found from, radius, centre LPS mm)"], rows)


def _meshes_html(meshes: dict) -> str:
    rows = [(name, _num(s.get("volume_mm3", 0) / 1000.0), s.get("triangles", ""), _num(s.get("area_mm2", "")))
            for name, s in meshes.items() if isinstance(s, dict)]
    return _table(["mesh", "volume (cm3)", "triangles", "area (mm2)"], rows)


def _input_html(meta: dict) -> str:
    rows = [(k, _plain(meta[k])) for k in INPUT_KEYS if k in meta]
    notes = "".join(f"<li>{_e(_UID.sub('<UID>', str(n)))}</li>" for n in meta.get("notes", []))
    return _table(["input", "value"], rows) + (f"<ul>{notes}</ul>" if notes else "")


def _value_html(value: Any) -> str:
    """Any JSON value as nested tables: dicts as key/value rows, lists of dicts as records."""
    if isinstance(value, dict):
        if not value:
            return ""
        return _table(["", ""], [(k, _value_html(v)) for k, v in value.items()], raw=True)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return _records_html(value)
    return _e(_plain(value))


def _records_html(records: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in records for k in r))
    rows = [[_value_html(r.get(c, "")) for c in columns] for r in records]
    return _table(columns, rows, raw=True)


def _table(header: list[str], rows, raw: bool = False) -> str:
    cell = (lambda v: str(v)) if raw else (lambda v: _e(_plain(v)))
    head = "".join(f"<th>{_e(h)}</th>" for h in header) if any(header) else ""
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def _section(title: str, body: str) -> list[str]:
    return [f"<h2>{_e(title)}</h2>", body] if body else []


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    return str(value)


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
