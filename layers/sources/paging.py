"""How a feature load pages: page URLs on the client's query, offsets, sub-boxes, next links, and
the guards that make every load end.

:class:`PageWalk` is one load's walk over an OGC API items endpoint, given the first request(s)
of :class:`~mapstream.layers.sources.features.FeatureLayer`.

**Page URLs keep the client's query.** Every page URL is the layer's own items URL with the first
request's parameters plus the server's paging token (``offset``, or whatever parameters of its
``next`` link the client did not send: ``token``, ``cursor``, ``startindex``, ``f``...); the
client's parameters win (:func:`follow_next`). Commas and colons go on the wire literally
(``bbox=-30,20,50,75``), as GDAL sends them: QGIS Server 3.22 turns an encoded ``%2C`` into
``1000C`` in its next links. A next link that changes the query (drops or alters ``bbox``,
``filter``, ``crs``, ``datetime``...: MapServer 8 drops ``bbox``) is repaired when its token is
positional (``offset``, ``startindex``, ``page``: meaningful against the client's query) and
refused with a :class:`PagingError` when it is opaque (a cursor may point into the other query).
The next link's host is never used, so the layer's headers never reach another origin.

In order of preference, a load pages by:

1. **Offsets** (``paging="auto"`` or ``"offset"``): when the first page's ``next`` link carries
   ``offset`` and the page says ``numberMatched``, every remaining page URL is known up front;
   they are fetched concurrently (a window keeps twice the host's limit outstanding) and yielded
   in completion order.
2. **Viewport split** (``paging="split"``, or ``"auto"`` when offset paging is impossible and
   the first page has a ``next`` link): the box is cut into ``split`` x ``split`` sub-boxes, each
   walks its own ``next`` links, concurrently.
3. **Sequential** (``concurrent=False`` or ``paging="next"``): follow ``rel="next"``.

**The client's box holds.** Features outside the requested box are dropped (MapServer 8 answers
a bbox with points degrees outside it), by envelope (:func:`in_boxes`).

**Every load ends.** Features are de-duplicated by id (a feature on a border matches two boxes;
so does one in both halves of an antimeridian split). A walk ends with a :class:`PagingError` in
the result, its data kept, when: a next link leads to a page URL already requested (a link to
itself, a 2-cycle); a page brings only features its walk has already received (a server that
ignores the token); pages keep bringing features past the page's ``numberMatched`` (a lying
count); or the load reaches ``max_pages`` requests (1 feature a page with ``numberMatched:
1e9``). Offsets planned from an overstated ``numberMatched`` stop at the first empty page. A ``numberMatched`` or ``numberReturned`` that is not a count is a
:class:`~mapstream.layers.errors.ParseError`.

The feature cap (``max_features``) stops planning and fetching once reached (``truncated`` in the
progress). A later page that fails is yielded with its error and an empty frame; the walk goes on.
A client-side filter (:mod:`~mapstream.layers.sources.cql`), when the layer has one, keeps the
matching rows of each page before the cap counts them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urljoin, urlsplit, urlunsplit

import geopandas as gpd

from ..errors import LayersError, PagingError, ParseError
from ..types import Bounds, FeaturePage, Progress
from .geojson import parsed_page

if TYPE_CHECKING:  # pragma: no cover
    from ..http import Fetcher
    from .cql import ClientFilter
    from .features import FeatureLayer

__all__ = [
    "PageWalk",
    "PagingError",
    "count_member",
    "encode_query",
    "follow_next",
    "next_link",
    "offset_of",
    "in_boxes",
    "page_url",
    "request_boxes",
    "split_box",
    "visit_key",
    "with_offset",
]

#: Parameters that say *which* features a request selects: a next link must not change them.
QUERY_KEYS = frozenset(
    {"bbox", "bbox-crs", "crs", "datetime", "filter", "filter-lang", "filter-crs", "properties", "sortby", "q"}
)
#: Paging tokens that count positions in the result: valid against the client's own query.
POSITIONAL_KEYS = frozenset({"offset", "startindex", "startIndex", "start", "page"})
#: Characters sent literally in a query: what GDAL sends, and what QGIS Server keeps intact.
SAFE = ",:/"


def next_link(meta: Mapping[str, Any]) -> str | None:
    """The ``rel="next"`` href of a page, if any.

    >>> next_link({"links": [{"rel": "self", "href": "a"}, {"rel": "next", "href": "b"}]})
    'b'
    """
    for link in meta.get("links") or ():
        if isinstance(link, Mapping) and link.get("rel") == "next" and link.get("href"):
            return str(link["href"])
    return None


def encode_query(query: Mapping[str, str] | Sequence[tuple[str, str]]) -> str:
    """A query string with commas, colons and slashes literal and spaces as ``%20``.

    >>> encode_query({"bbox": "-30,20,50,75", "crs": "http://x/1", "filter": "a = 'b c'"})
    'bbox=-30,20,50,75&crs=http://x/1&filter=a%20%3D%20%27b%20c%27'
    """
    items = list(query.items()) if isinstance(query, Mapping) else list(query)
    return urlencode(items, safe=SAFE, quote_via=quote)


def page_url(items_url: str, query: Mapping[str, str]) -> str:
    """``items_url`` with ``query`` (see :func:`encode_query`).

    >>> page_url("http://h/items", {"limit": "10", "offset": "20"})
    'http://h/items?limit=10&offset=20'
    """
    return f"{items_url}?{encode_query(query)}" if query else items_url


def _same_value(key: str, a: str, b: str) -> bool:
    if a == b:
        return True
    if key == "bbox":  # "-30,20,50,75" and "-30.0,20.0,50.0,75.0" are one box
        try:
            return [float(v) for v in a.split(",")] == [float(v) for v in b.split(",")]
        except ValueError:
            return False
    return a.strip() == b.strip()


def follow_next(items_url: str, client: Mapping[str, str], href: str, base: str | None = None) -> str:
    """The page URL a ``next`` link stands for: ``items_url`` with the client's query and the
    link's paging token.

    The token is every parameter of the link that the client did not send and that does not
    select features (:data:`QUERY_KEYS`). The link's host and path are not used (a server
    behind a proxy names its internal host; a hostile one, any host): the page is asked of the
    layer's own items URL.

    Raises
    ------
    PagingError
        The link names another resource (its path does not end like ``items_url``), or it
        changes the query and its token is opaque (not an offset or page number), so it may
        point into another result set.

    >>> client = {"limit": "10", "bbox": "-30,20,50,75"}
    >>> follow_next("http://h/c/items", client, "http://h/c/items?limit=10&offset=10")  # MapServer
    'http://h/c/items?limit=10&bbox=-30,20,50,75&offset=10'
    >>> follow_next("http://h/c/items", client, "/c/items?bbox=-301000C201000C501000C75&offset=10", "http://h/c/items")
    'http://h/c/items?limit=10&bbox=-30,20,50,75&offset=10'
    >>> try:  # a cursor on a query without the bbox: it may point anywhere in another result
    ...     follow_next("http://h/c/items", client, "http://h/c/items?token=abc")
    ... except PagingError as exc:
    ...     print(exc)
    the server's next link would change the query (bbox dropped) and its paging token (token) is opaque, so it cannot be repaired: http://h/c/items?token=abc
    """
    href = urljoin(base or items_url, href)
    parts = urlsplit(href)
    want = unquote(urlsplit(items_url).path).rstrip("/")
    got = unquote(parts.path).rstrip("/")
    tail = "/".join(want.split("/")[-3:])  # collections/{id}/items
    if not got.endswith(tail):
        raise PagingError(f"the server's next link names another resource ({got}, not {want}): {href}", url=href)
    link = parse_qsl(parts.query, keep_blank_values=True)
    values = dict(link)
    token = [(k, v) for k, v in link if k not in client and k not in QUERY_KEYS]
    changed = [
        f"{k} {'dropped' if k not in values else 'changed'}"
        for k, v in client.items()
        if k in QUERY_KEYS and (k not in values or not _same_value(k, v, values[k]))
    ] + [f"{k} added" for k, _ in link if k in QUERY_KEYS and k not in client]
    if changed and not any(k in POSITIONAL_KEYS for k, _ in token):
        names = ", ".join(k for k, _ in token) or "none"
        raise PagingError(
            f"the server's next link would change the query ({', '.join(changed)}) and its paging "
            f"token ({names}) is opaque, so it cannot be repaired: {href}",
            url=href,
        )
    return page_url(items_url, {**client, **dict(token)})


def with_offset(url: str, offset: int) -> str | None:
    """``url`` with its ``offset`` query parameter replaced; None when it has none.

    >>> with_offset("http://h/items?limit=10&offset=10&f=json", 30)
    'http://h/items?limit=10&offset=30&f=json'
    >>> with_offset("http://h/items?token=abc", 30) is None
    True
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(k == "offset" for k, _ in query):
        return None
    query = [(k, str(offset) if k == "offset" else v) for k, v in query]
    return urlunsplit(parts._replace(query=encode_query(query)))


