"""CT input (DICOM folder, NIfTI or NRRD file) -> :class:`~pipeline.volume.Volume`.

For DICOM, three steps, each usable on its own (the ``series`` command stops
after the second):

1. :func:`scan_folder` reads every file's header (never its pixels, see
   ``headers``), finds DICOM by content, skips what is not an image and
   groups image files into series -- by SeriesInstanceUID, or, where that is
   empty, by study, frame of reference, matrix size and pixel spacing --
   excluding localizers and minority orientations.
2. :func:`choose_series` picks one series: the one asked for, or the only CT
   volume, and says why.
3. :func:`load_series` sorts the slices along the slice normal, drops
   duplicate slices whose pixels are identical (refuses ones that differ),
   decodes only this series' pixels (``pixels``), derives the affine
   from the slice positions (sheared under gantry tilt) and, when the steps
   between slices differ, resamples onto a uniform grid along the slice
   normal (``resample``), refusing a gap larger than ``max_gap_mm``.

NIfTI and NRRD files are converted by ``volume_files``.

Patient identity stays here: :class:`SeriesInfo`, ``Volume.meta`` and the notes
carry no names, IDs, birth dates or acquisition dates.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import UID

from ..config import LoadConfig
from ..errors import InputError
from .headers import (
    SKIP_DICOMDIR,
    SKIP_LOCALIZER,
    SKIP_NO_GEOMETRY,
    SKIP_NON_IMAGE,
    SKIP_NOT_DICOM,
    SKIP_UNREADABLE,
    SliceHeader,
    missing_geometry,
    read_header,
    slice_headers,
    sop_class_name,
)
from .pixels import PADDING_HU, check_decoders, read_series_pixels
from .volume_files import MIN_SLICES, check_grid, is_volume_file, load_volume_file
from .resample import (
    STEP_ABS_TOL_MM,
    TILT_REPORT_DEG,
    StackError,
    resample_slices,
    slice_axis,
    uniform_positions,
)
from ..volume import Volume, orientation_code

__all__ = ["PADDING_HU", "SKIP_DICOMDIR", "SKIP_LOCALIZER", "SKIP_NO_GEOMETRY", "SKIP_NON_IMAGE",
           "SKIP_NOT_DICOM", "SKIP_UNREADABLE", "Scan", "SeriesInfo", "SliceHeader",
           "choose_series", "load_ct", "load_series", "scan_folder"]

Progress = Callable[[int, int], None]

# Tolerances, in one place (slice-step tolerances live in ``resample``).
ORIENTATION_GROUP_TOL = 0.05     # max |cosine difference|: beyond it, another orientation (~3 deg)
ORIENTATION_TOL = 1e-4           # max |cosine difference| between slices of one series
DIRECTION_COSINE_TOL = 1e-3      # unit length / orthogonality of ImageOrientationPatient
PIXEL_SPACING_TOL_MM = 1e-4      # PixelSpacing differences between slices of one series
DEFAULT_MAX_GAP_MM = LoadConfig.max_gap_mm
NO_UID = "<no SeriesInstanceUID>"
# A message lists at most this many series (a folder may hold hundreds).
LISTED_SERIES = 5
# Stored values without a rescale are HU only if some reach this (air is -1000 HU).
AIR_HU_AT_MOST = -900.0


@dataclass(frozen=True)
class SeriesInfo:
    """One candidate image series, slices sorted along the slice normal.

    ``label`` names it in messages and for ``--series``: the SeriesInstanceUID,
    or ``<no SeriesInstanceUID>`` (numbered when several groups lack one).
    """

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
    label: str = ""
    sop_class_uid: str = ""

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(s.path for s in self.slices))

    @property
    def positions_lps_mm(self) -> np.ndarray:
        """(n_slices, 3) ImagePositionPatient of each slice, in sorted order."""
        return np.array([s.position_lps_mm for s in self.slices], dtype=np.float64).reshape(-1, 3)

    def summary_line(self) -> str:
        sp = " x ".join(f"{s:.4g}" for s in self.spacing_mm)
        return (f"{self.label}  {self.modality or '?'}  '{self.description}'  "
                f"{self.n_slices} slices  "
                f"size {self.rows}x{self.columns}x{self.n_slices} (rows x columns x slices)  "
                f"spacing {sp} mm (slice, row, column)  orientation {self.orientation}")


@dataclass(frozen=True)
class Scan:
    """Result of reading every header in a folder.

    ``series``: image series, CT first, then by slice count. ``skipped``: files
    not used, counted by reason (the ``SKIP_*`` constants). ``n_files``: every
    regular file seen. ``unreadable``: files that look like DICOM but could not
    be parsed (they may be slices). ``notes``: the same facts, readable.
    """

    folder: Path
    series: tuple[SeriesInfo, ...]
    skipped: dict[str, int]
    n_files: int
    notes: tuple[str, ...] = ()
    unreadable: tuple[Path, ...] = ()
    strays: tuple[Stray, ...] = ()


@dataclass(frozen=True)
class Stray:
    """An image file skipped as unreadable or without patient geometry, with
    what its header still tells: its SOP class and series ("" when unknown)."""

    path: Path
    reason: str
    sop_class_uid: str
    series_uid: str
    detail: str = ""   # what made it unreadable, when known (a malformed value)

    def of(self, info: SeriesInfo) -> bool:
        """Whether it may be a slice of ``info``: the same kind of image, and
        the same series or one it does not name."""
        return (bool(self.sop_class_uid) and self.sop_class_uid == info.sop_class_uid
                and self.series_uid in ("", info.series_uid))


def _where(s: SliceHeader) -> str:
    return f"{s.path} (frame {s.frame + 1})" if s.n_frames > 1 else str(s.path)


# --------------------------------------------------------------------------- scan

def _list_files(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(Path(root) / name for name in sorted(files))
    return [p for p in found if p.is_file()]


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
    return sorted(slices, key=lambda s: (float(np.dot(s.position_lps_mm, normal)),
                                         str(s.path), s.frame))


def _grid_affine(first: SliceHeader, slice_column: np.ndarray,
                 origin_lps_mm: np.ndarray | None = None) -> np.ndarray:
    """Affine (k, j, i, 1) -> LPS mm: slices step by ``slice_column``, in-plane from ``first``."""
    row_cos, col_cos, _ = _cosines(first.orientation)
    row_spacing, col_spacing = first.pixel_spacing_mm
    affine = np.eye(4)
    affine[:3, 0] = slice_column
    affine[:3, 1] = col_cos * row_spacing   # increasing row index moves down a column
    affine[:3, 2] = row_cos * col_spacing   # increasing column index moves along a row
    affine[:3, 3] = first.position_lps_mm if origin_lps_mm is None else origin_lps_mm
    return affine


def _median_step_mm(slices: list[SliceHeader]) -> float:
    """Median distance along the normal between distinct neighbouring slices (0 if none)."""
    normal = _cosines(slices[0].orientation)[2]
    steps = np.diff([float(np.dot(s.position_lps_mm, normal)) for s in slices])
    steps = steps[steps > STEP_ABS_TOL_MM]
    return float(np.median(steps)) if len(steps) else 0.0


def _series_info(uid: str, label: str, slices: list[SliceHeader], ds: pydicom.Dataset,
                 notes: list[str]) -> SeriesInfo:
    ordered = _sort_along_normal(slices)
    first = ordered[0]
    step_mm = _median_step_mm(ordered)
    normal = _cosines(first.orientation)[2]
    affine = _grid_affine(first, normal * (step_mm or 1.0))
    return SeriesInfo(
        series_uid=uid,
        modality=str(ds.get("Modality", "")),
        description=str(ds.get("SeriesDescription", "")),
        patient_position=str(ds.get("PatientPosition", "")),
        manufacturer=str(ds.get("Manufacturer", "")),
        model=str(ds.get("ManufacturerModelName", "")),
        rows=first.rows,
        columns=first.columns,
        spacing_mm=(step_mm, *first.pixel_spacing_mm),
        orientation=orientation_code(affine),
        slices=tuple(ordered),
        notes=tuple(notes),
        label=label,
        sop_class_uid=str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or ""),
    )


def _build_series(uid: str, label: str, slices: list[SliceHeader], ds: pydicom.Dataset,
                  skipped: Counter) -> tuple[SeriesInfo | None, list[str]]:
    """Exclude localizers and minority orientations from one series' image files.

    Returns the series (None when nothing is left) and notes on what was excluded.
    """
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
    return _series_info(uid, label, groups[0], ds, notes), notes


def _group_key(ds: pydicom.Dataset, header: SliceHeader) -> tuple:
    """The series a file belongs to: its SeriesInstanceUID, or, when that is empty,
    the other keys that a series shares (study, frame of reference, modality, grid)."""
    uid = str(ds.get("SeriesInstanceUID") or "").strip()
    if uid:
        return (uid,)
    return ("", str(ds.get("StudyInstanceUID") or ""), str(ds.get("FrameOfReferenceUID") or ""),
            str(ds.get("Modality") or ""), header.rows, header.columns,
            tuple(round(v, 4) for v in header.pixel_spacing_mm))


def scan_folder(ct_dir: str | os.PathLike, *, progress: Progress | None = None) -> Scan:
    """Read the header of every file under ``ct_dir`` (recursively) and group image series.

    Files are recognised by content, whatever their name. Non-DICOM files,
    DICOMDIRs, non-image objects (RTSTRUCT, RTPLAN, SR, presentation states:
    anything without pixel data) and images without patient geometry
    (secondary captures) are skipped and counted in ``Scan.skipped``; never fatal.

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
    unreadable: list[Path] = []
    strays: list[Stray] = []
    by_series: dict[tuple, list[SliceHeader]] = defaultdict(list)
    first_ds: dict[tuple, pydicom.Dataset] = {}
    for n, path in enumerate(paths, start=1):
        ds, headers, reason, detail = _classify(path)
        if reason is not None:
            skipped[reason] += 1
            if reason == SKIP_NON_IMAGE:
                non_image_classes[sop_class_name(ds)] += 1
            if reason == SKIP_UNREADABLE:
                unreadable.append(path)
            if reason in (SKIP_UNREADABLE, SKIP_NO_GEOMETRY):
                strays.append(_stray(path, ds, reason, detail))
        else:
            key = _group_key(ds, headers[0])
            by_series[key].extend(headers)
            first_ds.setdefault(key, ds)
        if progress is not None:
            progress(n, len(paths))

    series, notes = [], _scan_notes(skipped, non_image_classes, by_series)
    for key, slices in by_series.items():
        info, excluded = _build_series(key[0], key[0] or NO_UID, slices, first_ds[key], skipped)
        if info is None:
            notes.extend(excluded)   # a series of localizers only: nothing else reports it
        else:
            series.append(info)
    series = _number_unlabelled(series)
    series.sort(key=lambda s: (s.modality != "CT", -s.n_slices, s.label))
    return Scan(folder=folder, series=tuple(series), skipped=dict(skipped), n_files=len(paths),
                notes=tuple(notes), unreadable=tuple(unreadable), strays=tuple(strays))


