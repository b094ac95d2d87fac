"""Writers: STL, NIfTI, JSON, PNG and HTML, all-or-nothing.

Every output of a run is first written into a staging folder inside the
output folder; only when all of them are written are they renamed into place
(a rename within one file system is atomic), and outputs of an earlier run
that this run does not produce are removed (the QA images in ``qa/`` too),
so the folder never mixes runs.
If anything fails, the staging folder is deleted and the output folder is left
as it was.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
import math
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
import trimesh
from scipy import ndimage as ndi

from ..errors import PipelineError
from ..bones import BONE_TERMINOLOGY, LABEL_COLOURS_RGB, LABEL_NAMES, SNOMED_SIDES, SNOMED_TYPES
from ..config import Plane
from ..geometry.meshes import validate_solid
from ..qa.images import QA_IMAGES

QA_FOLDER = "qa"
# Files are staged in a folder of this name inside the output folder; one left
# behind (a process killed while writing) holds nothing valid.
STAGING_PREFIX = ".staging-"

# Every file name a run may write; used to clear an earlier run's leftovers
# (a bone written for context in one run may be resected, or absent, in the next).
OUTPUT_NAMES = ("bone.stl", "host.stl", "implant.stl", "implant_fixed.stl", "screws.stl", "bone_mask.nii.gz", "labels.nii.gz", "report.json",
                "report.html", "segmentation.seg.nrrd", "plan.mrk.json",
                *(f"bone_{name}.stl" for name in LABEL_NAMES.values()),
                *(f"{QA_FOLDER}/{name}.png" for name in QA_IMAGES))
# Outputs named after the plan's planes (one cutting guide per plane, and
# its QA view): names of these forms are outputs too, and cleared like them.
OUTPUT_PATTERNS = ("guide_*.stl", f"{QA_FOLDER}/guide_*.png")
# LPS -> RAS: NIfTI's world frame. The only place the pipeline leaves LPS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# Binary STL: an 80-byte header, the triangle count, then per triangle its
# unit normal, its three corners (float32) and an unused 16-bit attribute.
_STL_TRIANGLE = np.dtype([("normal", "<f4", (3,)), ("corners", "<f4", (3, 3)), ("attribute", "<u2")])
# Triangles encoded per step (bounds the float64 temporaries to ~30 MB).
_STL_CHUNK = 200_000


def stl_bytes(mesh: trimesh.Trimesh, name: str) -> bytes:
    """Binary STL whose 80-byte header states the frame and units.

    Encoded into one buffer, a chunk of triangles at a time: nothing of the
    mesh is cached on it (trimesh's exporter keeps every triangle's corners
    and normal on a mesh the QA views still hold: ~90 MB for a pelvis)."""
    validate_solid(mesh, name)
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces, dtype=np.int64)
    out = bytearray(84 + _STL_TRIANGLE.itemsize * len(f))
    out[:80] = f"SPACE=LPS UNITS=mm {name}".encode("ascii")[:80].ljust(80, b" ")
    out[80:84] = np.uint32(len(f)).tobytes()
    records = np.frombuffer(out, dtype=_STL_TRIANGLE, offset=84)
    for start in range(0, len(f), _STL_CHUNK):
        t = v[f[start:start + _STL_CHUNK]]
        normal = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
        length = np.sqrt(np.einsum("ij,ij->i", normal, normal))
        records["normal"][start:start + len(t)] = normal / np.where(length > 0, length, 1.0)[:, None]
        records["corners"][start:start + len(t)] = t
    return bytes(out)


def nifti_bytes(mask: np.ndarray, affine_lps: np.ndarray, label_names: dict[int, str] | None = None) -> bytes:
    """uint8 NIfTI-1 (gzip) of a (slice, row, column) mask or label map on the CT's grid.

    Stored with axes (column, row, slice) as DICOM-derived NIfTI files usually
    are; the affine is converted to RAS as the format requires, and sform and
    qform both carry it (code 1, scanner), so viewers overlay it on the CT.
    ``label_names`` (value -> name) go into the file as a label table (the
    XML extension TotalSegmentator's multi-label files carry), so the file
    names its labels to whoever reads it back, ``--labels`` included.
    """
    # The transpose is a view: NIfTI stores the first axis fastest (Fortran
    # order), which is exactly the C-order memory of the (slice, row, column)
    # array, so nothing is copied.
    data = np.transpose(mask.astype(np.uint8, copy=False), (2, 1, 0))
    affine = LPS_TO_RAS @ affine_lps[:, [2, 1, 0, 3]]
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    if label_names:
        # Code 0, as TotalSegmentator writes it: readers of its files look for the table there.
        img.header.extensions.append(nib.nifti1.Nifti1Extension(0, _label_table_xml(label_names)))
    # Level 1: masks are mostly zeros, so it compresses nearly as well as 9 in a fraction of the time.
    # mtime=0: the same labels give the same bytes (no write time in the gzip header).
    # Compressed as it is written: the uncompressed file is never held whole.
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as stream:
        img.to_stream(stream)
    return out.getvalue()


def _label_table_xml(label_names: dict[int, str]) -> bytes:
    rows = "".join(f'<Label Key="{k}" Red="{r / 255:.4g}" Green="{g / 255:.4g}" Blue="{b / 255:.4g}" Alpha="1">'
                   f"<![CDATA[{name}]]></Label>\n"
                   for k, name in sorted(label_names.items())
                   for r, g, b in [LABEL_COLOURS_RGB.get(name, (128, 128, 128))])
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<CaretExtension><VolumeInformation Index="0">'
            f"<LabelTable>\n{rows}</LabelTable><VolumeType><![CDATA[Label]]></VolumeType>"
            f"</VolumeInformation></CaretExtension>\n").encode("utf-8")


def seg_nrrd_bytes(labels: np.ndarray, affine_lps: np.ndarray) -> bytes:
    """The label map as a 3D Slicer segmentation (.seg.nrrd), gzip.

    A labelmap NRRD on the CT's own grid (``labels``: uint8, (slice, row,
    column); ``affine_lps``: index -> LPS mm), space left-posterior-superior,
    one layer; per bone present: name, colour, label value, layer, extent and
    a standard terminology entry where one exists, in the header fields
    3D Slicer reads, so it opens as named, coloured segments on the CT. The
    header is written here, in the NRRD0004 form Slicer itself writes, with
    nothing that depends on when it is written (same labels, same bytes).
    """
    def vector(v) -> str:
        return "(" + ",".join(repr(float(x)) for x in v) + ")"

    # NRRD's first axis is the fastest: the column, then the row, then the slice.
    fields = [("type", "unsigned char"), ("dimension", "3"), ("space", "left-posterior-superior"),
              ("sizes", " ".join(str(n) for n in labels.shape[::-1])),
              ("space directions", " ".join(vector(affine_lps[:3, a]) for a in (2, 1, 0))),
              ("kinds", "domain domain domain"), ("encoding", "gzip"),
              ("space origin", vector(affine_lps[:3, 3]))]
    custom = [("Segmentation_MasterRepresentation", "Binary labelmap"),
              ("Segmentation_ContainedRepresentationNames", "Binary labelmap|"),
              ("Segmentation_ReferenceImageExtentOffset", "0 0 0")]
    boxes = ndi.find_objects(labels, max_label=max(LABEL_NAMES))
    present = [(k, boxes[k - 1]) for k in LABEL_NAMES if boxes[k - 1] is not None]
    for index, (k, box) in enumerate(present):
        name = LABEL_NAMES[k]
        tags = f"TerminologyEntry:{_terminology(name)}|" if name in BONE_TERMINOLOGY else ""
        custom += [(f"Segment{index}_{key}", value) for key, value in (
            ("ID", name), ("Name", name), ("NameAutoGenerated", "0"),
            ("Color", " ".join(f"{c / 255:.6g}" for c in LABEL_COLOURS_RGB[name])), ("ColorAutoGenerated", "0"),
            ("LabelValue", str(k)), ("Layer", "0"),
            ("Extent", " ".join(f"{b.start} {b.stop - 1}" for b in box[::-1])), ("Tags", tags))]
    header = "NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in fields) + "".join(f"{k}:={v}\n" for k, v in custom)
    # Level 1, as for the NIfTI label map: mostly zeros. mtime=0: no write time in the gzip header.
    # The array itself is compressed (a buffer): no copy of it as bytes.
    data = gzip.compress(np.ascontiguousarray(labels, dtype=np.uint8), compresslevel=1, mtime=0)
    return header.encode("ascii") + b"\n" + data


def _terminology(name: str) -> str:
    """3D Slicer's terminology entry string for one of our bones (SNOMED CT codes)."""
    code, side = BONE_TERMINOLOGY[name]
    modifier = f"SCT^{side}^{SNOMED_SIDES[side].capitalize()}" if side else "^^"
    return ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
            f"~SCT^{code}^{SNOMED_TYPES[code][1]}~{modifier}~Anatomic codes - DICOM master list~^^~^^")