def split_box(box: Bounds, n: int) -> list[Bounds]:
    """Cut a (west, south, east, north) box into ``n`` x ``n`` sub-boxes.

    >>> [tuple(b) for b in split_box((0, 0, 2, 2), 2)]
    [(0.0, 0.0, 1.0, 1.0), (1.0, 0.0, 2.0, 1.0), (0.0, 1.0, 1.0, 2.0), (1.0, 1.0, 2.0, 2.0)]
    """
    w, s, e, nn = box
    xs = [w + (e - w) * i / n for i in range(n + 1)]
    ys = [s + (nn - s) * j / n for j in range(n + 1)]
    return [
        Bounds(float(xs[i]), float(ys[j]), float(xs[i + 1]), float(ys[j + 1]))
        for j in range(n)
        for i in range(n)
    ]


def offset_of(url: str, default: int) -> int:
    """The ``offset`` query parameter of ``url``, or ``default`` when it has none.

    >>> offset_of("http://h/items?offset=20", 10), offset_of("http://h/items", 10)
    (20, 10)
    """
    for k, v in parse_qsl(urlsplit(url).query):
        if k == "offset":
            try:
                return int(v)
            except ValueError:
                break
    return default


def count_member(meta: Mapping[str, Any], key: str, url: str | None = None) -> int | None:
    """A page's ``numberMatched`` / ``numberReturned`` as an int; None when absent.

    Raises
    ------
    ParseError
        The member is there but not a non-negative whole number (``"five"``, ``-1``, ``2.5``).

    >>> count_member({"numberMatched": 10}, "numberMatched"), count_member({}, "numberMatched")
    (10, None)
    >>> try:
    ...     count_member({"numberReturned": "five"}, "numberReturned", "http://h/items")
    ... except ParseError as exc:
    ...     print(exc)
    numberReturned is 'five', not a count of features (http://h/items)
    """
    value = meta.get(key)
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if number is None or number < 0:
        raise ParseError(f"{key} is {value!r}, not a count of features", url=url)
    return number


