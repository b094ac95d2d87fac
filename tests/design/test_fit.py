"""Fit numbers against shapes whose answers are known."""

import numpy as np
import pytest
import trimesh

from pipeline.config import Plane
from pipeline.design.fit import TI6AL4V_G_PER_CM3, contact_fit, implant_fit, wall_figures
from pipeline.geometry.resect import resect


def test_a_cut_sphere_fits_perfectly():
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=30.0)
    plane = Plane(point_lps_mm=(0, 0, 10.0), normal_lps=(0, 0, 1))
    cut = resect(sphere, (plane,))
    fit = contact_fit(cut.implant, cut.implant_contact_faces[0], cut.host, cut.host_cut_faces[0], plane)
    assert fit["host_cut_area_mm2"] == pytest.approx(np.pi * (30**2 - 10**2), rel=0.01)
    assert fit["implant_contact_area_mm2"] == pytest.approx(fit["host_cut_area_mm2"], rel=1e-9)
    assert fit["overlap_ratio"] == pytest.approx(1.0, abs=1e-9)
    assert fit["max_outline_distance_mm"] <= 1e-6
    assert max(abs(v) for v in fit["gap_mm"].values()) <= 1e-9
    assert fit["flatness_mm"] <= 1e-9
    # The same triangles on both faces, well shaped.
    assert fit["triangles"]["host"] == fit["triangles"]["implant"]
    assert fit["triangles"]["implant"]["share_min_angle_at_least_20_deg"] >= 0.95
    assert fit["triangles"]["implant"]["zero_area_triangles"] == 0


def test_shifted_outline_overlap_and_distance():
    """Two 20 x 20 mm squares in the plane z = 0, one shifted 2 mm in x:
    overlap 18/20 of the host's, outlines 2 mm apart, gap 0.5 mm."""
    host = trimesh.creation.box(extents=(20, 20, 10)).apply_translation((0, 0, -5))
    implant = trimesh.creation.box(extents=(20, 20, 10)).apply_translation((2, 0, 5.5))
    plane = Plane(point_lps_mm=(0, 0, 0), normal_lps=(0, 0, 1))
    host_faces = np.flatnonzero(np.isclose(host.triangles_center[:, 2], 0))
    implant_faces = np.flatnonzero(np.isclose(implant.triangles_center[:, 2], 0.5))
    fit = contact_fit(implant, implant_faces, host, host_faces, plane)
    assert fit["overlap_ratio"] == pytest.approx(18 / 20, rel=1e-9)
    assert fit["max_outline_distance_mm"] == pytest.approx(2.0, abs=0.01)
    assert fit["gap_mm"] == pytest.approx({"min": 0.5, "mean": 0.5, "max": 0.5})


def test_implant_size_mass_and_wall_thickness():
    # A slab 8 mm thick: its thinnest wall is 8 mm wherever the rays start.
    slab = trimesh.creation.box(extents=(40, 8, 25)).subdivide().subdivide()
    fit = implant_fit(slab)
    assert fit["volume_mm3"] == pytest.approx(8000.0)
    assert fit["mass_g"] == pytest.approx(8.0 * TI6AL4V_G_PER_CM3, rel=1e-3)
    assert fit["bounding_box_lps_mm"] == pytest.approx([40, 8, 25])
    assert fit["min_wall_thickness_mm"] == pytest.approx(8.0, abs=1e-6)
    # A tube: wall 3 mm (outer radius 12, inner 9).
    tube = trimesh.creation.annulus(r_min=9, r_max=12, height=30, sections=128)
    assert implant_fit(tube)["min_wall_thickness_mm"] == pytest.approx(3.0, abs=0.05)


def test_the_thin_walls_share_is_a_share_of_the_surface_not_of_the_triangles():
    """A fin 1 mm thick in many small triangles beside a block 20 mm thick in
    a few large ones: 3.6 % of the surface lies on walls under 20 mm (the
    fin's), so the thickness under which 5 % of it lies is 20 mm, though
    nearly every triangle is the fin's; the thinnest wall is the fin's."""
    fin = trimesh.creation.box(extents=(10, 1, 10))
    for _ in range(4):
        fin = fin.subdivide()
    block = trimesh.creation.box(extents=(40, 20, 40)).apply_translation([50, 0, 0])
    solid = trimesh.util.concatenate([fin, block])
    assert len(fin.faces) > 50 * len(block.faces)
    fit = implant_fit(solid)
    assert fit["min_wall_thickness_mm"] == pytest.approx(1.0, abs=1e-4)
    assert fit["wall_thickness_p5_mm"] == pytest.approx(20.0, abs=1e-4)
    assert fit["wall_thickness_samples"] == len(solid.faces)


def test_the_area_over_thin_walls_is_the_thin_parts_surface():
    """The same fin and block: the surface over walls under 2 mm is the fin's
    two broad faces (2 x 10 x 10 mm2; its edges' rays cross 10 mm of it),
    none under 1 mm."""
    fin = trimesh.creation.box(extents=(10, 1, 10)).subdivide()
    block = trimesh.creation.box(extents=(40, 20, 40)).apply_translation([50, 0, 0])
    solid = trimesh.util.concatenate([fin, block])
    assert wall_figures(solid, 2.0)["area_over_walls_under_2_mm_mm2"] == pytest.approx(200.0, abs=1e-6)
    assert wall_figures(solid, 1.0)["area_over_walls_under_1_mm_mm2"] == 0.0


def test_overlap_and_outline_distance_agree_about_a_dropped_fragment():
    """z > 10 cuts a sphere (r 30) and clips a 0.5 mm cap off a small sphere
    (r 2, top at z = 10.5, 45 mm away), too small to keep: the host keeps that
    cap's cut face, a disc of radius sqrt(4 - 1.5^2) = 1.32 mm, which the implant
    does not cover. The area figures say how much (the disc), the outline
    distance how far (its far edge, 45 + 1.32 - sqrt(30^2 - 10^2) = 18.04 mm
    from the implant's outline); the implant covers all else exactly."""
    big = trimesh.creation.icosphere(subdivisions=5, radius=30.0)
    small = trimesh.creation.icosphere(subdivisions=4, radius=2.0).apply_translation((0, 45, 8.5))
    plane = Plane(point_lps_mm=(0, 0, 10.0), normal_lps=(0, 0, 1))
    cut = resect(trimesh.util.concatenate([big, small]), (plane,), min_fragment_mm3=10.0)
    assert cut.shells["dropped_fragments"] == 1
    fit = contact_fit(cut.implant, cut.implant_contact_faces[0], cut.host, cut.host_cut_faces[0], plane)
    disc = np.pi * (4 - 1.5**2)
    big_disc = np.pi * (30**2 - 10**2)
    # Polygonal discs lie inside the circles: within 1 % of their areas (icosphere edges).
    assert fit["host_area_not_covered_mm2"] == pytest.approx(disc, rel=0.01)
    assert fit["implant_area_overhanging_mm2"] == pytest.approx(0.0, abs=1e-6)
    assert fit["host_cut_area_mm2"] - fit["host_area_not_covered_mm2"] == pytest.approx(
        fit["implant_contact_area_mm2"], abs=1e-3)
    assert fit["overlap_ratio"] == pytest.approx(fit["implant_contact_area_mm2"] / fit["host_cut_area_mm2"], abs=1e-6)
    assert fit["overlap_ratio"] == pytest.approx(big_disc / (big_disc + disc), rel=1e-3)
    assert fit["max_outline_distance_mm"] == pytest.approx(45 + np.sqrt(4 - 1.5**2) - np.sqrt(800), abs=0.1)
