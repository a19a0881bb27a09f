"""Benchmark: OGC API Features paging, ours vs GDAL's OAPIF driver vs OWSLib.

Run ``python -m benchmarks.features``. A child process serves 100 000 generated points as
pre-generated GeoJSON pages of 1 000 features (an OGC API Features surface: landing page,
conformance, collection, items with ``next`` links using ``offset`` and ``numberMatched``), adding
100 ms of latency to every request. One run measures, against the same pages:

- ours, concurrent offset paging (``FeatureLayer(...).fetch``) with the engine's default limits;
- ours, forced sequential (``concurrent=False``: follow ``next``);
- GDAL's OAPIF driver: ``pyogrio.read_dataframe("OAPIF:...")``;
- OWSLib walking the same pages (``Features.collection_items`` + ``GeoDataFrame.from_features``).

It prints each wall time and the ratios, the parser's throughput (MB/s), each client's peak RSS
growth, and the event loop's p99 lag during our loads; then the loop lag while one ~17 MB page
is parsed in a thread vs in the process pool (the choice :mod:`mapstream.layers.sources.geojson` makes).

Options: ``--executor auto|thread|process``, ``--features N``, ``--page N``, ``--latency S``, ``--skip-gdal``, ``--skip-owslib``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import numpy as np

COLLECTION = "points"


# --- the server (child process) ---------------------------------------------------------------


def make_pages(n: int, page: int, base: str) -> list[bytes]:
    """``n`` points with properties as GeoJSON pages of ``page`` features, with next links."""
    rng = np.random.default_rng(7)
    lon, lat = rng.uniform(-179, 179, n), rng.uniform(-80, 80, n)
    value, count = rng.uniform(0, 100, n).round(3), rng.integers(0, 1000, n)
    kinds = np.array(["alpha", "beta", "gamma", "delta"])[rng.integers(0, 4, n)]
    pages = []
    items = f"{base}/collections/{COLLECTION}/items"
    for start in range(0, n, page):
        feats = [
            {
                "type": "Feature",
                "id": i + 1,
                "properties": {"name": f"p{i + 1}", "value": float(value[i]), "count": int(count[i]),
                               "flag": bool(i % 2), "kind": str(kinds[i]),
                               "when": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T12:00:00Z"},
                "geometry": {"type": "Point", "coordinates": [float(lon[i]), float(lat[i])]},
            }
            for i in range(start, min(n, start + page))
        ]
        links = [{"rel": "self", "type": "application/geo+json", "href": f"{items}?f=json&offset={start}&limit={page}"}]
        if start + page < n:
            links.append({"rel": "next", "type": "application/geo+json",
                          "href": f"{items}?f=json&offset={start + page}&limit={page}"})
        pages.append(json.dumps({"type": "FeatureCollection", "features": feats, "numberMatched": n,
                                 "numberReturned": len(feats), "links": links}).encode())
    return pages


def serve(n: int, page: int, latency: float) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    pages = make_pages(n, page, base)
    coll = {
        "id": COLLECTION, "title": COLLECTION, "itemType": "feature",
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}},
        "crs": ["http://www.opengis.net/def/crs/OGC/1.3/CRS84"],
        "links": [{"rel": "items", "type": "application/geo+json", "href": f"{base}/collections/{COLLECTION}/items"}],
    }
    docs = {
        "/": {"title": "benchmark", "links": [
            {"rel": "conformance", "type": "application/json", "href": f"{base}/conformance"},
            {"rel": "data", "type": "application/json", "href": f"{base}/collections"}]},
        "/conformance": {"conformsTo": [
            "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
            "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson"]},
        "/collections": {"collections": [coll], "links": []},
        f"/collections/{COLLECTION}": coll,
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            time.sleep(latency)
            parts = urlsplit(self.path)
            path = parts.path.rstrip("/") or "/"
            if path == f"/collections/{COLLECTION}/items":
                q = dict(parse_qsl(parts.query))
                body, ctype = pages[min(len(pages) - 1, int(q.get("offset", 0)) // page)], "application/geo+json"
            elif path in docs:
                body, ctype = json.dumps(docs[path]).encode(), "application/json"
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

    server.RequestHandlerClass = Handler
    server.daemon_threads = True
    print(f"READY {base}", flush=True)
    server.serve_forever()


class PageServer:
    """The page server in a child process (own process group, killed on exit)."""

    def __init__(self, n: int, page: int, latency: float) -> None:
        self.args = [str(n), str(page), str(latency)]

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.features", "--serve", *self.args],
            stdout=subprocess.PIPE, start_new_session=True, cwd=Path(__file__).resolve().parents[1],
        )
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY "):
            raise RuntimeError("page server did not start")
        return line.split()[1]

    def __exit__(self, *exc: object) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()


# --- measurements ---------------------------------------------------------------------------


class PeakRSS:
    """Peak resident memory growth of this process while the block runs (sampled)."""

    def __enter__(self) -> PeakRSS:
        import psutil

        self._p = psutil.Process()
        self.base = self.peak = self._p.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._p.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._p.memory_info().rss)

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


def ours(url: str, *, concurrent: bool, executor: str) -> tuple[float, int, dict, float]:
    from mapstream.layers.sources.features import FeatureLayer
    from mapstream.layers.http import Fetcher
    from mapstream.layers.metrics import LoopLagMonitor

    from mapstream.layers.sources import geojson

    geojson.DEFAULT_EXECUTOR = executor

    async def run() -> tuple[float, int, dict]:
        layer = FeatureLayer(url, COLLECTION, limit=1000, concurrent=concurrent)
        async with Fetcher(cache_dir=None) as fetcher:
            # warm-up (imports, discovery, parser processes): paid once per process, not per load
            await FeatureLayer(url, COLLECTION, limit=1000, max_features=2000).fetch(None, fetcher)
            lag = LoopLagMonitor(interval=0.005)
            async with lag:
                t0 = time.perf_counter()
                frame = (await layer.fetch(None, fetcher)).frame
                dt = time.perf_counter() - t0
            assert frame["id"].is_unique
            return dt, len(frame), lag.snapshot()

    with PeakRSS() as mem:
        dt, n, lag = asyncio.run(run())
    return dt, n, lag, mem.mb


def gdal(url: str) -> tuple[float, int, float]:
    import pyogrio

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        frame = pyogrio.read_dataframe(f"OAPIF:{url}", layer=COLLECTION)
        dt = time.perf_counter() - t0
    return dt, len(frame), mem.mb


def owslib(url: str, page: int) -> tuple[float, int, float]:
    import geopandas as gpd
    from owslib.ogcapi.features import Features

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        api = Features(url)
        frames, offset = [], 0
        while True:
            doc = api.collection_items(COLLECTION, limit=page, offset=offset)
            frames.append(gpd.GeoDataFrame.from_features(doc["features"], crs="OGC:CRS84").to_crs(3857))
            if not any(l.get("rel") == "next" for l in doc.get("links", [])):
                break
            offset += page
        n = sum(len(f) for f in frames)
        dt = time.perf_counter() - t0
    return dt, n, mem.mb


def parse_throughput(n: int, page: int) -> tuple[float, float]:
    from mapstream.layers.sources.geojson import parse_feature_collection

    pages = make_pages(n, page, "http://x")
    total = sum(len(p) for p in pages)
    t0 = time.perf_counter()
    for p in pages:
        parse_feature_collection(p)
    return total / 2**20 / (time.perf_counter() - t0), total / 2**20


def big_page_lag(executor: str, body: bytes) -> tuple[dict, float]:
    from mapstream.layers.sources.geojson import parse_off_loop, shutdown_pool
    from mapstream.layers.metrics import LoopLagMonitor

    async def run() -> tuple[dict, float]:
        if executor == "process":  # warm the pool: start-up is paid once per process, not per page
            await parse_off_loop(make_pages(10, 10, "http://x")[0], executor="process")
        lag = LoopLagMonitor(interval=0.005)
        async with lag:
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            await parse_off_loop(body, executor=executor)
            dt = time.perf_counter() - t0
            await asyncio.sleep(0.05)
        return lag.snapshot(), dt

    out = asyncio.run(run())
    shutdown_pool()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.features", description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=100_000)
    ap.add_argument("--page", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--executor", default="auto", choices=["auto", "thread", "process"],
                    help="where our loads parse pages (mapstream.layers.sources.geojson.DEFAULT_EXECUTOR)")
    ap.add_argument("--skip-gdal", action="store_true")
    ap.add_argument("--skip-owslib", action="store_true")
    ap.add_argument("--serve", nargs=3, metavar=("N", "PAGE", "LATENCY"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve:
        serve(int(a.serve[0]), int(a.serve[1]), float(a.serve[2]))
        return
    print(f"{a.features} points, {a.page} per page, {a.latency * 1000:.0f} ms latency per request, "
          f"our parser: {a.executor}")
    rows = {}
    with PageServer(a.features, a.page, a.latency) as url:
        t, n, lag, mb = ours(url, concurrent=True, executor=a.executor)
        rows["ours concurrent"] = t
        print(f"ours concurrent   {t:7.2f} s  {n} features  peak +{mb:.0f} MB  loop lag p99 "
              f"{lag['lag_p99_ms']:.1f} ms (max {lag['lag_max_ms']:.1f})")
        t, n, lag, mb = ours(url, concurrent=False, executor=a.executor)
        rows["ours sequential"] = t
        print(f"ours sequential   {t:7.2f} s  {n} features  peak +{mb:.0f} MB  loop lag p99 "
              f"{lag['lag_p99_ms']:.1f} ms (max {lag['lag_max_ms']:.1f})")
        if not a.skip_gdal:
            t, n, mb = gdal(url)
            rows["GDAL OAPIF"] = t
            print(f"GDAL OAPIF        {t:7.2f} s  {n} features  peak +{mb:.0f} MB")
        if not a.skip_owslib:
            t, n, mb = owslib(url, a.page)
            rows["OWSLib"] = t
            print(f"OWSLib            {t:7.2f} s  {n} features  peak +{mb:.0f} MB")
    base = rows["ours concurrent"]
    for name, t in rows.items():
        if name != "ours concurrent":
            print(f"ratio {name} / ours concurrent: {t / base:.1f}x")
    mbs, total = parse_throughput(a.features, a.page)
    print(f"parse throughput (one core, in-process): {mbs:.0f} MB/s over {total:.1f} MB")
    big = make_pages(70_000, 70_000, "http://x")[0]
    for ex in ("thread", "process"):
        lag, dt = big_page_lag(ex, big)
        print(f"one {len(big) / 2**20:.0f} MB page parsed in a {ex:7s}: {dt:.2f} s, loop lag p99 "
              f"{lag['lag_p99_ms']:.1f} ms, max {lag['lag_max_ms']:.1f} ms")


if __name__ == "__main__":
    main()
