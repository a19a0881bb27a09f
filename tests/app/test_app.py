"""Component tests of the map (MapApp: session, plot and side panel) with fake layers: no browser, no network."""

from __future__ import annotations

import asyncio
import gc

import pytest

from mapstream.app import create_app
from mapstream.app.views import MapApp
from mapstream.layers.viewport import Viewport

from tests.support.waiting import async_wait_for

from .fakes import FakeFeatures, FakeTiles, builder, catalog, spec


def _vp(i: int) -> Viewport:
    x = i * 100_000.0
    return Viewport.create((x, x + 1_000_000), (0, 600_000), 500, 300)


def _app(layers, specs, settle=0.0, **kw):
    app = create_app(catalog(*specs), fetcher=object(), build_layer=builder(layers), **kw)
    app.session.view_settle = settle  # most tests check loading itself: feature layers start at once
    return app


async def test_single_viewport_loads_every_visible_layer_with_status():
    tiles, feats = FakeTiles(), FakeFeatures()
    app = _app({"base": tiles, "pts": feats},
               [spec("base"), spec("pts", "features", 1, style={"color": "#00ff00", "point_size": 4})])
    assert isinstance(app, MapApp)
    await asyncio.gather(*app.session.set_viewport(_vp(0)))
    assert app.state.status("base").text() .startswith("done: 3 tiles")
    assert app.state.status("pts").text().startswith("done: 100 features, 2 pages")
    assert app.session.applied["base"][-1] == (_vp(0), True)
    assert app.session.applied["pts"][-1] == (_vp(0), True)
    assert app.session.images["base"].opaque_pixels == 64
    assert app.session.images["pts"].opaque_pixels > 50  # points drawn by datashader
    assert app.plot.pipes["pts"].data is app.session.images["pts"]  # pushed through the Pipe
    await app.aclose()


async def test_burst_of_viewports_only_the_last_is_applied():
    # each load takes 150-200 ms: a superseded one cannot complete even if a view comes late
    tiles, feats = FakeTiles(frames=4, delay=0.05), FakeFeatures(pages=3, delay=0.05)
    app = _app({"base": tiles, "pts": feats}, [spec("base"), spec("pts", "features", 1)])
    tasks = []
    for i in range(25):
        tasks += app.session.set_viewport(_vp(i))
        await asyncio.sleep(0.003)
    await asyncio.gather(*tasks, return_exceptions=True)
    final = _vp(24)
    for name in ("base", "pts"):
        applied = app.session.applied[name]
        assert applied[-1] == (final, True)
        # nothing of an earlier view was applied after the final view's first result
        first_final = next(i for i, (vp, _) in enumerate(applied) if vp == final)
        assert all(vp == final for vp, _ in applied[first_final:])
        # only the final view completed: superseded loads were cancelled before their end
        assert [vp for vp, complete in applied if complete] == [final]
    assert tiles.finished == [final]
    assert app.session.loaders["base"].cancelled >= 20
    assert app.state.status("base").state == "done"
    await app.aclose()


async def test_hidden_layer_is_cancelled_cleared_and_reloaded_when_shown():
    tiles = FakeTiles(frames=50, delay=0.01)
    app = _app({"base": tiles, "top": FakeTiles(frames=1)}, [spec("base"), spec("top", priority=1)])
    tasks = app.session.set_viewport(_vp(0))
    assert await async_wait_for(lambda: app.session.applied["base"], 10), "a first frame"
    app.session.set_visible("base", False)
    assert app.state.status("base").state == "hidden"
    assert app.session.images["base"] is None and app.plot.pipes["base"].data is None
    await asyncio.sleep(0)
    assert tasks[0].cancelled() or tasks[0].done()
    assert "base" not in app.state.visible
    n = len(app.session.applied["base"])
    await asyncio.sleep(0.05)
    assert len(app.session.applied["base"]) == n  # nothing applied while hidden
    tiles.frames = 1
    app.session.set_visible("base", True)
    await app.session.loaders["base"].task
    assert app.session.applied["base"][-1] == (_vp(0), True)
    assert "base" in app.sidebar.toggles.value  # the toggle follows the state
    await app.aclose()


