"""Phantoms with closed-form truth: CT volumes whose bones, surfaces and labels are known.

- ``analytic``: spheres, ellipsoids and a pelvis built from primitives (hip
  bones, sacrum, L5, femurs with joint spaces, cortex over cancellous bone,
  soft tissue, a couch), with partial-volume blur and noise, plus variants
  (any grid, a lytic lesion, osteoporotic bone, contrast).
- ``mesh_sdf``: exact signed distance to a closed triangle mesh, at points and
  on grids (the truth of mesh-shaped bones).
- ``anatomical``: a pelvis whose hip bones and sacrum come from the pelvis
  shape model (work in progress: see its module docstring).
"""

from .analytic import Phantom, ellipsoid_phantom, sphere_phantom
from .anatomical import anatomical_pelvis_phantom as pelvis_phantom
from .anatomical import anatomical_preset as preset

__all__ = ["Phantom", "ellipsoid_phantom", "pelvis_phantom", "preset", "sphere_phantom"]
