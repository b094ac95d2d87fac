"""The mesh job as one pure function: Volume + Config -> meshes, mask, report.

No file I/O here: the CLI reads the CT, calls :func:`run_mesh`, and hands the
result to the writers. ``log`` receives one line per finished stage.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import trimesh

from .bones import LABEL_NAMES
from .config import Config, guide_stem
from .design import BoneScene, Fixation, fit_report, fix_implant, mirrored_source
from .design.guides import Guide, cutting_guides
from .errors import PlanError
from .geometry import (Resection, bone_surfaces, check_plane_structures, concatenate_solids, mesh_facts, mesh_stats,
                       resect, validate_solid)
from .geometry.bridge import joint_gap_mm
from .geometry.meshes import doubled_areas
from .memory import release_freed_memory
from .parallel import parallel
from .segment import PelvisFit, label_bones, segment_bone
from .segment.external import LabelMap, labels_from_map
from .segment.lookup import label_counts
from .volume import Volume, apply_affine, orientation_code

if TYPE_CHECKING:
    from .qa.interactive import Lightening

Log = Callable[[str], None]
PACKAGES = ("pelvic-implant-pipeline", "numpy", "scipy", "scikit-image", "pydicom", "trimesh",
            "manifold3d", "nibabel")


@dataclass(frozen=True, eq=False)
class MeshResult:
    bone: trimesh.Trimesh             # every bone (union of all labels' meshes)
    host: trimesh.Trimesh | None      # the cut structures' remainder
    implant: trimesh.Trimesh | None
    label_meshes: dict[str, trimesh.Trimesh]  # bone name -> mesh, every labelled bone
    context: dict[str, trimesh.Trimesh]  # those of label_meshes not in resection.structures
    labels: np.ndarray  # uint8, the volume's grid: label whose mesh holds each voxel centre
    report: dict
    # implant.source = "mirrored": the healthy side reflected and fitted to the
    # affected side, before the cut (for QA views); None otherwise.
    mirrored_template: trimesh.Trimesh | None = None
    # The pelvis shape model as fitted to the CT (None when no pelvis was found).
    pelvis_fit: PelvisFit | None = None
    # guides.enabled: one cutting guide per plane, in plan order.
    guides: tuple[Guide, ...] = ()
    # [implant.fixation]: flanges and screws (implant_fixed.stl, screws.stl); None otherwise.
    fixation: Fixation | None = None

    @property
    def bone_mask(self) -> np.ndarray:
        """bool, the volume's grid: voxel centres inside bone.stl."""
        return self.labels > 0


class Timer:
    """Wall time per named stage, announced through ``log`` when it ends
    (and through ``begin``, if given, when it starts)."""

    def __init__(self, log: Log | None, begin: Log | None = None) -> None:
        self.log = log
        self.begin = begin
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.begin:
            self.begin(name)
        release_freed_memory()   # so this stage's peak does not stack on what the last one freed
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        if self.log:
            self.log(f"{name:<9} {self.seconds[name]:7.2f} s")


