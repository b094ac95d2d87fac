"""Headless Chromium for the report page: its tests and its load time.

The system's Chromium (Debian package ``chromium``) driven by playwright
(a test dependency that never downloads a browser of its own), started
with networking off: the browser context is offline and every request goes
to a proxy that does not exist, so a page that tried to fetch anything
would fail to, and the request is recorded.

``python -m tests.browser out/report.html`` measures how long the report's
3D view takes to appear in a fresh browser, and how long it takes to redraw
while it turns (``make view-time``).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.qa.interactive import DIV_ID, READY_ATTRIBUTE

CHROMIUM_NAMES = ("chromium", "chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-extensions",
        "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
VIEWPORT = {"width": 1200, "height": 900}
# Seconds to wait for the view (the full-size real case on a busy 2-core machine
# takes ~6 s; this only stops a test that would hang).
READY_TIMEOUT_S = 60
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def chromium_path() -> str | None:
    """The Chromium to use: $CHROMIUM, or the first on the PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return "no Chromium installed (Debian: apt-get install chromium; or set CHROMIUM=/path/to/chrome)"
    return None


@dataclass
class Visit:
    errors: list[str] = field(default_factory=list)    # uncaught exceptions and console errors
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    ready_s: float = float("nan")                      # the view drawn, from navigation start

    @property
    def outside(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(LOCAL_SCHEMES)]


@contextmanager
def open_report(path: Path) -> Iterator[tuple[object, Visit]]:
    """A fresh offline browser showing the report at ``path``, once its 3D view is drawn."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=ARGS, headless=True)
        try:
            page = browser.new_context(offline=True, viewport=VIEWPORT).new_page()
            visit = Visit()
            page.on("pageerror", lambda e: visit.errors.append(str(e)))
            page.on("console", lambda m: m.type == "error" and visit.errors.append(m.text))
            page.on("request", lambda r: visit.requests.append(r.url))
            page.goto(Path(path).resolve().as_uri())
            page.wait_for_selector(f"#{DIV_ID}[{READY_ATTRIBUTE}]", timeout=READY_TIMEOUT_S * 1000)
            settle(page)
            visit.ready_s = float(page.get_attribute(f"#{DIV_ID}", READY_ATTRIBUTE)) / 1000.0
            yield page, visit
        finally:
            browser.close()


def settle(page) -> None:
    """Wait until the page has drawn two more frames (a WebGL redraw follows a change)."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def view_pixels(page) -> np.ndarray:
    """RGB pixels (H, W, 3) of the 3D view's WebGL canvas, as shown."""
    from PIL import Image

    png = page.locator(f"#{DIV_ID} canvas").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def redraw_s(page, turns: int = 8) -> list[float]:
    """Seconds per redraw while the view turns (camera moved by script, one
    frame drawn after each move)."""
    return page.evaluate("""async (turns) => {
        const gd = document.getElementById('%s'), times = [];
        const frame = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
        for (let i = 0; i < turns; i++) {
            const a = 2 * Math.PI * (i + 1) / turns, start = performance.now();
            await Plotly.relayout(gd, {'scene.camera.eye': {x: 2 * Math.cos(a), y: 2 * Math.sin(a), z: 0.8}});
            await frame();
            times.push((performance.now() - start) / 1000);
        }
        return times; }""" % DIV_ID, turns)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Seconds until a report's 3D view is drawn, in a fresh "
                                                 "headless Chromium each time (median of the runs).")
    parser.add_argument("report", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    reason = unavailable()
    if reason:
        raise SystemExit(reason)
    ready, wall, redraw = [], [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        with open_report(args.report) as (page, visit):
            ready.append(visit.ready_s)
            wall.append(time.perf_counter() - start)
            redraw += redraw_s(page)
        if visit.errors or visit.outside:
            raise SystemExit(f"errors {visit.errors}, requests outside the page {visit.outside}")
    size_mb = args.report.stat().st_size / 1e6
    print(f"{args.report}: {size_mb:.1f} MB; view drawn {statistics.median(ready):.2f} s after navigation "
          f"(median of {args.runs}, min {min(ready):.2f}, max {max(ready):.2f}); with browser start "
          f"{statistics.median(wall):.2f} s; turning: {statistics.median(redraw) * 1000:.0f} ms per redraw "
          f"(median, software WebGL)")


if __name__ == "__main__":
    main()
