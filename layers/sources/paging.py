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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import geopandas as gpd

from ..errors import LayersError, PagingError
from ..types import Bounds, FeaturePage, Progress
from .geojson import parsed_page
from .pagequery import (
    count_member,
    frame_ids,
    encode_query,
    follow_next,
    in_boxes,
    next_link,
    offset_of,
    page_url,
    request_boxes,
    split_box,
    visit_key,
    with_offset,
)

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
            raw_ids = frame_ids(raw)
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
                raw_ids = frame_ids(raw)
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
                raw_ids = frame_ids(raw)
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