async def test_the_layer_toggles_and_status_lines_are_bound_to_the_state_both_ways():
    tiles = FakeTiles(frames=50, delay=0.01)
    app = _app({"base": tiles, "top": FakeTiles(frames=1)}, [spec("top", priority=1), spec("base")])
    toggles = app.sidebar.toggles
    assert toggles.options == {"Base": "base", "Top": "top"}  # priority order
    assert toggles.value == ["base", "top"]
    tasks = app.session.set_viewport(_vp(0))
    assert await async_wait_for(lambda: app.session.applied["base"], 10), "a first frame"
    assert app.sidebar.status_panes["base"].object == app.state.status("base").text() != "idle"
    toggles.value = ["top"]  # the user unticks "Base"
    assert app.state.visible == ["top"]
    assert app.state.status("base").state == "hidden"
    assert app.sidebar.status_panes["base"].object == "hidden"
    assert app.plot.pipes["base"].data is None
    await asyncio.gather(*tasks, return_exceptions=True)
    assert tiles.finished == []  # its load was cancelled
    app.state.visible = ["top", "base"]  # and a change of the state ticks the box
    assert set(toggles.value) == {"base", "top"}
    tiles.frames = 1
    await app.session.loaders["base"].task
    assert app.state.status("base").state == "done"
    await app.aclose()


async def test_failing_layer_shows_error_and_retry_while_others_work():
    bad = FakeTiles(fail=True)
    app = _app({"base": FakeTiles(), "bad": bad}, [spec("base"), spec("bad", priority=1)])
    await asyncio.gather(*app.session.set_viewport(_vp(0)))
    st = app.state.status("bad")
    assert st.state == "error" and "refused" in st.error
    assert app.sidebar.retry["bad"].visible and not app.sidebar.retry["base"].visible
    assert "error: upstream refused" in app.sidebar.status_panes["bad"].object
    assert app.state.status("base").state == "done"
    bad.fail = False
    await app.session.retry("bad")
    assert app.state.status("bad").state == "done"
    assert not app.sidebar.retry["bad"].visible
    await app.aclose()


async def test_inspect_queries_visible_feature_layers_and_escapes_values():
    feats = FakeFeatures()
    app = _app({"base": FakeTiles(), "pts": feats}, [spec("base"), spec("pts", "features", 1)])
    await app.session.inspect(10.0, 50.0)
    out = app.state.inspect_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "<script>" not in out
    await app.aclose()


async def test_close_cancels_tasks_and_stops_applying():
    tiles = FakeTiles(frames=100, delay=0.01)
    app = _app({"base": tiles}, [spec("base")])
    tasks = app.session.set_viewport(_vp(0))
    assert await async_wait_for(lambda: app.session.applied["base"], 10), "a first frame"
    assert app.state.status("base").state == "loading"
    await app.aclose()
    assert all(t.done() for t in tasks)
    assert app.state.status("base").text() == "idle"  # no load is under way any more
    n = len(app.session.applied["base"])
    await asyncio.sleep(0.03)
    assert len(app.session.applied["base"]) == n
    assert app.session.set_viewport(_vp(1)) == []


async def test_many_sessions_leave_no_task_or_app_behind():
    import weakref

    refs = []
    baseline = len(asyncio.all_tasks())
    for i in range(15):
        app = _app({"base": FakeTiles(frames=20, delay=0.005)}, [spec("base")])
        app.session.set_viewport(_vp(i))
        await asyncio.sleep(0.01)
        await app.aclose()
        refs.append(weakref.ref(app))
        del app
    assert await async_wait_for(lambda: len(asyncio.all_tasks()) <= baseline, 5)
    gc.collect()
    assert len(asyncio.all_tasks()) <= baseline
    alive = sum(r() is not None for r in refs)
    assert alive <= 1, f"{alive} closed sessions still referenced"


def test_metrics_view_reads_the_engine_metrics():
    class F:
        class metrics:
            @staticmethod
            def snapshot():
                return {"requests": 7, "latency_p95": 0.123, "cache_hits": 3, "cache_misses": 1}

    app = create_app(catalog(spec("base")), fetcher=F(), build_layer=builder({"base": FakeTiles()}))
    snap = app.session.refresh_metrics()
    assert snap["requests"] == 7
    text = app.sidebar.metrics_pane.object  # bound to state.metrics
    assert "requests: 7" in text and "123 ms" in text and "75%" in text


@pytest.mark.parametrize("visible", [True, False])
def test_catalog_visibility_sets_toggles(visible):
    app = create_app(catalog(spec("a"), spec("b", priority=1, visible=visible)), fetcher=object(),
                     build_layer=builder({}))
    assert ("b" in app.sidebar.toggles.value) is visible
    assert ("b" in app.state.visible) is visible