def visit_key(url: str) -> frozenset[tuple[str, str]]:
    """What makes two page URLs the same page: their parameters in any order, ``offset=0``
    and no offset alike (a 2-cycle of next links closes on the first page either way).

    >>> visit_key("http://h/i?limit=5&offset=0") == visit_key("http://h/i?limit=5")
    True
    """
    return frozenset((k, v) for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True) if (k, v) != ("offset", "0"))


def request_boxes(queries: Sequence[Mapping[str, str]]) -> list[Bounds] | None:
    """The boxes the first requests select, in EPSG:3857 (None when a request has no bbox).

    >>> [round(v) for v in request_boxes([{"bbox": "0,0,1,1"}])[0]]
    [0, 0, 111319, 111325]
    >>> request_boxes([{"limit": "10"}]) is None
    True
    """
    from ..projection import lonlat_to_mercator

    out = []
    for q in queries:
        try:
            vals = [float(v) for v in q["bbox"].split(",")]
        except (KeyError, ValueError):
            return None
        if len(vals) == 6:  # (x0, y0, z0, x1, y1, z1)
            vals = [vals[0], vals[1], vals[3], vals[4]]
        if len(vals) != 4:
            return None
        if q.get("bbox-crs", "").rstrip("/").endswith("/3857"):
            out.append(Bounds(*vals))
        else:
            x0, y0 = lonlat_to_mercator(vals[0], vals[1])
            x1, y1 = lonlat_to_mercator(vals[2], vals[3])
            out.append(Bounds(x0, y0, x1, y1))
    return out