def _stray(path: Path, ds: pydicom.Dataset | None, reason: str, detail: str) -> Stray:
    """What a skipped image's header still says; an unreadable file's is read
    again for its SOP class and series alone (a header cut short may hold them)."""
    if ds is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                                     specific_tags=["SOPClassUID", "SeriesInstanceUID"])
        except Exception:   # noqa: BLE001 - whatever a damaged file raises, it tells nothing
            return Stray(path, reason, "", "", detail)
    sop = str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "")
    return Stray(path, reason, sop, str(ds.get("SeriesInstanceUID") or "").strip(), detail)


def _number_unlabelled(series: list[SeriesInfo]) -> list[SeriesInfo]:
    """Several series without a UID get numbered labels, so ``--series`` can name each."""
    no_uid = sorted((s for s in series if not s.series_uid),
                    key=lambda s: (-s.n_slices, str(s.slices[0].path)))
    if len(no_uid) < 2:
        return series
    numbered = {id(s): f"{NO_UID[:-1]} #{n}>" for n, s in enumerate(no_uid, start=1)}
    return [dataclasses.replace(s, label=numbered[id(s)]) if id(s) in numbered else s
            for s in series]


def _classify(path: Path) -> tuple[pydicom.Dataset | None, list[SliceHeader], str | None, str]:
    """(dataset, slice headers, None, "") for a usable image file, else a skip
    reason and what was wrong (a malformed value) last."""
    ds, pixel_offset, reason = read_header(path)
    if reason is not None:
        return ds, [], reason, ""
    try:
        headers = slice_headers(path, ds, pixel_offset)
    except (TypeError, ValueError, AttributeError, IndexError) as exc:   # a malformed header value
        return ds, [], SKIP_UNREADABLE, str(exc)
    return ds, headers, (None if headers else SKIP_NO_GEOMETRY), ""


