"""The batch manifest: which cases to run, read and checked before anything runs.

CSV (a header row, then one row per case) or TOML (one ``[[case]]`` table
per case), with the keys ``case_id``, ``ct`` (a DICOM folder or a NIfTI/NRRD
file), ``config`` (a TOML config) and, optionally, ``series`` (the
SeriesInstanceUID when the folder holds several). Relative paths resolve
from the manifest's folder. Every problem is refused with one line naming
the manifest and the row: unknown or missing columns, an empty value, an
unusable or duplicate case id, a CT or config that does not exist, and a
config that does not validate (so a typo fails in seconds, not after hours
of other cases).
"""

from __future__ import annotations

import csv
import io
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import load_config
from ..errors import ManifestError, PipelineError
from ..io import is_volume_file

REQUIRED = ("case_id", "ct", "config")
OPTIONAL = ("series",)
# A case id names its output folder: letters, digits, '.', '_' and '-', not
# starting with '.' (hidden), at most 100 characters.
CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Names the batch itself writes into the output folder.
RESERVED_IDS = ("batch.csv", "batch.json", "batch.html")


@dataclass(frozen=True)
class Case:
    case_id: str
    ct: Path             # absolute
    config: Path         # absolute
    series: str | None
    row: str             # where it is in the manifest ("row 3", "case 2"), for messages


def read_manifest(path: str | Path) -> list[Case]:
    """The manifest's cases, in order, every one checked.

    Raises
    ------
    ManifestError
        Unreadable or malformed manifest, or a row that cannot run; the
        message names the manifest and the row.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".toml"):
        raise ManifestError(f"{path}: a manifest is a .csv or .toml file")
    try:
        text = path.read_text(encoding="utf-8-sig")   # a spreadsheet's byte-order mark is not a column name
    except OSError as e:
        raise ManifestError(f"{path}: cannot read manifest ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: manifest is not UTF-8 text") from None
    rows = _csv_rows(path, text) if suffix == ".csv" else _toml_rows(path, text)
    if not rows:
        raise ManifestError(f"{path}: the manifest lists no cases")
    cases, seen = [], {}
    for where, row in rows:
        case = _case(path, where, row)
        key = case.case_id.lower()   # case-insensitive file systems would merge their folders
        if key in seen:
            raise ManifestError(f"{path}: {case.row}: case_id {case.case_id!r} repeats {seen[key]}")
        seen[key] = where
        cases.append(case)
    return cases


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict[str, str]]]:
    reader = csv.reader(io.StringIO(text, newline=""))   # line ends kept: a value running over one shows
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(f"{path}: the manifest is empty (a header row {','.join(REQUIRED)} is needed)") from None
    _check_keys(path, "row 1 (header)", header, "column")
    if len(set(header)) < len(header):
        raise ManifestError(f"{path}: row 1 (header): a column appears twice")
    rows = []
    try:
        for values in reader:
            where = f"row {reader.line_num}"
            if any("\n" in v or "\r" in v for v in values):
                # A quote left open takes the lines after it into one value: name the row it opens on.
                start = reader.line_num - sum(v.rstrip("\r\n").count("\n") for v in values)
                raise ManifestError(f"{path}: row {start}: a quoted value runs past the end of its line "
                                    "(a quote left open?)")
            if not any(v.strip() for v in values):
                continue   # blank lines
            if len(values) != len(header):
                raise ManifestError(f"{path}: {where}: {len(values)} values for {len(header)} columns")
            rows.append((where, {k: v.strip() for k, v in zip(header, values)}))
    except csv.Error as e:
        raise ManifestError(f"{path}: row {reader.line_num}: not valid CSV ({e})") from None
    return rows


def _toml_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(raw) - {"case"})
    if unknown:
        raise ManifestError(f"{path}: unknown key {unknown[0]!r} (a TOML manifest holds [[case]] tables)")
    tables = raw.get("case", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ManifestError(f"{path}: 'case' must be an array of tables ([[case]])")
    rows = []
    for n, table in enumerate(tables, start=1):
        where = f"case {n}"
        _check_keys(path, where, list(table), "key")
        for key, value in table.items():
            if not isinstance(value, str):
                raise ManifestError(f"{path}: {where}: {key} must be a string, got {type(value).__name__}")
        rows.append((where, table))
    return rows


def _check_keys(path: Path, where: str, keys: list[str], kind: str) -> None:
    unknown = [k for k in keys if k not in REQUIRED + OPTIONAL]
    if unknown:
        raise ManifestError(f"{path}: {where}: unknown {kind} {unknown[0]!r} "
                            f"(known: {', '.join(REQUIRED + OPTIONAL)})")
    missing = [k for k in REQUIRED if k not in keys]
    if missing:
        raise ManifestError(f"{path}: {where}: missing {kind} {missing[0]!r}")


def _case(path: Path, where: str, row: dict[str, str]) -> Case:
    for key in REQUIRED:
        if not row.get(key, "").strip():
            raise ManifestError(f"{path}: {where}: {key} is empty")
    case_id = row["case_id"].strip()
    where = f"{where} (case {case_id})"
    if not CASE_ID.fullmatch(case_id) or case_id.lower() in RESERVED_IDS:
        raise ManifestError(f"{path}: {where}: case_id must be 1-100 letters, digits, '.', '_' or '-', "
                            f"not starting with '.' and not {' or '.join(RESERVED_IDS)}")
    for key in ("ct", "config", "series"):
        if "\0" in (row.get(key) or ""):
            raise ManifestError(f"{path}: {where}: {key} holds a NUL character")
    base = path.resolve().parent
    ct = (base / row["ct"].strip()).resolve()
    if not ct.exists():
        raise ManifestError(f"{path}: {where}: ct {ct} does not exist")
    if not ct.is_dir() and not is_volume_file(ct):
        raise ManifestError(f"{path}: {where}: ct {ct} is neither a folder nor a NIfTI/NRRD file")
    config = (base / row["config"].strip()).resolve()
    if not config.is_file():
        raise ManifestError(f"{path}: {where}: config {config} does not exist")
    try:
        load_config(config)
    except PipelineError as e:
        raise ManifestError(f"{path}: {where}: {e}") from None
    series = (row.get("series") or "").strip() or None
    return Case(case_id=case_id, ct=ct, config=config, series=series, row=where)
