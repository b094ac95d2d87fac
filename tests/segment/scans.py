"""Scans the labelling tests make: the real ones' figures and labels (once
per test session), and the same scan with a bone made soft tissue, its
patient frame turned or resized, and what the mesh job says of its bones
without making their meshes."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from pipeline.config import Config
from pipeline.geometry.surface import surface_labels
from pipeline.segment.labels import label_bones
from pipeline.segment.mask import segment_bone


def soft_tissue_where(volume, mask: np.ndarray, margin_voxels: int = 2):
    """(``volume`` with ``mask`` and ``margin_voxels`` around it made soft
    tissue, 40 HU, as after its resection or destruction; the voxels made so)."""
    from pipeline.volume import Volume

    gone = ndimage.binary_dilation(mask, iterations=margin_voxels)
    return Volume(np.where(gone, np.float32(40.0), volume.hu), volume.affine), gone


def lytic_ball(volume, centre_lps_mm, radius_mm: float):
    """(``volume`` with its bone inside a ball about ``centre_lps_mm`` made
    soft tissue, 40 HU, as a lytic tumour leaves it; the ball)."""
    from pipeline.segment.grid import Grid, ball
    from pipeline.volume import Volume

    box, distance = ball(np.asarray(centre_lps_mm, dtype=np.float64), radius_mm,
                         Grid(volume, tuple(slice(0, n) for n in volume.shape)))
    inside = np.zeros(volume.shape, dtype=bool)
    inside[box] = distance <= radius_mm
    return Volume(np.where(inside & (volume.hu > 40.0), np.float32(40.0), volume.hu), volume.affine), inside


def upper_part(mask: np.ndarray, volume, share: float) -> np.ndarray:
    """The cranial ``share`` of ``mask``'s voxels (by LPS z)."""
    at = np.argwhere(mask)
    z = volume.index_to_lps(at.astype(float))[:, 2]
    upper = np.zeros_like(mask)
    upper[tuple(at[z >= np.quantile(z, 1.0 - share)].T)] = True
    return upper


def about_centre(volume, linear: np.ndarray):
    """The same voxels with the patient frame mapped by ``linear`` (3 x 3)
    about the scan's centre."""
    from pipeline.volume import Volume

    centre = volume.index_to_lps(np.array(volume.shape)[None] / 2.0)[0]
    frame = np.eye(4)
    frame[:3, :3] = linear
    frame[:3, 3] = centre - linear @ centre
    return Volume(volume.hu, frame @ volume.affine)


def turned_frame(volume, axis, degrees: float):
    """The same voxels with the patient frame turned ``degrees`` about
    ``axis`` (LPS) through the scan's centre: a patient lying askew."""
    from ..helpers import rotation

    return about_centre(volume, rotation(list(axis), np.radians(degrees)))


def resized(volume, size: float):
    """The same voxels ``size`` times as large about the scan's centre: the
    same patient larger or smaller."""
    return about_centre(volume, size * np.eye(3))


def labelled(volume, config: Config | None = None) -> SimpleNamespace:
    """What :func:`~pipeline.run.run_mesh` says of ``volume``'s bones (its ``labels``,
    ``pelvis_fit`` and the report's ``segmentation``) without making their
    meshes, a second or two less for each scan these tests make up."""
    config = config or Config()
    bone = label_bones(volume, mask := segment_bone(volume, config.segment), config.segment)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[bone.box] = surface_labels(volume, bone, config.surface)[1]
    return SimpleNamespace(labels=labels, pelvis_fit=bone.fit,
                           report={"segmentation": {**mask.stats, **bone.stats}})


@functools.lru_cache(maxsize=None)
def real_case(case: str):
    from pipeline import evaluate
    found = {"totalseg_example": evaluate.totalseg_figures,
             "pelvic_ref_003": evaluate.pelvic_ref_figures}[case]()
    if found is None:
        pytest.skip(f"real data not present (../shared/real_ct/{case})")
    return found
