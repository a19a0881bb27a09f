"""STACLayer over real STAC API servers on loopback (rustac's server, tests/support/stacserver.py):
a search across two catalogs paging by POST (one with ``merge`` and next-link headers), each item
once; GET paging; the datetime and collections filters; max_items; a failing catalog reported
while the other's items are kept; the mosaic of the items' COGs equal to rasterio's."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyproj import Transformer
from rasterio.transform import from_origin

from mapstream.demo.stacserver import StacServer
from mapstream.layers.catalog import LayerSpec
from mapstream.layers.errors import BadInputError, LayersError, StatusError
from mapstream.layers.http import Fetcher
from mapstream.layers.sources import layer_class
from mapstream.layers.sources.stac import STACLayer
from mapstream.layers.sources.stacapi import SearchRequest, next_request
from mapstream.layers.types import FeaturePage, Mosaic
from mapstream.layers.viewport import Viewport
from tests.support.cogs import assert_same_pixels, reference, terrain, write_cog
from tests.support.rangeserver import RangeServer
from tests.support.stacserver import make_items, stac_get, stac_pair, stac_servers  # noqa: F401

WORLD = (-180.0, -90.0, 180.0, 90.0)


@pytest.fixture
async def fetcher():
    f = Fetcher(cache_dir=None, retry_attempts=1)
    yield f
    await f.aclose()


def _delta(before: dict, after: dict, method: str) -> int:
    return after["by_method"].get(method, 0) - before["by_method"].get(method, 0)


def _ids(result) -> list[str]:
    return sorted(result.frame["id"])


# -- paging -----------------------------------------------------------------------------------


async def test_two_catalogs_paged_by_post_with_merge_give_each_item_once(stac_pair, fetcher):
    a, b = stac_pair
    before = [a.stats(), b.stats()]
    layer = STACLayer([a.url, b.url], collections=["dem", "utm"], asset="data", limit=4)
    result = await layer.search(WORLD, fetcher)
    after = [a.stats(), b.stats()]
    assert result.errors == ()
    expected = sorted([f"dem-{k:03d}" for k in range(40)] + [f"utm-{k:03d}" for k in range(10)])
    assert _ids(result) == expected  # dem 20-29 are in both catalogs: once
    assert not result.frame.duplicated(["collection", "id"]).any()
    # A pages dem (30 items) and utm (10) with token bodies merged into the first search: a
    # request without the merged query or the X-Stac-Page header would have been refused (400).
    pages_a = math.ceil(30 / 4) + math.ceil(10 / 4)
    pages_b = math.ceil(20 / 4) + 1  # B has no utm: one empty page
    assert _delta(before[0], after[0], "POST") == pages_a
    assert _delta(before[1], after[1], "POST") == pages_b
    assert result.progress.done == pages_a + pages_b
    assert result.progress.features == 50 and result.progress.complete
    row = result.frame.set_index("id").loc["dem-005"]
    assert row["href"] == "http://127.0.0.1:9/dem-005.tif" and row["collection"] == "dem"
    assert str(row["datetime"]) == "2024-01-06 00:00:00+00:00"
    assert result.frame.crs.to_string() == "OGC:CRS84"


async def test_merge_paging_sends_the_merged_body_and_the_links_headers():
    sent = SearchRequest("POST", "http://s/search", body={"bbox": [0, 0, 1, 1], "limit": 2})
    page = {"links": [{"rel": "next", "href": "http://s/search", "method": "POST", "merge": True,
                       "body": {"token": "t9"}, "headers": {"X-Stac-Page": "t9"}}]}
    nxt = next_request(page, sent)
    assert nxt.body == {"bbox": [0, 0, 1, 1], "limit": 2, "token": "t9"}
    assert dict(nxt.headers) == {"X-Stac-Page": "t9"}
    page["links"][0]["merge"] = False  # without merge the link's body replaces the search
    assert next_request(page, sent).body == {"token": "t9"}


async def test_get_only_catalog_is_paged_by_get_links(stac_get, fetcher):
    before = stac_get.stats()
    layer = STACLayer(stac_get.url, collections=["dem"], asset="data", limit=6)
    result = await layer.search((-20, 30, 30, 50), fetcher)
    after = stac_get.stats()
    assert result.errors == ()
    assert _ids(result) == [f"dem-{k:03d}" for k in range(25)]
    assert _delta(before, after, "POST") == 0
    assert _delta(before, after, "GET") == 1 + math.ceil(25 / 6)  # landing page + pages


async def test_catalogs_and_collections_are_searched_at_once(fetcher):
    # Each request takes 0.3 s at the server: walks one after another never overlap there.
    with stac_servers(StacServer(make_items("dem", 6) + make_items("utm", 6), latency=0.3)) as (srv,):
        layer = STACLayer(srv.url, collections=["dem", "utm"], asset="data", limit=2)
        result = await layer.search(WORLD, fetcher)
        assert len(result.frame) == 12
        assert srv.stats()["peak"] >= 2


# -- filters and the cap ----------------------------------------------------------------------


async def test_datetime_and_collections_filters(stac_pair, fetcher):
    a, _ = stac_pair
    layer = STACLayer(a.url, collections=["utm"], asset="data",
                      datetime="2024-01-03T00:00:00Z/2024-01-06T00:00:00Z")
    result = await layer.search(WORLD, fetcher)
    assert _ids(result) == ["utm-002", "utm-003", "utm-004", "utm-005"]
    layer.datetime = "2024-01-29T00:00:00Z/.."  # open end: dem 28, 29 only (utm ends at 9)
    layer.collections = ["dem", "utm"]
    assert _ids(await layer.search(WORLD, fetcher)) == ["dem-028", "dem-029"]


async def test_bbox_limits_the_items(stac_pair, fetcher):
    a, _ = stac_pair
    layer = STACLayer(a.url, collections=["dem"], asset="data")
    result = await layer.search((-9.5, 40.2, -7.5, 40.8), fetcher)  # over items 0, 1 and 2
    assert _ids(result) == ["dem-000", "dem-001", "dem-002"]


async def test_max_items_caps_the_search_and_says_truncated(stac_pair, fetcher):
    a, b = stac_pair
    layer = STACLayer([a.url, b.url], collections=["dem", "utm"], asset="data", limit=3, max_items=7)
    result = await layer.search(WORLD, fetcher)
    assert len(result.frame) == 7 and result.progress.truncated
    assert not result.frame.duplicated(["collection", "id"]).any()
    everything = STACLayer(b.url, collections=["dem"], asset="data", max_items=100)
    full = await everything.search(WORLD, fetcher)
    assert len(full.frame) == 20 and not full.progress.truncated


# -- failures ---------------------------------------------------------------------------------


async def test_a_failing_catalog_is_reported_and_the_others_items_kept(stac_pair, fetcher):
    a, _ = stac_pair
    with stac_servers(StacServer(make_items("dem", 5, start=100), faults={"/search": ["503"] * 50})) as (bad,):
        layer = STACLayer([a.url, bad.url], collections=["utm"], asset="data")
        result = await layer.search(WORLD, fetcher)
    assert _ids(result) == [f"utm-{k:03d}" for k in range(10)]
    assert len(result.errors) == 1 and result.progress.failed == 1
    err = result.errors[0]
    assert isinstance(err, StatusError) and err.status == 503
    assert bad.url in str(err) and "'utm'" in str(err)


async def test_a_search_by_post_is_retried_after_a_503():
    with stac_servers(StacServer(make_items("dem", 5), faults={"/search": ["503", "ok", "503"]})) as (srv,):
        async with Fetcher(cache_dir=None, retry_attempts=3, backoff_base=0.01) as fetcher:
            layer = STACLayer(srv.url, collections=["dem"], asset="data", limit=2)
            result = await layer.search(WORLD, fetcher)
            stats = srv.stats()
            retries = fetcher.metrics.snapshot().get("retries")
    assert result.errors == () and _ids(result) == [f"dem-{k:03d}" for k in range(5)]
    assert stats["by_method"]["POST"] == 3 + 2 and retries == 2  # 3 pages, 2 of them twice


async def test_a_server_that_is_not_a_stac_api_is_a_clear_error(fetcher):
    with stac_servers(StacServer(make_items("dem", 1), faults={"/": ["ok"]})) as (srv,):
        layer = STACLayer(srv.url + "/collections", collections=["dem"], asset="data")
        result = await layer.search(WORLD, fetcher)
    assert len(result.frame) == 0 and len(result.errors) == 1
    assert isinstance(result.errors[0], BadInputError)
    assert "not a STAC API with item search" in str(result.errors[0])


def test_bad_arguments_are_refused():
    with pytest.raises(BadInputError, match="collection"):
        STACLayer("http://s.test", collections=[], asset="data")
    with pytest.raises(BadInputError, match="asset"):
        STACLayer("http://s.test", collections=["c"], asset="")
    with pytest.raises(BadInputError, match="http"):
        STACLayer("ftp://s.test", collections=["c"], asset="data")


def test_catalog_kind_stac_builds_a_stac_layer():
    spec = LayerSpec(name="s", kind="stac", urls=["http://a.test/", "http://b.test/"],
                     collections=["c"], asset="visual", datetime="2024-01-01T00:00:00Z/..", max_items=5)
    layer = layer_class("stac").from_spec(spec, None)
    assert isinstance(layer, STACLayer)
    assert layer.urls == ["http://a.test/", "http://b.test/"] and layer.max_items == 5
    with pytest.raises(ValueError, match="collections"):
        LayerSpec(name="s", kind="stac", url="http://a.test/", asset="visual")
    with pytest.raises(ValueError, match="asset"):
        LayerSpec(name="s", kind="stac", url="http://a.test/", collections=["c"])


# -- the mosaic of the items' COGs ----------------------------------------------------------

X0, Y0, RES = 1_000_000.0, 6_000_000.0, 100.0


def _item(item_id: str, href: str, bounds_3857, day: str) -> dict:
    w, s, e, n = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform_bounds(*bounds_3857)
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": "dem",
        "bbox": [w, s, e, n],
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "properties": {"datetime": day}, "assets": {"data": {"href": href}}, "links": [],
    }


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    d = tmp_path_factory.mktemp("stac-cogs")
    whole = terrain(512, 1024, 2)
    t = from_origin(X0, Y0, RES, RES)
    files = {
        "whole.tif": write_cog(d / "whole.tif", whole, crs="EPSG:3857", transform=t, nodata=None),
        "west.tif": write_cog(d / "west.tif", whole[:, :512].copy(), crs="EPSG:3857", transform=t, nodata=None),
        "east.tif": write_cog(d / "east.tif", whole[:, 512:].copy(), crs="EPSG:3857",
                              transform=from_origin(X0 + 512 * RES, Y0, RES, RES), nodata=None),
        # the same place twice, a newer scene one higher: the newer one wins where both have data
        "old.tif": write_cog(d / "old.tif", whole, crs="EPSG:3857", transform=t, nodata=None),
        "new.tif": write_cog(d / "new.tif", whole + 1.0, crs="EPSG:3857", transform=t, nodata=None),
    }
    files_server = RangeServer(files).start()
    u = files_server.url
    half = 512 * RES
    items = [
        _item("west", f"{u}/west.tif", (X0, Y0 - half, X0 + half, Y0), "2024-01-01T00:00:00Z"),
        _item("east", f"{u}/east.tif", (X0 + half, Y0 - half, X0 + 2 * half, Y0), "2024-01-02T00:00:00Z"),
    ]
    stacked = [
        _item("old", f"{u}/old.tif", (X0, Y0 - half, X0 + 2 * half, Y0), "2023-01-01T00:00:00Z"),
        _item("new", f"{u}/new.tif", (X0, Y0 - half, X0 + 2 * half, Y0), "2023-06-01T00:00:00Z"),
    ]
    for it in stacked:
        it["collection"] = "stacked"
    try:
        with stac_servers(StacServer(items + stacked)) as (catalog,):
            yield {"dir": d, "catalog": catalog}
    finally:
        files_server.stop()


def _view(cx: float, cy: float, res: float, w: int = 300, h: int = 200) -> Viewport:
    return Viewport.create((cx - w * res / 2, cx + w * res / 2), (cy - h * res / 2, cy + h * res / 2), w, h)


async def test_fetch_mosaics_the_items_cogs_like_rasterio(scenes, fetcher):
    vp = _view(X0 + 512 * RES, Y0 - 25_000, 100.0)  # straddles the seam of west and east
    layer = STACLayer(scenes["catalog"].url, collections=["dem"], asset="data")
    da = await layer.fetch(vp, fetcher)
    assert da.dims == ("band", "y", "x")
    assert_same_pixels(da.values, reference(scenes["dir"] / "whole.tif", vp, 0))


async def test_the_newest_item_wins_where_items_overlap(scenes, fetcher):
    vp = _view(X0 + 300 * RES, Y0 - 20_000, 100.0)
    layer = STACLayer(scenes["catalog"].url, collections=["stacked"], asset="data")
    da = await layer.fetch(vp, fetcher)
    assert_same_pixels(da.values, reference(scenes["dir"] / "new.tif", vp, 0))
    layer.datetime = "../2023-03-01T00:00:00Z"  # the date filter leaves the old scene only
    da = await layer.fetch(vp, fetcher)
    assert_same_pixels(da.values, reference(scenes["dir"] / "old.tif", vp, 0))


async def test_load_yields_the_footprints_then_the_mosaic(scenes, fetcher):
    vp = _view(X0 + 512 * RES, Y0 - 25_000, 100.0)
    layer = STACLayer(scenes["catalog"].url, collections=["dem"], asset="data", colormap="terrain")
    results = [r async for r in layer.load(vp, fetcher)]
    page, mosaics = results[0], results[1:]
    assert isinstance(page, FeaturePage) and not page.complete
    assert sorted(page.frame["id"]) == ["east", "west"]
    assert page.frame.crs.to_string() == "EPSG:3857"
    west = page.frame.set_index("id").geometry["west"]
    assert west.bounds[0] == pytest.approx(X0, abs=1.0) and west.bounds[3] == pytest.approx(Y0, abs=1.0)
    assert mosaics and all(isinstance(m, Mosaic) for m in mosaics) and mosaics[-1].complete
    rgba = mosaics[-1].image.values
    assert rgba.shape[-1] == 4 and (rgba[..., 3] == 255).all()


async def test_a_view_without_items_is_a_clear_error_and_a_lone_footprint_page(scenes, fetcher):
    vp = Viewport.from_lonlat((100, -10, 110, 0), width=100, height=100)
    layer = STACLayer(scenes["catalog"].url, collections=["dem"], asset="data")
    with pytest.raises(LayersError, match="no item over the view"):
        await layer.fetch(vp, fetcher)
    results = [r async for r in layer.load(vp, fetcher)]
    assert len(results) == 1 and isinstance(results[0], FeaturePage) and results[0].complete
    assert len(results[0].frame) == 0


async def test_query_answers_the_items_at_a_point(scenes, fetcher):
    lon, lat = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(X0 + 100 * RES, Y0 - 100 * RES)
    layer = STACLayer(scenes["catalog"].url, collections=["dem", "stacked"], asset="data")
    rows = await layer.query(lon, lat, fetcher)
    assert sorted(r["id"] for r in rows) == ["new", "old", "west"]
    assert all(r["href"].endswith(f"/{r['id']}.tif") for r in rows)
    assert np.all([isinstance(r["datetime"], str) for r in rows])
