"""OGC API Features as a map layer: paged, concurrent, streaming.

:class:`FeatureLayer` turns a viewport into ``/collections/{id}/items`` requests and yields
:class:`FeaturePage` results as they arrive. How it pages, in order of preference:

1. **Offset paging** (``paging="auto"`` or ``"offset"``): when the first page's ``next`` link
   carries an ``offset`` parameter and the page says ``numberMatched``, every remaining page URL
   is known up front; they are fetched concurrently (the fetcher's per-host limits apply) and
   yielded in completion order.
2. **Viewport split** (``paging="split"``, or ``"auto"`` when offset paging is impossible and
   the first page has a ``next`` link): the box is cut into ``split`` x ``split`` sub-boxes, each
   walks its own ``next`` links, the sub-boxes run concurrently and features are de-duplicated by
   id (a feature on a border matches two boxes).
3. **Sequential** (``concurrent=False`` or ``paging="next"``): follow ``rel="next"``.

The feature cap (``max_features``) stops planning and fetching once reached; the result then says
``truncated=True`` in its progress and ``frame.attrs``. A page that fails (after the fetcher's
retries) or cannot be parsed is reported in that page's ``errors``; the others still load.
Closing or cancelling the iterator cancels every request of the load at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import geopandas as gpd
import orjson
import pandas as pd

from . import ogcapi
from ..errors import BadInputError, LayersError
from .geojson import parse_off_loop
from ..types import Progress
from ..viewport import MAX_LAT, Viewport, lonlat_to_mercator

if TYPE_CHECKING:
    from ..http import Fetcher

__all__ = ["FeatureLayer", "FeaturePage", "bbox_params", "split_box", "with_offset", "next_link"]

ACCEPT_GEOJSON = {"Accept": "application/geo+json, application/json;q=0.9"}
Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class FeaturePage:
    """One page of a load.

    Attributes
    ----------
    frame
        GeoDataFrame in EPSG:3857 (``id``, properties, ``valid``, ``geometry``); empty for a page
        that failed.
    progress
        Pages done / planned, features so far, ``matched``, ``truncated``, ``complete``.
    errors
        The :class:`~mapstream.layers.errors.LayersError` of this page, if it failed.
    url
        The page's URL.
    """

    frame: gpd.GeoDataFrame
    progress: Progress
    errors: tuple[LayersError, ...]
    url: str


# --- pure helpers ---------------------------------------------------------------------------


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


def split_box(box: Box, n: int) -> list[Box]:
    """Cut a (west, south, east, north) box into ``n`` x ``n`` sub-boxes.

    >>> split_box((0, 0, 2, 2), 2)
    [(0.0, 0.0, 1.0, 1.0), (1.0, 0.0, 2.0, 1.0), (0.0, 1.0, 1.0, 2.0), (1.0, 1.0, 2.0, 2.0)]
    """
    w, s, e, nn = box
    xs = [w + (e - w) * i / n for i in range(n + 1)]
    ys = [s + (nn - s) * j / n for j in range(n + 1)]
    return [
        (float(xs[i]), float(ys[j]), float(xs[i + 1]), float(ys[j + 1]))
        for j in range(n)
        for i in range(n)
    ]


def lonlat_boxes(viewport: Viewport) -> list[Box]:
    """The viewport as CRS84 boxes: one, or two when it crosses the antimeridian.

    >>> lonlat_boxes(Viewport.from_lonlat((170, -10, -170, 10)))
    [(170.0, -10.0, 180.0, 10.0), (-180.0, -10.0, -170.0, 10.0)]
    """
    w, s, e, n = viewport.lonlat_bounds
    s, n = max(s, -90.0), min(n, 90.0)
    if e - w >= 360.0:
        return [(-180.0, s, 180.0, n)]
    w = (w + 180.0) % 360.0 - 180.0
    e = w + (e - viewport.lonlat_bounds[0])
    if e <= 180.0:
        return [(round(w, 9), round(s, 9), round(e, 9), round(n, 9))]
    return [(round(w, 9), round(s, 9), 180.0, round(n, 9)), (-180.0, round(s, 9), round(e - 360.0, 9), round(n, 9))]


def bbox_params(box: Box, *, mercator: bool) -> dict[str, str]:
    """Query parameters for a CRS84 box, sent in EPSG:3857 with ``bbox-crs`` when ``mercator``.

    >>> bbox_params((0, 0, 1, 1), mercator=False)
    {'bbox': '0,0,1,1'}
    >>> bbox_params((0, 0, 180, 1), mercator=True)["bbox-crs"]
    'http://www.opengis.net/def/crs/EPSG/0/3857'
    """
    if not mercator:
        return {"bbox": ",".join(f"{v:.9g}" for v in box)}
    x0, y0 = lonlat_to_mercator(box[0], box[1])
    x1, y1 = lonlat_to_mercator(box[2], box[3])
    return {"bbox": ",".join(f"{v:.10g}" for v in (x0, y0, x1, y1)), "bbox-crs": ogcapi.EPSG3857}


# --- the layer ------------------------------------------------------------------------------


class FeatureLayer:
    """Features of one OGC API collection, loaded for a viewport.

    Parameters
    ----------
    url
        The API's landing page URL.
    collection
        Collection id.
    limit
        Features per page requested (the server may return fewer).
    max_features
        The cap per load; past it the result is truncated, and says so.
    datetime
        An RFC 3339 instant or interval (``"2024-01-01T00:00:00Z/.."``).
    properties
        Property names to return (``properties=``); None for all.
    filter, filter_lang
        A CQL2 filter: text (``filter_lang`` defaults to the server's default, cql2-text) or a
        JSON-like mapping (sent as ``cql2-json``).
    params, headers
        Extra query parameters and headers for every items request.
    concurrent
        Fetch pages concurrently when the server allows it.
    name
        Display name (the collection id by default).
    paging
        ``"auto"``, ``"offset"``, ``"split"`` or ``"next"`` (see the module docstring).
    split
        Sub-boxes per side for split paging.

    Raises
    ------
    BadInputError
        A non-positive ``limit`` or ``max_features``, or an unknown ``paging``.
    """

    def __init__(
        self,
        url: str,
        collection: str,
        *,
        limit: int = 1000,
        max_features: int = 200_000,
        datetime: str | None = None,
        properties: Sequence[str] | None = None,
        filter: str | Mapping[str, Any] | None = None,
        filter_lang: str | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        concurrent: bool = True,
        name: str | None = None,
        paging: Literal["auto", "offset", "split", "next"] = "auto",
        split: int = 2,
    ) -> None:
        if limit < 1 or max_features < 1:
            raise BadInputError(f"limit and max_features must be >= 1, got {limit}, {max_features}")
        if paging not in ("auto", "offset", "split", "next"):
            raise BadInputError(f"paging must be auto, offset, split or next, got {paging!r}")
        self.url = url.rstrip("/")
        self.collection = collection
        self.limit = int(limit)
        self.max_features = int(max_features)
        self.datetime = datetime
        self.properties = tuple(properties) if properties is not None else None
        self.filter = filter
        self.filter_lang = filter_lang
        self.params = dict(params or {})
        self.headers = {**ACCEPT_GEOJSON, **(headers or {})}
        self.concurrent = concurrent
        self.name = name or collection
        self.paging = paging
        self.split = max(1, int(split))

    def __repr__(self) -> str:
        return f"FeatureLayer({self.url!r}, {self.collection!r}, limit={self.limit})"

    @property
    def items_url(self) -> str:
        return f"{self.url}/collections/{quote(self.collection, safe='')}/items"

    def query_params(self, box: Box | None, *, mercator_bbox: bool = False, crs: str | None = None) -> dict[str, str]:
        """The query of the first items request for one CRS84 box (pure).

        >>> layer = FeatureLayer("http://h", "c", limit=10, filter="n > 1", datetime="2024-01-01T00:00:00Z/..")
        >>> layer.query_params((0, 0, 1, 1))
        {'limit': '10', 'bbox': '0,0,1,1', 'datetime': '2024-01-01T00:00:00Z/..', 'filter': 'n > 1'}
        >>> FeatureLayer("http://h", "c", filter={"op": "=", "args": [{"property": "a"}, 1]}).query_params(None)["filter-lang"]
        'cql2-json'
        """
        q: dict[str, str] = {"limit": str(min(self.limit, self.max_features))}
        if box is not None:
            q.update(bbox_params(box, mercator=mercator_bbox))
        if crs is not None:
            q["crs"] = crs
        if self.datetime:
            q["datetime"] = self.datetime
        if self.properties is not None:
            q["properties"] = ",".join(self.properties)
        if self.filter is not None:
            if isinstance(self.filter, Mapping):
                q["filter"] = orjson.dumps(self.filter).decode()
                q["filter-lang"] = self.filter_lang or "cql2-json"
            else:
                q["filter"] = str(self.filter)
                if self.filter_lang:
                    q["filter-lang"] = self.filter_lang
        q.update({k: str(v) for k, v in self.params.items()})
        return q

    async def _plan(self, viewport: Viewport | None, fetcher: Fetcher) -> tuple[list[dict[str, str]], str, tuple[str, ...]]:
        """Discovery -> the first-request queries, the response CRS and datetime columns."""
        coll, conformance, queryables = await asyncio.gather(
            ogcapi.get_collection(self.url, self.collection, fetcher),
            _safe(ogcapi.get_conformance(self.url, fetcher), frozenset()),
            _safe(ogcapi.get_queryables(self.url, self.collection, fetcher), None),
        )
        part2 = ogcapi.CONF_CRS in conformance and coll.offers(ogcapi.EPSG3857)
        crs = ogcapi.EPSG3857 if part2 else None
        boxes: list[Box | None] = list(lonlat_boxes(viewport)) if viewport is not None else [None]
        # bbox-crs only where the Mercator box is exact: no antimeridian split, inside its limits
        merc = part2 and len(boxes) == 1 and boxes[0] is not None and abs(boxes[0][1]) < MAX_LAT and abs(boxes[0][3]) < MAX_LAT
        queries = [self.query_params(b, mercator_bbox=merc, crs=crs) for b in boxes]
        dt_cols = queryables.datetime_properties if queryables else ()
        if self.properties is not None:
            dt_cols = tuple(c for c in dt_cols if c in self.properties)
        return queries, ("EPSG:3857" if crs else "OGC:CRS84"), dt_cols

    async def load(self, viewport: Viewport | None, fetcher: Fetcher) -> AsyncIterator[FeaturePage]:
        """Yield the features in ``viewport`` (everything when None) page by page.

        Raises
        ------
        FetchError, ParseError
            Discovery (the collection document) failed, or the first page failed: with no first
            page there is nothing to plan from. Later page failures are reported in
            :attr:`FeaturePage.errors`, never raised.
        """
        queries, src_crs, dt_cols = await self._plan(viewport, fetcher)
        walk = _Walk(self, fetcher, src_crs, dt_cols)
        try:
            async for page in walk.run(queries):
                yield page
        finally:
            await walk.cancel_all()

    async def fetch(self, viewport: Viewport | None, fetcher: Fetcher) -> gpd.GeoDataFrame:
        """The whole result of :meth:`load` as one GeoDataFrame.

        ``frame.attrs`` holds ``truncated`` (bool), ``matched`` (int or None), ``errors`` (list
        of LayersError) and ``pages``.

        Raises
        ------
        FetchError, ParseError
            As :meth:`load`.
        """
        frames, errors, last = [], [], None
        async for page in self.load(viewport, fetcher):
            if len(page.frame):
                frames.append(page.frame)
            errors.extend(page.errors)
            last = page.progress
        if frames:
            frame = await asyncio.to_thread(_concat, frames)  # 100k rows: not on the loop
        else:
            frame = gpd.GeoDataFrame({"valid": pd.Series(dtype=bool)}, geometry=gpd.GeoSeries([], crs="EPSG:3857"))
        frame.attrs.update(
            truncated=bool(last and last.truncated),
            matched=last.matched if last else None,
            errors=errors,
            pages=last.done if last else 0,
        )
        return frame

    async def features_at(
        self, lon: float, lat: float, fetcher: Fetcher, *, radius_m: float = 50.0
    ) -> gpd.GeoDataFrame:
        """Features within about ``radius_m`` metres of a point (click-inspect).

        Raises
        ------
        FetchError, ParseError
            As :meth:`load`.
        """
        import shapely

        x, y = lonlat_to_mercator(lon, lat)
        scale = 1.0 / max(math.cos(math.radians(max(-MAX_LAT, min(MAX_LAT, lat)))), 1e-6)
        r = radius_m * scale  # Mercator metres are stretched by 1/cos(lat)
        vp = Viewport.create((x - r, x + r), (y - r, y + r), 1, 1)
        frame = await self.fetch(vp, fetcher)
        if len(frame):
            frame = frame[frame.geometry.dwithin(shapely.Point(x, y), r).to_numpy()]
        return frame

    async def prefetch(self, viewport: Viewport | None, fetcher: Fetcher) -> Progress | None:
        """Walk every page of ``viewport`` through the fetcher (warms its disk cache).

        Returns the final progress. Raises as :meth:`load`.
        """
        last = None
        async for page in self.load(viewport, fetcher):
            last = page.progress
        return last


async def _safe(coro: Any, default: Any) -> Any:
    try:
        return await coro
    except LayersError:
        return default


class _Walk:
    """The state of one load: tasks, counters, seen ids."""

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
                start = _offset_of(nxt, step)
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
        box = tuple(float(v) for v in query["bbox"].split(","))
        out = []
        for sub in split_box(box, self.layer.split):  # type: ignore[arg-type]
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


def _concat(frames: list[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs="EPSG:3857")


async def parsed_page(
    fetcher: Any,
    content: bytes,
    *,
    url: str,
    source_crs: str,
    datetime_columns: Sequence[str] = (),
) -> tuple[Any, dict[str, Any]]:
    """A page parsed once per process: kept in ``fetcher.memory`` by the hash of its bytes.

    Loading the same view again (the browser reporting the plot's real size, a second session,
    a pan back) then costs a disk-cache read and a hash, not a parse: a page of 5 000 points
    takes about 30 ms to parse and 1 ms to hash. Callers must not modify the frame in place.

    Raises
    ------
    ParseError
        As :func:`~mapstream.layers.sources.geojson.parse_off_loop`.
    """
    memory = getattr(fetcher, "memory", None)
    digest = hashlib.blake2b(content, digest_size=16).digest()
    key = ("geojson-page", digest, source_crs, tuple(datetime_columns))
    hit = memory.get(key) if memory is not None else None
    if hit is not None:
        return hit[0], dict(hit[1])
    frame, meta = await parse_off_loop(content, url=url, source_crs=source_crs, datetime_columns=datetime_columns)
    if memory is not None:
        memory.put(key, (frame, dict(meta)), len(content))
    return frame, meta


def _offset_of(url: str, default: int) -> int:
    for k, v in parse_qsl(urlsplit(url).query):
        if k == "offset":
            try:
                return int(v)
            except ValueError:
                break
    return default
