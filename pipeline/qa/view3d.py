"""Shaded 3D views of meshes on the CPU, without a display or OpenGL.

Meshes from CT have small triangles (about a voxel), so a view is made by
sampling points on every triangle densely enough to cover each pixel it
projects to, and keeping per pixel the sample nearest the viewer (a z-buffer
built with one sort). Shading is Lambert lighting from the viewer with a
little from above, plus depth cueing, so shape reads without a GPU.

Views are named from the patient (orthographic, LPS):

==========  ===================  ==================  =====================
view        viewer stands        image right         image up
==========  ===================  ==================  =====================
anterior    in front (-y)        patient left (+x)   superior (+z)
posterior   behind (+y)          patient right (-x)  superior
left        at the left (+x)     posterior (+y)      superior
right       at the right (-x)    anterior (-y)       superior
superior    above the head (+z)  patient right (-x)  anterior (-y)
oblique     front-left-above     (derived)           (derived)
==========  ===================  ==================  =====================

``oblique_left`` is ``oblique``; ``oblique_right`` is its mirror image
(front-right-above), for a right-sided implant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

# (direction towards the viewer, image up), LPS. Image right = up x towards-viewer.
VIEWS = {
    "anterior": ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    "posterior": ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    "left": ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "right": ((-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "superior": ((0.0, 0.0, 1.0), (0.0, -1.0, 0.0)),
    "oblique": ((0.6, -0.7, 0.4), (0.0, 0.0, 1.0)),
    "oblique_left": ((0.6, -0.7, 0.4), (0.0, 0.0, 1.0)),
    "oblique_right": ((-0.6, -0.7, 0.4), (0.0, 0.0, 1.0)),
}
BACKGROUND = (255, 255, 255)
# Samples per pixel edge on each triangle: 1.5 leaves no holes between samples.
SAMPLES_PER_PIXEL = 1.5
# At most this many samples along a triangle's edge (larger triangles are cut first).
MAX_STEPS = 64


@dataclass(frozen=True)
class Camera:
    """Orthographic camera: screen axes in LPS and the mm -> pixel mapping."""

    right: np.ndarray
    up: np.ndarray
    toward_viewer: np.ndarray
    origin_mm: np.ndarray      # LPS point at the image centre
    mm_per_pixel: float
    size_px: tuple[int, int]   # (height, width)

    def project(self, points_lps_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(column, row, depth) of points; depth grows towards the viewer."""
        d = np.asarray(points_lps_mm, dtype=np.float64) - self.origin_mm
        h, w = self.size_px
        col = d @ self.right / self.mm_per_pixel + (w - 1) / 2.0
        row = (h - 1) / 2.0 - d @ self.up / self.mm_per_pixel
        return col, row, d @ self.toward_viewer


