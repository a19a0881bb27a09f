"""MapSession without Panel: which layers load for which view, how results and statuses apply.

Fake layers (tests/app/fakes.py) implement the engine's Layer contract; the session gets a
recording ``show`` and ``notify`` instead of a plot. Every wait is on a condition, never on a
duration.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import geopandas as gpd

from mapstream.app.session import MapSession
from mapstream.layers.errors import LayersError
from mapstream.layers.types import FeaturePage, Mosaic, Progress
from mapstream.layers.viewport import Viewport

from tests.support.waiting import async_wait_for

from .fakes import FakeFeatures, FakeTiles, builder, catalog, spec


def _vp(i: int) -> Viewport:
    x = i * 100_000.0
    return Viewport.create((x, x + 1_000_000), (0, 600_000), 500, 300)


def _session(layers, specs, settle=0.0):
    shown: list[tuple[str, object]] = []
    notes: list[str] = []
    session = MapSession(
        catalog(*specs), _vp(0), fetcher=object(), build_layer=builder(layers),
        show=lambda name, image: shown.append((name, image)), notify=notes.append,
    )
    session.view_settle = settle
    return session, shown, notes


def test_the_session_module_imports_no_ui_stack():
    code = (
        "import sys, mapstream.app.session\n"
        "bad = sorted({n.split('.')[0] for n in sys.modules} & {'panel', 'holoviews', 'geoviews', 'bokeh'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"mapstream.app.session imported: {out.stdout.strip()}"


async def test_images_go_to_show_in_order_and_the_status_follows_the_progress():
    tiles = FakeTiles(frames=3)
    session, shown, _ = _session({"base": tiles}, [spec("base")])
    await asyncio.gather(*session.set_viewport(_vp(1)))
    assert [name for name, _ in shown] == ["base"] * 3
    assert [image.opaque_pixels for _, image in shown] == [16, 40, 64]  # rows filled frame by frame
    assert session.images["base"] is shown[-1][1]
    assert session.applied["base"] == [(_vp(1), False), (_vp(1), False), (_vp(1), True)]
    status = session.state.status("base")
    assert (status.state, status.done, status.total, status.unit) == ("done", 3, 3, "tiles")
    assert session.state.completed == 1
    await session.aclose()


async def test_toggling_state_visible_cancels_clears_and_reloads():
    """What the CheckBoxGroup bound to ``state.visible`` does, without the widget."""
    tiles = FakeTiles(frames=200, delay=0.01)
    session, shown, _ = _session({"base": tiles}, [spec("base")])
    task = session.set_viewport(_vp(0))[0]
    assert await async_wait_for(lambda: session.applied["base"], 10), "a first frame"
    session.state.visible = []  # assigned, as the widget does
    assert session.state.status("base").state == "hidden"
    assert shown[-1] == ("base", None) and session.images["base"] is None
    assert await async_wait_for(task.done, 10), "the cancelled load to end"
    assert tiles.finished == []
    tiles.frames = 1
    session.state.visible = ["base"]
    assert await async_wait_for(lambda: session.state.status("base").state == "done", 10), "the reload"
    assert tiles.finished == [_vp(0)]
    await session.aclose()


async def test_layers_counting_pages_wait_for_the_view_to_settle_and_tiles_do_not():
    tiles, feats = FakeTiles(frames=1), FakeFeatures(pages=1)
    session, _, _ = _session({"base": tiles, "pts": feats}, [spec("base"), spec("pts", "features", 1)], settle=30.0)
    # no load has reported a unit yet: both load at once
    await asyncio.gather(*session.set_viewport(_vp(1)))
    assert feats.loads == [_vp(1)] and session.state.status("pts").unit == "pages"
    # now the feature layer is known to count pages: it waits (30 s here), the tiles do not
    tasks = session.set_viewport(_vp(2))
    await asyncio.gather(*tasks)
    assert tiles.loads == [_vp(1), _vp(2)]
    assert feats.loads == [_vp(1)]
    assert session.loaders["pts"].key is None  # its stale view was dropped at once
    await session.aclose()


async def test_a_layer_yielding_something_else_is_an_error_with_a_notification():
    class Odd:
        async def load(self, viewport, fetcher):
            yield {"not": "a result"}

    session, _, notes = _session({"odd": Odd()}, [spec("odd")])
    await asyncio.gather(*session.set_viewport(_vp(1)))
    status = session.state.status("odd")
    assert status.state == "error" and "dict, not a Mosaic or FeaturePage" in status.error
    assert notes == [f"Odd: {status.error}"]
    await session.aclose()


class _Failing:
    """Every tile (or page) of a load fails, or only some of them."""

    def __init__(self, result: str, failed: int, total: int = 4):
        self.result, self.failed, self.total = result, failed, total

    async def load(self, viewport, fetcher):
        errors = tuple(LayersError(f"unit {i} failed") for i in range(self.failed))
        progress = Progress(self.total, self.total, "tiles" if self.result == "mosaic" else "pages",
                            failed=self.failed, complete=True,
                            features=0 if self.failed == self.total else 10)
        if self.result == "mosaic":
            async for mosaic in FakeTiles(frames=1).load(viewport, fetcher):
                image = mosaic.image.copy()
                if self.failed == self.total:
                    image[...] = 0  # nothing painted
                yield Mosaic(image, progress, errors)
        else:
            frame = gpd.GeoDataFrame({"id": []}, geometry=[], crs=3857)
            yield FeaturePage(frame, progress, errors, "fake://page")


async def test_a_load_where_everything_failed_is_an_error_and_a_partial_one_is_done():
    layers = {
        "dead_tiles": _Failing("mosaic", failed=4), "some_tiles": _Failing("mosaic", failed=1),
        "dead_pages": _Failing("pages", failed=4), "some_pages": _Failing("pages", failed=1),
    }
    session, _, notes = _session(layers, [spec(n, priority=i) for i, n in enumerate(layers)])
    await asyncio.gather(*session.set_viewport(_vp(1)))
    states = {n: session.state.status(n).state for n in layers}
    assert states == {"dead_tiles": "error", "some_tiles": "done", "dead_pages": "error", "some_pages": "done"}
    assert session.state.status("dead_tiles").error == "unit 0 failed"
    assert session.state.status("some_tiles").text().startswith("done: 4 tiles in")
    assert "(1 failed)" in session.state.status("some_tiles").text()
    assert len(notes) == 2
    await session.aclose()


async def test_inspect_leaves_out_layers_with_nothing_and_shows_a_failing_query_in_place():
    class Broken(FakeTiles):
        async def query(self, lon, lat, fetcher):
            raise ConnectionError("GetFeatureInfo <refused>")

    feats = FakeFeatures(props={"name": "Lyon"})
    layers = {"base": FakeTiles(), "wms": Broken(), "pts": feats, "off": FakeFeatures()}
    specs = [spec("base"), spec("wms", priority=1), spec("pts", "features", 2), spec("off", "features", 3, visible=False)]
    session, _, _ = _session(layers, specs)
    published: list[str] = []
    session.state.param.watch(lambda ev: published.append(ev.new), "inspect_html")
    html = await session.inspect(4.85, 45.76)
    assert html == session.state.inspect_html
    assert "45.76000, 4.85000" in html
    assert "<b>Pts</b>" in html and "Lyon" in html
    assert "<b>Wms</b>: GetFeatureInfo &lt;refused&gt;" in html
    assert "Base" not in html and "Off" not in html  # nothing there / not visible
    assert published[0].endswith("<i>querying…</i>") and published[-1] == html
    session.state.visible = ["base"]
    assert (await session.inspect(0.0, 0.0)).endswith("<i>nothing here</i>")
    await session.aclose()


async def test_a_newer_click_cancels_the_inspect_under_way():
    feats = FakeFeatures(delay=5.0)
    session, _, _ = _session({"pts": feats}, [spec("pts", "features")])
    first = session.inspect(1.0, 1.0)
    assert await async_wait_for(lambda: "1.00000, 1.00000" in session.state.inspect_html, 10), "the first query under way"
    feats.delay = 0.0
    second = session.inspect(2.0, 2.0)
    assert "2.00000, 2.00000" in await second
    assert await async_wait_for(first.done, 10), "the first inspect to end"
    assert first.cancelled()
    await session.aclose()


async def test_metrics_are_replaced_not_mutated():
    class F:
        class metrics:
            @staticmethod
            def snapshot():
                return {"requests": 3}

    session = MapSession(catalog(spec("base")), _vp(0), fetcher=F(), build_layer=builder({}))
    seen = []
    session.state.param.watch(lambda ev: seen.append(ev.new), "metrics")
    before = session.state.metrics
    snap = session.refresh_metrics()
    assert snap["requests"] == 3 and "lag_p99_ms" in snap  # the loop-lag monitor's figures too
    assert seen == [snap] and session.state.metrics is snap and before == {}
    await session.aclose()


async def test_close_stops_loads_pending_settles_and_inspects():
    tiles, feats = FakeTiles(frames=10**6, delay=0.01), FakeFeatures(pages=1, delay=5.0)
    session, _, _ = _session({"base": tiles, "pts": feats}, [spec("base"), spec("pts", "features", 1)], settle=0.05)
    session.state.update_status("pts", unit="pages")  # as after an earlier load
    tasks = session.set_viewport(_vp(1))
    inspect = session.inspect(0.0, 0.0)
    assert await async_wait_for(lambda: session.applied["base"], 10), "a first frame"
    await session.aclose()
    assert all(t.done() for t in tasks) and inspect.done()
    assert session.state.status("base").state == "idle"
    assert session.loaders == {} and session.images == {"base": None, "pts": None}
    await asyncio.sleep(0.1)  # longer than the settle: the pending feature load never starts
    assert feats.loads == []
    assert session.set_viewport(_vp(2)) == [] and session.request("base") is None


async def test_a_layer_whose_first_loads_report_nothing_yet_waits_for_the_view_to_settle():
    """Pans while a feature layer's first load is still in discovery: one load for the final view."""
    slow_start = FakeFeatures(pages=1, delay=0.3)  # no page (so no unit) for 0.3 s
    session, _, _ = _session({"pts": slow_start}, [spec("pts", "features")], settle=0.2)
    first = session.request("pts")  # what the preload does
    assert first is not None
    for i in range(1, 11):  # ten pans, 20 ms apart, before the first page
        session.set_viewport(_vp(i))
        await asyncio.sleep(0.02)
    assert slow_start.loads in ([], [_vp(0)])  # no load per pan (the first one stopped)
    assert session.loaders["pts"].started == 1
    assert await async_wait_for(lambda: session.state.status("pts").state == "done", 10)
    assert slow_start.loads[-1] == _vp(10) and session.loaders["pts"].started == 2
    assert session.applied["pts"][-1] == (_vp(10), True)
    await session.aclose()


