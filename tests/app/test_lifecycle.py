"""Long-running servers: closed sessions release everything, and every visible layer ends.

Sessions here are real Bokeh server sessions of a Panel server running in this process
(``pn.serve(threaded=True)``), opened and closed by ``bokeh.client`` (a websocket client, no
browser): the app is built, shown and destroyed by Panel and Bokeh as under ``panel serve``;
the one thing a browser does that ``bokeh.client`` does not, report the document ready (which
runs ``pn.state.onload``, the preload), the test does on the server's loop. Loads are driven on the server's event loop, where the test can count the live
``MapApp`` objects (weak references after ``gc.collect()``) and the tasks that are left.

The liveness tests drive several :class:`~mapstream.app.session.MapSession` objects without
Panel, with many rapid view changes, and wait (bounded) until every visible layer's status
is done or error.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from functools import partial

import pytest

from mapstream.app.session import MapSession
from mapstream.layers.viewport import Viewport

from tests.support.waiting import async_wait_for, wait_for

from tests.support.ogc import make_ogc_server, ogc_data  # noqa: F401 (fixtures)
from tests.support.tileserver import tile_server  # noqa: F401 (fixture)

from .fakes import FakeFeatures, FakeTiles, builder, catalog, spec


class Tracked:
    """A layer that counts its loads under way (a load ends when its generator is closed)."""

    def __init__(self, layer):
        self.layer, self.kind, self.attribution = layer, layer.kind, None
        self.active = 0
        self.loads = 0

    async def load(self, viewport, fetcher):
        self.active += 1
        self.loads += 1
        try:
            async for item in self.layer.load(viewport, fetcher):
                yield item
        finally:
            self.active -= 1

    async def query(self, lon, lat, fetcher):
        return await self.layer.query(lon, lat, fetcher)


def _vp(i: int) -> Viewport:
    x = (i % 40) * 100_000.0
    return Viewport.create((x, x + 1_000_000), (0, 600_000), 500, 300)


def _on_loop(loop, fn, timeout=20):
    """Run ``fn()`` on the server's event loop; its result (awaited, if a coroutine)."""
    async def call():
        out = fn()
        if asyncio.iscoroutine(out):
            out = await out
        return out

    return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)


@pytest.fixture
def served():
    """A Panel server in this process whose app is the map on fake layers; yields a namespace."""
    import panel as pn
    from types import SimpleNamespace

    from mapstream.app import create_app
    from mapstream.app.views import MapApp
    from tests.browser.served import free_port

    apps: weakref.WeakSet[MapApp] = weakref.WeakSet()
    # loads that never end by themselves: only closing the session can stop them
    layers = {"base": Tracked(FakeTiles(frames=10**6, delay=0.2)),
              "pts": Tracked(FakeFeatures(pages=10**6, per_page=5, delay=0.2))}

    def make():
        app = create_app(catalog(spec("base"), spec("pts", "features", 1)), fetcher=object(),
                         build_layer=builder(layers))
        app.session.view_settle = 0.0
        apps.add(app)
        return app

    port = free_port()
    thread = pn.serve(
        {"app": make}, port=port, address="127.0.0.1", show=False, threaded=True, start=True,
        websocket_origin=[f"127.0.0.1:{port}"], check_unused_sessions_milliseconds=100,
        unused_session_lifetime_milliseconds=100,
    )
    try:
        assert wait_for(lambda: thread.asyncio_loop is not None and thread.asyncio_loop.is_running(), 30)
        server = wait_for(lambda: pn.state._servers.get(thread.server_id, (None,))[0], 30)
        assert server is not None
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/app", loop=thread.asyncio_loop, server=server,
                              apps=apps, layers=layers)
    finally:
        thread.stop()


def _open_and_close(served, n: int) -> list[weakref.ref]:
    """Open ``n`` sessions, start loads in each (still running), close them all; their documents."""
    from bokeh.client import pull_session

    before = set(map(id, served.apps))
    sessions = [pull_session(url=served.url) for _ in range(n)]
    new = wait_for(lambda: [a for a in list(served.apps) if id(a) not in before] if len(served.apps) - len(before) >= n
                   else None, 30)
    assert new and len(new) == n, "every session built its map"

    def start():  # the browser's DocumentReady: Panel runs the onload callbacks (the preload)
        import panel as pn

        for app in new:
            doc = app.plot.doc
            doc.add_next_tick_callback(partial(pn.state._schedule_on_load, doc, None))

    _on_loop(served.loop, start)
    docs = [weakref.ref(app.plot.doc) for app in new]
    assert wait_for(lambda: _on_loop(served.loop, lambda: all(
        "pts" in a.session.loaders and a.session.loaders["pts"].running and a.session.applied["pts"] for a in new)),
        30), "loads under way"
    del new
    for s in sessions:
        s.close()
    closed = wait_for(lambda: _on_loop(served.loop, lambda: len(served.server.get_sessions("/app"))) == 0, 60)
    assert closed, "the server destroyed the sessions"
    return docs


