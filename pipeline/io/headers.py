"""One DICOM file's header -> the :class:`SliceHeader` (s) the loader needs.

Reads with ``stop_before_pixels`` and never decodes pixels. A classic image
file gives one header; an enhanced (multi-frame) image gives one per frame,
its geometry and rescale taken from the per-frame functional groups, falling
back to the shared ones. No patient identity is kept.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

# Skip reasons: keys of Scan.skipped.
SKIP_NOT_DICOM = "not DICOM"
SKIP_UNREADABLE = "unreadable or truncated DICOM file"
SKIP_DICOMDIR = "DICOMDIR"
SKIP_NON_IMAGE = "non-image DICOM object"
SKIP_NO_GEOMETRY = "image without patient geometry"
SKIP_LOCALIZER = "localizer or minority orientation"

NATIVE_LITTLE_ENDIAN = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}
# What a damaged or foreign header makes pydicom raise; anything else is a bug.
_HEADER_ERRORS = (InvalidDicomError, EOFError, OSError, ValueError, struct.error)
_PIXEL_DATA_ELEMENTS = {0x0010, 0x0008, 0x0009}   # (7FE0,xxxx): PixelData, Float-, DoubleFloat-


@dataclass(frozen=True)
class SliceHeader:
    """What the loader needs from one image (one frame of a file) (no patient identity)."""

    path: Path
    position_lps_mm: tuple[float, float, float]
    orientation: tuple[float, ...]         # ImageOrientationPatient: row cosine, column cosine
    pixel_spacing_mm: tuple[float, float]  # (between rows, between columns)
    rows: int
    columns: int
    rescale_slope: float
    rescale_intercept: float
    padding: tuple[int, int] | None        # inclusive stored-value range that means "no data"
    n_frames: int
    transfer_syntax: str
    bits_allocated: int
    bits_stored: int
    signed: bool                           # PixelRepresentation 1
    samples_per_pixel: int
    pixel_offset: int | None               # file offset of the PixelData element, if known
    image_type: tuple[str, ...]
    frame: int = 0                         # index of this image among the file's frames
    # Modality LUT Sequence: (first stored value mapped, output value per entry); replaces
    # slope and intercept when present.
    modality_lut: tuple[int, np.ndarray] | None = field(default=None, repr=False)
    # RescaleSlope and RescaleIntercept both present (or a Modality LUT): without them
    # slope 1 and intercept 0 stand in, and the loader decides whether the stored values are HU.
    rescale_given: bool = True


def _locate_pixel_data(fp, ds: pydicom.Dataset) -> tuple[bool, int | None]:
    """After ``dcmread(stop_before_pixels=True)``: (is the next element pixel data, its offset).

    The offset (None if unknown) lets native pixel data be read without parsing
    the header a second time.
    """
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax == DeflatedExplicitVRLittleEndian:   # fp is the compressed stream: cannot peek
        return "Rows" in ds, None
    offset = fp.tell()
    raw = fp.read(4)
    if len(raw) < 4:
        return False, None
    little = ds.original_encoding[1]   # as the header was read: a private syntax's too
    group, element = struct.unpack("<HH" if little else ">HH", raw)
    found = group == 0x7FE0 and element in _PIXEL_DATA_ELEMENTS
    return found, (offset if found else None)


def read_header(path: Path) -> tuple[pydicom.Dataset | None, int | None, str | None]:
    """(dataset, pixel data offset, None) for an image file, else a skip reason last.

    The dataset comes back with ``SKIP_NON_IMAGE`` so its SOP class can be named.
    """
    try:
        with open(path, "rb") as fp, warnings.catch_warnings():
            warnings.simplefilter("ignore")   # pydicom warns about every oddity of foreign files
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=False)
            has_pixels, offset = _locate_pixel_data(fp, ds)
    except InvalidDicomError:
        return None, None, SKIP_NOT_DICOM
    except _HEADER_ERRORS:
        return None, None, SKIP_UNREADABLE
    if len(ds) == 0 and "MediaStorageSOPClassUID" not in ds.file_meta:
        return None, None, SKIP_UNREADABLE   # a 'DICM' magic with nothing parseable behind it
    if ds.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
        return None, None, SKIP_DICOMDIR
    if not has_pixels:
        if "Rows" in ds or "Image Storage" in sop_class_name(ds):
            return None, None, SKIP_UNREADABLE   # an image without its pixel data: truncated
        return ds, None, SKIP_NON_IMAGE
    return ds, offset, None


def transfer_syntax(ds: pydicom.Dataset) -> str:
    """The file's TransferSyntaxUID; for a file without one (no file meta
    group, or one without the element), the encoding pydicom read its
    dataset in: implicit or explicit VR, little or big endian."""
    syntax = str(ds.file_meta.get("TransferSyntaxUID") or "").strip()
    if syntax:
        return syntax
    implicit, little = ds.original_encoding
    if not little:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def sop_class_name(ds: pydicom.Dataset) -> str:
    uid = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or ""
    return UID(str(uid)).name if uid else "unknown SOP class"


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _number(value, keyword: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{keyword} {str(value)!r} is not a number") from None


def _stored_int(value, signed: bool) -> int:
    """An US/SS value as the stored integer (implicit VR may give the US reading of SS)."""
    v = int(value)
    return v - 65536 if signed and v > 32767 else v


def _padding_range(ds: pydicom.Dataset, signed: bool) -> tuple[int, int] | None:
    if ds.get("PixelPaddingValue") is None:
        return None
    first = _stored_int(ds.PixelPaddingValue, signed)
    limit = ds.get("PixelPaddingRangeLimit")
    last = first if limit is None else _stored_int(limit, signed)
    return (min(first, last), max(first, last))


def _modality_lut(ds: pydicom.Dataset, signed: bool) -> tuple[int, np.ndarray] | None:
    seq = ds.get("ModalityLUTSequence")
    if not seq:
        return None
    item = seq[0]
    n_entries, first, _bits = (int(v) for v in item.LUTDescriptor)
    data = item.LUTData
    if isinstance(data, bytes):   # OW: 16-bit words
        table = np.frombuffer(data, dtype="<u2")
    else:
        table = np.asarray([data] if isinstance(data, int) else list(data))
    table = table[:n_entries or 65536].astype(np.float32)
    return _stored_int(first, signed), table


def _strings(value) -> tuple[str, ...]:
    """A multi-valued CS element as upper-case strings (pydicom gives a bare str for VM 1)."""
    if value is None or value == "":
        return ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).upper() for v in values)


def _functional(groups: list[pydicom.Dataset], sequence: str, keyword: str):
    """``keyword`` from the first of ``groups`` (per-frame, then shared) that has it."""
    for group in groups:
        items = group.get(sequence) if group is not None else None
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return None


def slice_headers(path: Path, ds: pydicom.Dataset, pixel_offset: int | None) -> list[SliceHeader]:
    """One header per frame of an image file; empty when it lacks patient geometry.

    Raises ``TypeError``/``ValueError`` on a malformed number.
    """
    if "Rows" not in ds:
        return []
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    common = dict(
        path=path,
        rows=int(ds.Rows),
        columns=int(ds.get("Columns", 0)),
        padding=_padding_range(ds, signed),
        n_frames=int(ds.get("NumberOfFrames") or 1),
        transfer_syntax=transfer_syntax(ds),
        bits_allocated=int(ds.get("BitsAllocated") or 0),
        bits_stored=int(ds.get("BitsStored") or 0),
        signed=signed,
        samples_per_pixel=int(ds.get("SamplesPerPixel") or 1),
        pixel_offset=pixel_offset,
        image_type=_strings(ds.get("ImageType")),
        modality_lut=_modality_lut(ds, signed),
    )
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        frames = [(0, [ds], None)]
    else:
        shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
        frames = [(f, [group, shared], group) for f, group in enumerate(per_frame)]
    headers = []
    for frame, groups, enhanced in frames:
        geometry = _frame_geometry(ds, groups, enhanced is not None)
        if geometry is None:
            return []
        position, orientation, spacing, slope, intercept = geometry
        given = common["modality_lut"] is not None or (slope not in (None, "") and intercept not in (None, ""))
        headers.append(SliceHeader(
            position_lps_mm=position, orientation=orientation, pixel_spacing_mm=spacing,
            rescale_slope=1.0 if slope in (None, "") else _number(slope, "RescaleSlope"),
            rescale_intercept=0.0 if intercept in (None, "") else _number(intercept, "RescaleIntercept"),
            frame=frame, rescale_given=given, **common))
    return headers


def missing_geometry(path: Path) -> str:
    """Which of an image's geometry elements is missing or malformed (for a
    file :func:`slice_headers` gives nothing for), as a phrase."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    groups = [per_frame[0] if per_frame else None, shared] if per_frame is not None else [ds]
    wanted = (("ImagePositionPatient", "PlanePositionSequence", 3),
              ("ImageOrientationPatient", "PlaneOrientationSequence", 6),
              ("PixelSpacing", "PixelMeasuresSequence", 2))
    bad = [(name, n) for name, sequence, n in wanted
           if _floats(_functional(groups, sequence, name) if per_frame is not None else ds.get(name), n) is None]
    return " and ".join(f"{name} missing or not {n} finite numbers" for name, n in bad) or "Rows missing"


def _frame_geometry(ds: pydicom.Dataset, groups: list, enhanced: bool):
    """(position, orientation, pixel spacing, slope, intercept) of one frame, or None."""
    if enhanced:
        position = _functional(groups, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _functional(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _functional(groups, "PixelMeasuresSequence", "PixelSpacing")
        slope = _functional(groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _functional(groups, "PixelValueTransformationSequence", "RescaleIntercept")
    else:
        position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        spacing = ds.get("PixelSpacing")
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    position, orientation, spacing = (_floats(position, 3), _floats(orientation, 6),
                                      _floats(spacing, 2))
    if position is None or orientation is None or spacing is None:
        return None
    return position, orientation, spacing, slope, intercept
