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

from .bones import LABEL_IDS
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
    # slice (needed on thick slices), and on slices thicker than closing_mm
    # plane by plane with gaps up to about two slice thicknesses bridged;
    # larger enclosed regions are not marrow but spaces between bones (psoas
    # between L5 and the iliac crests, 30+ cm^2).
    max_slice_hole_mm2: float = 2500.0
    # Bones are told apart by their dense cores: face-connected bone above this
    # level. Joint spaces (hip, sacroiliac, symphysis, lumbosacral disc) are
    # darker than the cortex on either side even where partial volume lifts
    # them above threshold_hu, so at this level the bones no longer touch.
    # 500 HU: at 400, dense cancellous bone still bridged the sacroiliac
    # joints of a 3 mm pelvic CT (sacrum and spine named hip_left); 500 parts
    # them and lifts femur Dice there from 0.65 to 0.70, and the phantom
    # gives the same labels anywhere from 400 to 700. On weak bone the level
    # is lowered to half the bone's 99th-percentile HU (osteoporotic cortex
    # barely reaches 500 HU); this is the upper limit.
    core_hu: float = 500.0
    # Cores smaller than this are not counted as a bone of their own (specks,
    # calcifications); the region around them joins a neighbouring bone.
    min_core_mm3: float = 50.0
    # Marrow that no fill reaches because the cortex has gaps (3 mm slices,
    # thin low-density cortex): a voxel that meets its own bone within this
    # distance in all six axis directions, and touches no other bone, is
    # inside it. 40 mm covers a femoral head or a vertebral body from its
    # centre. 0 disables it.
    enclosure_mm: float = 40.0
    # A label map to use instead of the automatic labels (a 3D Slicer
    # .seg.nrrd, a TotalSegmentator NIfTI or folder, an earlier run's
    # labels.nii.gz; see pipeline.io.segmentation); "" = label automatically.
    # A relative path is relative to the config file; --labels overrides it.
    labels_file: str = ""
    # Segment name (or label value, as text) -> bone name, for segments of
    # that label map whose names are not recognised ("Segment_1" -> "hip_left").
    label_names: tuple[tuple[str, str], ...] = ()


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
    # Oncological margin: the cut lies this far from the planned plane, into
    # the kept side (see ``cut_plane``). The planned plane stays on record.
    margin_mm: float = 0.0
    # Bones this plane is meant to cut (optional): each must be crossed by it,
    # and the resection must take part, not nothing or all, of each.
    structures: tuple[str, ...] = ()

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

    def in_plane_axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Two orthogonal unit vectors (u, v) spanning the plane, u x v = normal."""
        n = np.asarray(self.normal_lps)
        u = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
        u /= np.linalg.norm(u)
        return u, np.cross(n, u)

    def shifted(self, distance_mm: float) -> "Plane":
        """The parallel plane ``distance_mm`` along the normal (into the removed
        part), without a margin of its own."""
        point = np.asarray(self.point_lps_mm) + distance_mm * np.asarray(self.normal_lps)
        return Plane(point_lps_mm=tuple(point), normal_lps=self.normal_lps, name=self.name,
                     structures=self.structures)

    def cut_plane(self) -> "Plane":
        """Where the bone is cut: the planned plane moved ``margin_mm`` into the kept side."""
        return self.shifted(-self.margin_mm)


@dataclass(frozen=True)
class ResectionConfig:
    # No default planes: planes are patient-specific. Without planes the run
    # produces the bone outputs only.
    planes: tuple[Plane, ...] = ()
    # Pieces a cut clips off a bump of the bone surface smaller than this are
    # dropped from the implant (and counted in the report), 0.1 cm^3.
    min_fragment_mm3: float = 100.0
    # Bones (names of pipeline.bones.LABEL_NAMES) the resection may cut; the
    # implant comes only from these, every other bone is written whole as
    # bone_<name>.stl for context. Femurs and spine are never cut by default.
    structures: tuple[str, ...] = ("hip_left", "hip_right", "sacrum")


IMPLANT_SOURCES = ("resected", "mirrored")


@dataclass(frozen=True)
class FixationConfig:
    """Flanges on the host bone and screws in safe bone corridors
    (``[implant.fixation]``; its presence turns fixation on)."""
    # Flange per contact face: how far it reaches over the host's outer
    # surface beyond the cut edge, its thickness, and its gap to the bone.
    flange_width_mm: float = 15.0
    flange_thickness_mm: float = 3.0
    flange_clearance_mm: float = 0.5
    # Grid step of the flange's distance field: the gap is exact on flat bone
    # and off by about step^2 / (8 x curvature radius) elsewhere.
    flange_grid_mm: float = 0.75
    # Screws: 6.5 mm cancellous screws into the ilium and sacrum; 7.3 mm
    # cannulated screws for an iliosacral screw.
    screw_diameter_mm: float = 6.5
    screws_per_flange: int = 3
    # Bone kept around every screw (planners keep 1-2 mm).
    min_bone_margin_mm: float = 1.5
    min_length_in_bone_mm: float = 20.0
    # Whole screw, head to tip.
    max_length_mm: float = 90.0
    # A screw's hole through the implant: its diameter plus this.
    hole_clearance_mm: float = 0.5
    # Largest angle (degrees) between a flange screw and the bone's inward
    # normal at its entry, or an iliosacral screw and its cut plane's normal.
    max_screw_angle_deg: float = 30.0
    # A sacral contact face: screws from the implant through that face into
    # the S1 body (needs the fitted pelvis model for the S1 level).
    iliosacral: bool = False
    iliosacral_screws: int = 1
    iliosacral_diameter_mm: float = 7.3


@dataclass(frozen=True)
class ImplantConfig:
    # Where the implant's shape comes from: "resected" = the patient's own bone
    # inside the resection region; "mirrored" = the healthy contralateral side
    # reflected across the mid-sagittal plane and fitted to the affected host
    # (use it when a tumour has destroyed the bone to be replaced).
    source: str = "resected"
    # Gap between each host cut face and the implant's contact face (cement or
    # press-fit allowance); the implant is cut by the planes moved this far
    # into the removed part, so its faces stay planar and parallel.
    clearance_mm: float = 0.0
    # For the mass in the fit report; Ti-6Al-4V, the usual printed alloy.
    density_g_per_cm3: float = 4.43
    # Flanges and screws ([implant.fixation]); None: the implant alone.
    fixation: FixationConfig | None = None


@dataclass(frozen=True)
class GuidesConfig:
    """Patient-specific cutting guides, one per resection plane (off by default).

    A guide is a seat that follows the bone around the cut line (the
    surface offset by ``contact_clearance_mm``, ``wall_mm`` thick), a slot
    block on it whose slot mid-plane is the cut plane, and K-wire holes
    through the seat into the host bone; see :mod:`pipeline.design.guides`.
    """

    enabled: bool = False
    # Saw blade thickness (mm); 1.27 mm is a common oscillating-saw blade.
    blade_thickness_mm: float = 1.27
    # Printing allowance per side (mm) for the slot (printed width = blade +
    # 2 x this) and the K-wire holes (diameter + 2 x this); 0.25 for resin.
    slot_tolerance_mm: float = 0.25
    # The slot's guiding length (mm): the least height of its walls above the
    # bone; under 10 mm a blade tilts in it.
    slot_depth_mm: float = 12.0
    # Thickness of the seat and of the walls around the slot (mm).
    wall_mm: float = 3.5
    # Gap between the seat's underside and the bone (mm).
    contact_clearance_mm: float = 0.3
    # How far the seat reaches on each side of the cut line (mm), measured
    # from the cut plane.
    footprint_mm: float = 15.0
    # The direction the surgeon comes from (LPS, need not be unit length):
    # the guide is placed and lifted off along it (projected onto each
    # plane, so the blade enters in the plane). One vector for every plane,
    # or per plane: ((plane name, vector), ...); empty = required when enabled.
    approach_lps: tuple[float, float, float] | None = None
    approach_per_plane: tuple[tuple[str, tuple[float, float, float]], ...] = ()
    # K-wires that pin each guide to the host bone: diameter (mm), how many,
    # and how deep each runs in host bone (mm).
    kwire_diameter_mm: float = 2.0
    kwires: int = 2
    kwire_depth_mm: float = 20.0
    # Length over which each K-wire hole guides its wire (mm): the seat and a
    # sleeve rising from it. With the printing allowance each side, a wire in
    # the seat alone (3.5 mm) may lean 8 degrees, 3 mm off at 20 mm deep.
    kwire_guide_mm: float = 10.0

    def approach_for(self, plane_name: str) -> tuple[float, float, float]:
        for name, vector in self.approach_per_plane:
            if name == plane_name:
                return vector
        if self.approach_lps is None:
            raise ConfigError(f"guides.approach_lps gives no direction for plane {plane_name!r}")
        return self.approach_lps

    @property
    def slot_width_mm(self) -> float:
        return self.blade_thickness_mm + 2.0 * self.slot_tolerance_mm


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
    implant: ImplantConfig = ImplantConfig()
    guides: GuidesConfig = GuidesConfig()
    source: str = "<defaults>"

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form (for the report)."""
        d = dataclasses.asdict(self)
        d["guides"]["approach_lps"] = (list(self.guides.approach_lps) if self.guides.approach_lps else None)
        d["guides"]["approach_per_plane"] = {n: list(v) for n, v in self.guides.approach_per_plane}
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
        return parse_config(raw, source=str(path), base_dir=path.parent)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def parse_config(raw: dict[str, Any], *, source: str = "<dict>", base_dir: str | Path = ".") -> Config:
    """Validate a parsed TOML table; relative paths in it (markups files) are
    relative to ``base_dir``, the config file's folder."""
    _no_unknown(raw, {"load", "segment", "surface", "resection", "implant", "guides"}, "")
    load = _section(LoadConfig, raw.get("load", {}), "load")
    _check_load(load)
    segment = _segment(raw.get("segment", {}), Path(base_dir))
    surface = _section(SurfaceConfig, raw.get("surface", {}), "surface")
    _check_segment(segment)
    _check_surface(surface)
    resection = _resection(raw.get("resection", {}), Path(base_dir))
    implant = _implant(raw.get("implant", {}))
    guides = _guides(raw.get("guides", {}), resection.planes)
    return Config(load=load, segment=segment, surface=surface, resection=resection, implant=implant,
                  guides=guides, source=source)


