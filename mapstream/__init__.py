"""mapstream: a reactive map for Panel/HoloViz that loads remote map data for the current view.

The public face, imported lazily (``import mapstream`` costs nothing; Panel is loaded only by
:func:`create_app`):

>>> import mapstream
>>> [round(v, 6) for v in mapstream.Viewport.from_lonlat((-10, 35, 30, 60)).lonlat_bounds]
[-10.0, 35.0, 30.0, 60.0]

- :func:`create_app`: the map, for ``panel serve`` and notebooks (``mapstream.app``).
- :class:`Fetcher`, :func:`shared_fetcher`: the async HTTP engine (``mapstream.layers.http``).
- :class:`Viewport`, :class:`Bounds`: what a layer is loaded for (``mapstream.layers``).
- :class:`Layer` and the sources :class:`TileLayer`, :class:`WMSLayer`, :class:`FeatureLayer`.
- :func:`load_catalog`, :func:`build_layer`: catalogs of layers.
- :class:`LayersError`: the base of every error the engine raises.

The packages: ``mapstream.layers`` (the engine, from the ``layers/`` folder; never imports the
UI stack), ``mapstream.app`` (the Panel app and the CLI, from ``app/``) and ``mapstream.demo``
(the embedded loopback services, from ``demo/``). ``ARCHITECTURE.md`` maps every module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .app.factory import create_app
    from .layers import Bounds, Layer, LayersError, Viewport
    from .layers.catalog import build_layer, load_catalog
    from .layers.http import Fetcher, shared_fetcher
    from .layers.sources.features import FeatureLayer
    from .layers.sources.tiles import TileLayer
    from .layers.sources.wms import WMSLayer

#: Public name -> the module that defines it.
_EXPORTS = {
    "create_app": "mapstream.app.factory",
    "Fetcher": "mapstream.layers.http",
    "shared_fetcher": "mapstream.layers.http",
    "Viewport": "mapstream.layers",
    "Bounds": "mapstream.layers",
    "Layer": "mapstream.layers",
    "LayersError": "mapstream.layers",
    "load_catalog": "mapstream.layers.catalog",
    "build_layer": "mapstream.layers.catalog",
    "TileLayer": "mapstream.layers.sources.tiles",
    "WMSLayer": "mapstream.layers.sources.wms",
    "FeatureLayer": "mapstream.layers.sources.features",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mapstream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
