"""Analytic CT phantoms with exposed ground truth, and the rendering every phantom shares.

Every structure is a signed distance function (SDF) in patient LPS millimetres,
negative inside. A CT volume is rendered from nested tissue regions as a sum of
blurred steps::

    HU(x) = HU_background + sum_regions (HU_in - HU_out) * Phi(-sdf_region(x) / blur_mm)

where ``Phi`` is the standard normal CDF (``scipy.special.ndtr``). For a planar
edge this is exactly a Gaussian point-spread function of standard deviation
``blur_mm``, so partial volume is realistic and the half-way level between two
tissues lies on the zero level set: the true surface. Gaussian noise is added
last. Intensities are evaluated at voxel centres, in float32, and each SDF is
evaluated only inside its bounding box (plus a few blur widths), so a
300 x 512 x 512 volume renders in seconds. The sphere and ellipsoid phantoms
live here; the pelvis (:mod:`pipeline.phantom.pelvis`) and the body around it
(:mod:`pipeline.phantom.body`) are built from the same SDFs and CSG nodes.

The ground truth a test needs comes with the volume (:class:`Phantom`): labels
at voxel centres (``sdf < 0``), the SDF itself (``sdf_mm``, ``label_sdf_mm``),
volumes and areas where they are known, and named anatomical landmarks.

Grids built here are axial, head first, supine: slice axis -> +z (superior),
row axis -> +y (posterior), column axis -> +x (patient left); orientation code
``"SPL"`` (see :mod:`pipeline.volume`).

Exactness of the SDFs:

* spheres, capsules, half-spaces and boxes are exact; a union (``min``)
  of exact SDFs is exact outside;
* intersections and differences (``max``) keep the exact zero set but only
  bound the distance near creases;
* ellipsoids inside a pelvis (the bladder, S4-S5) use a first-order approximation
  (value / gradient of the implicit function): exact zero set, distance
  correct to first order near the surface. The ellipsoid phantom uses the
  exact distance (:func:`ellipsoid_distance_mm`).

So every ``sdf_mm`` has the exact zero set and, near the surface (a few mm),
is the distance to it to first order away from creases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Mapping, Sequence

import numpy as np
from scipy.special import ellipeinc, ellipkinc, ndtr

from ..volume import Volume, check_affine

# Where Phi is evaluated: beyond +-_PHI_BAND standard deviations it is 0 or 1
# to within 1e-9.
_PHI_BAND = 6.0
# A culled (not evaluated) SDF value stands for "at least this far outside" (or,
# negated by a difference, "this deep inside"). After a joint-gap offset and the
# deepest inset (cortex + marrow) it must still lie beyond the Phi band.
_FAR_EXTRA_MM = 8.0
_CHUNK_VOXELS = 1 << 22   # bounds temporary memory while rendering
_HUGE_MM = 1.0e5          # stands for "unbounded" in bounding boxes


# ---------------------------------------------------------------------------
# Small geometry helpers (plain Python floats keep float32 arrays float32)
# ---------------------------------------------------------------------------
def _floats(v: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(a) for a in v)


def _unit(v: Sequence[float]) -> tuple[float, float, float]:
    a = np.asarray(v, dtype=np.float64)
    return _floats(a / np.linalg.norm(a))  # type: ignore[return-value]


def _p(p: Sequence[float], side: float) -> tuple[float, float, float]:
    """Left-side point or direction ``p`` moved to ``side`` (+1 left, -1 right: x mirrored)."""
    return (side * float(p[0]), float(p[1]), float(p[2]))


def _dot(n: Sequence[float], dx, dy, dz):
    """n . (dx, dy, dz), skipping zero terms so broadcast shapes stay small."""
    out = None
    for c, d in zip(n, (dx, dy, dz)):
        if c != 0.0:
            term = d if c == 1.0 else c * d
            out = term if out is None else out + term
    return out if out is not None else 0.0 * dx


def _local(x, y, z, centre, rows):
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    return tuple(_dot(r, dx, dy, dz) for r in rows)


# ---------------------------------------------------------------------------
# SDF primitives: functions of broadcastable x, y, z arrays in LPS mm
# ---------------------------------------------------------------------------
def _ellipsoid_approx(u, v, w, a: float, b: float, c: float):
    """First-order ellipsoid SDF in local coordinates: exact zero set and sign.

    ``f / |grad f|`` with ``f = k0 - 1``; the tiny terms make the centre come
    out as ``-min(a, b, c)`` instead of 0/0.
    """
    k0 = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
    k1 = np.sqrt((u / (a * a)) ** 2 + (v / (b * b)) ** 2 + (w / (c * c)) ** 2)
    tiny = 1e-12
    return (k0 - 1.0) * (k0 + tiny) / (k1 + tiny / min(a, b, c))


def _ellipse_approx(u, v, a: float, b: float):
    """Two-dimensional version of :func:`_ellipsoid_approx`."""
    k0 = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    k1 = np.sqrt((u / (a * a)) ** 2 + (v / (b * b)) ** 2)
    tiny = 1e-12
    return (k0 - 1.0) * (k0 + tiny) / (k1 + tiny / min(a, b))


def _ellipsoid_half_extent(rows, semi) -> np.ndarray:
    m = np.asarray(rows, dtype=np.float64) * np.asarray(semi, dtype=np.float64)[:, None]
    return np.sqrt((m ** 2).sum(axis=0))


def _sphere(centre, radius_mm: float) -> "_Leaf":
    c, r = _floats(centre), float(radius_mm)

    def f(x, y, z):
        return np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - r
    return _Leaf(f, np.subtract(c, r), np.add(c, r))


def _ellipsoid(centre, semi_mm, rows=((1.0, 0, 0), (0, 1.0, 0), (0, 0, 1.0))) -> "_Leaf":
    """Approximate-distance ellipsoid; ``rows`` are its axes in LPS."""
    c, s = _floats(centre), _floats(semi_mm)
    rows = tuple(_floats(r) for r in rows)

    def f(x, y, z):
        return _ellipsoid_approx(*_local(x, y, z, c, rows), *s)
    h = _ellipsoid_half_extent(rows, s)
    return _Leaf(f, np.subtract(c, h), np.add(c, h))


def _capsule(a, b, radius_mm: float) -> "_Leaf":
    """Segment a-b swept by a ball (exact)."""
    a_, b_, r = _floats(a), _floats(b), float(radius_mm)
    ba = _floats(np.subtract(b_, a_))
    inv_len2 = 1.0 / float(np.dot(ba, ba))

    def f(x, y, z):
        px, py, pz = x - a_[0], y - a_[1], z - a_[2]
        h = np.clip(_dot(ba, px, py, pz) * inv_len2, 0.0, 1.0)
        return np.sqrt((px - ba[0] * h) ** 2 + (py - ba[1] * h) ** 2 + (pz - ba[2] * h) ** 2) - r
    return _Leaf(f, np.minimum(a_, b_) - r, np.maximum(a_, b_) + r)


def _half_space(point, normal) -> "_Leaf":
    """Points behind the plane (opposite to ``normal``) are inside (exact)."""
    p, n = _floats(point), _unit(normal)

    def f(x, y, z):
        return _dot(n, x - p[0], y - p[1], z - p[2])
    lo, hi = np.full(3, -_HUGE_MM), np.full(3, _HUGE_MM)
    for ax in range(3):   # an axis-aligned plane bounds one coordinate
        if abs(n[ax]) == 1.0:
            (hi if n[ax] > 0 else lo)[ax] = p[ax]
    return _Leaf(f, lo, hi)


def _prism_z(lo_xy, hi_xy) -> "_Leaf":
    """Axis-aligned box in x, y, unbounded along z (exact)."""
    c = _floats((np.add(lo_xy, hi_xy)) / 2.0)
    h = _floats((np.subtract(hi_xy, lo_xy)) / 2.0)

    def f(x, y, z):
        qx, qy = np.abs(x - c[0]) - h[0], np.abs(y - c[1]) - h[1]
        outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
        return outside + np.minimum(np.maximum(qx, qy), 0.0)
    return _Leaf(f, np.array([*lo_xy, -_HUGE_MM]), np.array([*hi_xy, _HUGE_MM]))


def _elliptic_cylinder_z(centre_xy, semi_xy) -> "_Leaf":
    """Elliptic cylinder along z (approximate distance, exact zero set)."""
    c, s = _floats(centre_xy), _floats(semi_xy)

    def f(x, y, z):
        return _ellipse_approx(x - c[0], y - c[1], *s)
    return _Leaf(f, np.array([c[0] - s[0], c[1] - s[1], -_HUGE_MM]),
                 np.array([c[0] + s[0], c[1] + s[1], _HUGE_MM]))


def _capped_elliptic_cylinder(centre, rows, semi_uv, half_height_mm: float) -> "_Leaf":
    """Elliptic cylinder along ``rows[2]`` with flat ends (first-order distance)."""
    c, s, hh = _floats(centre), _floats(semi_uv), float(half_height_mm)
    rows = tuple(_floats(r) for r in rows)

    def f(x, y, z):
        u, v, w = _local(x, y, z, c, rows)
        d2, dh = _ellipse_approx(u, v, *s), np.abs(w) - hh
        outside = np.sqrt(np.maximum(d2, 0.0) ** 2 + np.maximum(dh, 0.0) ** 2)
        return outside + np.minimum(np.maximum(d2, dh), 0.0)
    h = _ellipsoid_half_extent(rows, (s[0], s[1], hh)) * math.sqrt(3.0)
    return _Leaf(f, np.subtract(c, h), np.add(c, h))


# ---------------------------------------------------------------------------
# Constructive solid geometry with bounding-box culling
# ---------------------------------------------------------------------------
class _Node:
    """An SDF with a conservative bounding box ``lo``-``hi`` (LPS mm) of its zero set."""

    lo: np.ndarray
    hi: np.ndarray

    def sdf(self, x, y, z):
        raise NotImplementedError

    def render(self, block: "_Block"):
        """Values on ``block``, or a scalar >= ``block.far_mm`` where culled."""
        raise NotImplementedError


class _Leaf(_Node):
    def __init__(self, fn, lo, hi, render_fn=None):
        self.fn, self.render_fn = fn, render_fn or fn
        self.lo, self.hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)

    def sdf(self, x, y, z):
        return self.fn(x, y, z)

    def render(self, block):
        sub = block.restrict(self.lo, self.hi)
        if sub is None:
            return block.far_mm
        return block.embed(sub, self.render_fn(*sub.coords()))


class _Union(_Node):
    def __init__(self, *children: _Node):
        self.children = children
        self.lo = np.min([c.lo for c in children], axis=0)
        self.hi = np.max([c.hi for c in children], axis=0)

    def sdf(self, x, y, z):
        out = self.children[0].sdf(x, y, z)
        for c in self.children[1:]:
            out = np.minimum(out, c.sdf(x, y, z))
        return out

    def render(self, block):
        sub = block.restrict(self.lo, self.hi)
        if sub is None:
            return block.far_mm
        out = block.far_mm
        for c in self.children:
            out = np.minimum(out, c.render(sub))
        return block.embed(sub, out)


class _Difference(_Node):
    """``a`` with ``b`` removed."""

    def __init__(self, a: _Node, b: _Node):
        self.a, self.b = a, b
        self.lo, self.hi = a.lo, a.hi

    def sdf(self, x, y, z):
        return np.maximum(self.a.sdf(x, y, z), -self.b.sdf(x, y, z))

    def render(self, block):
        sub = block.restrict(self.lo, self.hi)
        if sub is None:
            return block.far_mm
        return block.embed(sub, np.maximum(self.a.render(sub), -self.b.render(sub)))


class _Offset(_Node):
    """``a`` grown outwards by ``grow_mm`` (shrunk if negative)."""

    def __init__(self, a: _Node, grow_mm: float):
        self.a, self.grow = a, float(grow_mm)
        self.lo, self.hi = a.lo - max(self.grow, 0.0), a.hi + max(self.grow, 0.0)

    def sdf(self, x, y, z):
        return self.a.sdf(x, y, z) - self.grow

    def render(self, block):
        return self.a.render(block) - self.grow


class _Grid:
    def __init__(self, shape, affine: np.ndarray, dtype=np.float32):
        self.shape = tuple(int(n) for n in shape)
        self.affine = np.asarray(affine, np.float64)
        self.inverse = np.linalg.inv(self.affine)
        self.dtype = dtype


class _Block:
    """A box of voxel indices ``start:stop`` of a grid; culled values are ``far_mm``.
    ``phi_mm``: how far from a level surface the blur still changes HU
    (``_PHI_BAND`` blur widths): the least a leaf's exact band must reach."""

    def __init__(self, grid: _Grid, start, stop, far_mm: float, phi_mm: float):
        self.grid, self.far_mm, self.phi_mm = grid, float(far_mm), float(phi_mm)
        self.start, self.stop = tuple(start), tuple(stop)
        self.shape = tuple(b - a for a, b in zip(self.start, self.stop))
        self._coords = None

    def restrict(self, lo, hi, pad_mm: float | None = None) -> "_Block | None":
        """The part of this block within ``pad_mm`` (default ``far_mm``) of box lo-hi."""
        pad = self.far_mm if pad_mm is None else pad_mm
        lo, hi = np.asarray(lo) - pad, np.asarray(hi) + pad
        corners = np.array([[a, b, c] for a in (lo[0], hi[0])
                            for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        idx = corners @ self.grid.inverse[:3, :3].T + self.grid.inverse[:3, 3]
        start = np.maximum(np.floor(idx.min(axis=0)).astype(np.int64), self.start)
        stop = np.minimum(np.ceil(idx.max(axis=0)).astype(np.int64) + 1, self.stop)
        if np.any(stop <= start):
            return None
        if tuple(start) == self.start and tuple(stop) == self.stop:
            return self
        return _Block(self.grid, start, stop, self.far_mm, self.phi_mm)

    def coords(self):
        """LPS x, y, z of the voxel centres, broadcastable, as small as the affine allows."""
        if self._coords is None:
            a, dt = self.grid.affine, self.grid.dtype
            idx = [np.arange(s, e, dtype=np.float64).reshape([-1 if d == ax else 1
                                                              for d in range(3)])
                   for ax, (s, e) in enumerate(zip(self.start, self.stop))]
            out = []
            for row in range(3):
                terms = [(a[row, ax] * idx[ax]).astype(dt) for ax in range(3) if a[row, ax] != 0.0]
                total = terms[0] + dt(a[row, 3])
                for t in terms[1:]:
                    total = total + t
                out.append(total)
            self._coords = tuple(out)
        return self._coords

    def slices(self, inner: "_Block | None" = None):
        b = inner or self
        return tuple(slice(s - o, e - o) for s, e, o in zip(b.start, b.stop, self.start))

    def embed(self, sub: "_Block", values):
        """``values`` on ``sub`` placed into an array for this block, ``far_mm`` elsewhere."""
        if sub is self or np.ndim(values) == 0:   # scalars only ever mean "far"
            return values
        v = np.asarray(values, dtype=self.grid.dtype)
        full = [sub.start[d] == self.start[d] and sub.stop[d] == self.stop[d] for d in range(3)]
        vshape = v.shape if v.ndim == 3 else (1, 1, 1)
        shape = tuple(1 if (vshape[d] == 1 and full[d]) else self.shape[d] for d in range(3))
        out = np.full(shape, self.far_mm, dtype=self.grid.dtype)
        sl = tuple(slice(None) if shape[d] == 1 else self.slices(sub)[d] for d in range(3))
        out[sl] = v
        return out

    def chunks(self, max_voxels: int):
        """Split along the slice axis into blocks of at most ``max_voxels`` voxels."""
        per_slice = max(1, self.shape[1] * self.shape[2])
        step = max(1, max_voxels // per_slice)
        for k in range(self.start[0], self.stop[0], step):
            stop = (min(k + step, self.stop[0]), self.stop[1], self.stop[2])
            yield _Block(self.grid, (k, self.start[1], self.start[2]), stop, self.far_mm, self.phi_mm)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Level:
    """Region ``max(sdf + inset_mm + more_inset_mm(x, y, z), extra)`` < 0 of a
    tissue has ``hu``. ``more_inset_mm``: an optional smooth field (mm, >= 0,
    of broadcastable LPS x, y, z) that thickens the layer above it in places."""

    inset_mm: float
    hu: float
    extra: _Node | None = None
    more_inset_mm: object = None


@dataclass(frozen=True, eq=False)
class _Tissue:
    """Nested regions sharing one SDF evaluation; ``levels[0]`` is the region itself."""

    node: _Node
    hu_outside: float
    levels: tuple[_Level, ...]
    label: int = 0


def _phi(t: np.ndarray) -> np.ndarray:
    """Standard normal CDF, evaluated only where it is not 0 or 1 to 1e-9."""
    t = np.asarray(t)
    if t.size < 4096:
        return ndtr(t)
    out = (t > 0).astype(t.dtype)
    band = np.abs(t) < _PHI_BAND
    out[band] = ndtr(t[band])
    return out


def _far_mm(blur_mm: float) -> float:
    return _PHI_BAND * blur_mm + _FAR_EXTRA_MM


def _render(grid: _Grid, background_hu: float, tissues: Sequence[_Tissue], blur_mm: float):
    """HU (float32) and labels (uint8) of ``tissues`` on ``grid``, noise-free."""
    hu = np.full(grid.shape, background_hu, dtype=np.float32)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    whole = _Block(grid, (0, 0, 0), grid.shape, _far_mm(blur_mm), _PHI_BAND * blur_mm)
    scale = np.float32(-1.0 / blur_mm)
    for tissue in tissues:
        region = whole.restrict(tissue.node.lo, tissue.node.hi, pad_mm=_PHI_BAND * blur_mm)
        if region is None:
            continue
        for block in region.chunks(_CHUNK_VOXELS):
            d = tissue.node.render(block)
            if np.ndim(d) == 0:
                continue
            sl = whole.slices(block)
            below = tissue.hu_outside
            for level in tissue.levels:
                r = d + np.float32(level.inset_mm) if level.inset_mm else d
                if level.more_inset_mm is not None:
                    r = r + level.more_inset_mm(*block.coords())
                if level.extra is not None:
                    r = np.maximum(r, level.extra.render(block))
                hu[sl] += np.float32(level.hu - below) * _phi(r * scale)
                below = level.hu
            if tissue.label:
                inside = np.broadcast_to(d < 0, block.shape)
                labels[sl][inside] = tissue.label
    return hu, labels


def _add_noise(hu: np.ndarray, noise_hu: float, seed: int) -> None:
    """Add Gaussian noise in place, one slice at a time (bounded memory, deterministic)."""
    if noise_hu <= 0:
        return
    rng = np.random.default_rng(seed)
    for k in range(hu.shape[0]):
        hu[k] += np.float32(noise_hu) * rng.standard_normal(hu.shape[1:], dtype=np.float32)


def _sampled_volume_mm3(node: _Node, step_mm: float) -> float:
    """Volume of ``node`` by partial-volume weighted sampling on a ``step_mm`` grid.

    Each sample contributes ``clip(0.5 - sdf / step_mm, 0, 1)`` voxels: exact on
    average for planar surfaces, with an O(step^2 x curvature) error otherwise.
    """
    lo, hi = node.lo - step_mm, node.hi + step_mm
    shape = tuple(int(np.ceil((b - a) / step_mm)) + 1 for a, b in zip(lo[::-1], hi[::-1]))
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float) * step_mm
    affine[:3, 3] = lo
    grid = _Grid(shape, affine)
    whole = _Block(grid, (0, 0, 0), shape, _far_mm(step_mm), _PHI_BAND * step_mm)
    total = 0.0
    for block in whole.chunks(_CHUNK_VOXELS):
        d = node.render(block)
        if np.ndim(d):
            w = np.clip(np.float32(0.5) - d * np.float32(1.0 / step_mm), 0.0, 1.0)
            total += float(np.broadcast_to(w, block.shape).sum(dtype=np.float64))
    return total * step_mm ** 3


# ---------------------------------------------------------------------------
# Ellipsoid: exact distance and surface area
# ---------------------------------------------------------------------------
def _bisect_root(r: np.ndarray, n: np.ndarray, z_last: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Root s of sum_i (n_i / (s + r_i))^2 = 1 on s > -1 (Eberly); r[-1] == 1."""
    s0 = z_last - 1.0
    s1 = np.where(g < 0, 0.0, np.sqrt((n ** 2).sum(axis=1)) - 1.0)
    # s is dimensionless and |dx/ds| <= |y|, so 1e-14 absolute is far below 1e-9 mm.
    for _ in range(200):
        if s0.size == 0 or np.max(s1 - s0) <= 1e-14 * max(1.0, float(np.max(np.abs(s1)))):
            break
        s = 0.5 * (s0 + s1)
        f = ((n / (s[:, None] + r)) ** 2).sum(axis=1) - 1.0
        s0 = np.where(f > 0, s, s0)
        s1 = np.where(f > 0, s1, s)
    return 0.5 * (s0 + s1)


def _distance_generic(e: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance from points y >= 0, y[:, -1] > 0, to the ellipsoid with semi-axes e (descending)."""
    r = (e / e[-1]) ** 2
    z = y / e
    g = (z ** 2).sum(axis=1) - 1.0
    s = _bisect_root(r, r * z, z[:, -1], g)
    x = r * y / (s[:, None] + r)
    return np.sqrt(((x - y) ** 2).sum(axis=1))


def _distance_ellipse(e0: float, e1: float, y: np.ndarray) -> np.ndarray:
    """Distance from points y >= 0 (N, 2) to the ellipse with semi-axes e0 >= e1."""
    d = np.empty(len(y))
    off_axis = y[:, 1] > 0
    d[off_axis] = _distance_generic(np.array([e0, e1]), y[off_axis])
    y0 = y[~off_axis, 0]
    denom = e0 * e0 - e1 * e1
    inner = e0 * y0 < denom
    xde = np.divide(e0 * y0, denom, out=np.zeros_like(y0), where=inner)
    x0, x1 = e0 * xde, e1 * np.sqrt(np.maximum(1.0 - xde ** 2, 0.0))
    d[~off_axis] = np.where(inner, np.hypot(x0 - y0, x1), np.abs(y0 - e0))
    return d


def _distance_ellipsoid(e: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Eberly's distance from points y >= 0 (N, 3) to the ellipsoid e0 >= e1 >= e2."""
    d = np.empty(len(y))
    generic = y[:, 2] > 0
    d[generic] = _distance_generic(e, y[generic])
    yb = y[~generic]
    denom = e[:2] ** 2 - e[2] ** 2
    numer = e[:2] * yb[:, :2]
    ok = np.all(numer < denom, axis=1)
    xde = np.divide(numer, denom, out=np.zeros_like(numer), where=numer < denom)
    discr = 1.0 - (xde ** 2).sum(axis=1)
    ok &= discr > 0
    inner = np.sqrt(((e[:2] * xde - yb[:, :2]) ** 2).sum(axis=1) + e[2] ** 2 * np.maximum(discr, 0))
    d[~generic] = np.where(ok, inner, _distance_ellipse(e[0], e[1], yb[:, :2]))
    return d


def ellipsoid_distance_mm(points_lps_mm: np.ndarray, center_lps_mm: Sequence[float],
                          semi_axes_mm: Sequence[float], *, axes_lps: np.ndarray | None = None,
                          signed: bool = False) -> np.ndarray:
    """Exact distance (mm) from points to an ellipsoid surface.

    ``points_lps_mm``: array ``(..., 3)``. ``semi_axes_mm``: the three semi-axes
    along the columns of ``axes_lps`` (3x3, orthonormal columns in LPS; default
    identity, i.e. along x, y, z). Returns shape ``(...)``, float64, >= 0; with
    ``signed=True`` negative inside. Uses Eberly's bisection ("Distance from a
    point to an ellipse, an ellipsoid, or a hyperellipsoid"), converged to
    ~1e-12 mm, including the degenerate cases on the symmetry planes.
    """
    p = np.asarray(points_lps_mm, dtype=np.float64)
    if p.shape[-1:] != (3,):
        raise ValueError(f"points_lps_mm must have shape (..., 3), got {p.shape}")
    e = np.asarray(semi_axes_mm, dtype=np.float64)
    if e.shape != (3,) or not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise ValueError(f"semi_axes_mm must be three positive numbers, got {semi_axes_mm!r}")
    rot = np.eye(3) if axes_lps is None else np.asarray(axes_lps, dtype=np.float64)
    if rot.shape != (3, 3) or not np.allclose(rot.T @ rot, np.eye(3), atol=1e-9):
        raise ValueError("axes_lps must be a 3x3 matrix with orthonormal columns")
    local = (p.reshape(-1, 3) - np.asarray(center_lps_mm, dtype=np.float64)) @ rot
    order = np.argsort(-e, kind="stable")
    d = _distance_ellipsoid(e[order], np.abs(local[:, order]))
    if signed:
        d = np.where(((local / e) ** 2).sum(axis=1) < 1.0, -d, d)
    return d.reshape(p.shape[:-1])


def ellipsoid_surface_area_mm2(semi_axes_mm: Sequence[float]) -> float:
    """Surface area of an ellipsoid, closed form (Legendre, incomplete elliptic integrals).

    For a >= b >= c: ``2 pi c^2 + 2 pi a b (E(phi|m) sin^2 phi + F(phi|m) cos^2 phi) / sin phi``
    with ``cos phi = c / a`` and ``m = a^2 (b^2 - c^2) / (b^2 (a^2 - c^2))``.
    """
    a, b, c = sorted((float(v) for v in semi_axes_mm), reverse=True)
    if c <= 0:
        raise ValueError(f"semi_axes_mm must be positive, got {semi_axes_mm!r}")
    if math.isclose(a, c, rel_tol=1e-12):
        return 4.0 * math.pi * a * a
    phi = math.acos(c / a)
    m = a * a * (b * b - c * c) / (b * b * (a * a - c * c))
    s = math.sin(phi)
    return 2.0 * math.pi * c * c + 2.0 * math.pi * a * b / s * (
        float(ellipeinc(phi, m)) * s * s + float(ellipkinc(phi, m)) * math.cos(phi) ** 2)


# ---------------------------------------------------------------------------
# The phantom value
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Phantom:
    """A rendered CT phantom and its ground truth.

    ``volume``: HU float32, shape ``(n_slices, n_rows, n_columns)``, with its affine.
    ``labels``: uint8, same shape; 0 = not bone, else the bone's label, evaluated
    at voxel centres (``sdf < 0``).
    ``label_names``: label -> name.
    ``landmarks_lps_mm``: name -> point ``(3,)`` in LPS mm (see the generator's docstring).
    ``truth_area_mm2``: label -> surface area where known (empty otherwise).
    ``truth_notes``: how the truth volumes and areas were obtained and how precise they are.
    """

    volume: Volume
    labels: np.ndarray
    label_names: dict[int, str]
    landmarks_lps_mm: dict[str, np.ndarray]
    truth_area_mm2: dict[int, float]
    truth_notes: str
    _shapes: Mapping[int, _Node] = field(repr=False)
    _closed_form_volume_mm3: Mapping[int, float] | None = field(default=None, repr=False)
    # The bones before a lesion destroyed part of one (None: no lesion).
    _intact_shapes: Mapping[int, _Node] | None = field(default=None, repr=False)

    @cached_property
    def truth_volume_mm3(self) -> dict[int, float]:
        """Label -> volume (mm^3): closed form where known, else sampled on first use
        (see ``truth_notes``)."""
        closed = self._closed_form_volume_mm3 or {}
        return {k: closed[k] if k in closed else _cached_volume_mm3(node, _SAMPLED_VOLUME_STEP_MM)
                for k, node in self._shapes.items()}

    def label_sdf_mm(self, label: int, points_lps_mm: np.ndarray) -> np.ndarray:
        """Signed distance (mm, negative inside) to bone ``label`` at points ``(..., 3)``."""
        if label not in self._shapes:
            raise ValueError(f"unknown label {label}; labels are {sorted(self._shapes)}")
        p = np.asarray(points_lps_mm, dtype=np.float64)
        if p.shape[-1:] != (3,):
            raise ValueError(f"points_lps_mm must have shape (..., 3), got {p.shape}")
        return np.asarray(self._shapes[label].sdf(p[..., 0], p[..., 1], p[..., 2]),
                          dtype=np.float64)

    def intact_label_sdf_mm(self, label: int, points_lps_mm: np.ndarray) -> np.ndarray:
        """As :meth:`label_sdf_mm`, for the bone as it was before the lesion
        (the same as :meth:`label_sdf_mm` without one)."""
        if self._intact_shapes is None:
            return self.label_sdf_mm(label, points_lps_mm)
        p = np.asarray(points_lps_mm, dtype=np.float64)
        return np.asarray(self._intact_shapes[label].sdf(p[..., 0], p[..., 1], p[..., 2]), dtype=np.float64)

    def sdf_mm(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Signed distance (mm, negative inside) to the union of all labels, points ``(..., 3)``."""
        return np.min([self.label_sdf_mm(k, points_lps_mm) for k in self._shapes], axis=0)

    def __repr__(self) -> str:
        names = ", ".join(f"{k}={v}" for k, v in self.label_names.items())
        return f"Phantom({self.volume!r}, labels: {names})"


# Sampled volumes converge as step^2: at 1 mm they are within 0.15 % of the
# extrapolated value (Richardson with 0.5 and 0.25 mm), at a fraction of the cost.
_SAMPLED_VOLUME_STEP_MM = 1.0

@lru_cache(maxsize=None)
def _cached_volume_mm3(node: _Node, step_mm: float) -> float:
    return _sampled_volume_mm3(node, step_mm)


# ---------------------------------------------------------------------------
# Input checks and grids
# ---------------------------------------------------------------------------
def _check_shape(shape) -> tuple[int, int, int]:
    s = tuple(shape)
    if len(s) != 3 or not all(isinstance(n, (int, np.integer)) and n > 0 for n in s):
        raise ValueError(f"shape must be three positive integers (slice, row, column), "
                         f"got {shape!r}")
    return tuple(int(n) for n in s)  # type: ignore[return-value]


def _check_vector(name: str, v, *, positive: bool = False) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.shape != (3,) or not np.all(np.isfinite(a)) or (positive and np.any(a <= 0)):
        kind = "three positive numbers" if positive else "three finite numbers"
        raise ValueError(f"{name} must be {kind}, got {v!r}")
    return a


def _check_scalar(name: str, v, *, minimum: float = 0.0, strict: bool = True) -> float:
    x = float(v)
    if not math.isfinite(x) or x < minimum or (strict and x == minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {v!r}")
    return x


def axial_affine(shape: Sequence[int], spacing_mm: Sequence[float],
                 center_lps_mm: Sequence[float]) -> np.ndarray:
    """Affine of an axial head-first-supine grid centred on ``center_lps_mm``.

    Slice axis -> +z (superior), row axis -> +y (posterior), column axis -> +x
    (left); ``spacing_mm`` is (slice, row, column). Orientation code ``"SPL"``.
    """
    n = np.asarray(_check_shape(shape), dtype=np.float64)
    sp = _check_vector("spacing_mm", spacing_mm, positive=True)
    a = np.zeros((4, 4))
    a[2, 0], a[1, 1], a[0, 2] = sp
    a[3, 3] = 1.0
    a[:3, 3] = _check_vector("center_lps_mm", center_lps_mm) - a[:3, :3] @ ((n - 1) / 2.0)
    return a


def _grid_affine(shape, spacing_mm, affine, center) -> np.ndarray:
    if (spacing_mm is None) == (affine is None):
        raise ValueError("give exactly one of spacing_mm (grid centred on the object) or affine")
    if affine is not None:
        return check_affine(affine)
    return axial_affine(shape, spacing_mm, center)


def _default_blur_mm(affine: np.ndarray) -> float:
    return max(0.3, 0.5 * float(np.linalg.norm(affine[:3, :3], axis=0).min()))


# ---------------------------------------------------------------------------
# Simple analytic phantoms
# ---------------------------------------------------------------------------
def sphere_phantom(*, radius_mm: float, center_lps_mm: Sequence[float] = (0.0, 0.0, 0.0),
                   shape: Sequence[int], spacing_mm: Sequence[float] | None = None,
                   affine: np.ndarray | None = None, hu_inside: float = 1000.0,
                   hu_outside: float = 0.0, blur_mm: float | None = None,
                   noise_hu: float = 0.0, seed: int = 0) -> Phantom:
    """A blurred ball: label 1 ``"sphere"``, closed-form volume and area.

    ``shape``: (n_slices, n_rows, n_columns). Give either ``spacing_mm``
    (slice, row, column), for an axial grid centred on the sphere, or an
    ``affine`` (index -> LPS mm), used as-is. ``blur_mm`` (Gaussian PSF
    standard deviation) defaults to half the smallest spacing, at least 0.3 mm.
    Landmark ``"centre"``.
    """
    r = _check_scalar("radius_mm", radius_mm)
    c = _check_vector("center_lps_mm", center_lps_mm)
    shape = _check_shape(shape)
    affine = _grid_affine(shape, spacing_mm, affine, c)
    blur = _default_blur_mm(affine) if blur_mm is None else _check_scalar("blur_mm", blur_mm)
    noise = _check_scalar("noise_hu", noise_hu, strict=False)
    node = _sphere(c, r)
    tissue = _Tissue(node, hu_outside, (_Level(0.0, hu_inside),), label=1)
    hu, labels = _render(_Grid(shape, affine), hu_outside, [tissue], blur)
    notes = (f"analytic sphere phantom: radius {r} mm, blur {blur} mm, noise {noise} HU, "
             f"seed {seed}",)
    _add_noise(hu, noise, seed)
    volume = Volume(hu, affine, meta={"phantom": "sphere"}, notes=notes)
    return Phantom(volume, labels, {1: "sphere"}, {"centre": c.copy()},
                   truth_area_mm2={1: 4.0 * math.pi * r * r},
                   truth_notes="volume 4/3 pi r^3 and area 4 pi r^2, closed form",
                   _shapes={1: node},
                   _closed_form_volume_mm3={1: 4.0 / 3.0 * math.pi * r ** 3})


def _exact_ellipsoid_leaf(c: np.ndarray, semi: np.ndarray, rot: np.ndarray,
                          band_mm: float) -> _Leaf:
    """Ellipsoid whose values are exact distances (first-order ones beyond ``band_mm``)."""
    rows = tuple(_floats(r) for r in rot.T)
    cf, sf = _floats(c), _floats(semi)

    def exact(x, y, z):
        shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
        p = np.stack([np.broadcast_to(a, shape) for a in (x, y, z)], axis=-1)
        return ellipsoid_distance_mm(p, c, semi, axes_lps=rot, signed=True)

    def render(x, y, z):
        d = _ellipsoid_approx(*_local(x, y, z, cf, rows), *sf)
        d = np.array(np.broadcast_to(d, np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))))
        band = np.abs(d) < band_mm
        if np.any(band):
            pts = np.stack([np.broadcast_to(a, d.shape)[band] for a in (x, y, z)], axis=-1)
            d[band] = ellipsoid_distance_mm(pts, c, semi, axes_lps=rot, signed=True)
        return d

    h = _ellipsoid_half_extent(rows, sf)
    return _Leaf(exact, c - h, c + h, render_fn=render)


def ellipsoid_phantom(*, semi_axes_mm: Sequence[float],
                      center_lps_mm: Sequence[float] = (0.0, 0.0, 0.0),
                      axes_lps: np.ndarray | None = None, shape: Sequence[int],
                      spacing_mm: Sequence[float] | None = None, affine: np.ndarray | None = None,
                      hu_inside: float = 1000.0, hu_outside: float = 0.0,
                      blur_mm: float | None = None, noise_hu: float = 0.0,
                      seed: int = 0) -> Phantom:
    """A blurred ellipsoid: label 1 ``"ellipsoid"``, exact SDF, closed-form volume and area.

    ``semi_axes_mm`` lie along the columns of ``axes_lps`` (default x, y, z).
    Grid options as :func:`sphere_phantom`. Intensities use the exact distance
    (:func:`ellipsoid_distance_mm`) wherever the blur makes it matter. The area
    is Legendre's closed form (:func:`ellipsoid_surface_area_mm2`), not an
    approximation. Landmark ``"centre"``.
    """
    semi = _check_vector("semi_axes_mm", semi_axes_mm, positive=True)
    c = _check_vector("center_lps_mm", center_lps_mm)
    rot = np.eye(3) if axes_lps is None else np.asarray(axes_lps, dtype=np.float64)
    if rot.shape != (3, 3) or not np.allclose(rot.T @ rot, np.eye(3), atol=1e-9):
        raise ValueError("axes_lps must be a 3x3 matrix with orthonormal columns")
    shape = _check_shape(shape)
    affine = _grid_affine(shape, spacing_mm, affine, c)
    blur = _default_blur_mm(affine) if blur_mm is None else _check_scalar("blur_mm", blur_mm)
    noise = _check_scalar("noise_hu", noise_hu, strict=False)
    node = _exact_ellipsoid_leaf(c, semi, rot, band_mm=_PHI_BAND * blur + 1.0)
    tissue = _Tissue(node, hu_outside, (_Level(0.0, hu_inside),), label=1)
    hu, labels = _render(_Grid(shape, affine), hu_outside, [tissue], blur)
    notes = (f"analytic ellipsoid phantom: semi-axes {tuple(semi)} mm, blur {blur} mm, "
             f"noise {noise} HU, seed {seed}",)
    _add_noise(hu, noise, seed)
    volume = Volume(hu, affine, meta={"phantom": "ellipsoid"}, notes=notes)
    return Phantom(volume, labels, {1: "ellipsoid"}, {"centre": c.copy()},
                   truth_area_mm2={1: ellipsoid_surface_area_mm2(semi)},
                   truth_notes="volume 4/3 pi abc; area by Legendre's closed form "
                               "(incomplete elliptic integrals), float64 precision",
                   _shapes={1: node},
                   _closed_form_volume_mm3={1: 4.0 / 3.0 * math.pi * float(np.prod(semi))})
