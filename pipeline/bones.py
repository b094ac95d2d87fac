"""The label table: which bones the pipeline names, and the value each has in a label map.

One home for bone names and label values; configuration (``resection.structures``),
labelling, evaluation, export and the QA images all read it from here.
"""

from __future__ import annotations

LABEL_NAMES = {1: "hip_left", 2: "hip_right", 3: "sacrum", 4: "femur_left", 5: "femur_right",
               6: "lumbar", 7: "other"}
LABEL_IDS = {name: label for label, name in LABEL_NAMES.items()}
