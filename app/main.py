"""Bokeh directory app entry: ``panel serve app [--args --catalog FILE]``.

The catalog comes from ``--catalog FILE`` (after ``--args``), else ``MAPSTREAM_CATALOG``, else
the embedded demo catalog. Nothing heavy runs at import time: the factory builds the session.
"""

from __future__ import annotations

import sys

from mapstream.app.factory import create_app


def catalog_argument(argv: list[str]) -> str | None:
    """The value of ``--catalog`` in ``argv`` (``--catalog X`` or ``--catalog=X``), else None.

    >>> catalog_argument(["main.py", "--catalog", "my.yml"])
    'my.yml'
    >>> catalog_argument(["main.py", "--catalog=x.yml"])
    'x.yml'
    >>> catalog_argument(["main.py"]) is None
    True
    """
    for i, arg in enumerate(argv):
        if arg == "--catalog" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--catalog="):
            return arg.split("=", 1)[1]
    return None


if __name__.startswith("bokeh_app") or __name__ == "__main__":
    _app = create_app(catalog_argument(sys.argv))
    _app.servable(title=getattr(_app.catalog, "title", "mapstream"))