def in_boxes(frame: Any, boxes: Sequence[Bounds], tolerance: float = 1e-3) -> Any:
    """A boolean array: which rows' envelopes meet one of ``boxes`` (EPSG:3857, edges
    included, ``tolerance`` metres of slack); rows without a geometry count as in.

    Envelopes, not exact intersection: never drops a feature a server's exact test keeps, and
    never raises on an invalid geometry. For points (the common case) it is exact.
    """
    import numpy as np
    import shapely

    bounds = shapely.bounds(frame.geometry.to_numpy())
    minx, miny, maxx, maxy = bounds.T
    keep = np.isnan(minx)
    for w, s, e, n in boxes:
        keep |= (minx <= e + tolerance) & (maxx >= w - tolerance) & (miny <= n + tolerance) & (maxy >= s - tolerance)
    return keep


def _ids(frame: Any) -> list[Any]:
    return frame["id"].tolist() if "id" in frame.columns and len(frame) else []


@dataclass
class _Item:
    """What a producer (one offset page, or one walk of next links) hands the consumer."""

    frame: Any  # accepted rows, or None for nothing to show
    url: str
    errors: tuple[LayersError, ...] = ()
    cached: bool = False
    ended: bool = False  # the producer is done
    page: bool = True  # a page was fetched (counts in ``done``)
    failed: bool = False