def _scan_notes(skipped: Counter, non_image_classes: Counter,
                by_series: dict[tuple, list[SliceHeader]]) -> list[str]:
    notes = []
    for reason in (SKIP_NOT_DICOM, SKIP_UNREADABLE, SKIP_DICOMDIR, SKIP_NO_GEOMETRY):
        if skipped.get(reason):
            notes.append(f"skipped {skipped[reason]} file(s): {reason}")
    if skipped.get(SKIP_NON_IMAGE):
        kinds = ", ".join(f"{name} x{count}" for name, count in sorted(non_image_classes.items()))
        notes.append(f"skipped {skipped[SKIP_NON_IMAGE]} {SKIP_NON_IMAGE}(s): {kinds}")
    no_uid = [k for k in by_series if not k[0]]
    if no_uid:
        n_images = sum(len(by_series[k]) for k in no_uid)
        notes.append(f"{n_images} image(s) have no SeriesInstanceUID; grouped by study, frame of "
                     f"reference, modality, matrix size and pixel spacing into {len(no_uid)} "
                     "series")
    return notes


# --------------------------------------------------------------------------- choose

def _is_ct_volume(info: SeriesInfo) -> bool:
    return info.modality.upper() == "CT" and info.n_slices >= MIN_SLICES


def choose_series(scan: Scan, series_uid: str | None = None) -> tuple[SeriesInfo, str]:
    """The series to load and why it was chosen.

    With ``series_uid`` (a SeriesInstanceUID or a label from the ``series``
    command), that series. Without, the only CT series with at least
    ``MIN_SLICES`` slices; if there are none or several, an :class:`InputError`
    lists what was found and asks for ``--series``.
    """
    if not scan.series:
        placeless = next((x for x in scan.strays if x.reason == SKIP_NO_GEOMETRY), None)
        example = f"; e.g. {placeless.path}: {missing_geometry(placeless.path)}" if placeless else ""
        raise InputError(f"no image series found in {scan.folder} "
                         f"(skipped: {_skipped_text(scan.skipped)}){example}")
    if series_uid is not None:
        for info in scan.series:
            if series_uid in (info.series_uid, info.label):
                return info, f"series {series_uid} requested explicitly"
        available = ", ".join(s.label for s in scan.series)
        raise InputError(f"no series {series_uid} in {scan.folder}; available: {available}")
    candidates = [s for s in scan.series if _is_ct_volume(s)]
    if len(candidates) == 1:
        info = candidates[0]
        others = len(scan.series) - 1
        return info, (f"only CT series with at least {MIN_SLICES} slices in the folder"
                      + (f" ({others} other series ignored)" if others else ""))
    shown = candidates or scan.series
    listing = "; ".join(s.summary_line() for s in shown[:LISTED_SERIES])
    if len(shown) > LISTED_SERIES:
        listing += f"; and {len(shown) - LISTED_SERIES} more (python -m pipeline series FOLDER lists them all)"
    if not candidates:
        raise InputError(f"no CT series with at least {MIN_SLICES} slices in {scan.folder}; "
                         f"found: {listing}")
    raise InputError(f"{len(candidates)} CT series in {scan.folder}; choose one with "
                     f"--series UID: {listing}")


