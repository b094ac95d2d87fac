"""One batch case, as it runs on a worker: never raises for the case's own failure.

:func:`process_case` runs a case as the ``mesh`` job into
``<out>/<case_id>/`` (through :func:`pipeline.case.run_case`, so the folder
holds the same files) and returns its record: status, error line, wall time
per stage, peak memory, the headline numbers of its report and a thumbnail
of its QA view. With ``resume``, a case whose folder is current (same
fingerprint, every listed output present) is not run again; its record comes
from the report already there.
"""

from __future__ import annotations

import io
import time
import traceback
from pathlib import Path

from ..case import case_fingerprint, run_case
from ..config import load_config
from ..errors import PipelineError
from ..io import QA_FOLDER, current_report
from ..qa import report_warnings
from .manifest import Case

DONE, FAILED, CURRENT, NOT_RUN = "done", "failed", "up to date", "not run"
# The QA view shown in batch.html, first found; the thumbnail's longest side.
THUMBNAIL_VIEWS = ("view_oblique", "view_anterior", "slice_coronal")
THUMBNAIL_PX = 160


def process_case(case: Case, out_dir: str, *, resume: bool, qa: bool) -> dict:
    """Run ``case`` into ``out_dir/<case_id>`` and return its record."""
    start = time.perf_counter()
    folder = Path(out_dir) / case.case_id
    record = {"case_id": case.case_id, "status": FAILED, "error": None, "worker": _worker_name()}
    try:
        config = load_config(case.config)
        fingerprint = case_fingerprint(case.ct, config, series_uid=case.series, qa=qa)
        report = _current(folder, fingerprint) if resume else None
        if report is None:
            run = run_case(case.ct, folder, config, series_uid=case.series, qa=qa, fingerprint=fingerprint)
            report, status, seconds = run.report, DONE, run.seconds
        else:
            status, seconds = CURRENT, report.get("timings_s") or {}
        record.update(seconds=seconds, peak_rss_mib=(report.get("resources") or {}).get("peak_rss_mib"),
                      headline=headline(report), thumbnail_jpeg=thumbnail(folder), status=status)
    except PipelineError as e:
        # The CT's path stays out of the tables (folder names can carry patient identity).
        record["error"] = str(e).replace(str(case.ct), f"<ct of {case.case_id}>")
        if (folder / "report.json").is_file():
            record["error"] += f" ({case.case_id}/ holds an earlier run's outputs, left as they were)"
    except Exception as e:  # noqa: BLE001 -- a bug in one case must not end the batch: keep its traceback
        record["error"] = f"unexpected {type(e).__name__}: {' '.join(str(e).split())}"
        record["traceback"] = traceback.format_exc()
    record["wall_s"] = round(time.perf_counter() - start, 3)
    return record


def finished_while_stopping(case: Case, out_dir: str, *, qa: bool, since: float) -> dict | None:
    """The record of a case the batch counted as not run, when its worker
    finished it while the batch stopped (its folder holds a complete run of
    its inputs, written since ``since``, a time.time()); else None."""
    folder = Path(out_dir) / case.case_id
    try:
        if (folder / "report.json").stat().st_mtime < since:
            return None
        fingerprint = case_fingerprint(case.ct, load_config(case.config), series_uid=case.series, qa=qa)
    except (OSError, PipelineError):
        return None
    report = _current(folder, fingerprint)
    if report is None:
        return None
    return {"case_id": case.case_id, "status": DONE, "error": None, "worker": None,
            "seconds": report.get("timings_s") or {},
            "peak_rss_mib": (report.get("resources") or {}).get("peak_rss_mib"),
            "headline": headline(report), "thumbnail_jpeg": thumbnail(folder)}


def _current(folder: Path, fingerprint: dict) -> dict | None:
    """The report of ``folder`` when it holds a complete run of this fingerprint and can be read."""
    report = current_report(folder, fingerprint["digest"])
    if report is not None:
        try:
            headline(report)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None   # a damaged report.json: the folder is not current, whatever its fingerprint
    return report


def headline(report: dict) -> dict:
    """The numbers a batch table shows for a case (flat, units in the names)."""
    out: dict = {"warnings": len(report_warnings(report))}
    implant = report.get("implant") or {}
    fit = implant.get("fit") or {}
    size = fit.get("implant") or {}
    faces = fit.get("contact_faces") or []
    if size:
        out["implant_volume_cm3"] = round(size["volume_mm3"] / 1000.0, 2)
        out["implant_mass_g"] = size["mass_g"]
        out["wall_min_mm"] = size["min_wall_thickness_mm"]
        out["wall_p5_mm"] = size["wall_thickness_p5_mm"]
    if faces:
        out["overlap_ratio_min"] = min(f["overlap_ratio"] for f in faces)
        out["outline_distance_max_mm"] = max(f["max_outline_distance_mm"] for f in faces)
        out["gap_max_mm"] = round(max(f["gap_mm"]["max"] for f in faces), 4)
    if "registration" in implant:
        out["registration_rms_mm"] = implant["registration"]["rms_mm"]
        out["asymmetry_p95_mm"] = implant["asymmetry_mm"]["p95"]
    for plane in report.get("planes") or []:
        out[f"contact_{plane['name']}_mm2"] = round(plane["implant_contact_area_mm2"], 1)
    for name, row in ((report.get("segmentation") or {}).get("labels") or {}).items():
        out[f"label_{name}_cm3"] = round(row["mesh_volume_mm3"] / 1000.0, 2)
    return out


def thumbnail(folder: Path) -> bytes | None:
    """A small JPEG of the case's first QA view found, or None without QA images."""
    from PIL import Image

    for view in THUMBNAIL_VIEWS:
        path = folder / QA_FOLDER / f"{view}.png"
        if path.is_file():
            with Image.open(path) as image:
                image = image.convert("RGB")
                image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=85)
            return buffer.getvalue()
    return None


def _worker_name() -> str | None:
    """The dask worker's address, when running on one."""
    try:
        from distributed import get_worker

        return get_worker().address
    except ValueError:   # not inside a worker (a direct call)
        return None
