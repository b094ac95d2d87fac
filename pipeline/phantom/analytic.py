"""Analytic CT phantoms with exposed ground truth.

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
300 x 512 x 512 pelvis renders in seconds.

The ground truth a test needs comes with the volume (:class:`Phantom`): labels
at voxel centres (``sdf < 0``), the SDF itself (``sdf_mm``, ``label_sdf_mm``),
volumes and areas where they are known, and named anatomical landmarks.

Grids built here are axial, head first, supine: slice axis -> +z (superior),
row axis -> +y (posterior), column axis -> +x (patient left); orientation code
``"SPL"`` (see :mod:`pipeline.volume`).

Exactness of the SDFs:

* spheres, capsules, tori, half-spaces and boxes are exact; a union (``min``)
  of exact SDFs is exact outside;
* intersections and differences (``max``) keep the exact zero set but only
  bound the distance near creases;
* ellipsoids inside the pelvis use a first-order approximation
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

from ..bones import LABEL_NAMES as BONE_LABELS
from ..errors import ConfigError
from ..volume import Volume, check_affine

# ---------------------------------------------------------------------------
# Tissue intensities (HU) and tissue dimensions (mm) of the pelvis phantom
# ---------------------------------------------------------------------------
HU_AIR = -1000.0
HU_FAT = -100.0
HU_MUSCLE = 40.0
HU_BLADDER = 10.0
HU_CORTICAL = 1350.0
HU_CANCELLOUS = 300.0
HU_MARROW = 30.0          # below a 200 HU bone threshold on purpose
HU_PAD = -900.0           # foam mattress between patient and couch
HU_COUCH_SHELL = 550.0    # carbon-fibre skin: above a 200 HU bone threshold on purpose
HU_COUCH_FOAM = -850.0
HU_RAIL = 2000.0          # metal rails at the couch's lateral edges
# contrast=True: enhanced arteries and bladder and calcified specks, all above
# a 200 HU bone threshold and none of them bone.
# osteoporotic=True: a weak cortex over cancellous bone below the threshold
# (the interior is then marrow-like everywhere and must be filled).
HU_CORTICAL_OSTEOPOROTIC = 600.0
HU_CANCELLOUS_OSTEOPOROTIC = 100.0
HU_ARTERY_CONTRAST = 350.0
HU_BLADDER_CONTRAST = 400.0  # excreted contrast
HU_CALCIFIED = 900.0         # plaques in the artery wall, phleboliths

CORTEX_MM = 2.0           # cortical shell thickness of every bone
MARROW_INSET_MM = 1.0     # marrow stays this far inside the cancellous region
JOINT_GAP_MM = 3.0        # hip, sacroiliac and symphysis joint spaces
FAT_MM = 15.0             # subcutaneous fat layer
BODY_SEMI_AXES_MM = (170.0, 120.0)   # body cross-section, left-right x anterior-posterior

# The phantom's truth uses the pipeline's label values; it has no "other" bone.
LABEL_NAMES = {k: name for k, name in BONE_LABELS.items() if name != "other"}

# Where Phi is evaluated: beyond +-_PHI_BAND standard deviations it is 0 or 1
# to within 1e-9.
_PHI_BAND = 6.0
# A culled (not evaluated) SDF value stands for "at least this far outside" (or,
# negated by a difference, "this deep inside"). After a joint-gap offset and the
# deepest inset (cortex + marrow) it must still lie beyond the Phi band.
_FAR_EXTRA_MM = JOINT_GAP_MM + CORTEX_MM + MARROW_INSET_MM + 2.0
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


def _ellipsoid_shell(centre, semi_mm, thickness_mm: float, rows) -> "_Leaf":
    """Shell of ``thickness_mm`` centred on an ellipsoid surface."""
    c, s, t = _floats(centre), _floats(semi_mm), 0.5 * float(thickness_mm)
    rows = tuple(_floats(r) for r in rows)

    def f(x, y, z):
        return np.abs(_ellipsoid_approx(*_local(x, y, z, c, rows), *s)) - t
    h = _ellipsoid_half_extent(rows, s) + t
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


def _torus(centre, axis, major_mm: float, minor_mm: float) -> "_Leaf":
    """Ring of radius ``major_mm`` around ``axis``, tube radius ``minor_mm`` (exact)."""
    c, n = _floats(centre), _unit(axis)
    big, small = float(major_mm), float(minor_mm)

    def f(x, y, z):
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        w = _dot(n, dx, dy, dz)
        radial = np.sqrt(np.maximum(dx * dx + dy * dy + dz * dz - w * w, 0.0))
        return np.sqrt((radial - big) ** 2 + w * w) - small
    h = big * np.sqrt(np.maximum(1.0 - np.square(n), 0.0)) + small
    return _Leaf(f, np.subtract(c, h), np.add(c, h))


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


class _Intersection(_Node):
    def __init__(self, *children: _Node):
        self.children = children
        self.lo = np.max([c.lo for c in children], axis=0)
        self.hi = np.min([c.hi for c in children], axis=0)

    def sdf(self, x, y, z):
        out = self.children[0].sdf(x, y, z)
        for c in self.children[1:]:
            out = np.maximum(out, c.sdf(x, y, z))
        return out

    def render(self, block):
        sub = block.restrict(self.lo, self.hi)
        if sub is None:
            return block.far_mm
        out = -block.far_mm
        for c in self.children:
            out = np.maximum(out, c.render(sub))
            if np.ndim(out) == 0:   # a culled child: the intersection is far outside too
                return block.far_mm
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
_SAMPLED_VOLUME_NOTE = ("volumes by partial-volume weighted sampling of each bone's SDF on a "
                        f"{_SAMPLED_VOLUME_STEP_MM:g} mm grid, relative error <= 0.15 % "
                        "(Richardson comparison with 0.5 and 0.25 mm); no closed-form areas")


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


# ---------------------------------------------------------------------------
# Pelvis anatomy (LPS mm; built for the left side, mirrored in x for the right)
# ---------------------------------------------------------------------------
_HIP_CENTRE = (85.0, -22.0, 0.0)        # femoral head = acetabular socket centre
_HEAD_RADIUS_MM = 23.0
_CUP_RADIUS_MM = 37.0                   # outer radius of the acetabular region
_CUP_OPENING = (0.72, -0.30, -0.62)     # faces lateral, anterior, inferior
_NECK_DIRECTION = (0.80, -0.12, -0.58)  # head -> neck, about 130 deg to the shaft
_S1_CENTRE = (0.0, 22.0, 56.0)          # centre of the S1 superior endplate
_SACRAL_SLOPE_DEG = 30.0                # S1 endplate vs horizontal, anterior edge low
_L5_TILT_DEG = 20.0
_DISC_MM = 8.0                          # L5-S1 disc at its thinnest (posterior)
_BLADDER = ((0.0, -48.0, 2.0), (33.0, 25.0, 25.0))
# Iliac arteries (left; the right mirrors it): along the pelvic brim from the
# bifurcation to the groin, 5 mm clear of every bone; two wall plaques each
# (14 mm3, below segment.min_core_mm3) and two phleboliths beside the bladder.
_ARTERY = ((10.0, -45.0, 85.0), (58.0, -75.0, -5.0), 4.0)
_PLAQUES = (((26.5, -56.5, 54.0), 1.5), ((45.0, -67.0, 20.0), 1.5))
_PHLEBOLITHS = (((40.0, -30.0, -25.0), 2.0), ((-35.0, -35.0, -20.0), 2.0))
_PAD_Y_MM = (112.0, 128.0)              # the body's back (y = 120) sinks into the pad
_PLATE_Y_MM = (128.0, 140.0)
_PLATE_SHELL_MM = 2.0
_RAIL_Y_MM = (126.0, 146.0)
_RAIL_WIDTH_MM = 10.0
_RAIL_MARGIN_MM = 4.0                   # rails this far inside the lateral FOV edges
_PELVIS_GRID_CENTRE_LPS_MM = (0.0, 12.5, 7.0)
# The lytic lesion (pelvis_phantom(lesion=True)): a ball of soft tissue that
# replaces the left iliac wing's bone, through both cortices, inside the
# region the sample plan resects and clear of its cut planes.
_LESION_CENTRE = (110.0, 20.0, 60.0)
_LESION_RADIUS_MM = 26.0


def _hip(side: float) -> tuple[_Node, _Node]:
    """One hemipelvis: iliac wing, acetabulum, obturator ring, ischium, pubis; and its marrow."""
    h = _p(_HIP_CENTRE, side)
    eye = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    brim = ((52.0, 40.0, 34.0), (76.0, -6.0, 12.0))   # arcuate line, SI joint to pubic root
    wing = _Intersection(
        _ellipsoid_shell((0.0, -4.5, 105.0), (138.0, 100.0, 100.0), 10.0, eye),  # pelvic bowl
        _ellipsoid(_p((90.0, 26.0, 16.3), side), (400.0, 85.0, 78.7)),  # crest: ASIS up to PSIS
        _half_space((0.0, -50.0, 0.0), (0.0, -1.0, 0.0)),               # anterior border
        _half_space(_p((40.0, 0.0, 0.0), side), _p((-1.0, 0.0, 0.0), side)),
        _half_space(_p(brim[0], side), _p((-0.625, 0.046, -0.779), side)))  # ends in the brim
    cup = _Intersection(_sphere(h, _CUP_RADIUS_MM), _half_space(h, _p(_CUP_OPENING, side)))
    parts = _Union(
        wing, cup,
        _ellipsoid(_p((88.0, -14.0, 30.0), side), (14.0, 20.0, 18.0)),      # supra-acetabular
        _ellipsoid(_p((54.0, 50.0, 44.0), side), (15.0, 36.0, 28.0)),       # posterior ilium
        _capsule(_p(brim[0], side), _p(brim[1], side), 11.0),
        _capsule(_p((78.0, 2.0, -14.0), side), _p((60.0, 6.0, -52.0), side), 12.0),   # ischium
        _ellipsoid(_p((58.0, 6.0, -60.0), side), (12.0, 16.0, 14.0)),       # ischial tuberosity
        _torus(_p((52.0, -40.0, -40.0), side), _p((0.55, -0.8, -0.2), side), 21.0, 7.5),
        _capsule(_p((68.0, -42.0, -10.0), side), _p((16.0, -68.0, -30.0), side), 9.0),  # ramus
        _ellipsoid(_p((16.0, -70.0, -36.0), side), (16.0, 9.0, 18.0)))      # pubic body
    symphysis = _half_space(_p((0.5 * JOINT_GAP_MM, 0.0, 0.0), side), _p((-1.0, 0.0, 0.0), side))
    socket = _sphere(h, _HEAD_RADIUS_MM + JOINT_GAP_MM)
    node = _Difference(_Intersection(parts, symphysis), socket)
    marrow = _Union(_ellipsoid(_p((56.0, 50.0, 42.0), side), (7.0, 22.0, 18.0)),
                    _ellipsoid(_p((88.0, -14.0, 32.0), side), (8.0, 12.0, 9.0)))
    return node, marrow


def _femur(side: float) -> tuple[_Node, _Node]:
    """Proximal femur: head, neck, trochanters, shaft; marrow in the shaft canal."""
    h = _p(_HIP_CENTRE, side)
    neck_end = tuple(np.add(h, 50.0 * np.asarray(_unit(_p(_NECK_DIRECTION, side)))))
    node = _Union(
        _sphere(h, _HEAD_RADIUS_MM),
        _capsule(h, neck_end, 14.0),
        _ellipsoid(_p((128.0, -12.0, -8.0), side), (12.0, 16.0, 20.0)),     # greater trochanter
        _ellipsoid(_p((106.0, -6.0, -44.0), side), (9.0, 9.0, 11.0)),       # lesser trochanter
        _capsule(_p((124.0, -22.0, -30.0), side), _p((113.0, -19.0, -70.0), side), 14.0))
    marrow = _capsule(_p((121.0, -21.0, -40.0), side), _p((113.0, -19.0, -70.0), side), 7.0)
    return node, marrow


def _sacral_frame():
    t = math.radians(_SACRAL_SLOPE_DEG)
    down = (0.0, math.sin(t), -math.cos(t))      # along the sacrum, caudal and dorsal
    dorsal = (0.0, math.cos(t), math.sin(t))
    return ((1.0, 0.0, 0.0), dorsal, down)


def _sacrum(hips: _Node) -> tuple[_Node, _Node]:
    """Tapered, tilted wedge below the S1 endplate, carved to leave the SI joint spaces."""
    rows = _sacral_frame()
    down = np.asarray(rows[2])
    body = _ellipsoid(tuple(np.add(_S1_CENTRE, 10.0 * down)), (54.0, 20.0, 80.0), rows)
    endplate = _half_space(_S1_CENTRE, tuple(-down))
    # Lateral faces converge caudally: |x| <= 54 - 0.5 * depth below the endplate.
    sides = [_half_space(_p(np.add(_S1_CENTRE, (54.0, 0.0, 0.0)), s),
                         tuple(np.add(_p((1.0, 0.0, 0.0), s), 0.5 * down))) for s in (1.0, -1.0)]
    node = _Difference(_Intersection(body, endplate, *sides), _Offset(hips, JOINT_GAP_MM))
    marrow = _ellipsoid(tuple(np.add(_S1_CENTRE, 28.0 * down)), (14.0, 10.0, 18.0), rows)
    return node, marrow


def _l5_frame():
    t = math.radians(_L5_TILT_DEG)
    rows = ((1.0, 0.0, 0.0), (0.0, math.cos(t), math.sin(t)), (0.0, -math.sin(t), math.cos(t)))
    # Lowest point of the L5 body (posterior rim) sits _DISC_MM above the S1 plane.
    n_s = -np.asarray(_sacral_frame()[2])
    half_ap, half_h = 18.0, 13.5
    rise = (_DISC_MM - half_ap * float(np.dot(rows[1], n_s))
            + half_h * (1.0 - float(np.dot(rows[2], n_s))))
    bottom = np.add(_S1_CENTRE, rise * n_s)
    centre = bottom + half_h * np.asarray(rows[2])
    return centre, rows, half_ap, half_h


def _lumbar() -> tuple[_Node, _Node]:
    """L5: elliptic-cylinder body above the disc; pedicles, laminae, spinous and transverse
    processes."""
    centre, rows, half_ap, half_h = _l5_frame()
    marrow = _ellipsoid(tuple(centre), (13.0, 8.0, 7.0), rows)
    return _vertebra(centre, rows, half_ap, half_h), marrow


def _vertebra(centre, rows, half_ap: float, half_h: float, scale: float = 1.0) -> _Node:
    """A lumbar vertebra around its body ``centre`` (LPS mm) in the frame ``rows``
    (lateral, dorsal, cranial unit vectors): an elliptic-cylinder body of
    half-depth ``half_ap`` and half-height ``half_h``; pedicles, laminae around
    the spinal canal, spinous and transverse processes. ``scale`` sizes the
    arch and the body's width."""
    centre = np.asarray(centre, np.float64)

    def at(lateral, dorsal, up):
        return tuple(centre + scale * (lateral * np.asarray(rows[0]) + dorsal * np.asarray(rows[1])
                                       + up * np.asarray(rows[2])))
    r = 5.0 * scale
    parts = [_capped_elliptic_cylinder(tuple(centre), rows, (25.0 * scale, half_ap), half_h),
             _capsule(at(0, 40, 2), at(0, 62, -6), r)]                     # spinous process
    for s in (1.0, -1.0):
        parts += [_capsule(at(12 * s, 14, 4), at(12 * s, 30, 4), r),      # pedicle
                  _capsule(at(12 * s, 30, 4), at(0, 40, 2), r),            # lamina
                  _capsule(at(12 * s, 24, 2), at(42 * s, 28, 0), r)]       # transverse process
    return _Union(*parts)


