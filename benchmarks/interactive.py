"""Interactive benchmark (issue 12): pans, zooms and many sessions, timed from the canvas's pixels.

Plain ``panel serve app`` (no ``--warm``) on the demo at 50 ms injected latency, one HTTP cache
for the run; driven by mouse in headless Chromium. Run twice, on a catalog with the basemap
only and on the demo catalog (every layer it shows by default). Per server:

1. *first view*: the time from ``panel serve`` answering its first HTTP request until the first
   session's map is complete and stable (below).
2. *warm pass*: the step sequence once, unmeasured, so that the HTTP cache holds every view.
3. *1 session*: the same steps (pans: a mouse drag of 250 px; zooms: the mouse wheel over the
   map's centre), each timed from the end of the input until the canvas's picture is complete
   and stable, and its blank area measured.
4. *N sessions* (8; 2 with ``--quick``): that many browser contexts (cold browser caches, one
   server session each) open the map at once, then take the same steps at once; each
   session's p95 step time is taken, the table shows the worst.
5. every session closed: the server's RSS 30 s later against before the first session, and the
   CPU seconds it burned in the 10 s after the last close.

Definitions (all from pixels, :mod:`tests.browser.pixels`). A *frame* is a screenshot of the
plot's canvas box read from the page's canvases at every 2nd pixel (~45 ms each on this
machine), sampled every ~50 ms (with N pages, in turn, so less often each).

- *complete and stable*: after an input, frames are sampled until the picture has not changed
  (no more than 0.2 % of its pixels) for ``--quiet`` seconds (2 s) and no layer's status line
  says it is loading; that last picture is the settled one, and its background fraction is the
  final level. The step's time is the time of the earliest frame from which every later frame
  equals the settled picture (within 0.2 %): the moment the final picture appeared and stayed.
  A picture more than half background never counts as settled (the step times out instead;
  a timed-out step counts with its timeout as its time, and the table says how many).
- *blank during a transition*: for each frame of a step, the share of the canvas that shows the
  plot's background colour at positions where both the settled picture before the input and
  the settled picture after it show content (so a pan's newly exposed edge counts when the
  map went blank there; the world's outside, blank in the settled view, does not); the table
  shows the maximum over every frame of every step. Smear (old pixels stretched) is not
  detected: it is not background.
- *event-loop lag*: p99 and max from the server's ``/mapstream/stats`` route, reset before
  each measured phase; ``n/a`` when the server has no such route. RSS and CPU time come from
  the route too, else from the server process itself (psutil).

    python -m benchmarks.interactive [--quick] [--steps 10] [--sessions 8] [--latency 50ms]
    python -m benchmarks.interactive --rev HEAD      # the committed app, not the working tree
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mapstream.layers.metrics import percentile
from tests.browser.pixels import background_colour, background_fraction, grab, lost_fraction, watch
from tests.browser.served import CHROMIUM, CHROMIUM_ARGS, ROOT, drag, free_port, plot_box, status_lines, stop_group

VIEWPORT = {"width": 1280, "height": 800}
#: The step sequence: pans of 250 px (dx, dy) and wheel zooms (delta; negative zooms in).
SEQUENCE: list[tuple] = [
    ("pan", 250, 0), ("zoom", -300), ("pan", 0, 250), ("pan", -250, 0), ("zoom", 300),
    ("pan", 0, -250), ("zoom", -300), ("pan", 250, 0), ("zoom", 300), ("pan", -250, 0),
]
QUICK = [("pan", 250, 0), ("zoom", -300), ("pan", -250, 0)]


# --- the server ---------------------------------------------------------------------------------

#: Put a checkout's folders in place of the working tree's for the editable install (``--rev``).
_SHIM = """import os, sys
src = os.environ.get("MAPSTREAM_BENCH_SRC")
if src:
    for name, mod in list(sys.modules.items()):
        if name.startswith("__editable___mapstream") and hasattr(mod, "MAPPING"):
            mod.MAPPING.update({"mapstream": src + "/mapstream", "mapstream.app": src + "/app",
                                "mapstream.demo": src + "/demo", "mapstream.layers": src + "/layers"})
