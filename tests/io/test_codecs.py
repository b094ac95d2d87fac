"""Compressed and re-encoded pixel data: every transfer syntax hospitals export, written here
with pydicom or GDCM, loads with the phantom's geometry; missing decoders and damaged slices
are refused naming the file."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

import pipeline.io.pixels as load_pixels
from pipeline.cli import main
from pipeline.io.dicom_write import write_series
from pipeline.errors import InputError
from pipeline.io.dicom import load_ct

from .test_dicom import BRIGHT_HU, GEOMETRY_TOL_MM, bright_centroid_lps

SHAPE = (6, 64, 48)   # OpenJPEG's default 6 resolutions need >= 32 px

LOSSLESS = {
    "JPEG lossless SV1": (JPEGLosslessSV1, {}),
    "JPEG lossless": (JPEGLossless, {}),
    "JPEG-LS lossless": (JPEGLSLossless, {}),
    "JPEG-LS near-lossless": (JPEGLSNearLossless, {}),
    "JPEG 2000 lossless": (JPEG2000Lossless, {}),
    "RLE": (RLELossless, {}),
    "deflated": (DeflatedExplicitVRLittleEndian, {}),
    "explicit big endian": (ExplicitVRBigEndian, {}),
    "JPEG extended 12-bit, lossless range": (JPEGExtended12Bit, {"bits_stored": 12,
                                                                 "signed": False}),
}
# Lossy: (syntax, writer options, HU step of one stored value).
LOSSY = {
    "JPEG baseline 8-bit": (JPEGBaseline8Bit, {"bits_stored": 8, "signed": False,
                                               "rescale_slope": 16.0}, 16.0),
    "JPEG 2000 lossy": (JPEG2000, {"compress_kwargs": {"j2k_cr": [10]}}, 1.0),
}


@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_syntaxes_round_trip_exactly(tmp_path, make_phantom, name):
    syntax, options = LOSSLESS[name]
    volume = make_phantom(shape=SHAPE)
    write_series(volume, tmp_path, transfer_syntax=syntax, **options)
    assert pydicom.dcmread(next(tmp_path.iterdir())).file_meta.TransferSyntaxUID == syntax
    loaded = load_ct(tmp_path)
    np.testing.assert_allclose(loaded.affine, volume.affine, atol=GEOMETRY_TOL_MM)
    if name.startswith("JPEG extended"):
        # Lossy codec: the phantom's three HU levels survive within a few stored steps.
        assert np.abs(loaded.hu - volume.hu).max() <= 8.0
    else:
        np.testing.assert_array_equal(loaded.hu, volume.hu)


@pytest.mark.parametrize("name", LOSSY)
def test_lossy_syntaxes_keep_the_geometry(tmp_path, make_phantom, name):
    syntax, options, hu_step = LOSSY[name]
    volume = make_phantom(shape=SHAPE)
    write_series(volume, tmp_path, transfer_syntax=syntax, **options)
    loaded = load_ct(tmp_path)
    np.testing.assert_allclose(loaded.affine, volume.affine, atol=GEOMETRY_TOL_MM)
    # The bright sphere lies where it was to a fraction of a voxel, and most voxels keep
    # their value to a few quantisation steps (lossy codecs ring only at edges).
    quarter_voxel = 0.25 * float(volume.spacing_mm.min())
    np.testing.assert_allclose(bright_centroid_lps(loaded), bright_centroid_lps(volume),
                               atol=quarter_voxel)
    assert np.median(np.abs(loaded.hu - volume.hu)) <= 2 * hu_step
    assert np.count_nonzero(loaded.hu > BRIGHT_HU) == pytest.approx(
        np.count_nonzero(volume.hu > BRIGHT_HU), rel=0.1)


def test_decoding_in_worker_processes_gives_the_same_volume(tmp_path, make_phantom):
    volume = make_phantom(shape=(10, 64, 48))
    write_series(volume, tmp_path, transfer_syntax=JPEG2000Lossless)
    calls = []
    loaded = load_ct(tmp_path, workers=2, progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_array_equal(loaded.hu, volume.hu)
    assert calls[-1] == (10, 10)


@pytest.mark.skipif(load_pixels.WORKERS < 2, reason="one core: every series decodes in one process")
@pytest.mark.parametrize("syntax, in_processes", [(RLELossless, True), (JPEG2000Lossless, False)])
def test_long_series_are_split_over_processes_unless_the_decoder_uses_the_cores_itself(
        tmp_path, make_phantom, monkeypatch, syntax, in_processes):
    """RLE decodes on one core: a long series goes to worker processes; the
    JPEG 2000 decoder (OpenJPEG) spreads each frame over the cores itself
    (two processes: no faster, 295 MiB more memory for 300 slices), so it
    decodes in the loading process."""
    volume = make_phantom(shape=(2 * load_pixels.MIN_SLICES_PER_WORKER, 64, 48))
    write_series(volume, tmp_path, transfer_syntax=syntax)
    split = []
    real = load_pixels._read_in_processes

    def spy(slices, shape, workers, progress):
        split.append(workers)
        return real(slices, shape, workers, progress)

    monkeypatch.setattr(load_pixels, "_read_in_processes", spy)
    loaded = load_ct(tmp_path)
    np.testing.assert_array_equal(loaded.hu, volume.hu)
    assert bool(split) == in_processes, split


def test_missing_decoder_is_refused_naming_syntax_and_package(tmp_path, make_phantom,
                                                              monkeypatch):
    write_series(make_phantom(shape=SHAPE), tmp_path, transfer_syntax=JPEG2000Lossless)
    monkeypatch.setattr(load_pixels.pydicom.pixels, "get_decoder",
                        lambda uid: SimpleNamespace(is_available=False))
    with pytest.raises(InputError, match=r"no decoder installed for transfer syntax "
                                         r"JPEG 2000 Image Compression \(Lossless Only\).*"
                                         r"install pylibjpeg-openjpeg or python-gdcm"):
        load_ct(tmp_path)


def test_syntax_without_any_decoder_exits_2_and_writes_nothing(tmp_path, make_phantom, capsys):
    files = write_series(make_phantom(shape=SHAPE), tmp_path / "ct", transfer_syntax=RLELossless)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"   # MPEG2 video
        ds.save_as(path)
    status = main(["mesh", str(tmp_path / "ct"), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and not (tmp_path / "out").exists()
    assert "no decoder exists in pydicom for transfer syntax MPEG2" in err
    assert len(err.strip().splitlines()) == 1


def test_truncated_compressed_slice_is_refused_naming_the_file(tmp_path, make_phantom):
    files = write_series(make_phantom(shape=SHAPE), tmp_path, transfer_syntax=JPEG2000Lossless)
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match="IM00003") as err:
        load_ct(tmp_path)
    assert "\n" not in str(err.value)


def test_undecodable_compressed_slice_is_refused_naming_the_file(tmp_path, make_phantom):
    files = write_series(make_phantom(shape=SHAPE), tmp_path, transfer_syntax=JPEG2000Lossless)
    ds = pydicom.dcmread(files[3])
    frame = bytearray(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1).__next__())
    frame[: len(frame) // 2] = b"\x00" * (len(frame) // 2)   # the codestream header is gone
    ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])
    ds.save_as(files[3])
    with pytest.raises(InputError, match="cannot decode pixel data") as err:
        load_ct(tmp_path)
    assert str(files[3]) in str(err.value) and "\n" not in str(err.value)


def _load_in_daemon(folder, expected, result) -> None:
    try:
        loaded = load_ct(folder, workers=2)
        result.put(bool(np.array_equal(loaded.hu, expected)))
    except BaseException as e:   # the parent asserts on what happened here
        result.put(f"{type(e).__name__}: {e}")


def test_a_daemonic_process_decodes_in_itself(tmp_path, make_phantom):
    """A batch case runs in a dask worker, a daemonic process, which may not
    start decoding processes: it decodes the series itself."""
    import multiprocessing

    volume = make_phantom(shape=(10, 64, 48))
    write_series(volume, tmp_path, transfer_syntax=JPEG2000Lossless)
    context = multiprocessing.get_context("spawn")
    result = context.Queue()
    child = context.Process(target=_load_in_daemon, args=(tmp_path, volume.hu, result), daemon=True)
    child.start()
    outcome = result.get(timeout=60)
    child.join()
    assert outcome is True
