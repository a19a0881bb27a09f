"""The app factory shared by ``panel serve app`` and notebooks."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["create_app", "in_notebook", "server_is_warming"]


def server_is_warming() -> bool:
    """Whether this is ``panel serve --warm``'s run of the app before the server serves.

    Panel's warm-up session has a session context without a server context; real sessions have
    both, notebooks have neither.
    """
    import panel as pn

    ctx = getattr(pn.state.curdoc, "session_context", None)
    return ctx is not None and getattr(ctx, "server_context", True) is None


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (IPython with a kernel attached).

    >>> in_notebook()  # a doctest run is no kernel
    False
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too broken to tell: not a notebook we can display into
        return False
    return getattr(shell, "kernel", None) is not None


def create_app(
    catalog: Any = None,
    *,
    fetcher: Any = None,
    build_layer: Callable[..., Any] | None = None,
    height: int = 600,
) -> Any:
    """A new map session: a :class:`~mapstream.app.views.MapApp` (a Panel viewer).

    Nothing is loaded until the page is shown: ``pn.state.onload`` then starts the visible
    layers in priority order, and the demo services start in the background when the catalog
    uses them. In a notebook, display the result; ``await app.layer(name)`` gives an engine
    layer for top-level ``await``.

    Parameters
    ----------
    catalog
        A ``mapstream.layers.catalog.Catalog``, a path to a catalog file, or None (``MAPSTREAM_CATALOG``,
        else the embedded demo catalog).
    fetcher
        The fetcher for all layers (default: the process-wide ``shared_fetcher()``).
    build_layer
        Replaces ``mapstream.layers.catalog.build_layer`` (tests).
    height
        Minimum height of the map in pixels.

    Raises
    ------
    CatalogError
        The catalog cannot be read or is invalid.
    """
    import panel as pn

    from mapstream.layers.catalog import load_catalog
    from mapstream.layers.sources.geojson import warm_pool

    from .render import warm_up
    from .views import MapApp

    if catalog is None or isinstance(catalog, (str, os.PathLike)):
        catalog = load_catalog(catalog)
    warming = server_is_warming()
    if warming and getattr(catalog, "uses_demo", False):
        from mapstream.demo import start_demo_soon

        start_demo_soon()  # in parallel with the compile below
    warm_pool()  # the GeoJSON parser processes start in the background
    # Datashader's kernels compile in a background thread (seconds, much of it holding the GIL).
    # `panel serve --warm` waits for the essential ones before it serves: no visitor's first
    # layer waits for the compiler, and no visitor's page competes with it.
    warm_up(wait=warming)
    # A served session loads Panel's extension itself; a notebook needs it once per kernel,
    # before the map is displayed (else the cell shows only the text repr).
    if pn.state.curdoc is not None or (in_notebook() and not getattr(pn.extension, "_loaded", False)):
        pn.extension(notifications=True)
    return MapApp(catalog, fetcher=fetcher, build_layer=build_layer, height=height)
