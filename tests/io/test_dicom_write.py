"""The DICOM writer, checked with plain pydicom reads (independent of the loader)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pipeline.io.dicom_write import (
    FAKE_PATIENT_ID,
    FAKE_PATIENT_NAME,
    write_dicomdir_stub,
    write_rtstruct_stub,
    write_series,
)
from pipeline.volume import Volume

DS_TOL = 1e-9   # 16-character decimal strings keep ~12+ significant digits here


def oblique_affine() -> np.ndarray:
    a, b = np.radians(25.0), np.radians(-10.0)
    rot_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    axial = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot_x @ rot_z @ axial * [2.5, 0.8, 0.6]
    affine[:3, 3] = [-120.25, 33.5, 7.0]
    return affine


def read(path) -> pydicom.Dataset:
    return pydicom.dcmread(path)


def test_geometry_tags_follow_the_affine(tmp_path, make_phantom):
    affine = oblique_affine()
    volume = make_phantom(affine, shape=(5, 6, 7))
    files = write_series(volume, tmp_path)
    for k, path in enumerate(files):
        ds = read(path)
        position = (affine @ [k, 0, 0, 1])[:3]
        np.testing.assert_allclose(ds.ImagePositionPatient, position, atol=DS_TOL)
        # Row cosine: direction of increasing column index; column cosine: increasing row index.
        np.testing.assert_allclose(ds.ImageOrientationPatient[:3], affine[:3, 2] / 0.6, atol=DS_TOL)
        np.testing.assert_allclose(ds.ImageOrientationPatient[3:], affine[:3, 1] / 0.8, atol=DS_TOL)
        np.testing.assert_allclose(ds.PixelSpacing, [0.8, 0.6], atol=DS_TOL)
        assert float(ds.SliceThickness) == pytest.approx(2.5)
        assert (ds.Rows, ds.Columns) == (6, 7)
        assert ds.pixel_array.shape == (6, 7)


def test_stored_values_are_rescaled_rounded_and_clipped(tmp_path):
    hu = np.array([[[-1024.0, 0.4, 0.6, 40000.0]]] * 3, dtype=np.float32)
    files = write_series(Volume(hu, np.eye(4)), tmp_path, rescale_slope=0.5,
                         rescale_intercept=-1000.0)
    ds = read(files[0])
    assert ds.PixelRepresentation == 1 and ds.pixel_array.dtype == np.int16
    np.testing.assert_array_equal(ds.pixel_array[0], [-48, 2001, 2001, 32767])
    assert float(ds.RescaleSlope) == 0.5 and float(ds.RescaleIntercept) == -1000.0

    unsigned = write_series(Volume(hu, np.eye(4)), tmp_path / "u", signed=False)
    ds = read(unsigned[0])
    assert ds.PixelRepresentation == 0 and ds.pixel_array.dtype == np.uint16
    np.testing.assert_array_equal(ds.pixel_array[0], [0, 1024, 1025, 41024])


def test_shuffled_write_order_sets_instance_numbers_and_names(tmp_path, phantom):
    order = [3, 0, 11, 5, 1, 2, 4, 6, 7, 8, 9, 10]
    files = write_series(phantom, tmp_path, slice_order=order)
    assert [f.name for f in files] == [f"IM{n:05d}" for n in range(12)]
    z = [float(read(f).ImagePositionPatient[2]) for f in files]
    instance = [int(read(f).InstanceNumber) for f in files]
    assert instance == list(range(1, 13))
    np.testing.assert_allclose(z, phantom.affine[2, 3] + 2.0 * np.array(order))
    with pytest.raises(ValueError, match="permutation"):
        write_series(phantom, tmp_path / "bad", slice_order=[0, 0, 1])


def test_file_meta_identity_and_uids(tmp_path, phantom):
    files = write_series(phantom, tmp_path, transfer_syntax=ImplicitVRLittleEndian)
    assert files[0].read_bytes()[128:132] == b"DICM"
    datasets = [read(f) for f in files]
    ds = datasets[0]
    assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage == ds.SOPClassUID
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert len({d.SOPInstanceUID for d in datasets}) == len(files)
    assert len({d.SeriesInstanceUID for d in datasets}) == 1
    assert ds.PatientName == FAKE_PATIENT_NAME and ds.PatientID == FAKE_PATIENT_ID
    assert ds.Modality == "CT" and ds.PatientPosition == "HFS"


def test_uid_seed_makes_the_series_reproducible(tmp_path, phantom):
    a = write_series(phantom, tmp_path / "a", uid_seed="sample-1")
    b = write_series(phantom, tmp_path / "b", uid_seed="sample-1")
    c = write_series(phantom, tmp_path / "c")
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    assert read(a[0]).SeriesInstanceUID != read(c[0]).SeriesInstanceUID


def test_writes_are_atomic_and_fail_before_writing(tmp_path, phantom):
    write_series(phantom, tmp_path / "ok")
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == [f"IM{n:05d}" for n in range(12)]
    hu = phantom.hu.copy()
    hu[5, 0, 0] = np.nan
    with pytest.raises(ValueError, match="pixel_padding_value"):
        write_series(Volume(hu, phantom.affine), tmp_path / "bad")
    bad = tmp_path / "bad"
    assert not bad.exists() or not any(bad.iterdir())


def test_skewed_grid_is_refused(tmp_path, phantom):
    affine = phantom.affine.copy()
    affine[0, 1] = 0.1   # rows no longer perpendicular to columns
    with pytest.raises(ValueError, match="orthogonal"):
        write_series(Volume(phantom.hu, affine), tmp_path)


def test_stub_objects_carry_no_pixels(tmp_path):
    rs = read(write_rtstruct_stub(tmp_path))
    assert rs.Modality == "RTSTRUCT" and "PixelData" not in rs
    dicomdir = read(write_dicomdir_stub(tmp_path))
    assert dicomdir.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert "PixelData" not in dicomdir
