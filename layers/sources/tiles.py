"""Tile layers: a viewport becomes tile requests, fetched concurrently, decoded off the event
loop and assembled into one georeferenced RGBA mosaic.

:class:`TiledLayer` holds the pipeline every grid-aligned raster source shares (plan, fetch
through the :class:`~mapstream.layers.http.Fetcher`, decode in a thread, paint, crop); :class:`TileLayer`
adds XYZ/TMS URL templates and xyzservices providers, and :class:`~mapstream.layers.sources.wms.WMSLayer` adds
WMS GetMap requests cut to the same grid, so both share limits, caches and the mosaic format.

A load yields :class:`~mapstream.layers.types.Mosaic` frames: the image is an
:class:`xarray.DataArray` with dims ``("y", "x", "band")``, bands ``["r", "g", "b", "a"]``,
``uint8``, pixel-centre EPSG:3857 coordinates (y decreasing from the top row; x continuing past
20037508 m across the antimeridian, as in :class:`~mapstream.layers.viewport.Viewport`) and attrs
``crs`` and ``zoom`` only; progress, errors (one :class:`~mapstream.layers.errors.TileError` per
failed tile), ``tiles_used`` and ``tiles_missing`` (``"z/x/y"`` -> reason) are fields of the
:class:`~mapstream.layers.types.Mosaic`. All grid arithmetic is :mod:`~mapstream.layers.tilegrid`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import xarray as xr

from ..errors import BadInputError, FetchError, LayersError, StatusError, TileError
from ..imaging import decode_tile
from ..projection import lonlat_bbox_to_mercator
from ..tilegrid import (
    PixelWindow,
    Tile,
    in_grid,
    pixel_centres,
    pixel_window,
    tiles_in_bbox,
    tiles_in_window,
    tile_window,
    tms_y,
    wrap_x,
    zoom_for_resolution,
)
from ..types import Bounds, Mosaic, Progress, QueryResult
from ..viewport import Viewport
from . import register

if TYPE_CHECKING:  # pragma: no cover
    from ..catalog import LayerSpec
    from ..http import Fetcher

__all__ = ["TileLayer", "TiledLayer", "TilePlan", "BANDS", "EMPTY_STATUSES"]

#: Band labels of every mosaic.
BANDS = ["r", "g", "b", "a"]
#: Statuses that mean "nothing here": the tile is transparent, not an error.
EMPTY_STATUSES = (404, 204)
#: Refuse plans larger than this (a viewport far bigger than the layer's min zoom allows).
MAX_TILES = 4096

# Marker stored in the memory cache for an empty (404/204) tile, so it is not asked for again.
_EMPTY = "empty-tile"
_PLACEHOLDERS = {"z", "x", "y", "-y", "s", "r", "apikey"}


class TilePlan(NamedTuple):
    """Everything a load of one viewport will do: a pure function of viewport and layer.

    Attributes
    ----------
    zoom
        The zoom level chosen for the viewport.
    tiles
        Tiles to fetch, row by row from the north-west; columns unwrapped across the
        antimeridian (``Tile.key`` gives the wrapped ``"z/x/y"``).
    urls
        The URL of each tile, in the same order.
    window
        The mosaic's pixels in the zoom's global pixel grid.
    tile_size
        Pixel size of the tiles.
    """

    zoom: int
    tiles: list[Tile]
    urls: list[str]
    window: PixelWindow
    tile_size: int

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the mosaic in pixels."""
        return self.window.shape


class _Outcome(NamedTuple):
    url: str
    image: np.ndarray | None  # None: transparent (empty or failed)
    cached: bool
    reason: str | None  # why the tile is missing, when it is
    failed: bool
    status: int | None = None  # the error status, when the server answered one


