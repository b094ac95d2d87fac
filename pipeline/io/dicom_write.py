"""Write a :class:`~pipeline.volume.Volume` as a CT DICOM series.

Used by the phantom generator (the committed sample CT) and by the loader's
tests, which need series with known geometry: shuffled on-disk order, flipped
axes, feet-first, oblique or tilted grids, per-slice rescale, padding values.

Geometry comes from the affine only (see ``volume.py`` for the axis order):

* ImageOrientationPatient = [row cosine, column cosine], where the *row*
  cosine is the direction of increasing **column** index (affine column 2) and
  the *column* cosine the direction of increasing **row** index (affine
  column 1) -- DICOM's naming, not ours.
* PixelSpacing = [row spacing |affine[:, 1]|, column spacing |affine[:, 2]|].
* ImagePositionPatient of slice ``k`` = ``affine @ (k, 0, 0, 1)``.
* SliceThickness = |affine[:, 0]| (informational; readers must not use it).

The patient identity written here is deliberately fake (``PHANTOM^PELVIS``,
``PHANTOM-0001``) so tests can check that it never leaves the loader.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    EnhancedCTImageStorage,
    RTStructureSetStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from ..volume import Volume, check_affine

FAKE_PATIENT_NAME = "PHANTOM^PELVIS"
FAKE_PATIENT_ID = "PHANTOM-0001"
FAKE_BIRTH_DATE = "19000101"
FAKE_STUDY_DATE = "20000101"

# Transfer syntaxes pydicom cannot encode, and GDCM's name for each.
_GDCM_ENCODED = {
    UID("1.2.840.10008.1.2.4.50"): "JPEGBaselineProcess1",
    UID("1.2.840.10008.1.2.4.51"): "JPEGExtendedProcess2_4",
    UID("1.2.840.10008.1.2.4.57"): "JPEGLosslessProcess14",
    UID("1.2.840.10008.1.2.4.70"): "JPEGLosslessProcess14_1",
    UID("1.2.840.10008.1.2.4.80"): "JPEGLSLossless",
    UID("1.2.840.10008.1.2.4.81"): "JPEGLSNearLossless",
}

# Two in-plane directions written to ImageOrientationPatient must be orthogonal
# unit vectors; DICOM has no way to express a skewed pixel grid.
_ORTHOGONALITY_TOL = 1e-6


def _ds(value: float) -> str:
    """A decimal string that fits DICOM's 16-character DS limit."""
    return format_number_as_ds(float(value))


def _per_slice(value: float | Sequence[float], n: int, name: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)) if np.ndim(value) == 0 \
        else np.asarray(value, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a number or one value per slice ({n}), "
                         f"got shape {arr.shape}")
    if name == "rescale_slope" and np.any(arr == 0):
        raise ValueError("rescale_slope must be non-zero")
    return arr


