"""One case into one folder: a CT and a config in, a run's outputs written.

The ``mesh`` command and every case of a ``batch`` run through
:func:`run_case`, so a batch case's folder holds exactly the files a single
``mesh`` run writes: load, :func:`~pipeline.run.run_mesh`, encoding, QA
images and report.html, then the all-or-nothing writer. report.json also
records what the outputs were made from (``fingerprint``), which files the
run wrote with their sizes (``outputs``), and the peak memory of the case
(``resources``); ``batch --resume`` trusts a folder only when these agree.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import Config, guide_stem
from .bones import LABEL_NAMES
from .io import (OUTPUT_DIGESTS, QA_FOLDER, json_bytes, load_ct, markups_bytes, nifti_bytes, output_digest,
                 output_lock, png_bytes, read_label_map, remove_staging, seg_nrrd_bytes, stl_bytes, run_fingerprint,
                 write_outputs)
from .memory import PeakMemory
from .parallel import parallel
from .qa.interactive import Lightening
from .run import Log, MeshResult, Timer, package_versions, run_mesh
from .segment.shape_model import load_model
from .volume import Volume

Progress = Callable[[int, int], None]


@dataclass(frozen=True, eq=False)
class CaseRun:
    volume: Volume
    result: MeshResult
    report: dict               # as written to report.json
    written: list[Path]        # every file written, report.json last
    seconds: dict[str, float]  # wall time per stage, writing included


def case_fingerprint(ct_path: str | Path, config: Config, *, series_uid: str | None, qa: bool,
                     labels_path: str | Path | None = None) -> dict:
    """What a case's outputs are made from (see :mod:`pipeline.io.fingerprint`)."""
    return run_fingerprint(ct_path, config.as_dict(), series_uid=series_uid, qa=qa, versions=package_versions(),
                           labels_path=labels_path or config.segment.labels_file)


