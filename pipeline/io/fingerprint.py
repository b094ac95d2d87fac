"""What a run's outputs were made from, as digests: input, config, code.

A run records its fingerprint in report.json together with the files it
wrote, their sizes and digests of their content. A later run of the same
case (``batch --resume``) compares fingerprints: the outputs are current
when they were made from the same CT bytes, the same configuration values,
the same series choice, with or without QA images, by the same pipeline
code and libraries, and every file the report lists is still there with
its recorded size and content.

The CT digest is over the content of every file the loader may read (for a
folder, every file below it, since files are recognised by content, but
for a run's own output folder placed inside it), taken
file by file and sorted, so renaming or moving files or the folder changes
nothing while any changed byte does. Paths never enter a digest: folder and
file names can carry patient identity, and a digest of them would be a
fingerprint of that identity.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import InputError
from .volume_files import NRRD_SUFFIXES, is_volume_file

REPORT_NAME = "report.json"
# report.json's record of each output's content (besides ``outputs``, their sizes).
OUTPUT_DIGESTS = "outputs_xxh3"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _ct_files(ct_path: Path) -> list[Path]:
    """The files a load of ``ct_path`` may read."""
    if is_volume_file(ct_path):
        files = [ct_path]
        if ct_path.name.lower().endswith(NRRD_SUFFIXES):
            import nrrd

            try:
                header = nrrd.read_header(str(ct_path))
            except (OSError, ValueError, nrrd.NRRDError) as exc:
                raise InputError(f"{ct_path}: cannot read NRRD header ({' '.join(str(exc).split())})") from None
            detached = header.get("data file", header.get("datafile"))
            if detached:   # a .nhdr's pixels live in a separate file, named relative to it
                files.append(ct_path.parent / detached)
        return files
    if not ct_path.is_dir():
        raise InputError(f"CT not found: {ct_path} is neither a folder nor a NIfTI/NRRD file")
    found = []
    for root, dirs, names in os.walk(ct_path):
        if Path(root) != ct_path and _is_output_folder(Path(root), names):
            dirs.clear()   # a run's outputs written inside the CT's folder are not the CT
            continue
        found.extend(Path(root) / name for name in names)
    return [p for p in found if p.is_file()]


def _is_output_folder(folder: Path, names: list[str]) -> bool:
    """Whether ``folder`` holds a run's outputs: a report.json with a fingerprint."""
    if REPORT_NAME not in names:
        return False
    try:
        report = json.loads((folder / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and isinstance(report.get("fingerprint"), dict)


def ct_digest(ct_path: str | os.PathLike) -> str:
    """sha256 over the sorted content digests of the CT's files."""
    try:
        digests = sorted(_file_sha256(p) for p in _ct_files(Path(ct_path)))
    except OSError as e:
        raise InputError(f"{e.filename or ct_path}: cannot read ({e.strerror})") from None
    return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the pipeline package's source (relative paths and content):
    outputs made by other code are not current."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(path.relative_to(PACKAGE_DIR).as_posix().encode("utf-8") + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def _json_sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


def run_fingerprint(ct_path: str | os.PathLike, config: dict, *, series_uid: str | None, qa: bool,
                versions: dict[str, str], labels_path: str | os.PathLike | None = None) -> dict:
    """The fingerprint of a run: its parts and ``digest``, the one value compared.

    ``config`` is the configuration's values (``Config.as_dict()``); its
    ``source`` (the file's path) is left out, so moving a config file keeps
    outputs current and changing a value does not. ``labels_path``: a label
    map used instead of the automatic labels (its content counts, as the CT's).
    """
    parts = {
        "ct_sha256": ct_digest(ct_path),
        "config_sha256": _json_sha256({k: v for k, v in config.items() if k != "source"}),
        "series_uid": series_uid,
        "qa_images": qa,
        "code_sha256": code_digest(),
        "versions_sha256": _json_sha256(versions),
    }
    if labels_path:
        parts["labels_sha256"] = ct_digest(labels_path)
    return {**parts, "digest": _json_sha256(parts)}


def output_digest(content: bytes) -> str:
    """The digest of an output's bytes recorded in report.json (xxh3, 64 bits:
    a check against changes, not a seal; 60 MB of outputs in ~10 ms)."""
    import xxhash

    return xxhash.xxh3_64_hexdigest(content)


def current_report(out_dir: str | os.PathLike, digest: str) -> dict | None:
    """The report in ``out_dir`` when its outputs are complete and were made
    with fingerprint ``digest``; None otherwise (missing, unreadable, other
    fingerprint, a listed file missing, of another size or other content: an
    STL edited in place keeps its size while its triangles do not change in
    number)."""
    out_dir = Path(out_dir)
    try:
        report = json.loads((out_dir / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or (report.get("fingerprint") or {}).get("digest") != digest:
        return None
    outputs, digests = report.get("outputs"), report.get(OUTPUT_DIGESTS)
    if not isinstance(outputs, dict) or not outputs or not isinstance(digests, dict) or set(digests) != set(outputs):
        return None
    for name, size in outputs.items():
        try:
            path = out_dir / name
            if path.stat().st_size != size or output_digest(path.read_bytes()) != digests[name]:
                return None
        except OSError:
            return None
    return report