@dataclass(frozen=True, eq=False)
class _Anatomy:
    bones: dict[int, tuple[_Node, _Node]]   # label -> (bone, marrow patches)
    landmarks: dict[str, np.ndarray]


def _bisect_points(fn, inside, outside, iterations: int = 60) -> np.ndarray:
    """Point between ``inside`` (fn < 0) and ``outside`` (fn > 0) where fn = 0."""
    a, b = np.asarray(inside, np.float64), np.asarray(outside, np.float64)
    if not (fn(a) < 0 < fn(b)):
        raise RuntimeError("landmark search does not bracket the surface")
    for _ in range(iterations):
        m = 0.5 * (a + b)
        a, b = (m, b) if fn(m) < 0 else (a, m)
    return 0.5 * (a + b)


def _node_fn(node: _Node):
    return lambda p: float(node.sdf(*(np.float64(v) for v in p)))


def _extreme_point(node: _Node, lo, hi, axis: int, sign: float, step_mm: float = 2.0) -> np.ndarray:
    """Surface point of ``node`` in box lo-hi furthest along ``sign`` x axis ``axis``.

    A coarse then a fine grid find the deepest sample at the extreme level;
    bisection along the axis puts the point on the surface.
    """
    box_lo, box_hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    lo, hi = box_lo, box_hi
    for step in (step_mm, step_mm / 8.0):
        axes = [np.arange(a, b + step, step) for a, b in zip(lo, hi)]
        pts = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1)
        d = node.sdf(pts[:, 0], pts[:, 1], pts[:, 2])
        level = sign * pts[:, axis]
        top = np.flatnonzero((d < 0) & (level == level[d < 0].max()))
        best = pts[top[np.argmin(d[top])]]
        lo, hi = np.maximum(best - step, box_lo), np.minimum(best + step, box_hi)
    beyond = best.copy()
    beyond[axis] += sign * 2 * step_mm
    return _bisect_points(_node_fn(node), best, beyond)