async def test_suspend_stops_every_load_at_once_and_resume_loads_the_latest_view():
    tiles, feats = FakeTiles(frames=10**6, delay=0.01), FakeFeatures(pages=10**6, delay=0.01)
    session, _, _ = _session({"base": tiles, "pts": feats}, [spec("base"), spec("pts", "features", 1)])
    tasks = session.set_viewport(_vp(1))
    assert await async_wait_for(lambda: session.applied["base"] and session.applied["pts"], 10)
    session.suspend()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(t.done() for t in tasks)  # cancelled at once
    assert [session.state.status(n).state for n in ("base", "pts")] == ["idle", "idle"]
    assert session.set_viewport(_vp(2)) == []  # nobody looks: nothing loads
    assert len(tiles.loads) == 1 and len(feats.loads) == 1
    tiles.frames, feats.pages = 1, 1
    resumed = session.resume()
    await asyncio.gather(*resumed)
    assert tiles.loads[-1] == feats.loads[-1] == _vp(2)  # the latest view
    assert session.state.status("base").state == session.state.status("pts").state == "done"
    await session.aclose()
    assert session.resume() == []


async def test_a_page_of_empty_geometries_draws_nothing_and_is_no_error():
    import shapely

    class Empty:
        async def load(self, viewport, fetcher):
            frame = gpd.GeoDataFrame(geometry=[shapely.Polygon(), None], crs=3857)
            yield FeaturePage(frame, Progress(1, 1, "pages", features=2, complete=True), (), "fake://empty")

    session, _, notes = _session({"e": Empty()}, [spec("e", "features")])
    await asyncio.gather(*session.set_viewport(_vp(1)))
    assert session.state.status("e").state == "done", session.state.status("e").error
    assert session.images["e"].opaque_pixels == 0 and notes == []
    await session.aclose()


async def test_a_load_that_hangs_ends_in_an_error_with_a_retry_not_loading_forever():
    class Hangs:
        async def load(self, viewport, fetcher):
            async for page in FakeFeatures(pages=3).load(viewport, fetcher):
                if page.progress.done == 2:
                    await asyncio.Event().wait()  # page 2 of 3 never comes
                yield page

    session, _, notes = _session({"pts": Hangs()}, [spec("pts", "features")])
    session.stall_timeout = 0.2
    task = session.set_viewport(_vp(1))[0]
    await asyncio.wait_for(task, 10)
    status = session.state.status("pts")
    assert status.state == "error" and "no result for 0.2 s" in status.error
    assert notes == [f"Pts: {status.error}"]
    await session.aclose()
