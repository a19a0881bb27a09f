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


# -- queryables the way each server takes them; what a server can filter ---------------------

from mapstream.layers.sources.ogcapi import (  # noqa: E402
    CONF_CQL2_JSON,
    CONF_CQL2_TEXT,
    CONF_FEATURES_FILTER,
    CONF_FILTER,
    filter_languages,
    probe_filter,
)
from tests.support.pagingserver import make_paging_server  # noqa: E402,F401


async def test_queryables_as_schema_json_first(make_paging_server, fetcher):
    """tipg answers 422 to f=json: the schema+json request is the one that works."""
    server = make_paging_server(queryables="schema")
    queryables = await ogcapi.get_queryables(server.url, "plain", fetcher)
    assert queryables.datetime_properties == ("when",)
    assert queryables.properties["num"]["type"] == "integer"
    asked = [(q, h) for p, q, h in server.requests if p.endswith("/queryables")]
    assert len(asked) == 1 and "f=" not in asked[0][0]
    assert "application/schema+json" in {k.lower(): v for k, v in asked[0][1].items()}["accept"]


async def test_queryables_fall_back_to_f_json(make_paging_server, fetcher):
    server = make_paging_server(queryables="f")  # HTML unless f=json
    queryables = await ogcapi.get_queryables(server.url, "plain", fetcher)
    assert queryables.datetime_properties == ("when",)
    asked = [q for p, q, _ in server.requests if p.endswith("/queryables")]
    assert asked == ["", "f=json"]


async def test_no_queryables_is_none(make_paging_server, fetcher):
    server = make_paging_server(queryables="none")
    assert await ogcapi.get_queryables(server.url, "plain", fetcher) is None


def test_filter_languages_from_conformance():
    assert filter_languages(frozenset()) is None
    assert filter_languages(frozenset({CONF_FILTER, CONF_CQL2_JSON})) == {"cql2-json"}
    assert filter_languages(frozenset({CONF_FILTER, CONF_CQL2_TEXT, CONF_CQL2_JSON})) == {"cql2-text", "cql2-json"}
    assert filter_languages(frozenset({CONF_FEATURES_FILTER})) == {"cql2-text", "cql2-json"}


async def test_probe_tells_a_filtering_server_from_one_that_ignores(make_paging_server, ogc_server, fetcher):
    ignores, parses = make_paging_server(filters=False), make_paging_server(filters=True)
    assert await probe_filter(ignores.url, "plain", fetcher) is False
    assert await probe_filter(parses.url, "plain", fetcher) is True
    # pygeoapi 0.21 filters but declares no Part 3: the probe finds out
    assert CONF_FILTER not in await ogcapi.get_conformance(ogc_server.url, fetcher)
    assert await probe_filter(ogc_server.url, "points", fetcher) is True
    before = len(ignores.requests)
    assert await probe_filter(ignores.url, "plain", fetcher) is False
    assert len(ignores.requests) == before  # asked once per collection
