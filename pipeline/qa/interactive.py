"""The interactive 3D view of report.html: turn, zoom, pan, hide and name each object.

plotly draws it (WebGL, in any current browser); its JavaScript comes from
the plotly package and is written into the page whole, so the page needs no
network and no other file: it opens from a mail attachment or a USB stick.

The meshes are decimated for the view only (the STLs are untouched): at
most ``VIEW_TRIANGLES`` triangles in all, shared among the objects by
surface area (an object with fewer keeps all of its own), each copy within
``VIEW_TOLERANCE_MM`` of its mesh both ways where the budget allows (see
``geometry.simplify``); the distance measured is stated under the view.
Coordinates are float32 (rounded by under 3e-5 mm at 500 mm from the
origin, far below the tolerance), indices int32, both base64-encoded by plotly: about
25 bytes per triangle, so the page stays near 11 MB with the 4.8 MB of
plotly.js.
"""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import trimesh

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


def interactive_view(objects: list[SceneObject], *, side: str = "left", max_triangles: int = VIEW_TRIANGLES,
                     tolerance_mm: float = VIEW_TOLERANCE_MM) -> InteractiveView:
    """The view of ``objects``, first seen obliquely from the front on ``side``
    ("left" or "right": the implant's side). Forks worker processes to
    lighten the meshes: call it while no other thread of the caller runs."""
    import plotly.graph_objects as go

    budgets = triangle_budgets([len(o.mesh.faces) for o in objects], [float(o.mesh.area) for o in objects],
                               max_triangles)
    views = _lighten(objects, budgets, tolerance_mm)
    traces = [_trace(go, o, s.mesh) for o, s in zip(objects, views)]
    figure = go.Figure(traces, layout=_layout(side))
    html = figure.to_html(full_html=False, include_plotlyjs=True, div_id=DIV_ID,
                          config={"displaylogo": False, "scrollZoom": True, "responsive": True},
                          post_script=f"document.getElementById('{{plot_id}}').setAttribute('{READY_ATTRIBUTE}', "
                                      "Math.round(performance.now()));")
    meshes = [{"name": o.name, "triangles": len(o.mesh.faces), "view_triangles": len(s.mesh.faces),
               "hausdorff_mm": round(s.hausdorff_mm, 3)} for o, s in zip(objects, views)]
    return InteractiveView(html, meshes, max_triangles, tolerance_mm)


def triangle_budgets(triangles: list[int], areas_mm2: list[float], total: int) -> list[int]:
    """Share ``total`` triangles by surface area; an object needing fewer than
    its share keeps all of its own and leaves the rest to the others."""
    budgets = [0] * len(triangles)
    waiting = set(range(len(triangles)))
    left = total
    while waiting:
        area = sum(areas_mm2[i] for i in waiting) or 1.0
        fits = [i for i in waiting if triangles[i] <= left * areas_mm2[i] / area]
        if not fits:
            for i in waiting:
                budgets[i] = max(4, int(left * areas_mm2[i] / area))
            break
        for i in fits:
            budgets[i] = triangles[i]
            left -= triangles[i]
            waiting.remove(i)
    return budgets


def _lighten(objects: list[SceneObject], budgets: list[int], tolerance_mm: float) -> list[Simplified]:
    """Each object lightened to its budget. fast-simplification holds the GIL
    (and runs one mesh at a time), so threads gain nothing: with several meshes over budget, they are
    shared among worker processes forked from the caller (call this before
    starting threads), largest first."""
    over = sorted((i for i, (o, b) in enumerate(zip(objects, budgets)) if len(o.mesh.faces) > b),
                  key=lambda i: -len(objects[i].mesh.faces))
    views = {}
    # A daemonic process (a batch's dask worker) may not start processes of its own.
    if (len(over) > 1 and WORKERS > 1 and "fork" in multiprocessing.get_all_start_methods()
            and not multiprocessing.current_process().daemon):
        context = multiprocessing.get_context("fork")
        # Ctrl-C on a terminal reaches the workers too: the caller stops, they finish their mesh quietly.
        with ProcessPoolExecutor(max_workers=min(WORKERS, len(over)), mp_context=context,
                                 initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
            futures = {i: pool.submit(_lighten_arrays, np.asarray(objects[i].mesh.vertices),
                                      np.asarray(objects[i].mesh.faces), budgets[i], tolerance_mm) for i in over}
            for i, future in futures.items():
                vertices, faces, distance_mm, kept = future.result()
                views[i] = Simplified(trimesh.Trimesh(vertices, faces, process=False), distance_mm, kept)
    return [views[i] if i in views else simplify_within(o.mesh, b, tolerance_mm)
            for i, (o, b) in enumerate(zip(objects, budgets))]


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
