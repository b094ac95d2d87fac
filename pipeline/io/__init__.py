"""Reading and writing: the only stage that touches files (with the CLI that calls it).

Reading, CT -> :class:`~pipeline.volume.Volume` (LPS mm affine, HU):

- ``dicom``: a DICOM folder (files found by content, grouped into series,
  sorted along the slice normal) or a volume file -> ``load_ct``; ``scan_folder``
  lists the series;
- ``headers``: one file's header, never its pixels;
- ``pixels``: the chosen series' pixels -> HU, decoded on all cores;
- ``resample``: the slice axis from positions, uneven steps onto a uniform grid;
- ``volume_files``: NIfTI and NRRD volumes;
- ``segmentation``: label maps of other tools (3D Slicer, TotalSegmentator)
  and our own, in place of the automatic labels (``read_label_map``).

Writing:

- ``export``: STL (LPS mm header), NIfTI, 3D Slicer segmentation and
  markups, JSON and PNG bytes, and the all-or-nothing writer of a run's
  output folder;
- ``dicom_write``: a Volume as a CT DICOM series (phantoms, loader tests);
- ``fingerprint``: digests of what a run's outputs were made from (CT bytes,
  config values, label map, code), and whether an output folder is current.
"""

from .dicom import choose_series, load_ct, load_series, scan_folder
from .dicom_write import write_series
from .export import (OUTPUT_NAMES, QA_FOLDER, check_writable_folder, json_bytes, markups_bytes, nifti_bytes,
                     output_lock, png_bytes, remove_staging, seg_nrrd_bytes, stl_bytes, write_file, write_outputs)
from .fingerprint import OUTPUT_DIGESTS, current_report, output_digest, run_fingerprint
from .segmentation import read_label_map
from .volume_files import is_volume_file, load_volume_file

__all__ = ["choose_series", "load_ct", "load_series", "scan_folder", "write_series", "OUTPUT_NAMES", "QA_FOLDER",
           "json_bytes", "markups_bytes", "nifti_bytes", "png_bytes", "read_label_map", "seg_nrrd_bytes",
           "stl_bytes", "write_outputs", "is_volume_file", "load_volume_file", "remove_staging", "write_file",
           "current_report", "output_digest", "OUTPUT_DIGESTS", "run_fingerprint", "check_writable_folder",
           "output_lock"]