@lru_cache(maxsize=1)
def _pelvis_anatomy() -> _Anatomy:
    hip_l, hip_r = _hip(1.0), _hip(-1.0)
    sacrum = _sacrum(_Union(hip_l[0], hip_r[0]))
    bones = {1: hip_l, 2: hip_r, 3: sacrum, 4: _femur(1.0), 5: _femur(-1.0), 6: _lumbar()}
    return _Anatomy(bones, _pelvis_landmarks(bones))


def _pelvis_landmarks(bones) -> dict[str, np.ndarray]:
    """Named points (LPS mm); each is documented in :func:`pelvis_phantom`."""
    hip, sacrum = bones[1][0], bones[3][0]
    rows = _sacral_frame()
    out: dict[str, np.ndarray] = {}
    f_hip, f_sac = _node_fn(hip), _node_fn(sacrum)
    si = _bisect_points(lambda p: f_hip(p) - f_sac(p), (64.0, 40.0, 44.0), (20.0, 40.0, 44.0))
    left = {
        "femoral_head_centre": np.array(_HIP_CENTRE),
        "acetabulum_centre": np.array(_HIP_CENTRE),
        "si_joint": si,
        "sacral_ala": si - np.array([12.0, 0.0, 0.0]),
        "supra_acetabular": np.array([88.0, -14.0, 38.0]),
        "iliac_crest_top": _extreme_point(hip, (60, -80, 60), (150, 90, 115), 2, 1.0),
        "asis": _extreme_point(hip, (60, -51, 30), (150, -49, 115), 2, 1.0),
        "ischial_tuberosity": _extreme_point(hip, (30, -15, -90), (100, 50, -30), 2, -1.0),
        "obturator_foramen_centre": np.array([52.0, -40.0, -40.0]),
        "greater_trochanter_top": np.array([128.0, -12.0, 12.0]),
    }
    for name, point in left.items():
        out["left_" + name] = np.asarray(point, np.float64)
        out["right_" + name] = np.asarray(_p(point, -1.0), np.float64)
    out["symphysis"] = np.array([0.0, -70.0, -36.0])
    out["s1_endplate_centre"] = np.array(_S1_CENTRE)
    just_below = np.add(_S1_CENTRE, 0.5 * np.asarray(rows[2]))
    out["sacral_promontory"] = _bisect_points(
        f_sac, just_below, just_below - 40.0 * np.asarray(rows[1]))
    out["l5_body_centre"] = np.asarray(_l5_frame()[0], np.float64)
    return out


