"""CT DICOM folder -> :class:`~pipeline.volume.Volume`. The only module that reads DICOM.

Three steps, each usable on its own (the ``series`` command stops after the
second):

1. :func:`scan_folder` reads every file's header (never its pixels), finds
   DICOM by content, skips what is not a CT image and groups image files into
   series, excluding localizers.
2. :func:`choose_series` picks one series: the one asked for, or the only CT
   volume, and says why.
3. :func:`load_series` sorts the slices along the slice normal, derives the
   affine from ImagePositionPatient differences, checks the grid is regular
   and streams rescaled pixels into one float32 array. Uncompressed 16-bit
   little-endian pixel data is read straight from the offset the scan found
   (no second header parse, no per-slice allocation); every other transfer
   syntax goes through pydicom's decoders (pylibjpeg, python-gdcm).

Patient identity stays here: :class:`SeriesInfo`, ``Volume.meta`` and the notes
carry no names, IDs, birth dates or acquisition dates.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from .errors import InputError
from .volume import Volume, orientation_code

Progress = Callable[[int, int], None]

# Tolerances, in one place.
ORIENTATION_GROUP_TOL = 0.05     # max |cosine difference|: beyond it, another orientation (~3 deg)
ORIENTATION_TOL = 1e-4           # max |cosine difference| between slices of one series
DIRECTION_COSINE_TOL = 1e-3      # unit length / orthogonality of ImageOrientationPatient
PIXEL_SPACING_TOL_MM = 1e-4      # PixelSpacing differences between slices of one series
SLICE_STEP_REL_TOL = 1e-3        # slice step deviation, as a fraction of the step ...
SLICE_STEP_ABS_TOL_MM = 1e-3     # ... plus this, in mm
MIN_SLICES = 3                   # fewer cannot make a volume (nor a checkable spacing)
PADDING_HU = -1024.0             # HU given to PixelPaddingValue voxels (air)

# Skip reasons: keys of Scan.skipped.
SKIP_NOT_DICOM = "not DICOM"
SKIP_UNREADABLE = "unreadable or truncated DICOM file"
SKIP_DICOMDIR = "DICOMDIR"
SKIP_NON_IMAGE = "non-image DICOM object"
SKIP_NO_GEOMETRY = "image without patient geometry"
SKIP_LOCALIZER = "localizer or minority orientation"

# What a damaged or foreign header makes pydicom raise; anything else is a bug.
_HEADER_ERRORS = (InvalidDicomError, EOFError, OSError, ValueError, struct.error)
# What a damaged, truncated or undecodable pixel payload makes pydicom raise.
_DECODE_ERRORS = (ValueError, RuntimeError, NotImplementedError, AttributeError, OSError,
                  EOFError, struct.error)
_PIXEL_DATA_ELEMENTS = {0x0010, 0x0008, 0x0009}   # (7FE0,xxxx): PixelData, Float-, DoubleFloat-
_PIXEL_DATA_TAG_LE = struct.pack("<HH", 0x7FE0, 0x0010)
_NATIVE_LITTLE_ENDIAN = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}


@dataclass(frozen=True)
class SliceHeader:
    """What the loader needs from one image file's header (no patient identity)."""

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


@dataclass(frozen=True)
class SeriesInfo:
    """One candidate image series, slices sorted along the slice normal."""

    series_uid: str
    modality: str
    description: str
    patient_position: str
    manufacturer: str
    model: str
    rows: int
    columns: int
    spacing_mm: tuple[float, float, float]   # (slice, row, column); slice = median step length
    orientation: str                         # volume.orientation_code of the series' grid
    slices: tuple[SliceHeader, ...] = field(repr=False)
    notes: tuple[str, ...] = ()

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(s.path for s in self.slices)

    @property
    def positions_lps_mm(self) -> np.ndarray:
        """(n_slices, 3) ImagePositionPatient of each slice, in sorted order."""
        return np.array([s.position_lps_mm for s in self.slices], dtype=np.float64).reshape(-1, 3)

    def summary_line(self) -> str:
        uid = self.series_uid or "<no SeriesInstanceUID>"
        sp = " x ".join(f"{s:.4g}" for s in self.spacing_mm)
        return (f"{uid}  {self.modality or '?'}  '{self.description}'  {self.n_slices} slices  "
                f"size {self.rows}x{self.columns}x{self.n_slices} (rows x columns x slices)  "
                f"spacing {sp} mm (slice, row, column)  orientation {self.orientation}")


