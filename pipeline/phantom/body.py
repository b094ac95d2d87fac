"""The body around a phantom's bones: fat over muscle, the bladder, contrast
and calcifications, and the CT couch.

Every tissue here is label 0 (not bone). Several are above a 200 HU bone
threshold on purpose, because real scans have them: the couch's carbon-fibre
skin and metal rails, contrast-filled arteries and bladder, calcified plaques
and phleboliths. Shapes are exact SDFs of :mod:`pipeline.phantom.analytic`
(elliptic cylinder, capsules, spheres, boxes) or first-order ellipsoids
(the bladder).
"""

from __future__ import annotations

from dataclasses import dataclass

from .analytic import (_capsule, _Difference, _ellipsoid, _elliptic_cylinder_z, _Level, _p, _prism_z,
                       _sphere, _Tissue)

HU_AIR = -1000.0
HU_FAT = -100.0
HU_MUSCLE = 40.0
HU_BLADDER = 10.0
HU_PAD = -900.0           # foam mattress between patient and couch
HU_COUCH_SHELL = 550.0    # carbon-fibre skin: above a 200 HU bone threshold on purpose
HU_COUCH_FOAM = -850.0
HU_RAIL = 2000.0          # metal rails at the couch's lateral edges
# contrast=True: enhanced aorta, arteries and bladder and calcified specks, all above
# a 200 HU bone threshold and none of them bone.
HU_ARTERY_CONTRAST = 350.0
# Excreted contrast in a delayed phase: as dense as cortex, and dense
# throughout (a pool, not a shell: see segment.flood.POOL_SHARE).
HU_BLADDER_CONTRAST = 1200.0
HU_CALCIFIED = 900.0         # plaques in the artery wall, phleboliths

FAT_MM = 15.0                        # subcutaneous fat layer
BODY_SEMI_AXES_MM = (170.0, 120.0)   # body cross-section, left-right x anterior-posterior

_PAD_Y_MM = (112.0, 128.0)           # the body's back (y = 120) sinks into the pad
_PLATE_Y_MM = (128.0, 140.0)
_PLATE_SHELL_MM = 2.0
_RAIL_Y_MM = (126.0, 146.0)
_RAIL_WIDTH_MM = 10.0
_RAIL_MARGIN_MM = 4.0                # rails this far inside the lateral FOV edges


@dataclass(frozen=True)
class SoftLayout:
    """Where the soft tissues lie (LPS mm; the arteries and plaques are given
    for the left side and mirrored in x).
    ``bladder``: (centre, semi-axes). ``artery``: (start, end, radius).
    ``aorta``: (start, end, radius), on the midline.
    ``plaques``, ``phleboliths``: ((centre, radius), ...)."""

    bladder: tuple
    artery: tuple
    aorta: tuple
    plaques: tuple
    phleboliths: tuple


def soft_tissues(fov_x_mm: tuple[float, float], couch: bool, contrast: bool,
                 layout: SoftLayout) -> list[_Tissue]:
    """Body (fat over muscle), bladder, optionally contrast (enhanced aorta,
    iliac arteries and bladder, calcifications) and the couch spanning the FOV's x range."""
    body = _elliptic_cylinder_z((0.0, 0.0), BODY_SEMI_AXES_MM)
    bladder_hu = HU_BLADDER_CONTRAST if contrast else HU_BLADDER
    out = [_Tissue(body, HU_AIR, (_Level(0.0, HU_FAT), _Level(FAT_MM, HU_MUSCLE))),
           _Tissue(_ellipsoid(*layout.bladder), HU_MUSCLE, (_Level(0.0, bladder_hu),))]
    if contrast:
        out.append(_Tissue(_capsule(*layout.aorta), HU_MUSCLE, (_Level(0.0, HU_ARTERY_CONTRAST),)))
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
