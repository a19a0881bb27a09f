"""mapstream's async data engine (``mapstream.layers``): fetch, cache, plan and decode map data.

This package never imports panel, param, holoviews, geoviews or bokeh (a test checks).
ARCHITECTURE.md at the repository's root maps its modules.
"""

from __future__ import annotations

from .errors import LayersError
from .types import Bounds, Layer
from .viewport import Viewport

__all__ = ["Bounds", "Layer", "LayersError", "Viewport"]
