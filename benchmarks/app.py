"""App benchmark: the served demo map in headless Chromium.

Prints, in one run, with the demo services at 150 ms injected latency and an empty HTTP cache:
request -> page shown; page shown -> each layer the catalog shows drawn; the time after the last
pan of a burst until the final view is complete versus the same after a single pan (target
ratio <= 1.2), plus the upstream requests a burst issued versus a single pan.

    python -m benchmarks.app [--latency 150ms] [--burst 6]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time

from mapstream.layers.catalog import load_catalog
from tests.browser.served import drag, launch, plot_box, served_app, status_lines


def _completed(page) -> int:
    text = page.locator(".mapstream-completed").first.evaluate(
        "e => { const r = e.shadowRoot || e; const p = r.querySelector('pre'); return p ? p.textContent : '' }"
    )
    m = re.search(r"(\d+)", text or "")
    return int(m.group(1)) if m else 0


def _requests(page) -> int:
    """Upstream requests so far, from the metrics view (refreshed every second)."""
    page.wait_for_timeout(1300)
    for _ in range(20):
        text = page.locator(".mapstream-metrics").first.evaluate("e => (e.shadowRoot || e).textContent")
        m = re.search(r"requests: (\d+)", text or "")
        if m:
            return int(m.group(1))
        page.wait_for_timeout(250)
    raise RuntimeError("no request count in the metrics view")


def _wait_visible_done(page, baseline: int, layers: int, timeout: float = 180) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status_lines(page)
        visible = {k: v for k, v in st.items() if not v.startswith(("idle", "hidden"))}
        if _completed(page) >= baseline + layers and all(v.startswith(("done", "error")) for v in visible.values()):
            return time.perf_counter()
        page.wait_for_timeout(25)
    raise TimeoutError("the view never completed")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", default="150ms")
    ap.add_argument("--burst", type=int, default=6)
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    # An empty HTTP cache: every figure includes the network (the demo at --latency), and no
    # earlier run's pages make a pan free.
    cache = tempfile.TemporaryDirectory(prefix="mapstream-bench-cache-")
    env = {"MAPSTREAM_DEMO_LATENCY": args.latency, "MAPSTREAM_CACHE_DIR": cache.name}
    with cache, served_app(env=env) as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("canvas", timeout=120_000)
        shown = time.perf_counter()
        print(f"request -> page shown: {shown - t0:.2f} s")
        # every layer the catalog shows at first; the preload starts them one after another
        pending = {spec.name for spec in load_catalog(None).layers if spec.visible}
        drawn: dict[str, float] = {}
        while pending and time.perf_counter() - shown < 300:
            for name, text in status_lines(page).items():
                if name in pending and text.startswith(("done", "error")):
                    drawn[name] = time.perf_counter() - shown
                    pending.discard(name)
            page.wait_for_timeout(25)
        for name, dt in sorted(drawn.items(), key=lambda kv: kv[1]):
            print(f"page shown -> {name} drawn: {dt:.2f} s")
        layers = len(drawn)
        box = plot_box(page)
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -400)
        page.wait_for_timeout(500)
        _wait_visible_done(page, _completed(page), layers)

        req0, base = _requests(page), _completed(page)
        drag(page, -400, 0, steps=4)
        t_last = time.perf_counter()
        single = _wait_visible_done(page, base, layers) - t_last
        req_single = _requests(page) - req0

        req0 = _requests(page)
        moves = [(150, 40), (-250, 0), (200, -60), (-220, 80), (260, -30), (-300, 0), (180, 50), (-240, -40)]
        for dx, dy in moves[: max(1, args.burst - 1)]:
            drag(page, dx, dy, steps=2)
        base = _completed(page)
        drag(page, 400, 0, steps=4)  # the last pan of the burst: the same move as the single pan
        t_last = time.perf_counter()
        burst = _wait_visible_done(page, base, layers) - t_last
        req_burst = _requests(page) - req0
        print(f"single pan -> final view complete: {single:.2f} s")
        print(f"burst of {args.burst} pans, last pan -> final view complete: {burst:.2f} s")
        print(f"ratio burst/single: {burst / single:.2f} (target <= 1.2)")
        print(f"upstream requests: single pan {req_single}, burst {req_burst} "
              f"(ratio {req_burst / max(req_single, 1):.2f})")
        browser.close()


if __name__ == "__main__":
    main()
