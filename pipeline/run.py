"""The mesh job as one pure function: Volume + Config -> meshes, mask, report.

No file I/O here: the CLI reads the CT, calls :func:`run_mesh`, and hands the
result to the writers. ``log`` receives one line per finished stage.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Iterator

import numpy as np
import trimesh

from .config import Config
from .meshes import mesh_stats, validate_solid
from .parallel import parallel
from .resect import Resection, resect
from .segment import segment_bone
from .surface import bone_surface
from .volume import Volume, orientation_code

Log = Callable[[str], None]
PACKAGES = ("pelvic-implant-pipeline", "numpy", "scipy", "scikit-image", "pydicom", "trimesh",
            "manifold3d", "nibabel")


@dataclass(frozen=True, eq=False)
class MeshResult:
    bone: trimesh.Trimesh
    host: trimesh.Trimesh | None
    implant: trimesh.Trimesh | None
    bone_mask: np.ndarray  # bool, the volume's grid: voxel centres inside bone.stl
    report: dict


class Timer:
    """Wall time per named stage, announced through ``log``."""

    def __init__(self, log: Log | None) -> None:
        self.log = log
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        if self.log:
            self.log(f"{name:<9} {self.seconds[name]:7.2f} s")


def run_mesh(volume: Volume, config: Config, *, log: Log | None = None,
             timer: Timer | None = None) -> MeshResult:
    timer = timer or Timer(log)
    with timer.stage("segment"):
        bone_mask = segment_bone(volume, config.segment)
    with timer.stage("surface"):
        surface = bone_surface(volume, bone_mask, config.surface)
    planes = config.resection.planes
    cut: Resection | None = None
    if planes:
        with timer.stage("resect"):
            # The cut does not need the full check (manifold3d refuses a
            # non-manifold input itself), so both run at once.
            cut, _ = parallel(lambda: resect(surface.mesh, planes,
                                                 min_fragment_mm3=config.resection.min_fragment_mm3),
                              lambda: validate_solid(surface.mesh, "bone"))
            parallel(lambda: validate_solid(cut.host, "host"),
                     lambda: validate_solid(cut.implant, "implant"))
    else:
        validate_solid(surface.mesh, "bone")
        if log:
            log("no resection planes in the config: writing the bone outputs only")
    report = build_report(volume, config, surface.mesh, cut, bone_mask.stats, timer.seconds)
    return MeshResult(bone=surface.mesh, host=cut.host if cut else None,
                      implant=cut.implant if cut else None,
                      bone_mask=surface.full_mask(volume.shape), report=report)


def build_report(volume: Volume, config: Config, bone: trimesh.Trimesh, cut: Resection | None,
                 segment_stats: dict, seconds: dict) -> dict:
    meshes = {"bone": mesh_stats(bone)}
    planes = []
    if cut is not None:
        meshes["host"] = mesh_stats(cut.host)
        meshes["implant"] = mesh_stats(cut.implant)
        for plane, imp, host in zip(config.resection.planes, cut.implant_contact_faces, cut.host_cut_faces):
            on_plane = np.abs(plane.signed_distance_mm(cut.implant.vertices[cut.implant.faces[imp]].reshape(-1, 3)))
            planes.append({
                "name": plane.name,
                "point_lps_mm": list(plane.point_lps_mm),
                "normal_lps": list(plane.normal_lps),
                "implant_contact_area_mm2": round(float(cut.implant.area_faces[imp].sum()), 3),
                "host_cut_area_mm2": round(float(cut.host.area_faces[host].sum()), 3),
                "contact_flatness_mm": float(on_plane.max()),
            })
    return {
        "input": input_summary(volume),
        "config": config.as_dict(),
        "segmentation": segment_stats,
        "meshes": meshes,
        "planes": planes,
        "resection_shells": cut.shells if cut is not None else None,
        "timings_s": seconds,
        "versions": {p: _version(p) for p in PACKAGES},
        "frame": "LPS, millimetres (DICOM patient coordinates)",
    }


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


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"
