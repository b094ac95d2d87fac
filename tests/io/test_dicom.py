"""Write-then-read tests of the DICOM loader: geometry, robustness, clear errors."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from pipeline.io.dicom_write import (
    FAKE_BIRTH_DATE,
    FAKE_PATIENT_ID,
    FAKE_PATIENT_NAME,
    write_dicomdir_stub,
    write_junk_files,
    write_rtstruct_stub,
    write_series,
)
from pipeline.errors import InputError
from pipeline.io.dicom import (
    PADDING_HU,
    SKIP_DICOMDIR,
    SKIP_LOCALIZER,
    SKIP_NON_IMAGE,
    SKIP_NOT_DICOM,
    SKIP_UNREADABLE,
    choose_series,
    load_ct,
    load_series,
    scan_folder,
)
from pipeline.volume import Volume, flip_axis

from ..helpers import REAL_CT

# DICOM stores positions as 16-character decimal strings: ~1e-12 mm here.
GEOMETRY_TOL_MM = 1e-6
CENTROID_TOL_MM = 1e-3
BRIGHT_HU = 750.0   # between the phantom's box (300) and sphere (1200): the off-centre sphere only


def bright_centroid_lps(volume: Volume) -> np.ndarray:
    index = np.argwhere(volume.hu > BRIGHT_HU)
    assert len(index) > 20, "phantom sphere missing"
    return volume.index_to_lps(index).mean(axis=0)


def assert_same_physical_volume(a: Volume, b: Volume) -> None:
    """Every voxel of ``a`` sits at the LPS position of a voxel of ``b`` with the same HU."""
    a_to_b = np.linalg.inv(b.affine) @ a.affine
    assert np.allclose(a_to_b, np.round(a_to_b), atol=1e-6), "grids are not the same lattice"
    index_a = np.indices(a.shape).reshape(3, -1).T
    index_b = np.rint(index_a @ a_to_b[:3, :3].T + a_to_b[:3, 3]).astype(int)
    assert np.all((index_b >= 0) & (index_b < b.shape)), "grids do not cover the same box"
    np.testing.assert_array_equal(a.hu.reshape(-1), b.hu[tuple(index_b.T)])


def rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


# --------------------------------------------------------------------------- round trips

def test_round_trip_gives_identical_hu_and_affine(tmp_path, phantom):
    write_series(phantom, tmp_path)
    loaded = load_ct(tmp_path)
    np.testing.assert_array_equal(loaded.hu, phantom.hu)
    assert loaded.hu.dtype == np.float32
    np.testing.assert_allclose(loaded.affine, phantom.affine, atol=GEOMETRY_TOL_MM)
    assert loaded.meta["modality"] == "CT"
    assert loaded.meta["patient_position"] == "HFS"
    assert loaded.meta["n_slices"] == phantom.shape[0]


def test_shuffled_files_odd_names_and_subfolders_load_identically(tmp_path, phantom):
    n = phantom.shape[0]
    order = np.random.default_rng(1).permutation(n)
    series_dir = tmp_path / "export" / "série 1"
    written = write_series(phantom, series_dir, slice_order=order,
                           file_names=lambda m: f"slice ü {(7 * m) % n:02d} – copy")
    # The test must be able to fail: InstanceNumber and name order are not spatial order.
    z_by_instance = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
                     for p in sorted(written, key=lambda p: pydicom.dcmread(p).InstanceNumber)]
    z_by_name = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in sorted(written)]
    assert z_by_instance != sorted(z_by_instance) and z_by_name != sorted(z_by_name)

    loaded = load_ct(tmp_path)
    np.testing.assert_array_equal(loaded.hu, phantom.hu)
    np.testing.assert_allclose(loaded.affine, phantom.affine, atol=GEOMETRY_TOL_MM)


VARIANTS = {
    "slices reversed": lambda v: (flip_axis(v, 0), "HFS"),
    "rows flipped": lambda v: (flip_axis(v, 1), "HFS"),
    "columns flipped": lambda v: (flip_axis(v, 2), "HFS"),
    # Feet-first supine: the scanner's x axis points to the patient's right, so
    # the row cosine is [-1, 0, 0]; the slice normal then points inferior.
    "feet first": lambda v: (flip_axis(v, 2), "FFS"),
    "feet first, slices reversed": lambda v: (flip_axis(flip_axis(v, 2), 0), "FFS"),
    "all axes flipped": lambda v: (flip_axis(flip_axis(flip_axis(v, 0), 1), 2), "HFS"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_lps_geometry_is_invariant_to_storage_order(tmp_path, phantom, variant):
    stored, position = VARIANTS[variant](phantom)
    if variant.startswith("feet first"):
        row_cosine = stored.direction[:, 2]
        np.testing.assert_allclose(row_cosine, [-1, 0, 0])
    order = np.random.default_rng(2).permutation(stored.shape[0])
    write_series(stored, tmp_path, patient_position=position, slice_order=order)
    loaded = load_ct(tmp_path)
    assert loaded.meta["patient_position"] == position
    np.testing.assert_allclose(bright_centroid_lps(loaded), bright_centroid_lps(phantom),
                               atol=CENTROID_TOL_MM)
    assert_same_physical_volume(loaded, phantom)


def test_oblique_orientation_round_trip(tmp_path, make_phantom):
    # Slice axis superior, rows posterior, columns left, then rotated.
    axial = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    direction = rotation("x", 20.0) @ rotation("z", -35.0) @ axial
    affine = np.eye(4)
    affine[:3, :3] = direction * [2.0, 0.8, 0.7]
    affine[:3, 3] = [12.5, -30.0, 101.0]
    oblique = make_phantom(affine)
    write_series(oblique, tmp_path, slice_order=np.arange(oblique.shape[0])[::-1])
    loaded = load_ct(tmp_path)
    np.testing.assert_allclose(loaded.affine, affine, atol=GEOMETRY_TOL_MM)
    np.testing.assert_array_equal(loaded.hu, oblique.hu)


def test_gantry_tilt_gives_sheared_affine(tmp_path, make_phantom):
    tilt = np.radians(15.0)
    affine = np.array([[0.0, 0.0, 0.7, 0.0],
                       [0.0, 0.8, 0.0, 0.0],
                       [2.0, 0.0, 0.0, 0.0],
                       [0.0, 0.0, 0.0, 1.0]])
    affine[1, 0] = 2.0 * np.tan(tilt)   # each slice shifts posteriorly: a sheared grid
    tilted = make_phantom(affine)
    write_series(tilted, tmp_path)
    loaded = load_ct(tmp_path)
    np.testing.assert_allclose(loaded.affine, affine, atol=GEOMETRY_TOL_MM)
    np.testing.assert_array_equal(loaded.hu, tilted.hu)


def test_per_slice_rescale_slope_and_intercept(tmp_path, phantom):
    n = phantom.shape[0]
    slopes = np.resize([1.0, 0.5, 2.0, 0.25], n)
    intercepts = np.resize([-1024.0, -1000.0, 0.0, -3000.5], n)
    write_series(phantom, tmp_path, rescale_slope=slopes, rescale_intercept=intercepts)
    loaded = load_ct(tmp_path)
    # Rounding to the stored integer loses at most half a step, i.e. slope / 2 HU.
    error = np.abs(loaded.hu - phantom.hu).max(axis=(1, 2))
    assert np.all(error <= slopes / 2 + 1e-3)


def test_unsigned_storage_round_trip(tmp_path, phantom):
    write_series(phantom, tmp_path, signed=False, rescale_intercept=-1024.0)
    np.testing.assert_array_equal(load_ct(tmp_path).hu, phantom.hu)


def test_pixel_padding_value_becomes_air(tmp_path, phantom):
    hu = phantom.hu.copy()
    hu[:, :3, :3] = np.nan   # outside the reconstructed circle
    padded = Volume(hu, phantom.affine)
    write_series(padded, tmp_path, pixel_padding_value=-2000)
    loaded = load_ct(tmp_path)
    assert np.all(loaded.hu[:, :3, :3] == PADDING_HU)   # not -2000 - 1024 = -3024
    inside = np.isfinite(hu)
    np.testing.assert_array_equal(loaded.hu[inside], phantom.hu[inside])


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
@pytest.mark.parametrize("signed", [False, True])
def test_12_bit_stored_values_ignore_the_unused_high_bits(tmp_path, syntax, signed):
    """BitsStored 12 in 16-bit words: high bits are garbage (unsigned) or sign (signed)."""
    rng = np.random.default_rng(3)
    low, high = (-2048, 2048) if signed else (0, 4096)
    stored = rng.integers(low, high, (4, 6, 5)).astype(np.int16 if signed else np.uint16)
    files = write_series(Volume(stored.astype(np.float32) - 1024.0, np.eye(4)), tmp_path,
                         signed=signed, transfer_syntax=syntax)
    for path in files:
        ds = pydicom.dcmread(path)
        words = np.frombuffer(ds.PixelData, "<u2") & 0x0FFF   # keep 12 bits ...
        words |= rng.integers(0, 16, words.shape, dtype=np.uint16) << 12   # ... garbage above
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = words.astype("<u2").tobytes()
        ds.save_as(path)
    loaded = load_ct(tmp_path)
    hu = stored.astype(np.float32) - 1024.0
    np.testing.assert_array_equal(loaded.hu, hu[::-1])   # identity affine: stack is reversed
    reference = [pydicom.pixels.pixel_array(f) for f in files[::-1]]
    np.testing.assert_array_equal(loaded.hu, np.array(reference, dtype=np.float32) - 1024.0)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_series_round_trip(tmp_path, make_phantom, syntax):
    volume = make_phantom(shape=(6, 64, 48))   # OpenJPEG's default 6 resolutions need >= 32 px
    write_series(volume, tmp_path, transfer_syntax=syntax)
    assert pydicom.dcmread(next(tmp_path.iterdir())).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(load_ct(tmp_path).hu, volume.hu)


@settings(max_examples=25, deadline=None)
@given(angles=st.tuples(*[st.floats(-180, 180)] * 3),
       spacing=st.tuples(*[st.floats(0.3, 5.0)] * 3),
       mirrored=st.booleans(), seed=st.integers(0, 2**16))
def test_random_grids_keep_their_lps_geometry(angles, spacing, mirrored, seed):
    """Any orthogonal grid, either handedness, any file order: same voxels at same LPS points."""
    direction = rotation("z", angles[0]) @ rotation("y", angles[1]) @ rotation("x", angles[2])
    if mirrored:
        direction = direction @ np.diag([-1.0, 1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = np.random.default_rng(seed).uniform(-300, 300, 3)
    volume = Volume(np.random.default_rng(seed).integers(-1000, 2000, (4, 5, 3))
                    .astype(np.float32), affine)
    order = np.random.default_rng(seed).permutation(4)
    with tempfile.TemporaryDirectory() as folder:
        write_series(volume, folder, slice_order=order)
        loaded = load_ct(folder)
    assert_same_physical_volume(loaded, volume)


# --------------------------------------------------------------------------- what scan skips

def test_junk_non_image_and_dicomdir_are_skipped_and_counted(tmp_path, phantom):
    write_series(phantom, tmp_path / "ct")
    write_junk_files(tmp_path)
    write_rtstruct_stub(tmp_path)
    write_dicomdir_stub(tmp_path)
    scan = scan_folder(tmp_path)
    assert scan.skipped == {SKIP_NOT_DICOM: 3, SKIP_UNREADABLE: 1, SKIP_NON_IMAGE: 1,
                            SKIP_DICOMDIR: 1}
    assert scan.n_files == phantom.shape[0] + 6
    assert any("RT Structure Set Storage" in note for note in scan.notes)
    loaded = load_ct(tmp_path)
    np.testing.assert_array_equal(loaded.hu, phantom.hu)
    assert any("non-image" in note for note in loaded.notes)


def _sagittal_slices(n: int) -> Volume:
    """``n`` sagittal images through the phantom (rows inferior, columns anterior)."""
    affine = np.array([[1.0, 0.0, 0.0, 0.0],
                       [0.0, 0.0, -1.0, 0.0],
                       [0.0, -1.0, 0.0, 60.0],
                       [0.0, 0.0, 0.0, 1.0]])
    return Volume(np.zeros((n, 64, 48), np.float32), affine)


@pytest.mark.parametrize("image_type, n", [(("ORIGINAL", "PRIMARY", "LOCALIZER"), 1),
                                           (("ORIGINAL", "PRIMARY", "AXIAL"), 2)])
def test_localizer_in_the_same_series_is_excluded(tmp_path, phantom, image_type, n):
    uid = pydicom.uid.generate_uid()
    write_series(phantom, tmp_path, series_uid=uid)
    write_series(_sagittal_slices(n), tmp_path, series_uid=uid, image_type=image_type,
                 file_names=lambda m: f"scout{m}")
    scan = scan_folder(tmp_path)
    assert len(scan.series) == 1 and scan.series[0].n_slices == phantom.shape[0]
    assert scan.skipped == {SKIP_LOCALIZER: n}
    loaded = load_ct(tmp_path)
    np.testing.assert_array_equal(loaded.hu, phantom.hu)
    assert any("excluded" in note for note in loaded.notes)


def test_localizer_only_series_is_dropped_with_a_note(tmp_path, phantom):
    write_series(phantom, tmp_path / "ct")
    write_series(_sagittal_slices(1), tmp_path / "scout",
                 image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    scan = scan_folder(tmp_path)
    assert len(scan.series) == 1 and scan.skipped == {SKIP_LOCALIZER: 1}
    assert any("localizer" in note for note in scan.notes)


def test_two_series_need_an_explicit_choice(tmp_path, phantom, make_phantom):
    other = make_phantom(shape=(5, 20, 16))
    write_series(phantom, tmp_path / "a", series_uid="1.2.3.1", series_description="first")
    write_series(other, tmp_path / "b", series_uid="1.2.3.2", series_description="second")
    with pytest.raises(InputError, match="--series") as err:
        load_ct(tmp_path)
    assert "1.2.3.1" in str(err.value) and "1.2.3.2" in str(err.value)
    assert "\n" not in str(err.value)

    loaded = load_ct(tmp_path, series_uid="1.2.3.2")
    assert loaded.meta["description"] == "second" and loaded.shape == other.shape
    np.testing.assert_array_equal(loaded.hu, other.hu)
    assert "requested explicitly" in loaded.meta["chosen_reason"]

    with pytest.raises(InputError, match=r"no series 9\.9.*1\.2\.3\.1.*1\.2\.3\.2"):
        load_ct(tmp_path, series_uid="9.9")


def test_default_choice_ignores_non_ct_and_says_why(tmp_path, phantom, make_phantom):
    write_series(phantom, tmp_path, series_uid="1.2.3.1")
    write_series(make_phantom(shape=(4, 20, 16)), tmp_path / "mr", modality="MR",
                 series_uid="1.2.3.2")
    info, reason = choose_series(scan_folder(tmp_path))
    assert info.series_uid == "1.2.3.1"
    assert "only CT series" in reason and "1 other series" in reason


# --------------------------------------------------------------------------- refusals

def test_gap_beyond_the_limit_is_refused_naming_it(tmp_path, phantom):
    files = write_series(phantom, tmp_path)
    files[5].unlink()
    with pytest.raises(InputError, match=r"gap of 4\.000 mm .*exceeds the limit of 3 mm") as err:
        load_ct(tmp_path, max_gap_mm=3.0)
    assert files[4].name in str(err.value) and files[6].name in str(err.value)
    assert load_ct(tmp_path, max_gap_mm=4.5).meta["resampled"]["spacing_mm"] == 2.0


@pytest.mark.parametrize("change, message", [
    (np.array([[0, 0, 0, 1e5]] * 3 + [[0, 0, 0, 0]]), r"voxels lie up to 100 m from the origin, a CT's within 10 m"),
    (np.diag([0.0, 25.0, 0.0, 0.0]), r"voxel size .* mm is not a CT's \(0\.05 to 20 mm\)")])
def test_a_series_far_from_the_origin_or_of_huge_pixels_is_refused(tmp_path, phantom, change, message):
    """The checks of a NIfTI's grid hold for a DICOM series too: 100 m from
    the origin the run ended in a mesh error that named no input (float32
    vertices 8 um apart there)."""
    moved = Volume(phantom.hu, phantom.affine + change, phantom.meta, ())
    write_series(moved, tmp_path)
    with pytest.raises(InputError, match=r"^series [0-9.]+: (its )?" + message):
        load_ct(tmp_path)


def test_identical_duplicate_is_dropped_and_a_differing_one_refused(tmp_path, phantom):
    files = write_series(phantom, tmp_path)
    ds = pydicom.dcmread(files[3])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "copy_of_3")
    loaded = load_ct(tmp_path)
    np.testing.assert_array_equal(loaded.hu, phantom.hu)
    assert loaded.meta["duplicates_dropped"] == 1
    assert any("duplicate" in note for note in loaded.notes)

    stored = ds.pixel_array.copy()
    stored[0, 0] += 1
    ds.PixelData = stored.tobytes()
    ds.save_as(tmp_path / "copy_of_3")
    with pytest.raises(InputError, match="duplicate slice position with different pixel data") \
            as err:
        load_ct(tmp_path)
    assert "copy_of_3" in str(err.value) and files[3].name in str(err.value)


def test_slightly_uneven_spacing_is_resampled_not_assumed_uniform(tmp_path, phantom):
    files = write_series(phantom, tmp_path)
    ds = pydicom.dcmread(files[7])
    ds.ImagePositionPatient[2] += 0.3
    ds.save_as(files[7])
    loaded = load_ct(tmp_path)
    z = phantom.affine[2, 3] + 2.0 * np.arange(12)
    z[7] += 0.3
    np.testing.assert_allclose(loaded.meta["resampled"]["original_positions_mm"], z)
    assert loaded.shape == phantom.shape
    assert any("non-uniform slice spacing" in note for note in loaded.notes)


def test_two_slices_are_not_a_volume(tmp_path, make_phantom):
    write_series(make_phantom(shape=(2, 20, 16)), tmp_path)
    scan = scan_folder(tmp_path)
    with pytest.raises(InputError, match="no CT series with at least 3 slices"):
        choose_series(scan)
    with pytest.raises(InputError, match="2 slice"):
        load_series(scan.series[0])


def test_inconsistent_matrix_size_is_refused_naming_the_file(tmp_path, phantom, make_phantom):
    uid = pydicom.uid.generate_uid()
    write_series(phantom, tmp_path, series_uid=uid)
    odd = make_phantom(shape=(phantom.shape[0] + 1, 20, 15))
    affine = odd.affine.copy()
    affine[:3, 3] = odd.index_to_lps(np.array([[phantom.shape[0], 0, 0]]))[0]   # next slice
    odd_slice = Volume(odd.hu[-1:], affine)
    write_series(odd_slice, tmp_path, series_uid=uid, file_names=lambda m: "odd_one")
    with pytest.raises(InputError, match=r"odd_one: 20x15 pixels"):
        load_ct(tmp_path)


def test_truncated_pixel_data_is_refused_naming_the_file(tmp_path, phantom):
    files = write_series(phantom, tmp_path)
    data = files[4].read_bytes()
    files[4].write_bytes(data[:-100])
    with pytest.raises(InputError, match="cannot decode pixel data") as err:
        load_ct(tmp_path)
    assert str(files[4]) in str(err.value)


def test_unreadable_slice_header_is_reported_with_the_gap(tmp_path, phantom):
    """A header cut before its SOP class: nothing says what it was, so the
    gap its slice leaves is what is refused, naming the file skipped."""
    files = write_series(phantom, tmp_path)
    files[6].write_bytes(files[6].read_bytes()[:140])   # cut inside the file meta group
    with pytest.raises(InputError, match=r"gap of 4\.000 mm.*1 file\(s\) .* were skipped"):
        load_ct(tmp_path)


@pytest.mark.parametrize("where", [0, 6])
def test_an_unreadable_slice_of_the_series_is_refused_wherever_it_lies(tmp_path, phantom, where):
    """A header cut after its SOP class (CT Image Storage, as the series'):
    it may be one of the series' slices. At an end of the stack its loss
    left no gap, and the volume came out a slice short with exit 0; now it
    is refused naming the file, at the end as in the middle."""
    files = write_series(phantom, tmp_path)
    files[where].write_bytes(files[where].read_bytes()[:600])
    with pytest.raises(InputError, match="may be a slice of series") as err:
        load_ct(tmp_path)
    assert str(err.value).startswith(f"{files[where]}: unreadable")


@pytest.mark.parametrize("key, value", [("ImagePositionPatient", None), ("ImagePositionPatient", ["nan"] * 3),
                                        ("PixelSpacing", None)])
@pytest.mark.parametrize("where", [0, 6])
@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_a_slice_without_geometry_is_refused_not_bridged(tmp_path, phantom, key, value, where):
    """One slice of the series whose position or pixel spacing is missing or
    not numbers: it was skipped like a secondary capture, its place bridged
    by interpolation (in the middle) or left out (at an end), exit 0."""
    files = write_series(phantom, tmp_path)
    ds = pydicom.dcmread(files[where])
    if value is None:
        delattr(ds, key)
    else:
        setattr(ds, key, value)
    ds.save_as(files[where])
    with pytest.raises(InputError, match=f"{key} missing or not .* finite numbers: a slice of series"):
        load_ct(tmp_path)


def test_a_slice_that_lost_its_series_uid_is_refused_not_bridged(tmp_path, phantom):
    """A slice without SeriesInstanceUID is grouped apart: its place in the
    series it came from was bridged by interpolation (in the middle) or left
    out (at an end), exit 0. Two slices off the end, it is another image."""
    for where in (5, 0, 11):
        files = write_series(phantom, tmp_path / str(where))
        ds = pydicom.dcmread(files[where])
        del ds.SeriesInstanceUID
        ds.save_as(files[where])
        with pytest.raises(InputError, match=f"^{files[where]}: no SeriesInstanceUID, yet it lies in a gap or "
                                             "at an end of series [0-9.]+ "):
            load_ct(tmp_path / str(where))
    files[10].unlink()   # the lone slice is now two steps beyond the series' end
    volume = load_ct(tmp_path / "11")
    assert volume.shape[0] == phantom.shape[0] - 2 and "resampled" not in volume.meta


def test_rescale_missing_on_one_slice_or_giving_no_hu_is_refused(tmp_path, phantom):
    """CT images must carry RescaleSlope and RescaleIntercept: where one
    slice lacks them (or has an empty intercept) its HU are unknown; a zero
    slope gives none. Each took slope 1 and intercept 0 silently: a slab of
    'bone' 1024 HU too bright, or a slice of air."""
    for edit, match in ((lambda ds: (delattr(ds, "RescaleSlope"), delattr(ds, "RescaleIntercept")),
                         "no RescaleSlope/RescaleIntercept, which the other slices"),
                        (lambda ds: setattr(ds, "RescaleIntercept", None), "which the other slices"),
                        (lambda ds: setattr(ds, "RescaleSlope", "0"), "RescaleSlope 0 .* give no HU")):
        shutil.rmtree(tmp_path, ignore_errors=True)
        files = write_series(phantom, tmp_path)
        ds = pydicom.dcmread(files[5])
        edit(ds)
        ds.save_as(files[5])
        with pytest.raises(InputError, match=match) as err:
            load_ct(tmp_path)
        assert str(err.value).startswith(str(files[5]))


@pytest.mark.parametrize("signed, intercept", [(True, 0.0), (False, -1024.0)])
def test_rescale_missing_on_every_slice_is_hu_only_if_the_values_are(tmp_path, phantom, signed, intercept):
    """Without any rescale the stored values are taken as HU where they reach
    air (-1000, with a note); stored with an offset (unsigned, 0 for -1024 HU)
    they do not, and the series is refused rather than read 1024 HU bright."""
    files = write_series(phantom, tmp_path, signed=signed, rescale_intercept=intercept)
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(f)
    assert phantom.hu.min() <= -1000
    if signed:
        loaded = load_ct(tmp_path)
        np.testing.assert_array_equal(loaded.hu, phantom.hu)
        assert any("taken as HU" in n for n in loaded.notes)
    else:
        with pytest.raises(InputError, match=r"are not HU \(no air"):
            load_ct(tmp_path)


def test_a_file_without_transfer_syntax_is_read_as_its_header_was(tmp_path, phantom):
    """No TransferSyntaxUID in the file meta (or no file meta group at all):
    pydicom reads the dataset's encoding itself; the pixels follow it (the
    decoder stopped with a traceback, exit 1)."""
    from pydicom.dataset import FileMetaDataset

    files = write_series(phantom, tmp_path, transfer_syntax=ImplicitVRLittleEndian)
    for n, f in enumerate(files):
        ds = pydicom.dcmread(f)
        if n % 2:
            del ds.file_meta.TransferSyntaxUID
        else:
            ds.file_meta = FileMetaDataset()
        ds.save_as(f, enforce_file_format=False, implicit_vr=True, little_endian=True)
    np.testing.assert_array_equal(load_ct(tmp_path).hu, phantom.hu)


def test_slightly_different_orientation_is_refused_naming_the_file(tmp_path, phantom):
    files = write_series(phantom, tmp_path)
    ds = pydicom.dcmread(files[2])
    ds.ImageOrientationPatient = [0.99999, 0.00447, 0.0, 0.0, 1.0, 0.0]   # 0.26 degrees off
    ds.save_as(files[2])
    with pytest.raises(InputError, match=f"{files[2].name}: ImageOrientationPatient"):
        load_ct(tmp_path)


def test_empty_missing_and_imageless_folders_are_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist") as err:
        load_ct(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        load_ct(tmp_path / "empty")
    write_junk_files(tmp_path / "junk")
    write_rtstruct_stub(tmp_path / "junk")
    with pytest.raises(InputError, match="no image series found in .*junk"):
        load_ct(tmp_path / "junk")


# --------------------------------------------------------------------------- identity, progress

def test_patient_identity_never_leaves_the_loader(tmp_path, phantom):
    write_series(phantom, tmp_path)
    write_rtstruct_stub(tmp_path)
    scan = scan_folder(tmp_path)
    volume = load_ct(tmp_path)
    exposed = " ".join([scan.series[0].summary_line(), repr(scan.series[0]), repr(volume.meta),
                        *volume.notes, *scan.notes])
    for secret in (FAKE_PATIENT_NAME, "PHANTOM^", FAKE_PATIENT_ID, FAKE_BIRTH_DATE):
        assert secret not in exposed


def test_summary_line_describes_the_series(tmp_path, phantom):
    write_series(phantom, tmp_path, series_uid="1.2.3.4", series_description="pelvis 2mm")
    line = scan_folder(tmp_path).series[0].summary_line()
    for part in ("1.2.3.4", "CT", "pelvis 2mm", "12 slices", "20x16x12", "2 x 0.8 x 0.7 mm", "SPL"):
        assert part in line
    assert "\n" not in line


def test_progress_reports_every_file_and_slice(tmp_path, phantom):
    write_series(phantom, tmp_path)
    write_junk_files(tmp_path)
    calls = []
    load_ct(tmp_path, progress=lambda done, total: calls.append((done, total)))
    n_files, n_slices = phantom.shape[0] + 4, phantom.shape[0]
    assert calls == ([(k, n_files) for k in range(1, n_files + 1)]
                     + [(k, n_slices) for k in range(1, n_slices + 1)])


# --------------------------------------------------------------------------- real data

def real_data(*parts: str) -> Path:
    """A path under ../shared/real_ct, or skip the test when that data is absent."""
    path = REAL_CT.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present: {path.name}")
    return path


def _positions(files) -> np.ndarray:
    return np.array([pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient
                     for p in files], dtype=float)


@pytest.mark.real_data
def test_real_pelvic_reference_series():
    folder = real_data("pelvic_ref_003")
    volume = load_ct(folder)
    assert volume.shape == (145, 512, 512)
    np.testing.assert_allclose(volume.spacing_mm, [3.0, 1.0, 1.0], atol=1e-6)
    assert volume.meta["n_files_scanned"] == 146
    assert any("RT Structure Set Storage" in note for note in volume.notes)
    assert -1100 <= volume.hu.min() and volume.hu.max() < 4000
    # A pelvis contains bone: a sizeable fraction above 200 HU.
    assert (volume.hu > 200).mean() > 0.005
    # Axial head-first supine: slices superior from the lowest position, rows posterior,
    # columns to the patient's left; no tilt, nothing resampled.
    positions = _positions(folder.glob("CT*"))
    np.testing.assert_allclose(volume.origin_lps_mm, positions[np.argmin(positions[:, 2])],
                               atol=1e-6)
    np.testing.assert_allclose(volume.affine[:3, :3], [[0, 0, 1.0], [0, 1.0, 0], [3.0, 0, 0]],
                               atol=1e-6)
    assert volume.meta["gantry_tilt_deg"] == 0.0 and "resampled" not in volume.meta


@pytest.mark.real_data
def test_real_jpeg2000_series_without_series_uid():
    folder = real_data("totalseg_example", "dicom_j2k_upper_abdomen")
    volume = load_ct(folder)
    assert volume.shape == (20, 512, 512)
    np.testing.assert_allclose(volume.spacing_mm, [2.0, 0.9765625, 0.9765625], atol=1e-6)
    assert any("no SeriesInstanceUID" in note for note in volume.notes)
    # 3 mm slices every 2 mm: overlapping, yet a uniform grid; placed from the lowest slice.
    files = sorted(folder.iterdir())
    assert float(pydicom.dcmread(files[0], stop_before_pixels=True).SliceThickness) == 3.0
    assert "resampled" not in volume.meta and volume.meta["gantry_tilt_deg"] == 0.0
    pixel = 0.9765625
    np.testing.assert_allclose(volume.affine[:3, :3],
                               [[0, 0, pixel], [0, pixel, 0], [2.0, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(volume.origin_lps_mm[2], _positions(files)[:, 2].min(), atol=1e-6)
    assert -1100 <= volume.hu.min() and volume.hu.max() < 4000


def test_copied_series_is_found_by_content(tmp_path, phantom):
    """A series copied out of its folder under new names still loads (names carry nothing)."""
    files = write_series(phantom, tmp_path / "src")
    for i, f in enumerate(reversed(files)):
        shutil.copy(f, tmp_path / f"{i}.txt")
    shutil.rmtree(tmp_path / "src")
    np.testing.assert_array_equal(load_ct(tmp_path).hu, phantom.hu)


def test_a_folder_of_many_series_is_refused_in_a_line_of_reasonable_length(tmp_path, phantom):
    """An anonymiser that gave every file its own SeriesInstanceUID: twelve
    one-slice series. The message lists five and counts the rest (116 such
    series made a line of 24 804 characters)."""
    files = write_series(phantom, tmp_path)
    for n, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = f"1.2.3.{n + 1}"
        ds.save_as(f)
    with pytest.raises(InputError, match=r"and 7 more \(python -m pipeline series FOLDER lists them all\)") as err:
        load_ct(tmp_path)
    assert len(str(err.value)) < 2000 and "\n" not in str(err.value)


def test_images_without_geometry_are_named_when_nothing_else_is_found(tmp_path, phantom):
    files = write_series(phantom, tmp_path)
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.PixelSpacing
        ds.save_as(f)
    with pytest.raises(InputError, match=r"no image series found .*; e\.g\. .*: PixelSpacing missing or not 2"):
        load_ct(tmp_path)


def test_a_private_transfer_syntax_and_a_malformed_rescale_are_named(tmp_path, phantom):
    """A vendor's private transfer syntax (GE's implicit VR with big-endian
    pixels) was reported as 116 unreadable files; a RescaleIntercept that is
    no number as an unreadable file. Each is named now."""
    files = write_series(phantom, tmp_path, transfer_syntax=ImplicitVRLittleEndian)
    ds = pydicom.dcmread(files[4])
    ds.file_meta.TransferSyntaxUID = "1.2.840.113619.5.2"
    ds.save_as(files[4], enforce_file_format=True, implicit_vr=True, little_endian=True)
    with pytest.raises(InputError, match=r"transfer syntax 1\.2\.840\.113619\.5\.2 is not a standard DICOM one") as err:
        load_ct(tmp_path)
    assert str(err.value).startswith(str(files[4]))
    files = write_series(phantom, tmp_path)
    data = files[4].read_bytes()   # (0028,1052) DS, explicit VR little endian: its value's 0 made an O
    at = data.index(b"\x28\x00\x52\x10DS") + 8
    end = at + int.from_bytes(data[at - 2:at], "little")
    files[4].write_bytes(data[:at] + data[at:end].replace(b"0", b"O", 1) + data[end:])
    with pytest.raises(InputError, match=r"RescaleIntercept '-1O24.*' is not a number: it may be a slice of series"):
        load_ct(tmp_path)
