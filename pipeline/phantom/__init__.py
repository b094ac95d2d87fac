"""Phantoms with closed-form truth: CT volumes whose bones, surfaces and labels are known.

- ``analytic``: the SDF primitives, CSG and rendering (Gaussian blur as
  partial volume, noise) every phantom uses; sphere and ellipsoid phantoms.
- ``mesh_sdf``: exact signed distance to a closed triangle mesh, at points and
  on grids (the truth of mesh-shaped bones).
- ``body``: the soft tissues around the bones (fat, muscle, bladder, contrast,
  calcifications) and the CT couch.
- ``pelvis``: an anatomical pelvis whose hip bones and sacrum come from the
  pelvis shape model, with femurs, L5-L4, S4-coccyx, joint spaces, cortex and
  marrow; variants with a lesion, contrast or osteoporotic bone.
"""

from .analytic import Phantom, ellipsoid_phantom, sphere_phantom
from .pelvis import pelvis_phantom, preset

__all__ = ["Phantom", "ellipsoid_phantom", "pelvis_phantom", "preset", "sphere_phantom"]
