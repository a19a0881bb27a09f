"""The side panel: layer toggles, a status line and retry per layer, inspect answers, metrics.

Every widget and pane is built from a param of the session's
:class:`~mapstream.app.state.MapState` and bound to it, as Panel's best-practice guide shows:
the toggles are one ``CheckBoxGroup.from_param(state.param.visible)`` (both ways: a click
changes ``state.visible``, a change of ``state.visible`` ticks the box); each status line is
bound to its :class:`~mapstream.app.state.LayerStatus` (``LayerStatus.text`` depends on its
params) and each retry button shows while that status is ``"error"``; the inspect view, the
metrics line and the loads counter are bound to ``inspect_html``, ``metrics`` and
``completed``. Nothing here writes a widget's value by hand.

Nothing a server or a catalog wrote becomes markup. Panel's ``Str`` pane is HTML in disguise (it
sends ``<pre>`` + the text to the browser's ``innerHTML``), so every text shown in one goes
through :func:`plain`; the metrics line (Markdown, which passes HTML through) is escaped the
same way; the inspect view's HTML is built escaped (:mod:`mapstream.app.inspection`) and the
attributions are escaped. The layer toggles' labels are text nodes in Bokeh.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import panel as pn

from .inspection import PLACEHOLDER
from .state import MapState, date_interval, date_range

__all__ = ["Sidebar", "completed_text", "metrics_text", "plain"]


def plain(text: object) -> str:
    """``text`` for a ``pn.pane.Str`` or ``pn.pane.Markdown``: shown as it is, never as markup.

    Both panes hand their text to the browser as HTML (``Str`` inside ``<pre>``), so a status
    line quoting a server's error page could otherwise run that page's script in the map.

    >>> plain('error: server sent text/html: <img src=x onerror="alert(1)">')
    'error: server sent text/html: &lt;img src=x onerror=&quot;alert(1)&quot;&gt;'
    >>> plain("done: 12 tiles in 0.8 s")
    'done: 12 tiles in 0.8 s'
    """
    return html.escape(str(text))


def _plain_status(status: Any) -> Any:
    """``status.text()`` through :func:`plain`, recomputed whenever a param it depends on changes."""
    deps = [dep.name for dep in status.param.method_dependencies("text")]
    return pn.bind(lambda *_: plain(status.text()), *(status.param[name] for name in deps))


def _metrics_markdown(snap: dict[str, Any]) -> str:
    return plain(metrics_text(snap))


def metrics_text(snap: dict[str, Any]) -> str:
    """The engine line of the side panel (Markdown) for a metrics snapshot.

    >>> metrics_text({"requests": 7, "latency_p95": 0.123, "cache_hits": 3, "cache_misses": 1})
    'requests: 7 · p95 latency: 123 ms  \\ncache hit ratio: 75% · loop p99 lag: 0 ms'

    Each host the fetcher talks to adds a line: its adaptive limit, throughput and latency floor.

    >>> metrics_text({"hosts": {"t.test": {"limit": 3, "ceiling": 8, "throughput": 9.5, "latency_floor": 0.04}}})
    'requests: 0 · p95 latency: 0 ms  \\ncache hit ratio: 0% · loop p99 lag: 0 ms  \\nt.test: limit 3 of 8, 9.5 req/s, floor 40 ms'
    """
    from mapstream.layers.http.metrics import hosts_text

    hits, misses = snap.get("cache_hits", 0), snap.get("cache_misses", 0)
    ratio = hits / (hits + misses) if hits + misses else 0.0
    lines = [
        f"requests: {snap.get('requests', 0)} · p95 latency: {1000 * snap.get('latency_p95', 0.0):.0f} ms",
        f"cache hit ratio: {ratio:.0%} · loop p99 lag: {snap.get('lag_p99_ms', 0.0):.0f} ms",
        *(plain(line) for line in hosts_text(snap.get("hosts") or {}, most=3)),
    ]
    return "  \n".join(lines)


def completed_text(completed: int) -> str:
    """The loads counter (tests and the benchmark wait on it).

    >>> completed_text(3)
    'loads completed: 3'
    """
    return f"loads completed: {completed}"


#: Long lines (an error quoting a URL) wrap inside the side panel instead of running under the map.
_WRAP = ["pre { white-space: pre-wrap; overflow-wrap: anywhere; }"]
_WRAP_CELLS = ["div.inspect, th, td { overflow-wrap: anywhere; }"]


def _inspect_html(text: str) -> str:
    return text or PLACEHOLDER


class Sidebar(pn.viewable.Viewer):
    """The side panel of one session.

    Parameters
    ----------
    state
        The session's state (the widgets are bound to it).
    specs
        The layers' specs in priority order (titles, attributions).
    on_retry
        ``on_retry(name)`` when a layer's retry button is clicked.

    Attributes
    ----------
    toggles
        The ``CheckBoxGroup`` of the visible layers (options: title -> name).
    status_panes, retry
        Layer name -> its status line, and its retry button.
    dates
        Layer name -> its date filter (a ``DateRangePicker``), for layers whose spec searches
        by ``datetime`` (STAC): a new range sets ``state.datetimes`` and reloads the layer.
    inspect_pane, metrics_pane, completed_pane
        The inspect answers, the engine metrics and the loads counter.
    """

    def __init__(self, state: MapState, specs: list[Any], on_retry: Callable[[str], None], **params: Any) -> None:
        super().__init__(**params)
        self.toggles = pn.widgets.CheckBoxGroup.from_param(
            state.param.visible, options={str(s.title or s.name): s.name for s in specs}, name="",
            inline=False,
        )
        self.status_panes: dict[str, pn.pane.Str] = {}
        self.retry: dict[str, pn.widgets.Button] = {}
        self.dates: dict[str, pn.widgets.DateRangePicker] = {}
        rows = []
        for spec in specs:
            name, status = spec.name, state.status(spec.name)
            self.status_panes[name] = pn.pane.Str(
                _plain_status(status), styles={"font-size": "smaller", "color": "#555"}, margin=(0, 10),
                width=200, stylesheets=_WRAP, css_classes=["mapstream-status", f"status-{name}"],
            )
            self.retry[name] = pn.widgets.Button(
                label="Retry", color="warning", width=70, height=28, visible=status.param.state.rx() == "error",
                on_click=lambda _event, n=name: on_retry(n),
            )
            title = pn.pane.Str(plain(spec.title or name), styles={"font-size": "smaller"}, margin=(0, 10), width=280,
                                stylesheets=_WRAP)
            row = [title, pn.Row(self.status_panes[name], self.retry[name])]
            if getattr(spec, "datetime", None):  # a layer searched by date: its date filter
                self.dates[name] = pn.widgets.DateRangePicker(
                    name="Dates", value=date_range(spec.datetime), width=260, margin=(0, 10),
                    css_classes=[f"dates-{name}"],
                )
                self.dates[name].param.watch(
                    lambda ev, n=name: setattr(state, "datetimes", {**state.datetimes, n: date_interval(*(ev.new or (None, None)))}),
                    "value",
                )
                row.append(self.dates[name])
            rows.append(pn.Column(*row, margin=(0, 0, 4, 0)))
        self.inspect_pane = pn.pane.HTML(pn.bind(_inspect_html, state.param.inspect_html), max_height=400,
                                         width=280, styles={"overflow-y": "auto"}, stylesheets=_WRAP_CELLS)
        self.metrics_pane = pn.pane.Markdown(pn.bind(_metrics_markdown, state.param.metrics), styles={"font-size": "smaller"},
                                             css_classes=["mapstream-metrics"])
        self.completed_pane = pn.pane.Str(pn.bind(lambda n: plain(completed_text(n)), state.param.completed),
                                          css_classes=["mapstream-completed"],
                                          styles={"font-size": "smaller", "color": "#777"})
        attributions = list(dict.fromkeys(  # each source credited once
            html.escape(str(s.attribution)) for s in specs if getattr(s, "attribution", None)
        ))
        self._layout = pn.Column(
            "## Layers", self.toggles, "### Status", *rows, "### Inspect", self.inspect_pane,
            "### Engine", self.metrics_pane, self.completed_pane,
            pn.pane.HTML("<small>" + " · ".join(attributions) + "</small>") if attributions else None,
            width=300,
        )

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout
