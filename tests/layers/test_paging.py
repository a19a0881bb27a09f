"""Paging against servers that misbehave on purpose (tests/support/pagingserver.py): the client's
query survives every next link, and every load ends, with its error in the result."""

from __future__ import annotations

import asyncio
import copy
import pickle
from urllib.parse import parse_qsl

import pytest

from mapstream.layers.errors import LayersError, ParseError
from mapstream.layers.http import Fetcher
from mapstream.layers.sources.features import FeatureLayer
from mapstream.layers.sources.ogcapi import CONF_FILTER, CapabilityError
from mapstream.layers.sources.paging import PagingError
from mapstream.layers.viewport import Viewport
from tests.support.pagingserver import inside, make_paging_server, paging_server, truth  # noqa: F401

# Edges 0.05 off the 0.1-degree grid of the points: no point sits on an edge.
BOX = (-30.05, 20.05, 50.05, 75.05)
VIEW = Viewport.from_lonlat(BOX, 400)
LIMIT = 50
BOUND = 30  # seconds: every load here ends long before
pytestmark = pytest.mark.timeout(120)  # and pytest-timeout stops a test that would hang anyway


@pytest.fixture
async def fetcher(tmp_path):
    async with Fetcher(cache_dir=tmp_path, backoff_base=0.01) as f:
        yield f


def _box_truth() -> set[int]:
    return {p["id"] for p in truth() if inside(p, BOX)}


def _ids(frame) -> list[int]:
    return [int(i) for i in frame["id"]] if "id" in frame.columns else []


async def _fetch(layer, view, fetcher):
    return await asyncio.wait_for(layer.fetch(view, fetcher), BOUND)


def _errors_of(result, kind=PagingError):
    return [e for e in result.errors if isinstance(e, kind)]


