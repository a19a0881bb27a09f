"""OGC API Features as a map layer: paged, concurrent, streaming.

:class:`FeatureLayer` turns a viewport into ``/collections/{id}/items`` requests (the CRS84
boxes of the view, ``bbox-crs``/``crs`` when the server offers EPSG:3857, ``datetime``,
``properties``, a CQL2 ``filter``) and yields :class:`~mapstream.layers.types.FeaturePage`
results as they arrive; how it pages (offsets, sub-boxes, ``next`` links, the cap) is
:mod:`~mapstream.layers.sources.paging`'s, discovery :mod:`~mapstream.layers.sources.ogcapi`'s
and parsing :mod:`~mapstream.layers.sources.geojson`'s.

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
from urllib.parse import quote

import geopandas as gpd
import orjson
import pandas as pd

from ..errors import BadInputError, LayersError
from ..projection import MAX_LAT, lonlat_to_mercator, mercator_scale
from ..types import Bounds, FeaturePage, FeatureResult, Progress, QueryResult
from ..viewport import Viewport
from . import ogcapi, register
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

    Raises
    ------
    BadInputError
        A non-positive ``limit`` or ``max_features``, or an unknown ``paging``.
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

    @classmethod
    def from_spec(cls, spec: LayerSpec, url: str | None, **zooms: int) -> FeatureLayer:
        """The layer a catalog entry describes (``url``, ``collection``, ``page_size``,
        ``max_features``); feature layers load at every zoom, so ``zooms`` are not used.

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

    def query_params(self, box: Bounds | None, *, mercator_bbox: bool = False, crs: str | None = None) -> dict[str, str]:
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
        boxes: list[Bounds | None] = list(lonlat_boxes(viewport)) if viewport is not None else [None]
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
            :attr:`FeaturePage.errors <mapstream.layers.types.FeaturePage.errors>`, never raised.
        """
        queries, src_crs, dt_cols = await self._plan(viewport, fetcher)
        walk = PageWalk(self, fetcher, src_crs, dt_cols)
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


async def _safe(coro: Any, default: Any) -> Any:
    try:
        return await coro
    except LayersError:
        return default


def _concat(frames: list[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs="EPSG:3857")