"""


@dataclass
class Server:
    """A running ``panel serve app``: its app URL, server root, process and when it answered."""

    url: str
    root: str
    proc: subprocess.Popen
    answered: float


@contextlib.contextmanager
def serve(catalog: str | None, env: dict[str, str], cwd: Path, timeout: float = 180):
    """Plain ``panel serve app`` (no ``--warm``) on a free loopback port, stopped at the end."""
    port = free_port()
    cmd = [sys.executable, "-m", "panel", "serve", "app", "--address", "127.0.0.1", "--port", str(port),
           "--allow-websocket-origin", f"127.0.0.1:{port}", "--num-procs", "1"]
    if catalog:
        cmd += ["--args", "--catalog", str(catalog)]
    log_path = os.environ.get("MAPSTREAM_TEST_SERVE_LOG")
    log = open(log_path, "ab") if log_path else open(os.devnull, "wb")
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"panel serve exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{root}/app", timeout=60) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield Server(f"{root}/app", root, proc, time.perf_counter())
    finally:
        stop_group(proc)
        log.close()


def server_stats(server: Server, reset: bool = False) -> dict[str, Any] | None:
    """``GET <root>/mapstream/stats`` as a dict, None when the server has no such route."""
    try:
        with urllib.request.urlopen(f"{server.root}/mapstream/stats{'?reset=1' if reset else ''}", timeout=30) as r:
            return json.loads(r.read())
    except (urllib.error.HTTPError, urllib.error.URLError, ValueError):
        return None


def usage(server: Server) -> tuple[int, float]:
    """The server process's RSS (bytes) and CPU time (s): the stats route's, else psutil's."""
    st = server_stats(server)
    if st and "rss_bytes" in st and "cpu_seconds" in st:
        return int(st["rss_bytes"]), float(st["cpu_seconds"])
    import psutil

    p = psutil.Process(server.proc.pid)
    cpu = p.cpu_times()
    return p.memory_info().rss, cpu.user + cpu.system


def basemap_catalog(folder: Path) -> Path:
    """The demo catalog with its basemap layer only, written to ``folder``."""
    demo = yaml.safe_load((ROOT / "layers" / "catalogs" / "demo.yml").read_text())
    demo["layers"] = [spec for spec in demo["layers"] if spec["name"] == "basemap"]
    demo["title"] = "mapstream demo (basemap only)"
    path = folder / "basemap.yml"
    path.write_text(yaml.safe_dump(demo))
    return path


def checkout(rev: str, folder: Path) -> tuple[Path, dict[str, str]]:
    """``git archive`` of ``rev`` in ``folder``, and the environment that makes the server use it."""
    src = folder / "src"
    src.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    shim = folder / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_SHIM)
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    return src, {"PYTHONPATH": path, "MAPSTREAM_BENCH_SRC": str(src)}


# --- the browser side ---------------------------------------------------------------------------


def busy(page) -> bool:
    """A layer's status line says it is still at work (no status lines: not busy)."""
    with contextlib.suppress(Exception):
        return any(text.startswith("loading") for text in status_lines(page).values())
    return False


def act(page, box: dict, step: tuple) -> float:
    """Perform one step with the mouse; ``time.perf_counter()`` when the input ended."""
    if step[0] == "pan":
        drag(page, step[1], step[2], steps=5)
    else:
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, step[1])
    return time.perf_counter()


@dataclass
class Steps:
    """Step times (s) by kind, the worst blank share per step, and flags, for one session."""

    times: dict[str, list[float]] = field(default_factory=lambda: {"pan": [], "zoom": []})
    blank: list[float] = field(default_factory=list)
    timeouts: int = 0
    mostly_blank: int = 0

    @property
    def all(self) -> list[float]:
        return self.times["pan"] + self.times["zoom"]


def run_steps(pages: list, sequence: list[tuple], args, measure: bool) -> list[Steps]:
    """Every page takes each step at once; each step waits until every page has settled."""
    boxes = [plot_box(p) for p in pages]
    bgs = [background_colour(p) for p in pages]
    before = [grab(p, b, 2) for p, b in zip(pages, boxes)]
    out = [Steps() for _ in pages]
    for step in sequence:
        starts = [act(p, b, step) for p, b in zip(pages, boxes)]
        seen = watch(pages, boxes, starts, quiet=args.quiet, timeout=args.step_timeout, busy=busy,
                     keep=measure, backgrounds=bgs)
        for i, w in enumerate(seen):
            if measure:
                out[i].times[step[0]].append(args.step_timeout if w.timed_out else w.settled_at)
                out[i].blank.append(max(lost_fraction(before[i], f.pixels, w.final, bgs[i]) for f in w.frames))
                out[i].timeouts += w.timed_out
                out[i].mostly_blank += background_fraction(w.final, bgs[i]) > 0.5
            before[i] = w.final
        if measure:
            times = ", ".join(f"{s.times[step[0]][-1]:.2f}" for s in out)
            print(f"  {step}: {times} s; blank {max(s.blank[-1] for s in out):.0%}", flush=True)
    return out


