"""A statistical shape model of the pelvis: both hip bones and the sacrum (S1-S3), jointly.

Built by ``make shape-model`` (:mod:`pipeline.segment.build_shape_model`) from
the JHU pelvis atlas (40 pelves in vertex correspondence; Han et al., Phys.
Med. Biol. 2019, CC BY 4.0, not for clinical use: see ``data/README.md``)
and committed as ``data/pelvis_shape_model.npz``; nothing is read from
outside the package at run time.

One joint shape holds all three bones, so their relative pose (the
sacroiliac joints, the symphysis) is part of the shape. A shape is

    x = mean + sum_i b_i * sd_i * mode_i          (model frame, mm)

with ``b`` in standard deviations, and it is placed in the patient by a
similarity transform ``p = scale * x @ rotation.T + translation`` (LPS mm).
The model frame is LPS-like: +x left, +y posterior, +z superior, centred on
the joint centroid, at the atlas' mean size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..bones import LABEL_IDS

MODEL_FILE = Path(__file__).parent / "data" / "pelvis_shape_model.npz"
# The bones of the model, in the order of their vertex blocks.
MODEL_BONES = ("hip_left", "hip_right", "sacrum")


@dataclass(frozen=True, eq=False)
class ShapeModel:
    """``mean_mm``: (N, 3) mean shape; ``modes``: (K, N, 3) orthonormal modes;
    ``sd_mm``: (K,) standard deviation of each mode; ``faces``: bone name ->
    (F, 3) triangles indexing the joint vertex array (closed, outward);
    ``vertex_bone``: (N,) label value (:mod:`pipeline.bones`) of each vertex;
    ``landmarks``: name -> vertex indices (e.g. ``acetabulum_left``)."""

    mean_mm: np.ndarray
    modes: np.ndarray
    sd_mm: np.ndarray
    faces: dict[str, np.ndarray]
    vertex_bone: np.ndarray
    landmarks: dict[str, np.ndarray]

    @property
    def n_modes(self) -> int:
        return len(self.sd_mm)

    def shape_mm(self, b_sd: np.ndarray | None = None) -> np.ndarray:
        """(N, 3) shape in the model frame for mode weights ``b_sd`` (standard
        deviations; fewer than ``n_modes`` weights leave the rest at 0)."""
        if b_sd is None or len(b_sd) == 0:
            return self.mean_mm.copy()
        b = np.asarray(b_sd, dtype=np.float64)
        k = len(b)
        return self.mean_mm + np.tensordot(b * self.sd_mm[:k], self.modes[:k], axes=1)

    def bone_vertices(self, bone: str) -> np.ndarray:
        """Indices of the vertices of one bone."""
        return np.flatnonzero(self.vertex_bone == LABEL_IDS[bone])


def save_model(path: Path, model: ShapeModel, **extra: np.ndarray) -> None:
    """Write ``model`` compactly: modes as float16 (their entries are below 0.1
    and float16 keeps 3 significant digits, ~0.01 mm at 3 SD), the rest exact."""
    np.savez_compressed(
        path, mean_mm=model.mean_mm.astype(np.float32), modes=model.modes.astype(np.float16),
        sd_mm=model.sd_mm.astype(np.float32), vertex_bone=model.vertex_bone.astype(np.uint8),
        **{f"faces_{b}": f.astype(np.uint16) for b, f in model.faces.items()},
        **{f"landmark_{n}": v.astype(np.uint16) for n, v in model.landmarks.items()}, **extra)


@lru_cache(maxsize=2)
def load_model(path: Path = MODEL_FILE) -> ShapeModel:
    """The committed pelvis model (read once per process)."""
    with np.load(path) as data:
        modes = data["modes"].astype(np.float64)
        # Re-orthonormalise after float16 storage: the fit relies on orthonormal modes.
        flat, _ = np.linalg.qr(modes.reshape(len(modes), -1).T)
        flat *= np.sign(np.einsum("ij,ji->i", flat.T, modes.reshape(len(modes), -1).T))[None, :]
        return ShapeModel(
            mean_mm=data["mean_mm"].astype(np.float64),
            modes=flat.T.reshape(modes.shape),
            sd_mm=data["sd_mm"].astype(np.float64),
            faces={b: data[f"faces_{b}"].astype(np.int64) for b in MODEL_BONES},
            vertex_bone=data["vertex_bone"],
            landmarks={k[len("landmark_"):]: data[k].astype(np.int64) for k in data.files
                       if k.startswith("landmark_")})
