"""Label maps of other tools read as our bones, on their own grid, in LPS.

Files are written by independent means: 3D Slicer segmentations with
``slicerio`` (the Slicer project's reader and writer), NIfTI with nibabel
(TotalSegmentator's label table added as it adds it), and two segmentations
that 3D Slicer itself saved (shipped with slicerio).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import slicerio

from pipeline.bones import LABEL_IDS
from pipeline.errors import InputError
from pipeline.io.segmentation import read_label_map
from pipeline.volume import apply_affine


SHAPE = (6, 7, 8)                                 # (slice, row, column)
AFFINE = np.array([[0.0, 0.0, -0.9, 40.0],        # columns to the patient's right,
                   [0.0, 1.1, 0.0, -20.0],        # rows posterior,
                   [2.5, 0.0, 0.0, 100.0],        # slices superior
                   [0.0, 0.0, 0.0, 1.0]])
RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def masks() -> dict[str, np.ndarray]:
    """Three structures as (slice, row, column) masks; the last overlaps the first."""
    out = {name: np.zeros(SHAPE, dtype=bool) for name in ("left hip", "Sacrum", "liver")}
    out["left hip"][1:3, 2:4, 1:3] = True
    out["Sacrum"][3:5, 1:3, 5:7] = True
    out["liver"][2:4, 3:5, 2:5] = True
    return out


def write_slicer(path: Path, segments: dict[str, np.ndarray], terminology: dict | None = None) -> Path:
    """A .seg.nrrd as 3D Slicer's Python tools write it (overlaps go to a second layer)."""
    ijk_to_lps = AFFINE[:, [2, 1, 0, 3]]            # slicerio's voxel (i, j, k) = our (k, j, i) reversed
    seg = slicerio.create_segmentation(SHAPE[::-1], ijk_to_lps)
    for name, mask in segments.items():
        fields = {"name": name, "color": [0.5, 0.5, 0.5]}
        if terminology and name in terminology:
            fields["terminology"] = terminology[name]
        slicerio.add_segment(seg, mask.transpose(2, 1, 0), fields)
    slicerio.write_segmentation(str(path), seg)
    return path


def write_nifti(path: Path, labels: np.ndarray, table: dict[int, str] | None = None) -> Path:
    img = nib.Nifti1Image(labels.transpose(2, 1, 0), RAS @ AFFINE[:, [2, 1, 0, 3]])
    if table:
        rows = "".join(f'<Label Key="{k}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{v}]]></Label>\n'
                       for k, v in table.items())
        xml = ('<?xml version="1.0" encoding="UTF-8"?> <CaretExtension> <VolumeInformation Index="0"> '
               f"<LabelTable>\n{rows}</LabelTable></VolumeInformation></CaretExtension>\n              ")
        img.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml.encode()))
    nib.save(img, str(path))
    return path


