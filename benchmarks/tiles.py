"""Tile mosaic benchmark: ``python -m benchmarks.tiles``.

A loopback tile server (its own process, 100 ms latency per tile) serves a viewport of 128 tiles
(16 x 8 at zoom 8); the fetcher's per-host limit is 8, so the ideal end-to-end time is
``ceil(128 / 8) x 0.1 s = 1.6 s``. Measured in one run, one process:

- ours: ``TileLayer.fetch`` cold (fetch + decode in threads + mosaic);
- sequential: the same tiles fetched, decoded and pasted one after another;
- contextily: ``contextily.bounds2img`` for the same box and zoom against the same server, at
  its best parallel setting (``n_connections=8``, ``use_cache=False``: with the cache on and
  more than one connection it switches to a process pool, which is slower, and a cache would
  make a second run free);
- warm: the same viewport again through the same fetcher (must make zero requests).

Prints times, the ratios ours/ideal (target <= 1.15), contextily/ours, sequential/ours, the
warm time and request count, the event-loop lag during the cold load, and peak memory (process
RSS high-water mark, and the Python heap peak of one cold load under tracemalloc, measured
after the timed runs).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from mapstream.layers.http import Fetcher
from mapstream.layers.imaging import decode_tile
from mapstream.layers.metrics import LoopLagMonitor
from mapstream.layers.tilegrid import Tile, tile_bounds
from mapstream.layers.sources.tiles import TileLayer
from mapstream.layers.viewport import Viewport

ZOOM, COL0, ROW0, COLS, ROWS = 8, 120, 80, 16, 8
LIMIT = 8


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    """The loopback tile server in a child process, and its base URL."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.tileserver", "--latency", str(latency)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"tile server did not start: {url!r}")
    return proc, url


def viewport() -> Viewport:
    w, _, _, n = tile_bounds(Tile(ZOOM, COL0, ROW0))
    _, s, e, _ = tile_bounds(Tile(ZOOM, COL0 + COLS - 1, ROW0 + ROWS - 1))
    return Viewport.create((w, e), (s, n), COLS * 256, ROWS * 256)


async def sequential(layer: TileLayer, vp: Viewport, cache_dir: str) -> tuple[float, int]:
    plan = layer.plan(vp)
    canvas = np.zeros((*plan.shape, 4), dtype=np.uint8)
    async with Fetcher(per_host_limit=LIMIT, cache_dir=cache_dir) as f:
        t0 = time.perf_counter()
        for tile, url in zip(plan.tiles, plan.urls, strict=True):
            resp = await f.get(url, allow_status=(404, 204))
            img = await decode_tile(resp.content, 256)
            r, c = (tile.y - ROW0) * 256, (tile.x - COL0) * 256
            canvas[r : r + 256, c : c + 256] = img
        return time.perf_counter() - t0, f.metrics.snapshot()["requests"]


def run_contextily(url: str, vp: Viewport, connections: int) -> tuple[float, tuple[int, ...]]:
    import contextily

    (w, e), (s, n) = vp.x_range, vp.y_range
    t0 = time.perf_counter()
    img, _ = contextily.bounds2img(
        w,
        s,
        e,
        n,
        zoom=ZOOM,
        source=url + "/{z}/{x}/{y}.png",
        ll=False,
        n_connections=connections,
        use_cache=False,
        max_retries=0,
    )
    return time.perf_counter() - t0, img.shape


async def main_async(args: argparse.Namespace) -> None:
    proc, url = start_server(args.latency)
    try:
        layer = TileLayer(url + "/{z}/{x}/{y}.png", name="bench")
        vp = viewport()
        plan = layer.plan(vp)
        n = len(plan.tiles)
        assert plan.zoom == ZOOM and n == COLS * ROWS, (plan.zoom, n)
        ideal = math.ceil(n / LIMIT) * args.latency
        # warm the server's encoder and the client's code paths on other tiles (not timed)
        with tempfile.TemporaryDirectory() as tmp:
            async with Fetcher(per_host_limit=LIMIT, cache_dir=tmp) as f:
                await layer.fetch(Viewport.from_lonlat((0, 0, 20, 20), width=512), f)

        with tempfile.TemporaryDirectory() as tmp:
            async with Fetcher(per_host_limit=LIMIT, cache_dir=tmp) as f:
                async with LoopLagMonitor(interval=0.01) as lag:
                    t0 = time.perf_counter()
                    mosaic = await layer.fetch(vp, f)
                    ours = time.perf_counter() - t0
                cold_requests = f.metrics.snapshot()["requests"]
                t0 = time.perf_counter()
                warm_mosaic = await layer.fetch(vp, f)
                warm = time.perf_counter() - t0
                warm_requests = f.metrics.snapshot()["requests"] - cold_requests
        assert mosaic.errors == () and len(mosaic.tiles_used) == n
        assert np.array_equal(mosaic.image.values, warm_mosaic.image.values)

        with tempfile.TemporaryDirectory() as tmp:
            seq, seq_requests = await sequential(layer, vp, tmp)

        ctx, ctx_shape = await asyncio.to_thread(
            run_contextily, url, vp, args.contextily_connections
        )

        tracemalloc.start()
        with tempfile.TemporaryDirectory() as tmp:
            async with Fetcher(per_host_limit=LIMIT, cache_dir=tmp) as f:
                await layer.fetch(vp, f)
        _, heap_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

        print(
            f"tiles: {n} at zoom {ZOOM} ({COLS}x{ROWS}), "
            f"latency {args.latency * 1000:.0f} ms/tile, per-host limit {LIMIT}, "
            f"mosaic {mosaic.image.shape[1]}x{mosaic.image.shape[0]} px"
        )
        print(f"ideal   ceil({n}/{LIMIT}) x {args.latency:.2f} s = {ideal:.3f} s")
        print(f"ours    cold {ours:.3f} s   ({cold_requests} requests)")
        print(f"seq     {seq:.3f} s   ({seq_requests} requests)")
        print(
            f"ctx     contextily.bounds2img n_connections={args.contextily_connections} "
            f"use_cache=False: {ctx:.3f} s   (image {ctx_shape})"
        )
        print(f"warm    {warm:.3f} s   ({warm_requests} requests)")
        lag_ms = lag.snapshot()
        print(
            f"loop    event-loop lag during the cold load: p99 {lag_ms['lag_p99_ms']:.1f} ms, "
            f"max {lag_ms['lag_max_ms']:.1f} ms"
        )
        print(f"ratio   ours/ideal = {ours / ideal:.3f}   (target <= 1.15)")
        print(f"ratio   contextily/ours = {ctx / ours:.2f}")
        print(f"ratio   sequential/ours = {seq / ours:.2f}")
        print(
            f"memory  peak RSS {rss_peak / 2**20:.0f} MiB (whole run); "
            f"Python heap peak of one cold load {heap_peak / 2**20:.1f} MiB (tracemalloc)"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Tile mosaic benchmark (loopback server).")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per tile (0.1)")
    parser.add_argument("--contextily-connections", type=int, default=LIMIT)
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
