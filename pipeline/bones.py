"""The label table: which bones the pipeline names, and the value each has in a label map.

One home for bone names and label values; configuration (``resection.structures``),
labelling, evaluation, export and the QA images all read it from here. So do the
names other tools give the same bones: segment colours and standard terminology
for 3D Slicer, TotalSegmentator's class ids, and the synonyms under which a
segment of a label map read back is recognised (:func:`bone_for_segment`).
"""

from __future__ import annotations

import re

LABEL_NAMES = {1: "hip_left", 2: "hip_right", 3: "sacrum", 4: "femur_left", 5: "femur_right",
               6: "lumbar", 7: "other"}
LABEL_IDS = {name: label for label, name in LABEL_NAMES.items()}
HIP_LEFT, HIP_RIGHT, SACRUM, FEMUR_LEFT, FEMUR_RIGHT, LUMBAR, OTHER = (LABEL_IDS[name] for name in (
    "hip_left", "hip_right", "sacrum", "femur_left", "femur_right", "lumbar", "other"))

# Display colour per bone (RGB 0-255): the QA overlays and the 3D Slicer segments use the same.
LABEL_COLOURS_RGB = {"hip_left": (230, 60, 60), "hip_right": (60, 120, 230), "sacrum": (240, 200, 40),
                     "femur_left": (200, 80, 220), "femur_right": (60, 200, 200), "lumbar": (120, 220, 90),
                     "other": (160, 160, 160)}

# Standard terminology (SNOMED CT, coding scheme "SCT") per bone, as 3D Slicer and
# DICOM segmentations carry it: (type code, type meaning, side modifier code or "").
# The codes are those TotalSegmentator gives the same structures, so a segment of
# ours and one of TotalSegmentator's mean the same thing to a terminology-aware
# tool. "other" has no single structure, hence no entry.
SNOMED_LEFT, SNOMED_RIGHT = "7771000", "24028007"
SNOMED_SIDES = {SNOMED_LEFT: "left", SNOMED_RIGHT: "right"}
SNOMED_TYPES = {"29836001": ("hip", "Hip"), "71341001": ("femur", "Femur"), "54735007": ("sacrum", "Sacrum"),
                "65985001": ("sacrum", "S1 vertebra"), "122496007": ("lumbar", "Lumbar spine")}
BONE_TERMINOLOGY = {"hip_left": ("29836001", SNOMED_LEFT), "hip_right": ("29836001", SNOMED_RIGHT),
                    "sacrum": ("54735007", ""), "femur_left": ("71341001", SNOMED_LEFT),
                    "femur_right": ("71341001", SNOMED_RIGHT), "lumbar": ("122496007", "")}

# TotalSegmentator (v2, task "total") class ids of its bones; its
# multi-label files usually carry these names themselves, the table is for
# files that do not. L1-L5 are our "lumbar", S1 belongs to the sacrum, the
# vertebrae above L1, the ribs, sternum, shoulder girdles, humeri and skull
# are "other" bone (its costal cartilages, 117, are not bone).
TOTALSEGMENTATOR_IDS = {25: "sacrum", 26: "vertebrae_S1",
                        **{27 + i: f"vertebrae_L{5 - i}" for i in range(5)},
                        **{32 + i: f"vertebrae_T{12 - i}" for i in range(12)},
                        **{44 + i: f"vertebrae_C{7 - i}" for i in range(7)},
                        69: "humerus_left", 70: "humerus_right", 71: "scapula_left", 72: "scapula_right",
                        73: "clavicula_left", 74: "clavicula_right",
                        75: "femur_left", 76: "femur_right", 77: "hip_left", 78: "hip_right", 91: "skull",
                        **{92 + i: f"rib_left_{i + 1}" for i in range(12)},
                        **{104 + i: f"rib_right_{i + 1}" for i in range(12)}, 116: "sternum"}