def run_mesh(volume: Volume, config: Config, *, log: Log | None = None,
             timer: Timer | None = None, label_map: LabelMap | None = None,
             lightening: Lightening | None = None) -> MeshResult:
    """``label_map``: labels read from a file (``--labels``), used instead of
    the automatic segmentation and labelling. ``lightening``: the 3D view's,
    handed each mesh it shows as soon as it is final (the bones the plan
    leaves whole, then the host and the implant)."""
    timer = timer or Timer(log)
    if label_map is None:
        with timer.stage("segment"):
            bone_mask = segment_bone(volume, config.segment)
        with timer.stage("labels"):
            bone_labels = label_bones(volume, bone_mask, config.segment)
        segment_stats = {**bone_mask.stats, **bone_labels.stats}
    else:
        with timer.stage("labels"):
            bone_labels = labels_from_map(volume, label_map, config.segment)
        segment_stats = dict(bone_labels.stats)
    with timer.stage("surface"):
        surfaces = bone_surfaces(volume, bone_labels, config.surface)
        meshes = {LABEL_NAMES[k]: m for k, m in surfaces.meshes.items()}
        parallel(*[(lambda n=n, m=m: validate_solid(m, f"bone_{n}")) for n, m in meshes.items()])
        bone = concatenate_solids(list(meshes.values()))
    # Without planes nothing is cut: every bone is written on its own.
    structures = config.resection.structures if config.resection.planes else ()
    context = {n: m for n, m in meshes.items() if n not in structures}
    if lightening is not None:
        lightening.start(list(context.values()), list(meshes.values()))
    # Margins move each planned plane into the kept side; everything is cut there.
    planes = tuple(p.cut_plane() for p in config.resection.planes)
    cut: Resection | None = None
    guides: tuple[Guide, ...] = ()
    fixation: Fixation | None = None
    mirror = None
    implant_report: dict | None = None
    if planes:
        cut_bones = [meshes[n] for n in structures if n in meshes]
        if not cut_bones:
            raise PlanError(f"none of resection.structures ({', '.join(structures)}) was found in the "
                            f"scan (found: {', '.join(meshes) or 'no bone'})")
        check_plane_structures(planes, meshes)
        implant_report = {"source": config.implant.source}
        if config.implant.source == "mirrored":
            with timer.stage("mirror"):
                mirror = mirrored_source(meshes, planes, structures)
                validate_solid(mirror.mesh, "mirrored source")
                implant_report = mirror.report
        with timer.stage("resect"):
            cut = resect({n: meshes[n] for n in structures if n in meshes}, planes,
                         min_fragment_mm3=config.resection.min_fragment_mm3, clearance_mm=config.implant.clearance_mm,
                         implant_from=mirror.mesh if mirror else None, joint_gap_mm=joint_gap_mm(volume.spacing_mm))
            parallel(lambda: validate_solid(cut.host, "host"),
                     lambda: validate_solid(cut.implant, "implant"))
        if lightening is not None:   # one task each: both cores, as the job's own work is lighter from here
            for mesh in (cut.host, cut.implant):
                lightening.start([mesh], list(meshes.values()))
        with timer.stage("fit"):
            implant_report["fit"] = fit_report(cut, planes, config.implant)
        if config.guides.enabled:
            with timer.stage("guides"):
                guides = cutting_guides(planes, config.guides, bones=bone, cut_bone=concatenate_solids(cut_bones),
                                        host=cut.host, cut_faces=cut.host_cut_faces)
                parallel(*[(lambda g=g: validate_solid(g.mesh, f"guide_{guide_stem(g.plane_name)}"))
                           for g in guides])
        if config.implant.fixation is not None:
            with timer.stage("fixation"):
                fixation = fix_implant(cut, planes, bone_scene(meshes, surfaces.full_labels(volume.shape),
                                                               volume.affine, bone_labels.fit),
                                       config.implant.fixation)
                if fixation.implant_fixed is not None:
                    validate_solid(fixation.implant_fixed, "implant_fixed")
                if fixation.screws_mesh is not None:
                    validate_solid(fixation.screws_mesh, "screws")
                implant_report["fixation"] = fixation.report
    elif log:
        log("no resection planes in the config: writing the bone outputs only")
    with timer.stage("report"):
        labels = surfaces.full_labels(volume.shape)
        segment_stats["labels"] = label_table(surfaces.labels, meshes, volume.voxel_volume_mm3)
        report = build_report(volume, config, bone, cut, segment_stats, timer.seconds)
        report["implant"] = implant_report
        designed = {}   # what is designed beyond the bone: it may reach past what the scan shows
        if guides:
            report["guides"] = [{**g.report, "file": f"guide_{guide_stem(g.plane_name)}.stl",
                                 "warnings": list(g.warnings)} for g in guides]
            designed.update({f"guide_{guide_stem(g.plane_name)}": g.mesh for g in guides})
        if fixation is not None:
            report["warnings"] = list(fixation.warnings)
            if fixation.implant_fixed is not None:
                designed["implant_fixed"] = fixation.implant_fixed
            if fixation.screws_mesh is not None:
                designed["screws"] = fixation.screws_mesh
        for name, mesh in designed.items():
            report["meshes"][name] = {**mesh_stats(mesh), "beyond_scan_mm": beyond_scan_mm(mesh, volume)}
        report["meshes"].update({f"bone_{n}": mesh_stats(m) for n, m in context.items()})
    return MeshResult(bone=bone, host=cut.host if cut else None, implant=cut.implant if cut else None,
                      label_meshes=meshes, context=context, labels=labels, report=report,
                      mirrored_template=mirror.mesh if mirror else None, pelvis_fit=bone_labels.fit,
                      guides=guides, fixation=fixation)


def beyond_scan_mm(mesh: trimesh.Trimesh, volume: Volume) -> float:
    """How far (mm) the mesh reaches past the scanned volume's outer voxel
    faces, along the grid's axes; 0 when it lies within."""
    index = apply_affine(np.linalg.inv(volume.affine), np.asarray(mesh.vertices, dtype=np.float64))
    past = np.maximum(-0.5 - index, index - (np.asarray(volume.shape) - 0.5))
    return round(float(np.max(np.maximum(past, 0.0) * np.asarray(volume.spacing_mm))), 2)