def _skipped_text(skipped: dict[str, int]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in skipped.items()) or "nothing"


# --------------------------------------------------------------------------- load

def _check_loadable(info: SeriesInfo) -> None:
    """A CT series of at least MIN_SLICES slices sharing one grid and orientation."""
    if info.modality.upper() != "CT":
        raise InputError(f"series {info.label} has modality {info.modality or '<none>'}, not CT: "
                         "HU thresholds mean nothing on it")
    if info.n_slices < MIN_SLICES:
        raise InputError(f"series {info.label} has {info.n_slices} slice(s); "
                         f"at least {MIN_SLICES} are needed for a volume")
    ref = info.slices[0]
    for s in info.slices[1:]:
        if (s.rows, s.columns) != (ref.rows, ref.columns):
            raise InputError(f"{_where(s)}: {s.rows}x{s.columns} pixels, but the series "
                             f"{info.label} has {ref.rows}x{ref.columns}")
        if _max_difference(s.pixel_spacing_mm, ref.pixel_spacing_mm) > PIXEL_SPACING_TOL_MM:
            raise InputError(f"{_where(s)}: PixelSpacing {list(s.pixel_spacing_mm)} mm differs "
                             f"from the series' {list(ref.pixel_spacing_mm)} mm")
        if _max_difference(s.orientation, ref.orientation) > ORIENTATION_TOL:
            raise InputError(f"{_where(s)}: ImageOrientationPatient {list(s.orientation)} "
                             f"differs from the series' {list(ref.orientation)}")
    row, col, _ = _cosines(ref.orientation)
    if (abs(np.linalg.norm(row) - 1) > DIRECTION_COSINE_TOL
            or abs(np.linalg.norm(col) - 1) > DIRECTION_COSINE_TOL
            or abs(float(row @ col)) > DIRECTION_COSINE_TOL):
        raise InputError(f"{ref.path}: ImageOrientationPatient {list(ref.orientation)} is not "
                         "two orthogonal unit vectors")
    if min(ref.pixel_spacing_mm) <= 0:
        raise InputError(f"{ref.path}: PixelSpacing {list(ref.pixel_spacing_mm)} is not positive")
    for s in info.slices:
        if s.modality_lut is None and not (np.isfinite(s.rescale_slope) and s.rescale_slope != 0
                                           and np.isfinite(s.rescale_intercept)):
            raise InputError(f"{_where(s)}: RescaleSlope {s.rescale_slope:g} and RescaleIntercept "
                             f"{s.rescale_intercept:g} give no HU")
    given = [s.rescale_given for s in info.slices]
    if any(given) and not all(given):
        s = info.slices[given.index(False)]
        raise InputError(f"{_where(s)}: no RescaleSlope/RescaleIntercept, which the other slices of "
                         f"series {info.label} have: its HU are unknown")


