"""Label maps from other tools -> :class:`~pipeline.segment.external.LabelMap`
(our bone values, on the file's grid, LPS mm), for ``--labels`` and
``segment.labels_file``.

Read, by what the path is:

- a 3D Slicer segmentation (``.seg.nrrd``, or any NRRD with ``Segment<N>_``
  fields): one segment per name, each a label value in a layer (overlapping
  segments are stored as a 4-D array of layers);
- a NIfTI (``.nii``, ``.nii.gz``) or plain NRRD label map. Its segment names
  are, in this order: the label table the file carries (TotalSegmentator's
  multi-label files and our own ``labels.nii.gz`` carry one); the file's
  name, for a 0/1 mask of one structure (``femur_left.nii.gz``); our own
  label values, when no value exceeds 7 (an earlier run's ``labels.nii.gz``);
  else TotalSegmentator's class ids (v2, task "total");
- a folder of one NIfTI mask per structure, named by its file name
  (TotalSegmentator without ``--ml``); only the files that name one of our
  bones are read.

Segments are matched to bones by ``label_names`` (segment name, or a label
value written as text, -> bone name; case is ignored), else by
:func:`~pipeline.bones.bone_for_segment` (our names, TotalSegmentator's,
common synonyms, a Slicer terminology entry). Segments of other structures
are listed and ignored; a voxel two different bones claim is left out (and
counted). Geometry comes from the file's affine, converted to LPS here, as
for CT volumes (:mod:`pipeline.io.volume_files`).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Mapping

import numpy as np
from scipy import ndimage as ndi

from ..bones import LABEL_IDS, LABEL_NAMES, TOTALSEGMENTATOR_IDS, bone_for_segment
from ..errors import InputError
from ..segment.external import LabelMap
from ..segment.lookup import label_counts, lookup
from .volume_files import NIFTI_SUFFIXES, NRRD_SUFFIXES, nifti_affine_lps, nrrd_affine_lps, open_nifti

SLICER_SEGMENT_FIELD = re.compile(r"^Segment(\d+)_(\w+)$")
# Label values above this are not a label map's (an image's, or IDs): the
# per-value tables stay small. TotalSegmentator's largest task has ~120.
MAX_LABEL_VALUE = 65535


def read_label_map(path: str | os.PathLike, label_names: Mapping[str, str] | None = None, *,
                   what: str = "") -> LabelMap:
    """Read a label map of any supported kind; ``what`` names where the path
    came from in messages (``"segment.labels_file"``; default: the path alone).

    Raises
    ------
    InputError
        Missing or unreadable file, not a label map, or no segment that
        names one of our bones.
    """
    path = Path(path)
    shown = f"{what} = {path}" if what else str(path)
    names = {str(k).strip().lower(): v for k, v in (label_names or {}).items()}
    if path.is_dir():
        return _read_folder(path, names, shown)
    if not path.is_file():
        raise InputError(f"{shown}: no such file or folder")
    lower = path.name.lower()
    if lower.endswith(NIFTI_SUFFIXES):
        return _read_nifti(path, names, shown)
    if lower.endswith(NRRD_SUFFIXES):
        return _read_nrrd(path, names, shown)
    raise InputError(f"{shown}: not a label map this pipeline reads (a 3D Slicer .seg.nrrd, a NIfTI "
                     f".nii/.nii.gz or NRRD label map, or a folder of NIfTI masks)")


def _bone(name: str, names: Mapping[str, str], value: int | None = None, terminology: str = "") -> str | None:
    for key in (name.strip().lower(), None if value is None else str(value)):
        if key is not None and key in names:
            return names[key]
    return bone_for_segment(name, terminology)


def _read_nrrd(path: Path, names: Mapping[str, str], shown: str) -> LabelMap:
    import nrrd

    try:
        data, header = nrrd.read(str(path), index_order="C")
    except (OSError, ValueError, EOFError, nrrd.NRRDError) as exc:
        raise InputError(f"{shown}: cannot read NRRD ({' '.join(str(exc).split())})") from None
    fields: dict[int, dict[str, str]] = {}
    for key, value in header.items():
        match = SLICER_SEGMENT_FIELD.match(key)
        if match:
            fields.setdefault(int(match.group(1)), {})[match.group(2)] = str(value)
    affine = nrrd_affine_lps(header, shown)
    if not fields:
        return _from_values(_integers(data, shown, 3), affine, "NRRD label map", path, names, shown)
    layers = _integers(data, shown, 4 if data.ndim == 4 else 3)
    if layers.ndim == 3:
        layers = layers[..., None]
    segments: dict[str, str | None] = {}
    wanted = []
    # 3D Slicer before 4.11 wrote one segment per layer, value 1, with neither
    # field; Slicer reads a missing Layer as the segment's place in that order.
    legacy = not any("Layer" in f or "LabelValue" in f for f in fields.values()) and layers.shape[-1] == len(fields)
    where: dict[tuple[int, int], str] = {}
    for place, index in enumerate(sorted(fields)):
        field = fields[index]
        name = field.get("Name") or field.get("ID") or f"Segment{index}"
        tags = dict(tag.split(":", 1) for tag in field.get("Tags", "").split("|") if ":" in tag)
        segments[name] = bone = _bone(name, names, terminology=tags.get("TerminologyEntry", ""))
        if not legacy and "LabelValue" not in field:
            # Taken as 1, it took the voxels of the segment that has 1 (hip_left became sacrum).
            raise InputError(f"{shown}: segment {name!r} has no Segment{index}_LabelValue")
        layer = place if legacy else _int_field(field, "Layer", 0, shown, name)
        value = _int_field(field, "LabelValue", 1, shown, name)
        if not 0 <= layer < layers.shape[-1]:
            raise InputError(f"{shown}: segment {name!r} is in layer {layer}, the file has {layers.shape[-1]}")
        if not 0 < value <= MAX_LABEL_VALUE:
            raise InputError(f"{shown}: segment {name!r} has label value {value}, not 1 to {MAX_LABEL_VALUE}")
        if (layer, value) in where:
            raise InputError(f"{shown}: segments {where[layer, value]!r} and {name!r} are both value {value} "
                             f"in layer {layer}: which voxels are whose is unknown")
        where[layer, value] = name
        if bone is not None:
            wanted.append((bone, layer, value, name))
    _require_bone(segments, shown)
    # A segment listed but holding no voxel is said, not reported as mapped.
    counts = {layer: label_counts(layers[..., layer]) for layer in {w[1] for w in wanted}}
    empty = [w for w in wanted if w[2] >= len(counts[w[1]]) or counts[w[1]][w[2]] == 0]
    if len(empty) == len(wanted):
        raise InputError(f"{shown}: its bone segments ({', '.join(w[3] for w in wanted)}) are empty")
    for bone, _, _, name in empty:
        del segments[name]
    wanted = [w for w in wanted if w not in empty]
    tables = np.zeros((layers.shape[-1], max([int(layers.max())] + [w[2] for w in wanted]) + 1), dtype=np.uint8)
    for bone, layer, value, _ in wanted:
        tables[layer, value] = LABEL_IDS[bone]
    parts = ((tables[layer], layers[..., layer]) for layer in range(layers.shape[-1]) if tables[layer].any())
    labels, notes = _combine(parts, segments, shown)
    notes = tuple(f"segment {name!r} ({bone}) holds no voxel: left out" for bone, _, _, name in empty) + notes
    return LabelMap(labels, affine, "3D Slicer segmentation (.seg.nrrd)", segments, shown, notes)


def _read_nifti(path: Path, names: Mapping[str, str], shown: str) -> LabelMap:
    data, affine, img = _nifti_array(path, shown)
    stem = re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.IGNORECASE)
    return _from_values(data, affine, "NIfTI label map", path, names, shown, table=_label_table(img), stem=stem)


def _nifti_array(path: Path, shown: str):
    img = open_nifti(path, shown)
    shape = img.shape
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise InputError(f"{shown}: a 3-D label map is needed, the file holds shape {tuple(shape)}")
    try:
        data = np.asanyarray(img.dataobj)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{shown}: cannot read NIfTI ({' '.join(str(exc).split())})") from None
    data = _integers(data.reshape(shape[:3]), shown, 3).transpose(2, 1, 0)   # (k, j, i): slowest axis first
    return data, nifti_affine_lps(img, shown), img


def _from_values(data: np.ndarray, affine: np.ndarray, kind: str, path: Path, names: Mapping[str, str],
                 shown: str, table: dict[int, str] | None = None, stem: str = "") -> LabelMap:
    """A label map whose segments are its voxel values; see the module's
    docstring for where their names come from."""
    counts = label_counts(data, 1)
    values = [int(v) for v in np.flatnonzero(counts) if v > 0]
    if table:
        source, name_of = f"{kind}, names from its own label table", lambda v: table.get(v, f"label {v}")
    elif set(values) <= {1} and stem and _bone(stem, names) is not None:
        source, name_of = f"{kind} of one structure, named by its file name", lambda v: stem
    elif set(values) == {1}:
        # Read as our values, a bone mask (our bone_mask.nii.gz) made the whole skeleton hip_left.
        raise InputError(f"{shown}: holds only 0 and 1 and no label table: a mask, whose file name "
                         f"({stem or path.name}) names none of our bones ({', '.join(LABEL_IDS)})")
    elif max(values, default=0) <= max(LABEL_NAMES):
        source, name_of = f"{kind} with this pipeline's label values (labels.nii.gz)", LABEL_NAMES.get
    else:
        source = f"{kind}, values taken as TotalSegmentator class ids (the file names none)"
        name_of = lambda v: TOTALSEGMENTATOR_IDS.get(v, f"TotalSegmentator class {v}")  # noqa: E731
    segments = {name_of(v): _bone(name_of(v), names, value=v) for v in values}
    bones = np.zeros(max(values, default=0) + 1, dtype=np.uint8)
    for v in values:
        bone = segments[name_of(v)]
        bones[v] = LABEL_IDS[bone] if bone else 0
    _require_bone(segments, shown)
    labels = lookup(bones, data)
    if not labels.any():
        raise InputError(f"{shown}: its bone segments ({', '.join(n for n, b in segments.items() if b)}) are empty")
    return LabelMap(labels, affine, source, segments, shown)


def _read_folder(folder: Path, names: Mapping[str, str], shown: str) -> LabelMap:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES))
    if not files:
        raise InputError(f"{shown}: the folder holds no NIfTI masks (.nii, .nii.gz)")
    segments = {re.sub(r"\.nii(\.gz)?$", "", f.name, flags=re.IGNORECASE): f for f in files}
    bones = {name: _bone(name, names) for name in segments}
    _require_bone(bones, shown)
    grid: list = []

    def masks():
        for name, bone in bones.items():
            if bone is None:
                continue
            data, affine, _ = _nifti_array(segments[name], f"{shown}: {segments[name].name}")
            if not grid:
                grid.extend((data.shape, affine))
            elif data.shape != grid[0] or not np.allclose(affine, grid[1], atol=1e-4):
                raise InputError(f"{shown}: {segments[name].name} is on another grid than the folder's "
                                 f"other masks (shape {data.shape} against {grid[0]})")
            yield np.array([0, LABEL_IDS[bone]], dtype=np.uint8), (data > 0).view(np.uint8)

    labels, notes = _combine(masks(), bones, shown)
    return LabelMap(labels, grid[1], "folder of per-structure NIfTI masks (TotalSegmentator)", bones, shown,
                    notes)


def _combine(parts, segments: dict[str, str | None], shown: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """One uint8 label map from (table, values) pairs, taken one at a time (a
    folder's masks are read as they are needed): each array's values become
    bones through its table (value -> our label, 0 none). Several arrays add
    up, each within the box of its bones; a voxel two bones claim is left out."""
    labels = twice = None
    for table, values in parts:
        values = np.ascontiguousarray(values)
        if labels is None:   # the first (a segmentation's only layer, often) whole: no box to look for
            labels, twice = lookup(table, values), np.zeros(values.shape, dtype=bool)
            continue
        boxes = [b for v, b in enumerate(ndi.find_objects(values), start=1) if b is not None and v < len(table) and table[v]]
        if not boxes:
            continue
        box = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))
        placed, view = lookup(table, values[box]), labels[box]
        twice[box] |= (placed > 0) & (view > 0) & (placed != view)
        np.copyto(view, placed, where=view == 0)
    overlap = int(np.count_nonzero(twice))
    labels[twice] = 0
    if not labels.any():
        raise InputError(f"{shown}: its bone segments ({', '.join(n for n, b in segments.items() if b)}) are empty")
    return labels, ((f"voxels claimed by two different bones, left out: {overlap}",) if overlap else ())


def _require_bone(segments: dict[str, str | None], shown: str) -> None:
    if any(segments.values()):
        return
    listed = list(segments)
    more = f" and {len(listed) - 12} more" if len(listed) > 12 else ""
    raise InputError(f"{shown}: no segment names one of our bones (segments: {', '.join(listed[:12]) or 'none'}"
                     f"{more}); name them {', '.join(LABEL_IDS)} or map them with [segment.label_names]")


def _integers(data: np.ndarray, shown: str, ndim: int) -> np.ndarray:
    """``data`` as a non-negative integer array, or refuse it as not a label map."""
    if data.ndim != ndim:
        raise InputError(f"{shown}: a {ndim}-D label map is needed, the file holds shape {data.shape}")
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise InputError(f"{shown}: not a label map (its values are not whole numbers)")
        data = data.astype(np.int64)
    elif data.dtype.kind not in "iu":
        raise InputError(f"{shown}: not a label map (values of type {data.dtype})")
    if data.size and data.min() < 0:
        raise InputError(f"{shown}: not a label map (negative values)")
    if data.size and data.max() > MAX_LABEL_VALUE:
        raise InputError(f"{shown}: not a label map (values up to {data.max()}, more than {MAX_LABEL_VALUE})")
    return data


def _int_field(field: dict[str, str], key: str, default: int, shown: str, name: str) -> int:
    try:
        return int(field.get(key, default))
    except ValueError:
        raise InputError(f"{shown}: segment {name!r} has {key} {field[key]!r}, not a whole number") from None


def _label_table(img) -> dict[int, str] | None:
    """Value -> name from a label table carried in a NIfTI extension (the
    XML ``<LabelTable><Label Key="1">name</Label>...`` that TotalSegmentator
    and this pipeline write), or ``None``."""
    for extension in img.header.extensions:
        content = extension.get_code() in (0, 30) and _raw_content(extension)
        if not isinstance(content, bytes) or b"<LabelTable" not in content:
            continue
        try:
            root = ElementTree.fromstring(content.decode("utf-8", "replace").strip())
        except ElementTree.ParseError:
            continue
        table = {int(label.get("Key")): label.text.strip() for label in root.iter("Label")
                 if re.fullmatch(r"\d+", label.get("Key", "").strip()) and (label.text or "").strip()}
        if table:
            return table
    return None


def _raw_content(extension) -> bytes | None:
    """An extension's bytes: nibabel >= 5.3 has ``content``; before, codes
    without a parser of their own give them through ``get_content``."""
    try:
        return getattr(extension, "content", None) or extension.get_content()
    except NotImplementedError:
        return None
