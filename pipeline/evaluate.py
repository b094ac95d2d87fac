"""``make evaluate``: the labelled segmentation measured against references.

* The analytic phantom: Dice per label against the generator's truth labels,
  and mean surface distance (mm) of each label's mesh vertices to the truth
  surface (the phantom's signed distance function).
* ``real_ct/totalseg_example``: Dice per structure against TotalSegmentator's
  labels (a model's output, not manual truth) at its 3 mm grid; the sacrum
  also against the reference's sacrum and S1 together (it labels S1 apart).
  Beside it the surface Dice at one voxel's tolerance, and how much of what
  we miss lies in the one voxel layer outside our surface (and its median
  HU): where Dice is lost to where the outline is drawn, not to bone missed;
  and the share of the reference's interior we label (a hollow bone).
* ``real_ct/pelvic_ref_003``: Dice of each femur against the manual RTSTRUCT
  contours, within the contoured slices; against two commercial tools'
  automatic contours (on their slices), and theirs against the manual ones
  (on the slices both contour); the in-plane shift of the manual contours
  that agrees best with ours and with each tool's (how far the outlines
  sit off the bone); and whether any bone lies in the couch (behind the
  patient's back) or anywhere outside the RTSTRUCT's body contour.

Real data live beside the project (``../shared/real_ct``) and are skipped
when absent. Overlays of the labels are written as PNGs when ``--png DIR``
is given. This module reads files: it is a tool at the edge, like the CLI.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from .config import Config
from .bones import LABEL_IDS, TOTALSEGMENTATOR_IDS
from .segment.grid import grow_box
from .run import MeshResult, run_mesh
from .segment.mask import FACE_CONNECTIVITY, bounding_box
from .segment.neighbours import dilate, erode
from .volume import Volume

REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "real_ct"
TOTALSEG_IDS = {name: k for k, name in TOTALSEGMENTATOR_IDS.items()
                if name in ("sacrum", "femur_left", "femur_right", "hip_left", "hip_right")}
# The reference labels S1 apart (26, vertebrae_S1); our sacrum includes S1,
# so the sacrum is also compared with 25 and 26 together (printed beside it).
TOTALSEG_S1 = next(k for k, name in TOTALSEGMENTATOR_IDS.items() if name == "vertebrae_S1")
TOTALSEG_LUMBAR = [k for k, name in TOTALSEGMENTATOR_IDS.items() if name.startswith("vertebrae_L")]
# Its ribs; the example holds the 7th to 12th.
TOTALSEG_RIBS = [k for k, name in TOTALSEGMENTATOR_IDS.items() if name.startswith("rib_")]
RTSTRUCT_FEMURS = {"femur_left": "femoreSin", "femur_right": "femoreDes"}
# The planner's contour of the patient's body: the couch and anything else
# outside it is never bone.
RTSTRUCT_BODY = "External"
# Pelvic-Ref-003's RTSTRUCT also holds two commercial tools' automatic
# contours of each femoral head (model-based, deep learning): how well they
# agree with the manual contours says how far the manual ones can be matched.
RTSTRUCT_AUTO_FEMURS = {"femur_left": {"mbs": "FemoralHead (Left)_MBS", "dl": "Femur_Head_L_DL"},
                        "femur_right": {"mbs": "FemoralHead (Right)_MBS", "dl": "Femur_Head_R_DL"}}
# Pelvic-Ref-003: the couch lies behind the patient's back (y > 230 mm; the
# skin of the back is at y ~ 217 mm).
PELVIC_REF_COUCH_Y_MM = 230.0
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 2.0 * np.count_nonzero(a & b) / total if total else 1.0


def surface_dice(ours: np.ndarray, reference: np.ndarray) -> float:
    """Surface Dice at a tolerance of one voxel: the share of both
    boundaries (voxels with a face-neighbour outside) that lie within one
    voxel step (26-neighbourhood) of the other's boundary. Dice counts a
    reference drawn one voxel layer fatter or thinner than our surface as a
    miss over the whole outline (a 3 mm layer on the TotalSegmentator
    example); this does not, while a misplaced or missing piece still
    counts."""
    box = bounding_box(ours | reference)
    if box is None:
        return 1.0
    box = grow_box(box, ours.shape)
    edge_a, edge_b = (m & ~erode(m, FACE_CONNECTIVITY) for m in (ours[box], reference[box]))
    cube = np.ones((3, 3, 3), dtype=bool)
    met = (np.count_nonzero(edge_a & dilate(edge_b, cube))
           + np.count_nonzero(edge_b & dilate(edge_a, cube)))
    total = np.count_nonzero(edge_a) + np.count_nonzero(edge_b)
    return met / total if total else 1.0


def outer_layer_misses(ours: np.ndarray, reference: np.ndarray, hu: np.ndarray) -> dict:
    """Of the reference's voxels we miss, the share in the one voxel layer
    just outside our labels (face-neighbours of them), and that layer's
    median HU: a reference that takes in the partial-volume layer outside
    the half-maximum surface misses there, at HU between bone and tissue."""
    missed = reference & ~ours
    layer = missed & dilate(ours, FACE_CONNECTIVITY)
    n = np.count_nonzero(missed)
    return {"misses_in_outer_layer": np.count_nonzero(layer) / n if n else 0.0,
            "outer_layer_median_hu": int(round(float(np.median(hu[layer])))) if layer.any() else None}


def interior_labelled(ours: np.ndarray, reference: np.ndarray) -> float:
    """The share of the reference's interior (its voxels whose six face
    neighbours are all in it) that we label: whatever outer layer the
    reference draws, a hollow bone shows here (and a reference that takes
    a joint space into a bone, as TotalSegmentator's hips do around the
    femoral heads)."""
    interior = erode(reference, FACE_CONNECTIVITY)
    inside = np.count_nonzero(interior)
    return np.count_nonzero(interior & ours) / inside if inside else 1.0


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array in (slice, row, column) order, 4x4 index -> LPS mm affine).

    NIfTI stores (i, j, k) with i fastest and a RAS affine; the pipeline's
    axis order is (slice, row, column) = (k, j, i) and its frame is LPS."""
    import nibabel as nib

    img = nib.load(str(path))
    data = np.transpose(np.asarray(img.dataobj), (2, 1, 0))
    return np.ascontiguousarray(data), (RAS_TO_LPS @ img.affine)[:, [2, 1, 0, 3]]