@pytest.mark.parametrize("collection", ["plain", "mapserver", "qgis", "cursor"])
@pytest.mark.parametrize("paging", ["next", "auto"])
async def test_a_sub_box_loads_exactly_its_features(paging_server, fetcher, collection, paging):
    """MapServer drops bbox from next links, QGIS mangles it: the client's query wins."""
    layer = FeatureLayer(paging_server.url, collection, limit=LIMIT, paging=paging)
    result = await _fetch(layer, VIEW, fetcher)
    ids = _ids(result.frame)
    want = _box_truth()
    assert 3 * LIMIT < len(want) < 2000  # a real sub-box, several pages
    assert len(ids) == len(set(ids)) == len(want) and set(ids) == want
    assert not result.errors and result.progress.complete and not result.truncated
    sent = paging_server.items_requests(collection)
    assert sent and all("%2C" not in q and "1000C" not in q for q in sent)
    for q in sent[-len(want) // LIMIT:]:  # the pages after the first: still the client's box
        params = dict(parse_qsl(q))
        w, s, e, n = (float(v) for v in params["bbox"].split(","))
        if collection == "cursor" and paging == "auto":  # no offsets: the box is split
            assert BOX[0] - 1e-6 <= w < e <= BOX[2] + 1e-6 and BOX[1] - 1e-6 <= s < n <= BOX[3] + 1e-6
        else:
            assert [w, s, e, n] == pytest.approx(BOX, abs=1e-6)
        assert params["limit"] == str(LIMIT)


@pytest.mark.parametrize("paging", ["next", "auto"])
async def test_features_outside_the_box_are_dropped(paging_server, fetcher, paging):
    """MapServer 8 answers a bbox with points degrees outside it: the client's box holds."""
    layer = FeatureLayer(paging_server.url, "loosebox", limit=LIMIT, paging=paging)
    pages = [p async for p in layer.load(VIEW, fetcher)]
    got = [i for p in pages for i in _ids(p.frame)]
    assert len(got) == len(set(got)) and set(got) == _box_truth()
    assert pages[0].progress.matched > len(_box_truth())  # the server did answer more
    assert not any(p.errors for p in pages)


async def test_commas_and_colons_go_literally(paging_server, fetcher):
    layer = FeatureLayer(paging_server.url, "plain", limit=LIMIT, datetime="2024-03-01T00:00:00Z/..")
    await _fetch(layer, VIEW, fetcher)
    first = paging_server.items_requests("plain")[-1]
    assert "bbox=-30.05,20.05,50.05,75.05" in first
    assert "datetime=2024-03-01T00:00:00Z/.." in first


async def test_a_cursor_that_drops_the_query_is_refused(paging_server, fetcher):
    layer = FeatureLayer(paging_server.url, "cursor-drop", limit=LIMIT)
    result = await _fetch(layer, VIEW, fetcher)
    (err,) = _errors_of(result)
    assert "bbox dropped" in str(err) and "opaque" in str(err)
    # the first page is kept, and it is the box's
    ids = _ids(result.frame)
    assert len(ids) == LIMIT and set(ids) <= _box_truth()
    assert len(paging_server.items_requests("cursor-drop")) >= 1
    assert result.frame["id"].is_unique  # a partly failed load's frame reads like any other


@pytest.mark.parametrize("collection", ["selfloop", "cycle"])
@pytest.mark.parametrize("paging", ["next", "auto"])
async def test_next_link_loops_end_with_an_error(make_paging_server, fetcher, collection, paging):
    server = make_paging_server()
    layer = FeatureLayer(server.url, collection, limit=LIMIT, paging=paging)
    result = await _fetch(layer, None, fetcher)
    if collection == "cycle" and paging == "auto":
        # offset paging plans every page from numberMatched and follows no link: all arrive
        assert sorted(_ids(result.frame)) == list(range(1, 2001)) and not result.errors
        return
    (err,) = _errors_of(result)
    assert "already requested" in str(err)
    ids = _ids(result.frame)
    want = 1 if collection == "selfloop" else 2  # pages before the loop closed
    assert len(ids) == len(set(ids)) == want * LIMIT
    assert set(ids) == set(range(1, want * LIMIT + 1))
    assert len(server.items_requests(collection)) == want
    assert result.progress.complete


@pytest.mark.parametrize("paging", ["next", "auto"])
async def test_repeated_pages_end_and_never_duplicate(make_paging_server, fetcher, paging):
    server = make_paging_server()
    layer = FeatureLayer(server.url, "repeat", limit=LIMIT, paging=paging, max_features=1000)
    result = await _fetch(layer, None, fetcher)
    assert sorted(_ids(result.frame)) == [1, 2, 3, 4, 5]
    (err,) = _errors_of(result)
    assert "repeat" in str(err) or "came before" in str(err)
    if paging == "next":
        assert len(server.items_requests("repeat")) == 2  # the second page gave it away
    else:  # offsets planned up front: the first repeat stops the ones not yet sent
        assert len(server.items_requests("repeat")) < 200


async def test_a_lying_number_matched_is_caught(make_paging_server, fetcher):
    """numberMatched says 10 while pages keep coming: the load stops at the second page."""
    server = make_paging_server()
    layer = FeatureLayer(server.url, "liar", limit=LIMIT)
    result = await _fetch(layer, None, fetcher)
    (err,) = _errors_of(result)
    assert "numberMatched=10" in str(err) and "keeps sending" in str(err)
    assert sorted(_ids(result.frame)) == list(range(1, 2 * LIMIT + 1))  # the data is kept
    assert len(server.items_requests("liar")) == 2 and result.truncated


@pytest.mark.parametrize("collection", ["endless", "endless-cursor"])
async def test_one_feature_a_page_with_a_huge_count_is_bounded(make_paging_server, fetcher, collection):
    server = make_paging_server()
    layer = FeatureLayer(server.url, collection, limit=LIMIT, max_pages=40)
    result = await _fetch(layer, None, fetcher)
    assert len(server.items_requests(collection)) == 40
    (err,) = _errors_of(result)
    assert "max_pages=40" in str(err)
    ids = _ids(result.frame)
    assert len(ids) == len(set(ids)) == 40 and result.truncated and result.progress.complete


async def test_the_default_page_bound_holds(make_paging_server, fetcher):
    """The default max_pages: the cap would allow 200 000 one-feature pages; far fewer go."""
    server = make_paging_server()
    layer = FeatureLayer(server.url, "endless", limit=LIMIT, max_features=200_000)
    assert layer.max_pages == 2000
    layer.max_pages = 60  # the same rule, a bound that keeps the test short
    result = await _fetch(layer, None, fetcher)
    assert len(server.items_requests("endless")) == 60 and _errors_of(result)


async def test_offsets_from_an_overstated_count_stop_at_the_end(make_paging_server, fetcher):
    """numberMatched 1 000 000 over 2 000 features: offsets stop at the first empty page."""
    server = make_paging_server()
    layer = FeatureLayer(server.url, "overcount", limit=LIMIT)
    result = await _fetch(layer, None, fetcher)
    assert sorted(_ids(result.frame)) == list(range(1, 2001))
    assert not result.errors and not result.truncated  # all there: the count was only wrong
    window = 2 * fetcher.host_limit(server.url)  # requests already sent when the end shows
    assert 2000 // LIMIT < len(server.items_requests("overcount")) <= 2000 // LIMIT + window + 1


async def test_a_non_numeric_count_is_a_parse_error(paging_server, fetcher):
    layer = FeatureLayer(paging_server.url, "five", limit=LIMIT)
    with pytest.raises(ParseError) as info:
        await _fetch(layer, None, fetcher)
    assert "numberReturned is 'five'" in str(info.value)
    assert not isinstance(info.value, ValueError)


async def test_credentials_never_follow_a_next_link_to_another_origin(make_paging_server, fetcher):
    home, other = make_paging_server(), make_paging_server()
    home.elsewhere = other.url
    layer = FeatureLayer(home.url, "elsewhere", limit=LIMIT, headers={"Authorization": "Bearer s3cret"})
    result = await _fetch(layer, VIEW, fetcher)
    assert set(_ids(result.frame)) == _box_truth() and not result.errors
    assert other.requests == []  # the other origin is never asked, with or without the header
    items = [{k.lower(): v for k, v in h.items()} for p, _, h in home.requests if p.endswith("/items")]
    assert len(items) > 1 and all(h.get("authorization") == "Bearer s3cret" for h in items)


async def test_credentials_from_python_reach_discovery_and_every_page(make_paging_server, fetcher):
    """A server behind authentication: the layer's headers go with discovery (and the filter
    probe) and every page, and a layer without them is refused, not served another's documents."""
    server = make_paging_server(require_auth="Bearer s3cret")
    layer = FeatureLayer(server.url, "mapserver", limit=LIMIT, filter="kind = 'beta'", client_filter=True,
                         headers={"Authorization": "Bearer s3cret"})
    result = await _fetch(layer, VIEW, fetcher)
    want = {p["id"] for p in truth() if inside(p, BOX) and p["kind"] == "beta"}
    assert set(_ids(result.frame)) == want and not result.errors
    paths = {p for p, _, _ in server.requests}
    assert {"/collections/mapserver", "/conformance", "/collections/mapserver/queryables"} <= paths
    with pytest.raises(LayersError) as info:
        await _fetch(FeatureLayer(server.url, "mapserver", limit=LIMIT), VIEW, fetcher)
    assert getattr(info.value, "status", None) == 401


async def test_a_partly_failed_load_is_plain_data(paging_server, fetcher):
    """Issue 14 item 3: the frame's columns read, the result copies and pickles."""
    layer = FeatureLayer(paging_server.url, "cursor-drop", limit=LIMIT)
    result = await _fetch(layer, VIEW, fetcher)
    assert result.errors and len(result.frame["id"]) == LIMIT
    assert result.frame.attrs == {}
    again = copy.deepcopy(result)
    assert [str(e) for e in again.errors] == [str(e) for e in result.errors]
    back = pickle.loads(pickle.dumps(result.errors))
    assert type(back[0]) is PagingError and back[0].url == result.errors[0].url


# -- capabilities ---------------------------------------------------------------------------


async def test_a_filter_without_part3_is_refused(paging_server, fetcher):
    layer = FeatureLayer(paging_server.url, "plain", limit=LIMIT, filter="num < 100")
    with pytest.raises(CapabilityError) as info:
        await _fetch(layer, VIEW, fetcher)
    message = str(info.value)
    assert paging_server.url in message and CONF_FILTER in message and "client_filter" in message
    assert isinstance(info.value, LayersError)


@pytest.mark.parametrize(
    "flt",
    ["num < 100 AND kind = 'alpha'", {"op": "and", "args": [
        {"op": "<", "args": [{"property": "num"}, 100]}, {"op": "=", "args": [{"property": "kind"}, "alpha"]}]}],
    ids=["cql2-text", "cql2-json"],
)
async def test_client_side_filter_when_asked(paging_server, fetcher, flt):
    layer = FeatureLayer(paging_server.url, "mapserver", limit=LIMIT, filter=flt, client_filter=True)
    pages = [p async for p in layer.load(VIEW, fetcher)]
    ids = [i for p in pages for i in _ids(p.frame)]
    want = {p["id"] for p in truth() if inside(p, BOX) and p["num"] < 100 and p["kind"] == "alpha"}
    assert want and len(ids) == len(set(ids)) and set(ids) == want
    assert all(p.progress.client_filtered for p in pages)
    sent = [q for q in paging_server.items_requests("mapserver") if "mapstream%20probe" not in q]
    assert sent and not any("filter" in q for q in sent)  # the filter stayed here


async def test_client_side_filter_and_the_cap(paging_server, fetcher):
    """The cap counts the features kept, not the ones downloaded."""
    layer = FeatureLayer(paging_server.url, "plain", limit=LIMIT, filter="kind = 'beta'",
                         client_filter=True, max_features=30)
    result = await _fetch(layer, None, fetcher)
    assert len(result.frame) == 30 and set(result.frame["kind"]) == {"beta"} and result.truncated


async def test_a_part3_server_filters_itself(make_paging_server, fetcher):
    server = make_paging_server(filters=True)
    layer = FeatureLayer(server.url, "plain", limit=LIMIT, filter="num < 100", client_filter=True)
    result = await _fetch(layer, VIEW, fetcher)
    want = {p["id"] for p in truth() if inside(p, BOX) and p["num"] < 100}
    assert set(_ids(result.frame)) == want and not result.progress.client_filtered
    assert all("filter=num%20%3C%20100" in q for q in server.items_requests("plain"))


async def test_a_server_that_parses_filters_but_ignores_them_is_caught(make_paging_server, fetcher):
    """pygeoapi over SQLite: the probe says it parses filter=, its pages say it ignores it."""
    server = make_paging_server(filters="parse-only")
    with pytest.raises(CapabilityError) as info:
        await _fetch(FeatureLayer(server.url, "plain", limit=LIMIT, filter="num < 100"), VIEW, fetcher)
    assert "ignores filter=" in str(info.value) and server.url in str(info.value)
    layer = FeatureLayer(server.url, "plain", limit=LIMIT, filter="num < 100", client_filter=True)
    pages = [p async for p in layer.load(VIEW, fetcher)]
    want = {p["id"] for p in truth() if inside(p, BOX) and p["num"] < 100}
    got = [i for p in pages for i in _ids(p.frame)]
    assert want and len(got) == len(set(got)) and set(got) == want
    assert pages[-1].progress.client_filtered and not any(p.errors for p in pages)


async def test_a_json_filter_on_a_text_only_server(make_paging_server, fetcher):
    server = make_paging_server(filters=True)  # declares cql2-text only
    flt = {"op": "<", "args": [{"property": "num"}, 100]}
    with pytest.raises(CapabilityError) as info:
        await _fetch(FeatureLayer(server.url, "plain", filter=flt), VIEW, fetcher)
    assert "cql2-json" in str(info.value) and server.url in str(info.value)


async def test_datetime_on_a_collection_without_time(make_paging_server, fetcher):
    server = make_paging_server(temporal=False)
    layer = FeatureLayer(server.url, "plain", datetime="2024-03-01T00:00:00Z/..")
    with pytest.raises(CapabilityError) as info:
        await _fetch(layer, VIEW, fetcher)
    assert "datetime" in str(info.value) and server.url in str(info.value)


async def test_a_crs_without_part2_is_refused(paging_server, fetcher):
    layer = FeatureLayer(paging_server.url, "plain", params={"crs": "http://www.opengis.net/def/crs/EPSG/0/3857"})
    with pytest.raises(CapabilityError) as info:
        await _fetch(layer, VIEW, fetcher)
    assert "Part 2" in str(info.value)


async def test_the_catalog_asks_for_client_side_filtering(paging_server, fetcher):
    from mapstream.layers.catalog import LayerSpec

    spec = dict(name="f", kind="features", url="http://h.test", collection="qgis", page_size=LIMIT,
                filter="kind = 'gamma'")
    strict = FeatureLayer.from_spec(LayerSpec(**spec), paging_server.url)
    with pytest.raises(CapabilityError):
        await _fetch(strict, VIEW, fetcher)
    lenient = FeatureLayer.from_spec(LayerSpec(**spec, filter_fallback="client"), paging_server.url)
    result = await _fetch(lenient, VIEW, fetcher)
    want = {p["id"] for p in truth() if inside(p, BOX) and p["kind"] == "gamma"}
    assert set(_ids(result.frame)) == want and result.progress.client_filtered


@pytest.mark.parametrize("error", [
    PagingError("the server's next link leads back to a page already requested", url="http://h/i?offset=5"),
    CapabilityError("http://h does not declare OGC API Features Part 3 filtering"),
])
def test_the_new_errors_copy_and_pickle(error):
    for again in (copy.deepcopy(error), pickle.loads(pickle.dumps(error))):
        assert type(again) is type(error) and str(again) == str(error)
        assert getattr(again, "url", None) == getattr(error, "url", None)
        assert isinstance(again, LayersError)
