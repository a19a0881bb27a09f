"""The Bokeh directory app's server hooks: what ``panel serve app`` does before any session.

Bokeh runs ``on_server_loaded`` once, when the server starts serving (``panel serve app``, with
no option of ours). It puts the map's routes on the server (:mod:`mapstream.app.routes`: the
tile route every session's map loads from) and starts the warm-up in the background: the demo
services when the catalog uses them, the GeoJSON parser processes and datashader's kernels in
a thread of their own, so that no session's first layer waits for the compiler. ``panel serve
--warm`` is no longer needed for that (it still works).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger(__name__)


def on_server_loaded(server_context: Any) -> None:
    """Install the routes and start the warm-up (nothing here blocks the server)."""
    from mapstream.app.routes import install

    try:
        install()
    except Exception:  # the map falls back to images pushed by each session
        log.exception("mapstream: the tile route could not be installed")
    warm_up_server(sys.argv)


def warm_up_server(argv: list[str]) -> None:
    """Start what a first session would otherwise wait for, in the background."""
    from mapstream.app.main import catalog_argument
    from mapstream.app.render import warm_up
    from mapstream.layers.catalog import load_catalog
    from mapstream.layers.errors import LayersError
    from mapstream.layers.sources.geojson import warm_pool

    warm_up()  # datashader's kernels, in a thread
    warm_pool()  # the parser processes
    try:
        catalog = load_catalog(catalog_argument(argv))
    except LayersError:
        return  # the session shows the catalog's error
    if getattr(catalog, "uses_demo", False):
        from mapstream.demo import start_demo_soon

        start_demo_soon()
