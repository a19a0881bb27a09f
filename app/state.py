"""Per-session state: the viewport, the visible layers and each layer's status.

One :class:`MapState` per session; nothing session-specific lives in module globals. The status
text helpers are pure and doctested.
"""

from __future__ import annotations

import math
from typing import Any

import param

from mapstream.layers.viewport import Viewport

__all__ = ["LayerStatus", "MapState", "equal_aspect", "status_text", "viewport_from_ranges"]


class LayerStatus(param.Parameterized):
    """What one layer is doing, shown in the side panel."""

    state = param.Selector(default="idle", objects=["idle", "loading", "done", "error", "hidden"])
    done = param.Integer(default=0)
    total = param.Integer(default=None, allow_None=True)
    unit = param.String(default="tiles")
    features = param.Integer(default=0)
    matched = param.Integer(default=None, allow_None=True)
    cached = param.Integer(default=0)
    failed = param.Integer(default=0)
    truncated = param.Boolean(default=False)
    cap = param.Integer(default=None, allow_None=True)
    elapsed = param.Number(default=0.0)
    error = param.String(default="")

    def text(self) -> str:
        """The status as one line (see :func:`status_text`)."""
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
    >>> status_text("done", 12, 12, elapsed=0.84, cached=5)
    'done: 12 tiles in 0.8 s (5 cached)'
    >>> status_text("done", 2, None, "pages", features=150, elapsed=1.0, truncated=True, cap=150)
    'done: 150 features, 2 pages in 1.0 s; truncated at 150 features'
    >>> status_text("error", error="HTTP 500 from 127.0.0.1")
    'error: HTTP 500 from 127.0.0.1'
    """
    if state == "loading":
        of = f" of {total}" if total is not None else ""
        return f"loading {done}{of} {unit}"
    if state == "done":
        what = f"{features} features, {done} {unit}" if unit == "pages" else f"{done} {unit}"
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
    """Everything one session knows: viewport, visible layers, statuses, inspect answers."""

    viewport = param.Parameter(default=None, doc="The current Viewport (EPSG:3857).")
    visible = param.List(default=[], doc="Names of the visible layers.")
    statuses = param.Dict(default={}, doc="Layer name -> LayerStatus.")
    inspect_html = param.String(default="", doc="Escaped HTML of the click-inspect answers.")
    metrics = param.Dict(default={}, doc="Engine metrics snapshot.")

    def status(self, name: str) -> LayerStatus:
        """The status of layer ``name`` (created idle on first use)."""
        if name not in self.statuses:
            self.statuses[name] = LayerStatus(name=f"status_{name}")
        return self.statuses[name]

    def update_status(self, name: str, **values: Any) -> LayerStatus:
        """Set fields of a layer's status at once (one param event batch)."""
        st = self.status(name)
        st.param.update(**values)
        return st
