"""The embedded demo: seeded data, the basemap tile server, the shared services and their stop."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import shapely

from mapstream.layers.catalog import build_layer, load_catalog
from mapstream.demo import ensure_demo, start_demo
from mapstream.demo.data import COUNTRIES_FILE, ensure_data, read_countries, sensor_frame
from mapstream.demo.tileserver import LAND, MAX_ZOOM, SEA, TileServer
from mapstream.layers.sources.cog import COGLayer
from mapstream.layers.sources.features import FeatureLayer
from mapstream.layers.sources.stac import STACLayer
from mapstream.layers.http import Fetcher
from mapstream.layers.sources.tiles import TileLayer
from mapstream.layers.viewport import Viewport
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
EUROPE = (0.0, 40.0, 10.0, 50.0)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def demo():
    services = start_demo(latency=0.0, fail_rate=0.0)
    yield services
    pids = services.pids
    services.stop()
    assert not any(
        psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids
    )


# ------------------------------------------------------------------ data


def test_sensor_data_is_seeded_and_over_land():
    countries = read_countries()
    a = sensor_frame(countries, n=3000, seed=1)
    b = sensor_frame(countries, n=3000, seed=1)
    c = sensor_frame(countries, n=3000, seed=2)
    assert a.equals(b) and not a.geometry.equals(c.geometry)
    assert len(a) == 3000 and a["id"].is_unique
    land = shapely.union_all(countries.geometry.values)
    assert shapely.contains_xy(land, a.geometry.x.to_numpy(), a.geometry.y.to_numpy()).all()
    assert set(a["kind"]) == {"temperature", "pm25", "noise", "humidity"}
    assert a["when"].dt.year.isin([2024, 2025]).all()


def test_generated_once_into_the_cache(demo):
    first = ensure_data()
    stamps = {k: p.stat().st_mtime_ns for k, p in first.items()}
    again = ensure_data()
    assert again == first and {k: p.stat().st_mtime_ns for k, p in again.items()} == stamps
    import pyogrio

    assert pyogrio.read_info(first["sensors"])["features"] >= 200_000


# ------------------------------------------------------------------ basemap tiles


def test_tiles_are_256px_png_of_land_and_sea(demo):
    import io

    from PIL import Image

    status, headers, body = get(demo.tiles_url.format(z=2, x=2, y=1))  # Europe, Africa, sea
    assert status == 200 and headers["Content-Type"] == "image/png"
    img = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    assert img.shape == (256, 256, 3)
    colours = {tuple(px) for px in img.reshape(-1, 3)}
    assert SEA in colours and LAND in colours


def test_tiles_revalidate_with_etag_and_last_modified(demo):
    url = demo.tiles_url.format(z=3, x=4, y=2)
    status, headers, body = get(url)
    assert status == 200 and headers["ETag"] and headers["Last-Modified"] and body
    assert get(url, {"If-None-Match": headers["ETag"]})[0] == 304
    assert get(url, {"If-Modified-Since": headers["Last-Modified"]})[0] == 304
    assert get(url, {"If-None-Match": '"stale"'})[0] == 200
    other = get(demo.tiles_url.format(z=3, x=5, y=2))[1]["ETag"]
    assert other != headers["ETag"]


def test_cogs_are_served_with_ranges(demo):
    base = demo.tiles_url.split("/tiles/")[0] + "/cogs/elevation-3857.tif"
    status, headers, whole = get(base)
    assert status == 200 and headers["Accept-Ranges"] == "bytes" and whole[:4] == b"II*\x00"
    status, headers, part = get(base, {"Range": "bytes=100-199"})
    assert status == 206 and part == whole[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(whole)}"
    status, headers, _ = get(base, {"Range": f"bytes={len(whole)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(whole)}"
    status, _, _ = get(base, {"Range": "bytes=0-9", "If-Match": '"other"'})
    assert status == 412


def test_tiles_outside_the_range_are_404(demo):
    base = demo.tiles_url
    for z, x, y in ((MAX_ZOOM + 1, 0, 0), (2, 4, 0), (2, 0, 4), (0, 1, 0)):
        assert get(base.format(z=z, x=x, y=y))[0] == 404
    assert get(base.split("/tiles/")[0] + "/tiles/a/b/c.png")[0] == 404
    assert get(base.format(z=MAX_ZOOM, x=0, y=0))[0] == 200


def test_a_tile_is_rendered_once():
    with TileServer(COUNTRIES_FILE) as server:
        url = server.tiles_url.format(z=4, x=8, y=5)
        bodies = {get(url)[2] for _ in range(3)}
        assert len(bodies) == 1
        stats = server.stats()
        assert stats["requests"] == 3 and stats["rendered"] == 1


@pytest.mark.slow  # more than a few seconds: the fast lane (-m "not slow") skips it
def test_tile_latency_and_failures_are_injected():
    with TileServer(COUNTRIES_FILE, latency=0.1, fail_rate=0.5) as server:
        statuses, slowest_first = [], None
        for i in range(24):
            t0 = time.perf_counter()
            statuses.append(get(server.tiles_url.format(z=3, x=i % 8, y=3))[0])
            if slowest_first is None:
                slowest_first = time.perf_counter() - t0
        assert set(statuses) == {200, 503}
        assert 3 <= statuses.count(503) <= 21  # about half
        assert slowest_first >= 0.1


# ------------------------------------------------------------------ the demo catalog over the services


@pytest.mark.slow  # more than a few seconds: the fast lane (-m "not slow") skips it
async def test_every_demo_layer_answers(demo):
    catalog = load_catalog()
    assert catalog.uses_demo
    async with Fetcher(cache_dir=None) as fetcher:
        for spec in catalog.layers:
            layer = await build_layer(spec, fetcher)
            view = Viewport.from_lonlat(EUROPE, 400)
            if spec.kind == "tiles":
                assert isinstance(layer, TileLayer) and layer.url_template == demo.tiles_url
                mosaic = (await layer.fetch(view, fetcher)).image
                assert mosaic.shape[-1] == 4 and int(mosaic[..., 3].max()) == 255
            elif spec.kind == "cog":
                assert isinstance(layer, COGLayer)
                assert all(u.startswith(demo.tiles_url.split("/tiles/")[0] + "/cogs/") for u in layer.urls)
                values = await layer.fetch(Viewport.from_lonlat((5, 43, 22, 49), 400), fetcher)
                assert values.dims == ("band", "y", "x") and np.isfinite(values.values).mean() > 0.5
                assert float(np.nanmax(values.values)) > 1000  # mountains
            elif spec.kind == "stac":
                assert isinstance(layer, STACLayer) and layer.urls == [demo.stac_url]
                items = await layer.search((5, 43, 22, 49), fetcher)
                assert sorted(items.frame["id"]) == ["elevation-3857", "elevation-utm33"] and not items.errors
                assert all(h.startswith(demo.tiles_url.split("/tiles/")[0] + "/cogs/") for h in items.hrefs)
                values = await layer.fetch(Viewport.from_lonlat((5, 43, 22, 49), 400), fetcher)
                assert float(np.nanmax(values.values)) > 1000  # the COGs' mountains
            else:
                assert isinstance(layer, FeatureLayer) and layer.url == demo.ogc_url
                result = await layer.fetch(view, fetcher)
                frame = result.frame
                assert len(frame) > 0 and not result.errors, spec.name
                if spec.name == "sensors":
                    # more than one page (1000 a page) over a real socket
                    matched = result.progress.matched
                    assert matched > 1000 and len(frame) == matched
                    assert {"value", "kind", "when"} <= set(frame.columns)


async def test_ensure_demo_returns_the_running_services(demo):
    import asyncio

    got = await asyncio.gather(*(ensure_demo() for _ in range(4)))
    assert all(s is demo for s in got)


# ------------------------------------------------------------------ start, share, stop, atexit

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time, urllib.error, urllib.request
    import psutil
    from mapstream.demo import ensure_demo, start_demo

    lag = [0.0]

    async def ticker():
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            lag[0] = max(lag[0], time.perf_counter() - t0 - 0.01)

    async def main():
        tick = asyncio.create_task(ticker())
        # a cancelled caller does not cancel the start; concurrent callers share it
        first = asyncio.create_task(ensure_demo())
        await asyncio.sleep(0.05)
        first.cancel()
        got = await asyncio.gather(*(ensure_demo() for _ in range(3)))
        tick.cancel()
        return got

    got = asyncio.run(main())
    s = got[0]
    out = {"shared": all(g is s for g in got), "children": len(psutil.Process().children()),
           "pids": s.pids, "startup": s.startup_seconds, "lag": lag[0]}
    statuses, times = [], []
    for i in range(30):
        t0 = time.perf_counter()
        try:
            statuses.append(urllib.request.urlopen(
                f"{s.ogc_url}/collections/countries/items?f=json&limit=2&offset={i}").status)
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)
        times.append(time.perf_counter() - t0)
    out.update(failed=statuses.count(503), ok=statuses.count(200), fastest=min(times))
    s.stop()
    out["after_stop"] = [c.pid for c in psutil.Process().children(recursive=True)]
    again = start_demo()  # a new start after a stop; left running: atexit must stop it
    out["pids_again"] = again.pids
    print(json.dumps(out), flush=True)
    """
)