@dataclass(frozen=True)
class _SoftLayout:
    """Where the soft tissues of a pelvis phantom lie (LPS mm; the arteries and
    plaques are given for the left side and mirrored in x).
    ``bladder``: (centre, semi-axes). ``artery``: (start, end, radius).
    ``plaques``, ``phleboliths``: ((centre, radius), ...)."""

    bladder: tuple
    artery: tuple
    plaques: tuple
    phleboliths: tuple


_SOFT_LAYOUT = _SoftLayout(_BLADDER, _ARTERY, _PLAQUES, _PHLEBOLITHS)


def _soft_tissues(fov_x_mm: tuple[float, float], couch: bool, contrast: bool = False,
                  layout: _SoftLayout = _SOFT_LAYOUT) -> list[_Tissue]:
    """Body (fat over muscle), bladder, optionally contrast (enhanced iliac
    arteries and bladder, calcifications) and the couch spanning the FOV's x range."""
    body = _elliptic_cylinder_z((0.0, 0.0), BODY_SEMI_AXES_MM)
    bladder_hu = HU_BLADDER_CONTRAST if contrast else HU_BLADDER
    out = [_Tissue(body, HU_AIR, (_Level(0.0, HU_FAT), _Level(FAT_MM, HU_MUSCLE))),
           _Tissue(_ellipsoid(*layout.bladder), HU_MUSCLE, (_Level(0.0, bladder_hu),))]
    if contrast:
        for side in (1.0, -1.0):
            a, b, radius = layout.artery
            out.append(_Tissue(_capsule(_p(a, side), _p(b, side), radius), HU_MUSCLE,
                               (_Level(0.0, HU_ARTERY_CONTRAST),)))
            out += [_Tissue(_sphere(_p(c, side), r), HU_ARTERY_CONTRAST, (_Level(0.0, HU_CALCIFIED),))
                    for c, r in layout.plaques]
        out += [_Tissue(_sphere(c, r), HU_MUSCLE, (_Level(0.0, HU_CALCIFIED),))
                for c, r in layout.phleboliths]
    if not couch:
        return out
    left = fov_x_mm[1] - _RAIL_MARGIN_MM - _RAIL_WIDTH_MM      # plate edges, between the rails
    right = fov_x_mm[0] + _RAIL_MARGIN_MM + _RAIL_WIDTH_MM
    if left - right < 40.0:
        right, left = -20.0, 20.0
    pad = _Difference(_prism_z((right, _PAD_Y_MM[0]), (left, _PAD_Y_MM[1])), body)
    plate = _prism_z((right, _PLATE_Y_MM[0]), (left, _PLATE_Y_MM[1]))
    out += [_Tissue(pad, HU_AIR, (_Level(0.0, HU_PAD),)),
            _Tissue(plate, HU_AIR, (_Level(0.0, HU_COUCH_SHELL),
                                    _Level(_PLATE_SHELL_MM, HU_COUCH_FOAM)))]
    for x0, x1 in ((left, left + _RAIL_WIDTH_MM), (right - _RAIL_WIDTH_MM, right)):
        rail = _prism_z((x0, _RAIL_Y_MM[0]), (x1, _RAIL_Y_MM[1]))
        out.append(_Tissue(rail, HU_AIR, (_Level(0.0, HU_RAIL),)))
    return out