async def test_feature_status_counts_pages_as_they_arrive_while_shading_runs(monkeypatch):
    """The status line follows the pages, not the (slower) shading; the final image has them all."""
    import threading

    from mapstream.app import render

    gate = threading.Event()  # holds every shade until the pages have all arrived
    real = render.shade_aggregates
    shaded: list[int] = []

    def slow_shade(aggs, *args, **kw):
        gate.wait(10)
        shaded.append(int(aggs["points"].sum()) if "points" in aggs else 0)
        return real(aggs, *args, **kw)

    monkeypatch.setattr(render, "shade_aggregates", slow_shade)
    feats = FakeFeatures(pages=6, per_page=20, delay=0.01)
    app = _app({"pts": feats}, [spec("pts", "features", 0)])
    seen: list[str] = []
    status = app.state.status("pts")
    status.param.watch(lambda *_: seen.append(status.text()), list(status.param))  # every update
    task = app.session.set_viewport(_vp(0))[0]
    await async_wait_for(lambda: "loading 5 of 6 pages" in seen, 10)
    assert "loading 5 of 6 pages" in seen  # counted while the first shade was still held
    assert app.session.applied["pts"] == []  # and nothing drawn yet
    gate.set()
    await task
    assert app.state.status("pts").text().startswith("done: 120 features, 6 pages")
    assert app.session.applied["pts"][-1] == (_vp(0), True)
    assert shaded[-1] == 120  # the final image is shaded from every page's points
    await app.aclose()


def test_panel_serve_warm_run_waits_for_the_compile_and_real_sessions_do_not(monkeypatch):
    """`panel serve --warm` runs the app once in a session without a server context."""
    from bokeh.application import Application
    from bokeh.application.handlers import FunctionHandler
    from bokeh.document import Document
    from bokeh.server.contexts import BokehSessionContext
    from panel.io.session import generate_session
    from panel.io.state import set_curdoc

    from mapstream.app import factory, render
    from mapstream import demo

    waits: list[bool] = []
    monkeypatch.setattr(render, "warm_up", lambda wait=False, timeout=None: waits.append(wait) or True)
    started: list[bool] = []
    monkeypatch.setattr(demo, "start_demo_soon", lambda **kw: started.append(True))
    seen: list[bool] = []

    def make(doc):  # what app/main.py does in a session
        with set_curdoc(doc):
            seen.append(factory.server_is_warming())
            create_app(catalog(spec("base")), fetcher=object(), build_layer=builder({"base": FakeTiles()}))

    assert factory.server_is_warming() is False  # no document: a notebook or a script
    generate_session(Application(FunctionHandler(make)))  # how panel serve --warm runs the app
    real_doc = Document()
    real_ctx = BokehSessionContext("real", object(), real_doc)
    real_doc._session_context = lambda: real_ctx
    with set_curdoc(real_doc):
        assert factory.server_is_warming() is False
    assert seen == [True]
    assert waits == [True]
    assert started == []  # the fake catalog uses no demo service

    def make_demo(doc):
        with set_curdoc(doc):
            create_app(None, fetcher=object(), build_layer=builder({}))

    generate_session(Application(FunctionHandler(make_demo)))
    assert started == [True]  # the demo's services start beside the compile


async def test_preload_waits_for_the_plot_size_then_starts_layers_in_priority_order(monkeypatch):
    from mapstream.app import session

    monkeypatch.setattr(session, "PRELOAD_STAGGER", 5.0)
    tiles, feats = FakeTiles(frames=3, delay=0.02), FakeFeatures(pages=2, delay=0.02)
    app = _app({"base": tiles, "pts": feats}, [spec("pts", "features", 1), spec("base", priority=0)])
    app.session.preloading = True  # as when the page shows the app (__panel__)
    base_done_when_pts_started: list = []
    load_pts = feats.load

    def load(viewport, fetcher):
        base_done_when_pts_started.append(list(tiles.finished))
        return load_pts(viewport, fetcher)

    feats.load = load
    preload = asyncio.ensure_future(app.session.preload())
    await asyncio.sleep(0.1)
    assert tiles.loads == [] and feats.loads == []  # the guessed viewport is not loaded
    real = _vp(3)
    app.plot.range_stream.event(x_range=real.x_range, y_range=real.y_range)
    app.plot.size_stream.event(width=real.width, height=real.height)
    await asyncio.wait_for(preload, 5)
    assert app.state.viewport == real
    assert tiles.loads == [real] and feats.loads == [real]  # each loaded once, for the real view
    assert base_done_when_pts_started == [[real]]  # the basemap (priority 0) was done first
    await asyncio.gather(*(t for t in (app.session.loaders["pts"].task,) if t is not None))
    assert app.state.status("pts").state == "done"
    assert app.session.preloading is False
    # after the preload, a new view reloads every layer at once
    app.session.set_viewport(_vp(4))
    assert app.session.loaders["base"].key == app.session.loaders["pts"].key == _vp(4)
    await app.aclose()


