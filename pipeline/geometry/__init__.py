"""Geometry: labelled voxels -> meshes in LPS mm, their checks, and the plane cuts.

- ``surface``: one closed mesh per bone on the half-maximum surface (``bone_surfaces``);
- ``meshes``: validity as an STL reader sees it (float32, welded: closed,
  oriented, no collapsed or needle triangles, positive volume per shell) and statistics;
- ``near_plane``: bone vertices near a cut plane put on it or moved off it before the cut;
- ``caps``: each cut face triangulated afresh (refined constrained Delaunay), shared by host and implant;
- ``resect``: the planned planes cut the bones into host and implant, exactly, on the mesh;
- ``bridge``: the removed part joined across the joints the cut crosses (one implant, not a piece per bone);
- ``distance``: exact distances from points to a mesh (plates, screws, views against their source);
- ``level_set``: the closed solid where a field on a grid is negative (plates: flanges, guide seats; joint bridges);
- ``columns``: a mesh's heights along a direction, column by column (guides' approach and lift-off);
- ``simplify``: lighter copies of meshes for the 3D view, within a measured distance of the original.
"""

from .meshes import concatenate_solids, mesh_facts, mesh_stats, validate_solid
from .resect import Resection, check_plane_structures, resect
from .surface import BoneSurfaces, bone_surfaces

__all__ = ["concatenate_solids", "mesh_facts", "mesh_stats", "validate_solid", "Resection",
           "check_plane_structures", "resect", "BoneSurfaces", "bone_surfaces"]
