"""NIfTI and NRRD input: written here with nibabel and pynrrd from a phantom with known LPS
geometry (conversions done by hand in the test), read back as the same physical volume."""

from __future__ import annotations

import nibabel as nib
import nrrd
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.io.dicom import load_ct
from pipeline.volume import orientation_code

from .test_dicom import assert_same_physical_volume, real_data, rotation

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _oblique(make_phantom):
    axial = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation("x", 15.0) @ rotation("z", 30.0) @ axial * [2.0, 0.8, 0.7]
    affine[:3, 3] = [20.0, -35.0, 110.0]
    return make_phantom(affine)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_is_converted_to_the_same_lps_volume(tmp_path, make_phantom, suffix):
    volume = _oblique(make_phantom)
    # NIfTI axis i is our column axis (fastest), k our slice axis; the affine is RAS.
    ras = LPS_TO_RAS @ volume.affine[:, [2, 1, 0, 3]]
    img = nib.Nifti1Image(np.transpose(volume.hu, (2, 1, 0)).astype(np.int16), ras)
    img.set_sform(ras, code=1)
    path = tmp_path / f"ct{suffix}"
    nib.save(img, path)
    loaded = load_ct(path)
    assert_same_physical_volume(loaded, volume)
    assert loaded.meta["source_format"] == "NIfTI"


@pytest.mark.parametrize("space, flip", [("left-posterior-superior", [1, 1, 1]),
                                         ("right-anterior-superior", [-1, -1, 1])])
@pytest.mark.parametrize("detached", [False, True])
def test_nrrd_is_converted_to_the_same_lps_volume(tmp_path, make_phantom, space, flip, detached):
    volume = _oblique(make_phantom)
    directions = (volume.affine[:3, [2, 1, 0]] * np.array(flip)[:, None]).T   # rows: file axes
    header = {"space": space, "space directions": directions,
              "space origin": volume.affine[:3, 3] * flip}
    path = tmp_path / ("ct.nhdr" if detached else "ct.nrrd")
    nrrd.write(str(path), volume.hu.astype(np.int16), header, index_order="C",
               detached_header=detached)
    loaded = load_ct(path)
    assert_same_physical_volume(loaded, volume)


def test_nrrd_without_space_is_refused(tmp_path, phantom, capsys):
    path = tmp_path / "ct.nrrd"
    nrrd.write(str(path), phantom.hu, {"spacings": [2.0, 0.8, 0.7]}, index_order="C")
    with pytest.raises(InputError, match="NRRD 'space' is None"):
        load_ct(path)
    assert main(["mesh", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "ct.nrrd" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_two_dimensional_nifti_is_refused(tmp_path):
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), path)
    with pytest.raises(InputError, match="3-D volume is needed"):
        load_ct(path)


@pytest.mark.real_data
def test_real_nifti_example_in_lps():
    volume = load_ct(real_data("totalseg_example", "example_ct.nii.gz"))
    assert volume.shape == (112, 101, 122)
    np.testing.assert_allclose(volume.spacing_mm, [3.0, 3.0, 3.0], atol=1e-4)
    # RAS axis codes: i increases to the right, j anterior, k superior -> "SAR" in LPS letters.
    assert orientation_code(volume.affine) == "SAR"
    assert -1300 < volume.hu.min() and volume.hu.max() < 4000
