"""Design: what is made on the cut bone, and the numbers that prove it fits.

- ``implant``: the implant's source (the resected bone, or the healthy side
  mirrored and fitted) and the fit report;
- ``fit``: per contact face and per implant: areas, outline overlap, gaps,
  flatness, volume, mass, wall thickness;
- ``symmetry``: the mid-sagittal plane of a pelvis from its bone surface.
"""

from .implant import fit_report, fit_summary_lines, mirrored_source

__all__ = ["fit_report", "fit_summary_lines", "mirrored_source"]