def write_file(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _nifti_of(path: Path, data: np.ndarray) -> Path:
    """``data`` as it is, in a NIfTI file (any number of dimensions)."""
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def test_slicer_segments_are_matched_by_name_in_every_layer(tmp_path):
    path = write_slicer(tmp_path / "corrected.seg.nrrd", masks())
    assert slicerio.read_segmentation(str(path))["voxels"].ndim == 4    # the overlap made a second layer
    label_map = read_label_map(path)
    assert label_map.source == "3D Slicer segmentation (.seg.nrrd)"
    assert label_map.segments == {"left hip": "hip_left", "Sacrum": "sacrum", "liver": None}
    m = masks()
    assert np.array_equal(label_map.labels == LABEL_IDS["hip_left"], m["left hip"])
    assert np.array_equal(label_map.labels == LABEL_IDS["sacrum"], m["Sacrum"])
    assert np.allclose(label_map.affine, AFFINE)


def test_slicer_segments_are_matched_by_terminology_or_by_the_config_table(tmp_path):
    femur = {"contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
             "category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "71341001", "Femur"],
             "typeModifier": ["SCT", "24028007", "Right"]}
    m = masks()
    path = write_slicer(tmp_path / "s.seg.nrrd", {"Segment_1": m["left hip"], "Segment_2": m["Sacrum"]},
                        terminology={"Segment_1": femur})
    assert read_label_map(path).segments == {"Segment_1": "femur_right", "Segment_2": None}
    mapped = read_label_map(path, {"segment_2": "lumbar", "Segment_1": "hip_left"})   # case is ignored
    assert mapped.segments == {"Segment_1": "hip_left", "Segment_2": "lumbar"}
    assert np.array_equal(mapped.labels == LABEL_IDS["lumbar"], m["Sacrum"])


def test_two_bones_claiming_a_voxel_leave_it_out_and_say_so(tmp_path):
    m = masks()
    femur = m["liver"]                     # overlaps the hip bone in one voxel
    label_map = read_label_map(write_slicer(tmp_path / "s.seg.nrrd", {"hip_left": m["left hip"], "femur_left": femur}))
    both = m["left hip"] & femur
    assert both.sum() == 1 and not label_map.labels[both].any()
    assert label_map.notes == ("voxels claimed by two different bones, left out: 1",)


def test_totalsegmentator_multilabel_nifti_uses_its_own_label_table(tmp_path):
    labels = np.zeros(SHAPE, dtype=np.uint8)
    m = masks()
    labels[m["left hip"]], labels[m["Sacrum"]] = 77, 25
    labels[m["liver"] & ~m["left hip"]] = 5
    path = write_nifti(tmp_path / "seg.nii.gz", labels, {5: "liver", 25: "sacrum", 77: "hip_left", 78: "hip_right"})
    label_map = read_label_map(path)
    assert label_map.source == "NIfTI label map, names from its own label table"
    assert label_map.segments == {"liver": None, "sacrum": "sacrum", "hip_left": "hip_left"}
    assert np.array_equal(label_map.labels == LABEL_IDS["hip_left"], m["left hip"])
    assert np.allclose(label_map.affine, AFFINE)


def test_values_without_names_are_ours_up_to_7_and_totalsegmentator_ids_above(tmp_path):
    m = masks()
    ours = np.zeros(SHAPE, dtype=np.uint8)
    ours[m["left hip"]], ours[m["Sacrum"]] = LABEL_IDS["femur_right"], LABEL_IDS["lumbar"]
    label_map = read_label_map(write_nifti(tmp_path / "labels.nii.gz", ours))
    assert "this pipeline's label values" in label_map.source
    assert np.array_equal(label_map.labels, ours)
    theirs = np.zeros(SHAPE, dtype=np.int16)
    theirs[m["left hip"]], theirs[m["Sacrum"]], theirs[m["liver"] & ~m["left hip"]] = 78, 27, 5
    label_map = read_label_map(write_nifti(tmp_path / "ts.nii.gz", theirs))
    assert "TotalSegmentator class ids" in label_map.source
    assert label_map.segments == {"TotalSegmentator class 5": None, "vertebrae_L5": "lumbar", "hip_right": "hip_right"}
    assert np.array_equal(label_map.labels == LABEL_IDS["hip_right"], m["left hip"])
    # A value the table lacks can be named in the config, by its number.
    assert read_label_map(tmp_path / "ts.nii.gz", {"5": "other"}).segments["TotalSegmentator class 5"] == "other"


def test_a_mask_of_one_structure_is_named_by_its_file_name(tmp_path):
    m = masks()
    label_map = read_label_map(write_nifti(tmp_path / "femur_left.nii.gz", m["Sacrum"].astype(np.uint8)))
    assert label_map.segments == {"femur_left": "femur_left"}
    assert np.array_equal(label_map.labels == LABEL_IDS["femur_left"], m["Sacrum"])


def test_totalsegmentator_folder_reads_the_masks_of_our_bones(tmp_path):
    m = masks()
    folder = tmp_path / "segmentations"
    folder.mkdir()
    write_nifti(folder / "hip_left.nii.gz", m["left hip"].astype(np.uint8))
    write_nifti(folder / "vertebrae_L4.nii.gz", m["Sacrum"].astype(np.uint8))
    (folder / "liver.nii.gz").write_bytes(b"not read: not one of our bones")
    (folder / "notes.txt").write_text("not a mask")
    label_map = read_label_map(folder)
    assert label_map.source == "folder of per-structure NIfTI masks (TotalSegmentator)"
    assert label_map.segments == {"hip_left": "hip_left", "liver": None, "vertebrae_L4": "lumbar"}
    assert np.array_equal(label_map.labels == LABEL_IDS["lumbar"], m["Sacrum"])
    assert np.allclose(label_map.affine, AFFINE)


def test_a_folder_mask_on_another_grid_is_refused_naming_it(tmp_path):
    m = masks()
    write_nifti(tmp_path / "hip_left.nii.gz", m["left hip"].astype(np.uint8))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(tmp_path / "sacrum.nii.gz"))
    with pytest.raises(InputError, match="sacrum.nii.gz is on another grid"):
        read_label_map(tmp_path)