@dataclass(frozen=True)
class Scan:
    """Result of reading every header in a folder.

    ``series``: image series, CT first, then by slice count. ``skipped``: files
    not used, counted by reason (the ``SKIP_*`` constants). ``n_files``: every
    regular file seen. ``notes``: the same facts, readable, for the report.
    """

    folder: Path
    series: tuple[SeriesInfo, ...]
    skipped: dict[str, int]
    n_files: int
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- scan

def _list_files(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(Path(root) / name for name in sorted(files))
    return [p for p in found if p.is_file()]


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
    little = syntax is None or UID(syntax).is_little_endian
    group, element = struct.unpack("<HH" if little else ">HH", raw)
    found = group == 0x7FE0 and element in _PIXEL_DATA_ELEMENTS
    return found, (offset if found else None)


def _read_header(path: Path) -> tuple[pydicom.Dataset | None, int | None, str | None]:
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
        if "Rows" in ds or "Image Storage" in _sop_class_name(ds):
            return None, None, SKIP_UNREADABLE   # an image without its pixel data: truncated
        return ds, None, SKIP_NON_IMAGE
    return ds, offset, None


def _sop_class_name(ds: pydicom.Dataset) -> str:
    uid = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or ""
    return UID(str(uid)).name if uid else "unknown SOP class"


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _padding_range(ds: pydicom.Dataset) -> tuple[int, int] | None:
    if ds.get("PixelPaddingValue") is None:
        return None
    signed = int(ds.get("PixelRepresentation", 0)) == 1

    def stored(v) -> int:   # implicit-VR files may give the US reading of an SS value
        v = int(v)
        return v - 65536 if signed and v > 32767 else v

    first = stored(ds.PixelPaddingValue)
    limit = ds.get("PixelPaddingRangeLimit")
    last = first if limit is None else stored(limit)
    return (min(first, last), max(first, last))


def _slice_header(path: Path, ds: pydicom.Dataset, pixel_offset: int | None) -> SliceHeader | None:
    position = _floats(ds.get("ImagePositionPatient"), 3)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    if position is None or orientation is None or spacing is None or "Rows" not in ds:
        return None
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    return SliceHeader(
        path=path,
        position_lps_mm=position,
        orientation=orientation,
        pixel_spacing_mm=spacing,
        rows=int(ds.Rows),
        columns=int(ds.get("Columns", 0)),
        rescale_slope=1.0 if slope in (None, "") else float(slope),
        rescale_intercept=0.0 if intercept in (None, "") else float(intercept),
        padding=_padding_range(ds),
        n_frames=int(ds.get("NumberOfFrames") or 1),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        bits_allocated=int(ds.get("BitsAllocated") or 0),
        bits_stored=int(ds.get("BitsStored") or 0),
        signed=int(ds.get("PixelRepresentation") or 0) == 1,
        samples_per_pixel=int(ds.get("SamplesPerPixel") or 1),
        pixel_offset=pixel_offset,
        image_type=_strings(ds.get("ImageType")),
    )


def _strings(value) -> tuple[str, ...]:
    """A multi-valued CS element as upper-case strings (pydicom gives a bare str for VM 1)."""
    if value is None or value == "":
        return ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).upper() for v in values)


