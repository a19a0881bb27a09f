"""COGLayer over a loopback range server: pixels equal rasterio's own read and warp of the same
file (nearest), only the bytes a view needs go on the wire, a warm repeat asks nothing, and
servers that get ranges wrong (ignore them, 416, a wrong Content-Range, a file that changes
mid-read) give correct pixels or a clear error."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from mapstream.layers.errors import RangeError, SourceChangedError
from mapstream.layers.http import Fetcher
from mapstream.layers.raster.store import RangeStore
from mapstream.layers.sources.cog import COGLayer
from mapstream.layers.types import Mosaic
from mapstream.layers.viewport import Viewport
from tests.support.cogs import assert_same_pixels, level_for, reference, terrain, write_cog
from tests.support.rangeserver import RangeServer

X0, Y0 = 1_000_000.0, 6_000_000.0  # north-west corner of the 3857 test rasters
RES = 100.0


@pytest.fixture(scope="module")
def cogs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cogs")
    dem = terrain(1536, 1536, 1)
    dem[100:300, 100:300] = -9999.0  # a nodata hole
    files = {
        "dem.tif": write_cog(d / "dem.tif", dem, crs="EPSG:3857",
                          transform=from_origin(X0, Y0, RES, RES), nodata=-9999.0),
        "dem2.tif": write_cog(d / "dem2.tif", dem + 1.0, crs="EPSG:3857",
                           transform=from_origin(X0, Y0, RES, RES), nodata=-9999.0),
    }
    # Two adjacent halves of one raster, and the whole for reference.
    whole = terrain(512, 1024, 2)
    t = from_origin(X0, Y0, RES, RES)
    files["whole.tif"] = write_cog(d / "whole.tif", whole, crs="EPSG:3857", transform=t, nodata=None)
    files["west.tif"] = write_cog(d / "west.tif", whole[:, :512].copy(), crs="EPSG:3857",
                               transform=t, nodata=None)
    files["east.tif"] = write_cog(d / "east.tif", whole[:, 512:].copy(), crs="EPSG:3857",
                               transform=from_origin(X0 + 512 * RES, Y0, RES, RES), nodata=None)
    # UTM zone 32N (around 9 E, 47 N), 16-bit integers with a nodata value.
    utm = (terrain(1024, 1024, 3)).astype("int16")
    utm[:64, :] = -32768
    files["utm.tif"] = write_cog(d / "utm.tif", utm, crs="EPSG:32632",
                              transform=from_origin(450_000, 5_250_000, 150, 150), nodata=-32768)
    return {"dir": d, "files": files}


@pytest.fixture
def server(cogs):
    srv = RangeServer(cogs["files"]).start()
    yield srv
    srv.stop()


@pytest.fixture
async def fetcher():
    f = Fetcher(cache_dir=None, retry_attempts=1)
    yield f
    await f.aclose()


def view(cx: float, cy: float, res: float, w: int = 200, h: int = 150) -> Viewport:
    return Viewport.create((cx - w * res / 2, cx + w * res / 2), (cy - h * res / 2, cy + h * res / 2), w, h)


async def test_full_resolution_3857_equals_rasterio(cogs, server, fetcher):
    vp = view(X0 + 30_000, Y0 - 25_000, 100.0)  # 1:1 with the file, the nodata hole inside
    assert level_for(cogs["dir"] / "dem.tif", vp.resolution) == 0
    da = await COGLayer(f"{server.url}/dem.tif").fetch(vp, fetcher)
    assert da.dims == ("band", "y", "x") and da.attrs["crs"] == "EPSG:3857"
    assert list(da.band.values) == [1] and da.dtype == np.float32
    expected = reference(cogs["dir"] / "dem.tif", vp, 0)
    assert_same_pixels(da.values, expected)
    assert np.isnan(da.values).any()  # the hole is NaN
    # pixel centres of the viewport
    assert da.x.values[0] == pytest.approx(vp.x_range[0] + 50.0)
    assert da.y.values[0] == pytest.approx(vp.y_range[1] - 50.0)


@pytest.mark.parametrize("res", [250.0, 420.0, 900.0])
async def test_overview_equals_rasterio_at_the_same_level(cogs, server, fetcher, res):
    vp = view(X0 + 100_000, Y0 - 100_000, res)
    level = level_for(cogs["dir"] / "dem.tif", res)
    assert level > 0
    da = await COGLayer(f"{server.url}/dem.tif").fetch(vp, fetcher)
    assert_same_pixels(da.values, reference(cogs["dir"] / "dem.tif", vp, level))


async def test_utm_cog_is_warped_like_rasterio(cogs, server, fetcher):
    from mapstream.layers.projection import lonlat_to_mercator

    cx, cy = lonlat_to_mercator(8.9, 47.1)
    for res in (150.0, 600.0):
        vp = view(cx, cy, res, 240, 180)
        level = level_for(cogs["dir"] / "utm.tif", res)
        da = await COGLayer(f"{server.url}/utm.tif").fetch(vp, fetcher)
        assert da.dtype == np.float32  # int16 read as float32, nodata -> NaN
        assert_same_pixels(da.values, reference(cogs["dir"] / "utm.tif", vp, level))


async def test_mosaic_of_adjacent_cogs_equals_the_whole(cogs, server, fetcher):
    seam = X0 + 512 * RES
    vp = view(seam, Y0 - 25_000, 100.0, 300, 200)  # straddles the seam
    layer = COGLayer([f"{server.url}/west.tif", f"{server.url}/east.tif"])
    da = await layer.fetch(vp, fetcher)
    assert_same_pixels(da.values, reference(cogs["dir"] / "whole.tif", vp, 0))


async def test_first_valid_fills_holes_from_the_next_file(cogs, server, fetcher):
    vp = view(X0 + 20_000, Y0 - 20_000, 100.0)  # over the nodata hole of dem.tif
    da = await COGLayer([f"{server.url}/dem.tif", f"{server.url}/dem2.tif"]).fetch(vp, fetcher)
    first = reference(cogs["dir"] / "dem.tif", vp, 0)
    second = reference(cogs["dir"] / "dem2.tif", vp, 0)
    expected = np.where(np.isnan(first), second, first)
    assert np.isnan(first).any()
    assert_same_pixels(da.values, expected)


async def test_outside_every_file_is_all_nan(server, fetcher):
    da = await COGLayer(f"{server.url}/dem.tif").fetch(view(-5_000_000, 0, 1000.0), fetcher)
    assert da.shape == (1, 150, 200) and np.isnan(da.values).all()


async def test_small_view_reads_a_small_part_and_a_warm_repeat_asks_nothing(cogs, server, fetcher):
    size = len(cogs["files"]["dem.tif"])
    layer = COGLayer(f"{server.url}/dem.tif")
    vp = view(X0 + 120_000, Y0 - 120_000, 100.0, 128, 96)
    await layer.fetch(vp, fetcher)
    snap = fetcher.metrics.snapshot()
    assert 0 < snap["bytes"] < size / 8, (snap["bytes"], size)
    assert all(r is not None for _, r in server.requests)  # every request was ranged
    before = len(server.requests)
    again = await layer.fetch(vp, fetcher)
    assert len(server.requests) == before  # header and tiles from memory
    assert not np.isnan(again.values).all()


async def test_nearby_tiles_are_merged_into_few_requests(server, fetcher):
    layer = COGLayer(f"{server.url}/dem.tif")
    vp = view(X0 + 100_000, Y0 - 60_000, 100.0, 1000, 700)  # about 5 x 4 internal tiles
    await layer.fetch(vp, fetcher)
    tile_requests = len(server.ranged()) - 1  # the header read first
    assert 1 <= tile_requests < 20 / 2, server.ranged()


async def test_load_yields_rgba_mosaics_drawn_with_the_colormap(cogs, server, fetcher):
    layer = COGLayer(f"{server.url}/dem.tif", rescale=(0, 2000), colormap="terrain", name="dem")
    vp = view(X0 + 100_000, Y0 - 60_000, 100.0, 1000, 700)
    frames = [m async for m in layer.load(vp, fetcher, frame_every=4)]
    assert all(isinstance(m, Mosaic) for m in frames)
    assert frames[-1].complete and not any(m.complete for m in frames[:-1]) and len(frames) > 1
    final = frames[-1]
    assert final.image.dims == ("y", "x", "band") and final.image.dtype == np.uint8
    assert final.image.shape == (700, 1000, 4) and final.progress.failed == 0
    assert final.progress.done == final.progress.total > 1
    values = (await layer.fetch(vp, fetcher)).values[0]
    alpha = final.image.values[..., 3]
    assert np.array_equal(alpha == 0, np.isnan(values))
    import matplotlib

    expected = matplotlib.colormaps["terrain"](np.clip(values / 2000.0, 0, 1), bytes=True)
    ok = ~np.isnan(values)
    assert np.array_equal(final.image.values[ok][:, :3], expected[ok][:, :3])


async def test_query_answers_the_values_at_a_point(cogs, server, fetcher):
    from mapstream.layers.projection import mercator_to_lonlat

    lon, lat = mercator_to_lonlat(X0 + 1234 * RES + 50, Y0 - 777 * RES - 50)
    rows = await COGLayer(f"{server.url}/dem.tif").query(lon, lat, fetcher)
    with rasterio.open(cogs["dir"] / "dem.tif") as src:
        expected = float(src.read(1)[777, 1234])
    assert rows == [{"source": f"{server.url}/dem.tif", "band_1": pytest.approx(expected)}]
    assert await COGLayer(f"{server.url}/dem.tif").query(-120.0, 10.0, fetcher) == []


async def test_a_server_ignoring_range_gives_the_same_pixels(cogs, fetcher):
    srv = RangeServer(cogs["files"], mode="ignore").start()
    try:
        vp = view(X0 + 40_000, Y0 - 30_000, 100.0)
        da = await COGLayer(f"{srv.url}/dem.tif").fetch(vp, fetcher)
        assert_same_pixels(da.values, reference(cogs["dir"] / "dem.tif", vp, 0))
        assert len(srv.requests) == 1  # the whole body once, every range cut from it
    finally:
        srv.stop()


@pytest.mark.parametrize("mode, words", [("416", "416 Range Not Satisfiable"), ("wrong", "answered bytes 1-")])
async def test_a_server_that_gets_ranges_wrong_is_a_clear_error(cogs, fetcher, mode, words):
    srv = RangeServer(cogs["files"], mode=mode).start()
    try:
        with pytest.raises(RangeError) as info:
            await COGLayer(f"{srv.url}/dem.tif").fetch(view(X0 + 40_000, Y0 - 30_000, 100.0), fetcher)
        assert words in str(info.value) and "/dem.tif" in str(info.value)
        # the app's load reports it and draws nothing wrong
        frames = [m async for m in COGLayer(f"{srv.url}/dem.tif").load(view(X0 + 40_000, Y0 - 30_000, 100.0), fetcher)]
        assert frames[-1].errors and not frames[-1].image.values[..., 3].any()
    finally:
        srv.stop()


async def test_a_file_changing_mid_read_is_detected(cogs, server, fetcher):
    store = RangeStore(f"{server.url}/dem.tif", fetcher)
    head = await store.get_range_async("dem.tif", start=0, length=1000)
    assert head == cogs["files"]["dem.tif"][:1000]
    server.files["dem.tif"] = cogs["files"]["dem2.tif"]  # replaced on the server
    with pytest.raises(SourceChangedError, match="changed while it was read"):
        await store.get_range_async("dem.tif", start=5000, length=1000)


async def test_the_etag_is_compared_when_the_server_ignores_if_match(cogs, fetcher):
    srv = RangeServer(cogs["files"]).start()
    try:
        store = RangeStore(f"{srv.url}/dem.tif", fetcher)
        await store.get_range_async("dem.tif", start=0, length=100)
        store.pin = store.pin._replace(etag='W/"old"')  # weak: not sent as If-Match, compared
        with pytest.raises(SourceChangedError, match="ETag"):
            await store.get_range_async("dem.tif", start=200, length=100)
    finally:
        srv.stop()


async def test_a_layer_reads_a_changed_file_again_from_its_header(cogs, server, fetcher):
    layer = COGLayer(f"{server.url}/dem.tif")
    await layer.fetch(view(X0 + 40_000, Y0 - 30_000, 100.0), fetcher)  # header cached
    server.files["dem.tif"] = cogs["files"]["dem2.tif"]
    vp = view(X0 + 150_000, Y0 - 150_000, 100.0)  # tiles not read before
    da = await layer.fetch(vp, fetcher)
    assert_same_pixels(da.values, reference(cogs["dir"] / "dem2.tif", vp, 0))  # never a mix


async def test_concurrent_views_share_one_header_read(server, fetcher):
    layer = COGLayer(f"{server.url}/dem.tif")
    views = [view(X0 + 30_000 * i, Y0 - 30_000, 100.0) for i in range(1, 4)]
    results = await asyncio.gather(*(layer.fetch(v, fetcher) for v in views))
    assert all(not np.isnan(r.values).all() for r in results)
    headers = [r for r in server.ranged() if r[1].startswith("bytes=0-")]
    assert len(headers) == 1, headers


async def test_the_app_draws_the_frames_unchanged(server, fetcher):
    from mapstream.app.frames import iter_frames

    layer = COGLayer(f"{server.url}/dem.tif", rescale=(0, 2000), colormap="viridis")
    vp = view(X0 + 100_000, Y0 - 60_000, 100.0, 600, 400)
    frames = [f async for f in iter_frames(layer.load(vp, fetcher, frame_every=2), vp)]
    assert frames[-1].complete and frames[-1].received and not frames[-1].errors
    image = frames[-1].image
    assert image.rgba.shape == (400, 600, 4) and image.opaque_pixels == 400 * 600
    assert image.bounds == pytest.approx(vp.bounds)


async def test_an_abandoned_load_stops_its_reads(cogs):
    import contextlib

    from tests.support.waiting import async_wait_for

    srv = RangeServer(cogs["files"], latency=0.5).start()
    fetcher = Fetcher(cache_dir=None, retry_attempts=1, per_host_limit=1)  # one request at a time
    try:
        layer = COGLayer(f"{srv.url}/dem.tif")
        vp = view(X0 + 100_000, Y0 - 100_000, 100.0, 1500, 1500)  # 6 rows of tiles: 6 requests
        loads = layer.load(vp, fetcher, frame_every=1)
        async with contextlib.aclosing(loads):
            task = asyncio.ensure_future(loads.__anext__())
            assert await async_wait_for(lambda: len(srv.ranged()) >= 2, 30)  # header, a first row
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await task
        assert await async_wait_for(lambda: fetcher.metrics.snapshot()["in_flight"] == 0, 10)
        asked = len(srv.ranged())
        assert asked < 1 + 6, srv.ranged()  # the rows after the cancellation were never asked
    finally:
        await fetcher.aclose()
        srv.stop()


async def test_another_fetcher_on_the_same_disk_cache_reads_the_view_from_disk(cogs, tmp_path):
    srv = RangeServer(cogs["files"], max_age=600).start()
    try:
        layer = COGLayer(f"{srv.url}/dem.tif")
        vp = view(X0 + 30_000, Y0 - 25_000, 100.0)
        async with Fetcher(cache_dir=tmp_path / "http", retry_attempts=1) as first:
            cold = await layer.fetch(vp, first)
        asked = len(srv.requests)
        async with Fetcher(cache_dir=tmp_path / "http", retry_attempts=1) as second:  # a new process
            warm = await layer.fetch(vp, second)
            assert second.metrics.snapshot()["requests"] == 0
        assert len(srv.requests) == asked
        assert_same_pixels(warm.values, cold.values)
        assert_same_pixels(warm.values, reference(cogs["dir"] / "dem.tif", vp, 0))
    finally:
        srv.stop()


async def test_stale_ranges_on_disk_revalidate_and_a_changed_file_is_never_mixed(cogs, tmp_path):
    srv = RangeServer(cogs["files"]).start()  # ETag, no max-age: every use revalidates
    try:
        layer = COGLayer(f"{srv.url}/dem.tif")
        vp = view(X0 + 30_000, Y0 - 25_000, 100.0)
        async with Fetcher(cache_dir=tmp_path / "http", retry_attempts=1) as f:
            await layer.fetch(vp, f)
        async with Fetcher(cache_dir=tmp_path / "http", retry_attempts=1) as f:
            await layer.fetch(vp, f)
            snap = f.metrics.snapshot()
            assert snap["revalidations"] == snap["requests"] > 0 and snap["bytes"] == 0  # all 304
        srv.files["dem.tif"] = cogs["files"]["dem2.tif"]
        async with Fetcher(cache_dir=tmp_path / "http", retry_attempts=1) as f:
            changed = await layer.fetch(vp, f)
        assert_same_pixels(changed.values, reference(cogs["dir"] / "dem2.tif", vp, 0))
    finally:
        srv.stop()


async def test_a_changed_file_behind_fresh_disk_entries_is_read_again_from_the_server(cogs, tmp_path):
    srv = RangeServer(cogs["files"], max_age=600).start()  # the header stays fresh on disk
    try:
        layer = COGLayer(f"{srv.url}/dem.tif")
        async with Fetcher(cache_dir=tmp_path / "http", retry_attempts=1) as f:
            await layer.fetch(view(X0 + 30_000, Y0 - 25_000, 100.0), f)
        srv.files["dem.tif"] = cogs["files"]["dem2.tif"]
        vp = view(X0 + 120_000, Y0 - 120_000, 100.0)  # tiles never read: asked with If-Match
        async with Fetcher(cache_dir=tmp_path / "http", retry_attempts=1) as f:
            da = await layer.fetch(vp, f)
        assert_same_pixels(da.values, reference(cogs["dir"] / "dem2.tif", vp, 0))
    finally:
        srv.stop()
