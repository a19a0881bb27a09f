"""WMSLayer against MapServer 8 and QGIS Server 3.22, and MapProxy's tiles in front of MapServer.

A mosaic of GetMap tiles must equal one GetMap of the same view: with a gutter (the tiles are
rendered wider and cropped) the point symbols at tile edges are whole, without one they are cut.
GetFeatureInfo (``WMSLayer.query``) at a point of the ground truth must name that point.
"""

from __future__ import annotations

from urllib.parse import urlencode

import numpy as np
import pytest

from mapstream.layers.imaging import decode_rgba
from mapstream.layers.sources.tiles import TileLayer
from mapstream.layers.sources.wms import WMSLayer
from mapstream.layers.viewport import Viewport
from tests.support.pointwms import crop, mosaic_getmap

from .servers import SYMBOL_PX

pytestmark = [pytest.mark.interop, pytest.mark.slow]

VIEW = Viewport.from_lonlat((-20.3, -10.7, 24.9, 19.6), width=700)
GUTTER = SYMBOL_PX  # half the symbol and its outline, with room to spare


@pytest.fixture(scope="module", params=["mapserver", "qgis"])
def wms_server(request):
    name = "mapserver" if request.param == "mapserver" else "qgis_server"
    return request.param, request.getfixturevalue(name)


async def one_getmap(url: str, image, fetcher, **params: str) -> np.ndarray:
    """One GetMap of the mosaic's view (widened by GUTTER, then cropped back)."""
    query = mosaic_getmap(image, gutter=GUTTER, **params)
    sep = "&" if "?" in url else "?"
    resp = await fetcher.get(f"{url}{sep}{urlencode(query)}")
    return crop(decode_rgba(resp.content), GUTTER)


def differing(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of pixels whose RGBA differ."""
    return float((a != b).any(axis=-1).mean())


async def test_gutter_mosaic_equals_one_getmap(wms_server, fetcher):
    name, server = wms_server
    wide = await WMSLayer(server.wms_url, "points", gutter=GUTTER).fetch(VIEW, fetcher)
    assert wide.errors == () and len(wide.tiles_used) >= 6
    whole = await one_getmap(server.wms_url, wide.image, fetcher, LAYERS="points")
    assert whole.shape == wide.image.shape and (whole[..., 3] > 0).mean() > 0.05
    assert differing(wide.image.values, whole) == 0.0, name


async def test_without_gutter_symbols_are_cut_at_tile_edges(wms_server, fetcher):
    _, server = wms_server
    plain = await WMSLayer(server.wms_url, "points", gutter=0).fetch(VIEW, fetcher)
    assert plain.errors == ()
    whole = await one_getmap(server.wms_url, plain.image, fetcher, LAYERS="points")
    assert differing(plain.image.values, whole) > 0  # the defect the gutter cures


async def test_get_feature_info_names_the_point(wms_server, fetcher, truth):
    name, server = wms_server
    # QGIS Server finds no point without a tolerance (FI_POINT_TOLERANCE, in pixels).
    extra = {"FI_POINT_TOLERANCE": "4"} if name == "qgis" else {}
    wms = WMSLayer(server.wms_url, "points", max_zoom=12, extra_params=extra)
    for i in (17, 9876):
        row = truth.iloc[i]
        rows = await wms.query(row.geometry.x, row.geometry.y, fetcher)
        assert int(row["id"]) in {int(r["id"]) for r in rows}, (name, rows)


async def test_mapproxy_tiles_equal_one_mapserver_getmap(mapproxy, mapserver, fetcher):
    tiles = TileLayer(mapproxy.tile_template(), max_zoom=18)
    mosaic = await tiles.fetch(VIEW, fetcher)
    assert mosaic.errors == () and len(mosaic.tiles_used) >= 6
    whole = await one_getmap(mapserver.wms_url, mosaic.image, fetcher, LAYERS="points")
    assert (whole[..., 3] > 0).mean() > 0.05
    # MapProxy renders 4x4 metatiles with a 64 px buffer: symbols whole at every tile edge.
    assert differing(mosaic.image.values, whole) == 0.0
