"""TotalSegmentator's own labels of its example CT, used with --labels.

Its labels take in the partial-volume layer and touch across the joints; ours
are the voxel centres inside each bone's half-maximum surface, with a voxel
between bones. So each bone keeps every voxel of its label that is more than
a voxel inside it and away from other bones, and gains none more than a
voxel outside it; the counts in between are stated in the README.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipeline.bones import LABEL_NAMES
from pipeline.cli import main as cli_main
from pipeline.io.segmentation import read_label_map
from pipeline.io.volume_files import load_volume_file

from .helpers import REAL_CT

pytestmark = [pytest.mark.real_data, pytest.mark.slow]
CASE = REAL_CT / "totalseg_example"
CUBE = np.ones((3, 3, 3), dtype=bool)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    if not CASE.is_dir():
        pytest.skip("real data not present (../shared/real_ct/totalseg_example)")
    out = tmp_path_factory.mktemp("totalseg")
    assert cli_main(["mesh", str(CASE / "example_ct.nii.gz"), "--labels",
                     str(CASE / "example_seg_fast_force_split.nii.gz"), "--out", str(out), "--quiet", "--no-qa"]) == 0
    return out


def test_each_bone_is_the_files_label_within_the_half_maximum_convention(out):
    theirs = read_label_map(CASE / "example_seg_fast_force_split.nii.gz")
    ours = read_label_map(out / "labels.nii.gz")
    ct = load_volume_file(CASE / "example_ct.nii.gz")
    assert np.allclose(theirs.affine, ct.affine, atol=1e-4) and theirs.labels.shape == ct.shape
    present = sorted(set(np.unique(theirs.labels)) - {0})
    # Its T12 and T11 are other bone: "lumbar" is L1-L5.
    assert [LABEL_NAMES[k] for k in present] == ["hip_left", "hip_right", "sacrum", "femur_left", "femur_right",
                                                 "lumbar", "other"]
    for k in present:
        file, mine = theirs.labels == k, ours.labels == k
        others = (theirs.labels > 0) & ~file
        deep = ndi.binary_erosion(file, CUBE) & ~ndi.binary_dilation(others, CUBE, iterations=2)
        assert not (deep & ~mine).any(), LABEL_NAMES[k]
        assert not (mine & ~ndi.binary_dilation(file, CUBE)).any(), LABEL_NAMES[k]
        assert deep.sum() < mine.sum() < file.sum(), LABEL_NAMES[k]


def test_the_report_says_where_the_labels_came_from(out):
    import json

    source = json.loads((out / "report.json").read_text())["segmentation"]["labels_file"]
    assert source["format"] == "NIfTI label map, names from its own label table"
    assert source["resampled"] is False
    assert source["mapped"]["vertebrae_S1"] == "sacrum" and source["mapped"]["vertebrae_L5"] == "lumbar"
    assert "liver" in source["ignored"] and "hip_left" not in source["ignored"]
    assert source["bone_fraction"] > 0.4 > 0.01 > source["bone_fraction_around"]


def test_the_meshes_are_closed_solids(out):
    import trimesh

    for name in ("bone", "bone_femur_left", "bone_femur_right", "bone_lumbar"):
        mesh = trimesh.load(out / f"{name}.stl")
        assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0, name