# Phantom variants for the scan traits the labels must survive (keyword
# arguments of pelvis_phantom over the sample preset).
PHANTOM_VARIANTS = {
    "phantom 3 mm slices": {"shape": (78, 184, 232), "spacing_mm": (3.0, 1.5, 1.5)},
    "phantom osteoporotic": {"osteoporotic": True},
    "phantom contrast": {"contrast": True},
}


def phantom_figures(preset_name: str = "sample", **variant) -> tuple[dict, MeshResult, Volume]:
    """Per label: Dice of the label map and mean |SDF| (mm) of the mesh
    vertices (those of a bone's cap at the scan's edge left out: the truth
    goes on beyond it). ``variant``: keyword arguments of ``pelvis_phantom``
    over the preset's."""
    from .phantom import pelvis_phantom, preset

    phantom = pelvis_phantom(**{**preset(preset_name), **variant})
    result = run_mesh(phantom.volume, Config())
    meshes = result.label_meshes
    figures = {}
    for label, name in phantom.label_names.items():
        mine = LABEL_IDS[name]
        figures[name] = {"dice": dice(result.labels == mine, phantom.labels == label)}
        if name in meshes:
            vertices = away_from_scan_edge(meshes[name].vertices, phantom.volume)
            distance = np.abs(phantom.label_sdf_mm(label, vertices))
            figures[name]["msd_mm"] = float(distance.mean())
    return figures, result, phantom.volume


