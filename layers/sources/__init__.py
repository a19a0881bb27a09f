"""The engine's sources, one module each, and the registry of their kinds.

- :mod:`.tiled`: :class:`~.tiled.TiledLayer`, the tile pipeline every grid-aligned raster
  shares (plan, fetch, decode, paint, :class:`~mapstream.layers.types.Mosaic` frames); a base
  that registers no kind.
- :mod:`.tiles`: :class:`~.tiles.TileLayer` (XYZ/TMS templates, xyzservices providers).
- :mod:`.wms`: :class:`~.wms.WMSLayer`, GetMap cut to the tile grid, GetFeatureInfo queries.
- :mod:`.features`: :class:`~.features.FeatureLayer`, OGC API Features items for a viewport.
- :mod:`.paging`: how a feature load pages (next links, offsets, sub-boxes, de-duplication).
- :mod:`.ogcapi`: the OGC API discovery documents (landing page, conformance, collections).
- :mod:`.geojson`: GeoJSON pages to GeoDataFrames, off the event loop.
- :mod:`.cog`: :class:`~.cog.COGLayer`, Cloud-Optimized GeoTIFFs read with HTTP ranges
  (the building blocks are in :mod:`mapstream.layers.raster`).

Every layer class implements :class:`~mapstream.layers.types.Layer` and registers its ``kind``
with :func:`register`; the catalog builds a layer through :func:`layer_class` and the class's
``from_spec``. Adding a source means adding one module here: :func:`layer_class` imports the
package's modules on its first call, so each registers itself; a module that registers nothing
(a base such as :mod:`.tiled`, a helper such as :mod:`.paging`) is imported and adds no kind.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TypeVar

from ..errors import BadInputError

__all__ = ["SOURCES", "layer_class", "register"]

#: Layer class by ``kind`` (filled by :func:`register` as the source modules are imported).
SOURCES: dict[str, type] = {}

_T = TypeVar("_T", bound=type)


def register(cls: _T) -> _T:
    """Class decorator: make ``cls`` the source of its ``kind`` (a class attribute).

    Raises
    ------
    BadInputError
        Another class already registered the same kind.
    """
    kind = cls.kind  # type: ignore[attr-defined]
    if SOURCES.get(kind, cls) is not cls:
        raise BadInputError(f"two sources for kind {kind!r}: {SOURCES[kind]!r} and {cls!r}")
    SOURCES[kind] = cls
    return cls


_discovered = False


def _import_all() -> None:
    global _discovered
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    _discovered = True


def layer_class(kind: str) -> type:
    """The layer class of ``kind`` (``"tiles"``, ``"wms"``, ``"features"``, ...).

    Raises
    ------
    BadInputError
        No source registers ``kind`` (the message lists those that do).

    >>> layer_class("tiles").__name__, {"cog", "features", "tiles", "wms"} <= set(SOURCES)
    ('TileLayer', True)
    >>> layer_class("vector")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mapstream.layers.errors.BadInputError: no source of kind 'vector'; known kinds: cog, features, ...
    """
    if not _discovered:
        _import_all()
    try:
        return SOURCES[kind]
    except KeyError:
        raise BadInputError(
            f"no source of kind {kind!r}; known kinds: {', '.join(sorted(SOURCES))}"
        ) from None
