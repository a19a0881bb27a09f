"""A closed tab's loads stop at once, long before Bokeh destroys its session.

Bokeh keeps a session for ``unused_session_lifetime`` (15 s by default) after its last
connection closed; the map watches its connection and stops loading within about a second.
The server runs in this process (``pn.serve(threaded=True)``, Bokeh's default lifetimes) so
that the test can look at the session; the layer is a fake whose load never ends by itself.
"""

from __future__ import annotations

import asyncio
import weakref

import pytest

from tests.app.fakes import FakeTiles, builder, catalog, spec
from tests.support.waiting import wait_for

from .served import free_port, launch, status_lines

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _on_loop(loop, fn, timeout=20):
    async def call():
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)


def test_a_closed_tab_stops_its_loads_while_its_session_still_exists():
    import panel as pn
    from playwright.sync_api import sync_playwright

    from mapstream.app import create_app

    apps: weakref.WeakSet = weakref.WeakSet()
    tiles = FakeTiles(frames=10**6, delay=0.05)  # loads until stopped

    def make():
        app = create_app(catalog(spec("base")), fetcher=object(), build_layer=builder({"base": tiles}))
        apps.add(app)
        return app

    port = free_port()
    thread = pn.serve({"app": make}, port=port, address="127.0.0.1", show=False, threaded=True, start=True,
                      websocket_origin=[f"127.0.0.1:{port}"])
    try:
        assert wait_for(lambda: thread.asyncio_loop is not None and thread.asyncio_loop.is_running(), 30)
        loop = thread.asyncio_loop
        server = wait_for(lambda: pn.state._servers.get(thread.server_id, (None,))[0], 30)
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/app")
            page.wait_for_selector("canvas", timeout=60_000)
            assert wait_for(lambda: status_lines(page).get("base", "").startswith("loading"), 60)
            (app,) = list(apps)
            page.close()

            def stopped():
                loader = app.session.loaders.get("base")
                return app.session.suspended and not (loader is not None and loader.running)

            assert wait_for(lambda: _on_loop(loop, stopped), 10), "the closed tab's load still runs"
            # the session is still there: it was the map, not Bokeh's session expiry, that stopped it
            assert _on_loop(loop, lambda: len(server.get_sessions("/app"))) == 1
            assert app.state.status("base").state == "idle"
            n = len(tiles.loads)
            browser.close()
        assert len(tiles.loads) == n  # no load started after it stopped
    finally:
        thread.stop()
