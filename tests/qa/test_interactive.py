"""The interactive 3D view: what it holds, its budget, its plane discs, and a
page with nothing to fetch. (A real browser opens it in test_browser.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import trimesh

from pipeline.config import Config, ImplantConfig, Plane, ResectionConfig
from pipeline.qa.images import HOST_RGB, IMPLANT_RGB, PLANE_MARGIN_MM, PLANE_RGB
from pipeline.qa import interactive
from pipeline.qa.interactive import READY_ATTRIBUTE, Lightening, interactive_view
from pipeline.qa.report_html import report_html
from pipeline.qa.scene import SceneObject, plane_disc, scene_objects

from ..helpers import external_references, view_meshes


def test_every_object_is_shown_at_one_density_and_small_ones_whole():
    """Three spheres of radius 10, 20 and 30 mm (surface 1 : 4 : 9) and a box
    of 12 triangles, 3000 triangles in all: the spheres' copies hold
    triangles in proportion to their surface, the box comes whole, and the
    view holds no more than the budget."""
    balls = [trimesh.creation.icosphere(subdivisions=5, radius=r) for r in (10.0, 20.0, 30.0)]
    box = trimesh.creation.box(bounds=[[40, -5, -5], [60, 5, 5]])
    objects = [SceneObject(f"ball {i}", b, (200, 100, 50)) for i, b in enumerate(balls)]
    objects.append(SceneObject("box", box, (50, 100, 200)))
    with Lightening(3000, 0.5) as lightening:
        views = lightening.views(objects)
    shown = [len(v.mesh.faces) for v in views]
    assert shown[3] == 12 and sum(shown) <= 3000
    per_mm2 = [n / b.area for n, b in zip(shown, balls)]
    assert max(per_mm2) / min(per_mm2) < 1.05   # the decimation stops within a few triangles of its target
    assert all(v.hausdorff_mm <= 0.5 for v in views)


def test_meshes_started_early_come_back_as_if_lightened_at_the_end():
    """The bones the plan leaves whole are handed over as soon as they are
    meshed, at the density all the bones set: the same copies as a view
    that lightens them at the end, and the objects given later are held
    to it too."""
    early = [trimesh.creation.icosphere(subdivisions=5, radius=r) for r in (10.0, 20.0)]
    late = trimesh.creation.icosphere(subdivisions=5, radius=30.0)
    objects = [SceneObject(f"ball {i}", m, (1, 2, 3)) for i, m in enumerate([*early, late])]
    with Lightening(3000, 0.5) as lightening:
        lightening.start(early, [*early, late])
        views = lightening.views(objects)
    with Lightening(3000, 0.5) as lightening:
        at_the_end = lightening.views(objects)
    for a, b in zip(views, at_the_end):
        assert np.array_equal(a.mesh.vertices, b.mesh.vertices) and np.array_equal(a.mesh.faces, b.mesh.faces)
        assert a.hausdorff_mm == b.hausdorff_mm
    assert sum(len(v.mesh.faces) for v in views) <= 3000


def test_a_plane_disc_lies_in_its_plane_around_the_contact_face():
    """A 40 x 20 x 30 box cut at z = 10: the contact face is its 40 x 20
    section, so the disc is centred on the section with a radius of half its
    diagonal plus the margin."""
    implant = trimesh.creation.box(bounds=[[0.0, -10.0, 10.0], [40.0, 10.0, 40.0]])
    plane = Plane((5.0, 0.0, 10.0), (0.0, 0.0, -1.0), "cut")
    disc = plane_disc(plane, implant)
    assert np.abs(plane.signed_distance_mm(disc.vertices)).max() < 1e-9
    centre = disc.vertices[0]
    assert centre == pytest.approx([20.0, 0.0, 10.0])
    radius = np.linalg.norm(disc.vertices[1:] - centre, axis=1)
    assert radius == pytest.approx(np.full(len(radius), np.hypot(20.0, 10.0) + PLANE_MARGIN_MM))


def test_scene_names_every_object_once_with_its_colour():
    host, implant = trimesh.creation.box(bounds=[[-50, -10, 0], [0, 10, 40]]), \
        trimesh.creation.box(bounds=[[0, -10, 0], [40, 10, 40]])
    femur = trimesh.creation.icosphere(radius=8.0)
    result = SimpleNamespace(host=host, implant=implant, context={"femur_left": femur}, label_meshes={},
                             mirrored_template=None)
    planes = (Plane((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), "ala"),)
    config = Config(resection=ResectionConfig(planes=planes), implant=ImplantConfig())
    objects = scene_objects(result, config)
    assert [o.name for o in objects] == ["host", "implant", "femur_left", "plane ala"]
    assert objects[0].rgb == HOST_RGB and objects[1].rgb == IMPLANT_RGB and objects[3].rgb == PLANE_RGB[0]
    assert len({o.rgb for o in objects}) == len(objects)
    assert objects[3].opacity < 1.0


def test_the_view_holds_each_object_within_budget_and_tolerance():
    """A fine sphere over its share is lightened within the tolerance (the
    meshes read back from the page); a box under its share comes whole."""
    ball = trimesh.creation.icosphere(subdivisions=5, radius=30.0)
    box = trimesh.creation.box(bounds=[[40, -5, -5], [60, 5, 5]])
    view = interactive_view([SceneObject("ball", ball, (200, 100, 50)), SceneObject("box", box, (50, 100, 200))],
                            max_triangles=3000, tolerance_mm=0.5)
    shown = view_meshes(view.html)
    assert set(shown) == {"ball", "box"}
    assert len(shown["ball"].faces) + len(shown["box"].faces) <= 3000
    assert np.array_equal(np.sort(shown["box"].vertices, axis=0), np.sort(np.float32(box.vertices), axis=0))
    # float32 in the page: 30 mm from the origin, a rounding of ~2e-6 mm.
    radius = np.linalg.norm(shown["ball"].vertices, axis=1)
    assert np.abs(radius - 30.0).max() <= 0.5
    facts = {m["name"]: m for m in view.meshes}
    assert facts["ball"]["view_triangles"] == len(shown["ball"].faces) and facts["ball"]["triangles"] == 20480
    assert facts["ball"]["hausdorff_mm"] <= 0.5 and facts["box"]["hausdorff_mm"] == 0.0


def test_the_report_page_carries_the_view_and_fetches_nothing():
    ball = trimesh.creation.icosphere(subdivisions=2, radius=10.0)
    view = interactive_view([SceneObject("implant", ball, IMPLANT_RGB)])
    page = report_html({"planes": []}, view3d=view)
    assert external_references(page) == []
    assert page.count("<script") >= 2 and "Plotly.newPlot" in page and READY_ATTRIBUTE in page
    assert "3D view" in page and "implant" in page


def test_a_view_further_from_its_stl_than_the_tolerance_is_flagged():
    ball = trimesh.creation.icosphere(subdivisions=4, radius=10.0)
    view = interactive_view([SceneObject("ball", ball, (1, 2, 3))], max_triangles=40, tolerance_mm=0.05)
    assert view.meshes[0]["hausdorff_mm"] > 0.05
    assert "beyond the 0.05 mm" in report_html({}, view3d=view)


def test_the_mirrored_template_starts_hidden_with_its_legend_entry():
    box = trimesh.creation.box(bounds=[[0, -10, 0], [40, 10, 40]])
    result = SimpleNamespace(host=box, implant=box, context={}, label_meshes={}, mirrored_template=box)
    config = Config(implant=ImplantConfig(source="mirrored"))
    objects = scene_objects(result, config)
    template = next(o for o in objects if o.name == "mirrored template")
    assert not template.visible and template.opacity < 1.0
    page = interactive_view(objects).html
    assert '"name":"mirrored template"' in page and '"visible":"legendonly"' in page
    resected = scene_objects(result, Config())
    assert "mirrored template" not in [o.name for o in resected]


def _sigint_in_worker(vertices, faces, budget, tolerance_mm):
    """A lightening worker that reports, as its distance, whether it ignores Ctrl-C."""
    import signal

    return vertices, faces, float(signal.getsignal(signal.SIGINT) is signal.SIG_IGN), len(faces)


def test_the_view_workers_leave_ctrl_c_to_the_run(monkeypatch):
    """Ctrl-C on a terminal reaches every process of the run: the worker
    processes lightening the 3D view printed tracebacks of their own. They
    now ignore it; the run stops in one line."""
    from pipeline.parallel import WORKERS

    if WORKERS < 2:
        pytest.skip("one core: the meshes are lightened in the run's own process")
    monkeypatch.setattr(interactive, "_lighten_arrays", _sigint_in_worker)
    meshes = [trimesh.creation.icosphere(subdivisions=3), trimesh.creation.icosphere(subdivisions=3)]
    objects = [SceneObject(f"bone {i}", mesh, (200, 200, 200)) for i, mesh in enumerate(meshes)]
    with Lightening(200, 0.5) as lightening:
        views = lightening.views(objects)
    assert [view.hausdorff_mm for view in views] == [1.0, 1.0]


def _dies(vertices, faces, budget, tolerance_mm):
    import os

    os._exit(3)


def test_a_worker_that_dies_leaves_the_view_to_the_run(monkeypatch):
    """Workers that can not run (killed, or a script without the
    ``__main__`` guard, where each worker runs the script again and stops)
    break the pool: the meshes are then lightened in the run's own process,
    the same copies, not an error."""
    from pipeline.parallel import WORKERS

    if WORKERS < 2:
        pytest.skip("one core: the meshes are lightened in the run's own process")
    meshes = [trimesh.creation.icosphere(subdivisions=4, radius=r) for r in (10.0, 20.0)]
    objects = [SceneObject(f"bone {i}", mesh, (200, 200, 200)) for i, mesh in enumerate(meshes)]
    with Lightening(1000, 0.5) as lightening:
        expected = lightening.views(objects)
    monkeypatch.setattr(interactive, "_lighten_arrays", _dies)
    with Lightening(1000, 0.5) as lightening:
        views = lightening.views(objects)
    for a, b in zip(views, expected):
        assert np.array_equal(a.mesh.faces, b.mesh.faces) and a.hausdorff_mm == b.hausdorff_mm


def _sleeps(jobs, tolerance_mm):
    import time

    time.sleep(60)


def test_a_run_that_stops_does_not_wait_for_the_view_workers(monkeypatch):
    """Ctrl-C or an error while the workers lighten the host (seconds on a
    large CT): the run's exit stops them instead of waiting for them."""
    import time

    from pipeline.parallel import WORKERS

    if WORKERS < 2:
        pytest.skip("one core: the meshes are lightened in the run's own process")
    monkeypatch.setattr(interactive, "_lighten_many", _sleeps)
    ball = trimesh.creation.icosphere(subdivisions=4)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with Lightening(100, 0.5) as lightening:
            lightening.start([ball], [ball])
            time.sleep(1.0)   # the task is running
            raise KeyboardInterrupt
    assert time.monotonic() - start < 20.0   # the task alone would take 60 s