def _cosines(orientation: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row cosine, column cosine, slice normal) of an ImageOrientationPatient value."""
    iop = np.asarray(orientation, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    return row, col, np.cross(row, col)


def _max_difference(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return float(np.max(np.abs(np.subtract(a, b))))


def _orientation_groups(slices: list[SliceHeader]) -> list[list[SliceHeader]]:
    """Cluster slices whose orientations agree within ORIENTATION_GROUP_TOL, largest first."""
    groups: list[list[SliceHeader]] = []
    for s in slices:
        for g in groups:
            if _max_difference(s.orientation, g[0].orientation) <= ORIENTATION_GROUP_TOL:
                g.append(s)
                break
        else:
            groups.append([s])
    return sorted(groups, key=len, reverse=True)


def _sort_along_normal(slices: list[SliceHeader]) -> list[SliceHeader]:
    normal = _cosines(slices[0].orientation)[2]
    return sorted(slices, key=lambda s: (float(np.dot(s.position_lps_mm, normal)), str(s.path)))


def _grid_affine(first: SliceHeader, slice_step: np.ndarray) -> np.ndarray:
    """Affine (k, j, i, 1) -> LPS mm for slices stepping by ``slice_step`` from ``first``."""
    row_cos, col_cos, _ = _cosines(first.orientation)
    row_spacing, col_spacing = first.pixel_spacing_mm
    affine = np.eye(4)
    affine[:3, 0] = slice_step
    affine[:3, 1] = col_cos * row_spacing   # increasing row index moves down a column
    affine[:3, 2] = row_cos * col_spacing   # increasing column index moves along a row
    affine[:3, 3] = first.position_lps_mm
    return affine


def _median_step(slices: tuple[SliceHeader, ...] | list[SliceHeader]) -> np.ndarray:
    if len(slices) < 2:
        return _cosines(slices[0].orientation)[2]
    positions = np.array([s.position_lps_mm for s in slices])
    return np.median(np.diff(positions, axis=0), axis=0)


def _series_info(uid: str, slices: list[SliceHeader], ds: pydicom.Dataset,
                 notes: list[str]) -> SeriesInfo:
    ordered = _sort_along_normal(slices)
    first = ordered[0]
    step = _median_step(ordered)
    affine = _grid_affine(first, step)
    return SeriesInfo(
        series_uid=uid,
        modality=str(ds.get("Modality", "")),
        description=str(ds.get("SeriesDescription", "")),
        patient_position=str(ds.get("PatientPosition", "")),
        manufacturer=str(ds.get("Manufacturer", "")),
        model=str(ds.get("ManufacturerModelName", "")),
        rows=first.rows,
        columns=first.columns,
        spacing_mm=(float(np.linalg.norm(step)), *first.pixel_spacing_mm),
        orientation=orientation_code(affine),
        slices=tuple(ordered),
        notes=tuple(notes),
    )


def _build_series(uid: str, slices: list[SliceHeader], ds: pydicom.Dataset,
                  skipped: Counter) -> tuple[SeriesInfo | None, list[str]]:
    """Exclude localizers and minority orientations from one series' image files.

    Returns the series (None when nothing is left) and notes on what was excluded.
    """
    label = uid or "<no SeriesInstanceUID>"
    notes = []
    localizers = [s for s in slices if "LOCALIZER" in s.image_type]
    rest = [s for s in slices if "LOCALIZER" not in s.image_type]
    if localizers:
        notes.append(f"series {label}: excluded {len(localizers)} localizer image(s)")
    groups = _orientation_groups(rest) if rest else []
    for g in groups[1:]:
        notes.append(f"series {label}: excluded {len(g)} image(s) in a minority orientation "
                     f"(kept {len(groups[0])} with the majority orientation)")
    n_excluded = len(localizers) + sum(len(g) for g in groups[1:])
    if n_excluded:
        skipped[SKIP_LOCALIZER] += n_excluded
    if not groups:
        return None, notes
    return _series_info(uid, groups[0], ds, notes), notes


def scan_folder(ct_dir: str | os.PathLike, *, progress: Progress | None = None) -> Scan:
    """Read the header of every file under ``ct_dir`` (recursively) and group image series.

    Files are recognised by content, whatever their name. Non-DICOM files,
    DICOMDIRs, non-image objects (RTSTRUCT, RTPLAN, SR, presentation states:
    anything without pixel data) and images without patient geometry are
    skipped and counted in ``Scan.skipped``; never fatal.

    Raises
    ------
    InputError
        ``ct_dir`` does not exist or is not a folder.
    """
    folder = Path(ct_dir)
    if not folder.is_dir():
        raise InputError(f"CT folder does not exist or is not a folder: {folder}")
    paths = _list_files(folder)
    skipped: Counter = Counter()
    non_image_classes: Counter = Counter()
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    first_ds: dict[str, pydicom.Dataset] = {}
    for n, path in enumerate(paths, start=1):
        ds, header, reason = _classify(path)
        if reason is not None:
            skipped[reason] += 1
            if reason == SKIP_NON_IMAGE:
                non_image_classes[_sop_class_name(ds)] += 1
        else:
            uid = str(ds.get("SeriesInstanceUID") or "")
            by_series[uid].append(header)
            first_ds.setdefault(uid, ds)
        if progress is not None:
            progress(n, len(paths))

    series, notes = [], _scan_notes(skipped, non_image_classes, by_series)
    for uid, slices in by_series.items():
        info, excluded = _build_series(uid, slices, first_ds[uid], skipped)
        if info is None:
            notes.extend(excluded)   # a series of localizers only: nothing else reports it
        else:
            series.append(info)
    series.sort(key=lambda s: (s.modality != "CT", -s.n_slices, s.series_uid))
    return Scan(folder=folder, series=tuple(series), skipped=dict(skipped), n_files=len(paths),
                notes=tuple(notes))


def _classify(path: Path) -> tuple[pydicom.Dataset | None, SliceHeader | None, str | None]:
    """(dataset, slice header, None) for a usable image file, else a skip reason last."""
    ds, pixel_offset, reason = _read_header(path)
    if reason is not None:
        return ds, None, reason
    try:
        header = _slice_header(path, ds, pixel_offset)
    except (TypeError, ValueError):   # a malformed number in an image header
        return ds, None, SKIP_UNREADABLE
    return ds, header, (SKIP_NO_GEOMETRY if header is None else None)


def _scan_notes(skipped: Counter, non_image_classes: Counter,
                by_series: dict[str, list[SliceHeader]]) -> list[str]:
    notes = []
    for reason in (SKIP_NOT_DICOM, SKIP_UNREADABLE, SKIP_DICOMDIR, SKIP_NO_GEOMETRY):
        if skipped.get(reason):
            notes.append(f"skipped {skipped[reason]} file(s): {reason}")
    if skipped.get(SKIP_NON_IMAGE):
        kinds = ", ".join(f"{name} x{count}" for name, count in sorted(non_image_classes.items()))
        notes.append(f"skipped {skipped[SKIP_NON_IMAGE]} {SKIP_NON_IMAGE}(s): {kinds}")
    if "" in by_series:
        notes.append(f"{len(by_series[''])} image file(s) have no SeriesInstanceUID; "
                     "they are grouped together as one series")
    return notes


# --------------------------------------------------------------------------- choose

def _is_ct_volume(info: SeriesInfo) -> bool:
    return info.modality.upper() == "CT" and info.n_slices >= MIN_SLICES


def choose_series(scan: Scan, series_uid: str | None = None) -> tuple[SeriesInfo, str]:
    """The series to load and why it was chosen.

    With ``series_uid``, that series. Without, the only CT series with at least
    ``MIN_SLICES`` slices; if there are none or several, an :class:`InputError`
    lists what was found and asks for ``--series``.
    """
    if not scan.series:
        raise InputError(f"no image series found in {scan.folder} "
                         f"(skipped: {_skipped_text(scan.skipped)})")
    if series_uid is not None:
        for info in scan.series:
            if info.series_uid == series_uid:
                return info, f"series {series_uid} requested explicitly"
        available = ", ".join(s.series_uid or "<no SeriesInstanceUID>" for s in scan.series)
        raise InputError(f"no series {series_uid} in {scan.folder}; available: {available}")
    candidates = [s for s in scan.series if _is_ct_volume(s)]
    if len(candidates) == 1:
        info = candidates[0]
        others = len(scan.series) - 1
        return info, (f"only CT series with at least {MIN_SLICES} slices in the folder"
                      + (f" ({others} other series ignored)" if others else ""))
    listing = "; ".join(s.summary_line() for s in (candidates or scan.series))
    if not candidates:
        raise InputError(f"no CT series with at least {MIN_SLICES} slices in {scan.folder}; "
                         f"found: {listing}")
    raise InputError(f"{len(candidates)} CT series in {scan.folder}; choose one with "
                     f"--series UID: {listing}")


def _skipped_text(skipped: dict[str, int]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in skipped.items()) or "nothing"


# --------------------------------------------------------------------------- load

def _check_consistent(info: SeriesInfo) -> None:
    """Every slice has the first slice's matrix size, pixel spacing and orientation."""
    ref = info.slices[0]
    for s in info.slices[1:]:
        if (s.rows, s.columns) != (ref.rows, ref.columns):
            raise InputError(f"{s.path}: {s.rows}x{s.columns} pixels, but the series "
                             f"{info.series_uid} has {ref.rows}x{ref.columns}")
        if _max_difference(s.pixel_spacing_mm, ref.pixel_spacing_mm) > PIXEL_SPACING_TOL_MM:
            raise InputError(f"{s.path}: PixelSpacing {list(s.pixel_spacing_mm)} mm differs from "
                             f"the series' {list(ref.pixel_spacing_mm)} mm")
        if _max_difference(s.orientation, ref.orientation) > ORIENTATION_TOL:
            raise InputError(f"{s.path}: ImageOrientationPatient {list(s.orientation)} differs "
                             f"from the series' {list(ref.orientation)}")
    row, col, _ = _cosines(ref.orientation)
    if (abs(np.linalg.norm(row) - 1) > DIRECTION_COSINE_TOL
            or abs(np.linalg.norm(col) - 1) > DIRECTION_COSINE_TOL
            or abs(float(row @ col)) > DIRECTION_COSINE_TOL):
        raise InputError(f"{ref.path}: ImageOrientationPatient {list(ref.orientation)} is not "
                         "two orthogonal unit vectors")
    if min(ref.pixel_spacing_mm) <= 0:
        raise InputError(f"{ref.path}: PixelSpacing {list(ref.pixel_spacing_mm)} is not positive")


