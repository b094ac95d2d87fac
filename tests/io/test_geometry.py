"""Geometry and values of irregular hospital series: uneven slice steps, gantry tilt, patient
positions, enhanced multi-frame CT, padding ranges, Modality LUTs; checked against LPS truth."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from pipeline.io.dicom_write import write_enhanced_series, write_series
from pipeline.errors import InputError
from pipeline.io.export import nifti_bytes
from pipeline.io.dicom import PADDING_HU, load_ct
from pipeline.volume import Volume

from .test_dicom import GEOMETRY_TOL_MM, assert_same_physical_volume, bright_centroid_lps

AXIAL = np.array([[0.0, 0.0, 0.7, -5.0],
                  [0.0, 0.8, 0.0, -8.0],
                  [1.0, 0.0, 0.0, 40.0],
                  [0.0, 0.0, 0.0, 1.0]])
HU_PER_MM_Z = 7.0     # a linear HU ramp along z: linear interpolation reproduces it exactly
HU_AT_Z0 = -600.0


def _ramp_slice(z_mm: float, shape=(20, 16)) -> np.ndarray:
    return np.full((1, *shape), HU_AT_Z0 + HU_PER_MM_Z * z_mm, dtype=np.float32)


def _write_slices_at(folder, z_positions, affine=AXIAL, order=None, uid="1.2.3.77"):
    """One file per slice, each at its own z (uneven steps), all one series."""
    order = range(len(z_positions)) if order is None else order
    for n, k in enumerate(order):
        a = affine.copy()
        a[:3, 3] = affine[:3, 3] + affine[:3, 0] / np.linalg.norm(affine[:3, 0]) \
            * (z_positions[k] - z_positions[0])
        z = a[2, 3]
        write_series(Volume(_ramp_slice(z), a), folder, series_uid=uid,
                     frame_of_reference_uid="1.2.3.78", file_names=lambda m, n=n: f"slice{n}")


def test_uneven_steps_are_resampled_along_the_normal_and_reported(tmp_path):
    # A real abdomen-pelvis protocol: 5 mm steps, a 1 mm overlap, then 7 mm steps.
    steps = [5.0, 5.0, 1.0, 7.0, 7.0, 5.0]
    z = 40.0 + np.concatenate([[0.0], np.cumsum(steps)])
    _write_slices_at(tmp_path, z, order=np.random.default_rng(4).permutation(len(z)))
    volume = load_ct(tmp_path)
    resampled = volume.meta["resampled"]
    np.testing.assert_allclose(resampled["original_positions_mm"], z)
    extent = z[-1] - z[0]
    n_new = round(extent / np.median(steps)) + 1
    assert volume.shape[0] == n_new
    assert resampled["spacing_mm"] == pytest.approx(extent / (n_new - 1))
    np.testing.assert_allclose(volume.affine[:3, 0], [0, 0, extent / (n_new - 1)],
                               atol=GEOMETRY_TOL_MM)
    # HU at every new slice is the ramp at its LPS z (within half a stored integer).
    z_new = volume.index_to_lps(np.array([[k, 0, 0] for k in range(n_new)]))[:, 2]
    truth = HU_AT_Z0 + HU_PER_MM_Z * z_new
    np.testing.assert_allclose(volume.hu[:, 0, 0], truth, atol=0.5 + 1e-3)
    assert any("resampled" in note and "non-uniform" in note for note in volume.notes)


def test_gap_larger_than_the_limit_is_refused_naming_it(tmp_path):
    z = np.array([0.0, 5.0, 10.0, 22.0, 27.0])
    _write_slices_at(tmp_path, z)
    with pytest.raises(InputError, match=r"gap of 12\.000 mm between positions 50\.000 and "
                                         r"62\.000 mm .*limit of 8 mm.*slice2.*slice3"):
        load_ct(tmp_path)
    assert load_ct(tmp_path, max_gap_mm=12.5).meta["resampled"]["spacing_mm"] == \
        pytest.approx(27.0 / 5)


def _tilted_affine(tilt_deg: float) -> np.ndarray:
    affine = AXIAL.copy()
    affine[2, 0] = 2.0
    affine[1, 0] = 2.0 * np.tan(np.radians(tilt_deg))   # each slice shifts posteriorly
    return affine


def test_gantry_tilt_is_stated_and_carried_into_the_nifti_mask(tmp_path, make_phantom):
    tilted = make_phantom(_tilted_affine(20.0))
    write_series(tilted, tmp_path / "ct", transfer_syntax=RLELossless)
    volume = load_ct(tmp_path / "ct")
    assert volume.meta["gantry_tilt_deg"] == pytest.approx(20.0, abs=1e-3)
    assert any("gantry tilt 20.00 deg" in note for note in volume.notes)
    np.testing.assert_allclose(volume.affine, tilted.affine, atol=GEOMETRY_TOL_MM)
    # The sphere is where the phantom put it in LPS (its grid centre + (2.5, 2, 5) mm).
    centre = tilted.index_to_lps(np.indices(tilted.shape).reshape(3, -1).T).mean(axis=0)
    np.testing.assert_allclose(bright_centroid_lps(volume), centre + [2.5, 2.0, 5.0],
                               atol=0.5 * tilted.spacing_mm.max())
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(nifti_bytes(volume.hu > 750, volume.affine))
    img = nib.load(path)
    lps_from_nifti = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.get_sform()
    np.testing.assert_allclose(lps_from_nifti[:, [2, 1, 0, 3]], volume.affine, atol=1e-4)
    assert gzip.decompress(path.read_bytes())   # a real gzip stream


def test_uneven_tilted_stack_keeps_its_shear(tmp_path):
    affine = _tilted_affine(12.0)
    direction = affine[:3, 0] / affine[2, 0]       # LPS shift per mm along z
    z = np.array([0.0, 2.0, 4.0, 5.0, 8.0, 10.0])
    for n, t in enumerate(z):
        a = affine.copy()
        a[:3, 3] = affine[:3, 3] + direction * t
        write_series(Volume(_ramp_slice(a[2, 3]), a), tmp_path, series_uid="1.2.3.79",
                     file_names=lambda m, n=n: f"s{n}")
    volume = load_ct(tmp_path)
    step = volume.meta["resampled"]["spacing_mm"]
    np.testing.assert_allclose(volume.affine[:3, 0], direction * step, atol=GEOMETRY_TOL_MM)
    assert volume.meta["gantry_tilt_deg"] == pytest.approx(12.0, abs=1e-3)


# Row and column cosines as scanners write them for each patient position.
POSITIONS = {
    "HFS": ([1, 0, 0], [0, 1, 0]), "FFS": ([-1, 0, 0], [0, 1, 0]),
    "HFP": ([-1, 0, 0], [0, -1, 0]), "FFP": ([1, 0, 0], [0, -1, 0]),
    "HFDL": ([0, -1, 0], [1, 0, 0]), "HFDR": ([0, 1, 0], [-1, 0, 0]),
    "FFDL": ([0, 1, 0], [1, 0, 0]), "FFDR": ([0, -1, 0], [-1, 0, 0]),
}


@pytest.mark.parametrize("position", POSITIONS)
def test_every_patient_position_gives_lps_geometry(tmp_path, make_phantom, position):
    row_cosine, column_cosine = (np.array(v, dtype=float) for v in POSITIONS[position])
    affine = np.eye(4)
    affine[:3, 0] = np.cross(row_cosine, column_cosine) * 2.0
    affine[:3, 1] = column_cosine * 0.8
    affine[:3, 2] = row_cosine * 0.7
    affine[:3, 3] = [10.0, -20.0, 30.0]
    volume = make_phantom(affine)
    write_series(volume, tmp_path, patient_position=position,
                 slice_order=np.random.default_rng(5).permutation(volume.shape[0]))
    loaded = load_ct(tmp_path)
    assert loaded.meta["patient_position"] == position
    assert_same_physical_volume(loaded, volume)
    centre = volume.index_to_lps(np.indices(volume.shape).reshape(3, -1).T).mean(axis=0)
    np.testing.assert_allclose(bright_centroid_lps(loaded), centre + [2.5, 2.0, 5.0],
                               atol=0.5 * volume.spacing_mm.max())


@pytest.mark.parametrize("syntax", [None, JPEG2000Lossless])
def test_enhanced_multiframe_ct_uses_per_frame_geometry(tmp_path, make_phantom, syntax):
    volume = make_phantom(_tilted_affine(10.0), shape=(8, 40, 32))
    slopes = np.resize([1.0, 2.0], 8)
    options = {} if syntax is None else {"transfer_syntax": syntax}
    write_enhanced_series(volume, tmp_path / "enhanced", rescale_slope=slopes,
                          frame_order=np.random.default_rng(6).permutation(8), **options)
    loaded = load_ct(tmp_path)
    np.testing.assert_allclose(loaded.affine, volume.affine, atol=GEOMETRY_TOL_MM)
    assert np.all(np.abs(loaded.hu - volume.hu).max(axis=(1, 2)) <= slopes / 2)
    assert loaded.meta["gantry_tilt_deg"] == pytest.approx(10.0, abs=1e-3)


def test_padding_range_becomes_air_before_rescale(tmp_path, phantom):
    hu = phantom.hu.copy()
    hu[:, :2, :] = np.nan
    files = write_series(Volume(hu, phantom.affine), tmp_path, pixel_padding_value=-2000)
    for path in files:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.copy()
        stored[2, :] = -1700            # inside the padding range, not the padding value
        ds.PixelData = stored.tobytes()
        ds.add_new(0x00280121, "SS", -1500)   # PixelPaddingRangeLimit
        ds.save_as(path)
    loaded = load_ct(tmp_path)
    assert np.all(loaded.hu[:, :3, :] == PADDING_HU)
    np.testing.assert_array_equal(loaded.hu[:, 3:, :], phantom.hu[:, 3:, :])


def test_modality_lut_sequence_replaces_slope_and_intercept(tmp_path, phantom):
    files = write_series(phantom, tmp_path, signed=False, rescale_intercept=-1024.0)
    table = np.arange(4096) // 2   # stored -> HU: nothing like stored - 1024
    for path in files:
        ds = pydicom.dcmread(path)
        del ds.RescaleSlope, ds.RescaleIntercept
        item = pydicom.Dataset()
        item.add_new(0x00283002, "US", [4096, 0, 16])   # LUTDescriptor
        item.ModalityLUTType = "HU"
        item.add_new(0x00283006, "US", table.astype(int).tolist())   # LUTData
        ds.ModalityLUTSequence = [item]
        ds.save_as(path)
    loaded = load_ct(tmp_path)
    stored = np.rint(phantom.hu + 1024.0).astype(int)
    np.testing.assert_array_equal(loaded.hu, table[np.clip(stored, 0, 4095)])