def _check_hu(info: SeriesInfo, hu: np.ndarray) -> list[str]:
    """Where no slice gives RescaleSlope and RescaleIntercept (required in a CT
    image) the stored values stand for HU only if they look like HU: air,
    around the body and in the bowel, near -1000. Notes to add; raises
    :class:`InputError` otherwise."""
    if any(s.rescale_given for s in info.slices):
        return []
    values = hu[hu != PADDING_HU]
    low = float(values.min()) if values.size else 0.0
    if low > AIR_HU_AT_MOST:
        raise InputError(f"{info.slices[0].path}: no RescaleSlope/RescaleIntercept in series {info.label} "
                         f"and its stored values ({low:g} to {float(values.max()):g}) are not HU "
                         f"(no air: nothing at {AIR_HU_AT_MOST:g} or below)")
    return [f"no RescaleSlope/RescaleIntercept in series {info.label}: its stored values are taken as HU "
            f"(they reach {low:g}: air)"]


def _duplicate_runs(slices: tuple[SliceHeader, ...], normal: np.ndarray) -> list[list[int]]:
    """Runs of sorted slice indices at the same position (within STEP_ABS_TOL_MM).

    Raises
    ------
    InputError
        Two slices at the same distance along the normal but offset in-plane.
    """
    positions = np.array([s.position_lps_mm for s in slices])
    along = positions @ normal
    runs: list[list[int]] = []
    for k in range(1, len(slices)):
        if along[k] - along[k - 1] > STEP_ABS_TOL_MM:
            continue
        offset = float(np.linalg.norm(positions[k] - positions[k - 1]))
        if offset > STEP_ABS_TOL_MM:
            raise InputError(f"{_where(slices[k - 1])} and {_where(slices[k])}: same position "
                             f"{along[k]:.3f} mm along the slice normal, but offset {offset:.3f} "
                             "mm in-plane")
        if runs and runs[-1][-1] == k - 1:
            runs[-1].append(k)
        else:
            runs.append([k - 1, k])
    return runs


