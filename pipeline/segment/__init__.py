"""Segmentation: HU volume -> which voxels are bone, and which bone each is.

- ``mask``: bone voxels with the couch and specks removed (``segment_bone``),
  and the closing and filling that make a bone solid;
- ``shape_model``: the pelvis shape model (both hips and the sacrum, from
  the JHU atlas; ``build_shape_model`` rebuilds it);
- ``model_fit``: the model fitted to the CT's bone surface in LPS mm;
- ``voxelise``: which voxel centres lie inside a closed mesh;
- ``labels``: one solid label per bone (hips, sacrum, femurs, lumbar, other),
  the steps in their order (``label_bones``): the fitted model decides
  membership and interiors, the image where each surface is;
- ``femoral_head``: each femoral head's joint-space sphere, from the fitted
  acetabulum, the head's surface and the joint space's HU valley;
- ``flood``: seeds from the fitted model and the heads, a watershed on HU
  that puts the borders in the joint spaces, bone no seed reaches;
- ``solid``: each bone closed and filled on its own, its marrow behind a
  leaky cortex;
- ``spine``: the vertebral bodies' faint marrow, the spinal canal, the
  lumbar levels counted up from the sacrum;
- ``lower_sacrum``: the sacrum past the model's S3 end (its faint tip and
  its marrow, told from the canal's fat);
- ``plates``: holes through thin plates of bone, closed where the image
  shows the plate;
- ``external``: labels read from a file instead (``--labels``), placed on the
  CT's grid and checked (``labels_from_map``);
- ``grid``, ``distance_map``, ``lookup``, ``neighbours``: the labelling
  box's voxel <-> LPS mm, exact distance maps, and array kernels the labels
  and surfaces share (per-label counts and lookups a slab at a time; 3x3x3
  minimum and maximum).

The label values and names live in :mod:`pipeline.bones`.
"""

from .labels import BoneLabels, label_bones
from .mask import BoneMask, segment_bone
from .model_fit import PelvisFit

__all__ = ["BoneLabels", "label_bones", "BoneMask", "segment_bone", "PelvisFit"]
