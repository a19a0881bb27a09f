"""TileLayer against the loopback solid-colour tile server: every pixel from the right tile."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from mapstream.layers.errors import BadInputError, TileError
from mapstream.layers.http import Fetcher
from mapstream.layers.tilegrid import WORLD_SIZE, Tile, tile_bounds
from mapstream.layers.sources.tiles import TileLayer
from mapstream.layers.types import Layer, Mosaic, Progress
from mapstream.layers.projection import ORIGIN_SHIFT
from mapstream.layers.viewport import Viewport
from tests.support.tileserver import TileServer, tile_colour
from tests.support.tileserver import tile_server as tile_server_fixture

tile_server = tile_server_fixture  # the loopback server fixture (shared with the app tests)


def expected_pixels(mosaic, *, tms_server: bool = False) -> np.ndarray:
    """The RGBA each pixel of ``mosaic`` (an image) must have, from its pixel-centre coordinates."""
    z = mosaic.attrs["zoom"]
    n = 2**z
    span = WORLD_SIZE / n
    cols = np.floor((mosaic.x.values + ORIGIN_SHIFT) / span).astype(int) % n
    rows = np.floor((ORIGIN_SHIFT - mosaic.y.values) / span).astype(int)
    out = np.empty((rows.size, cols.size, 4), dtype=np.uint8)
    for j, row in enumerate(rows):
        for i, col in enumerate(cols):
            out[j, i] = tile_colour(z, int(col), int(row))
    return out


@pytest.fixture
async def fetcher(tmp_path):
    async with Fetcher(per_host_limit=8, cache_dir=tmp_path, retry_attempts=1) as f:
        yield f


def check_mosaic_shape(mosaic, viewport: Viewport) -> None:
    assert mosaic.dims == ("y", "x", "band")
    assert mosaic.dtype == np.uint8
    assert list(mosaic.band.values) == ["r", "g", "b", "a"]
    assert mosaic.attrs["crs"] == "EPSG:3857"
    assert np.all(np.diff(mosaic.x.values) > 0) and np.all(np.diff(mosaic.y.values) < 0)
    res = mosaic.x.values[1] - mosaic.x.values[0]
    # cropped to the viewport: no pixel centre more than one pixel outside it
    assert mosaic.x.values[0] >= viewport.x_range[0] - res
    assert mosaic.x.values[-1] <= viewport.x_range[1] + res
    assert mosaic.y.values[0] <= min(viewport.y_range[1], ORIGIN_SHIFT) + res
    assert mosaic.y.values[-1] >= max(viewport.y_range[0], -ORIGIN_SHIFT) - res


async def test_every_pixel_comes_from_its_tile(tile_server, fetcher):
    layer = TileLayer(tile_server.url + "/{z}/{x}/{y}.png", name="solid")
    vp = Viewport.from_lonlat((5.3, 43.1, 17.9, 49.7), width=700, height=500)
    result = await layer.fetch(vp, fetcher)
    assert isinstance(result, Mosaic)
    mosaic = result.image
    check_mosaic_shape(mosaic, vp)
    assert mosaic.attrs == {"crs": "EPSG:3857", "zoom": result.zoom}  # results are fields
    assert result.zoom == layer.zoom_for(vp)
    np.testing.assert_array_equal(mosaic.values, expected_pixels(mosaic))
    plan = layer.plan(vp)
    assert sorted(result.tiles_used) == sorted(t.key for t in plan.tiles)
    assert result.tiles_missing == {} and result.errors == ()
    assert result.complete is True
    p = result.progress
    assert isinstance(p, Progress) and p.unit == "tiles"
    assert (p.done, p.total, p.failed, p.cached, p.complete) == (len(plan.tiles),) * 2 + (
        0,
        0,
        True,
    )
    assert len(tile_server.requests) == len(plan.tiles)


async def test_antimeridian_mosaic_takes_tiles_from_both_sides(tile_server, fetcher):
    layer = TileLayer(tile_server.url + "/{z}/{x}/{y}.png")
    vp = Viewport.from_lonlat((170, -20, -165, 5), width=600)  # east < west: crosses 180
    result = await layer.fetch(vp, fetcher)
    mosaic = result.image
    check_mosaic_shape(mosaic, vp)
    assert mosaic.x.values[-1] > ORIGIN_SHIFT > mosaic.x.values[0]  # x keeps increasing
    np.testing.assert_array_equal(mosaic.values, expected_pixels(mosaic))
    z = result.zoom
    columns = {int(key.split("/")[1]) for key in result.tiles_used}
    assert 0 in columns and 2**z - 1 in columns
    paths = {p.split("/")[2] for p in tile_server.requests}
    assert all(0 <= int(c) < 2**z for c in paths)  # the server only sees wrapped columns


async def test_tms_rows_are_flipped(tile_server, fetcher):
    layer = TileLayer(tile_server.url + "/tms/{z}/{x}/{y}.png", tms=True)
    vp = Viewport.from_lonlat((-30, 20, 10, 60), width=400)
    mosaic = (await layer.fetch(vp, fetcher)).image
    np.testing.assert_array_equal(mosaic.values, expected_pixels(mosaic))
    minus_y = TileLayer(tile_server.url + "/tms/{z}/{x}/{-y}.png")
    fetcher.memory.clear()
    again = (await minus_y.fetch(vp, fetcher)).image
    np.testing.assert_array_equal(again.values, mosaic.values)


async def test_retina_tiles_are_512_px_at_one_zoom_less(tile_server, fetcher):
    plain = TileLayer(tile_server.url + "/{z}/{x}/{y}.png")
    retina = TileLayer(tile_server.url + "/{z}/{x}/{y}{r}.png", tile_size=512)
    vp = Viewport.from_lonlat((-10, 35, 25, 60), width=800)
    assert retina.zoom_for(vp) == plain.zoom_for(vp) - 1
    mosaic = (await retina.fetch(vp, fetcher)).image
    assert all(p.endswith("@2x.png") for p in tile_server.requests)
    np.testing.assert_array_equal(mosaic.values, expected_pixels(mosaic))


@pytest.mark.parametrize("ext", ["jpg", "webp"])
async def test_jpeg_and_webp_decode(tile_server, fetcher, ext):
    layer = TileLayer(tile_server.url + "/{z}/{x}/{y}." + ext)
    mosaic = (await layer.fetch(Viewport.from_lonlat((0, 0, 20, 20), width=300), fetcher)).image
    diff = np.abs(mosaic.values.astype(int) - expected_pixels(mosaic).astype(int))
    assert diff.max() <= 3  # JPEG is lossy, even for one colour


async def test_missing_empty_and_failing_tiles(tile_server, fetcher):
    layer = TileLayer(tile_server.url + "/{z}/{x}/{y}.png")
    vp = Viewport.from_lonlat((-40, -30, 40, 30), width=1000)
    tiles = layer.plan(vp).tiles
    assert len(tiles) >= 6
    gone, blank, broken = tiles[0], tiles[1], tiles[-1]
    tile_server.missing.add(tuple(gone))
    tile_server.empty.add(tuple(blank))
    tile_server.failing.add(tuple(broken))
    result = await layer.fetch(vp, fetcher)
    mosaic = result.image
    missing = result.tiles_missing
    assert missing[gone.key] == "empty (404)" and missing[blank.key] == "empty (204)"
    assert "500" in missing[broken.key]
    assert len(result.errors) == 1 and broken.key in str(result.errors[0])
    error = result.errors[0]
    assert isinstance(error, TileError) and (error.key, error.status) == (broken.key, 500)
    assert result.progress.failed == 1
    assert len(result.tiles_used) == len(tiles) - 3
    # holes are transparent, every other pixel is right
    expected = expected_pixels(mosaic)
    hole = np.zeros(mosaic.shape[:2], dtype=bool)
    for t in (gone, blank, broken):
        w, s, e, n = tile_bounds(t)
        xin = (mosaic.x.values > w) & (mosaic.x.values < e)
        yin = (mosaic.y.values > s) & (mosaic.y.values < n)
        hole |= yin[:, None] & xin[None, :]
    assert hole.any()
    assert (mosaic.values[hole] == 0).all()
    np.testing.assert_array_equal(mosaic.values[~hole], expected[~hole])


async def test_second_fetch_of_same_viewport_makes_no_request(tile_server, fetcher):
    layer = TileLayer(tile_server.url + "/{z}/{x}/{y}.png")
    vp = Viewport.from_lonlat((100, -40, 160, 0), width=500)
    tile_server.missing.add(tuple(layer.plan(vp).tiles[0]))
    first = await layer.fetch(vp, fetcher)
    served = len(tile_server.requests)
    requests = fetcher.metrics.snapshot()["requests"]
    second = await layer.fetch(vp, fetcher)
    assert len(tile_server.requests) == served
    assert fetcher.metrics.snapshot()["requests"] == requests
    np.testing.assert_array_equal(first.image.values, second.image.values)
    assert second.tiles_missing == first.tiles_missing
    p = second.progress
    assert p.cached == p.total == len(layer.plan(vp).tiles)


async def test_raw_bytes_come_back_from_the_disk_cache(tile_server, tmp_path):
    layer = TileLayer(tile_server.url + "/{z}/{x}/{y}.png")
    vp = Viewport.from_lonlat((0, 0, 30, 30), width=300)
    async with Fetcher(cache_dir=tmp_path) as f:
        first = await layer.fetch(vp, f)
    served = len(tile_server.requests)
    async with Fetcher(cache_dir=tmp_path) as f:  # a new process-like fetcher: empty memory
        f.memory.clear()
        second = await layer.fetch(vp, f)
    assert len(tile_server.requests) == served
    np.testing.assert_array_equal(first.image.values, second.image.values)


async def test_load_yields_partial_frames_then_the_final_one(tile_server, fetcher):
    layer = TileLayer(tile_server.url + "/{z}/{x}/{y}.png")
    vp = Viewport.from_lonlat((-60, -40, 60, 40), width=1200)
    total = len(layer.plan(vp).tiles)
    assert total >= 20
    frames = [m async for m in layer.load(vp, fetcher)]
    assert 2 <= len(frames) < total  # a frame every few tiles, not one per tile
    done = [f.progress.done for f in frames]
    assert done == sorted(done) and done[-1] == total
    assert [f.complete for f in frames] == [False] * (len(frames) - 1) + [True]
    opaque = [int((f.image.values[..., 3] > 0).sum()) for f in frames]
    assert opaque == sorted(opaque) and opaque[0] < opaque[-1]
    # a frame handed out earlier is not painted on afterwards
    assert int((frames[0].image.values[..., 3] > 0).sum()) == opaque[0]


async def test_tiles_are_fetched_concurrently(tmp_path):
    with TileServer(latency=0.2) as server:
        layer = TileLayer(server.url + "/{z}/{x}/{y}.png")
        vp = Viewport.from_lonlat((-60, -40, 60, 40), width=1000)
        n = len(layer.plan(vp).tiles)
        assert n >= 16
        async with Fetcher(per_host_limit=8, cache_dir=tmp_path) as f:
            await layer.fetch(vp, f)
        assert len(server.requests) == n
    # each request is held 0.2 s, so sequential fetching never overlaps two; the host limit caps it
    assert 1 < server.peak_in_flight <= 8


async def test_abandoned_load_cancels_its_requests(fetcher):
    with TileServer(latency=0.3) as server:
        layer = TileLayer(server.url + "/{z}/{x}/{y}.png")
        vp = Viewport.from_lonlat((-60, -40, 60, 40), width=1200)
        n = len(layer.plan(vp).tiles)
        agen = layer.load(vp, fetcher, frame_every=1)
        await agen.__anext__()
        await agen.aclose()
        await asyncio.sleep(0.8)
        assert n >= 24 and len(server.requests) <= 16  # uncancelled, all n would be asked for


async def test_api_key_comes_from_env_and_is_never_reported(tile_server, fetcher, monkeypatch):
    secret = "s3cr3t-k3y"
    monkeypatch.setenv("MAPSTREAM_TEST_KEY", secret)
    layer = TileLayer(
        tile_server.url + "/{z}/{x}/{y}.png?apikey={apikey}", api_key_env="MAPSTREAM_TEST_KEY"
    )
    vp = Viewport.from_lonlat((0, 0, 30, 30), width=300)
    broken = layer.plan(vp).tiles[0]
    tile_server.failing.add(tuple(broken))
    mosaic = await layer.fetch(vp, fetcher)
    assert all(f"apikey={secret}" in p for p in tile_server.requests)
    assert secret not in repr(layer) and secret not in str(vars(layer))
    assert mosaic.errors and secret not in repr(mosaic.errors) and secret not in str(mosaic)
    assert all(secret not in (e.url or "") for e in mosaic.errors)
    monkeypatch.delenv("MAPSTREAM_TEST_KEY")
    with pytest.raises(BadInputError, match="MAPSTREAM_TEST_KEY"):
        layer.plan(vp)


def test_provider_and_bad_input():
    osm = TileLayer.from_provider("OpenStreetMap.Mapnik")
    assert "OpenStreetMap" in osm.attribution and osm.max_zoom == 19
    tf = TileLayer.from_provider("Thunderforest.OpenCycleMap")
    assert tf.api_key_env == "MAPSTREAM_THUNDERFOREST_APIKEY" and "{apikey}" in tf.url_template
    topo = TileLayer.from_provider("OpenTopoMap", max_zoom=12)
    assert topo.max_zoom == 12 and topo.tile_url(Tile(2, 1, 1)).startswith("https://c.tile")
    with pytest.raises(BadInputError, match="unknown tile provider"):
        TileLayer.from_provider("Nope.Nothing")
    with pytest.raises(BadInputError, match=r"\{z\}"):
        TileLayer("http://t.test/{x}/{y}.png")
    with pytest.raises(BadInputError, match="unknown placeholder"):
        TileLayer("http://t.test/{z}/{x}/{y}/{foo}.png")
    layer = TileLayer("http://t.test/{z}/{x}/{y}.png", min_zoom=2, max_zoom=10)
    with pytest.raises(BadInputError, match="size must be positive"):
        layer.plan(Viewport((0.0, 1e5), (0.0, 1e5), 0, 100))
    with pytest.raises(BadInputError, match="size must be positive"):
        layer.plan(Viewport((0.0, 1e5), (0.0, 1e5), 100, -5))
    with pytest.raises(BadInputError, match="outside"):
        layer.tiles_for_bbox((0, 0, 1, 1), 11)
    with pytest.raises(BadInputError, match="outside"):
        layer.tile_url(Tile(1, 0, 0))
    with pytest.raises(BadInputError, match="outside"):
        layer.plan(Viewport.from_lonlat((0, 0, 1, 1)), zoom=12)


def test_plan_is_pure_and_clamps_zoom():
    layer = TileLayer("http://t.test/{z}/{x}/{y}.png", min_zoom=3, max_zoom=6)
    vp = Viewport.from_lonlat((-180, -85, 180, 85), width=256)  # wants zoom 0
    plan = layer.plan(vp)
    assert plan.zoom == 3 and len(plan.tiles) == 64 and plan == layer.plan(vp)
    assert plan.urls[0] == "http://t.test/3/0/0.png"
    street = Viewport.from_lonlat((2.35, 48.85, 2.36, 48.86), width=800)
    assert layer.plan(street).zoom == 6
    # a view taller than the world is clamped at the poles
    tall = Viewport.create((-1e6, 1e6), (-3e7, 3e7), 100, 1500)
    plan = layer.plan(tall)
    assert {t.y for t in plan.tiles} == set(range(2**plan.zoom))


def test_tiles_for_bbox_matches_known_tiles():
    layer = TileLayer("http://t.test/{z}/{x}/{y}.png")
    # Paris at zoom 10 is tile 518/352 (the well-known OSM tile)
    assert layer.tiles_for_bbox((2.34, 48.85, 2.35, 48.86), 10) == [Tile(10, 518, 352)]
    across = layer.tiles_for_bbox((179.5, -1, -179.5, 1), 3)
    assert [t.key for t in across] == ["3/7/3", "3/0/3", "3/7/4", "3/0/4"]
    assert [layer.tile_url(t) for t in across][:2] == [
        "http://t.test/3/7/3.png",
        "http://t.test/3/0/3.png",
    ]
    assert len(layer.tiles_for_bbox((-180, -85, 180, 85), 4)) == 256
    assert math.isclose(tile_bounds(Tile(10, 518, 352))[0], -ORIGIN_SHIFT + 518 * WORLD_SIZE / 1024)


async def _log_messages_of_keyed_fetch(tile_server, fetcher, monkeypatch, caplog, secret):
    """Log records (logger name, message) of a keyed fetch with a failing and a missing tile."""
    monkeypatch.setenv("MAPSTREAM_TEST_KEY", secret)
    layer = TileLayer(
        tile_server.url + "/{z}/{x}/{y}.png?apikey={apikey}", api_key_env="MAPSTREAM_TEST_KEY"
    )
    vp = Viewport.from_lonlat((0, 0, 30, 30), width=300)
    tile_server.failing.add(tuple(layer.plan(vp).tiles[0]))
    tile_server.missing.add(tuple(layer.plan(vp).tiles[-1]))
    with caplog.at_level("DEBUG"):
        await layer.fetch(vp, fetcher)
    return [(r.name, r.getMessage()) for r in caplog.records]


async def test_api_key_never_reaches_httpx_logs(tile_server, fetcher, monkeypatch, caplog):
    logged = await _log_messages_of_keyed_fetch(tile_server, fetcher, monkeypatch, caplog, "k3y-2")
    assert logged and not any("k3y-2" in m for _, m in logged)


async def test_decoding_runs_in_worker_threads(tile_server, fetcher, monkeypatch):
    import threading

    from mapstream.layers import imaging

    threads = []
    real = imaging.decode_rgba

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(imaging, "decode_rgba", spy)
    layer = TileLayer(tile_server.url + "/{z}/{x}/{y}.png")
    mosaic = await layer.fetch(Viewport.from_lonlat((0, 0, 30, 30), width=300), fetcher)
    assert len(threads) == len(mosaic.tiles_used) > 0
    assert threading.main_thread() not in threads


async def test_view_wider_than_the_world_repeats_tiles_without_refetching(tile_server, fetcher):
    layer = TileLayer(tile_server.url + "/{z}/{x}/{y}.png", max_zoom=1)
    vp = Viewport.create((-1.5 * WORLD_SIZE, 1.5 * WORLD_SIZE), (-4e7, 4e7), 900, 600)
    mosaic = (await layer.fetch(vp, fetcher)).image
    check_mosaic_shape(mosaic, vp)
    assert mosaic.y.values[0] < ORIGIN_SHIFT and mosaic.y.values[-1] > -ORIGIN_SHIFT
    z = mosaic.attrs["zoom"]
    assert len(tile_server.requests) == 4**z  # each distinct tile fetched once
    assert len(layer.plan(vp).tiles) > 4**z
    np.testing.assert_array_equal(mosaic.values, expected_pixels(mosaic))