def camera_for(view: str, bounds_lps_mm: np.ndarray, size_px: tuple[int, int] = (700, 700),
               margin: float = 0.05) -> Camera:
    """A camera for ``view`` that fits the box ``bounds_lps_mm`` (2x3)."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; one of {', '.join(VIEWS)}")
    toward, up = (np.asarray(v, dtype=np.float64) for v in VIEWS[view])
    toward /= np.linalg.norm(toward)
    up = up - (up @ toward) * toward
    up /= np.linalg.norm(up)
    right = np.cross(up, toward)
    lo, hi = np.asarray(bounds_lps_mm, dtype=np.float64)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    centre = (lo + hi) / 2.0
    extent_x = np.ptp(corners @ right)
    extent_y = np.ptp(corners @ up)
    h, w = size_px
    mm_per_pixel = max(extent_x / w, extent_y / h) * (1.0 + 2 * margin)
    return Camera(right, up, toward, centre, mm_per_pixel, size_px)


def camera_along(toward_viewer_lps, up_lps, bounds_lps_mm: np.ndarray, size_px: tuple[int, int] = (700, 700),
                 margin: float = 0.05) -> Camera:
    """A camera looking along ``-toward_viewer_lps`` (any direction, e.g. a
    cutting guide's approach), ``up_lps`` projected to the image's up, that
    fits the box ``bounds_lps_mm`` (2x3)."""
    toward = np.asarray(toward_viewer_lps, dtype=np.float64)
    toward = toward / np.linalg.norm(toward)
    up = np.asarray(up_lps, dtype=np.float64)
    up = up - (up @ toward) * toward
    if np.linalg.norm(up) < 1e-6:
        raise ValueError("camera_along: up is parallel to the viewing direction")
    up /= np.linalg.norm(up)
    right = np.cross(up, toward)
    lo, hi = np.asarray(bounds_lps_mm, dtype=np.float64)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    h, w = size_px
    mm_per_pixel = max(np.ptp(corners @ right) / w, np.ptp(corners @ up) / h) * (1.0 + 2 * margin)
    return Camera(right, up, toward, (lo + hi) / 2.0, mm_per_pixel, size_px)


def render(parts: list[tuple[trimesh.Trimesh, tuple[int, int, int]]], camera: Camera,
           overlays: list[tuple[np.ndarray, tuple[int, int, int], float]] = (),
           see_through: list[tuple[trimesh.Trimesh, tuple[int, int, int], float]] = ()) -> np.ndarray:
    """RGB image (height, width, 3) uint8 of the ``parts`` (closed mesh, colour).

    ``see_through``: (closed mesh, colour, opacity), each drawn shaded but
    translucent over whatever lies behind its nearest surface, in order
    (what it hides still shows: screws inside a bone and an implant).
    ``overlays``: (triangles (n, 3, 3) in LPS, colour, opacity) drawn
    translucent and flat over whatever lies behind them (the cut planes)."""
    h, w = camera.size_px
    depth = np.full(h * w, -np.inf)
    shade = np.zeros(h * w)
    colour = np.zeros((h * w, 3))
    for mesh, rgb in parts:
        _draw(mesh, rgb, camera, depth, shade, colour)
    image = np.empty((h * w, 3))
    hit = np.isfinite(depth)
    image[~hit] = BACKGROUND
    if hit.any():
        near, far = depth[hit].max(), depth[hit].min()
        cue = 1.0 - 0.35 * (near - depth[hit]) / max(near - far, 1e-9)
        image[hit] = colour[hit] * (shade[hit] * cue)[:, None]
    for mesh, rgb, opacity in see_through:
        layer_depth, layer_shade = np.full(h * w, -np.inf), np.zeros(h * w)
        _draw(mesh, rgb, camera, layer_depth, layer_shade, np.zeros((h * w, 3)))
        front = np.isfinite(layer_depth) & (layer_depth >= depth - 1e-6)
        lit = layer_shade[front, None] * np.asarray(rgb, dtype=np.float64)
        image[front] = (1 - opacity) * image[front] + opacity * lit
    for triangles, rgb, opacity in overlays:
        screen = _screen(np.asarray(triangles, dtype=np.float64).reshape(-1, 3), camera).reshape(-1, 3, 3)
        index, z, _ = _samples(screen, np.zeros(len(screen)), camera)
        covered = np.unique(index[z >= depth[index] - 1e-6])
        image[covered] = (1 - opacity) * image[covered] + opacity * np.asarray(rgb, dtype=np.float64)
    return np.clip(image, 0, 255).astype(np.uint8).reshape(h, w, 3)


def _draw(mesh: trimesh.Trimesh, rgb, camera: Camera, depth: np.ndarray, shade: np.ndarray,
          colour: np.ndarray) -> None:
    """Z-buffer one closed mesh into ``depth``, ``shade`` and ``colour`` (flat pixel arrays)."""
    normals = np.asarray(mesh.face_normals)
    # A closed mesh's faces turned away from the viewer are always hidden.
    front = normals @ camera.toward_viewer > 0
    faces, light = np.asarray(mesh.faces)[front], _lambert(normals[front], camera)
    screen = _screen(np.asarray(mesh.vertices), camera)
    # A vertex is shared by ~6 triangles: sample each once, and the triangles without corners.
    corner = _vertex_samples(screen, faces, light, camera)
    inner = _samples(screen[faces], light, camera, corners=False)
    for index, z, value in (corner, inner):
        _z_test(index, z, value, np.asarray(rgb, dtype=np.float64), depth, shade, colour)


def _screen(points_lps_mm: np.ndarray, camera: Camera) -> np.ndarray:
    """(N, 3) points -> (N, 3) screen (column, row, depth)."""
    return np.stack(camera.project(points_lps_mm), axis=1)


def _pixels(screen: np.ndarray, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel index of screen points and which of them fall inside the image."""
    h, w = camera.size_px
    c, r = np.rint(screen[:, 0]).astype(np.int64), np.rint(screen[:, 1]).astype(np.int64)
    inside = (c >= 0) & (c < w) & (r >= 0) & (r < h)
    return r[inside] * w + c[inside], inside


def _vertex_samples(screen: np.ndarray, faces: np.ndarray, values: np.ndarray, camera: Camera):
    """The vertices (screen coordinates) of ``faces`` as samples: (pixel
    index, depth, the value of one of the faces sharing the vertex)."""
    value = np.full(len(screen), np.nan)
    value[faces.ravel()] = np.repeat(values, 3)
    used = np.flatnonzero(np.isfinite(value))
    index, inside = _pixels(screen[used], camera)
    return index, screen[used, 2][inside], value[used][inside]


def _samples(screen: np.ndarray, values: np.ndarray, camera: Camera, corners: bool = True):
    """Points on every triangle (screen coordinates, (n, 3, 3)), dense enough
    to cover the pixels it projects to: (pixel index, depth, the triangle's
    value) of each sample inside the image. ``corners=False`` leaves out the
    triangles' corners (sampled once per vertex by the caller)."""
    steps = _steps(screen)
    # A triangle larger on screen than MAX_STEPS samples per edge cover is
    # cut into four at its edges' midpoints (the projection is linear) until
    # none is: before, it was sampled MAX_STEPS per edge and drawn dotted.
    while (steps > MAX_STEPS).any():
        big = steps > MAX_STEPS
        t = screen[big]
        m01, m12, m20 = (t[:, 0] + t[:, 1]) / 2, (t[:, 1] + t[:, 2]) / 2, (t[:, 2] + t[:, 0]) / 2
        four = np.concatenate([np.stack(q, axis=1) for q in ((t[:, 0], m01, m20), (m01, t[:, 1], m12),
                                                              (m20, m12, t[:, 2]), (m01, m12, m20))])
        screen = np.concatenate([screen[~big], four])
        values = np.concatenate([values[~big], np.tile(values[big], 4)])
        steps = _steps(screen)
    index, depth, value = [], [], []
    for n in np.unique(steps):
        # Barycentric grid with n steps per edge: (n + 1)(n + 2) / 2 points.
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = i + j <= n
        bary = np.stack([i[keep], j[keep], n - i[keep] - j[keep]], axis=1) / n
        if not corners:
            bary = bary[bary.max(axis=1) < 1.0]
        if len(bary) == 0:  # sub-pixel triangles (most of a CT mesh): their corners are enough
            continue
        which = np.flatnonzero(steps == n)
        p = np.matmul(bary, screen[which]).reshape(-1, 3)
        pixel, inside = _pixels(p, camera)
        index.append(pixel)
        depth.append(p[inside, 2])
        value.append(np.repeat(values[which], len(bary))[inside])
    if not index:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    return np.concatenate(index), np.concatenate(depth), np.concatenate(value)


def _steps(screen: np.ndarray) -> np.ndarray:
    """Samples per edge that cover each triangle (screen coordinates, (n, 3, 3))."""
    xy = screen[:, :, :2]
    edge_px = np.sqrt(np.max([((xy[:, a] - xy[:, b]) ** 2).sum(axis=1) for a, b in ((0, 1), (1, 2), (2, 0))],
                             axis=0))
    return np.maximum(np.ceil(edge_px * SAMPLES_PER_PIXEL).astype(int), 1)


def _lambert(normals: np.ndarray, camera: Camera) -> np.ndarray:
    headlight = np.clip(normals @ camera.toward_viewer, 0.0, 1.0)
    from_above = np.clip(normals @ camera.up, 0.0, 1.0)
    return 0.25 + 0.6 * headlight + 0.15 * from_above


def _z_test(index, z, light, rgb, depth, shade, colour) -> None:
    """Keep, per pixel, the sample nearest the viewer (no loops, no sort)."""
    before = depth.copy()
    np.maximum.at(depth, index, z)
    won = (z == depth[index]) & (z > before[index])
    shade[index[won]] = light[won]
    colour[index[won]] = rgb
