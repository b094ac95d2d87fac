"""Command line: ``python -m pipeline {mesh,batch,series,phantom} ...``.

The only place that prints or exits. A :class:`PipelineError` becomes one
line on stderr and exit status 2; Ctrl-C (SIGINT) or SIGTERM one line and
130 / 143, wherever it lands (in a library's import too); anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .errors import PipelineError


class Console:
    """Stage lines and a progress bar on stderr; a bar only on a terminal,
    nothing under ``--quiet`` but errors, no bar when CI is set."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty() and not os.environ.get("CI")
        self._bar_open = False

    def line(self, text: str, *, error: bool = False) -> None:
        """``text`` on its own line; under ``--quiet`` only an ``error``."""
        if self.quiet and not error:
            return
        self._end_bar()
        print(text, file=sys.stderr, flush=True)

    def progress(self, label: str):
        width = 30
        drawn = {"filled": -1}

        def update(done: int, total: int) -> None:
            if self.quiet or not self.tty:
                return
            filled = int(width * done / max(total, 1))
            if filled == drawn["filled"] and done != total:
                return  # redraw only when the bar moves: hundreds of slices, ~30 redraws
            drawn["filled"] = filled
            sys.stderr.write(f"\r{label:<9} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
            sys.stderr.flush()
            self._bar_open = True
        return update

    def begin(self, stage: str) -> None:
        """On a terminal, say which stage is running until its line replaces it."""
        if self.quiet or not self.tty:
            return
        sys.stderr.write(f"\r{stage:<9} ...")
        sys.stderr.flush()
        self._bar_open = True

    def status(self, text: str) -> None:
        """On a terminal, one line that the next status or line replaces."""
        if self.quiet or not self.tty:
            return
        sys.stderr.write(f"\r\033[K{text}")
        sys.stderr.flush()
        self._bar_open = True

    def _end_bar(self) -> None:
        if self._bar_open:
            sys.stderr.write("\r\033[K")
            self._bar_open = False


def cmd_mesh(args: argparse.Namespace) -> None:
    import gc

    from .case import run_case
    from .config import load_config

    # The ~100k objects of the imported libraries live as long as the process:
    # frozen, the collector's full passes (41 ms each, three in a run) skip them.
    gc.freeze()

    console = Console(args.quiet)
    try:
        config = load_config(args.config)  # before the CT: a typo fails in milliseconds
        case = run_case(args.ct_dir, Path(args.out), config, series_uid=args.series, qa=not args.no_qa,
                        labels_path=args.labels, log=console.line,
                        begin=lambda stage: (STOP.check(), console.begin(stage)),
                        progress=console.progress("load"))
    except PipelineError as exc:
        # Nothing is written by a refused run: what is there is not this run's.
        if (Path(args.out) / "report.json").is_file():
            raise type(exc)(f"{exc} ({args.out} holds an earlier run's outputs, left as they were)") from None
        raise
    result = case.result
    if not args.quiet:
        for path in case.written:
            print(path)
        for name, stats in result.report["meshes"].items():
            print(f"{name}: {stats['volume_mm3'] / 1000:.1f} cm3, {stats['triangles']} triangles")
        for plane in result.report["planes"]:
            print(f"plane {plane['name']}: contact {plane['implant_contact_area_mm2']:.1f} mm2")
        if result.report.get("implant"):
            from .design import fit_summary_lines
            print("\n".join(fit_summary_lines(result.report["implant"])))
        from .qa import report_warnings
        for warning in report_warnings(result.report):
            print(f"warning: {warning}")


# Exit status of a batch that finished with failed cases (2 is a refusal, 130 an interrupt).
BATCH_FAILED_STATUS = 3


def cmd_batch(args: argparse.Namespace) -> int:
    STOP.once = True   # from here until the summary is written
    from .batch import (FAILED, NOT_RUN, connect, counts, finished_while_stopping, read_manifest, run_batch,
                        write_summary)

    from .io import check_writable_folder

    console = Console(args.quiet)
    cases = read_manifest(args.manifest)   # every row checked before a worker starts
    check_writable_folder(Path(args.out))   # ... and the output folder: found after the cases, hours were lost
    console.line(f"{len(cases)} cases from {args.manifest}")
    started = time.time()
    with connect(args.scheduler, workers=args.workers, worker_memory_gb=args.worker_memory_gb,
                 cases=len(cases)) as client:
        STOP.check()
        workers = client.scheduler_info(n_workers=-1)["workers"]
        console.line(f"{len(workers)} workers at {client.scheduler.address}"
                     + ("" if args.scheduler else " (local cluster)"))
        result = run_batch(cases, args.out, client, resume=args.resume, retries=args.retries, qa=not args.no_qa,
                           on_update=lambda p: (STOP.check(), _batch_progress(console, p)))
    if result.interrupted and not args.scheduler:
        # The local cluster is closed: a worker stopped in the middle of
        # writing a case left its staging folder; none stays behind. One that
        # finished its case while the batch stopped wrote it whole: it is done.
        from .io import remove_staging
        for case, record in zip(cases, result.records):
            if record["status"] == NOT_RUN:
                remove_staging(Path(args.out) / case.case_id)
                done = finished_while_stopping(case, args.out, qa=not args.no_qa, since=started)
                if done is not None:
                    record.update(done, attempts=record["attempts"])
    about = {"manifest": str(args.manifest), "cases": len(cases), "workers": len(workers),
             "scheduler": args.scheduler or "local cluster", "resume": args.resume, "retries": args.retries,
             "qa_images": not args.no_qa}
    written = write_summary(args.out, result, about)
    n = counts(result)
    console.line(f"{len(cases)} cases in {result.seconds:.1f} s: "
                 + ", ".join(f"{v} {k}" for k, v in n.items() if v))
    if not args.quiet:
        for path in written:
            print(path)
    if result.interrupted:
        print(f"error: interrupted; {n['not run']} case(s) not run: run again with --resume", file=sys.stderr)
        return TERMINATED_STATUS if STOP.signal == signal.SIGTERM else INTERRUPTED_STATUS
    return BATCH_FAILED_STATUS if n[FAILED] else 0


# Exit status of a run stopped by Ctrl-C, or by SIGTERM (a job scheduler's, or `timeout`'s): 128 + the signal,
# as the shell reports it.
INTERRUPTED_STATUS = 130
TERMINATED_STATUS = 143


class _Stop:
    """Ctrl-C (SIGINT) and SIGTERM stop a run the same way: each raises
    KeyboardInterrupt where the run is (a mesh run's outputs are then
    written whole or not at all). With ``once`` (a batch), only the first
    does: the batch then records the cases not run, closes the cluster and
    writes its summary, and one more signal while it does so is ignored (it
    ended that in a traceback and no summary)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.once = False
        self._previous: dict[int, object] = {}

    def __call__(self, signum, frame) -> None:
        if self.signal is None or not self.once:
            self.signal = signum
            raise KeyboardInterrupt

    def check(self) -> None:
        """Stop now if a signal came and the run went on: a library's import
        caught it (trimesh's optional imports catch everything)."""
        if self.signal is not None:
            raise KeyboardInterrupt

    def __enter__(self) -> "_Stop":
        self.signal, self.once = None, False
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


STOP = _Stop()


def _batch_progress(console: Console, p) -> None:
    if p.note:
        console.line(p.note)
    if p.finished:
        r = p.finished
        text = f"{r['case_id']}: {r['status']}" + (f" in {r['wall_s']:.1f} s" if r.get("wall_s") else "")
        # A failed case is an error: said under --quiet too (which prints nothing but errors).
        console.line(text + (f": {r['error']}" if r.get("error") else ""), error=bool(r.get("error")))
    finished = p.done + p.failed + p.current
    eta = "" if p.eta_s is None else f", ETA {int(p.eta_s) // 60}:{int(p.eta_s) % 60:02d}"
    console.status(f"batch  {finished}/{p.total}: {p.done} done, {p.failed} failed, {p.current} up to date, "
                   f"{p.running} running{eta}")


def cmd_series(args: argparse.Namespace) -> None:
    from .io import is_volume_file, load_volume_file, scan_folder
    from .volume import orientation_code

    if is_volume_file(args.ct_dir):  # a NIfTI/NRRD file is one series: describe it the same way
        volume = load_volume_file(args.ct_dir)
        k, j, i = volume.shape
        spacing = " x ".join(f"{s:.4g}" for s in volume.spacing_mm)
        print(f"{Path(args.ct_dir).name}  volume file  {k} slices  size {j}x{i}x{k} (rows x columns x slices)  "
              f"spacing {spacing} mm (slice, row, column)  orientation {orientation_code(volume.affine)}")
        return
    scan = scan_folder(args.ct_dir)
    for info in scan.series:
        print(info.summary_line())
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(scan.skipped.items()))
    if skipped:
        print(f"skipped: {skipped}", file=sys.stderr)


def cmd_phantom(args: argparse.Namespace) -> None:
    from .io import write_series
    from .phantom import pelvis_phantom, preset

    kwargs = preset(args.preset)
    if args.seed is not None:
        kwargs["seed"] = args.seed
    if args.noise_hu is not None:
        kwargs["noise_hu"] = args.noise_hu
    phantom = pelvis_phantom(**kwargs)
    paths = write_series(phantom.volume, Path(args.out_dir),
                         series_description=f"pelvis phantom ({args.preset})",
                         uid_seed=f"phantom-{args.preset}-{kwargs.get('seed', 0)}")
    if not args.quiet:
        print(f"{len(paths)} slices, {phantom.volume!r} -> {args.out_dir}")


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline",
                                     description="Patient-specific pelvic implant geometry from CT.")
    sub = parser.add_subparsers(dest="command", required=True)

    mesh = sub.add_parser("mesh", help="CT folder -> bone, host and implant STLs, mask and report",
                          description="Segment and label the bones of a CT, cut the planned bones "
                                      "with the planned planes and write bone.stl, host.stl, "
                                      "implant.stl, bone_<name>.stl, bone_mask.nii.gz, labels.nii.gz, "
                                      "segmentation.seg.nrrd and plan.mrk.json (for 3D Slicer), "
                                      "report.json (LPS millimetres), QA images qa/*.png and a "
                                      "self-contained report.html.")
    mesh.add_argument("ct_dir", type=Path, metavar="CT_DIR",
                      help="folder holding the DICOM series, or a NIfTI (.nii, .nii.gz) or NRRD "
                           "(.nrrd, .nhdr) CT volume")
    mesh.add_argument("--config", type=Path, help="TOML config (default: built-in defaults, no planes)")
    mesh.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: out)")
    mesh.add_argument("--series", metavar="UID", help="SeriesInstanceUID to use (see the series command)")
    mesh.add_argument("--labels", type=Path, metavar="PATH",
                      help="use this label map instead of the automatic labels: a 3D Slicer .seg.nrrd (e.g. "
                           "a corrected segmentation.seg.nrrd), a TotalSegmentator multi-label NIfTI or "
                           "folder of masks, or a labels.nii.gz (overrides segment.labels_file)")
    mesh.add_argument("--quiet", action="store_true", help="print nothing but errors")
    mesh.add_argument("--no-qa", action="store_true",
                      help="skip the QA images (qa/*.png) and the 3D view; report.html is still written")
    mesh.set_defaults(func=cmd_mesh)

    batch = sub.add_parser("batch", help="run mesh on every case of a manifest, on a dask cluster",
                           description="Run the mesh job on every case of a manifest (CSV or TOML: case_id, "
                                       "ct, config, optional series) into OUT/<case_id>/, on a local "
                                       "cluster of worker processes or on the dask scheduler given; write "
                                       "OUT/batch.csv, batch.json and batch.html. Exit status 0 when every "
                                       f"case is done or up to date, {BATCH_FAILED_STATUS} when some failed, "
                                       "2 when the manifest is refused, 130 when interrupted (143 by SIGTERM).")
    batch.add_argument("manifest", type=Path, metavar="MANIFEST", help="the cases (.csv or .toml)")
    batch.add_argument("--out", type=Path, required=True, help="output folder: one folder per case")
    batch.add_argument("--workers", type=_at_least(1),
                       help="local worker processes (default: one per core, at most one per 4 GB of memory; "
                            "never more than the cases)")
    batch.add_argument("--worker-memory-gb", type=_positive_float,
                       help="memory limit per local worker in GB (default: the machine's memory shared "
                            "evenly); a worker beyond it is restarted and its case retried")
    batch.add_argument("--scheduler", metavar="ADDRESS",
                       help="an existing dask scheduler (tcp://host:8786) instead of a local cluster")
    batch.add_argument("--resume", action="store_true",
                       help="skip cases whose outputs are complete and made from the same input, config "
                            "and code (the fingerprint in their report.json)")
    batch.add_argument("--retries", type=_at_least(0), default=1,
                       help="runs more of a case whose worker died (default: 1)")
    batch.add_argument("--no-qa", action="store_true", help="skip the QA images (as mesh --no-qa)")
    batch.add_argument("--quiet", action="store_true", help="print nothing but errors")
    batch.set_defaults(func=cmd_batch)

    series = sub.add_parser("series", help="list the image series in a folder",
                            description="One line per image series: UID, modality, description, "
                                        "slices, size, spacing, orientation. No patient identity.")
    series.add_argument("ct_dir", type=Path, metavar="CT_DIR", help="DICOM folder, or a NIfTI/NRRD file")
    series.set_defaults(func=cmd_series)

    phantom = sub.add_parser("phantom", help="write the analytic pelvis phantom as a DICOM series",
                             description="Write the pelvis-like phantom CT (known ground truth) "
                                         "as a DICOM series.")
    phantom.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    phantom.add_argument("--preset", choices=("sample", "bench"), default="sample",
                         help="grid size: sample (committed sample_ct/) or bench (512x512x300)")
    phantom.add_argument("--seed", type=int, help="noise seed")
    phantom.add_argument("--noise-hu", type=float, help="noise standard deviation (HU)")
    phantom.add_argument("--quiet", action="store_true")
    phantom.set_defaults(func=cmd_phantom)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with STOP:
        try:
            status = args.func(args)
        except PipelineError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except Exception:
            # An interrupt that lands in a library's import can surface as another
            # error (a NameError in scipy's): after a signal, it is the signal.
            if STOP.signal is None:
                raise
            return _stopped()
        except KeyboardInterrupt:
            return _stopped()
    return status or 0


def _stopped() -> int:
    terminated = STOP.signal == signal.SIGTERM
    print(f"error: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
    return TERMINATED_STATUS if terminated else INTERRUPTED_STATUS
