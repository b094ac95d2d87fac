"""What a run's outputs were made from: CT content (not names), config values, series, QA, code."""

from __future__ import annotations

import json

import nrrd
import numpy as np
import pytest

from pipeline.config import Config, SegmentConfig
from pipeline.errors import InputError
from pipeline.io import current_report, run_fingerprint
from pipeline.io.fingerprint import OUTPUT_DIGESTS, ct_digest, output_digest

VERSIONS = {"numpy": "1"}


def _folder(tmp_path):
    folder = tmp_path / "ct"
    (folder / "sub").mkdir(parents=True)
    (folder / "IM1").write_bytes(b"slice one")
    (folder / "sub" / "IM2").write_bytes(b"slice two")
    return folder


def test_ct_digest_follows_content_not_names(tmp_path):
    folder = _folder(tmp_path)
    before = ct_digest(folder)
    (folder / "sub" / "IM2").rename(folder / "renamed.dcm")
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    assert ct_digest(moved) == before
    (moved / "IM1").write_bytes(b"slice 0ne")
    assert ct_digest(moved) != before


def test_outputs_written_inside_the_ct_folder_are_not_part_of_the_ct(tmp_path):
    """`mesh CT --out CT/out`: the outputs entered the CT's digest, so the
    next run's fingerprint differed and `batch --resume` never found the case
    up to date. A folder holding a run's report (with its fingerprint) is left
    out; any other file below the CT folder still counts."""
    folder = _folder(tmp_path)
    before = ct_digest(folder)
    out = folder / "out"
    (out / "qa").mkdir(parents=True)
    (out / "bone.stl").write_bytes(b"solid")
    (out / "qa" / "slice_axial.png").write_bytes(b"png")
    (out / "report.json").write_text(json.dumps({"fingerprint": {"digest": "x"}, "outputs": {"bone.stl": 5}}))
    assert ct_digest(folder) == before
    (out / "report.json").write_text(json.dumps({"note": "a file of the user's"}))
    assert ct_digest(folder) != before


def test_ct_digest_of_a_detached_nrrd_covers_its_data_file(tmp_path):
    path = tmp_path / "ct.nhdr"
    data = np.zeros((3, 4, 5), dtype=np.int16)
    nrrd.write(str(path), data, {"space": "left-posterior-superior"}, index_order="C", detached_header=True)
    before = ct_digest(path)
    data[1, 2, 3] = 7
    nrrd.write(str(path), data, {"space": "left-posterior-superior"}, index_order="C", detached_header=True)
    assert ct_digest(path) != before


def test_missing_ct_is_refused(tmp_path):
    with pytest.raises(InputError, match="CT not found"):
        ct_digest(tmp_path / "nothing")


def test_fingerprint_changes_with_config_values_series_and_qa_only(tmp_path):
    folder = _folder(tmp_path)

    def digest(config=Config(), series=None, qa=True):
        return run_fingerprint(folder, config.as_dict(), series_uid=series, qa=qa, versions=VERSIONS)["digest"]

    base = digest()
    assert digest(Config(source="another/place.toml")) == base   # where the config lives does not matter
    assert digest(Config(segment=SegmentConfig(threshold_hu=201.0))) != base
    assert digest(series="1.2.3") != base
    assert digest(qa=False) != base
    assert run_fingerprint(folder, Config().as_dict(), series_uid=None, qa=True,
                           versions={"numpy": "2"})["digest"] != base


def test_fingerprint_follows_the_content_of_a_label_map_used_instead_of_the_labels(tmp_path):
    """A run with --labels is made from that file too: editing it (a
    correction in 3D Slicer) makes earlier outputs stale; renaming it does not."""
    folder = _folder(tmp_path)
    labels = tmp_path / "edited_labels.nii.gz"
    labels.write_bytes(b"segments v1")

    def digest(path):
        return run_fingerprint(folder, Config().as_dict(), series_uid=None, qa=True, versions=VERSIONS,
                               labels_path=path)["digest"]

    first = digest(labels)
    assert first != digest(None)
    moved = labels.rename(tmp_path / "renamed_labels.nii.gz")
    assert digest(moved) == first
    moved.write_bytes(b"segments v2")
    assert digest(moved) != first


def _written(tmp_path, digest="abc"):
    out = tmp_path / "out"
    (out / "qa").mkdir(parents=True)
    (out / "bone.stl").write_bytes(b"x" * 10)
    (out / "qa" / "view.png").write_bytes(b"y" * 3)
    report = {"fingerprint": {"digest": digest}, "outputs": {"bone.stl": 10, "qa/view.png": 3},
              OUTPUT_DIGESTS: {"bone.stl": output_digest(b"x" * 10), "qa/view.png": output_digest(b"y" * 3)}}
    (out / "report.json").write_text(json.dumps(report))
    return out


def test_current_report_needs_the_same_digest_and_every_listed_file_with_its_size_and_content(tmp_path):
    out = _written(tmp_path)
    assert current_report(out, "abc")["outputs"] == {"bone.stl": 10, "qa/view.png": 3}
    assert current_report(out, "abd") is None
    (out / "bone.stl").write_bytes(b"x" * 11)
    assert current_report(out, "abc") is None
    (out / "bone.stl").write_bytes(b"x" * 9 + b"z")   # edited in place: the same size (an STL's triangle count)
    assert current_report(out, "abc") is None
    (out / "bone.stl").write_bytes(b"x" * 10)
    assert current_report(out, "abc") is not None
    (out / "qa" / "view.png").unlink()
    assert current_report(out, "abc") is None
    (out / "report.json").write_text("{ not json")
    assert current_report(out, "abc") is None
    assert current_report(tmp_path / "nothing", "abc") is None
