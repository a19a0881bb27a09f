"""OGC API Features as a map layer: paged, concurrent, streaming.

:class:`FeatureLayer` turns a viewport into ``/collections/{id}/items`` requests (the CRS84
boxes of the view, ``bbox-crs``/``crs`` when the server offers EPSG:3857, ``datetime``,
``properties``, a CQL2 ``filter``) and yields :class:`~mapstream.layers.types.FeaturePage`
results as they arrive; how it pages (offsets, sub-boxes, ``next`` links, the cap) is
:mod:`~mapstream.layers.sources.paging`'s, discovery :mod:`~mapstream.layers.sources.ogcapi`'s
and parsing :mod:`~mapstream.layers.sources.geojson`'s.

Capabilities are checked before they are used: a ``filter`` needs OGC API Features Part 3 (and
the filter language among those declared; a server that declares nothing is probed once, see
:func:`~mapstream.layers.sources.ogcapi.probe_filter`), ``crs``/``bbox-crs`` need Part 2, and a
``datetime`` needs a collection that declares time (a temporal extent or a date-time
queryable). A request the server cannot answer is a
:class:`~mapstream.layers.sources.ogcapi.CapabilityError` naming the server and the missing
conformance class, unless the layer was asked to filter on the client (``client_filter=True``):
then the CQL2 filter is evaluated on the loaded pages (:mod:`~mapstream.layers.sources.cql`) and
every progress says ``client_filtered=True``.

The layer's ``headers`` (credentials) go only to its own origin: page URLs are built on the
layer's items URL (:mod:`~mapstream.layers.sources.paging`), and :meth:`FeatureLayer.headers_for`
gives any other origin no more than the ``Accept`` header.

The feature cap (``max_features``) stops planning and fetching once reached; the result then says
``truncated=True`` in its progress. A page that fails (after the fetcher's retries) or cannot be
parsed is reported in that page's ``errors`` (and in :attr:`FeatureResult.errors
<mapstream.layers.types.FeatureResult.errors>`), never in ``frame.attrs``; the others still load.
Closing or cancelling the iterator cancels every request of the load at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

import geopandas as gpd
import orjson
import pandas as pd

from ..errors import BadInputError, LayersError
from ..projection import MAX_LAT, lonlat_to_mercator, mercator_scale
from ..types import Bounds, FeaturePage, FeatureResult, Progress, QueryResult
from ..viewport import Viewport
from . import ogcapi, register
from .cql import ClientFilter, filter_language
from .ogcapi import CapabilityError
from .paging import PageWalk

if TYPE_CHECKING:  # pragma: no cover
    from ..catalog import LayerSpec
    from ..http import Fetcher

__all__ = ["FeatureLayer", "bbox_params", "lonlat_boxes"]

ACCEPT_GEOJSON = {"Accept": "application/geo+json, application/json;q=0.9"}


def lonlat_boxes(viewport: Viewport) -> list[Bounds]:
    """The viewport as CRS84 boxes: one, or two when it crosses the antimeridian.

    >>> [tuple(b) for b in lonlat_boxes(Viewport.from_lonlat((170, -10, -170, 10)))]
    [(170.0, -10.0, 180.0, 10.0), (-180.0, -10.0, -170.0, 10.0)]
    """
    w, s, e, n = viewport.lonlat_bounds
    s, n = max(s, -90.0), min(n, 90.0)
    if e - w >= 360.0:
        return [Bounds(-180.0, s, 180.0, n)]
    w = (w + 180.0) % 360.0 - 180.0
    e = w + (e - viewport.lonlat_bounds[0])
    if e <= 180.0:
        return [Bounds(round(w, 9), round(s, 9), round(e, 9), round(n, 9))]
    return [
        Bounds(round(w, 9), round(s, 9), 180.0, round(n, 9)),
        Bounds(-180.0, round(s, 9), round(e - 360.0, 9), round(n, 9)),
    ]


def bbox_params(box: Bounds, *, mercator: bool) -> dict[str, str]:
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



@register
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
        ``"auto"``, ``"offset"``, ``"split"`` or ``"next"`` (see
        :mod:`~mapstream.layers.sources.paging`).
    split
        Sub-boxes per side for split paging.
    client_filter
        When the server cannot filter (no Part 3, or not in the filter's language), load the
        unfiltered features and evaluate the CQL2 ``filter`` here instead of failing. The
        whole view is then downloaded; the progress says ``client_filtered=True``.
    max_pages
        The most page requests one load makes; a server that pages on past it (one feature a
        page, a lying ``numberMatched``) ends the load with a ``PagingError`` in its errors.

    Raises
    ------
    BadInputError
        A non-positive ``limit``, ``max_features`` or ``max_pages``, an unknown ``paging``, or
        a ``filter`` that is not valid CQL2 (checked here when ``client_filter`` is set).
    """

    kind: ClassVar[str] = "features"
    attribution: str | None = None

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
        client_filter: bool = False,
        max_pages: int = 2000,
    ) -> None:
        if limit < 1 or max_features < 1 or max_pages < 1:
            raise BadInputError(
                f"limit, max_features and max_pages must be >= 1, got {limit}, {max_features}, {max_pages}"
            )
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
        self.client_filter = bool(client_filter)
        self.max_pages = int(max_pages)
        # Parsed now, so a bad filter fails at construction, not after the first pages.
        self._client_filter = (
            ClientFilter(filter, filter_lang) if client_filter and filter is not None else None
        )
        self.concurrent = concurrent
        self.name = name or collection
        self.paging = paging
        self.split = max(1, int(split))

    def __repr__(self) -> str:
        return f"FeatureLayer({self.url!r}, {self.collection!r}, limit={self.limit})"

    @classmethod
    def from_spec(cls, spec: LayerSpec, url: str | None, **zooms: int) -> FeatureLayer:
        """The layer a catalog entry describes (``url``, ``collection``, ``page_size``,
        ``max_features``, ``filter``, ``filter_lang``, ``filter_fallback``); feature layers load
        at every zoom, so ``zooms`` are not used.

        Raises
        ------
        BadInputError
            As the constructor.
        """
        layer = cls(
            url or "",
            spec.collection or "",
            limit=spec.page_size,
            max_features=spec.max_features,
            name=spec.name,
            filter=getattr(spec, "filter", None),
            filter_lang=getattr(spec, "filter_lang", None),
            client_filter=getattr(spec, "filter_fallback", "error") == "client",
        )
        layer.attribution = spec.attribution or None
        return layer

    def request_prefixes(self) -> list[str]:
        """The API's URL, the prefix the catalog gives limits and headers.

        >>> FeatureLayer("https://f.test/api/", "c").request_prefixes()
        ['https://f.test/api/']
        """
        return [self.url + "/"]

    @property
    def items_url(self) -> str:
        return f"{self.url}/collections/{quote(self.collection, safe='')}/items"

    def _own_headers(self) -> dict[str, str]:
        """The headers given to the layer, without its ``Accept`` (discovery asks for JSON)."""
        return {k: v for k, v in self.headers.items() if k.lower() != "accept"}

    def headers_for(self, url: str) -> dict[str, str]:
        """The headers a request to ``url`` carries: all of the layer's on its own origin, only
        ``Accept`` elsewhere (credentials are bound to the origin they were given for, as the
        catalog binds them to the layer's URL prefix).

        >>> layer = FeatureLayer("https://f.test/api", "c", headers={"Authorization": "Bearer s"})
        >>> "Authorization" in layer.headers_for("https://f.test/api/collections/c/items?offset=10")
        True
        >>> layer.headers_for("https://elsewhere.test/collections/c/items")
        {'Accept': 'application/geo+json, application/json;q=0.9'}
        """
        if _origin(url) == _origin(self.url):
            return dict(self.headers)
        return {k: v for k, v in self.headers.items() if k.lower() == "accept"}

    def query_params(
        self, box: Bounds | None, *, mercator_bbox: bool = False, crs: str | None = None, send_filter: bool = True
    ) -> dict[str, str]:
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
        if self.filter is not None and send_filter:
            if isinstance(self.filter, Mapping):
                q["filter"] = orjson.dumps(self.filter).decode()
                q["filter-lang"] = self.filter_lang or "cql2-json"
            else:
                q["filter"] = str(self.filter)
                if self.filter_lang:
                    q["filter-lang"] = self.filter_lang
        q.update({k: str(v) for k, v in self.params.items()})
        return q

    async def _plan(
        self, viewport: Viewport | None, fetcher: Fetcher
    ) -> tuple[list[dict[str, str]], str, tuple[str, ...], ClientFilter | None, ClientFilter | None]:
        """Discovery and capability checks -> the first-request queries, the response CRS, the
        datetime columns, the client-side filter (None when the server filters) and the filter
        to check the server's pages against (when its support was probed, not declared).

        Raises
        ------
        CapabilityError
            The server cannot answer the request as asked (see the module).
        """
        auth = self._own_headers()  # the layer's headers go with its discovery too
        coll, conformance, queryables = await asyncio.gather(
            ogcapi.get_collection(self.url, self.collection, fetcher, auth),
            _safe(ogcapi.get_conformance(self.url, fetcher, auth), frozenset()),
            _safe(ogcapi.get_queryables(self.url, self.collection, fetcher, auth), None),
        )
        has_part2 = ogcapi.CONF_CRS in conformance
        if not has_part2 and ({"crs", "bbox-crs"} & set(self.params)):
            raise CapabilityError(
                f"{self.url} does not declare OGC API Features Part 2 ({ogcapi.CONF_CRS}): "
                "crs and bbox-crs cannot be sent to it"
            )
        part2 = has_part2 and coll.offers(ogcapi.EPSG3857)
        crs = ogcapi.EPSG3857 if part2 else None
        if self.datetime and coll.temporal is None and not (queryables and queryables.datetime_properties):
            # Nothing says the features have a time: a server would ignore datetime= or fail.
            raise CapabilityError(
                f"collection {self.collection!r} of {self.url} declares no temporal extent and "
                "no date-time queryable: the server cannot select by datetime"
            )
        client, probed = await self._filter_plan(conformance, fetcher)
        boxes: list[Bounds | None] = list(lonlat_boxes(viewport)) if viewport is not None else [None]
        # bbox-crs only where the Mercator box is exact: no antimeridian split, inside its limits
        merc = part2 and len(boxes) == 1 and boxes[0] is not None and abs(boxes[0][1]) < MAX_LAT and abs(boxes[0][3]) < MAX_LAT
        queries = [self.query_params(b, mercator_bbox=merc, crs=crs, send_filter=client is None) for b in boxes]
        verify = None
        if probed:  # a server without Part 3 (pygeoapi) takes CQL text, and refuses filter-lang
            queries = [{k: v for k, v in q.items() if k != "filter-lang"} for q in queries]
            try:  # ... but its provider may ignore it: its pages are checked (paging.PageWalk)
                verify = ClientFilter(self.filter, self.filter_lang)  # type: ignore[arg-type]
            except BadInputError:
                verify = None  # a filter the server parses and we cannot: it is trusted
        dt_cols = queryables.datetime_properties if queryables else ()
        if self.properties is not None:
            dt_cols = tuple(c for c in dt_cols if c in self.properties)
        return queries, ("EPSG:3857" if crs else "OGC:CRS84"), dt_cols, client, verify

    async def _filter_plan(
        self, conformance: frozenset[str], fetcher: Fetcher
    ) -> tuple[ClientFilter | None, bool]:
        """(None when the server filters or there is no filter, else the client-side filter when
        the server cannot and ``client_filter`` is set; whether the server's support was found
        by :func:`~mapstream.layers.sources.ogcapi.probe_filter` rather than declared).

        Raises
        ------
        CapabilityError
            The server cannot filter in the filter's language and ``client_filter`` is not set.
        """
        if self.filter is None:
            return None, False
        lang = filter_language(self.filter, self.filter_lang)
        langs = ogcapi.filter_languages(conformance)
        missing = ogcapi.CONF_FILTER
        probed = False
        if langs is None and lang == "cql2-text":
            # pygeoapi 0.21 filters in CQL2 text but declares no Part 3: ask it.
            if await ogcapi.probe_filter(self.url, self.collection, fetcher, self._own_headers()):
                langs, probed = frozenset({"cql2-text"}), True
        if langs is not None and lang not in langs:
            missing = ogcapi.CONF_CQL2_JSON if lang == "cql2-json" else ogcapi.CONF_CQL2_TEXT
        elif langs is not None:
            return None, probed
        if self.client_filter:
            if self._client_filter is None or self._client_filter.source != (self.filter, self.filter_lang):
                self._client_filter = ClientFilter(self.filter, self.filter_lang)  # set after construction
            return self._client_filter, False
        what = (
            "OGC API Features Part 3 filtering" if missing == ogcapi.CONF_FILTER else f"{lang} filters"
        )
        raise CapabilityError(
            f"{self.url} does not declare {what} (conformance class {missing}): it would ignore "
            f"filter= and return unfiltered features. Pass client_filter=True (catalog: "
            "filter_fallback: client) to evaluate the filter on the loaded features"
        )

    async def load(self, viewport: Viewport | None, fetcher: Fetcher) -> AsyncIterator[FeaturePage]:
        """Yield the features in ``viewport`` (everything when None) page by page.

        Raises
        ------
        FetchError, ParseError
            Discovery (the collection document) failed, or the first page failed: with no first
            page there is nothing to plan from. Later page failures, and paging that cannot go
            on (a loop, repeated pages, a lying count, ``max_pages``: a ``PagingError``), are
            reported in :attr:`FeaturePage.errors <mapstream.layers.types.FeaturePage.errors>`,
            never raised.
        CapabilityError
            The server cannot answer the request as asked (a filter without Part 3 and without
            ``client_filter``, ...).
        """
        queries, src_crs, dt_cols, client, verify = await self._plan(viewport, fetcher)
        walk = PageWalk(self, fetcher, src_crs, dt_cols, client, verify)
        try:
            async for page in walk.run(queries):
                yield page
        finally:
            await walk.cancel_all()

    async def fetch(self, viewport: Viewport | None, fetcher: Fetcher) -> FeatureResult:
        """The whole result of :meth:`load`: one GeoDataFrame, the final progress, the errors.

        The progress says ``truncated``, ``matched`` and the pages loaded (``done``); the
        errors are those of the pages that failed. ``frame.attrs`` stays empty.

        Raises
        ------
        FetchError, ParseError
            As :meth:`load`.
        """
        frames, errors = [], []
        last = Progress(0, 0, "pages", complete=True)
        async for page in self.load(viewport, fetcher):
            if len(page.frame):
                frames.append(page.frame)
            errors.extend(page.errors)
            last = page.progress
        if frames:
            frame = await asyncio.to_thread(_concat, frames)  # 100k rows: not on the loop
        else:
            frame = gpd.GeoDataFrame({"valid": pd.Series(dtype=bool)}, geometry=gpd.GeoSeries([], crs="EPSG:3857"))
        return FeatureResult(frame, last, tuple(errors))

    async def query(
        self, lon: float, lat: float, fetcher: Fetcher, *, radius_m: float = 50.0
    ) -> QueryResult:
        """The properties of the features within about ``radius_m`` metres of a point.

        One row per feature (its ``id`` and properties; no geometry), for click-inspect.

        Raises
        ------
        FetchError, ParseError
            As :meth:`load`.
        """
        import shapely

        x, y = lonlat_to_mercator(lon, lat)
        r = radius_m * mercator_scale(lat)  # Mercator metres are stretched by 1/cos(lat)
        vp = Viewport.create((x - r, x + r), (y - r, y + r), 1, 1)
        frame = (await self.fetch(vp, fetcher)).frame
        if not len(frame):
            return []
        near = frame[frame.geometry.dwithin(shapely.Point(x, y), r).to_numpy()]
        return near.drop(columns="geometry").to_dict("records")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


async def _safe(coro: Any, default: Any) -> Any:
    try:
        return await coro
    except LayersError:
        return default


def _concat(frames: list[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs="EPSG:3857")
