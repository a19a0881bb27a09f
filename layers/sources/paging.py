"""How a feature load pages: next links, offset paging, sub-box splitting and de-duplication.

:class:`PageWalk` is one load's walk over an OGC API items endpoint, given the first request(s)
of :class:`~mapstream.layers.sources.features.FeatureLayer`. In order of preference:

1. **Offset paging** (``paging="auto"`` or ``"offset"``): when the first page's ``next`` link
   carries an ``offset`` parameter and the page says ``numberMatched``, every remaining page URL
   is known up front; they are fetched concurrently (the fetcher's per-host limits apply, and a
   window keeps twice the host's limit outstanding) and yielded in completion order.
2. **Viewport split** (``paging="split"``, or ``"auto"`` when offset paging is impossible and
   the first page has a ``next`` link): the box is cut into ``split`` x ``split`` sub-boxes, each
   walks its own ``next`` links, the sub-boxes run concurrently and features are de-duplicated by
   id (a feature on a border matches two boxes; so does one in both halves of an antimeridian
   split).
3. **Sequential** (``concurrent=False`` or ``paging="next"``): follow ``rel="next"``.

The feature cap (``max_features``) stops planning and fetching once reached (``truncated`` in the
progress). A later page that fails is yielded with its error and an empty frame; the walk goes on.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import geopandas as gpd

from ..errors import LayersError
from ..types import Bounds, FeaturePage, Progress
from .geojson import parsed_page

if TYPE_CHECKING:  # pragma: no cover
    from ..http import Fetcher
    from .features import FeatureLayer

__all__ = ["PageWalk", "next_link", "offset_of", "split_box", "with_offset"]


def next_link(meta: Mapping[str, Any]) -> str | None:
    """The ``rel="next"`` href of a page, if any.

    >>> next_link({"links": [{"rel": "self", "href": "a"}, {"rel": "next", "href": "b"}]})
    'b'
    """
    for link in meta.get("links") or ():
        if isinstance(link, Mapping) and link.get("rel") == "next" and link.get("href"):
            return str(link["href"])
    return None


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
    return urlunsplit(parts._replace(query=urlencode(query, safe=",:/")))


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


class PageWalk:
    """One feature load's walk over the pages: its tasks, counters and the ids seen.

    Parameters
    ----------
    layer
        The layer (its ``items_url``, ``headers``, ``limit``, ``max_features``, ``concurrent``,
        ``paging`` and ``split``).
    fetcher
        Fetches every page.
    src_crs
        CRS of the pages' coordinates (``"OGC:CRS84"``, or ``"EPSG:3857"`` when the server
        reprojects).
    dt_cols
        Properties parsed as datetimes.
    """

    def __init__(self, layer: FeatureLayer, fetcher: Fetcher, src_crs: str, dt_cols: tuple[str, ...]) -> None:
        self.layer = layer
        self.fetcher = fetcher
        self.src_crs = src_crs
        self.dt_cols = dt_cols
        self.tasks: set[asyncio.Task[Any]] = set()
        self.done = 0
        self.failed = 0
        self.cached = 0
        self.features = 0
        self.matched: int | None = None
        self.total: int | None = None
        self.truncated = False
        self.seen: set[Any] | None = None  # ids, when de-duplicating

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

    async def _get_page(self, url: str, params: Mapping[str, str] | None) -> tuple[Any, dict[str, Any], str, bool]:
        resp = await self.fetcher.get(url, params=params, headers=self.layer.headers)
        frame, meta = await parsed_page(
            self.fetcher, resp.content, url=resp.url, source_crs=self.src_crs, datetime_columns=self.dt_cols
        )
        return frame, meta, resp.url, bool(getattr(resp, "from_cache", False))

    def _progress(self, complete: bool) -> Progress:
        return Progress(
            self.done, self.total, "pages", self.features, self.matched, self.failed, self.cached,
            self.truncated, complete,
        )

    def _accept(self, frame: Any) -> Any:
        """De-duplicate and apply the cap to a parsed page."""
        if self.seen is not None and "id" in frame.columns and len(frame):
            keep = ~frame["id"].isin(self.seen) & ~frame["id"].duplicated()
            frame = frame[keep.to_numpy()]
            self.seen.update(frame["id"].tolist())
        room = self.layer.max_features - self.features
        if len(frame) > room:
            frame = frame.iloc[:room]
            self.truncated = True
        self.features += len(frame)
        return frame

    def _page(self, frame: Any, url: str, errors: tuple[LayersError, ...], complete: bool) -> FeaturePage:
        return FeaturePage(frame, self._progress(complete), errors, url)

    async def run(self, queries: list[dict[str, str]]) -> AsyncIterator[FeaturePage]:
        """Yield every page, starting from the first requests ``queries`` (one per box).

        Raises
        ------
        FetchError, ParseError
            A first page failed: with no first page there is nothing to plan from.
        """
        layer = self.layer
        if len(queries) > 1:  # antimeridian: two boxes, ids may repeat
            self.seen = set()
        firsts = [self._spawn(self._get_page(layer.items_url, q)) for q in queries]
        # The first page(s) are needed to plan: their failure is the load's failure.
        results = await asyncio.gather(*firsts)
        walkers: list[str] = []
        offset_urls: list[str] = []
        pages: list[tuple[Any, str]] = []
        for i, (frame, meta, url, cached) in enumerate(results):
            self.done += 1
            self.cached += cached
            if isinstance(meta.get("numberMatched"), int):
                self.matched = (self.matched or 0) + meta["numberMatched"]
            nxt = next_link(meta)
            frame = self._accept(frame)
            pages.append((frame, url))
            if not nxt:
                continue
            if self.features >= layer.max_features:
                self.truncated = True
                continue
            matched = meta.get("numberMatched")
            step = max(1, int(meta.get("numberReturned") or len(frame) or layer.limit))
            can_offset = isinstance(matched, int) and with_offset(nxt, 0) is not None
            if not layer.concurrent or layer.paging == "next":
                walkers.append(nxt)
            elif layer.paging in ("auto", "offset") and can_offset:
                start = offset_of(nxt, step)
                end = min(matched, start + layer.max_features - self.features)
                offset_urls.extend(with_offset(nxt, o) for o in range(start, end, step))  # type: ignore[misc]
                if matched > end:
                    self.truncated = True
            elif layer.paging in ("auto", "split") and "bbox" in queries[i]:
                walkers.extend(self._split_urls(queries[i]))
                if self.seen is None:
                    self.seen = set(frame["id"].tolist()) if "id" in frame.columns else set()
            else:
                walkers.append(nxt)
        if offset_urls and not walkers:
            self.total = self.done + len(offset_urls)
        elif not offset_urls and not walkers:
            self.total = self.done
        elif self.matched is not None and self.seen is None:
            per = max(1, min(layer.limit, layer.max_features))
            self.total = len(queries) + len(offset_urls) + max(0, math.ceil(min(self.matched, layer.max_features) / per) - len(queries))
        more = bool(offset_urls or walkers)
        for k, (frame, url) in enumerate(pages):
            yield self._page(frame, url, (), not more and k == len(pages) - 1)
        if more:
            async for page in self._drain(offset_urls, walkers):
                yield page

    def _split_urls(self, query: dict[str, str]) -> list[str]:
        # The bbox in whatever CRS it was sent (bbox-crs stays in the query).
        box = Bounds(*(float(v) for v in query["bbox"].split(",")))
        out = []
        for sub in split_box(box, self.layer.split):
            q = {**query, "bbox": ",".join(f"{v:.12g}" for v in sub)}
            out.append(f"{self.layer.items_url}?{urlencode(q, safe=',:/')}")
        return out

    async def _drain(self, offset_urls: list[str], walkers: list[str]) -> AsyncIterator[FeaturePage]:
        # (is_walker, frame | None, url, errors, from_cache, chain_ended)
        queue: asyncio.Queue[tuple[bool, Any, str, tuple[LayersError, ...], bool, bool]] = asyncio.Queue()
        cap = self.layer.max_features

        async def one(url: str) -> None:
            try:
                frame, _meta, final, cached = await self._get_page(url, None)
            except LayersError as exc:
                queue.put_nowait((False, None, url, (exc,), False, True))
            else:
                queue.put_nowait((False, frame, final, (), cached, True))

        async def walk(url: str) -> None:
            while True:
                try:
                    frame, meta, final, cached = await self._get_page(url, None)
                except LayersError as exc:
                    queue.put_nowait((True, None, url, (exc,), False, True))
                    return
                nxt = next_link(meta)
                capped = self.features + len(frame) >= cap
                if nxt and capped:
                    self.truncated = True
                queue.put_nowait((True, frame, final, (), cached, nxt is None or capped))
                if nxt is None or capped:
                    return
                url = nxt

        # Keep twice as many pages outstanding as the host takes at once (while half of them
        # parse, the other half fetch), not all of them: a layer with 200 pages would otherwise
        # queue them all in the fetcher ahead of every request that another layer (a
        # higher-priority one) makes to the same server.
        window = asyncio.Semaphore(2 * self.fetcher.host_limit(self.layer.items_url))

        async def windowed(url: str) -> None:
            async with window:
                await one(url)

        for url in offset_urls:
            self._spawn(windowed(url))
        for url in walkers:
            self._spawn(walk(url))
        left_offsets, left_walkers = len(offset_urls), len(walkers)
        while left_offsets or left_walkers:
            is_walker, frame, url, errors, cached, ended = await queue.get()
            if not is_walker:
                left_offsets -= 1
            elif ended:
                left_walkers -= 1
            self.done += 1
            self.cached += cached
            if errors:
                self.failed += 1
                frame = gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs="EPSG:3857"))
            else:
                frame = self._accept(frame)
            complete = not (left_offsets or left_walkers)
            if complete or (self.total is not None and self.done > self.total):
                self.total = self.done if complete else None
            yield self._page(frame, url, errors, complete)