def away_from_scan_edge(vertices: np.ndarray, volume: Volume) -> np.ndarray:
    """The vertices not on the flat cap a bone cut by the field of view gets
    at the last voxel centre (where the truth's surface goes on beyond the
    scan): farther than a voxel from the scan's first and last slice, row
    and column."""
    index = volume.lps_to_index(np.asarray(vertices, dtype=np.float64))
    inside = np.all((index > 1.0) & (index < np.array(volume.shape) - 2.0), axis=1)
    return vertices[inside]


def totalseg_figures() -> tuple[dict, MeshResult, Volume] | None:
    folder = REAL_CT / "totalseg_example"
    if not folder.is_dir():
        return None
    hu, affine = read_nifti(folder / "example_ct.nii.gz")
    reference, _ = read_nifti(folder / "example_seg_fast_force_split.nii.gz")
    volume = Volume(hu.astype(np.float32), affine)
    result = run_mesh(volume, Config())
    figures = {}
    for name, ref in TOTALSEG_IDS.items():
        mine, theirs = result.labels == LABEL_IDS[name], reference == ref
        figures[name] = {"dice": dice(mine, theirs), "surface_dice_1vox": surface_dice(mine, theirs),
                         **outer_layer_misses(mine, theirs, volume.hu),
                         "interior_labelled": interior_labelled(mine, theirs)}
    with_s1 = np.isin(reference, (TOTALSEG_IDS["sacrum"], TOTALSEG_S1))
    mine = result.labels == LABEL_IDS["sacrum"]
    figures["sacrum"].update(dice_with_s1=dice(mine, with_s1), surface_dice_1vox_with_s1=surface_dice(mine, with_s1),
                             interior_labelled_with_s1=interior_labelled(mine, with_s1))
    # Our "lumbar" is L1-L5 (the vertebrae above L1 are "other"): against the reference's L1-L5 together.
    mine = result.labels == LABEL_IDS["lumbar"]
    lumbar = np.isin(reference, TOTALSEG_LUMBAR)
    figures["lumbar"] = {"dice": dice(mine, lumbar), "surface_dice_1vox": surface_dice(mine, lumbar),
                         **outer_layer_misses(mine, lumbar, volume.hu),
                         "interior_labelled": interior_labelled(mine, lumbar)}
    # All bone: every bone we label (other bone too: the vertebrae above L1
    # and what ribs we take) against every bone the reference labels here:
    # hips, sacrum with S1, femurs, the vertebrae and the lower ribs; and
    # without the ribs, the bones of a pelvic scan.
    vertebrae = [k for k, n in TOTALSEGMENTATOR_IDS.items() if n.startswith("vertebrae_")]
    pelvic = np.isin(reference, [*TOTALSEG_IDS.values(), *vertebrae])
    ribs = np.isin(reference, TOTALSEG_RIBS)
    mine = result.labels > 0
    figures["all_bone"] = {"dice": dice(mine, pelvic | ribs), "surface_dice_1vox": surface_dice(mine, pelvic | ribs),
                           "dice_without_ribs": dice(mine & ~ribs, pelvic),
                           "surface_dice_1vox_without_ribs": surface_dice(mine & ~ribs, pelvic),
                           "rib_voxels_labelled": f"{np.count_nonzero(mine & ribs)} of {np.count_nonzero(ribs)}"}
    return figures, result, volume