def _segment(table: Any, base_dir: Path) -> SegmentConfig:
    """The numeric keys as any section's, plus the label map to use instead of
    the automatic labels and its segment-name table."""
    _no_unknown(table, {f.name for f in dataclasses.fields(SegmentConfig)}, "segment.")
    numbers = {k: v for k, v in table.items() if k not in ("labels_file", "label_names")}
    segment = _section(SegmentConfig, numbers, "segment")
    kwargs: dict[str, Any] = {}
    if "labels_file" in table:
        path = table["labels_file"]
        if not isinstance(path, str) or not path:
            raise ConfigError("segment.labels_file must be a file or folder path (string)")
        kwargs["labels_file"] = str(base_dir / path)
    if "label_names" in table:
        names = table["label_names"]
        if not isinstance(names, dict):
            raise ConfigError("segment.label_names must be a table of segment name = bone name")
        for name, bone in names.items():
            if bone not in LABEL_IDS:
                raise ConfigError(f"segment.label_names.{name!r} = {bone!r} is not a bone name "
                                  f"(known: {', '.join(LABEL_IDS)})")
        kwargs["label_names"] = tuple((str(name), bone) for name, bone in names.items())
    return dataclasses.replace(segment, **kwargs)


def _implant(table: Any) -> ImplantConfig:
    _no_unknown(table, {f.name for f in dataclasses.fields(ImplantConfig)}, "implant.")
    kwargs: dict[str, Any] = {}
    if "fixation" in table:
        kwargs["fixation"] = _fixation(table["fixation"])
    if "source" in table:
        if table["source"] not in IMPLANT_SOURCES:
            raise ConfigError(f"implant.source must be one of {', '.join(IMPLANT_SOURCES)}, "
                              f"got {table['source']!r}")
        kwargs["source"] = table["source"]
    for key, low, high in (("clearance_mm", 0.0, 5.0), ("density_g_per_cm3", 0.1, 25.0)):
        if key in table:
            kwargs[key] = _number(table[key], f"implant.{key}")
            if not low <= kwargs[key] <= high:
                raise ConfigError(f"implant.{key} must be between {low:g} and {high:g}")
    return ImplantConfig(**kwargs)


