"""The mapstream CLI in-process: option parsing, the prefetch core, the writers, serve."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from shapely.geometry import Point

from mapstream.app import cli
from mapstream.app.cli.writers import atomic_output, open_writer, temp_path_for
from mapstream.app.cli.progress import ProgressBar, RunStats, format_summary
from mapstream.app.cli.prefetch import prefetch_tiles
from mapstream.layers.http import Fetcher
from mapstream.layers.sources.tiles import TileLayer
from mapstream.layers.viewport import Viewport
from tests.support.ogc import make_ogc_server, ogc_data, ogc_server  # noqa: F401 (fixtures)
from tests.support.tileserver import tile_server  # noqa: F401 (fixture)

BBOX = (-10.0, 35.0, 30.0, 60.0)  # Europe: 1+2+2+4+9+16+64 tiles at zooms 0-6


def invoke(*args: str):
    return CliRunner().invoke(cli.main, list(args))


# ------------------------------------------------------------------ bad input: one line, exit 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prefetch", "osm", "--bbox", "1,2,3", "--zoom", "3"], "expected four numbers W,S,E,N"),
        (["prefetch", "osm", "--bbox", "1,2,1,4", "--zoom", "3"], "the box is empty"),
        (["prefetch", "osm", "--bbox", "1,20,3,10", "--zoom", "3"], "south (20.0) must be less than north"),
        (["prefetch", "osm", "--bbox", "1,2,300,4", "--zoom", "3"], "longitudes must be within"),
        (["prefetch", "osm", "--bbox", "1,2,3,4", "--zoom", "9-3"], "zoom range 9-3 is empty"),
        (["prefetch", "osm", "--bbox", "1,2,3,4", "--zoom", "3-99"], "zoom levels go from 0 to 24"),
        (["prefetch", "osm", "--bbox", "1,2,3,4", "--zoom", "x"], "expected a zoom level or a range"),
        (["prefetch", "osm", "--bbox", "1,2,3,4", "--concurrency", "0", "--zoom", "3"], "--concurrency"),
        (["demo", "--latency", "fast"], "expected a duration like 150ms"),
        (["demo", "--fail-rate", "2"], "expected a fraction between 0 and 1"),
        (["export", "pts", "-o", "out.shp"], "cannot write '.shp' files"),
        (["export", "pts", "-o", "/nonexistent-dir/out.parquet"], "does not exist"),
        (["export", "pts", "-o", "out.parquet", "--crs", "EPSG:999999"], "unknown CRS"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output


def test_unwritable_output_dir(tmp_path):
    # /proc refuses new files even to root; a 0o500 directory covers other users.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    targets = [Path("/proc/out.gpkg")]
    try:
        (locked / "probe").touch()
    except OSError:
        targets.append(locked / "out.gpkg")  # not root: permissions apply
    try:
        for target in targets:
            result = invoke("export", "pts", "-o", str(target))
            assert result.exit_code == 2, result.output
            assert "is not writable" in result.output and "Traceback" not in result.output
    finally:
        locked.chmod(0o700)


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "out.geojson"
    out.write_text("{}")
    result = invoke("export", "pts", "-o", str(out))
    assert result.exit_code == 2 and "exists (use --force" in result.output
    assert out.read_text() == "{}"


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("prefetch", "export", "check", "cache", "demo", "serve"):
        assert name in result.output


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, mapstream.app.cli; print(sorted(m for m in ('panel', 'holoviews', 'bokeh', 'geopandas', 'numpy', 'httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ serve


def test_serve_execs_panel_with_the_catalog(tmp_path, monkeypatch):
    catalog = tmp_path / "c.yml"
    catalog.write_text("layers: []\n")
    seen = {}

    def fake_execvp(file, argv):
        seen["argv"] = argv
        raise SystemExit(0)

    monkeypatch.setattr(cli.serve.os, "execvp", fake_execvp)
    monkeypatch.delenv("MAPSTREAM_CATALOG", raising=False)
    result = invoke("serve", "--catalog", str(catalog), "--port", "5099")
    assert result.exit_code == 0, result.output
    argv = seen["argv"]
    assert argv[1:4] == ["-m", "panel", "serve"]
    assert (Path(argv[4]) / "main.py").is_file() and Path(argv[4]).name == "app"
    assert argv[5:] == ["--warm", "--port", "5099", "--args", "--catalog", str(catalog.resolve())]
    assert cli.serve.os.environ["MAPSTREAM_CATALOG"] == str(catalog.resolve())


def test_serve_rejects_a_missing_catalog(tmp_path):
    result = invoke("serve", "--catalog", str(tmp_path / "nope.yml"))
    assert result.exit_code == 2 and "is not a readable file" in result.output


# ------------------------------------------------------------------ prefetch core


async def _prefetch(server_url: str, cache_dir: Path, zooms, concurrency=4):
    layer = TileLayer(server_url + "/{z}/{x}/{y}.png", max_zoom=10)
    stats = RunStats(unit="tiles")
    bar = ProgressBar(stats, desc="t", enabled=False)
    async with Fetcher(cache_dir=cache_dir) as fetcher:
        await prefetch_tiles(layer, None, fetcher, BBOX, zooms, concurrency=concurrency, stats=stats, bar=bar)
    bar.close()
    return layer, stats


async def test_prefetch_then_resume_makes_no_requests(tile_server, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"
    layer, first = await _prefetch(tile_server.url, cache, range(0, 7))
    expected = sum(len(layer.tiles_for_bbox(BBOX, z)) for z in range(0, 7))
    assert expected > 20
    assert (first.done, first.fetched, first.cached, first.failed) == (expected, expected, 0, 0)
    assert first.requests == expected == len(tile_server.requests)
    assert len(set(tile_server.requests)) == expected  # each tile once

    _, second = await _prefetch(tile_server.url, cache, range(0, 7))
    assert (second.done, second.fetched, second.cached, second.requests) == (expected, 0, expected, 0)
    assert len(tile_server.requests) == expected  # the server saw nothing new

    # The app's path: a new Fetcher on the same cache loads the mosaic without a request.
    async with Fetcher(cache_dir=cache) as app_fetcher:
        vp = Viewport.from_lonlat(BBOX, 512)
        plan = layer.plan(vp)
        assert 0 <= plan.zoom <= 6
        await layer.fetch(vp, app_fetcher)
        snap = app_fetcher.metrics.snapshot()
    assert snap["requests"] == 0 and snap.get("cache_hits", 0) >= len(plan.tiles)


async def test_prefetch_counts_failures_and_missing_tiles(tile_server, tmp_path):  # noqa: F811
    layer = TileLayer(tile_server.url + "/{z}/{x}/{y}.png")
    tiles = layer.tiles_for_bbox(BBOX, 6)
    missing, failing = tiles[0], tiles[1]
    tile_server.missing.add(tuple(missing))
    tile_server.failing.add(tuple(failing))
    stats = RunStats()
    bar = ProgressBar(stats, desc="t", enabled=False)
    async with Fetcher(cache_dir=tmp_path, retry_attempts=1) as fetcher:
        await prefetch_tiles(layer, None, fetcher, BBOX, [6], concurrency=3, stats=stats, bar=bar)
    assert stats.done == len(tiles)
    assert stats.failed == 1 and "500" in stats.errors[0]
    assert stats.missing == 1
    assert "finished with failures" in format_summary(stats)


async def test_prefetch_cancelled_keeps_a_partial_count(tile_server, tmp_path):  # noqa: F811
    tile_server.latency = 0.05
    layer = TileLayer(tile_server.url + "/{z}/{x}/{y}.png")
    stats = RunStats()
    bar = ProgressBar(stats, desc="t", enabled=False)
    async with Fetcher(cache_dir=tmp_path) as fetcher:
        task = asyncio.create_task(
            prefetch_tiles(layer, None, fetcher, BBOX, range(5, 8), concurrency=2, stats=stats, bar=bar)
        )
        while stats.done < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert 3 <= stats.done < stats.total
    stats.interrupted = True
    assert format_summary(stats).startswith("prefetch interrupted:")


# ------------------------------------------------------------------ writers


def _pages(n_pages=3, per_page=7):
    rng = np.random.default_rng(1)
    pages = []
    for p in range(n_pages):
        ids = np.arange(p * per_page, (p + 1) * per_page)
        pages.append(
            gpd.GeoDataFrame(
                {
                    "id": ids,
                    "value": rng.uniform(0, 1, per_page),
                    "name": [f"f{i}" for i in ids],
                    # all-null on the first page, set later: must not break GeoParquet
                    "note": [None] * per_page if p == 0 else [f"n{i}" for i in ids],
                },
                geometry=[Point(float(i), float(i) / 2) for i in ids],
                crs="EPSG:4326",
            ).to_crs("EPSG:3857")
        )
    return pages


@pytest.mark.parametrize("fmt,suffix", [("parquet", ".parquet"), ("gpkg", ".gpkg"), ("geojson", ".geojson")])
def test_writers_stream_pages_to_a_readable_file(tmp_path, fmt, suffix):
    pages = _pages()
    out = tmp_path / f"out{suffix}"
    with atomic_output(out) as tmp:
        assert tmp.name.startswith(".out.part-")
        w = open_writer(fmt, tmp, crs="EPSG:4326", layer_name="pts")
        for page in pages:
            w.write(page)
        w.close()
        assert not out.exists()  # nothing that looks complete before the rename
    got = gpd.read_parquet(out) if fmt == "parquet" else gpd.read_file(out)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    want = gpd.GeoDataFrame(
        gpd.pd.concat([p.to_crs("EPSG:4326") for p in pages], ignore_index=True), crs="EPSG:4326"
    )
    assert got.crs.to_epsg() == 4326
    assert list(got["id"]) == list(want["id"])
    assert np.allclose(got["value"], want["value"])
    assert list(got["name"]) == list(want["name"])
    assert np.allclose(got.geometry.x, want.geometry.x) and np.allclose(got.geometry.y, want.geometry.y)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        geo = json.loads(pq.read_schema(out).metadata[b"geo"])
        assert geo["primary_column"] == "geometry" and "geometry" in geo["columns"]


def test_failed_export_leaves_no_file(tmp_path):
    out = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with atomic_output(out) as tmp:
            w = open_writer("parquet", tmp, crs="EPSG:4326", layer_name="pts")
            w.write(_pages(1)[0])
            w.close()
            assert tmp.exists()
            raise RuntimeError("page 2 failed")
    assert list(tmp_path.iterdir()) == []
    assert not temp_path_for(out).exists()


def test_empty_export_is_a_valid_empty_file(tmp_path):
    for fmt, suffix in (("parquet", ".parquet"), ("geojson", ".geojson")):
        out = tmp_path / f"e{suffix}"
        with atomic_output(out) as tmp:
            w = open_writer(fmt, tmp, crs="EPSG:4326", layer_name="pts")
            w.close()
        got = gpd.read_parquet(out) if fmt == "parquet" else gpd.read_file(out)
        assert len(got) == 0


# ------------------------------------------------------------------ export core over pygeoapi

EXPORT_BOX = (-60.0, -40.0, 60.0, 40.0)  # about 3 300 of the 20 000 test points: several pages


@pytest.mark.parametrize("fmt,suffix", [("parquet", ".parquet"), ("gpkg", ".gpkg"), ("geojson", ".geojson")])
async def test_export_of_a_paged_layer_equals_its_content(ogc_server, tmp_path, fmt, suffix):  # noqa: F811
    from mapstream.app.cli.export import export_layer
    from mapstream.layers.sources.features import FeatureLayer

    layer = FeatureLayer(ogc_server.url, "points", limit=500)
    out = tmp_path / f"points{suffix}"
    crs = "EPSG:4326" if fmt == "geojson" else "EPSG:3857"
    stats = RunStats(unit="pages")
    bar = ProgressBar(stats, desc="points", enabled=False)
    async with Fetcher(cache_dir=tmp_path / "cache") as fetcher:
        writer = await export_layer(layer, fetcher, EXPORT_BOX, out, fmt=fmt, crs=crs, stats=stats, bar=bar)
        want = (await layer.fetch(Viewport.from_lonlat(EXPORT_BOX, 1024), fetcher)).frame
    assert stats.done >= 5 and stats.failed == 0 and not stats.truncated
    assert writer.rows == len(want) == stats.features > 2000
    got = gpd.read_parquet(out) if fmt == "parquet" else gpd.read_file(out)
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == [out.name]
    want = want.to_crs(crs).sort_values("id").reset_index(drop=True)
    got = got.sort_values("id").reset_index(drop=True)
    assert list(got["id"]) == list(want["id"])
    assert list(got["name"]) == list(want["name"])
    assert np.allclose(got["value"], want["value"])
    assert list(got["count"]) == list(want["count"])
    assert (pd.to_datetime(got["when"], utc=True) == pd.to_datetime(want["when"], utc=True)).all()
    assert np.allclose(got.geometry.x, want.geometry.x, atol=1e-6)
    assert np.allclose(got.geometry.y, want.geometry.y, atol=1e-6)


# ------------------------------------------------------------------ check core


async def test_probe_reports_up_down_error_and_validators(tile_server, ogc_server, tmp_path):  # noqa: F811
    from types import SimpleNamespace as Spec

    from mapstream.app.cli.check import format_table, probe_all
    from mapstream.layers.sources.features import FeatureLayer
    from tests.support.cli import ValidatorTileServer, dead_port

    def spec(name, kind, url, **kw):
        return Spec(name=name, kind=kind, url=url, collection=kw.get("collection"), min_zoom=kw.get("min_zoom", 0), headers={})

    async def build(s, fetcher):
        if s.kind == "features":
            return FeatureLayer(s.url, s.collection)
        return TileLayer(s.url, min_zoom=s.min_zoom)

    with ValidatorTileServer() as vserver:
        tile_server.failing.update({(4, 7, 7), (4, 8, 7), (4, 7, 8), (4, 8, 8)})
        specs = [
            spec("validated", "tiles", vserver.url + "/{z}/{x}/{y}.png"),
            spec("plain", "tiles", tile_server.url + "/{z}/{x}/{y}.png"),
            spec("broken", "tiles", tile_server.url + "/{z}/{x}/{y}.png", min_zoom=4),
            spec("dead", "tiles", f"http://127.0.0.1:{dead_port()}/{{z}}/{{x}}/{{y}}.png"),
            spec("points", "features", ogc_server.url, collection="points"),
            spec("dead-features", "features", f"http://127.0.0.1:{dead_port()}", collection="points"),
        ]
        async with Fetcher(cache_dir=tmp_path, retry_attempts=1) as fetcher:
            rows = await probe_all(specs, fetcher, build, timeout=20)
    by = {r.layer: r for r in rows}
    assert [r.layer for r in rows] == [s.name for s in specs]  # catalog order
    assert by["validated"].status == "up" and by["validated"].validators == ("ETag", "Last-Modified")
    assert by["plain"].status == "up" and by["plain"].validators == () and by["plain"].http_status == 200
    assert by["broken"].status == "error" and by["broken"].http_status == 500
    assert by["dead"].status == "down" and by["dead"].error
    assert by["points"].status == "up" and by["points"].http_status == 200
    assert by["dead-features"].status == "down"
    assert all(r.latency is not None and r.latency >= 0 for r in rows)
    table = format_table(rows)
    assert table.splitlines()[0].split() == ["layer", "kind", "status", "http", "latency", "validators", "error"]
    assert len(table.splitlines()) == len(specs) + 1


@pytest.mark.slow  # more than a few seconds: the fast lane (-m "not slow") skips it
async def test_cancelled_export_leaves_no_file(make_ogc_server, tmp_path):  # noqa: F811
    from mapstream.app.cli.export import export_layer
    from mapstream.layers.sources.features import FeatureLayer

    server = make_ogc_server(latency=0.3)
    layer = FeatureLayer(server.url, "points", limit=500)
    out = tmp_path / "out" / "points.gpkg"
    out.parent.mkdir()
    stats = RunStats(unit="pages")
    bar = ProgressBar(stats, desc="points", enabled=False)
    async with Fetcher(cache_dir=tmp_path / "cache") as fetcher:
        task = asyncio.create_task(export_layer(layer, fetcher, None, out, fmt="gpkg", crs="EPSG:4326", stats=stats, bar=bar))
        while stats.done < 2:
            await asyncio.sleep(0.02)
        assert list(out.parent.iterdir())  # the temporary file is being written
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert 2 <= stats.done < 40
    assert list(out.parent.iterdir()) == []


async def test_prefetch_wms_getmap_tiles_then_resume(tile_server, tmp_path):  # noqa: F811
    from mapstream.layers.sources.wms import WMSLayer

    layer = WMSLayer(tile_server.url + "/wms", "roads,water", gutter=0)  # the fixture serves exact tiles
    stats = RunStats()
    bar = ProgressBar(stats, desc="wms", enabled=False)
    async with Fetcher(cache_dir=tmp_path) as fetcher:
        await prefetch_tiles(layer, None, fetcher, BBOX, range(2, 5), concurrency=4, stats=stats, bar=bar)
    n = sum(len(layer.tiles_for_bbox(BBOX, z)) for z in range(2, 5))
    assert (stats.done, stats.fetched, stats.failed) == (n, n, 0)
    assert all(p.startswith("/wms?") for p in tile_server.requests) and len(tile_server.requests) == n
    again = RunStats()
    async with Fetcher(cache_dir=tmp_path) as fetcher:
        await prefetch_tiles(layer, None, fetcher, BBOX, range(2, 5), concurrency=4, stats=again, bar=bar)
    assert (again.cached, again.requests) == (n, 0) and len(tile_server.requests) == n


def test_count_tiles_matches_the_layer_listing():
    from mapstream.app.cli.prefetch import count_tiles

    layer = TileLayer("http://t.test/{z}/{x}/{y}.png")
    for box in (BBOX, (170.0, -10.0, -170.0, 10.0), (-180.0, -85.0, 180.0, 85.0), (8.5, 47.3, 8.6, 47.4)):
        for z in (0, 3, 7, 9):
            assert count_tiles(box, [z]) == len(layer.tiles_for_bbox(box, z)), (box, z)


def test_too_many_tiles_is_refused_before_any_request(tmp_path, monkeypatch):
    from types import SimpleNamespace as Spec

    spec = Spec(name="base", kind="tiles", min_zoom=0, max_zoom=19, url="http://t.test/{z}/{x}/{y}.png")
    catalog = Spec(get=lambda name: spec)
    monkeypatch.setattr(cli.prefetch, "open_catalog", lambda path: catalog)
    result = invoke("prefetch", "base", "--bbox", "-180,-85,180,85", "--zoom", "0-12", "--max-tiles", "1000")
    assert result.exit_code == 2
    assert "is more than --max-tiles 1000" in result.output


async def test_prefetch_features_walks_every_page_then_resumes_from_cache(ogc_server, tmp_path):  # noqa: F811
    from mapstream.app.cli.prefetch import prefetch_features
    from mapstream.layers.sources.features import FeatureLayer

    layer = FeatureLayer(ogc_server.url, "points", limit=500)
    runs = []
    for _ in range(2):
        stats = RunStats(unit="pages")
        bar = ProgressBar(stats, desc="points", enabled=False)
        async with Fetcher(cache_dir=tmp_path) as fetcher:
            await prefetch_features(layer, fetcher, EXPORT_BOX, stats=stats, bar=bar)
        runs.append(stats)
    first, second = runs
    assert first.done == first.total >= 5 and first.failed == 0 and first.features > 2000
    assert first.requests >= first.done and first.cached == 0
    assert (second.done, second.features) == (first.done, first.features)
    assert second.cached == second.done and second.requests == 0


@pytest.mark.slow  # 34 tiles at 50 ms one at a time, then 8 at a time: a wall-clock speed-up
async def test_prefetch_concurrency_speeds_up_a_slow_server(tile_server, tmp_path, capsys):  # noqa: F811
    import time

    tile_server.latency = 0.05
    times = {}
    for c in (1, 8):
        start = time.perf_counter()
        _, stats = await _prefetch(tile_server.url, tmp_path / f"cache{c}", range(0, 6), concurrency=c)
        times[c] = time.perf_counter() - start
        assert stats.fetched == 34
    ratio = times[1] / times[8]
    with capsys.disabled():
        print(f"\nprefetch of 34 tiles at 50 ms: concurrency 1 / concurrency 8 = {ratio:.1f}x")
    assert ratio > 2.0  # ideal is about 8; generous for a busy machine


async def test_resume_against_a_no_cache_server_revalidates_without_downloading(tmp_path):
    from tests.support.cli import ValidatorTileServer

    with ValidatorTileServer(max_age=0) as server:  # every reuse must be confirmed (304)
        _, first = await _prefetch(server.url, tmp_path, range(0, 5))
        n = first.total
        assert (first.fetched, first.revalidated, server.hits) == (n, 0, n)
        _, second = await _prefetch(server.url, tmp_path, range(0, 5))
    assert (second.fetched, second.revalidated, second.cached) == (0, n, 0)
    assert server.not_modified == n and second.requests == n
    assert "revalidated (304, not downloaded again)" in format_summary(second)


async def test_prefetch_never_exceeds_the_catalogs_host_limit(tmp_path):
    from types import SimpleNamespace as Spec

    from tests.support.cli import ConcurrencyProbe

    with ConcurrencyProbe(delay=0.05) as server:
        layer = TileLayer(server.url + "/{z}/{x}/{y}.png")
        for cap, requested, allowed in ((2, 8, range(1, 3)), (None, 6, range(3, 7))):
            server.reset()
            stats = RunStats()
            bar = ProgressBar(stats, desc="t", enabled=False)
            async with Fetcher(cache_dir=tmp_path / f"c{cap}") as fetcher:
                await prefetch_tiles(layer, Spec(concurrency=cap), fetcher, BBOX, range(0, 5), concurrency=requested, stats=stats, bar=bar)
            assert stats.fetched == 18
            assert server.peak in allowed, (cap, requested, server.peak)


def test_cache_command_shows_prunes_and_clears_the_disk_cache(tmp_path):
    from mapstream.layers.cache import DiskCache, cache_key, make_entry

    disk = DiskCache(tmp_path)
    for i in range(5):
        url = f"http://h.test/{i}"
        disk.store(cache_key("GET", url, {}), make_entry(url, 200, [("etag", f'"{i}"')], b"x" * 10_000, ttl=600))
    result = invoke("cache", "--cache-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "entries: 5" in result.output and str(tmp_path) in result.output
    result = invoke("cache", "--cache-dir", str(tmp_path), "--prune", "25K")
    assert result.exit_code == 0, result.output
    kept = DiskCache(tmp_path).size()
    assert kept.nbytes <= 25 * 1024 and kept.entries < 5
    assert f"kept {kept.entries}" in result.output
    result = invoke("cache", "--cache-dir", str(tmp_path), "--clear")
    assert result.exit_code == 0 and DiskCache(tmp_path).size().entries == 0
    result = invoke("cache", "--cache-dir", str(tmp_path), "--prune", "lots")
    assert result.exit_code == 2 and "'--prune'" in result.output and "not a size" in result.output


def test_bad_or_missing_catalog_names_the_file_once(tmp_path):
    from click.testing import CliRunner

    from mapstream.app.cli import main

    bad = tmp_path / "bad.yml"
    bad.write_text("layers:\n  - name: osm\n    kind: tiles\n    url: demo://tiles\n    opacty: 0.5\n")
    for path in (bad, tmp_path / "missing.yml"):
        for args in (["check"], ["prefetch", "osm", "--bbox", "0,0,1,1", "--zoom", "1"]):
            result = CliRunner().invoke(main, [*args, "--catalog", str(path)])
            assert result.exit_code == 1, result.output
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"Error: cannot use catalog {path}: "), lines
            assert lines[0].count(str(path)) == 1, lines[0]