def pelvic_ref_figures() -> tuple[dict, MeshResult, Volume] | None:
    folder = REAL_CT / "pelvic_ref_003"
    if not folder.is_dir():
        return None
    from .io import load_ct

    volume = load_ct(folder)
    result = run_mesh(volume, Config())
    rtstruct = read_rtstruct(folder)
    figures = {}
    for name, roi in RTSTRUCT_FEMURS.items():
        truth, slices = rasterise_roi(rtstruct, roi, volume)
        mine = result.labels == LABEL_IDS[name]
        figures[name] = {"dice": dice(mine[slices], truth[slices]),
                         "surface_dice_1vox": surface_dice(mine[slices], truth[slices]),
                         "contoured_slices": int(slices.sum()),
                         **outer_layer_misses(mine[slices], truth[slices], volume.hu[slices])}
        shift, shifted = best_shift(truth[slices], mine[slices])
        figures[name]["manual_best_shift_px"] = shift
        figures[name]["dice_at_best_shift"] = shifted
        figures[name]["dice_at_each_slices_best_shift"] = slice_shift_dice(truth[slices], mine[slices])
        for tool, auto_roi in RTSTRUCT_AUTO_FEMURS[name].items():
            auto, auto_slices = rasterise_roi(rtstruct, auto_roi, volume)
            both = auto_slices & slices
            figures[name][f"dice_vs_{tool}"] = dice(mine[auto_slices], auto[auto_slices])
            figures[name][f"surface_dice_1vox_vs_{tool}"] = surface_dice(mine[auto_slices], auto[auto_slices])
            layer = outer_layer_misses(mine[auto_slices], auto[auto_slices], volume.hu[auto_slices])
            figures[name].update({f"{key}_vs_{tool}": value for key, value in layer.items()})
            figures[name][f"{tool}_vs_manual"] = dice(auto[both], truth[both])
            figures[name][f"{tool}_vs_manual_surface_dice_1vox"] = surface_dice(auto[both], truth[both])
            figures[name][f"manual_best_shift_px_vs_{tool}"] = best_shift(truth[both], auto[both])[0]
            figures[name][f"{tool}_vs_manual_at_each_slices_best_shift"] = slice_shift_dice(truth[both], auto[both])
    bone = np.argwhere(result.labels > 0)
    y_mm = volume.index_to_lps(bone)[:, 1]
    in_body, body_slices = roi_holds(rtstruct, RTSTRUCT_BODY, volume, bone)
    figures["couch"] = {"bone_voxels_behind_back": int((y_mm > PELVIC_REF_COUCH_Y_MM).sum()),
                        "bone_voxels_outside_body_contour": int(np.count_nonzero(body_slices[bone[:, 0]] & ~in_body)),
                        "body_contoured_slices": int(body_slices.sum())}
    return figures, result, volume


def best_shift(reference: np.ndarray, other: np.ndarray, reach: int = 3) -> tuple[str, float]:
    """The in-plane shift (rows, columns; up to ``reach`` pixels) of
    ``reference`` that agrees best with ``other``, and the Dice there: how
    far a reference's outlines sit off the bone, whatever the segmentation.
    Pelvic-Ref-003's right manual femur contour agrees best with ours and
    with both commercial tools' contours 1-2 columns off; theirs agree with
    ours unshifted."""
    box = tuple(slice(max(s.start - reach, 0), s.stop + reach) for s in bounding_box(reference | other))
    a, b = reference[box], other[box]
    scores = {(dr, dc): dice(np.roll(a, (dr, dc), axis=(1, 2)), b)
              for dr in range(-reach, reach + 1) for dc in range(-reach, reach + 1)}
    (dr, dc), score = max(scores.items(), key=lambda item: (item[1], -abs(item[0][0]) - abs(item[0][1])))
    return f"{dr:+d},{dc:+d}", score


def slice_shift_dice(reference: np.ndarray, other: np.ndarray, reach: int = 3) -> float:
    """Dice with each slice of ``reference`` moved in-plane (up to ``reach``
    pixels) to where it agrees best with ``other``: what is left of the
    disagreement once outlines drawn slice by slice, each a little off the
    bone in its own direction, are put back on it one by one. Pelvic-Ref-003's
    manual femur contours lie up to 3 pixels off ours, slice by slice in
    different directions (0.904 / 0.901 -> 0.916 / 0.918; both commercial
    tools' contours of the case 0.89-0.91 -> 0.91-0.92)."""
    shared, total = 0, 0
    for a, b in zip(reference, other):
        box = bounding_box(a | b)
        if box is None:
            continue
        box = tuple(slice(max(s.start - reach, 0), s.stop + reach) for s in box)
        a, b = a[box], b[box]
        shared += max(int(np.count_nonzero(np.roll(a, (dr, dc), axis=(0, 1)) & b))
                      for dr in range(-reach, reach + 1) for dc in range(-reach, reach + 1))
        total += int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2.0 * shared / total if total else 1.0