# (key, lowest, highest) of the guides' numeric settings, in mm.
GUIDE_RANGES_MM = (("blade_thickness_mm", 0.3, 5.0), ("slot_tolerance_mm", 0.0, 1.0),
                   ("slot_depth_mm", 10.0, 60.0), ("wall_mm", 1.5, 10.0),
                   ("contact_clearance_mm", 0.0, 2.0), ("footprint_mm", 5.0, 60.0),
                   ("kwire_diameter_mm", 1.0, 5.0), ("kwire_depth_mm", 5.0, 80.0), ("kwire_guide_mm", 0.0, 40.0))


def _guides(table: Any, planes: tuple[Plane, ...]) -> GuidesConfig:
    _no_unknown(table, {f.name for f in dataclasses.fields(GuidesConfig)} - {"approach_per_plane"}, "guides.")
    kwargs: dict[str, Any] = {}
    if "enabled" in table:
        if not isinstance(table["enabled"], bool):
            raise ConfigError("guides.enabled must be true or false")
        kwargs["enabled"] = table["enabled"]
    for key, low, high in GUIDE_RANGES_MM:
        if key in table:
            kwargs[key] = _number(table[key], f"guides.{key}")
            if not low <= kwargs[key] <= high:
                raise ConfigError(f"guides.{key} must be between {low:g} and {high:g} mm")
    if "kwires" in table:
        count = table["kwires"]
        if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= 8:
            raise ConfigError(f"guides.kwires must be a whole number from 2 to 8, got {count!r}")
        kwargs["kwires"] = count
    names = [p.name for p in planes]
    if "approach_lps" in table:
        value = table["approach_lps"]
        if isinstance(value, dict):
            per_plane = []
            for name, vector in value.items():
                if name not in names:
                    raise ConfigError(f"guides.approach_lps.{name} names no plane of resection.planes "
                                      f"({', '.join(names) or 'none'})")
                per_plane.append((name, _direction(vector, f"guides.approach_lps.{name}")))
            kwargs["approach_per_plane"] = tuple(per_plane)
        else:
            kwargs["approach_lps"] = _direction(value, "guides.approach_lps")
    guides = GuidesConfig(**kwargs)
    if guides.enabled:
        _check_guides(guides, planes)
    return guides