def _slice_plan(n_slices: int, order: Sequence[int] | None, rescale_slope, rescale_intercept,
                order_name: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(write order, slope per slice, intercept per slice), checked."""
    order = list(range(n_slices)) if order is None else [int(k) for k in order]
    if sorted(order) != list(range(n_slices)):
        raise ValueError(f"{order_name} must be a permutation of range(n_slices)")
    return (order, _per_slice(rescale_slope, n_slices, "rescale_slope"),
            _per_slice(rescale_intercept, n_slices, "rescale_intercept"))


def _in_plane_geometry(affine: np.ndarray) -> tuple[list[float], list[float]]:
    """(ImageOrientationPatient, PixelSpacing) from the affine's row and column axes."""
    row_step, col_step = affine[:3, 1], affine[:3, 2]
    row_spacing, col_spacing = np.linalg.norm(row_step), np.linalg.norm(col_step)
    row_cosine = col_step / col_spacing      # DICOM "row direction": along a row, column index up
    column_cosine = row_step / row_spacing   # DICOM "column direction": down a column, row index up
    if abs(float(row_cosine @ column_cosine)) > _ORTHOGONALITY_TOL:
        raise ValueError("affine row and column axes are not orthogonal; "
                         "DICOM cannot store that grid")
    return [*row_cosine, *column_cosine], [row_spacing, col_spacing]


def _check_padding(hu: np.ndarray, dtype: np.dtype, pixel_padding_value: int | None) -> None:
    if pixel_padding_value is None:
        if not np.isfinite(hu).all():
            raise ValueError("hu has non-finite voxels but no pixel_padding_value was given")
        return
    info = np.iinfo(dtype)
    if not info.min <= pixel_padding_value <= info.max:
        raise ValueError(f"pixel_padding_value {pixel_padding_value} does not fit {dtype.name}")


def _stored_values(hu_slice: np.ndarray, slope: float, intercept: float, dtype: np.dtype,
                   pixel_padding_value: int | None, bits_stored: int = 16) -> np.ndarray:
    info = np.iinfo(dtype)
    low, high = ((-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if info.min < 0
                 else (0, (1 << bits_stored) - 1))
    finite = np.isfinite(hu_slice)
    stored = np.rint((np.where(finite, hu_slice, intercept) - intercept) / slope)
    stored = np.clip(stored, low, high).astype(dtype)
    if pixel_padding_value is not None:
        stored[~finite] = pixel_padding_value
    return stored


def _base_dataset(*, modality: str, patient_position: str, series_description: str,
                  study_uid: str, series_uid: str, frame_of_reference_uid: str,
                  image_type: Sequence[str], series_number: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = FAKE_STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.Modality = modality
    ds.Manufacturer = "pelvic-implant-pipeline phantom"
    ds.ManufacturerModelName = "synthetic"
    ds.SeriesDescription = series_description
    ds.PatientName = FAKE_PATIENT_NAME
    ds.PatientID = FAKE_PATIENT_ID
    ds.PatientBirthDate = FAKE_BIRTH_DATE
    ds.PatientSex = "O"
    ds.PatientPosition = patient_position
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.RescaleType = "HU"
    return ds


def _file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    return meta


def _save_atomic(ds: Dataset, path: Path) -> None:
    """Write ``ds`` to a temporary file beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_series(
    volume: Volume,
    out_dir: str | os.PathLike,
    *,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    uid_seed: str | None = None,
    series_description: str = "Synthetic pelvis phantom",
    series_number: int = 1,
    modality: str = "CT",
    patient_position: str = "HFS",
    rescale_slope: float | Sequence[float] = 1.0,
    rescale_intercept: float | Sequence[float] = -1024.0,
    signed: bool = True,
    file_names: Callable[[int], str] | None = None,
    slice_order: Sequence[int] | None = None,
    pixel_padding_value: int | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    transfer_syntax: str = ExplicitVRLittleEndian,
    bits_stored: int = 16,
    compress_kwargs: dict | None = None,
) -> list[Path]:
    """Write ``volume`` as one single-frame CT image file per slice.

    Parameters
    ----------
    volume : Volume
        ``hu`` (slice, row, column) in HU and its LPS affine. Non-finite voxels
        are written as ``pixel_padding_value`` (which must then be given).
    out_dir : path
        Created if missing.
    series_uid, study_uid, frame_of_reference_uid : str, optional
        Generated when absent: random, or derived from ``uid_seed`` when that
        is given, so that a committed sample series is byte-reproducible.
        SOP Instance UIDs are always derived from the series UID and the slice
        geometry, hence unique per slice and reproducible with a seed.
    rescale_slope, rescale_intercept : float or sequence of float
        One value for all slices, or one per slice index (to test per-slice
        rescaling). Stored value = round((hu - intercept) / slope), clipped to
        the range of the stored type.
    signed : bool
        int16 (PixelRepresentation 1) when true, else uint16.
    file_names : callable, optional
        ``file_names(n) -> str`` for the ``n``-th file written (0-based, in
        write order). Default ``f"IM{n:05d}"`` with no extension.
    slice_order : sequence of int, optional
        A permutation of slice indices: the order in which slices are written.
        InstanceNumber and the default file names follow this write order, not
        the spatial order, so a reader sorting by either gets it wrong.
    pixel_padding_value : int, optional
        Written as PixelPaddingValue; non-finite voxels are stored as it.
    transfer_syntax : UID
        Native (implicit/explicit VR little or big endian, deflated), a syntax
        pydicom can encode (RLE Lossless, JPEG 2000 with pylibjpeg-openjpeg),
        or one GDCM transcodes to (JPEG baseline/extended/lossless, JPEG-LS).
    bits_stored : int
        8 (one byte per pixel, as JPEG baseline needs), 12 (in 16-bit words,
        as JPEG extended needs) or 16. Stored values are clipped to that range.
    compress_kwargs : dict, optional
        Passed to ``Dataset.compress`` (e.g. ``{"j2k_cr": [20]}`` for lossy JPEG 2000).

    Returns
    -------
    list of Path
        The files written, in write order.
    """
    affine = check_affine(volume.affine)
    n_slices, n_rows, n_cols = volume.hu.shape
    order, slopes, intercepts = _slice_plan(n_slices, slice_order, rescale_slope,
                                            rescale_intercept, "slice_order")
    names = file_names or (lambda n: f"IM{n:05d}")
    if bits_stored not in (8, 12, 16):
        raise ValueError(f"bits_stored must be 8, 12 or 16, got {bits_stored}")
    dtype = np.dtype((np.int8 if signed else np.uint8) if bits_stored == 8
                     else (np.int16 if signed else np.uint16))
    transfer_syntax = UID(transfer_syntax)
    _check_padding(volume.hu, dtype, pixel_padding_value)   # fail before writing anything

    def _uid(given: str | None, role: str) -> str:
        if given is not None:
            return given
        if uid_seed is None:
            return generate_uid()
        return generate_uid(entropy_srcs=[uid_seed, role])

    series_uid = _uid(series_uid, "series")
    study_uid = _uid(study_uid, "study")
    frame_of_reference_uid = _uid(frame_of_reference_uid, "frame-of-reference")
    iop, pixel_spacing = _in_plane_geometry(affine)
    normal = np.cross(iop[:3], iop[3:])
    base = _base_dataset(modality=modality, patient_position=patient_position,
                         series_description=series_description, study_uid=study_uid,
                         series_uid=series_uid, frame_of_reference_uid=frame_of_reference_uid,
                         image_type=image_type, series_number=series_number)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, k in enumerate(order):
        position = affine @ np.array([k, 0.0, 0.0, 1.0])
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = generate_uid(
            entropy_srcs=[series_uid, str(k), repr(position[:3].tolist()), repr(iop)])
        ds.file_meta = _file_meta(CTImageStorage, ds.SOPInstanceUID, transfer_syntax)
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
        ds.ImageOrientationPatient = [_ds(v) for v in iop]
        ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
        ds.SliceThickness = _ds(np.linalg.norm(affine[:3, 0]))
        ds.SliceLocation = _ds(float(normal @ position[:3]))
        ds.Rows, ds.Columns = n_rows, n_cols
        ds.PixelRepresentation = int(signed)
        ds.RescaleSlope = _ds(slopes[k])
        ds.RescaleIntercept = _ds(intercepts[k])
        if pixel_padding_value is not None:
            ds.PixelPaddingValue = int(pixel_padding_value)
        _set_bits(ds, bits_stored)
        stored = _stored_values(volume.hu[k], slopes[k], intercepts[k], dtype, pixel_padding_value,
                                bits_stored)
        path = out / names(n)
        _save_pixels(ds, stored, transfer_syntax, path, compress_kwargs or {})
        written.append(path)
    return written


def _set_bits(ds: Dataset, bits_stored: int) -> None:
    ds.BitsAllocated = 8 if bits_stored == 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1


def _save_pixels(ds: Dataset, stored: np.ndarray, transfer_syntax: UID, path: Path,
                 compress_kwargs: dict) -> None:
    """Encode ``stored`` (frames or one frame) in ``transfer_syntax`` and save ``ds`` to ``path``.

    Syntaxes pydicom cannot encode are written natively, then transcoded by GDCM.
    """
    if transfer_syntax in _GDCM_ENCODED:
        native = path.with_name(f".native-{path.name}")
        ds.PixelData = stored.astype(stored.dtype.newbyteorder("<")).tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        _save_atomic(ds, native)
        try:
            _transcode_with_gdcm(native, path, transfer_syntax)
        finally:
            native.unlink(missing_ok=True)
        return
    if transfer_syntax.is_compressed:
        ds.compress(transfer_syntax, stored, generate_instance_uid=False, **compress_kwargs)
    else:
        order = "<" if transfer_syntax.is_little_endian else ">"
        ds.PixelData = stored.astype(stored.dtype.newbyteorder(order)).tobytes()
    _save_atomic(ds, path)


def _transcode_with_gdcm(src: Path, dst: Path, transfer_syntax: UID) -> None:
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise ValueError(f"GDCM cannot read {src}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, _GDCM_ENCODED[transfer_syntax])))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise ValueError(f"GDCM cannot encode {transfer_syntax.name}")
    writer = gdcm.ImageWriter()
    tmp = dst.with_name(f".gdcm-{dst.name}")
    writer.SetFileName(str(tmp))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise ValueError(f"GDCM cannot write {dst}")
    os.replace(tmp, dst)


def write_enhanced_series(
    volume: Volume,
    path: str | os.PathLike,
    *,
    rescale_slope: float | Sequence[float] = 1.0,
    rescale_intercept: float | Sequence[float] = -1024.0,
    frame_order: Sequence[int] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_position: str = "HFS",
) -> Path:
    """Write ``volume`` as one Enhanced CT (multi-frame) file.

    Geometry lives only in the functional groups, as in scanner exports: pixel
    measures and orientation shared, position per frame. Rescale goes per frame
    when it differs between slices, else shared. ``frame_order`` stores the
    slices in another order (frame ``n`` holds slice ``frame_order[n]``).
    """
    affine = check_affine(volume.affine)
    n_slices, n_rows, n_cols = volume.hu.shape
    order, slopes, intercepts = _slice_plan(n_slices, frame_order, rescale_slope,
                                            rescale_intercept, "frame_order")
    iop, pixel_spacing = _in_plane_geometry(affine)
    ds = _base_dataset(modality="CT", patient_position=patient_position,
                       series_description="Synthetic enhanced CT", study_uid=generate_uid(),
                       series_uid=generate_uid(), frame_of_reference_uid=generate_uid(),
                       image_type=("ORIGINAL", "PRIMARY", "VOLUME", "NONE"), series_number=1)
    del ds.RescaleType
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = _file_meta(EnhancedCTImageStorage, ds.SOPInstanceUID, UID(transfer_syntax))
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns, ds.NumberOfFrames = n_rows, n_cols, n_slices
    ds.PixelRepresentation = 1
    per_slice_rescale = len(set(slopes)) > 1 or len(set(intercepts)) > 1
    shared = Dataset()
    shared.PixelMeasuresSequence = [_item(PixelSpacing=[_ds(v) for v in pixel_spacing],
                                          SliceThickness=_ds(np.linalg.norm(affine[:3, 0])))]
    shared.PlaneOrientationSequence = [_item(ImageOrientationPatient=[_ds(v) for v in iop])]
    if not per_slice_rescale:
        shared.PixelValueTransformationSequence = [_rescale_item(slopes[0], intercepts[0])]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in order:
        group = Dataset()
        position = affine @ np.array([k, 0.0, 0.0, 1.0])
        group.PlanePositionSequence = [_item(ImagePositionPatient=[_ds(v) for v in position[:3]])]
        if per_slice_rescale:
            group.PixelValueTransformationSequence = [_rescale_item(slopes[k], intercepts[k])]
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = frames
    stored = np.stack([_stored_values(volume.hu[k], slopes[k], intercepts[k], np.dtype(np.int16),
                                      None) for k in order])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_pixels(ds, stored, UID(transfer_syntax), out, {})
    return out


def _item(**elements) -> Dataset:
    item = Dataset()
    for keyword, value in elements.items():
        setattr(item, keyword, value)
    return item


def _rescale_item(slope: float, intercept: float) -> Dataset:
    return _item(RescaleSlope=_ds(slope), RescaleIntercept=_ds(intercept), RescaleType="HU")


def write_stub(out_dir: str | os.PathLike, sop_class_uid: str, modality: str,
               name: str) -> Path:
    """A header-only non-image object (RTSTRUCT, RTPLAN, SR, presentation state): no pixels."""
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = _file_meta(sop_class_uid, ds.SOPInstanceUID, ExplicitVRLittleEndian)
    ds.Modality = modality
    ds.PatientName = FAKE_PATIENT_NAME
    ds.PatientID = FAKE_PATIENT_ID
    ds.SeriesInstanceUID = generate_uid()
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(ds, path)
    return path


def write_rtstruct_stub(out_dir: str | os.PathLike, name: str = "RS_stub") -> Path:
    """A header-only RTSTRUCT-like object (no pixel data) that a loader must skip."""
    return write_stub(out_dir, RTStructureSetStorage, "RTSTRUCT", name)


def write_secondary_capture(out_dir: str | os.PathLike, name: str = "SC_screenshot") -> Path:
    """A secondary capture image (a screenshot): pixel data, but no patient geometry."""
    ds = _base_dataset(modality="OT", patient_position="", series_description="screenshot",
                       study_uid=generate_uid(), series_uid=generate_uid(),
                       frame_of_reference_uid=generate_uid(), image_type=("DERIVED", "SECONDARY"),
                       series_number=99)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = _file_meta(SecondaryCaptureImageStorage, ds.SOPInstanceUID,
                              ExplicitVRLittleEndian)
    ds.Rows, ds.Columns, ds.PixelRepresentation = 8, 8, 0
    ds.PixelData = np.zeros((8, 8), "<u2").tobytes()
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(ds, path)
    return path


def write_dicomdir_stub(out_dir: str | os.PathLike, name: str = "DICOMDIR") -> Path:
    """A minimal Media Storage Directory object (an empty DICOMDIR)."""
    ds = Dataset()
    ds.file_meta = _file_meta(MediaStorageDirectoryStorage, generate_uid(), ExplicitVRLittleEndian)
    ds.FileSetID = "PHANTOM"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = []
    path = Path(out_dir) / name
    _save_atomic(ds, path)
    return path


def write_junk_files(out_dir: str | os.PathLike) -> list[Path]:
    """Files a hospital export folder typically also holds: text, an empty file, binary noise."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "README.txt": b"exported by a PACS viewer\n",
        "empty": b"",
        "noise.bin": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        # 128-byte preamble and the magic, then garbage: looks like DICOM, is not.
        "fake.dcm": b"\0" * 128 + b"DICM" + b"\xff" * 64,
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    return [out / name for name in files]