async def test_preload_guesses_the_view_when_the_browser_says_nothing(monkeypatch):
    from mapstream.app import session

    monkeypatch.setattr(session, "FIRST_VIEW_WAIT", 0.05)
    tiles = FakeTiles(frames=1)
    app = _app({"base": tiles}, [spec("base")])
    await asyncio.wait_for(app.session.preload(), 5)
    assert tiles.loads == [app.state.viewport]
    await app.aclose()


async def test_a_burst_of_views_loads_features_once_for_the_final_view():
    tiles, feats = FakeTiles(frames=2, delay=0.01), FakeFeatures(pages=2, delay=0.01)
    app = _app({"base": tiles, "pts": feats}, [spec("base"), spec("pts", "features", 1)], settle=0.3)
    await asyncio.gather(*app.session.set_viewport(_vp(0)))
    assert await async_wait_for(lambda: feats.loads, 5)
    await asyncio.gather(*(t for t in [app.session.loaders["pts"].task] if t is not None))
    assert feats.loads == [_vp(0)]
    # ten pans, 40 ms apart: each within the settle time of the last, 0.4 s in all (longer than
    # the settle time: each pan restarts it)
    for i in range(1, 11):
        app.session.set_viewport(_vp(i))
        await asyncio.sleep(0.04)
    assert len(tiles.loads) == 11  # tiles follow every view at once
    assert feats.loads == [_vp(0)]  # features wait for the view to settle
    assert app.session.loaders["pts"].key is None  # and the stale load was stopped at once
    assert await async_wait_for(lambda: len(feats.loads) > 1, 5)
    await asyncio.gather(*(t for t in [app.session.loaders["pts"].task] if t is not None))
    assert feats.loads == [_vp(0), _vp(10)]  # one load, for the final view
    assert app.session.applied["pts"][-1] == (_vp(10), True)
    assert app.state.status("pts").state == "done"
    app.session.set_viewport(_vp(11))
    await app.aclose()  # a pending settle is dropped with the session
    await asyncio.sleep(0.4)  # longer than the settle time
    assert feats.loads[-1] == _vp(10)


async def test_a_view_of_another_shape_is_widened_to_equal_aspect():
    from mapstream.app.state import equal_aspect

    app = _app({"base": FakeTiles(frames=1)}, [spec("base")])
    app.plot.range_stream.event(x_range=(0.0, 1_000_000.0), y_range=(0.0, 1_000_000.0))
    app.plot.size_stream.event(width=800, height=400)
    expected = equal_aspect(Viewport.create((0, 1_000_000), (0, 1_000_000), 800, 400))
    assert await async_wait_for(lambda: app.state.viewport == expected, 5)
    vp = app.state.viewport
    assert vp == expected
    assert vp.x_range == (-500_000.0, 1_500_000.0) and vp.y_range == (0.0, 1_000_000.0)
    await app.aclose()


async def test_a_map_whose_browser_went_away_stops_loading_and_resumes_when_it_is_back():
    from mapstream.app.views import connection_count

    tiles = FakeTiles(frames=10**6, delay=0.01)
    app = _app({"base": tiles}, [spec("base")])
    app.watch_connection(0)  # before the browser first connects: nothing is suspended
    tasks = app.session.set_viewport(_vp(0))
    assert tasks and await async_wait_for(lambda: app.session.applied["base"], 10)
    app.watch_connection(1)
    app.watch_connection(None)  # no server session to ask: nothing changes
    assert not app.session.suspended and app.session.loaders["base"].running
    app.watch_connection(0)  # the tab closed
    await asyncio.gather(*tasks, return_exceptions=True)
    assert app.session.suspended and not app.session.loaders["base"].running
    assert app.state.status("base").state == "idle"
    tiles.frames = 1
    app.watch_connection(1)  # it came back (Panel's reconnect)
    assert await async_wait_for(lambda: app.state.status("base").state == "done", 10)
    assert connection_count(None) is None and connection_count(object()) is None
    await app.aclose()
