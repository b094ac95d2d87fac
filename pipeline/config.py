"""Configuration: a TOML file, validated on load into frozen dataclasses.

Every default lives in the dataclass fields below and nowhere else. Unknown
keys, wrong types, wrong lengths and impossible values raise
:class:`~pipeline.errors.ConfigError` naming the key (``segment.threshold_hu``,
``resection.planes[1].normal_lps``), so a typo never silently falls back to a
default.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class SegmentConfig:
    # Bone/not-bone decision for topology. 200 HU lies above soft tissue, blood and
    # unenhanced organs (< ~100 HU) and below cortical (> 1000 HU) and most
    # cancellous bone (~200-400 HU); the surface position is refined separately
    # (surface.*), so this value decides which voxels belong to bone, not where
    # the surface sits.
    threshold_hu: float = 200.0
    # Body outline: air and couch foam are far below, any tissue above. The couch
    # is whatever lies outside the largest connected body region.
    body_threshold_hu: float = -500.0
    # Connected bone pieces smaller than this are noise, calcifications or
    # contrast specks, not a bone worth meshing (1 cm^3).
    min_island_mm3: float = 1000.0
    # Radius of the morphological closing that bridges small gaps in thin
    # cortex before the marrow is filled; 0 disables it.
    closing_mm: float = 1.5
    # Marrow is also filled slice by slice where a hole is enclosed within one
    # slice (needed on thick slices); larger enclosed regions are not marrow
    # but spaces between bones (psoas between L5 and the iliac crests, 30+ cm^2).
    max_slice_hole_mm2: float = 2500.0
    # Bones are told apart by their dense cores: face-connected bone above this
    # level. Joint spaces (hip, sacroiliac, symphysis, lumbosacral disc) are
    # darker than the cortex on either side even where partial volume lifts
    # them above threshold_hu, so at this level the bones no longer touch.
    core_hu: float = 400.0
    # Cores smaller than this are not counted as a bone of their own (specks,
    # calcifications); the region around them joins a neighbouring bone.
    min_core_mm3: float = 50.0


@dataclass(frozen=True)
class SurfaceConfig:
    # The surface sits where the HU profile crosses half-way between the local
    # bone peak and the local surrounding tissue (half-maximum), which is
    # sub-voxel accurate regardless of the bone's density. This is the radius
    # of the neighbourhood in which peak and surroundings are measured.
    halfmax_radius_mm: float = 2.5
    # Gaussian pre-smoothing of the HU field to tame noise; 0 disables it.
    smoothing_mm: float = 0.0


@dataclass(frozen=True)
class Plane:
    """A resection plane: ``normal_lps`` (unit) points into the removed part."""

    point_lps_mm: tuple[float, float, float]
    normal_lps: tuple[float, float, float]
    name: str = ""

    def __post_init__(self) -> None:
        n = np.asarray(self.normal_lps, dtype=np.float64)
        length = float(np.linalg.norm(n))
        if n.shape != (3,) or not np.isfinite(length) or length < 1e-9:
            raise ValueError(f"plane normal must be a non-zero 3-vector, got {self.normal_lps!r}")
        object.__setattr__(self, "normal_lps", tuple(float(v) for v in n / length))
        object.__setattr__(self, "point_lps_mm", tuple(float(v) for v in self.point_lps_mm))

    @property
    def offset_mm(self) -> float:
        """Signed distance of the plane from the LPS origin along its normal."""
        return float(np.dot(self.normal_lps, self.point_lps_mm))

    def signed_distance_mm(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Positive on the removed side."""
        return np.asarray(points_lps_mm, dtype=np.float64) @ np.asarray(self.normal_lps) - self.offset_mm


@dataclass(frozen=True)
class ResectionConfig:
    # No default planes: planes are patient-specific. Without planes the run
    # produces the bone outputs only.
    planes: tuple[Plane, ...] = ()
    # Pieces a cut clips off a bump of the bone surface smaller than this are
    # dropped from the implant (and counted in the report), 0.1 cm^3.
    min_fragment_mm3: float = 100.0
    # Bones (names of pipeline.labels.LABEL_NAMES) the resection may cut; the
    # implant comes only from these, every other bone is written whole as
    # bone_<name>.stl for context. Femurs and spine are never cut by default.
    structures: tuple[str, ...] = ("hip_left", "hip_right", "sacrum")


@dataclass(frozen=True)
class LoadConfig:
    # Slices whose steps along the slice normal differ are resampled onto a
    # uniform grid by linear interpolation; a step larger than this is refused
    # rather than bridged. Routine abdomen-pelvis protocols step up to ~7 mm.
    max_gap_mm: float = 8.0


