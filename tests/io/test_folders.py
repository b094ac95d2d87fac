"""Messy hospital folders: several studies and series, nested, unnamed files, non-image objects,
junk, missing SeriesInstanceUID, non-CT series; and the `series` listing."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import (
    BasicTextSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    RTPlanStorage,
)

from pipeline.cli import main
from pipeline.io.dicom_write import (
    FAKE_BIRTH_DATE,
    FAKE_PATIENT_ID,
    FAKE_PATIENT_NAME,
    write_dicomdir_stub,
    write_junk_files,
    write_rtstruct_stub,
    write_secondary_capture,
    write_series,
    write_stub,
)
from pipeline.errors import InputError
from pipeline.io.dicom import (
    SKIP_DICOMDIR,
    SKIP_LOCALIZER,
    SKIP_NO_GEOMETRY,
    SKIP_NON_IMAGE,
    SKIP_NOT_DICOM,
    SKIP_UNREADABLE,
    choose_series,
    load_ct,
    scan_folder,
)

from .test_dicom import _sagittal_slices


def _hospital_export(root, phantom, other):
    """Two studies, three image series in nested folders, and everything else an export holds."""
    write_series(phantom, root / "STUDY1" / "SER1", series_uid="1.2.3.1",
                 file_names=lambda n: f"{n:08X}")
    write_series(other, root / "STUDY1" / "SER2" / "deeper", series_uid="1.2.3.2",
                 file_names=lambda n: f"I{n}.dcm")
    write_series(other, root / "STUDY2", series_uid="1.2.3.3", modality="MR")
    write_rtstruct_stub(root / "STUDY1")
    write_stub(root / "STUDY1", RTPlanStorage, "RTPLAN", "plan")
    write_stub(root / "STUDY2", BasicTextSRStorage, "SR", "report")
    write_stub(root / "STUDY2", GrayscaleSoftcopyPresentationStateStorage, "PR", "ps")
    write_secondary_capture(root / "STUDY2")
    write_dicomdir_stub(root)
    write_junk_files(root / "STUDY1" / "misc")


def test_hospital_export_is_scanned_skipping_and_counting_the_rest(tmp_path, phantom,
                                                                     make_phantom):
    other = make_phantom(shape=(5, 20, 16))
    _hospital_export(tmp_path, phantom, other)
    scan = scan_folder(tmp_path)
    assert [s.series_uid for s in scan.series] == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert scan.skipped == {SKIP_NON_IMAGE: 4, SKIP_NO_GEOMETRY: 1, SKIP_DICOMDIR: 1,
                            SKIP_NOT_DICOM: 3, SKIP_UNREADABLE: 1}
    with pytest.raises(InputError, match=r"2 CT series .*--series.*1\.2\.3\.1.*1\.2\.3\.2"):
        load_ct(tmp_path)
    loaded = load_ct(tmp_path, series_uid="1.2.3.2")
    np.testing.assert_array_equal(loaded.hu, other.hu)
    np.testing.assert_allclose(loaded.affine, other.affine, atol=1e-6)


def test_series_command_lists_each_series_without_patient_identity(tmp_path, phantom,
                                                                    make_phantom, capsys):
    _hospital_export(tmp_path, phantom, make_phantom(shape=(5, 20, 16)))
    assert main(["series", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("1.2.3.1  CT") and "12 slices" in lines[0]
    assert "size 20x16x12" in lines[0] and "spacing 2 x 0.8 x 0.7 mm" in lines[0]
    assert "orientation SPL" in lines[0]
    assert lines[2].startswith("1.2.3.3  MR") and "5 slices" in lines[2]
    for secret in (FAKE_PATIENT_NAME, FAKE_PATIENT_ID, FAKE_BIRTH_DATE):
        assert secret not in out + err


def test_series_without_uid_are_grouped_by_their_other_keys(tmp_path, phantom, make_phantom):
    other = make_phantom(shape=(5, 24, 16))
    write_series(phantom, tmp_path / "a", series_uid="", frame_of_reference_uid="1.9.1")
    write_series(other, tmp_path / "b", series_uid="", frame_of_reference_uid="1.9.2")
    # A scout in the first group, without UID either: excluded, not stacked.
    write_series(_sagittal_slices(1), tmp_path / "a", series_uid="",
                 frame_of_reference_uid="1.9.1", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                 file_names=lambda n: "scout")
    scan = scan_folder(tmp_path)
    labels = sorted(s.label for s in scan.series)
    assert labels == ["<no SeriesInstanceUID #1>", "<no SeriesInstanceUID #2>"]
    with pytest.raises(InputError, match="--series"):
        choose_series(scan)
    by_size = {s.n_slices: s.label for s in scan.series}
    loaded = load_ct(tmp_path, series_uid=by_size[5])
    np.testing.assert_array_equal(loaded.hu, other.hu)
    loaded = load_ct(tmp_path, series_uid=by_size[12])
    np.testing.assert_array_equal(loaded.hu, phantom.hu)


def test_non_ct_series_is_refused_even_when_chosen(tmp_path, phantom):
    write_series(phantom, tmp_path, series_uid="1.2.3.9", modality="MR")
    with pytest.raises(InputError, match="no CT series"):
        load_ct(tmp_path)
    with pytest.raises(InputError, match=r"modality MR, not CT"):
        load_ct(tmp_path, series_uid="1.2.3.9")


def test_localizer_with_its_own_orientation_is_counted(tmp_path, phantom):
    uid = "1.2.3.5"
    write_series(phantom, tmp_path, series_uid=uid)
    write_series(_sagittal_slices(2), tmp_path / "s", series_uid=uid)
    loaded = load_ct(tmp_path)
    assert scan_folder(tmp_path).skipped == {SKIP_LOCALIZER: 2}
    np.testing.assert_array_equal(loaded.hu, phantom.hu)


@pytest.mark.parametrize("setup, message", [
    ("empty", "CT folder is empty"),
    ("junk only", "no image series found"),
    ("two slices", "no CT series with at least 3 slices"),
])
def test_refusals_exit_2_with_one_line_and_write_nothing(tmp_path, make_phantom, capsys, setup,
                                                         message):
    ct = tmp_path / "ct"
    ct.mkdir()
    if setup == "junk only":
        write_junk_files(ct)
        write_rtstruct_stub(ct)
    elif setup == "two slices":
        write_series(make_phantom(shape=(2, 20, 16)), ct)
    status = main(["mesh", str(ct), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