def canvas_box(page, timeout: float) -> dict:
    """The plot's canvas box once the plot is on the page (the canvases are in shadow roots)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ValueError):
            return plot_box(page)
        if time.monotonic() > deadline:
            raise TimeoutError("the map's canvas never appeared")
        page.wait_for_timeout(100)


def open_sessions(browser, server: Server, n: int, args) -> tuple[list, list, float, float]:
    """``n`` contexts open the map at once.

    Returns the contexts, their pages, ``time.perf_counter()`` before the first ``goto`` and
    the seconds from then until every page's picture settled.
    """
    contexts = [browser.new_context(viewport=VIEWPORT) for _ in range(n)]
    pages = [c.new_page() for c in contexts]
    t0 = time.perf_counter()
    for p in pages:
        p.goto(server.url)
    boxes = [canvas_box(p, args.first_timeout) for p in pages]
    bgs = [background_colour(p) for p in pages]
    seen = watch(pages, boxes, t0, quiet=max(args.quiet, 3.0), timeout=args.first_timeout, busy=busy, keep=False,
                 backgrounds=bgs)
    return contexts, pages, t0, max(w.settled_at for w in seen)


def lag(server: Server) -> str:
    st = server_stats(server)
    if not st or "loop_lag_p99_ms" not in st:
        return "n/a"
    return f"p99 {st['loop_lag_p99_ms']:.0f} ms (max {st.get('loop_lag_max_ms', float('nan')):.0f})"


def bench_server(browser, server: Server, sequence: list[tuple], args) -> dict[str, Any]:
    """One server: first view, warm pass, 1 session, N sessions, after close."""
    res: dict[str, Any] = {}
    rss0, _ = usage(server)
    server_stats(server, reset=True)
    contexts, pages, t0, first = open_sessions(browser, server, 1, args)
    res["first"] = t0 - server.answered + first
    res["first_view"] = first
    print(f"  first view complete {first:.2f} s after opening the page", flush=True)
    st = server_stats(server) or {}
    res["compile"] = st.get("compile_on_critical_path", "n/a")
    res["lag_first"] = lag(server)
    run_steps(pages, sequence, args, measure=False)  # the warm pass
    server_stats(server, reset=True)
    res["one"] = run_steps(pages, sequence, args, measure=True)[0]
    res["lag_one"] = lag(server)
    for c in contexts:
        c.close()
    server_stats(server, reset=True)
    contexts, pages, _, res["n_first"] = open_sessions(browser, server, args.sessions, args)
    res["lag_n_first"] = lag(server)
    server_stats(server, reset=True)
    res["n"] = run_steps(pages, sequence, args, measure=True)
    res["lag_n"] = lag(server)
    for c in contexts:
        c.close()
    closed = time.perf_counter()
    _, cpu0 = usage(server)
    time.sleep(max(0.0, closed + 10 - time.perf_counter()))
    _, cpu1 = usage(server)
    res["cpu_after"] = cpu1 - cpu0
    time.sleep(max(0.0, closed + 30 - time.perf_counter()))
    rss1, _ = usage(server)
    res["rss"] = (rss0, rss1)
    st = server_stats(server) or {}
    res["renders"] = st.get("renders", "n/a")
    res["sessions_left"] = st.get("sessions", "n/a")
    return res


# --- the table ----------------------------------------------------------------------------------


def _p(values: list[float], q: float) -> float:
    values = [v for v in values if v == v]
    return percentile(values, q) if values else float("nan")


def _s(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f} s"


def report(results: dict[str, dict[str, Any]], sessions: int) -> None:
    rows: list[tuple[str, str, str]] = []
    for label, target in (("basemap", 0.5), ("all layers", 1.5)):
        r = results.get(label)
        if r is None:
            continue
        one: Steps = r["one"]
        p95 = _p(one.all, 95)
        rows.append((f"{label}: step p50 / p95, 1 session",
                     f"{_s(_p(one.all, 50))} / {_s(p95)} (pan p95 {_s(_p(one.times['pan'], 95))}, "
                     f"zoom p95 {_s(_p(one.times['zoom'], 95))}; {len(one.all)} steps, {one.timeouts} timed out, "
                     f"{one.mostly_blank} mostly blank)", f"p95 <= {target} s"))
        worst = max((_p(s.all, 95) for s in r["n"]), default=float("nan"))
        median = float(np.median([_p(s.all, 95) for s in r["n"]]))
        timeouts = sum(s.timeouts for s in r["n"])
        rows.append((f"{label}: step p95, {sessions} sessions at once",
                     f"worst session {_s(worst)}, median session {_s(median)} ({worst / p95:.1f}x single; "
                     f"{timeouts} timed out)", "<= 2x single"))
        blank = max(one.blank + [b for s in r["n"] for b in s.blank])
        rows.append((f"{label}: blank where content existed (max frame)",
                     f"{100 * max(one.blank):.0f} % (1 session), {100 * blank:.0f} % (any)", "<= 5 %"))
        rows.append((f"{label}: event-loop lag (first view / 1 session / {sessions} open / {sessions} steps)",
                     f"{r['lag_first']} / {r['lag_one']} / {r['lag_n_first']} / {r['lag_n']}", "p99 < 50 ms"))
        rss0, rss1 = r["rss"]
        rows.append((f"{label}: server RSS 30 s after close vs before",
                     f"{rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB ({100 * (rss1 / rss0 - 1):+.0f} %)",
                     "within 10 %"))
        rows.append((f"{label}: server CPU in the 10 s after the last close", f"{r['cpu_after']:.2f} s", "< 1 s"))
        rows.append((f"{label}: serve answers -> first session complete",
                     f"{_s(r['first'])} (page open -> complete {_s(r['first_view'])}; "
                     f"{sessions} at once: {_s(r['n_first'])}); compile on critical path: {r['compile']}",
                     "no compile on the path"))
        rows.append((f"{label}: tile renders by the server (run) / sessions left",
                     f"{r['renders']} / {r['sessions_left']}", "-"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"\n{'measure':<{w0}}  {'measured':<{w1}}  target")
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:<{w1}}  {c}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", default="50ms")
    ap.add_argument("--quick", action="store_true", help=f"{len(QUICK)} steps, 2 sessions (a smoke run)")
    ap.add_argument("--steps", type=int, default=len(SEQUENCE), help="steps of the sequence to take (<= 10)")
    ap.add_argument("--sessions", type=int, default=None, help="sessions at once (default 8; 2 with --quick)")
    ap.add_argument("--quiet", type=float, default=2.0, help="seconds without change that end a step")
    ap.add_argument("--step-timeout", type=float, default=120.0)
    ap.add_argument("--first-timeout", type=float, default=300.0)
    ap.add_argument("--only", choices=["basemap", "all"], help="one catalog only")
    ap.add_argument("--rev", help="serve this git revision's app (git archive) instead of the working tree")
    args = ap.parse_args(argv)
    sequence = QUICK if args.quick else SEQUENCE[: args.steps]
    args.sessions = args.sessions or (2 if args.quick else 8)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="mapstream-interactive-") as tmp:
        folder = Path(tmp)
        (folder / "cache").mkdir()
        cwd, env = (ROOT, {}) if not args.rev else checkout(args.rev, folder)
        env.update(MAPSTREAM_DEMO_LATENCY=args.latency, MAPSTREAM_CACHE_DIR=str(folder / "cache"))
        catalogs = {"basemap": str(basemap_catalog(folder)), "all layers": None}
        if args.only:
            catalogs = {k: v for k, v in catalogs.items() if k.startswith(args.only)}
        results: dict[str, dict[str, Any]] = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for label, catalog in catalogs.items():
                print(f"{label}: serving ...", flush=True)
                with serve(catalog, env, cwd) as server:
                    results[label] = bench_server(browser, server, sequence, args)
                print(f"{label}: done", flush=True)
            browser.close()
    print(f"\ndemo latency {args.latency}, {len(sequence)} steps, {args.sessions} sessions, "
          f"app: {args.rev or 'working tree'}")
    report(results, args.sessions)


if __name__ == "__main__":
    main()