def _direction(value: Any, key: str) -> tuple[float, float, float]:
    vector = np.asarray(_vector3(value, key))
    length = float(np.linalg.norm(vector))
    if length < 1e-9:
        raise ConfigError(f"{key} must not be the zero vector")
    return tuple(float(v) for v in vector / length)  # type: ignore[return-value]


# The approach must lie within this angle of a plane: the blade enters the
# slot along it, in the plane.
MAX_APPROACH_TILT_DEG = 45.0


def _check_guides(g: GuidesConfig, planes: tuple[Plane, ...]) -> None:
    if not planes:
        raise ConfigError("guides.enabled needs resection.planes to guide")
    for i, plane in enumerate(planes):
        key = (f"guides.approach_lps.{plane.name}" if any(n == plane.name for n, _ in g.approach_per_plane)
               else "guides.approach_lps")
        if key == "guides.approach_lps" and g.approach_lps is None:
            raise ConfigError(f"guides.approach_lps is missing for resection.planes[{i}] ({plane.name}): "
                              "give one direction, or a table of plane name = direction")
        tilt = math.degrees(math.asin(min(1.0, abs(float(np.dot(g.approach_for(plane.name), plane.normal_lps))))))
        if tilt > MAX_APPROACH_TILT_DEG:
            raise ConfigError(f"{key} meets resection.planes[{i}] ({plane.name}) at {tilt:.0f} degrees; "
                              f"the blade enters along it, so it must lie within {MAX_APPROACH_TILT_DEG:g} "
                              "degrees of the plane")
    stems = [guide_stem(p.name) for p in planes]
    if len(set(stems)) != len(stems):
        raise ConfigError("guides: two resection.planes names give the same guide file name "
                          f"({', '.join(f'guide_{s}.stl' for s in stems)}); rename a plane")
    # The K-wire holes lie in the seat beside the slot block, with 1 mm of
    # seat on either side of them.
    need_mm = g.slot_width_mm / 2 + g.wall_mm + g.kwire_diameter_mm + 2 * g.slot_tolerance_mm + 2.0
    if g.footprint_mm < need_mm:
        raise ConfigError(f"guides.footprint_mm must be at least {need_mm:.1f} mm with this slot, wall and "
                          "K-wire size: the K-wire holes lie in the seat beside the slot block")


