"""NIfTI (.nii, .nii.gz) and NRRD (.nrrd, .nhdr) volumes -> the same LPS :class:`Volume`.

Both formats store the fastest-varying axis first; our arrays are
``(slice, row, column)`` with the slowest axis first, so the array is read in
C order (a view, no copy) and the affine's columns are reversed to match.
NIfTI's affine is RAS (the sform when set, else the qform, as nibabel
chooses); NRRD states its space. Both are converted to LPS here, the one
place input formats meet the pipeline's frame.

The voxel values are taken as HU (NIfTI scaling applied): these formats do
not say what modality they hold.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# A CT volume: at least this many voxels along each axis (fewer make no
# volume, nor a checkable slice spacing), each this size (mm).
MIN_SLICES = 3
VOXEL_MM = (0.05, 20.0)
# ... and lie within this of the scanner's origin (mm): at 100 m an STL's
# float32 vertices are 8 um apart, and the meshes' thinnest triangles collapse.
FARTHEST_MM = 10_000.0
# NIfTI xyzt_units (spatial) -> millimetres per unit.
_NIFTI_UNITS_MM = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 1e-3}
NRRD_SUFFIXES = (".nrrd", ".nhdr")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# NRRD 'space' values -> sign flips that take its axes to LPS.
_NRRD_SPACES = {
    "left-posterior-superior": (1, 1, 1), "lps": (1, 1, 1),
    "right-anterior-superior": (-1, -1, 1), "ras": (-1, -1, 1),
    "left-anterior-superior": (1, -1, 1), "las": (1, -1, 1),
    "scanner-xyz": (1, 1, 1),   # DICOM's scanner frame is LPS
}


def is_volume_file(path: str | os.PathLike) -> bool:
    name = Path(path).name.lower()
    return Path(path).is_file() and name.endswith(NIFTI_SUFFIXES + NRRD_SUFFIXES)


def load_volume_file(path: str | os.PathLike) -> Volume:
    """Read a NIfTI or NRRD file as a :class:`Volume` in LPS millimetres.

    Raises
    ------
    InputError
        Unreadable file, not 3-D, or (NRRD) no patient space to place it in.
    """
    path = Path(path)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        data, affine_lps, fmt, note = _read_nifti(path)
    else:
        data, affine_lps, fmt, note = _read_nrrd(path)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: voxel values are not all finite")
    if min(data.shape) < MIN_SLICES:
        raise InputError(f"{path}: {data.shape[::-1]} voxels; a volume needs at least {MIN_SLICES} along each axis")
    check_grid(affine_lps, data.shape, str(path), "the file's")
    try:
        volume = Volume(np.ascontiguousarray(data, dtype=np.float32), affine_lps,
                        {"source_format": fmt, "modality": "CT (assumed)",
                         "n_slices": int(data.shape[0])},
                        (f"loaded a {fmt} volume: {note}; voxel values taken as HU",))
    except ValueError as exc:   # a singular or non-finite affine
        raise InputError(f"{path}: unusable geometry: {exc}") from None
    return volume


def check_grid(affine_lps: np.ndarray, shape: tuple[int, ...], where: str, whose: str) -> None:
    """Refuse a grid that can not be a CT's: voxels outside ``VOXEL_MM`` in
    size, or farther than ``FARTHEST_MM`` from the origin. ``where`` names
    the input, ``whose`` what to check ("the file's", "the series'")."""
    corners = np.array([[a, b, c, 1.0] for a in (0, shape[0] - 1) for b in (0, shape[1] - 1)
                        for c in (0, shape[2] - 1)]) @ np.asarray(affine_lps, dtype=float).T
    if np.abs(corners[:, :3]).max() > FARTHEST_MM:
        raise InputError(f"{where}: its voxels lie up to {np.abs(corners[:, :3]).max() / 1000:.0f} m from the "
                         f"origin, a CT's within {FARTHEST_MM / 1000:g} m: check {whose} origin and units")
    size = np.linalg.norm(np.asarray(affine_lps, dtype=float)[:3, :3], axis=0)
    if not np.all((size >= VOXEL_MM[0]) & (size <= VOXEL_MM[1])):
        raise InputError(f"{where}: voxel size {' x '.join(f'{v:.4g}' for v in size[::-1])} mm is not a CT's "
                         f"({VOXEL_MM[0]:g} to {VOXEL_MM[1]:g} mm): check {whose} units and spacing")


def _three_d(shape: tuple[int, ...], path: Path) -> int:
    """Number of axes to keep: 3, allowing trailing singleton axes (a 4-D file of one volume)."""
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise InputError(f"{path}: a 3-D volume is needed, the file holds shape {tuple(shape)}")
    return 3


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, str, str]:
    img = open_nifti(path, str(path))
    _three_d(img.shape, path)
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "iufb":
        raise InputError(f"{path}: voxels of type {dtype} are not one real number each (a CT's HU)")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)   # scl_slope / scl_inter applied
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: cannot read NIfTI ({' '.join(str(exc).split())})") from None
    data = data.reshape(data.shape[:3]).transpose(2, 1, 0)   # (k, j, i): slowest axis first
    source = "sform" if img.header.get_sform(coded=True)[1] else "qform"
    return data, nifti_affine_lps(img, str(path)), "NIfTI", f"geometry from its {source} (RAS, converted to LPS)"


def open_nifti(path: Path, shown: str):
    """The nibabel image of a NIfTI file. A gzipped one is decompressed whole
    first: nibabel reads only the bytes it needs and never reaches the CRC at
    the stream's end, so a corrupt file gave garbage voxels silently."""
    import gzip
    import warnings
    import zlib

    import nibabel as nib
    from nibabel.imageglobals import logger

    # nibabel reports (and mends) header oddities on stderr: they are checked here instead.
    quiet, logger.disabled = logger.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.name.lower().endswith(".gz"):
                raw = gzip.decompress(path.read_bytes())
            else:
                with open(path, "rb") as f:
                    raw = f.read(540)
            image_type = nib.Nifti2Image if raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Image
            header = image_type.header_class(raw[:image_type.header_class.sizeof_hdr], check=False)
            img = image_type.from_bytes(raw) if path.name.lower().endswith(".gz") else nib.load(str(path))
    except (OSError, ValueError, EOFError, zlib.error, nib.filebasedimages.ImageFileError,
            nib.wrapstruct.WrapStructError) as exc:
        raise InputError(f"{shown}: cannot read NIfTI ({' '.join(str(exc).split())})") from None
    finally:
        logger.disabled = quiet
    pixdim = [round(float(v), 6) for v in header["pixdim"][1:4]]
    if int(header["sform_code"]) == 0 and int(header["qform_code"]) > 0 and 0.0 in pixdim:
        # nibabel would take it as 1 mm: 3 mm slices read as 1 mm, bone -72 %.
        raise InputError(f"{shown}: pixdim {pixdim} holds a 0: the qform's voxel size is unknown")
    return img