def run_case(ct_path: str | Path, out_dir: str | Path, config: Config, *, series_uid: str | None = None,
             qa: bool = True, labels_path: str | Path | None = None, fingerprint: dict | None = None,
             log: Log | None = None, begin: Log | None = None, progress: Progress | None = None) -> CaseRun:
    """Run the mesh job on ``ct_path`` and write its outputs into ``out_dir``.

    ``labels_path``: a label map used instead of the automatic labels
    (``--labels``; else ``segment.labels_file`` of the config, if set).
    ``fingerprint``: the case's fingerprint when the caller has already
    computed it (batch checks it before running). ``log``, ``begin`` and
    ``progress`` report stages and loading as the CLI shows them.
    """
    memory = PeakMemory()
    timer = Timer(log, begin)
    # one run at a time: another's staging folder is not this run's to remove
    with output_lock(Path(out_dir)), ExitStack() as running:
        remove_staging(out_dir)   # a killed earlier run into this folder may have left one
        label_map = None
        if labels_path or config.segment.labels_file:   # before the CT: a wrong file fails fast
            with timer.stage("labelmap"):
                label_map = read_label_map(labels_path or config.segment.labels_file, dict(config.segment.label_names),
                                           what="" if labels_path else "segment.labels_file")
        if fingerprint is None:
            fingerprint = case_fingerprint(ct_path, config, series_uid=series_uid, qa=qa, labels_path=labels_path)
        # The 3D view's meshes are lightened in worker processes beside the job,
        # started now, while the process is small and the CT loads.
        lightening = running.enter_context(Lightening(start_workers=True)) if qa else None
        with timer.stage("load"):
            # The pelvis shape model the labelling fits is read beside the CT
            # (its decompression and re-orthonormalisation release the GIL).
            volume = parallel(lambda: load_ct(ct_path, series_uid=series_uid, max_gap_mm=config.load.max_gap_mm,
                                              progress=progress), *([load_model] if label_map is None else []))[0]
        for note in volume.notes:
            if log:
                log(f"note: {note}")
        result = run_mesh(volume, config, log=log, timer=timer, label_map=label_map, lightening=lightening)
        with timer.stage("encode"):
            encoders = {"bone.stl": lambda: stl_bytes(result.bone, "bone"),
                        "bone_mask.nii.gz": lambda: nifti_bytes(result.bone_mask, volume.affine),
                        "labels.nii.gz": lambda: nifti_bytes(result.labels, volume.affine, LABEL_NAMES),
                        "segmentation.seg.nrrd": lambda: seg_nrrd_bytes(result.labels, volume.affine)}
            for name, mesh in result.context.items():
                encoders[f"bone_{name}.stl"] = lambda name=name, mesh=mesh: stl_bytes(mesh, f"bone_{name}")
            if result.implant is not None:
                encoders["host.stl"] = lambda: stl_bytes(result.host, "host")
                encoders["implant.stl"] = lambda: stl_bytes(result.implant, "implant")
                cuts = result.report["planes"]
                for guide in result.guides:
                    stem = f"guide_{guide_stem(guide.plane_name)}"
                    encoders[f"{stem}.stl"] = lambda stem=stem, guide=guide: stl_bytes(guide.mesh, stem)
                encoders["plan.mrk.json"] = lambda: markups_bytes(
                    [p.cut_plane() for p in config.resection.planes], [c["host_cut_centre_lps_mm"] for c in cuts],
                    [c["host_cut_radius_mm"] for c in cuts])
            if result.fixation is not None:
                if result.fixation.implant_fixed is not None:
                    encoders["implant_fixed.stl"] = lambda: stl_bytes(result.fixation.implant_fixed, "implant_fixed")
                if result.fixation.screws_mesh is not None:
                    encoders["screws.stl"] = lambda: stl_bytes(result.fixation.screws_mesh, "screws")
            files = dict(zip(encoders, parallel(*encoders.values())))
        files.update(qa_files(volume, result, config, images=qa, timer=timer, lightening=lightening))
        report = result.report
        report["fingerprint"] = fingerprint
        report["outputs"] = {name: len(content) for name, content in sorted(files.items())}
        report[OUTPUT_DIGESTS] = {name: output_digest(content) for name, content in sorted(files.items())}
        report["resources"] = memory.report()
        files["report.json"] = json_bytes(report)
        with timer.stage("write"):
            written = write_outputs(Path(out_dir), files)
        return CaseRun(volume=volume, result=result, report=report, written=written, seconds=dict(timer.seconds))


def qa_files(volume, result, config, *, images: bool, timer,
             lightening: Lightening | None = None) -> dict[str, bytes]:
    """qa/<name>.png and report.html with the interactive 3D view (neither
    images nor view when ``images`` is false), its meshes lightened by
    ``lightening`` (see :func:`~pipeline.qa.interactive_view`)."""
    from .qa import (TEMPLATE_ATTRIBUTE, cut_bone_density, implant_source, interactive_view, qa_images,
                     report_html, scene_objects, structure_labels)
    from .qa.images import affected_side

    files, shown, missing, density, view = {}, [], [], [], None
    if images:
        with timer.stage("qa"):
            # The images first: the view waits for the last of its meshes from the
            # workers (the host and the implant, handed over after the cut), and
            # those are lightened while the images are drawn.
            made = qa_images(volume, result, config)
            pngs = parallel(*[(lambda im=im: png_bytes(im.rgb)) for im in made])
            if result.implant is not None:
                density = cut_bone_density(volume, result.labels, config.resection.planes,
                                           structure_labels(config), result.implant)
            view = interactive_view(scene_objects(result, config), side=affected_side(result), lightening=lightening)
        for image, png in zip(made, pngs):
            files[f"{QA_FOLDER}/{image.name}.png"] = png
            shown.append((image.title, png))
        if implant_source(config) == "mirrored" and not any(im.name == "view_mirrored" for im in made):
            missing.append(f"no mirrored template view: the run result has no {TEMPLATE_ATTRIBUTE}")
    else:
        missing.append("QA images and 3D view switched off (--no-qa)")
    files["report.html"] = report_html(result.report, shown, missing=missing,
                                       cut_density=density, view3d=view).encode("utf-8")
    return files