def guide_stem(plane_name: str) -> str:
    """The plane's name as it appears in ``guide_<name>.stl``: letters,
    digits, '-', '_' and '.' kept, anything else '_'."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in plane_name) or "plane"


# Allowed ranges of the fixation settings (inclusive), in their units.
FIXATION_RANGES = {
    "flange_width_mm": (2.0, 60.0), "flange_thickness_mm": (0.5, 15.0), "flange_clearance_mm": (0.0, 3.0),
    "flange_grid_mm": (0.2, 2.0), "screw_diameter_mm": (2.0, 12.0), "screws_per_flange": (0, 12),
    "min_bone_margin_mm": (0.0, 10.0), "min_length_in_bone_mm": (5.0, 150.0), "max_length_mm": (10.0, 200.0),
    "hole_clearance_mm": (0.0, 3.0), "max_screw_angle_deg": (0.0, 60.0), "iliosacral_screws": (1, 4),
    "iliosacral_diameter_mm": (2.0, 12.0),
}


def _fixation(table: Any) -> FixationConfig:
    fields = {f.name for f in dataclasses.fields(FixationConfig)}
    _no_unknown(table, fields, "implant.fixation.")
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        name = f"implant.fixation.{key}"
        if key == "iliosacral":
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}")
            kwargs[key] = value
            continue
        if key in ("screws_per_flange", "iliosacral_screws"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be a whole number, got {value!r}")
            kwargs[key] = value
        else:
            kwargs[key] = _number(value, name)
        low, high = FIXATION_RANGES[key]
        if not low <= kwargs[key] <= high:
            raise ConfigError(f"{name} must be between {low:g} and {high:g}")
    fixation = FixationConfig(**kwargs)
    if fixation.min_length_in_bone_mm >= fixation.max_length_mm:
        raise ConfigError("implant.fixation.min_length_in_bone_mm must be less than max_length_mm")
    return fixation


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


def _resection(table: Any, base_dir: Path) -> ResectionConfig:
    _no_unknown(table, {"planes", "min_fragment_mm3", "structures"}, "resection.")
    raw_planes = table.get("planes", [])
    if not isinstance(raw_planes, list):
        raise ConfigError("resection.planes must be an array of tables ([[resection.planes]])")
    planes = tuple(_plane(p, f"resection.planes[{i}]", base_dir) for i, p in enumerate(raw_planes))
    for i, plane in enumerate(planes):
        first = next(j for j, other in enumerate(planes) if other.name == plane.name)
        if first < i:   # the report, the fixation's flanges and the guides go by plane name
            raise ConfigError(f"resection.planes[{i}].name {plane.name!r} is the name of resection.planes[{first}] "
                              "too: give each plane its own name")
    kwargs = {}
    if "min_fragment_mm3" in table:
        kwargs["min_fragment_mm3"] = _number(table["min_fragment_mm3"], "resection.min_fragment_mm3")
        if kwargs["min_fragment_mm3"] < 0:
            raise ConfigError("resection.min_fragment_mm3 must be >= 0")
    if "structures" in table:
        kwargs["structures"] = _structures(table["structures"], "resection.structures")
    cuttable = kwargs.get("structures", ResectionConfig.structures)
    for i, plane in enumerate(planes):
        for name in plane.structures:
            if name not in cuttable:
                raise ConfigError(f"resection.planes[{i}].structures names {name!r}, which "
                                  f"resection.structures does not allow to be cut ({', '.join(cuttable)})")
    return ResectionConfig(planes=planes, **kwargs)


def _structures(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key} must be a non-empty list of bone names, got {value!r}")
    for i, name in enumerate(value):
        if name not in LABEL_IDS:
            raise ConfigError(f"{key}[{i}] = {name!r} is not a bone name "
                              f"(known: {', '.join(LABEL_IDS)})")
    if len(set(value)) != len(value):
        raise ConfigError(f"{key} lists a bone twice")
    return tuple(value)


PLANE_FORMS = "point_lps_mm + normal_lps, points_lps_mm + removed_side_lps_mm, or markups"


def _plane(table: Any, key: str, base_dir: Path) -> Plane:
    """A plane in any of its three forms (see pipeline.plan), plus name, margin and flip."""
    from .plan import plane_through_points, read_markups_plane

    _no_unknown(table, {"name", "point_lps_mm", "normal_lps", "points_lps_mm", "removed_side_lps_mm",
                        "markups", "flip", "margin_mm", "structures"}, f"{key}.")
    forms = [f for f, k in (("point", "point_lps_mm"), ("point", "normal_lps"), ("points", "points_lps_mm"),
                            ("points", "removed_side_lps_mm"), ("markups", "markups")) if k in table]
    if len(set(forms)) > 1:
        raise ConfigError(f"{key}: give one form of plane ({PLANE_FORMS}), not several")
    form = forms[0] if forms else "point"
    if form == "point":
        for required in ("point_lps_mm", "normal_lps"):
            if required not in table:
                raise ConfigError(f"{key}.{required} is missing")
        point = np.asarray(_vector3(table["point_lps_mm"], f"{key}.point_lps_mm"))
        normal = np.asarray(_vector3(table["normal_lps"], f"{key}.normal_lps"))
        if float(np.linalg.norm(normal)) < 1e-9:
            raise ConfigError(f"{key}.normal_lps must not be the zero vector")
    elif form == "points":
        for required in ("points_lps_mm", "removed_side_lps_mm"):
            if required not in table:
                raise ConfigError(f"{key}.{required} is missing (three points need the removed side)")
        raw = table["points_lps_mm"]
        if not isinstance(raw, list) or len(raw) != 3:
            raise ConfigError(f"{key}.points_lps_mm must be a list of 3 points, got {raw!r}")
        points = np.array([_vector3(p, f"{key}.points_lps_mm[{i}]") for i, p in enumerate(raw)])
        side = np.asarray(_vector3(table["removed_side_lps_mm"], f"{key}.removed_side_lps_mm"))
        point, normal = plane_through_points(points, side, f"{key}.points_lps_mm")
    else:
        path = table["markups"]
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{key}.markups must be a file path (string)")
        point, normal = read_markups_plane(base_dir / path, f"{key}.markups", name=table.get("name"))
    flip = table.get("flip", False)
    if not isinstance(flip, bool):
        raise ConfigError(f"{key}.flip must be true or false")
    if flip and form != "markups":
        raise ConfigError(f"{key}.flip applies to a markups plane only; reverse normal_lps or "
                          "move removed_side_lps_mm instead")
    margin = _number(table.get("margin_mm", 0.0), f"{key}.margin_mm")
    if not 0 <= margin <= 50:
        raise ConfigError(f"{key}.margin_mm must be between 0 and 50 mm")
    name = table.get("name", key)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{key}.name must be a non-empty string")
    structures = _structures(table["structures"], f"{key}.structures") if "structures" in table else ()
    return Plane(point_lps_mm=tuple(point), normal_lps=tuple(-normal if flip else normal), name=name,
                 margin_mm=margin, structures=structures)