def series_affine(info: SeriesInfo) -> np.ndarray:
    """The 4x4 affine of a regular series, from slice positions alone.

    The slice axis is the mean step between consecutive ImagePositionPatient
    values, so reversed or feet-first stacks and gantry tilt (a sheared grid)
    need no special case. Every step must equal that mean within
    ``SLICE_STEP_REL_TOL`` x step + ``SLICE_STEP_ABS_TOL_MM``.

    Raises
    ------
    InputError
        Duplicate positions, a missing slice or otherwise non-uniform spacing,
        naming the positions along the normal, the gap and the files.
    """
    slices = info.slices
    positions = info.positions_lps_mm
    normal = _cosines(slices[0].orientation)[2]
    along = positions @ normal
    steps = np.diff(positions, axis=0)
    expected = _median_step(slices)
    tol_mm = SLICE_STEP_REL_TOL * float(np.linalg.norm(expected)) + SLICE_STEP_ABS_TOL_MM
    label = info.series_uid or "<no SeriesInstanceUID>"
    for k, step in enumerate(steps):
        a, b = slices[k].path, slices[k + 1].path
        if abs(float(step @ normal)) <= SLICE_STEP_ABS_TOL_MM:
            raise InputError(f"series {label}: duplicate slice position {along[k]:.3f} mm along "
                             f"the slice normal in {a} and {b}")
        if np.linalg.norm(step - expected) > tol_mm:
            raise InputError(
                f"series {label}: non-uniform slice spacing (missing slice?): gap of "
                f"{np.linalg.norm(step):.3f} mm between positions {along[k]:.3f} and "
                f"{along[k + 1]:.3f} mm along the slice normal (expected "
                f"{np.linalg.norm(expected):.3f} mm), between {a} and {b}")
    mean_step = (positions[-1] - positions[0]) / (len(slices) - 1)
    return _grid_affine(slices[0], mean_step)


