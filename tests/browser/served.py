"""`panel serve app` as a subprocess and a headless Chromium page on it (tests and benchmark)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
OCEAN = (170, 211, 223)  # the demo basemap's water


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_app(catalog: str | None = None, prefix: str | None = None, env: dict | None = None, timeout: float = 90):
    """Run ``panel serve app`` on a free loopback port; yield the app URL; stop it (and its demo)."""
    port = free_port()
    cmd = [sys.executable, "-m", "panel", "serve", "app", "--warm", "--address", "127.0.0.1", "--port", str(port),
           "--allow-websocket-origin", f"127.0.0.1:{port}", "--num-procs", "1"]
    if prefix:
        cmd += ["--prefix", prefix]
    if catalog:
        cmd += ["--args", "--catalog", str(catalog)]
    log = open(os.devnull, "wb") if not os.environ.get("MAPSTREAM_TEST_SERVE_LOG") else open(
        os.environ["MAPSTREAM_TEST_SERVE_LOG"], "ab")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}{(prefix or '').rstrip('/')}"
    url = f"{base}/app"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"panel serve exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=30) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield url
    finally:
        stop_group(proc)
        log.close()


def stop_group(proc: subprocess.Popen) -> None:
    """SIGINT (atexit stops the demo services), then SIGTERM, then SIGKILL, to the process group."""
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    with contextlib.suppress(ProcessLookupError):  # demo children share the group
        os.killpg(proc.pid, signal.SIGKILL)


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def status_lines(page) -> dict[str, str]:
    """Layer name -> its status line, read from the side panel (through the shadow DOM)."""
    out = {}
    for loc in page.locator(".mapstream-status").all():
        classes = (loc.get_attribute("class") or "").split()
        names = [c[len("status-"):] for c in classes if c.startswith("status-")]
        if names:
            out[names[0]] = loc.evaluate(
                "e => { const r = e.shadowRoot || e; const p = r.querySelector('pre'); "
                "return p ? p.textContent : '' }"
            ).strip()
    return out


def wait_status(page, title: str, prefix: str | tuple, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        last = status_lines(page).get(title, "")
        if last.startswith(prefix):
            return last
        page.wait_for_timeout(200)
    raise AssertionError(f"{title}: status {last!r} never started with {prefix!r}")


def plot_pixels(page) -> np.ndarray:
    """The map's pixels (RGB) as shown on screen, from a screenshot of the plot's canvas box."""
    from io import BytesIO

    from PIL import Image

    box = plot_box(page)
    png = page.screenshot(clip=box)
    return np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int)


def plot_box(page) -> dict:
    boxes = [c.bounding_box() for c in page.locator("canvas").all()]
    boxes = [b for b in boxes if b and b["width"] > 200 and b["height"] > 200]
    b = max(boxes, key=lambda b: b["width"] * b["height"])
    # the toolbar sits at the right edge of the canvas: leave it out
    return {"x": b["x"] + 4, "y": b["y"] + 4, "width": b["width"] - 60, "height": b["height"] - 8}


def fraction_near(pixels: np.ndarray, rgb: tuple, tol: int = 30) -> float:
    return float((np.abs(pixels - np.array(rgb)).sum(-1) < tol).mean())


#: The demo's countries fill (#8c6bb1 at half the layer's 0.5 opacity) over the basemap's land.
COUNTRY_TINT = (216, 206, 218)


def fraction_purple(pixels: np.ndarray) -> float:
    """Share of pixels showing the countries layer: land tinted by its fill (``COUNTRY_TINT``).

    Bare land (242, 239, 233), sea and the basemap's own border lines are all further away than
    the tolerance.
    """
    return fraction_near(pixels, COUNTRY_TINT, tol=12)


def fraction_blank(pixels: np.ndarray) -> float:
    """Share of pure white pixels (no basemap drawn there)."""
    return float((pixels.min(-1) >= 254).mean())


def drag(page, dx: int, dy: int = 0, steps: int = 4) -> None:
    box = plot_box(page)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + dx, cy + dy, steps=steps)
    page.mouse.up()


def wait_until(page, predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if isinstance(value, np.ndarray) or value:
            return value
        page.wait_for_timeout(250)
    raise AssertionError(f"timed out waiting for {what} (last: {value!r})")


def collect_errors(page) -> list[str]:
    """JavaScript console errors and uncaught exceptions of ``page`` (the browser's own favicon
    probe excluded)."""
    errors: list[str] = []

    def on_console(msg) -> None:
        if msg.type != "error":
            return
        where = (msg.location or {}).get("url", "")
        if where.endswith("favicon.ico"):
            return
        errors.append(f"{msg.text} ({where})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors
