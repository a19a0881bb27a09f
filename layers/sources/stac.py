"""STAC API catalogs as a layer: items searched for the view, their COGs mosaicked.

:class:`STACLayer` (``kind="stac"``) searches one or several STAC APIs (item search,
:mod:`~mapstream.layers.sources.stacapi`) for the items over a box: every catalog and every
collection at once (one walk each, pages followed by their ``next`` links), each item once
(de-duplicated by ``(collection, id)``). Then:

- :meth:`STACLayer.search` returns an :class:`ItemSearch`: one row per item (footprint in
  ``OGC:CRS84``, ``id``, ``collection``, ``datetime``, the ``asset``'s ``href``, every asset
  href as JSON), the progress and the errors of the catalogs that failed (the others' items are
  kept);
- :meth:`STACLayer.fetch` mosaics the items' ``asset`` COGs over the view with
  :class:`~mapstream.layers.sources.cog.COGLayer` (newest item first: first-valid);
- :meth:`STACLayer.load` yields the footprints first (their outlines, a
  :class:`~mapstream.layers.types.FeaturePage` in EPSG:3857, not complete), then the mosaic's
  :class:`~mapstream.layers.types.Mosaic` frames as its tiles arrive (the app draws the
  outlines over each mosaic).

``datetime`` is an attribute: the app's date filter sets it and reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import geopandas as gpd
import orjson
import pandas as pd
import shapely

from ..errors import BadInputError, LayersError
from ..http.urls import http_urls
from ..projection import lonlat_to_mercator, mercator_scale
from ..types import FeaturePage, Mosaic, Progress, QueryResult
from ..viewport import Viewport
from . import register
from .features import lonlat_boxes
from .stacapi import first_request, iter_pages, search_endpoint

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

    from ..catalog import LayerSpec
    from ..http import Fetcher

__all__ = ["COLUMNS", "ItemSearch", "STACLayer", "items_frame"]

#: Columns of a search's frame, in order (``geometry`` last).
COLUMNS = ("id", "collection", "datetime", "catalog", "href", "assets", "self_href")


@dataclass(frozen=True, slots=True)
class ItemSearch:
    """The items a STAC search found.

    Attributes
    ----------
    frame
        GeoDataFrame in ``OGC:CRS84`` (EPSG:4326 axis order): one row per item, columns
        :data:`COLUMNS` and ``geometry`` (the footprint). ``datetime`` is UTC (NaT for items
        with only a range); ``href`` is the layer's ``asset`` (None when an item lacks it);
        ``assets`` maps every asset key to its href, as JSON text.
    progress
        Pages done, items (``features``), failed walks, ``truncated`` at ``max_items``.
    errors
        One :class:`~mapstream.layers.errors.LayersError` per catalog or collection whose
        search failed; the items found before the failure are in the frame.
    """

    frame: gpd.GeoDataFrame
    progress: Progress
    errors: tuple[LayersError, ...] = ()

    @property
    def hrefs(self) -> list[str]:
        """The ``asset`` hrefs, newest item first (the mosaic's first-valid order)."""
        frame = self.frame[self.frame["href"].notna()]
        return frame.sort_values("datetime", ascending=False, kind="stable", na_position="last")["href"].tolist()


def _row(item: Mapping[str, Any], catalog: str, asset: str) -> dict[str, Any]:
    props = item.get("properties") or {}
    assets = {k: v.get("href") for k, v in (item.get("assets") or {}).items() if isinstance(v, Mapping)}
    self_href = next(
        (l.get("href") for l in item.get("links") or () if isinstance(l, Mapping) and l.get("rel") == "self"),
        None,
    )
    return {
        "id": str(item.get("id", "")),
        "collection": item.get("collection"),
        "datetime": props.get("datetime") or props.get("start_datetime"),
        "catalog": catalog,
        "href": assets.get(asset),
        "assets": orjson.dumps(assets).decode(),
        "self_href": self_href,
        "geometry": item.get("geometry"),
    }


def items_frame(rows: list[dict[str, Any]]) -> gpd.GeoDataFrame:
    """Item rows (as :func:`_row` builds them) as a GeoDataFrame in ``OGC:CRS84``.

    >>> f = items_frame([{"id": "a", "collection": "c", "datetime": "2024-01-02T00:00:00Z",
    ...     "catalog": "http://s", "href": "http://s/a.tif", "assets": "{}", "self_href": None,
    ...     "geometry": {"type": "Point", "coordinates": [1, 2]}}])
    >>> f.crs.to_string(), str(f["datetime"].dtype), f.geometry.iloc[0].wkt
    ('OGC:CRS84', 'datetime64[us, UTC]', 'POINT (1 2)')
    """
    geoms = [
        shapely.from_geojson(orjson.dumps(r["geometry"])) if r.get("geometry") else None for r in rows
    ]
    data = {c: [r.get(c) for r in rows] for c in COLUMNS}
    frame = pd.DataFrame(data, columns=list(COLUMNS))
    frame["datetime"] = pd.to_datetime(frame["datetime"], utc=True, errors="coerce", format="ISO8601")
    if frame["datetime"].dtype != "datetime64[us, UTC]":
        frame["datetime"] = frame["datetime"].astype("datetime64[us, UTC]")
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geoms, crs="OGC:CRS84"))


