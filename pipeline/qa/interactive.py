"""The interactive 3D view of report.html: turn, zoom, pan, hide and name each object.

plotly draws it (WebGL, in any current browser); its JavaScript comes from
the plotly package and is written into the page whole, so the page needs no
network and no other file: it opens from a mail attachment or a USB stick.

The meshes are decimated for the view only (the STLs are untouched), all
to one density of triangles per mm², the one at which the scan's bones
hold ``VIEW_TRIANGLES`` (an object with fewer keeps all of its own; see
:class:`Lightening`), each copy within ``VIEW_TOLERANCE_MM`` of its mesh
both ways where the budget allows (see ``geometry.simplify``); the
distance measured is stated under the view.
The decimation runs in worker processes beside the job (:class:`Lightening`).
Coordinates are float32 (rounded by under 3e-5 mm at 500 mm from the
origin, far below the tolerance), indices int32, both base64-encoded by plotly: about
25 bytes per triangle, so the page stays near 11 MB with the 4.8 MB of
plotly.js (more where guides or fixation add objects at the same density).
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
import trimesh

from ..geometry.meshes import mesh_facts
from ..geometry.simplify import Simplified, simplify_within
from ..parallel import WORKERS
from .scene import SceneObject
from .view3d import VIEWS

# Triangles of the whole view: ~6 MB of page; a laptop's GPU turns it smoothly.
VIEW_TRIANGLES = 250_000
# Largest distance between a view mesh and its STL, both ways (mm).
VIEW_TOLERANCE_MM = 0.5
VIEW_HEIGHT_PX = 640
# Eye distance from the scene's centre, in units of its box (plotly's camera).
EYE_DISTANCE = 2.4
# Camera buttons over the view, and the one it starts from (from the implant's side).
CAMERA_BUTTONS = ("anterior", "posterior", "left", "right", "superior")
DIV_ID = "view3d"
LIGHTING = {"ambient": 0.55, "diffuse": 0.65, "specular": 0.1, "roughness": 0.6, "fresnel": 0.05}
# plotly's light stays put while the scene turns: from the front and above (LPS), so
# the first view and the anterior one are lit, and the ambient part keeps the back readable.
LIGHT_POSITION = {"x": 0.0, "y": -1e5, "z": 1e5}
AXIS_TITLES = {"xaxis": "x (mm): patient left →", "yaxis": "y (mm): posterior →", "zaxis": "z (mm): superior →"}
# Set on the view's element once plotly has drawn it (ms since the page
# started loading): tells a reader, and the browser tests, when the view was ready.
READY_ATTRIBUTE = "data-ready-ms"


@dataclass(frozen=True)
class InteractiveView:
    html: str          # the view's element and scripts, plotly.js included, for the report page
    meshes: list[dict]  # per object: name, triangles (the mesh's), view_triangles, hausdorff_mm
    max_triangles: int
    tolerance_mm: float
    per_mm2: float     # the density the meshes were lightened to (inf: all shown whole)


def interactive_view(objects: list[SceneObject], *, side: str = "left", lightening: Lightening | None = None,
                     max_triangles: int = VIEW_TRIANGLES, tolerance_mm: float = VIEW_TOLERANCE_MM) -> InteractiveView:
    """The view of ``objects``, first seen obliquely from the front on ``side``
    ("left" or "right": the implant's side), its meshes lightened by
    ``lightening`` (which may hold some already; its budget and tolerance
    then stand), else by one made for this view."""
    import plotly.graph_objects as go

    own = lightening is None
    lightening = Lightening(max_triangles, tolerance_mm) if own else lightening
    try:
        views = lightening.views(objects)
    finally:
        if own:
            lightening.close()
    max_triangles, tolerance_mm = lightening.max_triangles, lightening.tolerance_mm
    traces = [_trace(go, o, s.mesh) for o, s in zip(objects, views)]
    figure = go.Figure(traces, layout=_layout(side))
    html = figure.to_html(full_html=False, include_plotlyjs=True, div_id=DIV_ID,
                          config={"displaylogo": False, "scrollZoom": True, "responsive": True},
                          post_script=f"document.getElementById('{{plot_id}}').setAttribute('{READY_ATTRIBUTE}', "
                                      "Math.round(performance.now()));")
    meshes = [{"name": o.name, "triangles": len(o.mesh.faces), "view_triangles": len(s.mesh.faces),
               "hausdorff_mm": round(s.hausdorff_mm, 3)} for o, s in zip(objects, views)]
    return InteractiveView(html, meshes, max_triangles, tolerance_mm, lightening.per_mm2)


def triangle_density(triangles: list[int], areas_mm2: list[float], total: int) -> float:
    """Triangles per mm² at which meshes of these counts and areas hold
    ``total`` triangles, those with fewer keeping all of their own (inf:
    all of them fit whole)."""
    left, waiting = total, set(range(len(triangles)))
    while waiting:
        density = left / max(sum(areas_mm2[i] for i in waiting), 1e-9)
        fits = {i for i in waiting if triangles[i] <= density * areas_mm2[i]}
        if not fits:
            return density
        left -= sum(triangles[i] for i in fits)
        waiting -= fits
    return float("inf")


class Lightening:
    """The view's lighter meshes, made in worker processes beside the job.

    Every object is shown at one density of triangles per mm², or whole
    where it has fewer: the density at which all the bones of the scan
    (:meth:`start` gives them) hold the view's budget, each bone with fewer
    keeping all of its own; what the cut adds, guides and flanges come at
    that density too. Where the bones fit whole, or none were given, it is
    the density at which the whole view holds the budget.

    Each mesh goes to the workers as soon as it is final (:meth:`start`):
    the bones the plan does not cut when the surface stage ends, as one
    task (the cut uses both cores itself), the host and the implant when
    the cut is made, one task each; they are lightened while the job goes
    on. :meth:`views` lightens whatever is left (fixation, guides), collects
    all, and says how far each copy lies from its mesh.

    The workers are forked from a server process started with this object
    (``start_workers``), before the CT is loaded, so they are small and the
    run's own threads are no hazard; they ignore Ctrl-C, and a run that
    stops terminates them. A daemonic process (a batch's dask worker), a
    one-core machine, and workers that can not start or die (a TMPDIR too
    long for the server's socket, no /dev/shm, a script without the
    ``if __name__ == "__main__"`` guard multiprocessing asks for) leave the
    lightening to the caller's process: the same meshes, later.
    """

    def __init__(self, max_triangles: int = VIEW_TRIANGLES, tolerance_mm: float = VIEW_TOLERANCE_MM, *,
                 start_workers: bool = False) -> None:
        """``start_workers``: start the workers now, in the background (else when first needed)."""
        self.max_triangles, self.tolerance_mm = max_triangles, tolerance_mm
        self._density: float | None = None   # triangles per mm² of surface
        self._pool: ProcessPoolExecutor | None = None
        self._asked = False
        self._lock = threading.Lock()
        # id(mesh) -> (the mesh, held so that its id stays its own; its lightened copy to come)
        self._early: dict[int, tuple[trimesh.Trimesh, _Part]] = {}
        if start_workers:
            # The server imports the package before it forks the first worker (0.5 s): not on the caller's time.
            threading.Thread(target=self._workers, daemon=True).start()

    def start(self, meshes: list[trimesh.Trimesh], bones: list[trimesh.Trimesh]) -> None:
        """Start lightening ``meshes`` (shown as they are) as one task. The
        first call sets the density from ``bones``, all the bones of the scan."""
        if self._density is None:
            self._density = triangle_density([len(m.faces) for m in bones], [self._area(m) for m in bones],
                                             self.max_triangles)
        meshes = [m for m in meshes if id(m) not in self._early and len(m.faces) > self._budget(m)]
        task = self._submit(_lighten_many, [(np.asarray(m.vertices), np.asarray(m.faces), self._budget(m))
                                            for m in meshes], self.tolerance_mm) if meshes else None
        if task is not None:
            self._early.update({id(m): (m, _Part(task, k)) for k, m in enumerate(meshes)})

    def views(self, objects: list[SceneObject]) -> list[Simplified]:
        """Each object's lighter copy: those started already, then the rest
        (over their budget: largest first, on the workers)."""
        if self._density is None or np.isinf(self._density):
            # No bones given, or they all fit whole (so none was started): the whole view holds the budget.
            self._density = triangle_density([len(o.mesh.faces) for o in objects],
                                             [self._area(o.mesh) for o in objects], self.max_triangles)
        futures = {i: self._early[id(o.mesh)][1] for i, o in enumerate(objects) if id(o.mesh) in self._early}
        over = sorted((i for i, o in enumerate(objects) if i not in futures and len(o.mesh.faces) > self._budget(o.mesh)),
                      key=lambda i: -len(objects[i].mesh.faces))
        if len(over) > 1 or (over and futures):
            for i in over:
                future = self._submit(_lighten_arrays, np.asarray(objects[i].mesh.vertices),
                                      np.asarray(objects[i].mesh.faces), self._budget(objects[i].mesh),
                                      self.tolerance_mm)
                if future is not None:
                    futures[i] = future
        views = [None if i in futures else simplify_within(o.mesh, self._budget(o.mesh), self.tolerance_mm)
                 for i, o in enumerate(objects)]
        for i, future in futures.items():
            try:
                vertices, faces, distance_mm, kept = future.result()
            except BrokenProcessPool:
                views[i] = simplify_within(objects[i].mesh, self._budget(objects[i].mesh), self.tolerance_mm)
                continue
            views[i] = Simplified(trimesh.Trimesh(vertices, faces, process=False), distance_mm, kept)
        return views

    @property
    def per_mm2(self) -> float:
        """Triangles per mm² of the lighter copies (inf: all whole)."""
        return float("inf") if self._density is None else self._density

    def _budget(self, mesh: trimesh.Trimesh) -> int:
        if np.isinf(self._density):
            return len(mesh.faces)
        return min(len(mesh.faces), max(4, int(self._density * self._area(mesh))))

    @staticmethod
    def _area(mesh: trimesh.Trimesh) -> float:
        """From the mesh's facts, measured once (trimesh's own area keeps
        every face's corners in its cache: 150 MB for the bench phantom's
        meshes, held past the cut, the run's peak)."""
        return mesh_facts(mesh)["area_mm2"]

    def _workers(self) -> ProcessPoolExecutor | None:
        with self._lock:
            if not self._asked:
                self._asked, self._pool = True, _worker_pool()
            return self._pool

    def _submit(self, fn, *args) -> Future | None:
        """``fn(*args)`` on a worker, or None: no workers (any more)."""
        pool = self._workers()
        if pool is None:
            return None
        try:
            return pool.submit(fn, *args)
        except (OSError, RuntimeError, BrokenProcessPool):   # a worker that could not start, or died
            self.close()
            return None

    def __enter__(self) -> Lightening:
        return self

    def __exit__(self, error_type, *_) -> None:
        self.close(at_once=error_type is not None)

    def close(self, at_once: bool = False) -> None:
        """Stop the workers; what they had not begun is dropped, and with
        ``at_once`` (a run that failed or was stopped) what they are doing too."""
        with self._lock:
            self._asked = True
            if self._pool is not None:
                if at_once and hasattr(self._pool, "terminate_workers"):   # Python 3.14
                    self._pool.terminate_workers()
                elif at_once:   # before it, the executor's own table of its workers
                    for process in list((getattr(self._pool, "_processes", None) or {}).values()):
                        process.terminate()
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None


def _worker_pool() -> ProcessPoolExecutor | None:
    """Worker processes forked from a fork server (the server and a first
    worker started now), or None where the meshes are lightened in process:
    also where they can not start (the server's socket under a TMPDIR too
    long for one, no /dev/shm: the run must not fail for a speed-up)."""
    if (WORKERS < 2 or multiprocessing.current_process().daemon
            or "forkserver" not in multiprocessing.get_all_start_methods()):
        return None
    context = multiprocessing.get_context("forkserver")
    # Imported once by the server, not by every worker.
    context.set_forkserver_preload(["fast_simplification", __name__])
    pool = None
    try:
        pool = ProcessPoolExecutor(max_workers=WORKERS, mp_context=context,
                                   initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
        pool.submit(int)
    # The queues' semaphores (/dev/shm), the server, a first worker; RuntimeError: a process that is
    # itself still starting (a script without the __main__ guard, run again by a worker).
    except (OSError, RuntimeError, BrokenProcessPool):
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        return None
    return pool


class _Part:
    """One result of a task that lightened several meshes, as a future."""

    def __init__(self, future: Future, index: int) -> None:
        self.future, self.index = future, index

    def result(self):
        return self.future.result()[self.index]


def _lighten_many(jobs: list[tuple[np.ndarray, np.ndarray, int]], tolerance_mm: float) -> list[tuple]:
    return [_lighten_arrays(vertices, faces, budget, tolerance_mm) for vertices, faces, budget in jobs]


def _lighten_arrays(vertices: np.ndarray, faces: np.ndarray, budget: int, tolerance_mm: float):
    """simplify_within on plain arrays, for a worker process."""
    view = simplify_within(trimesh.Trimesh(vertices, faces, process=False), budget, tolerance_mm)
    return np.asarray(view.mesh.vertices), np.asarray(view.mesh.faces), view.hausdorff_mm, view.kept_triangles


def _trace(go, item: SceneObject, mesh):
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(mesh.faces, dtype=np.int32)
    return go.Mesh3d(x=vertices[:, 0], y=vertices[:, 1], z=vertices[:, 2], i=faces[:, 0], j=faces[:, 1],
                     k=faces[:, 2], name=item.name, color="rgb({},{},{})".format(*item.rgb), opacity=item.opacity,
                     visible=True if item.visible else "legendonly", showlegend=True, flatshading=False,
                     lighting=LIGHTING, lightposition=LIGHT_POSITION,
                     hovertemplate=f"<b>{item.name}</b><br>L %{{x:.1f}}, P %{{y:.1f}}, S %{{z:.1f}} mm<extra></extra>")


def _camera(view: str) -> dict:
    toward, up = VIEWS[view]
    eye = EYE_DISTANCE * np.asarray(toward) / np.linalg.norm(toward)
    return {"eye": dict(zip("xyz", eye.tolist())), "up": dict(zip("xyz", up)), "center": {"x": 0, "y": 0, "z": 0}}


def _layout(side: str) -> dict:
    buttons = [{"label": view, "method": "relayout", "args": [{"scene.camera": _camera(view)}]}
               for view in (*CAMERA_BUTTONS, f"oblique_{side}")]
    buttons[-1]["label"] = f"oblique ({side})"
    axes = {name: {"title": {"text": title}, "showspikes": False} for name, title in AXIS_TITLES.items()}
    return {"height": VIEW_HEIGHT_PX, "margin": {"l": 0, "r": 0, "t": 36, "b": 0},
            "scene": {"aspectmode": "data", "camera": _camera(f"oblique_{side}"), **axes},
            "legend": {"title": {"text": "click: hide/show<br>double-click: only this"}, "itemsizing": "constant"},
            "updatemenus": [{"type": "buttons", "direction": "right", "x": 0.0, "y": 1.0, "xanchor": "left",
                             "yanchor": "bottom", "pad": {"t": 2, "b": 2}, "buttons": buttons, "showactive": False}]}