def _drop_identical_duplicates(slices: tuple[SliceHeader, ...], hu: np.ndarray,
                               runs: list[list[int]]) -> list[int]:
    """Indices to keep: the first of each run of duplicates whose pixels are identical.

    Raises
    ------
    InputError
        Duplicates whose pixel data differ (which one is right is unknowable).
    """
    drop = set()
    for run in runs:
        for k in run[1:]:
            if not np.array_equal(hu[run[0]], hu[k]):
                raise InputError(f"duplicate slice position with different pixel data: "
                                 f"{_where(slices[run[0]])} and {_where(slices[k])}")
            drop.add(k)
    return [k for k in range(len(slices)) if k not in drop]


def _stack_error(info_label: str, exc: StackError, slices: list[SliceHeader]) -> InputError:
    k = exc.index
    files = _where(slices[k]) if k == 0 else f"{_where(slices[k - 1])} and {_where(slices[k])}"
    return InputError(f"series {info_label}: {exc}, between {files}")


def _grid(info: SeriesInfo, slices: list[SliceHeader], hu: np.ndarray,
          max_gap_mm: float) -> tuple[np.ndarray, np.ndarray, dict, list[str]]:
    """(hu, affine, meta, notes) on a uniform, possibly sheared, grid along the slice normal."""
    normal = _cosines(slices[0].orientation)[2]
    positions = np.array([s.position_lps_mm for s in slices])
    meta: dict = {}
    notes: list[str] = []
    try:
        axis = slice_axis(positions, normal)
        target = None if axis.is_uniform else uniform_positions(axis, max_gap_mm)
    except StackError as exc:
        raise _stack_error(info.label, exc, slices) from None
    tilt = axis.tilt_deg
    meta["gantry_tilt_deg"] = round(tilt, 4) if tilt > TILT_REPORT_DEG else 0.0
    if tilt > TILT_REPORT_DEG:
        notes.append(f"gantry tilt {tilt:.2f} deg: slices stack along a direction {tilt:.2f} deg "
                     "off their normal; the affine is sheared to place them exactly")
    if target is None:
        step_mm = float(axis.along_mm[-1] - axis.along_mm[0]) / (len(slices) - 1)
        return hu, _grid_affine(slices[0], axis.slice_column(step_mm)), meta, notes
    step_mm = float(target[1] - target[0])
    steps = axis.steps_mm
    meta["resampled"] = {"original_positions_mm": [round(float(t), 4) for t in axis.along_mm],
                         "spacing_mm": round(step_mm, 6),
                         "method": "linear interpolation along the slice normal"}
    notes.append(f"non-uniform slice spacing (steps {steps.min():.3f} to {steps.max():.3f} mm "
                 f"along the slice normal): {len(slices)} slices resampled by linear "
                 f"interpolation onto {len(target)} slices {step_mm:.3f} mm apart")
    affine = _grid_affine(slices[0], axis.slice_column(step_mm))
    return resample_slices(hu, axis.along_mm, target), affine, meta, notes


