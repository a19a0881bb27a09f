"""Per-session state: the viewport, the visible layers and each layer's status, as params.

One :class:`MapState` per session; nothing session-specific lives in module globals. The
session (:mod:`mapstream.app.session`) writes these params, always by assignment so that their
watchers fire; the side panel's widgets are built from them and bound to them
(:mod:`mapstream.app.sidebar`). The helpers below them (status text, error reasons, viewports
from plot ranges, equal aspect, the initial view) are pure and doctested.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import param

from mapstream.layers.projection import lonlat_to_mercator
from mapstream.layers.viewport import Viewport

__all__ = [
    "DEFAULT_BOUNDS",
    "LayerStatus",
    "MapState",
    "by_priority",
    "date_interval",
    "date_range",
    "equal_aspect",
    "error_reason",
    "initial_viewport",
    "status_text",
    "viewport_from_ranges",
]

#: Initial view when the catalog gives none: most of the world, in lon/lat.
DEFAULT_BOUNDS = (-170.0, -60.0, 170.0, 75.0)


class LayerStatus(param.Parameterized):
    """What one layer is doing, shown in the side panel."""

    state = param.Selector(default="idle", objects=["idle", "loading", "done", "error", "hidden"])
    done = param.Integer(default=0)
    total = param.Integer(default=None, allow_None=True)
    unit = param.String(default="", doc="Progress.unit of the layer's loads; '' until one reports.")
    features = param.Integer(default=0)
    matched = param.Integer(default=None, allow_None=True)
    cached = param.Integer(default=0)
    failed = param.Integer(default=0)
    truncated = param.Boolean(default=False)
    cap = param.Integer(default=None, allow_None=True)
    elapsed = param.Number(default=0.0)
    error = param.String(default="")

    @param.depends(
        "state", "done", "total", "unit", "features", "elapsed", "error", "truncated", "cap", "cached",
        "failed",
    )
    def text(self) -> str:
        """The status as one line (see :func:`status_text`); a pane given it follows every change."""
        return status_text(
            self.state, self.done, self.total, self.unit, self.features, self.elapsed,
            self.error, self.truncated, self.cap, self.cached, self.failed,
        )


def status_text(
    state: str,
    done: int = 0,
    total: int | None = None,
    unit: str = "tiles",
    features: int = 0,
    elapsed: float = 0.0,
    error: str = "",
    truncated: bool = False,
    cap: int | None = None,
    cached: int = 0,
    failed: int = 0,
) -> str:
    """One line of status for a layer.

    >>> status_text("loading", 3, 12)
    'loading 3 of 12 tiles'
    >>> status_text("loading", unit="")  # no progress reported yet
    'loading'
    >>> status_text("done", 12, 12, elapsed=0.84, cached=5)
    'done: 12 tiles in 0.8 s (5 cached)'
    >>> status_text("done", 2, None, "pages", features=150, elapsed=1.0, truncated=True, cap=150)
    'done: 150 features, 2 pages in 1.0 s; truncated at 150 features'
    >>> status_text("error", error="HTTP 500 from 127.0.0.1")
    'error: HTTP 500 from 127.0.0.1'
    """
    if state == "loading":
        if not unit:
            return "loading"
        of = f" of {total}" if total is not None else ""
        return f"loading {done}{of} {unit}"
    if state == "done":
        if unit == "pages":
            what = f"{features} features, {done} {unit}"
        else:
            what = f"{done} {unit}" if unit else "nothing"
        extra = []
        if cached:
            extra.append(f"{cached} cached")
        if failed:
            extra.append(f"{failed} failed")
        text = f"done: {what} in {elapsed:.1f} s"
        if extra:
            text += f" ({', '.join(extra)})"
        if truncated:
            text += f"; truncated at {cap if cap is not None else features} features"
        return text
    if state == "error":
        return f"error: {error}"
    return state


def error_reason(exc: BaseException | object) -> str:
    """An error as one line of at most 300 characters (status lines, notifications, inspect).

    >>> error_reason(ConnectionError("refused"))
    'refused'
    >>> error_reason(TimeoutError())
    'TimeoutError'
    >>> len(error_reason(ValueError("x" * 500)))
    300
    """
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def date_range(interval: str | None) -> tuple[dt.date | None, dt.date | None]:
    """The first and last day of an RFC 3339 instant or interval (``..`` or empty: open).

    >>> date_range("2024-03-01T00:00:00Z/2024-06-30T23:59:59Z")
    (datetime.date(2024, 3, 1), datetime.date(2024, 6, 30))
    >>> date_range("../2024-06-30"), date_range(None)
    ((None, datetime.date(2024, 6, 30)), (None, None))
    """
    if not interval:
        return None, None
    parts = (interval.split("/", 1) + [""])[:2] if "/" in interval else [interval, interval]

    def day(text: str) -> dt.date | None:
        text = text.strip()
        return None if text in ("", "..") else dt.date.fromisoformat(text[:10])

    return day(parts[0]), day(parts[1])


def date_interval(start: dt.date | None, end: dt.date | None) -> str | None:
    """The RFC 3339 interval from the start of ``start`` to the end of ``end`` (None: open).

    >>> date_interval(dt.date(2024, 3, 1), dt.date(2024, 3, 31))
    '2024-03-01T00:00:00Z/2024-03-31T23:59:59Z'
    >>> date_interval(None, dt.date(2024, 3, 31)), date_interval(None, None)
    ('../2024-03-31T23:59:59Z', None)
    """
    if start is None and end is None:
        return None
    a = f"{start.isoformat()}T00:00:00Z" if start else ".."
    b = f"{end.isoformat()}T23:59:59Z" if end else ".."
    return f"{a}/{b}"


def by_priority(specs: Any) -> list[Any]:
    """Layer specs in priority order, lower first (ties keep catalog order).

    The order of the preload, of the side panel and of the drawing (lower drawn underneath).

    >>> from types import SimpleNamespace as S
    >>> [s.name for s in by_priority([S(name="top", priority=2), S(name="base", priority=0)])]
    ['base', 'top']
    """
    return sorted(specs, key=lambda s: s.priority)


def initial_viewport(catalog: Any, height: int, width: int = 900) -> Viewport:
    """The view a map opens on: the catalog's ``bbox`` (lon/lat) or :data:`DEFAULT_BOUNDS`.

    ``width`` is a guess until the browser reports the plot's size.

    >>> from types import SimpleNamespace as S
    >>> vp = initial_viewport(S(bbox=(0, 0, 10, 10)), 600)
    >>> vp.width, vp.height, round(vp.x_range[1])
    (900, 600, 1113195)
    """
    bbox = getattr(catalog, "bbox", None) or DEFAULT_BOUNDS
    x0, y0 = lonlat_to_mercator(bbox[0], bbox[1])
    x1, y1 = lonlat_to_mercator(bbox[2], bbox[3])
    return Viewport.create((x0, x1), (y0, y1), width, height)


def viewport_from_ranges(
    x_range: tuple[float, float] | None,
    y_range: tuple[float, float] | None,
    width: int | None,
    height: int | None,
) -> Viewport | None:
    """A viewport from RangeXY + PlotSize values, or None while any of them is missing or bad.

    Ranges are rounded to a millimetre so that float noise does not make a new viewport.

    >>> viewport_from_ranges((0, 10), (0, 5), 200, 100)
    Viewport(x_range=(0.0, 10.0), y_range=(0.0, 5.0), width=200, height=100)
    >>> viewport_from_ranges(None, (0, 5), 200, 100) is None
    True
    """
    if x_range is None or y_range is None or not width or not height:
        return None
    try:
        vals = [float(v) for v in (*x_range, *y_range)]
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in vals):
        return None
    x0, x1, y0, y1 = (round(v, 3) for v in vals)
    try:
        return Viewport.create((x0, x1), (y0, y1), int(width), int(height))
    except Exception:
        return None


def equal_aspect(viewport: Viewport) -> Viewport:
    """The viewport widened in one direction so that a pixel covers as many metres across as up.

    The centre stays; the direction with fewer metres per pixel grows to match the other, so
    everything that was in view stays in view. Ranges are rounded to a millimetre, as in
    :func:`viewport_from_ranges`, so that the corrected view reported back is the same view.

    >>> equal_aspect(Viewport.create((0, 1000), (0, 1000), 200, 100))
    Viewport(x_range=(-500.0, 1500.0), y_range=(0.0, 1000.0), width=200, height=100)
    >>> equal_aspect(Viewport.create((0, 2000), (0, 1000), 200, 100))
    Viewport(x_range=(0.0, 2000.0), y_range=(0.0, 1000.0), width=200, height=100)
    """
    (x0, x1), (y0, y1) = viewport.x_range, viewport.y_range
    sx, sy = (x1 - x0) / viewport.width, (y1 - y0) / viewport.height
    if math.isclose(sx, sy, rel_tol=1e-6):
        return viewport
    scale = max(sx, sy)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hx, hy = scale * viewport.width / 2, scale * viewport.height / 2
    return Viewport.create(
        (round(cx - hx, 3), round(cx + hx, 3)), (round(cy - hy, 3), round(cy + hy, 3)),
        viewport.width, viewport.height,
    )


class MapState(param.Parameterized):
    """Everything one session knows: viewport, visible layers, statuses, inspect answers.

    >>> state = MapState.for_layers(["base", "pts"], visible=["base"])
    >>> state.status("pts").text()
    'idle'
    >>> seen = []
    >>> _ = state.param.watch(lambda ev: seen.append(ev.new), "visible")
    >>> state.visible = [*state.visible, "pts"]  # assigned, never mutated: watchers fire
    >>> seen
    [['base', 'pts']]
    """

    viewport = param.Parameter(default=None, doc="The current Viewport (EPSG:3857).")
    visible = param.List(default=[], item_type=str, doc="Names of the visible layers.")
    statuses = param.Dict(default={}, doc="Layer name -> LayerStatus (one per layer, made up front).")
    inspect_html = param.String(default="", doc="Escaped HTML of the click-inspect answers.")
    metrics = param.Dict(default={}, doc="Engine metrics snapshot (replaced, never mutated).")
    completed = param.Integer(default=0, doc="Loads completed (done or error) in this session.")
    datetimes = param.Dict(default={}, doc="Layer name -> the RFC 3339 interval its date filter asks for (replaced, never mutated).")

    @classmethod
    def for_layers(cls, names: list[str], visible: list[str], **params: Any) -> MapState:
        """A state with an idle :class:`LayerStatus` for every layer of ``names``."""
        statuses = {name: LayerStatus(name=f"status_{name}") for name in names}
        return cls(visible=list(visible), statuses=statuses, **params)

    def status(self, name: str) -> LayerStatus:
        """The status of layer ``name``.

        Raises
        ------
        KeyError
            No layer of that name.
        """
        return self.statuses[name]

    def update_status(self, name: str, **values: Any) -> LayerStatus:
        """Set fields of a layer's status at once (one param event batch)."""
        st = self.status(name)
        st.param.update(**values)
        return st
