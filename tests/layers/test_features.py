"""FeatureLayer against a real pygeoapi on loopback (tests/support/ogc.py)."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest
import shapely

from mapstream.layers.errors import ParseError, StatusError
from mapstream.layers.sources.features import FeatureLayer
from mapstream.layers.http import Fetcher
from mapstream.layers.projection import lonlat_to_mercator
from mapstream.layers.viewport import Viewport
from tests.support.ogc import N_POINTS, PAGE_LIMIT, make_points, ogc_data, ogc_server, make_ogc_server  # noqa: F401
from tests.support.waiting import async_wait_for

ALL_IDS = set(range(1, N_POINTS + 1))


@pytest.fixture
async def fetcher(tmp_path):
    async with Fetcher(cache_dir=tmp_path, backoff_base=0.05) as f:
        yield f


@pytest.fixture(scope="module")
def points():
    return make_points()


def _ids(frame) -> list[int]:
    return [int(i) for i in frame["id"]] if "id" in frame.columns else []


@pytest.mark.parametrize(
    "kwargs",
    # the default walk stays in the fast lane; the other two take ~3 s each over pygeoapi
    [dict(concurrent=True), pytest.param(dict(concurrent=False), marks=pytest.mark.slow),
     pytest.param(dict(paging="split", split=3), marks=pytest.mark.slow)],
    ids=["offset-concurrent", "sequential-next", "split-dedup"],
)
async def test_every_feature_exactly_once(ogc_server, fetcher, kwargs):
    layer = FeatureLayer(ogc_server.url, "points", limit=PAGE_LIMIT, **kwargs)
    world = Viewport.from_lonlat((-180, -85, 180, 85), 512)
    pages = [p async for p in layer.load(world, fetcher)]
    ids = [i for p in pages for i in _ids(p.frame)]
    assert len(ids) == len(set(ids)) == N_POINTS
    assert set(ids) == ALL_IDS
    assert [p.progress.complete for p in pages] == [False] * (len(pages) - 1) + [True]
    assert pages[-1].progress.features == N_POINTS and not pages[-1].progress.truncated
    assert all(not p.errors for p in pages)
    if kwargs.get("paging") == "split":
        # 1 whole-box page + 9 sub-boxes walked separately: more, smaller requests than paging
        # the box, and the whole-box page's features reappear in sub-boxes: de-dup did the rest
        assert pages[-1].progress.done > N_POINTS // PAGE_LIMIT + 1
        assert any(0 < len(p.frame) < PAGE_LIMIT for p in pages[1:-1])
    else:
        # a server may end with an empty page after a next link (pygeoapi does)
        assert pages[-1].progress.done in (N_POINTS // PAGE_LIMIT, N_POINTS // PAGE_LIMIT + 1)
        assert pages[-1].progress.matched == N_POINTS


@pytest.mark.slow  # more than a few seconds: the fast lane (-m "not slow") skips it
async def test_pages_stream_typed_mercator_frames(ogc_server, fetcher, points):
    layer = FeatureLayer(ogc_server.url, "points", limit=PAGE_LIMIT)
    frame = (await layer.fetch(None, fetcher)).frame
    assert str(frame.crs) == "EPSG:3857" and frame["valid"].all()
    assert pd.api.types.is_integer_dtype(frame["count"])
    assert pd.api.types.is_float_dtype(frame["value"])
    assert pd.api.types.is_bool_dtype(frame["flag"])
    assert pd.api.types.is_datetime64_any_dtype(frame["when"])  # queryables say date-time
    got = frame.set_index(frame["id"].astype(int)).sort_index()
    want = points.set_index("id").sort_index()
    assert (got["count"].to_numpy() == want["count"].to_numpy()).all()
    x, y = lonlat_to_mercator(*want.geometry.iloc[0].coords[0])
    assert abs(got.geometry.iloc[0].x - x) < 1e-3 and abs(got.geometry.iloc[0].y - y) < 1e-3


async def test_bbox_narrows_like_the_server_data(ogc_server, fetcher, points):
    box = (-10.0, 35.0, 30.0, 60.0)
    layer = FeatureLayer(ogc_server.url, "points", limit=PAGE_LIMIT)
    frame = (await layer.fetch(Viewport.from_lonlat(box, 400), fetcher)).frame
    inside = points[points.intersects(shapely.box(*box))]
    assert 0 < len(frame) < N_POINTS
    assert set(_ids(frame)) == set(inside["id"].tolist())


async def test_bbox_on_polygons_and_query(ogc_server, fetcher):
    layer = FeatureLayer(ogc_server.url, "countries", limit=20)
    europe = (await layer.fetch(Viewport.from_lonlat((0, 44, 10, 50), 400), fetcher)).frame
    assert "France" in set(europe["name"]) and "Brazil" not in set(europe["name"])
    at_paris = await layer.query(2.35, 48.85, fetcher, radius_m=1000)
    assert [row["name"] for row in at_paris] == ["France"]
    assert "geometry" not in at_paris[0]  # rows of properties
    every = (await layer.fetch(None, fetcher)).frame
    assert len(every) == 177 and every["id"].is_unique  # Natural Earth lowres countries
    assert set(every.geometry.geom_type) == {"Polygon", "MultiPolygon"}  # mixed types are fine


async def test_datetime_narrows(ogc_server, fetcher, points):
    interval = "2024-03-01T00:00:00Z/2024-03-31T00:00:00Z"
    layer = FeatureLayer(ogc_server.url, "points", limit=PAGE_LIMIT, datetime=interval)
    frame = (await layer.fetch(None, fetcher)).frame
    lo, hi = pd.Timestamp("2024-03-01", tz="UTC"), pd.Timestamp("2024-03-31", tz="UTC")
    want = points[(points["when"] >= lo) & (points["when"] <= hi)]
    assert 0 < len(frame) < N_POINTS
    assert set(_ids(frame)) == set(want["id"].tolist())
    assert frame["when"].between(lo, hi).all()


@pytest.mark.parametrize("filter_lang", [None, "cql2-text"])
async def test_cql2_text_filter_and_properties(ogc_server, fetcher, points, filter_lang):
    # pygeoapi declares no Part 3 (the probe finds it filters) and refuses filter-lang=cql2-text
    layer = FeatureLayer(
        ogc_server.url, "points", limit=PAGE_LIMIT, filter_lang=filter_lang,
        filter="count < 100 AND kind = 'alpha'", properties=["count", "kind"],
    )
    frame = (await layer.fetch(None, fetcher)).frame
    want = points[(points["count"] < 100) & (points["kind"] == "alpha")]
    assert 0 < len(frame) < N_POINTS
    assert set(_ids(frame)) == set(want["id"].tolist())
    assert set(frame.columns) == {"id", "count", "kind", "valid", "geometry"}


@pytest.mark.slow  # more than a few seconds: the fast lane (-m "not slow") skips it
async def test_a_503_on_one_page_is_retried(make_ogc_server, fetcher):
    server = make_ogc_server(faults={"offset=1000": ["503"]})
    layer = FeatureLayer(server.url, "points", limit=PAGE_LIMIT)
    result = await layer.fetch(None, fetcher)
    frame = result.frame
    assert len(frame) == N_POINTS and frame["id"].is_unique and not result.errors
    assert fetcher.metrics.snapshot()["retries"] >= 1


@pytest.mark.parametrize("concurrent", [pytest.param(True, marks=pytest.mark.slow), False])
async def test_malformed_page_is_reported_and_earlier_pages_stay(make_ogc_server, fetcher, concurrent):
    server = make_ogc_server(faults={"offset=1000": ["malformed"]})
    layer = FeatureLayer(server.url, "points", limit=PAGE_LIMIT, concurrent=concurrent)
    pages = [p async for p in layer.load(None, fetcher)]
    errors = [e for p in pages for e in p.errors]
    assert len(errors) == 1 and isinstance(errors[0], ParseError)
    assert "offset=1000" in str(errors[0]) and "offset=1000" in errors[0].url
    loaded = [i for p in pages for i in _ids(p.frame)]
    assert set(range(1, 1001)) <= set(loaded)  # the pages before the bad one survive
    assert pages[-1].progress.complete and pages[-1].progress.failed == 1
    if concurrent:  # the other pages load too
        assert len(loaded) == N_POINTS - PAGE_LIMIT


@pytest.mark.parametrize("concurrent", [True, False])
async def test_cap_truncates_and_says_so(ogc_server, fetcher, concurrent):
    layer = FeatureLayer(ogc_server.url, "points", limit=PAGE_LIMIT, max_features=1234, concurrent=concurrent)
    result = await layer.fetch(None, fetcher)
    frame = result.frame
    assert len(frame) == 1234 and frame["id"].is_unique
    assert result.truncated is True and result.progress.matched == N_POINTS
    # the walk stopped at the cap: 3 pages of 500, not 40
    assert result.progress.done == 3


async def test_unknown_collection_is_a_status_error(ogc_server, fetcher):
    with pytest.raises(StatusError) as info:
        await FeatureLayer(ogc_server.url, "nope").fetch(None, fetcher)
    assert info.value.status == 404


@pytest.mark.slow  # more than a few seconds: the fast lane (-m "not slow") skips it
async def test_cancel_mid_walk_leaves_nothing_in_flight(make_ogc_server, tmp_path):
    server = make_ogc_server(latency=0.4)
    layer = FeatureLayer(server.url, "points", limit=PAGE_LIMIT)
    async with Fetcher(cache_dir=tmp_path, per_host_limit=8) as fetcher:
        first = asyncio.Event()

        async def consume():
            async for _page in layer.load(None, fetcher):
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 30)
        # let the concurrent page requests get going
        busy = await async_wait_for(lambda: fetcher.metrics.snapshot()["in_flight"] >= 4, 2)
        assert busy, fetcher.metrics.snapshot()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fetcher.metrics.snapshot()["in_flight"] == 0
        requested = fetcher.metrics.snapshot()["requests"]
        server_seen = server.stats()["by_path"]["/collections/points/items"]
        await asyncio.sleep(1.0)  # > 2x the server latency: nothing new may start
        assert fetcher.metrics.snapshot()["in_flight"] == 0
        assert fetcher.metrics.snapshot()["requests"] == requested
        assert server.stats()["by_path"]["/collections/points/items"] == server_seen
        assert server_seen < N_POINTS // PAGE_LIMIT  # the walk really was cut short


async def test_antimeridian_view_and_part2_crs(ogc_server, fetcher, points):
    layer = FeatureLayer(ogc_server.url, "points", limit=PAGE_LIMIT)
    pages = [p async for p in layer.load(Viewport.from_lonlat((170, -10, -170, 10), 400), fetcher)]
    ids = [i for p in pages for i in _ids(p.frame)]
    lon, lat = points.geometry.x, points.geometry.y
    want = points[((lon >= 170) | (lon <= -170)) & (lat >= -10) & (lat <= 10)]
    assert len(ids) == len(set(ids)) and set(ids) == set(want["id"].tolist()) and ids
    # the server offers Part 2 and EPSG:3857: we ask it to reproject for us
    assert all("crs=http" in p.url for p in pages if len(p.frame))
    europe = [p async for p in layer.load(Viewport.from_lonlat((-10, 35, 30, 60), 400), fetcher)]
    assert "bbox-crs=" in europe[0].url


@pytest.mark.slow  # more than a few seconds: the fast lane (-m "not slow") skips it
async def test_a_page_seen_before_is_not_parsed_again(ogc_server, fetcher, monkeypatch):
    """The same view again (the plot's real size arriving, another session) reuses parsed pages."""
    import mapstream.layers.sources.geojson as geojson

    calls: list[int] = []
    real = geojson.parse_off_loop

    async def counting(content, **kw):
        calls.append(len(content))
        return await real(content, **kw)

    monkeypatch.setattr(geojson, "parse_off_loop", counting)
    layer = FeatureLayer(ogc_server.url, "points", limit=PAGE_LIMIT)
    world = Viewport.from_lonlat((-180, -85, 180, 85), 512)
    first = [p async for p in layer.load(world, fetcher)]
    parsed = len(calls)
    assert parsed == first[-1].progress.done
    again = [p async for p in FeatureLayer(ogc_server.url, "points", limit=PAGE_LIMIT).load(world, fetcher)]
    assert len(calls) == parsed  # every page came from the memory of parsed pages
    ids = sorted(i for p in again for i in _ids(p.frame))
    assert ids == sorted(ALL_IDS)
    fetcher.memory.clear()
    [p async for p in layer.load(world, fetcher)]
    assert len(calls) == 2 * parsed  # without it, the bytes are parsed again


async def test_a_json_filter_pygeoapi_cannot_take_is_refused_or_filtered_here(ogc_server, fetcher, points):
    """pygeoapi parses CQL text on GET but no CQL2 JSON: a clear error, or the client filters."""
    from mapstream.layers.sources.ogcapi import CONF_FILTER, CapabilityError

    flt = {"op": "and", "args": [{"op": "<", "args": [{"property": "count"}, 100]},
                                 {"op": "=", "args": [{"property": "kind"}, "alpha"]}]}
    box = (-10.0, 35.0, 30.0, 60.0)
    with pytest.raises(CapabilityError) as info:
        await FeatureLayer(ogc_server.url, "points", filter=flt).fetch(Viewport.from_lonlat(box, 400), fetcher)
    assert CONF_FILTER in str(info.value) and ogc_server.url in str(info.value)
    layer = FeatureLayer(ogc_server.url, "points", limit=PAGE_LIMIT, filter=flt, client_filter=True)
    result = await layer.fetch(Viewport.from_lonlat(box, 400), fetcher)
    inside = points[points.intersects(shapely.box(*box))]
    want = inside[(inside["count"] < 100) & (inside["kind"] == "alpha")]
    assert len(want) and set(_ids(result.frame)) == set(want["id"].tolist())
    assert result.frame["id"].is_unique and result.progress.client_filtered


async def test_a_partly_failed_load_reads_by_column(make_ogc_server, fetcher):
    """Issue 14 item 3: frame["id"] on a load with a failed page (errors live in the result)."""
    import copy

    server = make_ogc_server(faults={"offset=1000": ["malformed"]})
    result = await FeatureLayer(server.url, "points", limit=PAGE_LIMIT, concurrent=False).fetch(None, fetcher)
    assert len(result.errors) == 1 and result.frame.attrs == {}
    ids = result.frame["id"]
    assert len(ids) >= 1000 and ids.is_unique
    assert copy.deepcopy(result).errors[0].url == result.errors[0].url