@pytest.mark.slow
def test_services_start_shared_stop_and_leave_nothing_at_exit(tmp_path):
    env = {
        **__import__("os").environ,
        "PYTHONPATH": str(ROOT),
        "MAPSTREAM_DEMO_LATENCY": "100ms",
        "MAPSTREAM_DEMO_FAIL_RATE": "0.5",
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shared"] and out["children"] == 3 and len(out["pids"]) == 3  # OGC, tiles, STAC
    assert out["startup"] > 0
    # the event loop kept running during the start (a blocking start would stall it for all of it)
    assert out["lag"] < max(0.5, out["startup"] / 3), out
    assert out["failed"] + out["ok"] == 30 and 5 <= out["failed"] <= 25  # about half
    assert out["fastest"] >= 0.1  # the injected latency
    assert out["after_stop"] == []
    assert len(out["pids_again"]) == 3
    wait_for(lambda: not any(psutil.pid_exists(p) for p in out["pids_again"]), 10)
    alive = [p for p in out["pids_again"] if psutil.pid_exists(p)]
    assert not alive, f"left running after exit: {alive}"


@pytest.mark.slow
def test_children_exit_when_the_starter_is_killed(tmp_path):
    import os
    import signal

    script = (
        "import json, time\nfrom mapstream.demo import start_demo\n"
        "print(json.dumps(start_demo().pids), flush=True)\ntime.sleep(300)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        pids = json.loads(proc.stdout.readline())
        assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)
        os.kill(proc.pid, signal.SIGKILL)  # no atexit: the children's watchdog must act
        proc.wait(10)
        wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), 15)
        assert not [p for p in pids if psutil.pid_exists(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