@register
class STACLayer:
    """The items of one or several STAC API catalogs over the view, and their COGs' mosaic.

    Parameters
    ----------
    url_or_urls
        The landing page of one STAC API, or several: all are searched at once.
    collections
        Collection ids searched in every catalog (one walk per catalog and collection).
    datetime
        An RFC 3339 instant or interval (``"2024-01-01T00:00:00Z/2024-02-01T00:00:00Z"``,
        open ends as ``..``); None for all dates.
    asset
        The asset key whose href is the COG to mosaic (``"data"``, ``"visual"``, ...).
    filter, filter_lang
        A CQL2 filter: a JSON mapping (``cql2-json``) or text (``cql2-text``), sent as is.
    max_items
        Stop once this many items arrived (``truncated`` says so); None for no cap.
    limit
        Items per page asked of the servers.
    bands, rescale, colormap
        How the mosaic reads and draws the COGs (:class:`~mapstream.layers.sources.cog.COGLayer`).
    name, attribution, headers
        The layer's name, credit line and extra request headers.

    Raises
    ------
    BadInputError
        No URL or a URL that is not http(s), no collection, no asset, a non-positive
        ``max_items`` or ``limit``.
    """

    kind: ClassVar[str] = "stac"

    def __init__(
        self,
        url_or_urls: str | Sequence[str],
        *,
        collections: Sequence[str],
        datetime: str | None = None,
        asset: str,
        filter: str | Mapping[str, Any] | None = None,
        filter_lang: str | None = None,
        max_items: int | None = None,
        limit: int = 100,
        bands: Sequence[int] | None = None,
        rescale: Sequence[float] | None = None,
        colormap: str | None = None,
        name: str | None = None,
        attribution: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        urls = http_urls(url_or_urls, "a STAC catalog URL")
        collections = [collections] if isinstance(collections, str) else list(collections)
        if not collections:
            raise BadInputError("a STAC layer needs at least one collection")
        if not asset:
            raise BadInputError("a STAC layer needs asset: the key of the COG asset to mosaic")
        if max_items is not None and max_items < 1:
            raise BadInputError(f"max_items must be >= 1, got {max_items}")
        if limit < 1:
            raise BadInputError(f"limit must be >= 1, got {limit}")
        self.urls = urls
        self.collections = list(dict.fromkeys(collections))
        self.datetime = datetime
        self.asset = asset
        self.filter = filter
        self.filter_lang = filter_lang
        self.max_items = max_items
        self.limit = int(limit)
        self.bands = bands
        self.rescale = rescale
        self.colormap = colormap
        self.name = name or "stac"
        self.attribution = attribution or None
        self.headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"STACLayer({self.urls!r}, collections={self.collections!r}, asset={self.asset!r})"

    @classmethod
    def from_spec(cls, spec: LayerSpec, url: str | Sequence[str] | None, **zooms: int) -> STACLayer:
        """The layer a catalog entry describes (``url`` or ``urls``, ``collections``,
        ``datetime``, ``asset``, ``max_items``, ``bands``, ``rescale``, ``style.cmap``);
        ``url`` is the resolved URL (or URLs) of the entry, ``zooms`` unused.

        Raises
        ------
        BadInputError
            As the constructor.
        """
        urls = url if url is not None else spec.urls
        return cls(
            urls or [],
            collections=spec.collections or [],
            datetime=spec.datetime,
            asset=spec.asset or "",
            max_items=spec.max_items,
            bands=spec.bands,
            rescale=spec.rescale,
            colormap=spec.style.cmap,
            name=spec.name,
            attribution=spec.attribution or None,
        )

    def request_prefixes(self) -> list[str]:
        """The catalogs' URLs (the catalog gives their hosts limits and headers).

        >>> STACLayer(["http://a.test/stac", "http://b.test/"], collections=["c"], asset="data").request_prefixes()
        ['http://a.test/stac', 'http://b.test/']
        """
        return list(self.urls)

    def probe_request(self) -> tuple[str, None, tuple[int, ...], dict[str, str]]:
        """What ``mapstream check`` asks to see that the layer works: the first catalog's landing
        page (the document every search starts from): ``(url, params, allowed statuses, headers)``.

        >>> STACLayer("http://a.test/stac", collections=["c"], asset="data").probe_request()
        ('http://a.test/stac', None, (), {'Accept': 'application/json'})
        """
        return self.urls[0], None, (), {"Accept": "application/json"}

    # -- search ------------------------------------------------------------------------

    def query_body(self, bbox_lonlat: Sequence[float], collection: str) -> dict[str, Any]:
        """The search of one collection over one CRS84 box (pure).

        >>> layer = STACLayer("http://s", collections=["c"], asset="data", datetime="2024-01-01T00:00:00Z/..", limit=50)
        >>> layer.query_body((0, 1, 2, 3), "c")
        {'collections': ['c'], 'bbox': [0.0, 1.0, 2.0, 3.0], 'limit': 50, 'datetime': '2024-01-01T00:00:00Z/..'}
        """
        limit = self.limit if self.max_items is None else min(self.limit, self.max_items)
        body: dict[str, Any] = {
            "collections": [collection],
            "bbox": [float(v) for v in bbox_lonlat],
            "limit": limit,
        }
        if self.datetime:
            body["datetime"] = self.datetime
        if self.filter is not None:
            body["filter"] = self.filter
            body["filter-lang"] = self.filter_lang or ("cql2-json" if isinstance(self.filter, Mapping) else "cql2-text")
        return body

    async def search(
        self,
        bbox_lonlat: Sequence[float] | Sequence[Sequence[float]],
        fetcher: Fetcher,
        *,
        on_page: Callable[[Progress], None] | None = None,
    ) -> ItemSearch:
        """The items of every catalog and collection over ``bbox_lonlat`` (CRS84 west, south,
        east, north; or several such boxes, e.g. the two halves of an antimeridian view).

        Every catalog x collection x box is one walk, all at once; the pages of a walk follow
        their ``next`` links. An item seen twice (two boxes, two catalogs mirroring each other)
        is kept once. A walk that fails is reported in ``errors``; the rest are kept.
        ``on_page`` (e.g. a progress bar) is called with the progress after every page.

        Raises
        ------
        BadInputError
            A box that is not four numbers.
        """
        boxes = [bbox_lonlat] if not isinstance(bbox_lonlat[0], (list, tuple)) else list(bbox_lonlat)
        for box in boxes:
            if len(box) != 4:  # type: ignore[arg-type]
                raise BadInputError(f"a bbox is west,south,east,north, got {box!r}")
        rows: list[dict[str, Any]] = []
        seen: set[Any] = set()
        errors: list[LayersError] = []
        state = {"pages": 0, "failed": 0, "truncated": False}
        full = asyncio.Event()

        async def walk(url: str, collection: str, box: Sequence[float]) -> None:
            try:
                endpoint = await search_endpoint(url, fetcher)
                first = first_request(endpoint, self.query_body(box, collection))
                async with contextlib.aclosing(iter_pages(first, fetcher, self.headers)) as pages:
                    async for page in pages:
                        state["pages"] += 1
                        for item in page["features"]:
                            if not isinstance(item, Mapping):
                                continue
                            key = _item_key(item)
                            if key in seen:
                                continue
                            if self.max_items is not None and len(rows) >= self.max_items:
                                state["truncated"] = True
                                full.set()
                                return
                            seen.add(key)
                            rows.append(_row(item, url, self.asset))
                        if on_page is not None:
                            on_page(Progress(state["pages"], None, "pages", len(rows), failed=state["failed"]))
                        if self.max_items is not None and len(rows) >= self.max_items:
                            # more may follow: only a page without a next link would say
                            state["truncated"] = state["truncated"] or any(
                                isinstance(l, Mapping) and l.get("rel") == "next" for l in page.get("links") or ()
                            )
                            full.set()
                            return
            except LayersError as exc:
                state["failed"] += 1
                errors.append(_in_catalog(exc, url, collection))

        tasks = [
            asyncio.ensure_future(walk(url, c, box)) for url in self.urls for c in self.collections for box in boxes
        ]
        # Every walk to its end, or the cap reached (the walks still paging are then cancelled).
        walks = asyncio.gather(*tasks)
        waiter = asyncio.ensure_future(full.wait())
        try:
            await asyncio.wait([walks, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in [*tasks, waiter]:
                t.cancel()
            await asyncio.gather(walks, waiter, return_exceptions=True)
        frame = await asyncio.to_thread(items_frame, rows)
        progress = Progress(
            state["pages"], state["pages"], "pages", len(rows), failed=state["failed"],
            truncated=state["truncated"], complete=True,
        )
        return ItemSearch(frame, progress, tuple(errors))

    # -- the view ----------------------------------------------------------------------

    def _cogs(self, items: ItemSearch) -> Any:
        from .cog import COGLayer

        hrefs = list(dict.fromkeys(items.hrefs))
        if not hrefs:
            return None
        return COGLayer(
            hrefs, bands=self.bands, rescale=self.rescale, colormap=self.colormap,
            name=self.name, attribution=self.attribution, headers=self.headers,
        )

    async def fetch(self, viewport: Viewport, fetcher: Fetcher) -> xr.DataArray:
        """The mosaic of the view's items' ``asset`` COGs: dims ``("band", "y", "x")`` in
        EPSG:3857, NaN for no data (the newest item first where they overlap).

        Raises
        ------
        LayersError
            No catalog answered (the first catalog's error), or a COG read failed
            (:meth:`COGLayer.fetch <mapstream.layers.sources.cog.COGLayer.fetch>`).
        BadInputError
            No item over the view has the asset.
        """
        viewport = Viewport.create(*viewport)
        items = await self.search([tuple(b) for b in lonlat_boxes(viewport)], fetcher)
        cogs = self._cogs(items)
        if cogs is None:
            if items.errors and not len(items.frame):
                raise items.errors[0]
            raise BadInputError(
                f"layer {self.name!r}: no item over the view has the asset {self.asset!r}"
            )
        return await cogs.fetch(viewport, fetcher)

    async def load(self, viewport: Viewport, fetcher: Fetcher) -> AsyncIterator[FeaturePage | Mosaic]:
        """The footprints of the view's items (one :class:`FeaturePage`, EPSG:3857, not
        complete), then the mosaic of their COGs as :class:`Mosaic` frames (the last complete).

        With no item to mosaic the footprint page is the complete, last result. Search errors
        travel in the page's ``errors`` and in the first mosaic's.

        Raises
        ------
        BadInputError
            A viewport of zero size.
        """
        viewport = Viewport.create(*viewport)
        items = await self.search([tuple(b) for b in lonlat_boxes(viewport)], fetcher)
        cogs = self._cogs(items)
        frame = await asyncio.to_thread(_footprints, items.frame)
        yield FeaturePage(frame, items.progress._replace(complete=cogs is None), items.errors, self.urls[0])
        if cogs is None:
            return
        async with contextlib.aclosing(cogs.load(viewport, fetcher)) as mosaics:
            first = True
            async for mosaic in mosaics:
                if first and items.errors:
                    mosaic = Mosaic(
                        mosaic.image, mosaic.progress, (*items.errors, *mosaic.errors), mosaic.zoom,
                        mosaic.tiles_used, mosaic.tiles_missing, mosaic.attribution,
                    )
                first = False
                yield mosaic

    async def query(self, lon: float, lat: float, fetcher: Fetcher, *, radius_m: float = 50.0) -> QueryResult:
        """The items whose footprint is within about ``radius_m`` metres of a point: their id,
        collection, datetime and asset href (click-inspect).

        Raises
        ------
        LayersError
            Every catalog failed.
        """
        x, y = lonlat_to_mercator(lon, lat)
        r = radius_m * mercator_scale(lat)
        vp = Viewport.create((x - r, x + r), (y - r, y + r), 1, 1)
        items = await self.search(vp.lonlat_bounds, fetcher)
        if items.errors and not len(items.frame):
            raise items.errors[0]
        rows = items.frame.drop(columns=["geometry", "assets"])
        rows["datetime"] = rows["datetime"].astype(str)
        return rows.to_dict("records")


def _item_key(item: Mapping[str, Any]) -> Any:
    """An item's identity across catalogs and pages: ``(collection, id)``, else its self href.

    >>> _item_key({"id": "a", "collection": "c"}), _item_key({"links": [{"rel": "self", "href": "h"}]})
    (('c', 'a'), 'h')
    """
    if item.get("id") is not None:
        return (item.get("collection"), str(item["id"]))
    for link in item.get("links") or ():
        if isinstance(link, Mapping) and link.get("rel") == "self":
            return link.get("href")
    return orjson.dumps(item, option=orjson.OPT_SORT_KEYS)


def _in_catalog(exc: LayersError, url: str, collection: str) -> LayersError:
    """``exc`` with a note naming the catalog and collection whose search it ended (the type,
    the status and the URL stay)."""
    note = f"STAC search of {collection!r} at {url}"
    if note not in str(exc):
        exc.args = (f"{note}: {exc.args[0] if exc.args else exc}", *exc.args[1:])
    return exc


def _footprints(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The items' footprints as outlines in EPSG:3857 (drawn over the mosaic, they must not
    hide it: a polygon would be filled), ``valid`` set."""
    out = frame.drop(columns=["assets"]).copy()
    out["valid"] = out.geometry.notna()
    out = out.set_crs("EPSG:4326", allow_override=True).to_crs("EPSG:3857") if len(out) else out.set_crs(
        "EPSG:3857", allow_override=True
    )
    out.geometry = out.geometry.boundary
    return out