def _is_native_16bit(s: SliceHeader) -> bool:
    """Uncompressed little-endian 16-bit greyscale: read straight from the file."""
    return (s.transfer_syntax in _NATIVE_LITTLE_ENDIAN and s.pixel_offset is not None
            and s.bits_allocated == 16 and 0 < s.bits_stored <= 16
            and s.samples_per_pixel == 1 and s.n_frames == 1)


def _read_native_16bit(s: SliceHeader, buffer: np.ndarray) -> np.ndarray:
    """Read the stored values into ``buffer`` ('<i2' or '<u2', rows x columns), no parsing.

    The same result as pydicom's pixel_array (bits above BitsStored masked or
    sign-extended) without a second header parse or a per-slice allocation.
    """
    implicit = s.transfer_syntax == ImplicitVRLittleEndian
    with open(s.path, "rb") as fp:
        fp.seek(s.pixel_offset)
        head = fp.read(8 if implicit else 12)
        if implicit:
            tag, length = struct.unpack("<4sI", head) if len(head) == 8 else (b"", 0)
        else:
            tag, vr, length = struct.unpack("<4s2s2xI", head) if len(head) == 12 else (b"", b"", 0)
            if vr not in (b"OW", b"OB"):
                tag = b""
        if tag != _PIXEL_DATA_TAG_LE or length == 0xFFFFFFFF:
            raise InputError(f"{s.path}: unexpected pixel data element for "
                             f"{UID(s.transfer_syntax).name}")
        n_read = fp.readinto(memoryview(buffer).cast("B"))
    if min(length, n_read) < buffer.nbytes:
        raise InputError(f"{s.path}: cannot decode pixel data: truncated "
                         f"({min(length, n_read)} of {buffer.nbytes} bytes)")
    unused_bits = 16 - s.bits_stored
    if unused_bits and s.signed:
        np.left_shift(buffer, unused_bits, out=buffer)
        np.right_shift(buffer, unused_bits, out=buffer)   # arithmetic: sign-extends
    elif unused_bits:
        np.bitwise_and(buffer, (1 << s.bits_stored) - 1, out=buffer)
    return buffer


