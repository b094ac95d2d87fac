"""Command line: ``python -m pipeline {mesh,series,phantom} ...``.

The only place that prints or exits. A :class:`PipelineError` becomes one
line on stderr and exit status 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import PipelineError


class Console:
    """Stage lines and a progress bar on stderr; a bar only on a terminal,
    nothing at all under ``--quiet`` or when CI is set."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty() and not os.environ.get("CI")
        self._bar_open = False

    def line(self, text: str) -> None:
        if self.quiet:
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

    def _end_bar(self) -> None:
        if self._bar_open:
            sys.stderr.write("\r\033[K")
            self._bar_open = False


def cmd_mesh(args: argparse.Namespace) -> None:
    from .bones import LABEL_NAMES
    from .config import load_config
    from .io import (json_bytes, load_ct, markups_bytes, nifti_bytes, read_label_map, seg_nrrd_bytes, stl_bytes,
                     write_outputs)
    from .parallel import parallel
    from .run import Timer, run_mesh

    console = Console(args.quiet)
    config = load_config(args.config)  # before the CT: a typo fails in milliseconds
    timer = Timer(console.line, console.begin)
    label_map = None
    if args.labels or config.segment.labels_file:   # before the CT too: a wrong file fails fast
        with timer.stage("labelmap"):
            label_map = read_label_map(args.labels or config.segment.labels_file, dict(config.segment.label_names),
                                       what="" if args.labels else "segment.labels_file")
    with timer.stage("load"):
        volume = load_ct(args.ct_dir, series_uid=args.series, max_gap_mm=config.load.max_gap_mm,
                         progress=console.progress("load"))
    for note in volume.notes:
        console.line(f"note: {note}")
    result = run_mesh(volume, config, log=console.line, timer=timer, label_map=label_map)
    start = time.perf_counter()
    encoders = {"bone.stl": lambda: stl_bytes(result.bone, "bone"),
                "bone_mask.nii.gz": lambda: nifti_bytes(result.bone_mask, volume.affine),
                "labels.nii.gz": lambda: nifti_bytes(result.labels, volume.affine, LABEL_NAMES),
                "segmentation.seg.nrrd": lambda: seg_nrrd_bytes(result.labels, volume.affine),
                "report.json": lambda: json_bytes(result.report)}
    for name, mesh in result.context.items():
        encoders[f"bone_{name}.stl"] = lambda name=name, mesh=mesh: stl_bytes(mesh, f"bone_{name}")
    if result.implant is not None:
        encoders["host.stl"] = lambda: stl_bytes(result.host, "host")
        encoders["implant.stl"] = lambda: stl_bytes(result.implant, "implant")
        cuts = result.report["planes"]
        encoders["plan.mrk.json"] = lambda: markups_bytes(
            [p.cut_plane() for p in config.resection.planes], [c["host_cut_centre_lps_mm"] for c in cuts],
            [c["host_cut_radius_mm"] for c in cuts])
    files = dict(zip(encoders, parallel(*encoders.values())))
    console.line(f"{'encode':<9} {time.perf_counter() - start:7.2f} s")
    files.update(qa_files(volume, result, config, images=not args.no_qa, timer=timer))
    start = time.perf_counter()
    written = write_outputs(Path(args.out), files)
    console.line(f"{'write':<9} {time.perf_counter() - start:7.2f} s")
    if not args.quiet:
        for path in written:
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


def qa_files(volume, result, config, *, images: bool, timer) -> dict[str, bytes]:
    """qa/<name>.png (unless ``images`` is false) and report.html."""
    from .io import QA_FOLDER, png_bytes
    from .parallel import parallel
    from .qa import (TEMPLATE_ATTRIBUTE, cut_bone_density, implant_source, qa_images, report_html,
                     structure_labels)

    files, shown, missing, density = {}, [], [], []
    if images:
        with timer.stage("qa"):
            made = qa_images(volume, result, config)
            pngs = parallel(*[(lambda im=im: png_bytes(im.rgb)) for im in made])
            if result.implant is not None:
                density = cut_bone_density(volume, result.labels, config.resection.planes,
                                           structure_labels(config), result.implant)
        for image, png in zip(made, pngs):
            files[f"{QA_FOLDER}/{image.name}.png"] = png
            shown.append((image.title, png))
        if implant_source(config) == "mirrored" and not any(im.name == "view_mirrored" for im in made):
            missing.append(f"no mirrored template view: the run result has no {TEMPLATE_ATTRIBUTE}")
    else:
        missing.append("QA images switched off (--no-qa)")
    files["report.html"] = report_html(result.report, shown, missing=missing,
                                       cut_density=density).encode("utf-8")
    return files


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
                      help="skip the QA images (qa/*.png); report.html is still written")
    mesh.set_defaults(func=cmd_mesh)

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
    try:
        args.func(args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
