"""WMS layers: GetMap cut into tile-sized requests on the Web Mercator grid, and GetFeatureInfo.

:meth:`WMSLayer.query` answers a point query (click-inspect) with GetFeatureInfo, as rows of
properties like every other :class:`~mapstream.layers.types.Layer`.

Requesting one image per viewport would defeat caching (every pan is a new image) and could
not share the tile pipeline. Instead :class:`WMSLayer` asks for one GetMap per tile of the XYZ
grid, with the tile's bounds as BBOX, so panning reuses what is cached, requests run under the
fetcher's per-host limit, and :class:`~mapstream.layers.sources.tiled.TiledLayer` builds the
mosaic exactly as for :class:`~mapstream.layers.sources.tiles.TileLayer`.

A gutter (``gutter=`` pixels, the catalog's ``gutter:``) asks each GetMap for a wider image, the
tile plus ``gutter`` pixels of the neighbouring tiles on every side, and crops it to the tile: a
server draws only the features inside the BBOX it is given, so a point symbol near a tile's
edge is cut off in one tile and missing from its neighbour. With a gutter of at least half the
largest symbol, a mosaic of tiles equals one GetMap of the whole view (MapProxy's
``meta_buffer`` and MapServer's tile mode use the same remedy). It costs
``((size + 2 * gutter) / size) ** 2`` times the pixels per tile (1.56x for 32 px on 256).

Axis order: WMS 1.3.0 follows the CRS's own axis order, so a latitude-first CRS such as
EPSG:4326 takes ``BBOX=miny,minx,maxy,maxx``; 1.1.1 (``SRS=``) is always x, y. EPSG:3857, the
mosaic's CRS, is x (easting), y (northing) in both (:func:`wms_bbox`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from ..errors import BadInputError
from ..imaging import decode_rgba
from ..projection import lonlat_to_mercator
from ..tilegrid import Tile, tile_at, tile_bounds, wrap_x
from ..types import Bounds, QueryResult
from . import register
from .tiled import TiledLayer

if TYPE_CHECKING:  # pragma: no cover
    from ..catalog import LayerSpec
    from ..http import Fetcher

__all__ = ["WMSLayer", "wms_bbox", "getmap_params", "info_rows", "gutter_bounds", "VERSIONS", "MAX_GUTTER", "DEFAULT_GUTTER"]

#: Supported WMS versions.
VERSIONS = ("1.1.1", "1.3.0")
# Geographic CRSs whose EPSG axis order is latitude first (the common ones).
_LAT_FIRST = {"EPSG:4326", "EPSG:4258", "EPSG:4269", "EPSG:4267"}
#: The gutter when none is given: whole symbols up to 64 px across, 1.56x the pixels of a bare
#: 256 px tile (MapProxy's default meta-buffer is 80 px around 4x4 metatiles).
DEFAULT_GUTTER = 32
#: The widest gutter accepted, in pixels on each side.
MAX_GUTTER = 256


def gutter_bounds(bounds: Bounds, size: int, gutter: int) -> Bounds:
    """``bounds`` of a ``size``-pixel square widened by ``gutter`` pixels on every side.

    >>> gutter_bounds((0, 0, 256, 256), 256, 32)
    (-32.0, -32.0, 288.0, 288.0)
    >>> gutter_bounds((0, 0, 10, 10), 256, 0)
    (0, 0, 10, 10)
    """
    if not gutter:
        return bounds
    w, s, e, n = bounds
    pad_x, pad_y = (e - w) / size * gutter, (n - s) / size * gutter
    return (w - pad_x, s - pad_y, e + pad_x, n + pad_y)


def wms_bbox(bounds: Bounds, crs: str, version: str) -> str:
    """The BBOX parameter for (west, south, east, north) ``bounds`` in ``crs``.

    >>> wms_bbox((1, 2, 3, 4), "EPSG:3857", "1.3.0")
    '1,2,3,4'
    >>> wms_bbox((1, 2, 3, 4), "EPSG:4326", "1.3.0")   # latitude first in 1.3.0
    '2,1,4,3'
    >>> wms_bbox((1, 2, 3, 4), "EPSG:4326", "1.1.1")
    '1,2,3,4'
    """
    w, s, e, n = bounds
    order = (s, w, n, e) if version == "1.3.0" and crs.upper() in _LAT_FIRST else (w, s, e, n)
    return ",".join(_num(v) for v in order)


def _num(value: float) -> str:
    """Shortest exact text of a number (``10`` rather than ``10.0``)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def getmap_params(
    bounds: Bounds,
    size: int,
    *,
    layers: str,
    version: str = "1.3.0",
    styles: str = "",
    format: str = "image/png",
    transparent: bool = True,
    crs: str = "EPSG:3857",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """GetMap query parameters for one square image of ``size`` pixels over ``bounds``.

    >>> p = getmap_params((0, 0, 10, 10), 256, layers="a,b", version="1.1.1")
    >>> p["SRS"], p["BBOX"], p["WIDTH"], p["HEIGHT"], p["TRANSPARENT"], "CRS" in p
    ('EPSG:3857', '0,0,10,10', '256', '256', 'TRUE', False)
    >>> getmap_params((0, 0, 10, 10), 256, layers="a")["CRS"]
    'EPSG:3857'
    """
    params = {
        "SERVICE": "WMS",
        "VERSION": version,
        "REQUEST": "GetMap",
        "LAYERS": layers,
        "STYLES": styles,
        "FORMAT": format,
        "TRANSPARENT": "TRUE" if transparent else "FALSE",
        ("CRS" if version == "1.3.0" else "SRS"): crs,
        "BBOX": wms_bbox(bounds, crs, version),
        "WIDTH": str(size),
        "HEIGHT": str(size),
    }
    params.update(extra or {})
    return params


def info_rows(info: Any) -> QueryResult:
    """Rows of properties from a GetFeatureInfo answer (GeoJSON, other JSON, or text).

    >>> info_rows({"type": "FeatureCollection", "features": [{"properties": {"a": 1}}]})
    [{'a': 1}]
    >>> info_rows({"a": 1}), info_rows("  <p>a road</p> "), info_rows("")
    ([{'a': 1}], [{'answer': '<p>a road</p>'}], [])
    """
    if isinstance(info, dict) and isinstance(info.get("features"), list):
        return [dict(f.get("properties") or {}) for f in info["features"] if isinstance(f, dict)]
    if isinstance(info, dict):
        return [info]
    text = str(info).strip()
    return [{"answer": text[:2000]}] if text else []


@register
class WMSLayer(TiledLayer):
    """A WMS 1.1.1 / 1.3.0 service drawn as a tile mosaic in EPSG:3857.

    Parameters
    ----------
    url
        The service endpoint (may already carry a query, e.g. ``?map=/maps/x.map``).
    layers
        WMS layer name(s): a comma-separated string or a sequence.
    version
        ``"1.3.0"`` (``CRS=``) or ``"1.1.1"`` (``SRS=``).
    styles
        Style name(s), one per layer or empty for the defaults.
    format, transparent
        Image format and transparency asked for.
    min_zoom, max_zoom
        Zoom range used to choose the grid level for a viewport.
    extra_params
        Extra query parameters (vendor options such as ``TIME``, ``DPI``).
    headers
        Extra request headers.
    tile_size
        Pixel size of each grid tile.
    gutter
        Pixels of the neighbouring tiles asked for on every side of each tile and cropped
        away (default :data:`DEFAULT_GUTTER`; 0: each GetMap is exactly one tile). A gutter of half the largest symbol keeps
        symbols whole at tile edges; see the module docstring.

    Raises
    ------
    BadInputError
        An unsupported version, no layer name, an impossible zoom range, or a gutter outside
        0..:data:`MAX_GUTTER`.

    Examples
    --------
    >>> wms = WMSLayer("http://w.test/wms?map=x", "roads", version="1.1.1", gutter=0)
    >>> url = wms.tile_url(Tile(1, 2, 0))    # column 2 wraps to 0
    >>> url.startswith("http://w.test/wms?map=x&SERVICE=WMS&VERSION=1.1.1&REQUEST=GetMap")
    True
    >>> "BBOX=-20037508.342789244%2C0%2C0%2C20037508.342789244" in url
    True
    """

    kind: ClassVar[str] = "wms"

    def __init__(
        self,
        url: str,
        layers: str | Sequence[str],
        *,
        version: str = "1.3.0",
        styles: str | Sequence[str] = "",
        format: str = "image/png",
        transparent: bool = True,
        min_zoom: int = 0,
        max_zoom: int = 19,
        extra_params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        tile_size: int = 256,
        gutter: int = DEFAULT_GUTTER,
        attribution: str = "",
        name: str | None = None,
    ) -> None:
        if not isinstance(gutter, int) or not 0 <= gutter <= MAX_GUTTER:
            raise BadInputError(f"gutter must be an integer in 0..{MAX_GUTTER} pixels, got {gutter!r}")
        layer_names = layers if isinstance(layers, str) else ",".join(layers)
        if not layer_names.strip():
            raise BadInputError("WMSLayer needs at least one layer name")
        if version not in VERSIONS:
            raise BadInputError(f"WMS version must be one of {VERSIONS}, got {version!r}")
        super().__init__(
            min_zoom=min_zoom,
            max_zoom=max_zoom,
            tile_size=tile_size,
            headers=headers,
            attribution=attribution,
            name=name or layer_names,
        )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise BadInputError(f"WMS url must be http(s), got {url!r}")
        self.url = url
        self.layers = layer_names
        self.version = version
        self.styles = styles if isinstance(styles, str) else ",".join(styles)
        self.format = format
        self.transparent = bool(transparent)
        self.extra_params = {str(k): str(v) for k, v in (extra_params or {}).items()}
        self.gutter = gutter

    def __repr__(self) -> str:
        return f"WMSLayer({self.url!r}, {self.layers!r}, version={self.version!r}, gutter={self.gutter})"

    @classmethod
    def from_spec(cls, spec: LayerSpec, url: str | None, **zooms: int) -> WMSLayer:
        """The layer a catalog entry describes (``url``, ``wms_layers``, ``gutter``,
        ``attribution``).

        Raises
        ------
        BadInputError
            As the constructor.
        """
        return cls(
            url or "",
            spec.wms_layers or [],
            gutter=DEFAULT_GUTTER if spec.gutter is None else spec.gutter,
            attribution=spec.attribution,
            name=spec.name,
            **zooms,
        )

    def request_prefixes(self) -> list[str]:
        """The endpoint without its query: the prefix the catalog gives limits and headers.

        >>> WMSLayer("http://w.test/wms?map=x", "a").request_prefixes()
        ['http://w.test/wms']
        """
        return [self.url.split("?", 1)[0]]

    def _url(self, params: Mapping[str, str]) -> str:
        parts = urlsplit(self.url)
        base = parse_qsl(parts.query, keep_blank_values=True)
        taken = {k.upper() for k in params}
        query = [(k, v) for k, v in base if k.upper() not in taken] + list(params.items())
        return urlunsplit(parts._replace(query=urlencode(query)))

    def _params(self, tile: Tile, gutter: int | None = None) -> dict[str, str]:
        z = self._check_tile(tile)
        gutter = self.gutter if gutter is None else gutter
        bounds = tile_bounds(Tile(z, wrap_x(tile.x, z), tile.y))
        return getmap_params(
            gutter_bounds(bounds, self.tile_size, gutter),
            self.tile_size + 2 * gutter,
            layers=self.layers,
            version=self.version,
            styles=self.styles,
            format=self.format,
            transparent=self.transparent,
            extra=self.extra_params,
        )

    def tile_url(self, tile: Tile) -> str:
        """The GetMap URL of one grid tile: its bounds as BBOX, ``tile_size`` pixels square,
        both widened by the gutter.

        >>> wms = WMSLayer("http://w.test/wms", "a", gutter=32)
        >>> "WIDTH=320&HEIGHT=320" in wms.tile_url(Tile(0, 0, 0))
        True

        Raises
        ------
        BadInputError
            A zoom outside the layer's range or a row outside the grid.
        """
        return self._url(self._params(tile))

    async def _decode(self, content: bytes, url: str) -> np.ndarray:
        """The GetMap image as the tile: decoded and, with a gutter, cropped to the tile."""
        g, size = self.gutter, self.tile_size

        def decode() -> np.ndarray:
            image = decode_rgba(content, size + 2 * g, url=self._redact(url))
            return np.ascontiguousarray(image[g : g + size, g : g + size]) if g else image

        return await asyncio.to_thread(decode)

    def feature_info_url(
        self,
        lon: float,
        lat: float,
        *,
        info_format: str = "application/json",
        zoom: int | None = None,
        feature_count: int = 10,
    ) -> str:
        """The GetFeatureInfo URL for the point (``lon``, ``lat``) in degrees.

        The query image is the grid tile holding the point at ``zoom`` (default: the layer's
        max zoom, the finest pixel), with ``I``/``J`` (1.3.0) or ``X``/``Y`` (1.1.1) the
        point's pixel in it.

        Raises
        ------
        BadInputError
            A point outside [-180, 180] x [-90, 90] or a zoom outside the layer's range.

        >>> url = WMSLayer("http://w.test/wms", "a", max_zoom=1).feature_info_url(-90, 45)
        >>> "REQUEST=GetFeatureInfo" in url, "I=128&J=" in url, "QUERY_LAYERS=a" in url
        (True, True, True)
        """
        lon, lat = float(lon), float(lat)
        if not (
            math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90
        ):
            raise BadInputError(
                f"point must be lon in [-180, 180], lat in [-90, 90], got {lon}, {lat}"
            )
        zoom = self._check_zoom(self.max_zoom if zoom is None else zoom)
        x, y = lonlat_to_mercator(lon, lat)
        tile = tile_at(x, y, zoom)
        w, _, e, north = tile_bounds(tile)
        span = e - w
        px = min(self.tile_size - 1, int((x - w) / span * self.tile_size))
        py = min(self.tile_size - 1, int((north - y) / span * self.tile_size))
        params = self._params(tile, gutter=0)  # a point query needs no gutter
        i_key, j_key = ("I", "J") if self.version == "1.3.0" else ("X", "Y")
        params.update(
            {
                "REQUEST": "GetFeatureInfo",
                "QUERY_LAYERS": self.layers,
                "INFO_FORMAT": info_format,
                "FEATURE_COUNT": str(int(feature_count)),
                i_key: str(px),
                j_key: str(py),
            }
        )
        return self._url(params)

    async def query(
        self,
        lon: float,
        lat: float,
        fetcher: Fetcher,
        *,
        info_format: str = "application/json",
        zoom: int | None = None,
        feature_count: int = 10,
    ) -> QueryResult:
        """Ask the service what is at (``lon``, ``lat``): GetFeatureInfo on the layer's layers.

        Returns
        -------
        QueryResult
            One row of properties per feature of a GeoJSON answer; the object of other JSON;
            ``{"answer": text}`` for a text answer (HTML, GML, plain) (:func:`info_rows`).

        Raises
        ------
        BadInputError
            As :meth:`feature_info_url`.
        FetchError
            The request failed (an error status, after the fetcher's retries).
        ParseError
            A JSON answer that is not JSON (e.g. a WMS ServiceException in XML).
        """
        url = self.feature_info_url(
            lon, lat, info_format=info_format, zoom=zoom, feature_count=feature_count
        )
        resp = await fetcher.get(url, headers=self.headers or None)
        if "json" in info_format.lower():
            return info_rows(resp.json())
        text = resp.text
        return info_rows(text)