@dataclass(frozen=True)
class Config:
    load: LoadConfig = LoadConfig()
    segment: SegmentConfig = SegmentConfig()
    surface: SurfaceConfig = SurfaceConfig()
    resection: ResectionConfig = ResectionConfig()
    source: str = "<defaults>"

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form (for the report)."""
        d = dataclasses.asdict(self)
        for p in d["resection"]["planes"]:
            p["point_lps_mm"] = list(p["point_lps_mm"])
            p["normal_lps"] = list(p["normal_lps"])
        return d


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML config; ``None`` gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    try:
        return parse_config(raw, source=str(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def parse_config(raw: dict[str, Any], *, source: str = "<dict>") -> Config:
    _no_unknown(raw, {"load", "segment", "surface", "resection"}, "")
    load = _section(LoadConfig, raw.get("load", {}), "load")
    _check_load(load)
    segment = _section(SegmentConfig, raw.get("segment", {}), "segment")
    surface = _section(SurfaceConfig, raw.get("surface", {}), "surface")
    _check_segment(segment)
    _check_surface(surface)
    resection = _resection(raw.get("resection", {}))
    return Config(load=load, segment=segment, surface=surface, resection=resection, source=source)


def _no_unknown(table: Any, allowed: set[str], prefix: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table")
    for key in table:
        if key not in allowed:
            raise ConfigError(f"unknown key {prefix}{key!s} (allowed: {', '.join(sorted(allowed))})")


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be finite, got {value!r}")
    return float(value)


def _vector3(value: Any, key: str) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != 3:
        raise ConfigError(f"{key} must be a list of 3 numbers, got {value!r}")
    return tuple(_number(v, f"{key}[{i}]") for i, v in enumerate(value))  # type: ignore[return-value]


def _section(cls: type, table: Any, name: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _no_unknown(table, set(fields), f"{name}.")
    values = {key: _number(v, f"{name}.{key}") for key, v in table.items()}
    return cls(**values)


def _check_load(s: LoadConfig) -> None:
    if not 0 < s.max_gap_mm <= 50:
        raise ConfigError("load.max_gap_mm must be above 0 and at most 50 mm")


def _check_segment(s: SegmentConfig) -> None:
    if s.body_threshold_hu >= s.threshold_hu:
        raise ConfigError("segment.body_threshold_hu must be below segment.threshold_hu")
    if s.min_island_mm3 < 0:
        raise ConfigError("segment.min_island_mm3 must be >= 0")
    if not 0 <= s.closing_mm <= 10:
        raise ConfigError("segment.closing_mm must be between 0 and 10 mm")
    if s.max_slice_hole_mm2 < 0:
        raise ConfigError("segment.max_slice_hole_mm2 must be >= 0")
    if s.core_hu <= s.threshold_hu:
        raise ConfigError("segment.core_hu must be above segment.threshold_hu")
    if s.min_core_mm3 < 0:
        raise ConfigError("segment.min_core_mm3 must be >= 0")


def _check_surface(s: SurfaceConfig) -> None:
    if not 0.5 <= s.halfmax_radius_mm <= 20:
        raise ConfigError("surface.halfmax_radius_mm must be between 0.5 and 20 mm")
    if not 0 <= s.smoothing_mm <= 5:
        raise ConfigError("surface.smoothing_mm must be between 0 and 5 mm")


def _resection(table: Any) -> ResectionConfig:
    _no_unknown(table, {"planes", "min_fragment_mm3", "structures"}, "resection.")
    raw_planes = table.get("planes", [])
    if not isinstance(raw_planes, list):
        raise ConfigError("resection.planes must be an array of tables ([[resection.planes]])")
    planes = tuple(_plane(p, f"resection.planes[{i}]") for i, p in enumerate(raw_planes))
    kwargs = {}
    if "min_fragment_mm3" in table:
        kwargs["min_fragment_mm3"] = _number(table["min_fragment_mm3"], "resection.min_fragment_mm3")
        if kwargs["min_fragment_mm3"] < 0:
            raise ConfigError("resection.min_fragment_mm3 must be >= 0")
    if "structures" in table:
        kwargs["structures"] = _structures(table["structures"])
    return ResectionConfig(planes=planes, **kwargs)


def _structures(value: Any) -> tuple[str, ...]:
    from .labels import LABEL_IDS  # the label table lives with the labelling stage

    if not isinstance(value, list) or not value:
        raise ConfigError(f"resection.structures must be a non-empty list of bone names, got {value!r}")
    for i, name in enumerate(value):
        if name not in LABEL_IDS:
            raise ConfigError(f"resection.structures[{i}] = {name!r} is not a bone name "
                              f"(known: {', '.join(LABEL_IDS)})")
    if len(set(value)) != len(value):
        raise ConfigError("resection.structures lists a bone twice")
    return tuple(value)


def _plane(table: Any, key: str) -> Plane:
    _no_unknown(table, {"name", "point_lps_mm", "normal_lps"}, f"{key}.")
    for required in ("point_lps_mm", "normal_lps"):
        if required not in table:
            raise ConfigError(f"{key}.{required} is missing")
    point = _vector3(table["point_lps_mm"], f"{key}.point_lps_mm")
    normal = _vector3(table["normal_lps"], f"{key}.normal_lps")
    if float(np.linalg.norm(normal)) < 1e-9:
        raise ConfigError(f"{key}.normal_lps must not be the zero vector")
    name = table.get("name", key)
    if not isinstance(name, str):
        raise ConfigError(f"{key}.name must be a string")
    return Plane(point_lps_mm=point, normal_lps=normal, name=name)
