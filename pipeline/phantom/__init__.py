"""Phantoms with closed-form truth: CT volumes whose bones, surfaces and labels are known.

- ``analytic``: spheres, ellipsoids and a pelvis built from primitives (hip
  bones, sacrum, L5, femurs with joint spaces, cortex over cancellous bone,
  soft tissue, a couch), with partial-volume blur and noise, plus variants
  (any grid, a lytic lesion, osteoporotic bone, contrast).
"""

from .analytic import Phantom, ellipsoid_phantom, pelvis_phantom, preset, sphere_phantom

__all__ = ["Phantom", "ellipsoid_phantom", "pelvis_phantom", "preset", "sphere_phantom"]
