"""The mapstream Panel app (``mapstream.app``), a Bokeh directory app: ``panel serve app``.

``from mapstream import create_app; create_app()`` gives a map in a notebook; ``panel serve app``
(from a checkout) and ``mapstream serve`` (from an install) serve the same factory. Panel is
imported lazily so that ``mapstream`` CLI commands stay light.

The rooms, from the page down to the pixels:

- ``factory`` (``create_app``) and ``main`` (``panel serve app``) make a ``views.MapApp``, the
  Panel viewer that composes one session's
- ``plot`` (the GeoViews plot, its streams and hooks), ``sidebar`` (widgets built from and bound
  to ``state``'s params) and ``session`` (the loads, no Panel: ``loader`` per layer, ``frames``
  to draw results through ``render``, ``inspection`` for clicks);
- ``state`` holds the session's params; ``proxy`` is the JupyterLab launcher entry; ``cli`` the
  ``mapstream`` command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["APP_DIR", "create_app"]

#: The directory ``panel serve`` is given (it holds ``main.py``).
APP_DIR = Path(__file__).resolve().parent


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .factory import create_app

        return create_app
    raise AttributeError(f"module 'mapstream.app' has no attribute {name!r}")
