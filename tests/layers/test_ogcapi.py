"""Discovery against pygeoapi: typed documents, cached."""

from __future__ import annotations

import pytest

from mapstream.layers.sources import ogcapi
from mapstream.layers.errors import StatusError
from mapstream.layers.http import Fetcher
from tests.support.ogc import ogc_data, ogc_server  # noqa: F401


@pytest.fixture
async def fetcher(tmp_path):
    async with Fetcher(cache_dir=tmp_path) as f:
        yield f


async def test_discovery_is_typed_and_cached(ogc_server, fetcher):
    landing = await ogcapi.get_landing(ogc_server.url, fetcher)
    assert landing.title == "test server" and any(l.rel == "self" for l in landing.links)
    conformance = await ogcapi.get_conformance(ogc_server.url, fetcher)
    assert ogcapi.CONF_CRS in conformance
    collections = await ogcapi.get_collections(ogc_server.url, fetcher)
    assert {c.id for c in collections} == {"points", "countries"}
    points = await ogcapi.get_collection(ogc_server.url, "points", fetcher)
    assert points.item_type == "feature" and points.bbox == (-180.0, -90.0, 180.0, 90.0)
    assert points.offers(ogcapi.EPSG3857) and points.offers(ogcapi.CRS84)
    queryables = await ogcapi.get_queryables(ogc_server.url, "points", fetcher)
    assert queryables.properties["count"]["type"] == "integer"
    assert queryables.datetime_properties == ("when",)
    before = fetcher.metrics.snapshot()["requests"]
    again = await ogcapi.get_collection(ogc_server.url, "points", fetcher)
    assert again is points and fetcher.metrics.snapshot()["requests"] == before


async def test_unknown_collection(ogc_server, fetcher):
    with pytest.raises(StatusError) as info:
        await ogcapi.get_collection(ogc_server.url, "nope", fetcher)
    assert info.value.status == 404
