"""mapstream's async data engine (``mapstream.layers``): fetch, cache, plan and decode map data.

This package never imports panel, param, holoviews, geoviews or bokeh (a test checks). Its
exports are imported lazily, so ``import mapstream.layers.units`` does not pay for NumPy:

- :class:`Viewport` (``mapstream.layers.viewport``): what a layer is loaded for.
- :class:`Bounds`, :class:`Layer` (``mapstream.layers.types``): the shared contract.
- :class:`LayersError` (``mapstream.layers.errors``): the base of every engine error.

ARCHITECTURE.md at the repository's root maps its modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .errors import LayersError
    from .types import Bounds, Layer
    from .viewport import Viewport

#: Public name -> the module that defines it.
_EXPORTS = {
    "Bounds": "mapstream.layers.types",
    "Layer": "mapstream.layers.types",
    "LayersError": "mapstream.layers.errors",
    "Viewport": "mapstream.layers.viewport",
}

__all__ = ["Bounds", "Layer", "LayersError", "Viewport"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mapstream.layers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