def test_slicer_saved_files_read_with_layers_and_their_names():
    """Two segmentations 3D Slicer saved (one with overlapping segments in
    two layers): their lumbar column is found by name, the thoracic column
    and the ribs are other bone, the lungs ignored."""
    data = Path(slicerio.__file__).parent / "data"
    for name in ("Segmentation.seg.nrrd", "SegmentationOverlapping.seg.nrrd"):
        label_map = read_label_map(data / name)
        assert label_map.segments["lumbar vertebral column"] == "lumbar"
        assert label_map.segments["ribs"] == "other" and label_map.segments["right lung"] is None
        reference = slicerio.read_segmentation(str(data / name))
        segment = slicerio.segment_from_name(reference, "lumbar vertebral column")
        mask = slicerio.segment_mask(reference, segment).transpose(2, 1, 0)
        thoracic = slicerio.segment_mask(reference, slicerio.segment_from_name(reference, "thoracic vertebral column"))
        assert np.array_equal(label_map.labels[mask] > 0, np.ones(mask.sum(), bool))
        assert (label_map.labels > 0).sum() >= mask.sum() + thoracic.sum() - 1   # cervical, thoracic too
        corner = apply_affine(label_map.affine, np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]))
        assert np.allclose(corner, apply_affine(reference["ijkToLPS"], np.array([[0.0, 0, 0], [3.0, 2.0, 1.0]])))


@pytest.mark.parametrize("make, message", [
    (lambda d: write_slicer(d / "s.seg.nrrd", {"Segment_1": masks()["left hip"], "liver": masks()["liver"]}),
     r"no segment names one of our bones \(segments: Segment_1, liver\); name them hip_left"),
    (lambda d: write_nifti(d / "x.nii.gz", np.full(SHAPE, 0.5, np.float32)), "its values are not whole numbers"),
    (lambda d: write_nifti(d / "x.nii.gz", np.full(SHAPE, -1, np.int16)), "negative values"),
    (lambda d: d / "missing.seg.nrrd", "no such file or folder"),
    (lambda d: write_file(d / "x.seg.nrrd", b"NRRD0004\nnonsense"), "cannot read NRRD"),
    (lambda d: write_file(d / "x.stl", b"solid"), "not a label map this pipeline reads"),
    (lambda d: _nifti_of(d / "x.nii.gz", np.zeros(SHAPE[::-1] + (2,), np.uint8)),
     r"a 3-D label map is needed, the file holds shape \(8, 7, 6, 2\)"),
    (lambda d: write_nifti(d / "x.nii.gz", np.full(SHAPE, 70000, np.int32)), "values up to 70000, more than 65535"),
    (lambda d: write_nifti(d / "x.nii.gz", np.full(SHAPE, 1 + 2j, np.complex64)), "values of type complex64"),
    (lambda d: write_file(d / "masks" / "notes.txt", b"").parent, "the folder holds no NIfTI masks"),
    (lambda d: _edited(write_slicer(d / "s.seg.nrrd", {"left hip": masks()["left hip"]}),
                       lambda data, header: header.update(Segment0_Layer="3") or data),
     "segment 'left hip' is in layer 3, the file has 1"),
    (lambda d: _edited(write_slicer(d / "s.seg.nrrd", {"left hip": masks()["left hip"]}),
                       lambda data, header: header.update(Segment0_LabelValue="0") or data),
     "segment 'left hip' has label value 0, not 1 to 65535"),
])
def test_unusable_label_maps_are_refused_in_one_line_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InputError, match=message) as error:
        read_label_map(path, what="segment.labels_file")
    assert str(error.value).startswith(f"segment.labels_file = {path}: ") and "\n" not in str(error.value)