def _bone_tissue(label: int, node: _Node, marrow: _Node, osteoporotic: bool = False) -> _Tissue:
    cortical, cancellous = ((HU_CORTICAL_OSTEOPOROTIC, HU_CANCELLOUS_OSTEOPOROTIC) if osteoporotic
                            else (HU_CORTICAL, HU_CANCELLOUS))
    return _Tissue(node, HU_MUSCLE, (_Level(0.0, cortical),
                                     _Level(CORTEX_MM, cancellous),
                                     _Level(CORTEX_MM + MARROW_INSET_MM, HU_MARROW, marrow)),
                   label=label)


def pelvis_phantom(*, shape: Sequence[int], spacing_mm: Sequence[float], noise_hu: float = 20.0,
                   blur_mm: float = 0.6, seed: int = 0,
                   center_lps_mm: Sequence[float] | None = None, couch: bool = True,
                   lesion: bool = False, contrast: bool = False, osteoporotic: bool = False) -> Phantom:
    """A pelvis-like CT: six labelled bones in soft tissue on a CT couch.

    ``shape`` (n_slices, n_rows, n_columns) and ``spacing_mm`` (slice, row,
    column) define an axial head-first-supine grid centred on
    ``center_lps_mm`` (default: centred on the pelvis, the body and the couch
    in y). The anatomy is fixed in LPS mm around the pelvis centre, so it is
    the same at any spacing; only the couch rails follow the FOV's lateral
    edges. ``blur_mm``: Gaussian PSF standard deviation. ``noise_hu``:
    standard deviation of the added Gaussian noise (seeded by ``seed``).

    Labels (:data:`LABEL_NAMES`): 1 hip_left, 2 hip_right, 3 sacrum,
    4 femur_left, 5 femur_right, 6 lumbar (L5). Each bone is a
    ``CORTEX_MM`` cortical shell (``HU_CORTICAL``) over cancellous bone
    (``HU_CANCELLOUS``) with marrow patches (``HU_MARROW``, below a 200 HU
    threshold) in the femoral canals, ilia, sacrum and L5; its truth surface is
    the outer cortical surface. Hip, sacroiliac and symphysis joint spaces are
    ``JOINT_GAP_MM`` wide; the wedge-shaped L5-S1 disc is 8 mm (posterior) to
    14 mm (anterior). Body: elliptic cylinder, ``FAT_MM`` of fat over muscle,
    bladder. The couch (label 0) spans the FOV width under a foam pad: a
    ``HU_COUCH_SHELL`` skin, above bone threshold, over foam, and ``HU_RAIL``
    rails at the FOV's lateral edges.

    Landmarks (``left_*`` at x > 0, ``right_*`` their mirror images):
    ``*_femoral_head_centre`` / ``*_acetabulum_centre`` (the same point: head
    and socket are concentric), ``*_si_joint`` (in the sacroiliac joint space),
    ``*_sacral_ala`` (inside the sacrum, 12 mm medial of the SI joint point),
    ``*_supra_acetabular`` (inside the ilium, 12 mm above the socket roof),
    ``*_iliac_crest_top`` (highest surface point of the hip bone),
    ``*_asis`` (top of the iliac wing's anterior border, surface point),
    ``*_ischial_tuberosity`` (lowest surface point of the hip bone),
    ``*_obturator_foramen_centre`` (in the open foramen, not in bone),
    ``*_greater_trochanter_top`` (surface point), ``symphysis`` (mid-gap
    between the pubic bones, x = 0), ``s1_endplate_centre`` (surface),
    ``sacral_promontory`` (anterior surface point of the S1 endplate),
    ``l5_body_centre`` (inside L5).

    ``lesion=True`` adds a lytic tumour: a ball of soft tissue (radius
    ``_LESION_RADIUS_MM``, landmark ``lesion_centre``) replaces the left iliac
    wing's bone through both cortices, inside the region the sample plan
    resects. Labels and ``label_sdf_mm`` describe the damaged bone;
    ``intact_label_sdf_mm`` the bone before the lesion (the truth a
    reconstruction should rebuild). Without it the phantom is unchanged.

    ``contrast=True`` adds what a contrast-enhanced scan has above the bone
    threshold that is not bone: both iliac arteries (``HU_ARTERY_CONTRAST``,
    5 mm clear of the bones) with two calcified wall plaques each, the
    bladder filled with excreted contrast (``HU_BLADDER_CONTRAST``) and two
    phleboliths beside it (``HU_CALCIFIED``). Labels are unchanged: none of
    it is bone.

    ``osteoporotic=True``: every bone's cortex is ``HU_CORTICAL_OSTEOPOROTIC``
    and its cancellous bone ``HU_CANCELLOUS_OSTEOPOROTIC``, below a 200 HU
    threshold, so only the thin cortex is above it. Labels are unchanged.

    Truth volumes are sampled on first access (``truth_notes`` says how
    precisely); no closed-form areas.
    """
    shape = _check_shape(shape)
    spacing = _check_vector("spacing_mm", spacing_mm, positive=True)
    blur = _check_scalar("blur_mm", blur_mm)
    noise = _check_scalar("noise_hu", noise_hu, strict=False)
    centre = _PELVIS_GRID_CENTRE_LPS_MM if center_lps_mm is None else center_lps_mm
    affine = axial_affine(shape, spacing, centre)
    anatomy = _pelvis_anatomy()
    bones, landmarks = anatomy.bones, {k: v.copy() for k, v in anatomy.landmarks.items()}
    intact = None
    if lesion:
        intact = {k: bones[k][0] for k in sorted(bones)}
        bones = {**bones, 1: (_Difference(bones[1][0], _sphere(_LESION_CENTRE, _LESION_RADIUS_MM)),
                              bones[1][1])}
        landmarks["lesion_centre"] = np.array(_LESION_CENTRE)
    fov_x_mm = affine[0, 3] - spacing[2] / 2.0, affine[0, 3] + (shape[2] - 0.5) * spacing[2]
    tissues = _soft_tissues(fov_x_mm, couch, contrast)
    tissues += [_bone_tissue(k, *bones[k], osteoporotic) for k in sorted(bones)]
    hu, labels = _render(_Grid(shape, affine), HU_AIR, tissues, blur)
    notes = (f"synthetic pelvis phantom: blur {blur} mm, noise {noise} HU, seed {seed}, "
             f"couch {'on' if couch else 'off'}" + (", lytic lesion in the left ilium" if lesion else "")
             + (", contrast-enhanced arteries and bladder, calcifications" if contrast else "")
             + (", osteoporotic bone" if osteoporotic else ""),)
    _add_noise(hu, noise, seed)
    volume = Volume(hu, affine, meta={"phantom": "pelvis"}, notes=notes)
    return Phantom(volume, labels, dict(LABEL_NAMES), landmarks,
                   truth_area_mm2={},
                   truth_notes=_SAMPLED_VOLUME_NOTE,
                   _shapes={k: bones[k][0] for k in sorted(bones)}, _intact_shapes=intact)


_PRESETS = {
    # Committed to the repository as a DICOM series: 100 x 184 x 232 int16 = 8.5 MB.
    "sample": {"shape": (100, 184, 232), "spacing_mm": (2.0, 1.5, 1.5),
               "noise_hu": 20.0, "blur_mm": 0.6, "seed": 0},
    "bench": {"shape": (300, 512, 512), "spacing_mm": (1.0, 0.8, 0.8),
              "noise_hu": 20.0, "blur_mm": 0.6, "seed": 0},
}


def preset(name: str) -> dict:
    """Keyword arguments of :func:`pelvis_phantom` for a named preset (a fresh dict).

    ``"sample"``: 100 x 184 x 232 voxels at (2.0, 1.5, 1.5) mm, committed as the
    sample DICOM series. ``"bench"``: 300 x 512 x 512 at (1.0, 0.8, 0.8) mm.
    """
    return _preset_from(_PRESETS, name)


def _preset_from(table: dict, name: str) -> dict:
    """A fresh copy of ``table[name]``; an unknown name is a ConfigError naming the choices."""
    if name not in table:
        raise ConfigError(f"unknown phantom preset {name!r}; choose one of {sorted(table)}")
    return dict(table[name])
