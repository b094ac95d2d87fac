"""Segmentation: HU volume -> which voxels are bone, and which bone each is.

- ``mask``: bone voxels with the couch and specks removed (``segment_bone``),
  and the closing and filling that make a bone solid;
- ``shape_model``: the pelvis shape model (both hips and the sacrum, from
  the JHU atlas; ``build_shape_model`` rebuilds it);
- ``model_fit``: the model fitted to the CT's bone surface in LPS mm;
- ``voxelise``: which voxel centres lie inside a closed mesh;
- ``labels``: one solid label per bone (hips, sacrum, femurs, lumbar, other):
  the fitted model seeds and fills each bone, a watershed on HU puts the
  borders in the joint spaces, femoral heads from their joint-space sphere
  (``label_bones``);
- ``external``: labels read from a file instead (``--labels``), placed on the
  CT's grid and checked (``labels_from_map``);
- ``lookup``, ``neighbours``: array kernels the labels and surfaces share
  (per-label counts and lookups a slab at a time; 3x3x3 minimum and maximum).

The label values and names live in :mod:`pipeline.bones`.
"""

from .labels import BoneLabels, label_bones
from .mask import BoneMask, segment_bone
from .model_fit import PelvisFit

__all__ = ["BoneLabels", "label_bones", "BoneMask", "segment_bone", "PelvisFit"]
