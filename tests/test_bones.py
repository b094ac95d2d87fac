"""Segment names of other tools -> our bones."""

import pytest

from pipeline.bones import LABEL_NAMES, TOTALSEGMENTATOR_IDS, bone_for_segment

SLICER_GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"


@pytest.mark.parametrize("name, bone", [
    # ours
    *[(name, name) for name in LABEL_NAMES.values()],
    # TotalSegmentator's
    ("hip_left", "hip_left"), ("femur_right", "femur_right"), ("vertebrae_L5", "lumbar"),
    ("vertebrae_T12", "other"), ("vertebrae_C7", "other"), ("vertebrae_S1", "sacrum"),
    # common synonyms, either order, any case and separators
    ("Left hip bone", "hip_left"), ("hip bone, right", "hip_right"), ("os coxae dextra", "hip_right"),
    ("R innominate", "hip_right"), ("Left hemipelvis", "hip_left"), ("Femur-Left", "femur_left"),
    ("left_femur", "femur_left"), ("Right femur", "femur_right"), ("Sacrum", "sacrum"), ("coccyx", "sacrum"),
    ("L5", "lumbar"), ("L4 vertebra", "lumbar"), ("lumbar spine", "lumbar"),
    ("lumbar vertebral column", "lumbar"), ("thoracic spine", "other"), ("T12", "other"),
    # the rest of the skeleton, either side: other bone
    ("rib_left_7", "other"), ("rib_right_12", "other"), ("ribs", "other"),
    ("sternum", "other"), ("clavicula_right", "other"), ("Left scapula", "other"), ("humerus_left", "other"),
    ("skull", "other"),
])
def test_names_of_our_bones_are_recognised(name, bone):
    assert bone_for_segment(name) == bone


@pytest.mark.parametrize("name", ["femur", "hip", "Segment_1", "liver", "left lung", "hip left right",
                                  "sacrum left", "iliopsoas_left", "costal_cartilages", "rib left right"])
def test_other_names_and_bones_without_their_side_are_not(name):
    assert bone_for_segment(name) is None


def test_a_slicer_terminology_entry_names_the_bone_when_the_name_does_not():
    femur_left = f"{SLICER_GENERAL_ANATOMY}~SCT^123037004^Anatomical Structure~SCT^71341001^Femur~SCT^7771000^Left~~^^~^^"
    sacrum = f"{SLICER_GENERAL_ANATOMY}~SCT^123037004^Anatomical Structure~SCT^54735007^Sacrum~^^~~^^~^^"
    femur_no_side = f"{SLICER_GENERAL_ANATOMY}~SCT^123037004^Anatomical Structure~SCT^71341001^Femur~^^~~^^~^^"
    assert bone_for_segment("Segment_3", femur_left) == "femur_left"
    assert bone_for_segment("Segment_4", sacrum) == "sacrum"
    assert bone_for_segment("Segment_5", femur_no_side) is None
    assert bone_for_segment("right femur", femur_left) == "femur_right"   # the name comes first


def test_totalsegmentator_ids_of_the_bones_we_name():
    """Its published v2 class map ("total" task): 25 sacrum, 26 S1, 27-31 L5-L1,
    75/76 femur left/right, 77/78 hip left/right."""
    assert {k: TOTALSEGMENTATOR_IDS[k] for k in (25, 26, 27, 31, 32, 75, 76, 77, 78)} == {
        25: "sacrum", 26: "vertebrae_S1", 27: "vertebrae_L5", 31: "vertebrae_L1", 32: "vertebrae_T12",
        75: "femur_left", 76: "femur_right", 77: "hip_left", 78: "hip_right"}
    assert {bone_for_segment(name) for name in TOTALSEGMENTATOR_IDS.values()} == set(LABEL_NAMES.values())
    # The rest of its skeleton (ribs, sternum, shoulders, humeri, skull) is other bone; its costal cartilages are not bone.
    assert {k: TOTALSEGMENTATOR_IDS[k] for k in (69, 74, 91, 92, 103, 104, 115, 116)} == {
        69: "humerus_left", 74: "clavicula_right", 91: "skull", 92: "rib_left_1", 103: "rib_left_12",
        104: "rib_right_1", 115: "rib_right_12", 116: "sternum"}
    assert 117 not in TOTALSEGMENTATOR_IDS
