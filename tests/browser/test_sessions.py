"""Session hygiene on a real Panel server: browser tabs opened and closed leave nothing behind.

The server runs in this process (``pn.serve(threaded=True)``) so that the test can look inside
it: the live ``MapApp`` objects, the tasks on the server's event loop, and the session count.
Layers: real tiles from a loopback tile server, and a slow fake feature layer whose loads are
still running when the tab closes (tests/app/fakes.py).

JavaScript console errors are checked by test_map.py against ``panel serve``, not here: under
the in-process threaded server, Panel now and then hands a page its stylesheets with CDN URLs
(its per-document CSS patching), which fail offline; ``panel serve`` never did in our runs.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from types import SimpleNamespace

import pytest

from tests.app.fakes import FakeFeatures, catalog, spec
from tests.support.tileserver import TileServer
from tests.support.waiting import wait_for

from .served import free_port, launch, status_lines

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _on_loop(loop, fn, timeout=10):
    """Run ``fn()`` on the server's event loop and return its result."""
    async def call():
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)


def _wait(predicate, timeout, what):
    value = wait_for(predicate, timeout, interval=0.1)
    assert value, f"timed out waiting for {what}"
    return value


@pytest.fixture
def tiles():
    server = TileServer(latency=0.02).start()
    yield server
    server.stop()


def test_closed_tabs_leave_no_session_task_or_map_behind(tiles, tmp_path):
    import panel as pn
    from playwright.sync_api import sync_playwright

    from mapstream.app import create_app
    from mapstream.app.views import MapApp
    from mapstream.layers.catalog import build_layer
    from mapstream.layers.http import Fetcher

    apps: weakref.WeakSet[MapApp] = weakref.WeakSet()
    # The test's own fetcher, not the process-wide one: its client lives on the server's event
    # loop, which this test stops, so the test closes it there first (and no user cache is used).
    fetcher = Fetcher(cache_dir=tmp_path / "cache")
    # a load that never ends by itself: only the session's cleanup can stop it
    slow = FakeFeatures(pages=10**6, per_page=20, delay=0.05)
    tile_spec = SimpleNamespace(**{**vars(spec("base")), "url": tiles.url + "/{z}/{x}/{y}.png"})

    async def build(s, fetcher):
        if s.name == "pts":
            return slow
        real = dict(name=s.name, kind="tiles", url=s.url)
        from mapstream.layers.catalog import LayerSpec

        return await build_layer(LayerSpec(**real), fetcher)

    def make():
        layers = catalog(tile_spec, spec("pts", "features", 1))
        app = create_app(layers, fetcher=fetcher, build_layer=build)
        apps.add(app)
        return app

    port = free_port()
    thread = pn.serve(
        {"app": make}, port=port, address="127.0.0.1", show=False, threaded=True, start=True,
        websocket_origin=[f"127.0.0.1:{port}"], check_unused_sessions_milliseconds=500, unused_session_lifetime_milliseconds=3000,
    )
    try:
        url = f"http://127.0.0.1:{port}/app"
        loop = _wait(lambda: thread.asyncio_loop if thread.asyncio_loop.is_running() else None, 30, "the server")
        server = _wait(lambda: pn.state._servers.get(thread.server_id, (None,))[0], 30, "the server object")

        def sessions():
            return _on_loop(loop, lambda: len(server.get_sessions("/app")))

        def tasks():
            return _on_loop(loop, lambda: sorted(t.get_name() for t in asyncio.all_tasks(loop) if not t.done()))

        with sync_playwright() as p:
            browser = launch(p)
            counts = []
            for round_ in range(3):
                pages = []
                for _ in range(3):
                    page = browser.new_page(viewport={"width": 1000, "height": 700})
                    page.goto(url)
                    page.wait_for_selector("canvas", timeout=60_000)
                    pages.append(page)
                for page in pages:  # every tab shows its map and is mid-load on the features
                    _wait(lambda: status_lines(page).get("base", "").startswith("done"), 60, "tiles done")
                    _wait(lambda: status_lines(page).get("pts", "").startswith("loading"), 60, "features loading")
                assert any(n.startswith("load:pts") for n in tasks())
                for page in pages:
                    page.close()
                _wait(lambda: sessions() == 0, 60, "the sessions to be destroyed")
                _wait(lambda: not any(n.startswith("load:") for n in tasks()), 15, "the load tasks to end")
                gc.collect()
                counts.append((len(_on_loop(loop, lambda: [a for a in apps if not a.session.closed])), len(tasks())))
            browser.close()
        assert len(slow.loads) >= 9  # every tab started its own load
        live = _wait(lambda: (gc.collect(), len(apps))[1] == 0 or None, 20, "MapApp objects to be freed")
        assert live
        # nothing grows from round to round: no live map, the same handful of server tasks
        assert [c[0] for c in counts] == [0, 0, 0]
        assert counts[-1][1] <= counts[0][1], counts
    finally:
        if thread.asyncio_loop.is_running():
            asyncio.run_coroutine_threadsafe(fetcher.aclose(), thread.asyncio_loop).result(10)
        thread.stop()