def _load_tasks(served) -> list[str]:
    return _on_loop(served.loop, lambda: sorted(
        t.get_name() for t in asyncio.all_tasks(served.loop) if not t.done() and t.get_name().startswith("load:")))


def _live(served) -> int:
    def count():
        gc.collect()
        return len(served.apps)

    return _on_loop(served.loop, count)


@pytest.mark.slow
def test_closed_sessions_leave_no_map_and_no_load_behind(served):
    for _ in range(3):
        docs = _open_and_close(served, 4)
        assert wait_for(lambda: not _load_tasks(served), 15) or not _load_tasks(served), _load_tasks(served)
        assert wait_for(lambda: _live(served) == 0, 15), f"{_live(served)} closed sessions' maps still alive"
        # and their documents: Panel kept each one's notification area in pn.state._views, and
        # timers and the loop-lag monitor kept the context (pn.state.curdoc) they were made in
        assert not [d for d in docs if d() is not None], "closed sessions' documents still alive"
        # the work stopped with the sessions: every load's generator is closed
        assert _on_loop(served.loop, lambda: [layer.active for layer in served.layers.values()]) == [0, 0]
    assert all(layer.loads >= 12 for layer in served.layers.values())  # every session loaded both


# --- liveness: after the last pan, every visible layer ends --------------------------------


def _pan(vp: Viewport, rng) -> Viewport:
    """``vp`` moved by up to a fifth of its width and zoomed in or out a little (kept in the world)."""
    w, h = vp.x_range[1] - vp.x_range[0], vp.y_range[1] - vp.y_range[0]
    z = rng.choice([1.0, 1.0, 0.8, 1.25])
    cx = (vp.x_range[0] + vp.x_range[1]) / 2 + rng.uniform(-0.2, 0.2) * w
    cy = (vp.y_range[0] + vp.y_range[1]) / 2 + rng.uniform(-0.2, 0.2) * h
    hw = min(max(w * z / 2, 200_000.0), 15_000_000.0)
    hh = hw * vp.height / vp.width
    cx, cy = max(min(cx, 19_000_000 - hw), -19_000_000 + hw), max(min(cy, 19_000_000 - hh), -19_000_000 + hh)
    return Viewport.create((cx - hw, cx + hw), (cy - hh, cy + hh), vp.width, vp.height)


@pytest.mark.slow
async def test_after_bursts_of_pans_in_several_sessions_every_visible_layer_ends(make_ogc_server, tile_server, tmp_path):
    import random

    import yaml

    from mapstream.layers.catalog import load_catalog
    from mapstream.layers.http import Fetcher
    from mapstream.app.state import initial_viewport

    ogc = make_ogc_server(latency=0.01)
    path = tmp_path / "catalog.yml"
    path.write_text(yaml.safe_dump({"title": "liveness", "layers": [
        {"name": "base", "kind": "tiles", "url": tile_server.url + "/{z}/{x}/{y}.png"},
        {"name": "points", "kind": "features", "url": ogc.url, "collection": "points", "priority": 1,
         "page_size": 500, "max_features": 20_000},
        {"name": "countries", "kind": "features", "url": ogc.url, "collection": "countries", "priority": 2},
    ]}))
    cat = load_catalog(path)
    fetcher = Fetcher(cache_dir=tmp_path / "cache")
    sessions = [MapSession(cat, initial_viewport(cat, 300, 500), fetcher=fetcher) for _ in range(4)]
    try:
        for session in sessions:  # what the preload does, without its waits
            for name in session.specs:
                session.request(name)
        rng = random.Random(17)
        for _ in range(40):  # every session pans 40 times, 0-30 ms apart, loads under way
            for session in sessions:
                session.set_viewport(_pan(session.state.viewport, rng))
            await asyncio.sleep(rng.uniform(0, 0.03))

        def pending():
            return [(i, name, s.state.status(name).text()) for i, s in enumerate(sessions)
                    for name in s.state.visible if s.state.status(name).state not in ("done", "error")]

        assert await async_wait_for(lambda: not pending(), 120), f"still loading after the last pan: {pending()}"
        for session in sessions:
            for name in session.state.visible:
                status = session.state.status(name)
                assert not session.loaders[name].running
                if status.state == "done":  # the final view's result is what is shown
                    assert session.applied[name] and session.applied[name][-1] == (session.state.viewport, True)
                assert status.state == "done", f"{name}: {status.text()}"
    finally:
        for session in sessions:
            await session.aclose()
        await fetcher.aclose()
