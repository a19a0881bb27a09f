"""STAC API item search over the :class:`~mapstream.layers.http.Fetcher`: discovery and paging.

One search is a walk over one catalog's ``/search`` for one collection:

1. **Discovery** (:func:`search_endpoint`): the landing page names the search endpoint in its
   ``links`` (``rel="search"``, with a ``method``); a page that declares POST is searched with
   POST and a JSON body, otherwise with GET and query parameters. The landing page must declare
   the item-search conformance class (``conformsTo``); it is read once per fetcher (its
   in-memory cache).
2. **Paging** (:func:`next_request`): each page's ``rel="next"`` link is followed with its own
   ``method``, ``body`` and ``headers``; ``merge: true`` merges the link's body into the request
   just sent (the STAC API paging rule for POST), so a server may answer with only a token.
   A next link that repeats a request already made ends the walk (a server looping on its own
   last page must not keep a load alive).

A search sent by POST changes nothing on the server: the fetcher retries it like a GET
(``idempotent=True``). A page that still fails ends that walk with its error, and the items
before it are kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import BadInputError, ParseError
from .ogcapi import _cached

if TYPE_CHECKING:  # pragma: no cover
    from ..http import Fetcher

__all__ = [
    "ITEM_SEARCH",
    "SearchEndpoint",
    "SearchRequest",
    "first_request",
    "next_request",
    "search_endpoint",
    "iter_pages",
]

#: The conformance class of STAC API - Item Search (any version: the prefix is matched).
ITEM_SEARCH = "https://api.stacspec.org/v1.0.0"
_ITEM_SEARCH_SUFFIX = "/item-search"
ACCEPT = {"Accept": "application/geo+json, application/json;q=0.9"}


@dataclass(frozen=True, slots=True)
class SearchEndpoint:
    """Where and how a catalog is searched."""

    url: str
    method: str  # "POST" or "GET"


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """One page request: its method, URL, JSON body (POST) or query (GET), and headers."""

    method: str
    url: str
    body: Mapping[str, Any] | None = None
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def key(self) -> tuple[str, str, bytes, bytes]:
        """A hashable identity (a walk never sends the same request twice)."""
        return (
            self.method,
            self.url,
            orjson.dumps(self.body, option=orjson.OPT_SORT_KEYS) if self.body is not None else b"",
            orjson.dumps(self.params, option=orjson.OPT_SORT_KEYS) if self.params else b"",
        )


def _declares_item_search(conforms: Any) -> bool:
    """Whether ``conformsTo`` lists STAC API Item Search (1.0.0, its release candidates, ...).

    >>> _declares_item_search(["https://api.stacspec.org/v1.0.0/item-search"])
    True
    >>> _declares_item_search(["https://api.stacspec.org/v1.0.0-rc.1/item-search#filter"])
    False
    >>> _declares_item_search(["https://api.stacspec.org/v1.0.0-rc.1/item-search"])
    True
    """
    return any(
        isinstance(c, str) and c.startswith("https://api.stacspec.org/") and c.endswith(_ITEM_SEARCH_SUFFIX)
        for c in conforms or ()
    )


def endpoint_from_landing(url: str, doc: Mapping[str, Any]) -> SearchEndpoint:
    """The search endpoint a landing page declares (pure).

    POST is preferred when a ``rel="search"`` link declares it (the body carries long filters
    and the ``merge`` paging rule applies); otherwise GET, at the link or at ``{url}/search``.

    Raises
    ------
    BadInputError
        The page does not declare STAC API Item Search.

    >>> doc = {"conformsTo": ["https://api.stacspec.org/v1.0.0/item-search"], "links": [
    ...     {"rel": "search", "href": "http://s/search", "method": "GET"},
    ...     {"rel": "search", "href": "http://s/search", "method": "POST"}]}
    >>> endpoint_from_landing("http://s", doc)
    SearchEndpoint(url='http://s/search', method='POST')
    >>> endpoint_from_landing("http://s/", {"conformsTo": doc["conformsTo"]})
    SearchEndpoint(url='http://s/search', method='GET')
    """
    if not _declares_item_search(doc.get("conformsTo")):
        raise BadInputError(
            f"{url} is not a STAC API with item search (its landing page declares no "
            f"'{ITEM_SEARCH}{_ITEM_SEARCH_SUFFIX}' conformance class)"
        )
    links = [l for l in doc.get("links") or () if isinstance(l, Mapping) and l.get("rel") == "search" and l.get("href")]
    for link in links:
        if str(link.get("method", "GET")).upper() == "POST":
            return SearchEndpoint(str(link["href"]), "POST")
    href = str(links[0]["href"]) if links else url.rstrip("/") + "/search"
    return SearchEndpoint(href, "GET")


async def search_endpoint(url: str, fetcher: Fetcher) -> SearchEndpoint:
    """The search endpoint of the catalog at ``url`` (its landing page, read once per fetcher).

    Raises
    ------
    FetchError
        The landing page could not be fetched.
    ParseError
        It is not a JSON object.
    BadInputError
        It does not declare STAC API Item Search.
    """

    async def build() -> SearchEndpoint:
        resp = await fetcher.get(url, headers={"Accept": "application/json"})
        doc = resp.json()
        if not isinstance(doc, Mapping):
            raise ParseError("STAC landing page is not a JSON object", url=resp.url)
        return endpoint_from_landing(url, doc)

    return await _cached(("stac-search-endpoint", url), fetcher, build)


def first_request(endpoint: SearchEndpoint, query: Mapping[str, Any]) -> SearchRequest:
    """The first page request of a search: ``query`` as a JSON body (POST) or as query
    parameters (GET: lists joined with commas, mappings such as a CQL2 JSON filter as JSON).

    >>> q = {"collections": ["a", "b"], "bbox": [0, 1, 2, 3.5], "limit": 10}
    >>> first_request(SearchEndpoint("http://s/search", "GET"), q).params
    {'collections': 'a,b', 'bbox': '0,1,2,3.5', 'limit': '10'}
    >>> first_request(SearchEndpoint("http://s/search", "POST"), q).body["bbox"]
    [0, 1, 2, 3.5]
    """
    if endpoint.method == "POST":
        return SearchRequest("POST", endpoint.url, body=dict(query))
    params: dict[str, str] = {}
    for key, value in query.items():
        if isinstance(value, (list, tuple)):
            params[key] = ",".join(f"{v:.12g}" if isinstance(v, float) else str(v) for v in value)
        elif isinstance(value, Mapping):
            params[key] = orjson.dumps(value).decode()
        else:
            params[key] = str(value)
    return SearchRequest("GET", endpoint.url, params=params)


def next_request(page: Mapping[str, Any], sent: SearchRequest) -> SearchRequest | None:
    """The request for the page after ``page`` (answered to ``sent``), or None (pure).

    The ``rel="next"`` link's ``method`` (GET by default), ``body``, ``merge`` and ``headers``
    are honoured: with ``merge: true`` the link's body is merged into the body just sent.

    >>> sent = SearchRequest("POST", "http://s/search", body={"collections": ["c"], "limit": 2})
    >>> page = {"links": [{"rel": "next", "href": "http://s/search", "method": "POST",
    ...                    "body": {"token": "t2"}, "merge": True, "headers": {"X-Page": "2"}}]}
    >>> nxt = next_request(page, sent)
    >>> nxt.body, dict(nxt.headers)
    ({'collections': ['c'], 'limit': 2, 'token': 't2'}, {'X-Page': '2'})
    >>> next_request({"links": [{"rel": "next", "href": "http://s/search?page=2"}]}, sent)
    SearchRequest(method='GET', url='http://s/search?page=2', body=None, params=None, headers={})
    >>> next_request({"links": []}, sent) is None
    True
    """
    for link in page.get("links") or ():
        if not (isinstance(link, Mapping) and link.get("rel") == "next" and link.get("href")):
            continue
        method = str(link.get("method") or "GET").upper()
        headers = {str(k): str(v) for k, v in (link.get("headers") or {}).items()}
        if method == "POST":
            body = link.get("body")
            body = dict(body) if isinstance(body, Mapping) else {}
            if link.get("merge"):
                body = {**(sent.body or {}), **body}
            return SearchRequest("POST", str(link["href"]), body=body, headers=headers)
        return SearchRequest(method, str(link["href"]), headers=headers)
    return None


async def send(request: SearchRequest, fetcher: Fetcher, headers: Mapping[str, str]) -> Mapping[str, Any]:
    """One page: the request sent through the fetcher, the answer parsed.

    Raises
    ------
    FetchError
        The request failed (the status, the URL).
    ParseError
        The answer is not a GeoJSON FeatureCollection.
    """
    hdrs = {**ACCEPT, **headers, **request.headers}
    if request.method == "POST":
        resp = await fetcher.request(
            "POST",
            request.url,
            content=orjson.dumps(request.body or {}),
            headers={**hdrs, "Content-Type": "application/json"},
            idempotent=True,  # a search: sending it twice is harmless, so a 503 is retried
        )
    elif request.method == "GET":
        resp = await fetcher.get(request.url, params=request.params, headers=hdrs)
    else:
        resp = await fetcher.request(request.method, request.url, params=request.params, headers=hdrs)
    page = resp.json()
    if not isinstance(page, Mapping) or not isinstance(page.get("features"), list):
        raise ParseError("STAC search answer is not a FeatureCollection", url=resp.url)
    return page


async def iter_pages(
    first: SearchRequest, fetcher: Fetcher, headers: Mapping[str, str] | None = None
) -> AsyncIterator[Mapping[str, Any]]:
    """Every page of one search, following ``next`` links until there is none.

    Raises
    ------
    FetchError, ParseError
        A page failed (the pages before it were yielded).
    """
    request: SearchRequest | None = first
    seen: set[tuple[str, str, bytes, bytes]] = set()
    while request is not None and request.key() not in seen:
        seen.add(request.key())
        page = await send(request, fetcher, headers or {})
        yield page
        if not page["features"]:  # an empty page with a next link would page forever
            return
        request = next_request(page, request)
