"""Every engine error survives copy.deepcopy and pickle with its message and attributes.

Results carry errors (a mosaic's tile errors, a feature load's page errors), and results are
copied (pandas deep-copies ``attrs``; the app copies state) and sent to worker processes.
"""

from __future__ import annotations

import copy
import pickle

import pytest

from mapstream.layers import errors
from mapstream.layers.errors import (
    BadInputError,
    CapabilityError,
    CatalogError,
    FetchError,
    FetchTimeoutError,
    LayersError,
    PagingError,
    ParseError,
    RangeError,
    RedirectRefusedError,
    ResponseTooLargeError,
    RetriesExhaustedError,
    RetryAfterTooLongError,
    ServiceError,
    SourceChangedError,
    StatusError,
    TileError,
    TotalTimeoutError,
    TransportError,
)
from mapstream.layers.http import Fetcher
from mapstream.layers.sources.features import FeatureLayer
from mapstream.layers.types import FeatureResult
from tests.support.ogc import N_POINTS, PAGE_LIMIT, make_ogc_server, ogc_data  # noqa: F401

URL = "http://h.test/items?offset=10"

EXAMPLES = [
    LayersError("base"),
    BadInputError("bad zoom"),
    CatalogError("catalog x: layer 'a': key 'url': bad URL"),
    FetchError("failed", url=URL),
    StatusError(503, URL, reason="Service Unavailable"),
    FetchTimeoutError("timed out (ReadTimeout): " + URL, url=URL),
    TotalTimeoutError("no complete response within the total timeout of 2 s: " + URL, url=URL),
    RedirectRefusedError("refused a redirect from " + URL + " to an internal address", url=URL),
    RangeError("416 Range Not Satisfiable for bytes=0-99", url=URL),
    SourceChangedError("ETag changed between two reads", url=URL),
    TransportError("ConnectError: refused", url=URL),
    ResponseTooLargeError(URL, 1024),
    RetriesExhaustedError(URL, 3, StatusError(502, URL)),
    RetryAfterTooLongError("h.test", 3600, 60, url=URL),
    TileError("3/1/2", "HTTP 500", url=URL, status=500),
    ParseError("malformed GeoJSON page", url=URL),
    ParseError("no url"),
    ServiceError("tile server exited: boom"),
    PagingError("the next link of http://h.test/items leads back to a page already read", url=URL),
    CapabilityError("http://h.test does not declare OGC API Features Part 3 (filter)"),
]


def test_every_error_class_has_an_example():
    classes = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, LayersError)
    }
    assert classes == {type(e) for e in EXAMPLES}


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("how", ["deepcopy", "copy", "pickle"])
def test_round_trip_keeps_class_message_and_attributes(error, how):
    if how == "pickle":
        again = pickle.loads(pickle.dumps(error))
    else:
        again = getattr(copy, how)(error)
    assert type(again) is type(error)
    assert str(again) == str(error) and again.args == error.args
    assert {k: v for k, v in vars(again).items() if k != "last_error"} == {
        k: v for k, v in vars(error).items() if k != "last_error"
    }


def test_attributes_named_by_the_issue_survive():
    status = pickle.loads(pickle.dumps(StatusError(404, URL)))
    assert (status.status, status.url, str(status)) == (404, URL, f"HTTP 404 for {URL}")
    retries = copy.deepcopy(RetriesExhaustedError(URL, 4, StatusError(503, URL)))
    assert retries.attempts == 4 and retries.url == URL
    assert isinstance(retries.last_error, StatusError) and retries.last_error.status == 503
    tile = pickle.loads(pickle.dumps(TileError("2/1/0", "HTTP 503", url=URL, status=503)))
    assert (tile.key, tile.reason, tile.url, tile.status) == ("2/1/0", "HTTP 503", URL, 503)
    assert isinstance(pickle.loads(pickle.dumps(BadInputError("x"))), ValueError)


@pytest.mark.slow  # more than a few seconds: the fast lane (-m "not slow") skips it
async def test_a_partly_failed_load_can_be_read_copied_and_pickled(make_ogc_server, tmp_path):
    """The issue's case: ``frame["id"]`` on a partly failed load raised TypeError."""
    server = make_ogc_server(faults={"offset=1000": ["malformed"]})
    async with Fetcher(cache_dir=tmp_path, backoff_base=0.05) as fetcher:
        result = await FeatureLayer(server.url, "points", limit=PAGE_LIMIT).fetch(None, fetcher)
    assert isinstance(result, FeatureResult)
    assert len(result.errors) == 1 and isinstance(result.errors[0], ParseError)
    assert "errors" not in result.frame.attrs  # errors are a field of the result
    ids = result.frame["id"]  # must not raise
    assert len(ids) == N_POINTS - PAGE_LIMIT and ids.is_unique
    result.frame.attrs["errors"] = list(result.errors)  # even where a user puts them
    assert len(result.frame["id"]) == len(ids)
    assert copy.deepcopy(result).errors[0].url == result.errors[0].url
    again = pickle.loads(pickle.dumps(result.errors))
    assert str(again[0]) == str(result.errors[0])
