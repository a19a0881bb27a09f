"""XYZ/TMS tile services: :class:`TileLayer`, from a URL template or an xyzservices provider.

The layer says only how a tile is addressed (column wrap, TMS rows, subdomains, ``@2x``, an API
key read from the environment and kept out of reprs and errors); planning, fetching, decoding
and the :class:`~mapstream.layers.types.Mosaic` it yields are
:class:`~mapstream.layers.sources.tiled.TiledLayer`'s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import BadInputError
from ..tilegrid import Tile, tms_y, wrap_x
from ..types import QueryResult
from . import register
from .tiled import TiledLayer

if TYPE_CHECKING:  # pragma: no cover
    from ..catalog import LayerSpec
    from ..http import Fetcher

__all__ = ["TileLayer"]

_PLACEHOLDERS = {"z", "x", "y", "-y", "s", "r", "apikey"}


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
