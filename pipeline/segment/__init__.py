"""Segmentation: HU volume -> which voxels are bone, and which bone each is.

- ``mask``: bone voxels with the couch and specks removed (``segment_bone``),
  and the closing and filling that make a bone solid;
- ``labels``: one solid label per bone (hips, sacrum, femurs, lumbar, other):
  dense cores grown by watershed on HU, named by anatomy, femoral heads
  from their joint-space sphere (``label_bones``);
- ``external``: labels read from a file instead (``--labels``), placed on the
  CT's grid and checked (``labels_from_map``);
- ``lookup``, ``neighbours``: array kernels the labels and surfaces share
  (per-label counts and lookups a slab at a time; 3x3x3 minimum and maximum).

The label values and names live in :mod:`pipeline.bones`.
"""

from .labels import BoneLabels, label_bones
from .mask import BoneMask, segment_bone

__all__ = ["BoneLabels", "label_bones", "BoneMask", "segment_bone"]
