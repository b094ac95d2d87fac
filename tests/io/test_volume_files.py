"""NIfTI and NRRD input: written here with nibabel and pynrrd from a phantom with known LPS
geometry (conversions done by hand in the test), read back as the same physical volume."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.io.dicom import load_ct
from pipeline.volume import Volume, orientation_code

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


def _nrrd_with_axis(volume: Volume, path: Path, values: int, first: bool) -> Path:
    """``volume`` as a 4-D NRRD: a non-spatial axis of ``values`` (space
    direction 'none') fastest (``first``, a vector's components) or slowest."""
    directions = volume.affine[:3, [2, 1, 0]].T
    none = np.full((1, 3), np.nan)
    data = np.repeat(volume.hu.astype(np.int16)[..., None], values, axis=3) if first else \
        np.repeat(volume.hu.astype(np.int16)[None], values, axis=0)
    kind = "vector" if first else "list"
    header = {"space": "left-posterior-superior", "space origin": volume.affine[:3, 3],
              "space directions": np.vstack([none, directions] if first else [directions, none]),
              "kinds": [kind, "domain", "domain", "domain"] if first else ["domain", "domain", "domain", kind]}
    nrrd.write(str(path), data, header, index_order="C")
    return path


def test_a_nrrd_of_several_values_per_voxel_is_refused_and_one_of_one_is_read(tmp_path, phantom):
    """An axis without a space direction holds values, not places. A
    3-component vector NRRD of one slice was read as a 3-slice volume; a
    4-D file of one volume whose extra axis was last was refused."""
    with pytest.raises(InputError, match=r"vec\.nrrd: 3 values per voxel \(NRRD kinds vector domain domain "
                                         r"domain\); a CT has one"):
        load_ct(_nrrd_with_axis(phantom, tmp_path / "vec.nrrd", 3, first=True))
    for first in (True, False):
        loaded = load_ct(_nrrd_with_axis(phantom, tmp_path / f"one{first}.nrrd", 1, first=first))
        assert_same_physical_volume(loaded, phantom)


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


def _nifti(volume, path, **header):
    """``volume`` as a NIfTI with its header fields set as given (sform_code, qform_code, pixdim, ...)."""
    ras = LPS_TO_RAS @ volume.affine[:, [2, 1, 0, 3]]
    img = nib.Nifti1Image(np.transpose(volume.hu, (2, 1, 0)).astype(np.int16), ras)
    img.set_sform(ras, code=1)
    img.set_qform(ras, code=1)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, path)
    if path.name.endswith(".gz"):   # nibabel rewrites codes on save: patch the stored header too
        import gzip
        raw = bytearray(gzip.decompress(path.read_bytes()))
        hdr = nib.Nifti1Header(bytes(raw[:348]), check=False)
        for key, value in header.items():
            hdr[key] = value
        raw[:348] = hdr.binaryblock
        path.write_bytes(gzip.compress(bytes(raw)))
    return path


@pytest.mark.parametrize("header, message", [
    # nibabel makes a frame up: every mesh 305 mm off, left and right swapped, exit 0.
    ({"sform_code": 0, "qform_code": 0}, "neither sform nor qform is set"),
    # nibabel takes a 0 as 1 mm: 3 mm slices read as 1 mm, bone -72 %, exit 0.
    ({"sform_code": 0, "qform_code": 1, "pixdim": [1.0, 0.7, 0.8, 0.0, 1, 1, 1, 1]}, r"pixdim \[0\.7.*, 0\.0\] holds a 0"),
    # 300 mm voxels: the fit asked for 141 GiB and stopped with a traceback.
    ({"srow_x": [300.0, 0, 0, 0], "srow_y": [0, 300.0, 0, 0], "srow_z": [0, 0, 300.0, 0]}, "voxel size 300 x 300 x 300 mm"),
])
def test_nifti_without_a_usable_geometry_is_refused(tmp_path, phantom, header, message):
    path = _nifti(phantom, tmp_path / "ct.nii.gz", **header)
    with pytest.raises(InputError, match=message) as err:
        load_ct(path)
    assert str(err.value).startswith(str(path))


def test_nifti_in_metres_is_read_in_millimetres(tmp_path, phantom):
    volume = phantom
    ras = LPS_TO_RAS @ volume.affine[:, [2, 1, 0, 3]]
    metres = ras.copy()
    metres[:3] /= 1000.0
    img = nib.Nifti1Image(np.transpose(volume.hu, (2, 1, 0)).astype(np.int16), metres)
    img.set_sform(metres, code=1)
    img.header.set_xyzt_units("meter")
    nib.save(img, tmp_path / "ct.nii")
    assert_same_physical_volume(load_ct(tmp_path / "ct.nii"), volume)


def test_corrupt_gzip_few_slices_and_colour_voxels_are_refused(tmp_path, phantom):
    """A gzip stream with corrupted middle bytes: nibabel read garbage (it
    never reaches the CRC); two slices: a near-empty result with exit 0; RGB
    voxels: a numpy traceback."""
    path = _nifti(phantom, tmp_path / "ct.nii.gz")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="cannot read NIfTI"):
        load_ct(path)
    thin = phantom.__class__(phantom.hu[:2], phantom.affine, phantom.meta, ())
    with pytest.raises(InputError, match="a volume needs at least 3 along each axis"):
        load_ct(_nifti(thin, tmp_path / "thin.nii.gz"))
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    with pytest.raises(InputError, match="are not one real number each"):
        load_ct(tmp_path / "rgb.nii.gz")


@pytest.mark.parametrize("name, content", [("ct.nii", b""), ("ct.nii.gz", b""), ("ct.nii", b"\x5c\x01\x00\x00")])
def test_an_empty_or_headless_nifti_is_refused_naming_it(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if not name.endswith(".gz") else __import__("gzip").compress(content))
    with pytest.raises(InputError, match="cannot read NIfTI") as err:
        load_ct(path)
    assert str(err.value).startswith(str(path))


def test_a_broken_sform_falls_back_to_the_qform_and_a_far_origin_is_refused(tmp_path, phantom):
    """NIfTI's standard: the qform stands when the sform can not. A singular
    or NaN sform was refused (nibabel keeps it) though a valid qform was
    there. Voxels 100 m from the origin ended in a mesh error (an STL's
    float32 vertices 8 um apart there) that named no file."""
    for srow in ([0.0, 0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0, 0.0]):
        path = _nifti(phantom, tmp_path / "ct.nii.gz", srow_x=srow, sform_code=1, qform_code=1)
        assert_same_physical_volume(load_ct(path), phantom)
    far = phantom.__class__(phantom.hu, phantom.affine + np.array([[0, 0, 0, 1e5]] * 3 + [[0, 0, 0, 0]]), phantom.meta, ())
    with pytest.raises(InputError, match=r"voxels lie up to 100 m from the origin, a CT's within 10 m"):
        load_ct(_nifti(far, tmp_path / "far.nii.gz"))