def nifti_affine_lps(img, shown: str) -> np.ndarray:
    """Index (k, j, i) -> LPS mm of a nibabel NIfTI image whose array is read
    transposed to (slowest, ..., fastest) axis order. Refused: neither sform
    nor qform set (nibabel would make a frame up: 305 mm off, sides
    swapped). Metres and microns (xyzt_units) become millimetres."""
    header = img.header
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    if sform_code == 0 and qform_code == 0:
        raise InputError(f"{shown}: neither sform nor qform is set (both codes 0): its voxels have no "
                         "place in the patient")
    unit = header.get_xyzt_units()[0]
    if unit not in _NIFTI_UNITS_MM:
        raise InputError(f"{shown}: spatial unit {unit!r} (xyzt_units) is not a length")
    affine = img.affine.copy()
    if sform_code and not _placeable(affine):
        if not qform_code:
            raise InputError(f"{shown}: its sform (srow_x, srow_y, srow_z) is singular or not finite, and "
                             "no qform is set")
        affine = header.get_qform()   # the standard's fallback; nibabel keeps the sform
    affine[:3] *= _NIFTI_UNITS_MM[unit]
    return _RAS_TO_LPS @ affine[:, [2, 1, 0, 3]]


def _placeable(affine: np.ndarray) -> bool:
    """A finite affine whose voxel axes span space."""
    return bool(np.all(np.isfinite(affine)) and abs(np.linalg.det(affine[:3, :3])) > 1e-12)


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray, str, str]:
    import nrrd

    try:
        data, header = nrrd.read(str(path), index_order="C")   # slowest axis first
    except (OSError, ValueError, EOFError, nrrd.NRRDError) as exc:
        raise InputError(f"{path}: cannot read NRRD ({' '.join(str(exc).split())})") from None
    affine = nrrd_affine_lps(header, path)
    # Axes without a space direction (kind 'vector', 'RGB-color', 'list', a
    # time axis) hold values, not places: one value per voxel is a CT's.
    spatial = _nrrd_spatial_axes(header, data.ndim)[::-1]   # in C order
    extra = [n for n, is_space in zip(data.shape, spatial) if not is_space]
    if int(np.prod(extra)) != 1:
        raise InputError(f"{path}: {int(np.prod(extra))} values per voxel (NRRD kinds "
                         f"{' '.join(header.get('kinds', ['?']))}); a CT has one, its HU")
    data = data.reshape([n for n, is_space in zip(data.shape, spatial) if is_space])
    return data, affine, "NRRD", f"geometry from its {header['space'].lower()} space directions"


def _nrrd_spatial_axes(header: dict, ndim: int) -> list[bool]:
    """Whether each NRRD axis (file order, fastest first) has a space direction."""
    directions = np.asarray(header.get("space directions"), dtype=np.float64).reshape(-1, 3)
    if len(directions) != ndim:
        return [True] * ndim
    return [bool(np.isfinite(d).any()) for d in directions]


def nrrd_affine_lps(header: dict, path: Path | str) -> np.ndarray:
    """Index (k, j, i) -> LPS mm of a NRRD read in C order (slowest axis first).

    The axes with a space direction are the spatial ones; an axis without
    (a 3D Slicer segmentation's layers: kind 'list', space direction 'none')
    is left out."""
    space = str(header.get("space", "")).lower()
    if space not in _NRRD_SPACES:
        raise InputError(f"{path}: NRRD 'space' is {header.get('space')!r}; need one of "
                         f"{', '.join(sorted(_NRRD_SPACES))} to place it in the patient")
    directions = np.asarray(header.get("space directions"), dtype=np.float64)
    if directions.ndim == 2 and directions.shape[0] > 3:
        directions = directions[~np.isnan(directions).all(axis=1)]
    if directions.shape != (3, 3) or not np.all(np.isfinite(directions)):
        raise InputError(f"{path}: NRRD 'space directions' must be three 3-vectors")
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    flip = np.asarray(_NRRD_SPACES[space], dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = (directions[::-1] * flip).T   # column m: file axis (2 - m), in LPS
    affine[:3, 3] = origin * flip
    return affine