def test_bones_that_fit_whole_leave_the_budget_to_the_whole_view():
    """The sample's bones fit the budget whole, but its cutting guides and
    flanges took the view to 529k triangles, all shown whole, under a note
    saying it was within the 250k budget. Where the bones fit whole, the
    whole view holds the budget."""
    bone = trimesh.creation.icosphere(subdivisions=3, radius=10.0)     # 1280 triangles
    guide = trimesh.creation.icosphere(subdivisions=5, radius=20.0)    # 20480
    objects = [SceneObject("bone", bone, (1, 2, 3)), SceneObject("guide", guide, (3, 2, 1))]
    with Lightening(3000, 0.5) as lightening:
        lightening.start([bone], [bone])
        views = lightening.views(objects)
        per_mm2 = lightening.per_mm2
    assert sum(len(v.mesh.faces) for v in views) <= 3000
    assert len(views[1].mesh.faces) == pytest.approx(per_mm2 * guide.area, rel=0.01)
    assert len(views[0].mesh.faces) == pytest.approx(per_mm2 * bone.area, rel=0.01)


class _NoServer:
    """A process pool whose workers can not start (as with a TMPDIR too long
    for the fork server's socket: "AF_UNIX path too long")."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def submit(self, *args, **kwargs):
        raise OSError("AF_UNIX path too long")

    def shutdown(self, *args, **kwargs) -> None:
        pass


def test_workers_that_can_not_start_leave_the_view_to_the_run(monkeypatch, capfd):
    """A run under a long TMPDIR failed with the fork server's traceback.
    Workers that can not start are a lost speed-up, not an error: the
    same copies, made in the run's own process, and nothing printed."""
    meshes = [trimesh.creation.icosphere(subdivisions=4, radius=r) for r in (10.0, 20.0)]
    objects = [SceneObject(f"bone {i}", mesh, (200, 200, 200)) for i, mesh in enumerate(meshes)]
    with Lightening(1000, 0.5) as lightening:
        expected = lightening.views(objects)
    monkeypatch.setattr(interactive, "ProcessPoolExecutor", _NoServer)
    monkeypatch.setattr(interactive, "WORKERS", 2)
    with Lightening(1000, 0.5, start_workers=True) as lightening:
        lightening.start(meshes, meshes)
        views = lightening.views(objects)
    for a, b in zip(views, expected):
        assert np.array_equal(a.mesh.faces, b.mesh.faces) and a.hausdorff_mm == b.hausdorff_mm
    assert capfd.readouterr().err == ""


class _NoSemaphores(_NoServer):
    """A process pool whose queues can not be made (no /dev/shm)."""

    def __init__(self, *args, **kwargs) -> None:
        raise OSError("[Errno 38] Function not implemented")


class _Bootstrapping(_NoServer):
    """A process pool in a process that is itself still starting (a worker
    running a script without the ``__main__`` guard again)."""

    def submit(self, *args, **kwargs):
        raise RuntimeError("An attempt has been made to start a new process before the current process has "
                           "finished its bootstrapping phase.")


@pytest.mark.parametrize("pool", [_NoSemaphores, _Bootstrapping], ids=["no process queues", "bootstrapping"])
def test_a_process_that_can_not_start_workers_lightens_in_the_run(monkeypatch, pool):
    monkeypatch.setattr(interactive, "ProcessPoolExecutor", pool)
    monkeypatch.setattr(interactive, "WORKERS", 2)
    meshes = [trimesh.creation.icosphere(subdivisions=4, radius=r) for r in (10.0, 20.0)]
    with Lightening(1000, 0.5) as lightening:
        views = lightening.views([SceneObject(f"bone {i}", m, (1, 2, 3)) for i, m in enumerate(meshes)])
    assert sum(len(v.mesh.faces) for v in views) <= 1000
