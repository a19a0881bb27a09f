"""mapstream's async data engine: fetch, cache, plan and decode map data for a viewport.

This package never imports panel, param, holoviews, geoviews or bokeh (a test checks).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import LayersError  # noqa: E402
from .viewport import Viewport  # noqa: E402

__all__ = ["LayersError", "Viewport", "__version__"]
