"""batch.csv, batch.json and batch.html: one row per case.

Each row: status, error line, attempts, wall time (whole case and per stage),
peak memory, and the headline numbers of the case's report (label volumes,
implant volume and mass, contact areas, fit figures, warnings count).
batch.html is one self-contained page (thumbnails embedded, no scripts);
each case id links to the case's own report.html beside it. Rows hold the
case id, never the CT's path (folder names can carry patient identity).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import time
from pathlib import Path

from ..io import write_file
from .engine import BatchResult
from .task import CURRENT, DONE, FAILED, NOT_RUN

# Then the headline numbers, then these, then seconds per stage, then the worker.
FIRST_COLUMNS = ("case_id", "status", "attempts", "error")
COST_COLUMNS = ("wall_s", "peak_rss_mib")
STATUS_RGB = {DONE: "#eaf7ea", CURRENT: "#eef3fb", FAILED: "#fde8e8", NOT_RUN: "#f2f2f2"}


def counts(result: BatchResult) -> dict[str, int]:
    statuses = [r["status"] for r in result.records]
    return {s: statuses.count(s) for s in (DONE, CURRENT, FAILED, NOT_RUN)}


def rows(result: BatchResult) -> tuple[list[str], list[dict]]:
    """The table: column names and one flat dict per case."""
    stage_columns: dict[str, None] = {}
    number_columns: dict[str, None] = {}
    table = []
    for record in result.records:
        row = {k: record.get(k) for k in FIRST_COLUMNS + COST_COLUMNS}
        for stage, seconds in (record.get("seconds") or {}).items():
            stage_columns[f"{stage}_s"] = None
            row[f"{stage}_s"] = seconds
        for name, value in (record.get("headline") or {}).items():
            number_columns[name] = None
            row[name] = value
        row["worker"] = record.get("worker")
        table.append(row)
    return [*FIRST_COLUMNS, *number_columns, *COST_COLUMNS, *stage_columns, "worker"], table


def csv_bytes(result: BatchResult) -> bytes:
    columns, table = rows(result)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buffer.getvalue().encode("utf-8")


def json_bytes(result: BatchResult, about: dict) -> bytes:
    cases = [{k: v for k, v in r.items() if k != "thumbnail_jpeg"} for r in result.records]
    doc = {**about, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "seconds": result.seconds, "interrupted": result.interrupted, "counts": counts(result),
           "cases": cases}
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def html_bytes(result: BatchResult, about: dict, out_dir: Path) -> bytes:
    columns, table = rows(result)
    shown = [c for c in columns if c not in ("case_id", "worker")]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["view", "case_id", *shown])
    body = []
    for record, row in zip(result.records, table):
        thumb = record.get("thumbnail_jpeg")
        image = (f'<img alt="QA view" src="data:image/jpeg;base64,{base64.b64encode(thumb).decode("ascii")}">'
                 if thumb else "")
        case_id = html.escape(record["case_id"])
        has_report = (out_dir / record["case_id"] / "report.html").is_file()
        if has_report and record["status"] == FAILED:   # the folder holds an earlier run's outputs
            name = f'{case_id}<br><a href="{case_id}/report.html">(an earlier run)</a>'
        else:
            name = f'<a href="{case_id}/report.html">{case_id}</a>' if has_report else case_id
        cells = "".join(f"<td>{_cell(row.get(c))}</td>" for c in shown)
        colour = STATUS_RGB.get(record["status"], "#fff")
        body.append(f'<tr style="background:{colour}"><td>{image}</td><td>{name}</td>{cells}</tr>')
    n = counts(result)
    summary = ", ".join(f"{v} {k}" for k, v in n.items() if v)
    facts = "".join(f"<li>{html.escape(k)}: {_cell(v)}</li>" for k, v in about.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Batch summary</title>
<style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 6px;font-size:12px;vertical-align:middle}}
th{{background:#f2f2f2;position:sticky;top:0}}img{{display:block}}
</style></head><body>
<h1>Batch summary</h1>
<p>{len(result.records)} cases: {html.escape(summary)}; {result.seconds:.0f} s wall time{
        " (interrupted: run again with --resume)" if result.interrupted else ""}.
Each case id links to that case's report. Times in seconds, memory in MiB, coordinates LPS mm.</p>
<ul>{facts}</ul>
<table><tr>{head}</tr>
{chr(10).join(body)}
</table></body></html>
"""
    return page.encode("utf-8")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape(str(value))


def write_summary(out_dir: str | Path, result: BatchResult, about: dict) -> list[Path]:
    """Write batch.csv, batch.json and batch.html into ``out_dir`` (each atomically)."""
    out_dir = Path(out_dir)
    return [write_file(out_dir / "batch.csv", csv_bytes(result)),
            write_file(out_dir / "batch.json", json_bytes(result, about)),
            write_file(out_dir / "batch.html", html_bytes(result, about, out_dir))]