def _decode_with_pydicom(s: SliceHeader) -> np.ndarray:
    """Any transfer syntax pydicom has a decoder for (JPEG, JPEG 2000, RLE, ...)."""
    if s.n_frames != 1:
        raise InputError(f"{s.path}: multi-frame image (NumberOfFrames={s.n_frames}) "
                         "is not supported yet")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.pixels.pixel_array(s.path)
    except _DECODE_ERRORS as exc:
        reason = " ".join(str(exc).split())   # decoders report on several lines; we use one
        syntax = UID(s.transfer_syntax).name or "unknown transfer syntax"
        raise InputError(f"{s.path}: cannot decode pixel data ({syntax}): {reason}") from exc


def _read_slice_into(s: SliceHeader, out: np.ndarray, buffers: dict[bool, np.ndarray]) -> None:
    """Decode one slice and write its HU into ``out`` (float32, rows x columns).

    ``buffers`` holds one reusable stored-value array per signedness.
    """
    if _is_native_16bit(s):
        if s.signed not in buffers:
            buffers[s.signed] = np.empty(out.shape, dtype="<i2" if s.signed else "<u2")
        stored = _read_native_16bit(s, buffers[s.signed])
    else:
        stored = _decode_with_pydicom(s)
    if stored.shape != out.shape:
        raise InputError(f"{s.path}: pixel data has shape {stored.shape}, "
                         f"header says {out.shape}")
    out[...] = stored
    if s.rescale_slope != 1.0:
        out *= np.float32(s.rescale_slope)
    if s.rescale_intercept != 0.0:
        out += np.float32(s.rescale_intercept)
    if s.padding is not None:
        lo, hi = s.padding
        out[(stored >= lo) & (stored <= hi)] = PADDING_HU