def load_series(info: SeriesInfo, *, max_gap_mm: float = DEFAULT_MAX_GAP_MM,
                progress: Progress | None = None, workers: int | None = None) -> Volume:
    """Read one series into a :class:`Volume` of HU.

    HU per slice: PixelPaddingValue (range) -> ``PADDING_HU``, then the
    Modality LUT Sequence if present, else slope and intercept. Identical
    duplicate slices are dropped with a note; non-uniform steps are resampled
    onto a uniform grid (``meta["resampled"]``); gantry tilt gives a sheared
    affine (``meta["gantry_tilt_deg"]``). ``workers`` overrides the number of
    decoding processes (default: by core count and series size).

    Raises
    ------
    InputError
        Not CT, fewer than ``MIN_SLICES`` slices, inconsistent slice headers,
        a missing decoder, duplicates that differ, slices off one line, a gap
        larger than ``max_gap_mm``, or a slice whose pixel data cannot be
        decoded -- each naming the file.
    """
    _check_loadable(info)
    check_decoders(info.slices)
    normal = _cosines(info.slices[0].orientation)[2]
    runs = _duplicate_runs(info.slices, normal)
    hu = read_series_pixels(info.slices, (info.n_slices, info.rows, info.columns),
                            progress=progress, workers=workers)
    keep = _drop_identical_duplicates(info.slices, hu, runs)
    notes = list(info.notes) + _check_hu(info, hu)
    meta: dict = {}
    if len(keep) < info.n_slices:
        hu = hu[keep]
        meta["duplicates_dropped"] = info.n_slices - len(keep)
        notes.append(f"dropped {info.n_slices - len(keep)} duplicate slice(s): same position "
                     "and identical pixel data")
    slices = [info.slices[k] for k in keep]
    if len(slices) < MIN_SLICES:
        raise InputError(f"series {info.label} has {len(slices)} distinct slice position(s); "
                         f"at least {MIN_SLICES} are needed for a volume")
    hu, affine, grid_meta, grid_notes = _grid(info, slices, hu, max_gap_mm)
    meta = {
        "series_uid": info.series_uid,
        "modality": info.modality,
        "description": info.description,
        "patient_position": info.patient_position,
        "n_slices": len(slices),
        **meta,
        **grid_meta,
    }
    if info.manufacturer:
        meta["manufacturer"] = info.manufacturer
    if info.model:
        meta["model"] = info.model
    return Volume(hu, affine, meta, tuple(notes + grid_notes))


