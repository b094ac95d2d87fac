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

import gzip
import io
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import trimesh

from ..errors import PipelineError
from ..bones import LABEL_NAMES
from ..geometry.meshes import validate_solid
from ..qa.images import QA_IMAGES

QA_FOLDER = "qa"
# Files are staged in a folder of this name inside the output folder; one left
# behind (a process killed while writing) holds nothing valid.
STAGING_PREFIX = ".staging-"

# Every file name a run may write; used to clear an earlier run's leftovers
# (a bone written for context in one run may be resected, or absent, in the next).
OUTPUT_NAMES = ("bone.stl", "host.stl", "implant.stl", "bone_mask.nii.gz", "labels.nii.gz", "report.json",
                "report.html", *(f"bone_{name}.stl" for name in LABEL_NAMES.values()),
                *(f"{QA_FOLDER}/{name}.png" for name in QA_IMAGES))
# LPS -> RAS: NIfTI's world frame. The only place the pipeline leaves LPS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def stl_bytes(mesh: trimesh.Trimesh, name: str) -> bytes:
    """Binary STL whose 80-byte header states the frame and units."""
    validate_solid(mesh, name)
    body = trimesh.exchange.stl.export_stl(mesh)
    header = f"SPACE=LPS UNITS=mm {name}".encode("ascii")[:80].ljust(80, b" ")
    return header + body[80:]


def nifti_bytes(mask: np.ndarray, affine_lps: np.ndarray) -> bytes:
    """uint8 NIfTI-1 (gzip) of a (slice, row, column) mask or label map on the CT's grid.

    Stored with axes (column, row, slice) as DICOM-derived NIfTI files usually
    are; the affine is converted to RAS as the format requires, and sform and
    qform both carry it (code 1, scanner), so viewers overlay it on the CT.
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
    # Level 1: masks are mostly zeros, so it compresses nearly as well as 9 in a fraction of the time.
    # mtime=0: the same labels give the same bytes (no write time in the gzip header).
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG of an (H, W, 3) uint8 image (fast compression: QA images, not archives)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8")


def write_outputs(out_dir: Path, files: dict[str, bytes]) -> list[Path]:
    """Write ``files`` (name -> content) into ``out_dir`` all at once."""
    unknown = set(files) - set(OUTPUT_NAMES)
    if unknown:
        raise ValueError(f"not an output name: {sorted(unknown)}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    except OSError as e:
        raise PipelineError(f"{out_dir}: cannot create output folder ({e.strerror})") from None
    try:
        for name, content in files.items():
            (staging / name).parent.mkdir(exist_ok=True)
            with open(staging / name, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
        for name in OUTPUT_NAMES:
            if name not in files:
                (out_dir / name).unlink(missing_ok=True)
        for name in files:
            (out_dir / name).parent.mkdir(exist_ok=True)
            os.replace(staging / name, out_dir / name)
        qa = out_dir / QA_FOLDER
        if qa.is_dir() and not any(qa.iterdir()):
            qa.rmdir()  # a run without QA images leaves no empty folder behind
    except OSError as e:
        raise PipelineError(f"{out_dir}: cannot write outputs ({e.strerror})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in files]


def remove_staging(out_dir: Path) -> None:
    """Delete staging folders in ``out_dir`` (left by a process killed while
    writing). Only one run may write into an output folder at a time."""
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
