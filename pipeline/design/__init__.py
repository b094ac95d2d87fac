"""Design: what is made on the cut bone, and the numbers that prove it fits.

- ``implant``: the implant's source (the resected bone, or the healthy side
  mirrored and fitted) and the fit report;
- ``fit``: per contact face and per implant: areas, outline overlap, gaps,
  flatness, volume, mass, wall thickness;
- ``symmetry``: the mid-sagittal plane of a pelvis from its bone surface;
- ``plate``: a plate that follows the bone (the outer surface over a
  footprint, offset by a clearance and thickened): implant flanges, guide seats;
- ``fixation``: flanges on the host bone and screws in safe bone corridors;
- ``guides``: patient-specific cutting guides, one printed block per resection plane.
"""

from .fixation import BoneScene, Fixation, Screw, fix_implant
from .implant import fit_report, fit_summary_lines, mirrored_source
from .plate import PlateContact, band, bone_plate, facing, plate_contact

__all__ = ["BoneScene", "Fixation", "Screw", "fix_implant", "fit_report", "fit_summary_lines", "mirrored_source", "PlateContact", "band", "bone_plate", "facing",
           "plate_contact"]