class TiledLayer:
    """Base of raster layers served on the Web Mercator tile grid.

    Subclasses implement :meth:`tile_url` and :meth:`query`. Settings are immutable after
    construction, so :meth:`plan` is a pure function of the viewport.
    """

    def __init__(
        self,
        *,
        min_zoom: int = 0,
        max_zoom: int = 19,
        tile_size: int = 256,
        headers: Mapping[str, str] | None = None,
        attribution: str = "",
        name: str | None = None,
    ) -> None:
        if not (0 <= int(min_zoom) <= int(max_zoom) <= 30):
            raise BadInputError(f"need 0 <= min_zoom <= max_zoom <= 30, got {min_zoom}, {max_zoom}")
        if int(tile_size) < 1:
            raise BadInputError(f"tile_size must be positive, got {tile_size}")
        self.min_zoom = int(min_zoom)
        self.max_zoom = int(max_zoom)
        self.tile_size = int(tile_size)
        self.headers = dict(headers or {})
        self.attribution = attribution
        self.name = name or type(self).__name__

    # -- to implement -------------------------------------------------------------------------
    def tile_url(self, tile: Tile) -> str:
        """The URL that serves ``tile`` (columns are wrapped here)."""
        raise NotImplementedError

    def _redact(self, text: str) -> str:
        """``text`` with any secret the layer puts into URLs removed."""
        return text

    # -- planning (pure) ----------------------------------------------------------------------
    def _check_zoom(self, zoom: int) -> int:
        if not isinstance(zoom, (int, np.integer)) or not self.min_zoom <= zoom <= self.max_zoom:
            raise BadInputError(
                f"zoom {zoom!r} is outside {self.name}'s range {self.min_zoom}..{self.max_zoom}"
            )
        return int(zoom)

    def _check_tile(self, tile: Tile) -> int:
        """The tile's zoom, checked against the layer's range, and its row against the grid."""
        z = self._check_zoom(tile.z)
        if not in_grid(Tile(z, wrap_x(tile.x, z), tile.y)):
            raise BadInputError(f"tile row {tile.y} is outside zoom {z}'s 0..{2**z - 1}")
        return z

    def zoom_for(self, viewport: Viewport) -> int:
        """The zoom whose resolution best matches the viewport's, clamped to the layer's range."""
        viewport = Viewport.create(*viewport)
        return zoom_for_resolution(
            viewport.resolution,
            tile_size=self.tile_size,
            min_zoom=self.min_zoom,
            max_zoom=self.max_zoom,
        )

    def tiles_for_bbox(self, bbox_lonlat: Bounds, zoom: int) -> list[Tile]:
        """Tiles covering a (west, south, east, north) box in degrees at ``zoom``.

        ``east < west`` crosses the antimeridian; columns east of it are unwrapped (>= 2**zoom).

        Raises
        ------
        BadInputError
            A malformed box or a zoom outside the layer's range.
        """
        zoom = self._check_zoom(zoom)
        return tiles_in_bbox(lonlat_bbox_to_mercator(tuple(bbox_lonlat)), zoom)

    def plan(self, viewport: Viewport, zoom: int | None = None) -> TilePlan:
        """The tiles, URLs and pixel window a load of ``viewport`` uses.

        Parameters
        ----------
        viewport
            What the user looks at.
        zoom
            Force a zoom level instead of the best match.

        Raises
        ------
        BadInputError
            Zero or negative size, empty ranges, a zoom outside the layer's range, or a plan of
            more than :data:`MAX_TILES` tiles.
        """
        viewport = Viewport.create(*viewport)
        zoom = self.zoom_for(viewport) if zoom is None else self._check_zoom(zoom)
        size = self.tile_size
        window = pixel_window(viewport.bounds, zoom, size)  # rows clamped at the poles
        tiles = tiles_in_window(window, zoom, size)
        if len(tiles) > MAX_TILES:
            raise BadInputError(
                f"{len(tiles)} tiles needed at zoom {zoom} (more than {MAX_TILES}): zoom in, or "
                f"lower {self.name}'s min_zoom ({self.min_zoom})"
            )
        return TilePlan(zoom, tiles, [self.tile_url(t) for t in tiles], window, size)

    # -- loading ------------------------------------------------------------------------------
    def _memory_key(self, url: str) -> Any:
        # Decoded tiles are shared by URL; with per-layer headers (credentials) they are not
        # shared across layers that send different ones.
        return (url, tuple(sorted(self.headers.items()))) if self.headers else url

    async def _fetch_one(self, url: str, fetcher: Fetcher) -> _Outcome:
        key = self._memory_key(url)
        hit = fetcher.memory.get(key)
        if isinstance(hit, np.ndarray) and hit.shape[:2] != (self.tile_size, self.tile_size):
            hit = None  # decoded for a layer with another tile size: decode again
        if hit is not None:
            return _Outcome(url, None if isinstance(hit, str) else hit, True, _reason(hit), False)
        try:
            resp = await fetcher.get(url, headers=self.headers or None, allow_status=EMPTY_STATUSES)
        except FetchError as exc:
            status = exc.status if isinstance(exc, StatusError) else None
            return _Outcome(url, None, False, self._redact(_describe(exc)), True, status)
        if resp.status in EMPTY_STATUSES or not resp.content:
            fetcher.memory.put(key, f"{_EMPTY}:{resp.status}", 64)
            return _Outcome(url, None, resp.from_cache, f"empty ({resp.status})", False)
        ctype = resp.headers.get("content-type", "").lower()
        if "xml" in ctype and "svg" not in ctype or ctype.startswith(("text/", "application/json")):
            # an error document with a 200 status (a WMS ServiceException, an HTML error page)
            text = resp.content[:300].decode("utf-8", errors="replace")
            excerpt = " ".join(re.sub(r"<[^>]*>", " ", text).split())[:160]
            reason = self._redact(f"server sent {ctype}: {excerpt}")
            return _Outcome(url, None, resp.from_cache, reason, True)
        try:
            image = await decode_tile(resp.content, self.tile_size, url=self._redact(url))
        except LayersError as exc:
            return _Outcome(url, None, resp.from_cache, self._redact(str(exc)), True)
        fetcher.memory.put(key, image, image.nbytes)
        return _Outcome(url, image, resp.from_cache, None, False)

    async def load(
        self, viewport: Viewport, fetcher: Fetcher, *, frame_every: int | None = None
    ) -> AsyncIterator[Mosaic]:
        """Yield the mosaic as tiles arrive (a frame every few tiles), then the final one.

        Tiles are requested concurrently through ``fetcher`` (its per-host limit applies),
        decoded in worker threads and kept decoded in ``fetcher.memory`` keyed by URL, so
        loading a viewport seen before makes no request. A tile answered 404 or 204 is
        transparent; a tile that fails is a transparent hole reported in the mosaic's
        ``errors`` and ``tiles_missing`` while the rest of the mosaic stands.

        Parameters
        ----------
        viewport
            What the user looks at.
        fetcher
            The :class:`~mapstream.layers.http.Fetcher` to use.
        frame_every
            Yield a partial mosaic after this many tiles (default: about eight frames per
            load, at least four tiles apart). ``0`` yields only the final mosaic.

        Raises
        ------
        BadInputError
            As :meth:`plan`.
        """
        plan = self.plan(viewport)
        total = len(plan.tiles)
        if frame_every is None:
            frame_every = max(4, math.ceil(total / 8))
        placements: dict[str, list[Tile]] = {}
        for tile, url in zip(plan.tiles, plan.urls, strict=True):
            placements.setdefault(url, []).append(tile)
        canvas = np.zeros((*plan.shape, 4), dtype=np.uint8)
        state = _LoadState(total)
        tasks = [asyncio.create_task(self._fetch_one(url, fetcher)) for url in placements]
        try:
            last_frame = 0
            for next_done in asyncio.as_completed(tasks):
                outcome = await next_done
                for tile in placements[outcome.url]:
                    self._paint(canvas, plan, tile, outcome.image)
                    state.add(tile, outcome, self._redact(outcome.url))
                if frame_every and state.done - last_frame >= frame_every and state.done < total:
                    last_frame = state.done
                    # copying a large canvas takes milliseconds: not on the event loop
                    frame = await asyncio.to_thread(canvas.copy)
                    yield self._mosaic(frame, plan, state, complete=False)
        finally:
            for task in tasks:  # an abandoned or cancelled load stops its requests
                task.cancel()
        yield self._mosaic(canvas, plan, state, complete=True)

    async def fetch(self, viewport: Viewport, fetcher: Fetcher) -> Mosaic:
        """The final mosaic of :meth:`load` (no partial frames are built).

        Raises
        ------
        BadInputError
            As :meth:`plan`.
        """
        async with contextlib.aclosing(self.load(viewport, fetcher, frame_every=0)) as frames:
            async for mosaic in frames:
                if mosaic.complete:
                    return mosaic
        raise RuntimeError("load() ended without a complete mosaic")  # cannot happen

    # -- assembling ---------------------------------------------------------------------------
    @staticmethod
    def _paint(canvas: np.ndarray, plan: TilePlan, tile: Tile, image: np.ndarray | None) -> None:
        if image is None:
            return  # the canvas is transparent already
        c0, r0, c1, r1 = plan.window
        left, top, right, bottom = tile_window(tile, plan.tile_size)
        a0, a1 = max(left, c0), min(right, c1)
        b0, b1 = max(top, r0), min(bottom, r1)
        if a1 > a0 and b1 > b0:
            canvas[b0 - r0 : b1 - r0, a0 - c0 : a1 - c0] = image[
                b0 - top : b1 - top, a0 - left : a1 - left
            ]

    def _mosaic(
        self, data: np.ndarray, plan: TilePlan, state: _LoadState, *, complete: bool
    ) -> Mosaic:
        x, y = pixel_centres(plan.window, plan.zoom, plan.tile_size)
        progress = Progress(
            done=state.done,
            total=state.total,
            unit="tiles",
            failed=state.failed,
            cached=state.cached,
            complete=complete,
        )
        image = xr.DataArray(
            data,
            dims=("y", "x", "band"),
            coords={"y": y, "x": x, "band": BANDS},
            name=self.name,
            attrs={"crs": "EPSG:3857", "zoom": plan.zoom},
        )
        return Mosaic(
            image=image,
            progress=progress,
            errors=tuple(state.errors),
            zoom=plan.zoom,
            tiles_used=tuple(state.used),
            tiles_missing=dict(state.missing),
            attribution=self.attribution or None,
        )


