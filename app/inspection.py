"""Click-to-inspect: every visible layer queried at a point, the answers as escaped HTML.

:func:`inspect_point` asks each layer through the engine contract,
:meth:`~mapstream.layers.types.Layer.query`, all at once; answers are published as they come.
A layer with nothing there (or no point query at all) answers ``[]`` and is left out; an error
is shown in the layer's place. Every key and value is escaped: they are untrusted text from the
services. Pure asyncio and ``html``: no Panel.

(Not ``inspect.py``: with ``app/`` on ``sys.path``, as under ``python app/main.py`` or while
Bokeh runs ``main.py``, that name would shadow the standard library's ``inspect``.)
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .state import error_reason

__all__ = ["PLACEHOLDER", "Target", "error_html", "escape_properties", "inspect_point"]

#: What the inspect view shows before the first click.
PLACEHOLDER = "<i>Click the map to inspect the visible layers.</i>"

#: One layer to query: its title, and how to get the built layer (``await layer()``).
Target = tuple[str, Callable[[], Awaitable[Any]]]


def escape_properties(title: str, rows: list[dict[str, Any]], limit: int = 10) -> str:
    """HTML for one layer's answers; every key and value is escaped (they are untrusted text).

    >>> escape_properties("Cities", [{"name": "<b>x</b>"}])
    '<div class="inspect"><b>Cities</b><table><tr><th>name</th><td>&lt;b&gt;x&lt;/b&gt;</td></tr></table></div>'
    >>> escape_properties("Many", [{"i": i} for i in range(12)], limit=1).endswith("<i>and 11 more</i></div>")
    True
    """
    parts = [f'<div class="inspect"><b>{html.escape(str(title))}</b>']
    for row in rows[:limit]:
        cells = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in row.items()
        )
        parts.append(f"<table>{cells}</table>")
    if len(rows) > limit:
        parts.append(f"<i>and {len(rows) - limit} more</i>")
    return "".join(parts) + "</div>"


def error_html(title: str, exc: BaseException) -> str:
    """HTML for a layer whose query failed.

    >>> error_html("Parcels", ConnectionError("refused <here>"))
    '<div class="inspect"><b>Parcels</b>: refused &lt;here&gt;</div>'
    """
    return f'<div class="inspect"><b>{html.escape(str(title))}</b>: {html.escape(error_reason(exc))}</div>'


async def inspect_point(
    lon: float,
    lat: float,
    targets: Sequence[Target],
    fetcher: Any,
    publish: Callable[[str], None],
) -> str:
    """Query every target at (lon, lat) concurrently; ``publish`` the HTML as answers come.

    Returns the final HTML (also published last). Cancelling the call cancels every query.

    >>> class Here:
    ...     async def query(self, lon, lat, fetcher):
    ...         return [{"name": "x"}]
    >>> class Nothing:
    ...     async def query(self, lon, lat, fetcher):
    ...         return []
    >>> async def built(layer):
    ...     return layer
    >>> shown = []
    >>> final = asyncio.run(inspect_point(
    ...     1.0, 2.0, [("Here", lambda: built(Here())), ("Tiles", lambda: built(Nothing()))], None,
    ...     shown.append))
    >>> "Here" in final and "Tiles" not in final, shown[0]
    (True, '<p><b>2.00000, 1.00000</b></p><i>querying…</i>')
    """
    head = f"<p><b>{lat:.5f}, {lon:.5f}</b></p>"
    publish(head + "<i>querying…</i>")

    async def one(title: str, layer: Callable[[], Awaitable[Any]]) -> str:
        try:
            rows = await (await layer()).query(lon, lat, fetcher)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # shown in the layer's place, never raised into the app
            return error_html(title, exc)
        return escape_properties(title, rows) if rows else ""

    parts: list[str] = []
    tasks = [asyncio.ensure_future(one(title, layer)) for title, layer in targets]
    try:
        for fut in asyncio.as_completed(tasks):
            part = await fut
            if part:
                parts.append(part)
                publish(head + "".join(parts))
    finally:
        for task in tasks:
            task.cancel()
    final = head + ("".join(parts) or "<i>nothing here</i>")
    publish(final)
    return final