def bone_scene(meshes: dict[str, trimesh.Trimesh], labels: np.ndarray, affine: np.ndarray,
               fit: PelvisFit | None) -> BoneScene:
    """What the screw search needs of the patient: the bones, the labels, and
    from the fitted model the sacrum (its canal and foramina) and the S1 level."""
    if fit is None or "sacrum" not in fit.faces:
        return BoneScene(bones=meshes, labels=labels, affine=affine)
    v = fit.vertices_lps_mm
    s1 = v[fit.landmarks["s1_endplate"]].mean(axis=0)
    s3 = v[fit.landmarks["s3_end"]].mean(axis=0)
    return BoneScene(bones=meshes, labels=labels, affine=affine,
                     sacrum_model=trimesh.Trimesh(v, fit.faces["sacrum"], process=False),
                     s1_centre_lps_mm=s1, s1_axis_lps=(s1 - s3) / np.linalg.norm(s1 - s3))


def label_table(labels: np.ndarray, meshes: dict[str, trimesh.Trimesh], voxel_mm3: float) -> dict:
    """Per bone: its label value, voxel volume and mesh volume (mm3).
    ``labels`` may be any crop holding all bone voxels."""
    counts = label_counts(labels, len(LABEL_NAMES) + 1)
    volume = {name: float(mesh_facts(m)["shell_volumes_mm3"].sum()) for name, m in meshes.items()}
    return {name: {"label": k, "voxels_mm3": round(float(counts[k]) * voxel_mm3, 1),
                   "mesh_volume_mm3": round(volume[name], 1) if name in meshes else 0.0}
            for k, name in LABEL_NAMES.items() if counts[k] > 0 or name in meshes}


def build_report(volume: Volume, config: Config, bone: trimesh.Trimesh, cut: Resection | None,
                 segment_stats: dict, seconds: dict) -> dict:
    meshes = {"bone": mesh_stats(bone)}
    planes = []
    if cut is not None:
        meshes["host"] = mesh_stats(cut.host)
        meshes["implant"] = mesh_stats(cut.implant)
        for plane, contact, imp, host, settled in zip(config.resection.planes, cut.implant_planes,
                                                      cut.implant_contact_faces, cut.host_cut_faces, cut.settled):
            on_plane = np.abs(contact.signed_distance_mm(cut.implant.vertices[cut.implant.faces[imp]].reshape(-1, 3)))
            centre, radius = face_centre(cut.host, host)
            planes.append({
                "name": plane.name,
                "point_lps_mm": list(plane.point_lps_mm),
                "normal_lps": list(plane.normal_lps),
                "margin_mm": plane.margin_mm,
                "cut_point_lps_mm": list(plane.cut_plane().point_lps_mm),
                "implant_contact_area_mm2": round(float(cut.implant.area_faces[imp].sum()), 3),
                "host_cut_area_mm2": round(float(cut.host.area_faces[host].sum()), 3),
                "contact_flatness_mm": float(on_plane.max()),
                # Bone vertices within a micrometre of the plane, put on it or
                # moved off it before the cut (pipeline.geometry.near_plane).
                "bone_vertices_settled": settled,
                "host_cut_centre_lps_mm": [round(float(c), 3) for c in centre],
                "host_cut_radius_mm": round(radius, 3),
            })
    return {
        "input": input_summary(volume),
        "config": config.as_dict(),
        "segmentation": segment_stats,
        "meshes": meshes,
        "planes": planes,
        "resection_shells": cut.shells if cut is not None else None,
        "timings_s": seconds,
        "versions": package_versions(),
        "frame": "LPS, millimetres (DICOM patient coordinates)",
    }


def face_centre(mesh: trimesh.Trimesh, faces: np.ndarray) -> tuple[np.ndarray, float]:
    """Area-weighted centre of ``faces`` of ``mesh`` (a cut face) and the
    largest distance from it to their vertices (mm)."""
    # Only these faces' corners (mesh.triangles would cache every face's).
    triangles = np.asarray(mesh.vertices)[mesh.faces[faces]]
    area = doubled_areas(triangles) / 2
    centre = (triangles.mean(axis=1) * area[:, None]).sum(axis=0) / max(float(area.sum()), 1e-12)
    return centre, float(np.linalg.norm(triangles.reshape(-1, 3) - centre, axis=1).max(initial=0.0))


def input_summary(volume: Volume) -> dict:
    return {
        **{k: v for k, v in volume.meta.items()},
        "dimensions": list(volume.shape),
        "axes": "slice, row, column",
        "spacing_mm": [round(float(s), 6) for s in volume.spacing_mm],
        "orientation": orientation_code(volume.affine),
        "affine_index_to_lps_mm": np.round(volume.affine, 6).tolist(),
        "notes": list(volume.notes),
    }


def package_versions() -> dict[str, str]:
    """The installed versions of the pipeline and the libraries that shape its outputs."""
    return {p: _version(p) for p in PACKAGES}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"