class _LoadState:
    """Book-keeping of one load (what arrived, what is missing and why)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = self.failed = self.cached = 0
        self.used: dict[str, None] = {}  # ordered set
        self.missing: dict[str, str] = {}
        self.errors: list[TileError] = []

    def add(self, tile: Tile, outcome: _Outcome, url: str) -> None:
        self.done += 1
        self.cached += outcome.cached
        if outcome.image is not None:
            self.used[tile.key] = None
        elif outcome.reason is not None:
            self.missing[tile.key] = outcome.reason
        if outcome.failed:
            self.failed += 1
            reason = outcome.reason or "failed"
            self.errors.append(TileError(tile.key, reason, url=url, status=outcome.status))


def _reason(hit: Any) -> str | None:
    return f"empty ({hit.rsplit(':', 1)[-1]})" if isinstance(hit, str) else None


def _describe(exc: FetchError) -> str:
    if isinstance(exc, StatusError):
        return f"HTTP {exc.status}"
    return f"{type(exc).__name__}: {exc}"


@register
class TileLayer(TiledLayer):
    """An XYZ or TMS tile service from a URL template or an xyzservices provider.

    Parameters
    ----------
    url_template
        A URL with ``{z}``, ``{x}`` and ``{y}`` (or ``{-y}`` for TMS rows); optionally ``{s}``
        (a subdomain), ``{r}`` (``"@2x"`` when ``tile_size`` is 512, else empty) and
        ``{apikey}`` (read from the environment variable ``api_key_env`` at request time).
    min_zoom, max_zoom
        Zoom levels the service offers.
    tms
        Rows count from the south (TMS); ``{y}`` is flipped.
    tile_size
        Tile size in pixels; 512 for ``@2x`` (retina) tiles.
    subdomains
        Values of ``{s}``, chosen per tile so a tile's URL never changes (one cache entry).
    api_key_env
        Name of the environment variable holding the API key. The key is never stored on the
        layer, shown in its repr, or written into errors.
    attribution, headers, name
        Credit line to display, extra request headers, display name.

    Raises
    ------
    BadInputError
        A template without ``{z}``, ``{x}`` or ``{y}``/``{-y}``, an unknown placeholder,
        ``{apikey}`` without ``api_key_env``, or an impossible zoom range.

    Examples
    --------
    >>> layer = TileLayer("https://{s}.tiles.test/{z}/{x}/{y}{r}.png", max_zoom=18)
    >>> layer.tile_url(Tile(3, 9, 2))          # column 9 wraps to 1
    'https://a.tiles.test/3/1/2.png'
    >>> TileLayer("https://t.test/{z}/{x}/{y}.png", tms=True).tile_url(Tile(3, 1, 2))
    'https://t.test/3/1/5.png'
    >>> TileLayer("https://t.test/{z}/{x}/{y}{r}.png", tile_size=512).tile_url(Tile(1, 0, 0))
    'https://t.test/1/0/0@2x.png'
    >>> TileLayer("https://t.test/{x}/{y}.png")
    Traceback (most recent call last):
    ...
    mapstream.layers.errors.BadInputError: tile URL template needs {z}: 'https://t.test/{x}/{y}.png'
    """

    kind: ClassVar[str] = "tiles"

    def __init__(
        self,
        url_template: str,
        *,
        min_zoom: int = 0,
        max_zoom: int = 19,
        tms: bool = False,
        tile_size: int = 256,
        subdomains: str | Sequence[str] = "abc",
        api_key_env: str | None = None,
        attribution: str = "",
        headers: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            min_zoom=min_zoom,
            max_zoom=max_zoom,
            tile_size=tile_size,
            headers=headers,
            attribution=attribution,
            name=name,
        )
        template = str(url_template)
        fields = set(re.findall(r"\{([^{}]*)\}", template))
        for needed in ("z", "x"):
            if needed not in fields:
                raise BadInputError(f"tile URL template needs {{{needed}}}: {template!r}")
        if not fields & {"y", "-y"}:
            raise BadInputError(f"tile URL template needs {{y}} or {{-y}}: {template!r}")
        unknown = fields - _PLACEHOLDERS
        if unknown:
            raise BadInputError(
                f"unknown placeholder(s) {sorted(unknown)} in tile URL template {template!r}; "
                f"allowed: {sorted(_PLACEHOLDERS)}"
            )
        if "apikey" in fields and not api_key_env:
            raise BadInputError(f"template {template!r} has {{apikey}}: pass api_key_env")
        self.url_template = template
        self.tms = bool(tms)
        self.subdomains = list(subdomains) or [""]
        self.api_key_env = api_key_env

    def __repr__(self) -> str:
        return f"TileLayer({self.url_template!r}, name={self.name!r})"

    @classmethod
    def from_spec(cls, spec: LayerSpec, url: str | None, **zooms: int) -> TileLayer:
        """The layer a catalog entry describes: its ``provider``, or ``url`` as the template.

        ``zooms`` are ``min_zoom`` and, when known, ``max_zoom``.

        Raises
        ------
        BadInputError
            As the constructor or :meth:`from_provider`.
        """
        extra: dict[str, Any] = dict(zooms)
        if spec.attribution:
            extra["attribution"] = spec.attribution
        if spec.provider is None:
            return cls(url or "", name=spec.name, **extra)
        # from_provider's first parameter is also called ``name``: set ours afterwards.
        layer = cls.from_provider(spec.provider, **extra)
        layer.name = spec.name
        return layer

    def request_prefixes(self) -> list[str]:
        """URL prefixes (scheme://host/path up to the first placeholder) the layer requests.

        The catalog gives each its host limit and headers.

        >>> TileLayer("https://{s}.t.test/{z}/{x}/{y}.png", subdomains="ab").request_prefixes()
        ['https://a.t.test/', 'https://b.t.test/']
        >>> TileLayer("http://h:8/tiles/{z}/{x}/{y}.png").request_prefixes()
        ['http://h:8/tiles/']
        """
        template = self.url_template
        names = [template.replace("{s}", s) for s in self.subdomains] if "{s}" in template else [template]
        return sorted({n.split("{", 1)[0] for n in names})

    async def query(self, lon: float, lat: float, fetcher: Fetcher) -> QueryResult:
        """Always ``[]``: XYZ tiles are pictures and hold no attributes to inspect."""
        return []

    @classmethod
    def from_provider(cls, name: str, **overrides: Any) -> TileLayer:
        """A layer for an xyzservices provider, e.g. ``"OpenStreetMap.Mapnik"``.

        Provider settings (zoom range, subdomains, attribution) are used unless overridden.
        Providers that need a key read it from ``api_key_env`` (default:
        ``MAPSTREAM_<PROVIDER>_APIKEY``, e.g. ``MAPSTREAM_THUNDERFOREST_APIKEY``).

        Raises
        ------
        BadInputError
            An unknown provider name.

        >>> layer = TileLayer.from_provider("OpenStreetMap.Mapnik")
        >>> layer.tile_url(Tile(1, 1, 0)), layer.max_zoom, layer.attribution
        ('https://tile.openstreetmap.org/1/1/0.png', 19, '(C) OpenStreetMap contributors')
        >>> TileLayer.from_provider("No.Such")
        Traceback (most recent call last):
        ...
        mapstream.layers.errors.BadInputError: unknown tile provider 'No.Such' (see xyzservices.providers)
        """
        import xyzservices

        try:
            provider = xyzservices.providers.query_name(name)
        except (ValueError, KeyError) as exc:
            raise BadInputError(
                f"unknown tile provider {name!r} (see xyzservices.providers)"
            ) from exc
        provider = xyzservices.TileProvider(dict(provider))
        if "apikey" in provider:  # keep the placeholder: the key comes from the environment
            provider["apikey"] = "{apikey}"
        url = provider.build_url(
            x="{x}", y="{y}", z="{z}", scale_factor="{r}", fill_subdomain=False
        )
        if "{apikey}" in url:
            env = f"MAPSTREAM_{provider['name'].split('.')[0].upper()}_APIKEY"
            overrides.setdefault("api_key_env", env)
        settings: dict[str, Any] = {
            "min_zoom": provider.get("min_zoom", 0),
            "max_zoom": provider.get("max_zoom", 19),
            "subdomains": provider.get("subdomains", "abc"),
            "attribution": provider.get("attribution", ""),
            "name": provider["name"],
        }
        settings.update(overrides)
        return cls(url, **settings)

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env or "", "")
        if not key:
            raise BadInputError(
                f"{self.name} needs an API key: set the environment variable {self.api_key_env}"
            )
        return key

    def _redact(self, text: str) -> str:
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                text = text.replace(key, "***")
        return text

    def tile_url(self, tile: Tile) -> str:
        """The URL of ``tile`` (column wrapped, TMS flip, subdomain, ``@2x``, API key).

        Raises
        ------
        BadInputError
            A zoom outside the layer's range, a row outside the world, or a missing API key.
        """
        z = self._check_tile(tile)
        x = wrap_x(tile.x, z)
        y = tms_y(tile.y, z) if self.tms else tile.y
        values = {
            "z": z,
            "x": x,
            "y": y,
            "-y": tms_y(tile.y, z),
            "s": self.subdomains[(x + tile.y) % len(self.subdomains)],
            "r": "@2x" if self.tile_size == 512 else "",
        }
        if "{apikey}" in self.url_template:
            values["apikey"] = self._api_key()
        return re.sub(r"\{([^{}]*)\}", lambda m: str(values[m.group(1)]), self.url_template)