# Segment names, lower case with every run of other characters read as one
# space, the side words taken out: the structure they name.
_SIDE_WORDS = {"left": "left", "l": "left", "lt": "left", "sin": "left", "sinister": "left",
               "sinistra": "left", "right": "right", "r": "right", "rt": "right", "dex": "right",
               "dexter": "right", "dextra": "right"}
_SIDED = {**dict.fromkeys(("hip", "hip bone", "hipbone", "os coxae", "coxae", "coxal bone", "innominate",
                           "innominate bone", "pelvic bone", "hemipelvis", "pelvis"), "hip"),
          **dict.fromkeys(("femur", "femur bone", "femoral bone", "thigh bone", "proximal femur"), "femur")}
_UNSIDED = {**dict.fromkeys(("sacrum", "os sacrum", "sacral bone", "sacrum and coccyx", "sacrococcyx",
                             "coccyx", "sacral vertebrae"), "sacrum"),
            **{f"{region} {kind}".strip(): "lumbar" if region == "lumbar" else "other"
               for region in ("lumbar", "thoracic", "cervical")
               for kind in ("", "spine", "vertebra", "vertebrae", "vertebral column")},
            **dict.fromkeys(("spine", "vertebrae", "vertebral column"), "lumbar"),
            **dict.fromkeys(("other", "other bone"), "other")}
# One vertebra: "vertebrae_L5", "L5", "L5 vertebra"; S1 is the sacrum's.
_VERTEBRA = re.compile(r"^(?:vertebrae? )?([ltcs])(\d{1,2})(?: vertebrae?)?$")
# The rest of the skeleton, either side: "other" bone ("rib_left_7", "ribs", "sternum").
_OTHER_BONE = re.compile(r"^(?:ribs?(?: \d{1,2})?|sternum|clavicula|clavicle|scapula|humerus|skull)$")


def bone_for_segment(name: str, terminology: str = "") -> str | None:
    """The bone (a value of :data:`LABEL_NAMES`) a segment of another tool's
    label map is, from its name, else from its terminology entry; ``None``
    when neither names one of our bones.

    Names are our own ("hip_left"), TotalSegmentator's ("vertebrae_L5",
    "femur_right") and common synonyms in either order ("Left hip bone",
    "os coxae dextra", "L5", "lumbar spine"); a bone that has a side needs a
    side ("femur" alone is not recognised). ``terminology`` is a 3D Slicer
    terminology entry ("...~SCT^71341001^Femur~SCT^7771000^Left~..."), whose
    structure and side codes are read when the name says nothing.
    """
    words = re.sub(r"[^a-z0-9]+", " ", name.lower()).split()
    sides = {_SIDE_WORDS[w] for w in words if w in _SIDE_WORDS}
    rest = " ".join(w for w in words if w not in _SIDE_WORDS)
    vertebra = _VERTEBRA.match(rest)
    if vertebra and not sides:
        return {"s": "sacrum", "l": "lumbar"}.get(vertebra.group(1), "other")
    if rest in _UNSIDED and not sides:
        return _UNSIDED[rest]
    if _OTHER_BONE.match(rest) and len(sides) <= 1:
        return "other"
    if rest in _SIDED and len(sides) == 1:
        return f"{_SIDED[rest]}_{sides.pop()}"
    return _bone_for_terminology(terminology) if terminology else None


def _bone_for_terminology(entry: str) -> str | None:
    """Structure and side from a 3D Slicer terminology entry string
    (context~category~type~type modifier~anatomic context~region~region modifier,
    each code as scheme^value^meaning)."""
    parts = entry.split("~")
    if len(parts) < 4:
        return None
    kind, modifier = parts[2].split("^"), parts[3].split("^")
    if len(kind) < 2 or kind[0] != "SCT" or kind[1] not in SNOMED_TYPES:
        return None
    structure = SNOMED_TYPES[kind[1]][0]
    side = SNOMED_SIDES.get(modifier[1]) if len(modifier) > 1 and modifier[0] == "SCT" else None
    if structure in ("hip", "femur"):
        return f"{structure}_{side}" if side else None
    return structure