def _edited(path: Path, edit) -> Path:
    import nrrd

    data, header = nrrd.read(str(path), index_order="C")
    data = edit(data, header)
    nrrd.write(str(path), data, header, index_order="C")
    return path


def test_slicer_segments_without_a_label_value_or_sharing_one_are_refused(tmp_path):
    """A missing Segment<N>_LabelValue was taken as 1 and took the voxels of
    the segment that has 1 (hip_left became sacrum, exit 0); two segments
    on one value in one layer made one of them vanish."""
    def drop(data, header):
        del header["Segment1_LabelValue"]
        return data

    path = _edited(write_slicer(tmp_path / "a.seg.nrrd", {"left hip": masks()["left hip"], "Sacrum": masks()["Sacrum"]}), drop)
    with pytest.raises(InputError, match="segment 'Sacrum' has no Segment1_LabelValue"):
        read_label_map(path)

    def share(data, header):
        header["Segment1_LabelValue"] = header["Segment0_LabelValue"]
        header["Segment1_Layer"] = header["Segment0_Layer"]
        return data

    path = _edited(write_slicer(tmp_path / "b.seg.nrrd", {"left hip": masks()["left hip"], "Sacrum": masks()["Sacrum"]}), share)
    with pytest.raises(InputError, match="segments 'left hip' and 'Sacrum' are both value 1 in layer 0"):
        read_label_map(path)


def test_a_legacy_slicer_segmentation_takes_one_layer_per_segment(tmp_path):
    """3D Slicer before 4.11: a 4-D array, one segment per layer, value 1,
    with neither Layer nor LabelValue fields. Every segment was read from
    layer 0 (all "other" but the first)."""
    import nrrd

    m = masks()
    path = write_slicer(tmp_path / "s.seg.nrrd", {"left hip": m["left hip"], "Sacrum": m["Sacrum"]})
    _, header = nrrd.read(str(path), index_order="C")
    layers = np.stack([m["left hip"], m["Sacrum"]], axis=-1).astype(np.uint8)   # C order: the layer axis fastest
    for key in [k for k in header if k.endswith(("_Layer", "_LabelValue"))]:
        del header[key]
    header["kinds"] = ["list", "domain", "domain", "domain"]
    header["space directions"] = [[np.nan] * 3] + [list(r) for r in np.asarray(header["space directions"])[-3:]]
    header["dimension"] = 4
    nrrd.write(str(path), layers, header, index_order="C")
    label_map = read_label_map(path)
    assert np.array_equal(label_map.labels == LABEL_IDS["hip_left"], m["left hip"])
    assert np.array_equal(label_map.labels == LABEL_IDS["sacrum"], m["Sacrum"])


def test_a_bone_mask_is_not_read_as_hip_left(tmp_path):
    """Our own bone_mask.nii.gz (0/1, no label table) passed as labels made
    the whole skeleton hip_left with exit 0."""
    path = write_nifti(tmp_path / "bone_mask.nii.gz", (masks()["left hip"] | masks()["Sacrum"]).astype(np.uint8))
    with pytest.raises(InputError, match=r"holds only 0 and 1 and no label table: a mask, whose file name \(bone_mask\)"):
        read_label_map(path)


def test_an_empty_slicer_segment_is_said_not_reported_as_mapped(tmp_path):
    """A segment listed in the file but holding no voxel was reported as
    mapped to its bone."""
    empty = np.zeros(SHAPE, dtype=bool)
    path = write_slicer(tmp_path / "s.seg.nrrd", {"left hip": masks()["left hip"], "Sacrum": empty})
    label_map = read_label_map(path)
    assert label_map.segments == {"left hip": "hip_left"}
    assert "segment 'Sacrum' (sacrum) holds no voxel: left out" in label_map.notes
    only_empty = write_slicer(tmp_path / "e.seg.nrrd", {"Sacrum": empty})
    with pytest.raises(InputError, match=r"its bone segments \(Sacrum\) are empty"):
        read_label_map(only_empty)