def read_rtstruct(folder: Path):
    """The folder's RTSTRUCT dataset (without pixel data: it has none)."""
    import pydicom

    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality == "RTSTRUCT":
            return ds
    raise FileNotFoundError(f"{folder}: no RTSTRUCT")


def roi_polygons(ds, roi_name: str, volume: Volume):
    """The ROI's contour polygons on the volume grid: (slice, rows, columns)
    of each polygon's corners, per contour on a slice of the volume."""
    number = next(r.ROINumber for r in ds.StructureSetROISequence if r.ROIName == roi_name)
    roi = next(r for r in ds.ROIContourSequence if r.ReferencedROINumber == number)
    for contour in roi.ContourSequence:
        index = volume.lps_to_index(np.asarray(contour.ContourData, float).reshape(-1, 3))
        k = int(round(float(index[:, 0].mean())))
        if 0 <= k < volume.shape[0]:
            yield k, index[:, 1], index[:, 2]


def rasterise_roi(ds, roi_name: str, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the ROI's contour polygons on the volume grid, bool per slice: contoured)."""
    from skimage.draw import polygon

    mask = np.zeros(volume.shape, dtype=bool)
    for k, rows, columns in roi_polygons(ds, roi_name, volume):
        # XOR: a contour inside another on the same slice is a hole.
        rr, cc = polygon(rows, columns, shape=volume.shape[1:])
        mask[k, rr, cc] ^= True
    return mask, mask.any(axis=(1, 2))


def roi_holds(ds, roi_name: str, volume: Volume, voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per voxel of ``voxels`` (K, 3 indices): inside the ROI, bool per slice:
    contoured): :func:`rasterise_roi`'s mask at those voxels (the same
    point-in-polygon rule), testing only them. The body's outline,
    rasterised whole on every slice of Pelvic-Ref-003, took 12 s."""
    from skimage.measure import points_in_poly

    inside = np.zeros(len(voxels), dtype=bool)
    contoured = np.zeros(volume.shape[0], dtype=bool)
    order = np.argsort(voxels[:, 0], kind="stable")
    starts = np.searchsorted(voxels[order, 0], np.arange(volume.shape[0] + 1))
    for k, rows, columns in roi_polygons(ds, roi_name, volume):
        mine = order[starts[k]:starts[k + 1]]
        if len(mine):
            inside[mine] ^= points_in_poly(voxels[mine, 1:].astype(float), np.c_[rows, columns])
        contoured[k] = True
    return inside, contoured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--png", type=Path, help="write label overlays into this folder")
    args = parser.parse_args(argv)
    cases = {"phantom (sample)": phantom_figures(),
             **{name: phantom_figures(**variant) for name, variant in PHANTOM_VARIANTS.items()},
             "totalseg_example": totalseg_figures(), "pelvic_ref_003": pelvic_ref_figures()}
    for case, found in cases.items():
        if found is None:
            print(f"{case}: not present, skipped")
            continue
        figures, result, volume = found
        print(case)
        for name, values in figures.items():
            print(f"  {name:<12} " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in values.items()))
        table = result.report["segmentation"]["labels"]
        print("  label volumes (cm3): " + ", ".join(f"{name} {row['voxels_mm3'] / 1000:.0f}"
                                                   for name, row in table.items()))
        if args.png:
            from .qa.render import write_overlays

            for path in write_overlays(volume, result.labels, args.png, re.sub(r"\W+", "_", case).strip("_")):
                print(f"  wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
