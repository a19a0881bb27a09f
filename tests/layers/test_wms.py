"""WMSLayer against the loopback WMS fixture, which checks every GetMap parameter it gets."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest

from mapstream.layers.errors import BadInputError, ParseError, StatusError
from mapstream.layers.http import Fetcher
from mapstream.layers.tilegrid import Tile, tile_bounds
from mapstream.layers.sources.tiles import TileLayer
from mapstream.layers.projection import ORIGIN_SHIFT, lonlat_to_mercator
from mapstream.layers.viewport import Viewport
from mapstream.layers.sources.wms import WMSLayer, wms_bbox
from tests.layers.test_tiles import expected_pixels
from tests.support.pointwms import crop, mosaic_getmap
from tests.support.pointwms import point_wms as point_wms_fixture
from tests.support.tileserver import tile_server as tile_server_fixture

tile_server = tile_server_fixture  # the loopback server fixture
point_wms = point_wms_fixture  # draws point symbols, cut at the BBOX like real servers


@pytest.fixture
async def fetcher(tmp_path):
    async with Fetcher(per_host_limit=8, cache_dir=tmp_path, retry_attempts=1) as f:
        yield f


@pytest.mark.parametrize("version", ["1.1.1", "1.3.0"])
async def test_getmap_mosaic_is_pixel_exact(tile_server, fetcher, version):
    wms = WMSLayer(tile_server.url + "/wms", ["roads", "water"], version=version, gutter=0)
    vp = Viewport.from_lonlat((-20, 30, 25, 60), width=600)
    result = await wms.fetch(vp, fetcher)
    mosaic = result.image
    assert result.errors == ()  # the fixture answers 400 to any wrong parameter
    np.testing.assert_array_equal(mosaic.values, expected_pixels(mosaic))
    plan = wms.plan(vp)
    assert len(tile_server.wms_params) == len(plan.tiles)
    for q, tile in zip(
        sorted(tile_server.wms_params, key=lambda q: q["BBOX"]),
        sorted(plan.tiles, key=lambda t: wms_bbox(tile_bounds(t), "EPSG:3857", version)),
        strict=True,
    ):
        assert q["VERSION"] == version and q["REQUEST"] == "GetMap"
        crs_key, absent = ("CRS", "SRS") if version == "1.3.0" else ("SRS", "CRS")
        assert q[crs_key] == "EPSG:3857" and absent not in q
        assert (q["WIDTH"], q["HEIGHT"]) == ("256", "256")
        w, s, e, n = (float(v) for v in q["BBOX"].split(","))
        assert w < e and s < n  # x,y order for EPSG:3857 in both versions
        assert (w, s, e, n) == pytest.approx(tile_bounds(tile))
        assert q["FORMAT"] == "image/png" and q["TRANSPARENT"] == "TRUE" and q["STYLES"] == ""


async def test_wms_shares_tile_grid_cache_and_wraps_antimeridian(tile_server, fetcher):
    wms = WMSLayer(tile_server.url + "/wms?map=demo", "roads,water", tile_size=512, max_zoom=12, gutter=0)
    vp = Viewport.from_lonlat((165, -30, -170, 0), width=700)
    mosaic = (await wms.fetch(vp, fetcher)).image
    assert mosaic.x.values[-1] > ORIGIN_SHIFT
    np.testing.assert_array_equal(mosaic.values, expected_pixels(mosaic))
    assert all(q["MAP"] == "demo" and q["WIDTH"] == "512" for q in tile_server.wms_params)
    served = len(tile_server.requests)
    again = await wms.fetch(vp, fetcher)
    assert len(tile_server.requests) == served and again.progress.cached == len(
        wms.plan(vp).tiles
    )


async def test_service_exception_leaves_a_reported_hole(tile_server, fetcher):
    wms = WMSLayer(tile_server.url + "/wms", "roads,water", gutter=0)
    vp = Viewport.from_lonlat((0, 0, 40, 40), width=600)
    bad = wms.plan(vp).tiles[0]
    tile_server.failing.add(tuple(bad))
    mosaic = await wms.fetch(vp, fetcher)
    assert "layer broken" in mosaic.tiles_missing[bad.key]
    assert len(mosaic.errors) == 1 and mosaic.progress.failed == 1
    assert len(mosaic.tiles_used) == len(wms.plan(vp).tiles) - 1


async def test_wrong_parameters_are_reported_not_raised(tile_server, fetcher):
    wms = WMSLayer(tile_server.url + "/wms", "not-a-layer", gutter=0)
    mosaic = await wms.fetch(Viewport.from_lonlat((0, 0, 10, 10), width=256), fetcher)
    assert mosaic.errors and all("HTTP 400" in str(e) and e.status == 400 for e in mosaic.errors)
    assert int(mosaic.image.values.max()) == 0


@pytest.mark.parametrize("version", ["1.1.1", "1.3.0"])
async def test_query_is_get_feature_info(tile_server, fetcher, version):
    wms = WMSLayer(tile_server.url + "/wms", "roads,water", version=version, max_zoom=10, gutter=0)
    rows = await wms.query(12.5, 41.9, fetcher)
    props = rows[0]
    x, y = lonlat_to_mercator(12.5, 41.9)
    pixel = 2 * ORIGIN_SHIFT / 2**10 / 256
    assert abs(props["x"] - x) <= pixel and abs(props["y"] - y) <= pixel
    q = tile_server.wms_params[-1]
    assert q["REQUEST"] == "GetFeatureInfo" and q["INFO_FORMAT"] == "application/json"
    assert ("I" in q) == (version == "1.3.0") and ("X" in q) == (version == "1.1.1")
    with pytest.raises(StatusError):
        await WMSLayer(tile_server.url + "/wms", "other", gutter=0).query(0, 0, fetcher)
    with pytest.raises(ParseError):  # a PNG is not JSON
        await NotJSONWMS(tile_server.url).query(0, 0, fetcher)


class NotJSONWMS(WMSLayer):
    """A WMS whose GetFeatureInfo endpoint answers something that is not JSON."""

    def __init__(self, base: str) -> None:
        super().__init__(base + "/wms", "roads,water")

    def feature_info_url(self, *args, **kwargs) -> str:
        return self.url.replace("/wms", "/0/0/0.png")


def test_axis_order_and_bad_input():
    assert wms_bbox((1, 2, 3, 4), "EPSG:4326", "1.3.0") == "2,1,4,3"
    assert wms_bbox((1, 2, 3, 4), "CRS:84", "1.3.0") == "1,2,3,4"
    with pytest.raises(BadInputError, match="version"):
        WMSLayer("http://w.test/wms", "a", version="1.0.0")
    with pytest.raises(BadInputError, match="layer name"):
        WMSLayer("http://w.test/wms", [])
    wms = WMSLayer("http://w.test/wms", "a", min_zoom=2, max_zoom=5, gutter=0)  # exact tiles
    with pytest.raises(BadInputError, match="outside"):
        wms.tile_url(Tile(6, 0, 0))
    with pytest.raises(BadInputError, match="lon in"):
        wms.feature_info_url(200, 0)
    url = wms.tile_url(Tile(3, 1, 2))
    q = dict(parse_qsl(urlsplit(url).query))
    assert q["BBOX"] == ",".join(repr(v).removesuffix(".0") for v in tile_bounds(Tile(3, 1, 2)))
    assert WMSLayer.load is TileLayer.load  # both layers share one pipeline


async def test_gutter_keeps_point_symbols_whole_at_tile_edges(point_wms, fetcher):
    from urllib.parse import urlencode

    from mapstream.layers.imaging import decode_rgba

    vp = Viewport.create((-2.1e6, 2.1e6), (-1.3e6, 1.3e6), 700, 430)
    plain = await WMSLayer(point_wms.url, "points", max_zoom=8, gutter=0).fetch(vp, fetcher)
    wide = await WMSLayer(point_wms.url, "points", max_zoom=8, gutter=8).fetch(vp, fetcher)
    assert plain.errors == () and wide.errors == ()
    assert plain.image.shape == wide.image.shape and len(wide.tiles_used) > 6
    gutter_get = point_wms.requests[-1]
    assert (gutter_get["WIDTH"], gutter_get["HEIGHT"]) == ("272", "272")
    params = mosaic_getmap(wide.image, gutter=8, LAYERS="points")
    one = await fetcher.get(f"{point_wms.url}?{urlencode(params)}")
    whole = crop(decode_rgba(one.content), 8)
    assert whole.shape == wide.image.shape and whole[..., 3].any()
    np.testing.assert_array_equal(wide.image.values, whole)  # pixel for pixel
    assert (plain.image.values != whole).any()  # without a gutter, symbols at tile edges are cut


def test_the_default_gutter_asks_for_32_pixels_around_each_tile():
    from mapstream.layers.catalog import LayerSpec
    from mapstream.layers.sources.wms import DEFAULT_GUTTER

    wms = WMSLayer("http://w.test/wms", "a")
    params = wms._params(Tile(3, 4, 2))
    assert DEFAULT_GUTTER == 32 and wms.gutter == 32
    assert (params["WIDTH"], params["HEIGHT"]) == ("320", "320")
    spec = LayerSpec(name="w", kind="wms", url="http://w.test/wms", wms_layers="a")
    assert WMSLayer.from_spec(spec, spec.url).gutter == 32


def test_gutter_is_checked():
    with pytest.raises(BadInputError, match="gutter"):
        WMSLayer("http://w.test/wms", "a", gutter=-1)
    with pytest.raises(BadInputError, match="gutter"):
        WMSLayer("http://w.test/wms", "a", gutter=1000)


def test_catalog_gutter_reaches_the_layer():
    from mapstream.layers.catalog import LayerSpec

    spec = LayerSpec(name="w", kind="wms", url="http://w.test/wms", wms_layers="a", gutter=24)
    layer = WMSLayer.from_spec(spec, spec.url)
    assert layer.gutter == 24 and "WIDTH=304" in layer.tile_url(Tile(2, 1, 1))
    with pytest.raises(ValueError, match="gutter is for wms layers"):
        LayerSpec(name="t", kind="tiles", url="http://t.test/{z}/{x}/{y}.png", gutter=8)