def load_series(info: SeriesInfo, *, progress: Progress | None = None) -> Volume:
    """Read one series into a :class:`Volume` of HU.

    HU = stored x RescaleSlope + RescaleIntercept, per slice; stored values in
    the PixelPaddingValue range become ``PADDING_HU`` first.

    Raises
    ------
    InputError
        Fewer than ``MIN_SLICES`` slices, inconsistent slice headers, an
        irregular slice grid (see :func:`series_affine`) or a slice whose pixel
        data cannot be decoded -- each naming the file.
    """
    label = info.series_uid or "<no SeriesInstanceUID>"
    if info.n_slices < MIN_SLICES:
        raise InputError(f"series {label} has {info.n_slices} slice(s); "
                         f"at least {MIN_SLICES} are needed for a volume")
    _check_consistent(info)
    affine = series_affine(info)
    hu = np.empty((info.n_slices, info.rows, info.columns), dtype=np.float32)
    buffers: dict[bool, np.ndarray] = {}
    for k, s in enumerate(info.slices):
        _read_slice_into(s, hu[k], buffers)
        if progress is not None:
            progress(k + 1, info.n_slices)
    meta = {
        "series_uid": info.series_uid,
        "modality": info.modality,
        "description": info.description,
        "patient_position": info.patient_position,
        "n_slices": info.n_slices,
    }
    if info.manufacturer:
        meta["manufacturer"] = info.manufacturer
    if info.model:
        meta["model"] = info.model
    return Volume(hu, affine, meta, info.notes)


def load_ct(ct_dir: str | os.PathLike, *, series_uid: str | None = None,
            progress: Progress | None = None) -> Volume:
    """Scan ``ct_dir``, choose a series (``series_uid`` or the only CT volume) and load it.

    ``progress(done, total)`` is called during the header scan and again while
    reading pixels.

    Raises
    ------
    InputError
        Missing or empty folder, no image series, an ambiguous or unknown
        series choice, or any :func:`load_series` error.
    """
    scan = scan_folder(ct_dir, progress=progress)
    if scan.n_files == 0:
        raise InputError(f"CT folder is empty: {scan.folder}")
    info, reason = choose_series(scan, series_uid)
    try:
        volume = load_series(info, progress=progress)
    except InputError as exc:
        # A slice whose header could not be read shows up as a gap: say so.
        n_bad = scan.skipped.get(SKIP_UNREADABLE, 0) + scan.skipped.get(SKIP_NO_GEOMETRY, 0)
        if not n_bad:
            raise
        raise InputError(f"{exc} ({n_bad} file(s) in {scan.folder} were skipped: "
                         f"{SKIP_UNREADABLE} or {SKIP_NO_GEOMETRY})") from exc
    meta = {**volume.meta, "n_files_scanned": scan.n_files, "chosen_reason": reason}
    notes = (f"loaded series {info.series_uid or '<no SeriesInstanceUID>'}: {reason}",
             *scan.notes, *volume.notes)
    return dataclasses.replace(volume, meta=meta, notes=notes)