class PageWalk:
    """One feature load's walk over the pages: its tasks, counters, URLs requested and ids seen.

    Parameters
    ----------
    layer
        The layer (its ``items_url``, ``limit``, ``max_features``, ``max_pages``,
        ``concurrent``, ``paging``, ``split`` and ``headers_for``).
    fetcher
        Fetches every page.
    src_crs
        CRS of the pages' coordinates (``"OGC:CRS84"``, or ``"EPSG:3857"`` when the server
        reprojects).
    dt_cols
        Properties parsed as datetimes.
    client_filter
        Rows kept from each page (a CQL2 filter evaluated here), or None.
    verify
        The filter the server was sent though it declares no Part 3 (its support was probed):
        each page is checked against it, and a row that fails proves the server ignores it
        (pygeoapi parses ``filter`` even when its provider cannot apply it). The first pages
        failing the check fail the load (a ``CapabilityError``), unless the layer allows
        client-side filtering; later ones are filtered here, with that error in the result.
    """

    def __init__(
        self,
        layer: FeatureLayer,
        fetcher: Fetcher,
        src_crs: str,
        dt_cols: tuple[str, ...],
        client_filter: ClientFilter | None = None,
        verify: ClientFilter | None = None,
    ) -> None:
        self.layer = layer
        self.verify = verify  # the server's filter, checked here (support probed, not declared)
        self.notes: list[LayersError] = []  # errors for the next page yielded
        self._planning = True  # the first pages: a failed check fails the load
        self.fetcher = fetcher
        self.src_crs = src_crs
        self.dt_cols = dt_cols
        self.client_filter = client_filter
        self.tasks: set[asyncio.Task[Any]] = set()
        self.done = 0
        self.failed = 0
        self.cached = 0
        self.features = 0  # accepted (for the cap)
        self.shown = 0  # yielded (for the progress)
        self.matched: int | None = None
        self.total: int | None = None
        self.truncated = False
        self.seen: set[Any] = set()  # ids received, for de-duplication
        self.visited: set[frozenset[tuple[str, str]]] = set()  # pages requested (visit_key)
        self.requests = 0
        self.max_pages = int(getattr(layer, "max_pages", 2000))
        self._budget_reported = False
        self._stop_offsets = False
        self.boxes: list[Bounds] | None = None  # the requested boxes (EPSG:3857), kept on the client
        self._end_offset = math.inf  # the first offset that answered no features
        self._budget_error: PagingError | None = None  # offsets cut at max_pages
        self._budget_reported_walk = False  # a walk stopped at max_pages

    async def cancel_all(self) -> None:
        """Cancel every request of the walk and wait for them to end."""
        tasks = [t for t in self.tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _get_page(self, url: str) -> tuple[Any, dict[str, Any], str, bool]:
        self.requests += 1
        resp = await self.fetcher.get(url, headers=self.layer.headers_for(url))
        frame, meta = await parsed_page(
            self.fetcher, resp.content, url=resp.url, source_crs=self.src_crs, datetime_columns=self.dt_cols
        )
        count_member(meta, "numberReturned", resp.url)  # a bad count fails the page here
        count_member(meta, "numberMatched", resp.url)
        return frame, meta, resp.url, bool(getattr(resp, "from_cache", False))

    def _progress(self, complete: bool) -> Progress:
        return Progress(
            self.done, self.total, "pages", self.shown, self.matched, self.failed, self.cached,
            self.truncated, complete, self.client_filter is not None,
        )

    def _over_budget(self, url: str) -> tuple[bool, tuple[LayersError, ...]]:
        """Whether a request now would pass ``max_pages``, and the error to report (once)."""
        if self.requests < self.max_pages:
            return False, ()
        self.truncated = True
        self._budget_reported_walk = True
        if self._budget_reported:
            return True, ()
        self._budget_reported = True
        return True, (PagingError(
            f"stopped after {self.requests} pages ({self.features} features; the server said "
            f"numberMatched={self.matched}): more pages than max_pages={self.max_pages} allows. "
            "Raise max_pages or limit, or narrow the view, to load more",
            url=url,
        ),)

    async def _accept(self, frame: Any) -> Any:
        """Keep the requested box, de-duplicate, filter on the client and apply the cap to a
        parsed page."""
        if self.boxes and len(frame):
            # MapServer 8 answers a bbox with points degrees outside it: the client's box wins.
            keep = in_boxes(frame, self.boxes)
            if not keep.all():
                frame = frame[keep]
        if self.verify is not None and self.client_filter is None and len(frame):
            frame = await self._check_server_filter(frame)
        if "id" in frame.columns and len(frame):
            keep = ~frame["id"].isin(self.seen) & ~frame["id"].duplicated()
            if not keep.all():
                frame = frame[keep.to_numpy()]
            self.seen.update(frame["id"].tolist())
        if self.client_filter is not None and len(frame):
            frame = await asyncio.to_thread(self.client_filter.apply, frame)
        room = self.layer.max_features - self.features
        if len(frame) > room:
            frame = frame.iloc[: max(0, room)]
            self.truncated = True
        self.features += len(frame)
        return frame

    async def _check_server_filter(self, frame: Any) -> Any:
        """``frame`` if every row matches the filter the server was sent; else the matching
        rows, and from now on the filter is applied here (see ``verify``).

        Raises
        ------
        CapabilityError
            The first pages do not match and the layer does not allow client-side filtering.
        """
        from .ogcapi import CONF_FILTER, CapabilityError

        verify = self.verify
        assert verify is not None
        if not verify.can_check(frame):
            return frame  # a property the page lacks (``properties=``): the rows cannot tell
        try:
            mask = await asyncio.to_thread(verify.mask, frame)
        except LayersError:
            self.verify = None  # beyond what is evaluated here: the server is trusted
            return frame
        if mask.all():
            return frame
        bad = int((~mask).sum())
        error = CapabilityError(
            f"{self.layer.url} declares no OGC API Features Part 3 filtering (conformance class "
            f"{CONF_FILTER}) and ignores filter=: {bad} of {len(frame)} features of a page do not "
            "match it. Pass client_filter=True (catalog: filter_fallback: client) to evaluate the "
            "filter on the loaded features"
        )
        if self._planning and not self.layer.client_filter:
            raise error
        if not self.layer.client_filter:
            self.notes.append(error)  # said once; the rest is filtered here
        self.client_filter, self.verify = verify, None
        return frame[mask]

    def _page(self, frame: Any, url: str, errors: tuple[LayersError, ...], complete: bool) -> FeaturePage:
        if self.notes:
            errors, self.notes = errors + tuple(self.notes), []
        self.shown += len(frame)
        return FeaturePage(frame, self._progress(complete), errors, url)

    @property
    def _capped(self) -> bool:
        return self.features >= self.layer.max_features

    async def run(self, queries: list[dict[str, str]]) -> AsyncIterator[FeaturePage]:
        """Yield every page, starting from the first requests ``queries`` (one per box).

        Raises
        ------
        FetchError, ParseError
            A first page failed: with no first page there is nothing to plan from.
        """
        layer = self.layer
        items = layer.items_url
        urls = [page_url(items, q) for q in queries]
        self.visited.update(visit_key(u) for u in urls)
        self.boxes = request_boxes(queries)
        # The first page(s) are needed to plan: their failure is the load's failure.
        results = await asyncio.gather(*(self._spawn(self._get_page(u)) for u in urls))
        offsets: list[tuple[str, int]] = []
        walkers: list[tuple[str, dict[str, str], int | None, int, set[Any]]] = []
        pages: list[tuple[Any, str, tuple[LayersError, ...]]] = []
        budget_errors: list[LayersError] = []
        filtered = self.client_filter is not None
        for query, (raw, meta, url, cached) in zip(queries, results):
            self.done += 1
            self.cached += cached
            matched = count_member(meta, "numberMatched", url)
            returned = count_member(meta, "numberReturned", url)
            if matched is not None:
                self.matched = (self.matched or 0) + matched
            raw_ids = _ids(raw)
            frame = await self._accept(raw)
            errors: tuple[LayersError, ...] = ()
            href = next_link(meta)
            nxt = None
            if href:
                try:
                    nxt = follow_next(items, query, href, base=url)
                except PagingError as exc:
                    errors = (exc,)
                if nxt is not None and visit_key(nxt) in self.visited:
                    errors = (PagingError(f"the server's next link leads back to a page already requested: {nxt}", url=nxt),)
                    nxt = None
            pages.append((frame, url, errors))
            if nxt is None:
                continue
            if self._capped:
                self.truncated = True
                continue
            step = max(1, returned or len(raw) or layer.limit)
            n_raw = len(raw)
            beyond = matched is not None and n_raw >= matched  # a next link past the count
            can_offset = matched is not None and not beyond and with_offset(nxt, 0) is not None
            if not layer.concurrent or layer.paging == "next" or beyond:
                walkers.append((nxt, query, matched, n_raw, set(raw_ids)))
            elif layer.paging in ("auto", "offset") and can_offset:
                start = offset_of(nxt, step)
                # Without a client filter the cap bounds the pages; with one it cannot (rows drop).
                end = matched if filtered else min(matched, start + layer.max_features - self.features)
                planned = range(start, end, step)
                room = max(0, self.max_pages - self.requests - len(offsets))
                if len(planned) > room:
                    planned = planned[:room]
                    # Said at the end, if the pages really went on that long (a count can lie high).
                    self._budget_error = PagingError(
                        f"numberMatched={matched} at {step} features a page needs "
                        f"{math.ceil((end - start) / step)} more pages; max_pages={self.max_pages} "
                        f"allows {room}: stopped there. Raise max_pages or limit to load more",
                        url=nxt,
                    )
                    self._budget_reported = True
                    if not room:
                        budget_errors.append(self._budget_error)
                        self.truncated = True
                for o in planned:
                    u = with_offset(nxt, o)
                    assert u is not None
                    offsets.append((u, o))
                if matched > end:
                    self.truncated = True
            elif layer.paging in ("auto", "split") and "bbox" in query:
                for sub in self._split_queries(query):
                    u = page_url(items, sub)
                    if visit_key(u) not in self.visited:
                        self.visited.add(visit_key(u))
                        walkers.append((u, sub, None, 0, set()))
            else:
                walkers.append((nxt, query, matched, n_raw, set(raw_ids)))
        for u, _ in offsets:
            self.visited.add(visit_key(u))
        for u, *_ in walkers:
            self.visited.add(visit_key(u))
        more = bool(offsets or walkers)
        if offsets and not walkers:
            self.total = self.done + len(offsets)
        elif not more:
            self.total = self.done
        elif self.matched is not None and not any(w[2] is None for w in walkers):
            per = max(1, min(layer.limit, layer.max_features))
            self.total = len(queries) + len(offsets) + max(
                0, math.ceil(min(self.matched, layer.max_features) / per) - len(queries)
            )
        self._planning = False
        for k, (frame, url, errors) in enumerate(pages):
            final = k == len(pages) - 1
            yield self._page(frame, url, errors + (tuple(budget_errors) if final else ()), final and not more)
        if more:
            async for page in self._drain(offsets, walkers):
                yield page

    def _split_queries(self, query: dict[str, str]) -> list[dict[str, str]]:
        # The bbox in whatever CRS it was sent (bbox-crs stays in the query).
        box = Bounds(*(float(v) for v in query["bbox"].split(",")))
        return [
            {**query, "bbox": ",".join(f"{v:.12g}" for v in sub)} for sub in split_box(box, self.layer.split)
        ]

    async def _walk(
        self, queue: asyncio.Queue[_Item], url: str, query: dict[str, str],
        matched: int | None, received: int, chain_ids: set[Any],
    ) -> None:
        """Follow next links from ``url`` until the chain ends; every page goes to ``queue``,
        the last one marked ``ended``."""
        items = self.layer.items_url
        last: _Item | None = None
        try:
            while True:
                if self._capped:
                    self.truncated = True
                    return
                over, errors = self._over_budget(url)
                if over:
                    last = _Item(None, url, errors, page=False) if errors else None
                    return
                try:
                    raw, meta, final, cached = await self._get_page(url)
                except LayersError as exc:
                    last = _Item(None, url, (exc,), failed=True)
                    return
                raw_ids = _ids(raw)
                if raw_ids and chain_ids.issuperset(raw_ids):
                    err = PagingError(
                        f"the server sent a page of {len(raw_ids)} features that all came before "
                        f"on this walk (it ignores its own paging token): stopped at {final}",
                        url=final,
                    )
                    last = _Item(raw.iloc[:0], final, (err,), cached)
                    return
                chain_ids.update(raw_ids)
                received += len(raw)
                if matched is None:
                    matched = count_member(meta, "numberMatched", final)
                frame = await self._accept(raw)
                if matched is not None and received > matched:
                    err = PagingError(
                        f"the server said numberMatched={matched} but keeps sending features "
                        f"({received} so far): stopped at {final}",
                        url=final,
                    )
                    self.truncated = True
                    last = _Item(frame, final, (err,), cached)
                    return
                href = next_link(meta)
                if not href:
                    last = _Item(frame, final, (), cached)
                    return
                try:
                    nxt = follow_next(items, query, href, base=final)
                except PagingError as exc:
                    last = _Item(frame, final, (exc,), cached)
                    return
                if visit_key(nxt) in self.visited:
                    err = PagingError(
                        f"the server's next link leads back to a page already requested: {nxt}", url=nxt
                    )
                    last = _Item(frame, final, (err,), cached)
                    return
                self.visited.add(visit_key(nxt))
                queue.put_nowait(_Item(frame, final, (), cached))
                url = nxt
        finally:
            _finish(queue, last, url)

    async def _one(
        self, queue: asyncio.Queue[_Item], window: asyncio.Semaphore, url: str, offset: int
    ) -> None:
        """Fetch one planned offset page (unless the walk has stopped) and hand it on."""
        last: _Item | None = None
        try:
            async with window:
                if self._capped or self._stop_offsets or offset >= self._end_offset:
                    return
                try:
                    raw, _meta, final, cached = await self._get_page(url)
                except LayersError as exc:
                    last = _Item(None, url, (exc,), failed=True)
                    return
                if not len(raw):
                    # Past the real end (an overstated numberMatched): later offsets are too.
                    self._end_offset = min(self._end_offset, offset)
                raw_ids = _ids(raw)
                if raw_ids and self.seen.issuperset(raw_ids):
                    # Every offset answering the same features: the server ignores offset.
                    report = not self._stop_offsets
                    self._stop_offsets = True
                    err = PagingError(
                        f"the page at offset {offset} repeats {len(raw_ids)} features already "
                        f"received (the server ignores offset): stopped at {final}",
                        url=final,
                    )
                    last = _Item(raw.iloc[:0], final, (err,) if report else (), cached)
                    return
                last = _Item(await self._accept(raw), final, (), cached)
        finally:
            _finish(queue, last, url)

    async def _drain(
        self,
        offsets: list[tuple[str, int]],
        walkers: list[tuple[str, dict[str, str], int | None, int, set[Any]]],
    ) -> AsyncIterator[FeaturePage]:
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        # Keep twice as many pages outstanding as the host takes at once (while half of them
        # parse, the other half fetch), not all of them: a layer with 200 pages would otherwise
        # queue them all in the fetcher ahead of every request that another layer (a
        # higher-priority one) makes to the same server.
        window = asyncio.Semaphore(2 * self.fetcher.host_limit(self.layer.items_url))
        for url, offset in offsets:
            self._spawn(self._one(queue, window, url, offset))
        for url, query, matched, received, chain_ids in walkers:
            self._spawn(self._walk(queue, url, query, matched, received, chain_ids))
        open_producers = len(offsets) + len(walkers)
        last_complete = False
        while open_producers:
            item = await queue.get()
            if item.ended:
                open_producers -= 1
            if item.frame is None and not item.errors:
                continue  # a producer that ended without a page
            if item.page:
                self.done += 1
            self.cached += item.cached
            if item.failed:
                self.failed += 1
            frame = item.frame
            if frame is None:
                frame = gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs="EPSG:3857"))
            complete = open_producers == 0
            if complete:
                self.total = self.done
                item.errors += self._budget_errors_at_end()
            elif self.total is not None and self.done >= self.total:
                self.total = None  # more pages than planned: the count is unknown
            yield self._page(frame, item.url, item.errors, complete)
            last_complete = complete
        if not last_complete:
            # The last producers ended without a page (an offset skipped at the cap, a walk
            # stopped at the cap): one empty page says the load is complete.
            self.total = self.done
            yield self._page(
                gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs="EPSG:3857")), self.layer.items_url,
                self._budget_errors_at_end(), True,
            )

    def _budget_errors_at_end(self) -> tuple[LayersError, ...]:
        """The max_pages error of planned offsets, when the pages did go on to the last one."""
        error, self._budget_error = self._budget_error, None
        if self._end_offset != math.inf and not self._capped and not self._budget_reported_walk:
            self.truncated = False  # the pages ended before the plan: the count was only high
        if error is None or self._end_offset != math.inf or self._stop_offsets or self._capped:
            return ()
        self.truncated = True
        return (error,)


def _finish(queue: asyncio.Queue[_Item], last: _Item | None, url: str) -> None:
    """Hand the consumer a producer's last item, marked ``ended`` (a bare end when it has none)."""
    if last is None:
        last = _Item(None, url, (), page=False)
    last.ended = True
    queue.put_nowait(last)