def load_ct(ct_path: str | os.PathLike, *, series_uid: str | None = None,
            max_gap_mm: float = DEFAULT_MAX_GAP_MM, progress: Progress | None = None,
            workers: int | None = None) -> Volume:
    """Load ``ct_path``: a NIfTI/NRRD file, or a DICOM folder (scan, choose, load).

    For a folder, ``series_uid`` chooses the series (default: the only CT
    volume); ``progress(done, total)`` is called during the header scan and
    again while reading pixels.

    Raises
    ------
    InputError
        Missing or empty folder, no image series, an ambiguous or unknown
        series choice, a gap next to unreadable files, or any
        :func:`load_series` or :func:`~pipeline.io.volume_files.load_volume_file` error.
    """
    if is_volume_file(ct_path):
        return load_volume_file(ct_path)
    scan = scan_folder(ct_path, progress=progress)
    if scan.n_files == 0:
        raise InputError(f"CT folder is empty: {scan.folder}")
    info, reason = choose_series(scan, series_uid)
    stray = next((x for x in scan.strays if x.of(info)), None)
    if stray is not None:
        # A slice that can not be read or placed: bridging or leaving out its place would hide it.
        if stray.reason == SKIP_NO_GEOMETRY:
            raise InputError(f"{stray.path}: {missing_geometry(stray.path)}: a slice of series {info.label} "
                             "that can not be placed")
        what = stray.detail or f"{stray.reason} ({UID(info.sop_class_uid).name or 'an image'}" \
            f"{'' if stray.series_uid else ', its series unreadable'})"
        raise InputError(f"{stray.path}: {what}: it may be a slice of series {info.label}, which can not be "
                         "loaded without it; repair or remove it")
    lost = _lost_slice(info, scan)
    if lost is not None:
        # Grouped apart for want of its UID, its place would be bridged by interpolation (or lost at an end).
        raise InputError(f"{_where(lost)}: no SeriesInstanceUID, yet it lies in a gap or at an end of series "
                         f"{info.label} (same kind of image, grid and orientation): give it the series' UID or "
                         "remove it")
    try:
        volume = load_series(info, max_gap_mm=max_gap_mm, progress=progress, workers=workers)
    except InputError as exc:
        raise _with_unreadable(exc, scan) from exc
    check_grid(volume.affine, volume.shape, f"series {info.label}", "the series'")
    if "resampled" in volume.meta and scan.unreadable:
        # The uneven steps may be slices we could not read: bridging them would hide that.
        raise _with_unreadable(_largest_gap(info.label, volume.meta["resampled"]), scan)
    meta = {**volume.meta, "n_files_scanned": scan.n_files, "chosen_reason": reason}
    notes = (f"loaded series {info.label}: {reason}", *scan.notes, *volume.notes)
    return dataclasses.replace(volume, meta=meta, notes=notes)


def _lost_slice(info: SeriesInfo, scan: Scan) -> SliceHeader | None:
    """A slice without a SeriesInstanceUID that fills a gap of ``info`` or
    continues it by a step: the same SOP class, matrix, pixel spacing and
    orientation, in the plane of none of the series' slices (farther than
    half its step from each) but between its first and last, or within a
    step and a half beyond either. None when there is none."""
    if not info.series_uid or info.n_slices < 2:
        return None
    ref = info.slices[0]
    normal = _cosines(ref.orientation)[2]
    along = np.sort(info.positions_lps_mm @ normal)
    step = float(np.median(np.diff(along)))
    for other in scan.series:
        if other.series_uid or other.sop_class_uid != info.sop_class_uid:
            continue
        for s in other.slices:
            if ((s.rows, s.columns) != (ref.rows, ref.columns)
                    or _max_difference(s.pixel_spacing_mm, ref.pixel_spacing_mm) > PIXEL_SPACING_TOL_MM
                    or _max_difference(s.orientation, ref.orientation) > ORIENTATION_TOL):
                continue
            t = float(np.asarray(s.position_lps_mm) @ normal)
            if along[0] - 1.5 * step < t < along[-1] + 1.5 * step and np.abs(along - t).min() > step / 2:
                return s
    return None


def _largest_gap(label: str, resampled: dict) -> InputError:
    along = np.asarray(resampled["original_positions_mm"])
    k = int(np.argmax(np.diff(along)))
    return InputError(f"series {label}: non-uniform slice spacing: gap of "
                      f"{along[k + 1] - along[k]:.3f} mm between positions {along[k]:.3f} and "
                      f"{along[k + 1]:.3f} mm along the slice normal")


def _with_unreadable(exc: InputError, scan: Scan) -> InputError:
    """``exc``, plus the files that could not be read (a missing slice may be one of them)."""
    n_bad = len(scan.unreadable) + scan.skipped.get(SKIP_NO_GEOMETRY, 0)
    if not n_bad:
        return exc
    names = ", ".join(p.name for p in scan.unreadable[:5]) + (", ..." if n_bad > 5 else "")
    return InputError(f"{exc} ({n_bad} file(s) in {scan.folder} were skipped: "
                      f"{SKIP_UNREADABLE} or {SKIP_NO_GEOMETRY}: {names})")