def markups_bytes(planes: list[Plane], centres_lps_mm: list, half_sizes_mm: list[float]) -> bytes:
    """3D Slicer markups (.mrk.json, LPS): one Plane markup per cut plane,
    named after it, so the planes appear in Slicer where they cut.

    Each is stored as three points (Slicer's "threePoints" plane, which every
    Slicer version reads): the plane's point nearest ``centres_lps_mm`` (the
    cut face's centre), and two points ``half_sizes_mm`` from it along
    in-plane axes ordered so that their cross product is the normal, which
    points into the removed part. ``center`` and ``normal``, which Slicer
    writes too, give the plane exactly to :func:`pipeline.plan.read_markups_plane`.
    """
    markups = []
    for plane, centre, half in zip(planes, centres_lps_mm, half_sizes_mm):
        n = np.asarray(plane.normal_lps, dtype=np.float64)
        c = np.asarray(centre, dtype=np.float64)
        origin = c - (float(c @ n) - plane.offset_mm) * n
        u = np.cross(n, np.eye(3)[int(np.argmin(np.abs(n)))])
        u /= np.linalg.norm(u)
        v = np.cross(n, u)
        points = [origin, origin + half * u, origin + half * v]
        markups.append({
            "type": "Plane", "name": plane.name, "coordinateSystem": "LPS", "coordinateUnits": "mm",
            "locked": False, "fixedNumberOfControlPoints": True, "planeType": "threePoints", "sizeMode": "auto",
            "controlPoints": [{"id": str(i + 1), "label": f"{plane.name}-{i + 1}", "position": p.tolist(),
                               "positionStatus": "defined"} for i, p in enumerate(points)],
            "center": origin.tolist(), "normal": n.tolist(),
        })
    document = {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                           "Resources/Schema/markups-schema-v1.0.3.json#", "markups": markups}
    return json_bytes(document)


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG of an (H, W, 3) uint8 image (fast compression: QA images, not archives)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def json_bytes(obj: dict) -> bytes:
    """``obj`` as JSON; a value that is no finite number (a gap measured over
    nothing) is written null: Python's NaN literal is not JSON, and strict
    readers refused the report."""
    return (json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False) + "\n").encode("utf-8")


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_outputs(out_dir: Path, files: dict[str, bytes]) -> list[Path]:
    """Write ``files`` (name -> content) into ``out_dir`` all at once: the
    earlier run's outputs are moved aside (report.json first, so a folder
    caught half-way never passes for a finished run), the new ones moved in
    (report.json last), and only then the earlier ones deleted. A failure on
    the way (a folder where a file goes, a full disk, Ctrl-C) puts the
    earlier run back as it was."""
    unknown = {name for name in files if name not in OUTPUT_NAMES and not is_patterned_output(name)}
    if unknown:
        raise ValueError(f"not an output name: {sorted(unknown)}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    except OSError as e:
        raise PipelineError(f"{out_dir}: cannot create output folder ({e.strerror})") from None
    earlier = staging / ".earlier"
    moved_aside: list[str] = []
    moved_in: list[str] = []
    order = sorted(files, key=lambda name: name == "report.json")   # report.json last
    try:
        for name, content in files.items():
            (staging / name).parent.mkdir(exist_ok=True)
            with open(staging / name, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
        old = [name for name in OUTPUT_NAMES if (out_dir / name).is_file()]
        old += [path.relative_to(out_dir).as_posix() for pattern in OUTPUT_PATTERNS for path in out_dir.glob(pattern)
                if path.is_file()]
        for name in sorted(dict.fromkeys(old), key=lambda name: name != "report.json"):   # report.json first
            (earlier / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(out_dir / name, earlier / name)
            moved_aside.append(name)
        for name in order:
            (out_dir / name).parent.mkdir(exist_ok=True)
            os.replace(staging / name, out_dir / name)
            moved_in.append(name)
        qa = out_dir / QA_FOLDER
        if qa.is_dir() and not any(qa.iterdir()):
            qa.rmdir()  # a run without QA images leaves no empty folder behind
    except BaseException as e:
        # Ctrl-C too: the folder is left as it was, never half of each run.
        _put_back(out_dir, earlier, moved_in, moved_aside)
        if not isinstance(e, OSError):
            raise
        raise PipelineError(f"{out_dir}: cannot write outputs ({e.strerror}"
                            f"{': ' + str(e.filename) if e.filename else ''})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in files]


def _put_back(out_dir: Path, earlier: Path, moved_in: list[str], moved_aside: list[str]) -> None:
    """Undo a write that failed half-way: the new files out, the earlier ones back."""
    for name in moved_in:
        (out_dir / name).unlink(missing_ok=True)
    for name in reversed(moved_aside):
        try:
            (out_dir / name).parent.mkdir(exist_ok=True)
            os.replace(earlier / name, out_dir / name)
        except OSError:
            pass   # nothing more can be done: the error being raised says the folder is in question
    qa = out_dir / QA_FOLDER
    if qa.is_dir() and not any(qa.iterdir()):
        qa.rmdir()


def is_patterned_output(name: str) -> bool:
    """``name`` has the form of an output named after a plane (``guide_<plane>.stl``)."""
    folder, _, base = name.rpartition("/")
    return "/" not in folder and any(fnmatch.fnmatchcase(name, p) and (folder == p.rpartition("/")[0])
                                     for p in OUTPUT_PATTERNS) and not base.startswith(".")


def check_writable_folder(folder: Path) -> None:
    """Refuse, in one line, a folder that can not be made or written to (a
    file in its place, no permission), before any work is done for it."""
    if folder.exists() and not folder.is_dir():
        raise PipelineError(f"{folder}: is a file, not a folder")
    with _left_as_found(folder):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder)).rmdir()
        except OSError as e:
            raise PipelineError(f"{folder}: cannot write there ({e.strerror})") from None


@contextmanager
def output_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder`` for one run: a second run into it (two batches into
    one OUT, or a mesh run beside a batch's case) is refused in one line
    instead of removing this run's staging folder, which left this run's
    outputs half-written. The lock is the folder's own (flock: released
    however the process ends); a folder made for it and left empty is removed
    again. Where the system has no flock, nothing is held."""
    try:
        import fcntl
    except ImportError:   # not a POSIX system
        yield
        return
    with _left_as_found(folder):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder, os.O_RDONLY)
        except OSError as e:
            raise PipelineError(f"{folder}: cannot create output folder ({e.strerror})") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PipelineError(f"{folder}: another run is writing into this folder; wait for it, or give "
                                    "another --out") from None
            yield
        finally:
            os.close(fd)   # releases the lock


@contextmanager
def _left_as_found(folder: Path) -> Iterator[None]:
    """The folders ``folder`` and its parents that do not exist yet are
    removed again afterwards if they are left empty: nothing is left behind
    where nothing was written."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    finally:
        for path in made:   # innermost first
            try:
                path.rmdir()
            except OSError:
                break


def remove_staging(out_dir: Path) -> None:
    """Delete staging folders in ``out_dir`` (left by a process killed while
    writing). Only one run may write into an output folder at a time
    (:func:`output_lock`)."""
    for staging in Path(out_dir).glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(staging, ignore_errors=True)


def write_file(path: Path, content: bytes) -> Path:
    """Write one file atomically: a temporary file beside it, then a rename."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise PipelineError(f"{path}: cannot write ({e.strerror})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
