"""LayerLoader: latest viewport wins, superseded loads are cancelled and never applied."""

from __future__ import annotations

import asyncio

import pytest

from mapstream.app.loader import LayerLoader, LoadEvent


class FakeLayer:
    """Yields a few partial results per key, with a delay; records starts and cancellations."""

    def __init__(self, frames: int = 3, delay: float = 0.02, fail: set | None = None) -> None:
        self.frames = frames
        self.delay = delay
        self.fail = fail or set()
        self.started: list = []
        self.cancelled: list = []
        self.finished: list = []

    async def load(self, key):
        self.started.append(key)
        try:
            for i in range(self.frames):
                await asyncio.sleep(self.delay)
                if key in self.fail:
                    raise RuntimeError(f"boom {key}")
                yield (key, i)
            self.finished.append(key)
        except asyncio.CancelledError:
            self.cancelled.append(key)
            raise
        except GeneratorExit:
            self.cancelled.append(key)
            raise


def _collect():
    events: list[LoadEvent] = []
    return events, events.append


async def test_single_load_delivers_all_frames_then_done():
    layer = FakeLayer()
    events, cb = _collect()
    loader = LayerLoader(layer.load, cb, name="t")
    await loader.request("a")
    assert [e.kind for e in events] == ["start", "result", "result", "result", "done"]
    assert [e.value for e in events if e.kind == "result"] == [("a", 0), ("a", 1), ("a", 2)]
    assert all(e.key == "a" for e in events)
    assert events[-1].elapsed >= 0.05  # three 20 ms sleeps at least
    await loader.close()


async def test_burst_only_last_viewport_is_applied():
    layer = FakeLayer(frames=4, delay=0.01)
    events, cb = _collect()
    loader = LayerLoader(layer.load, cb)
    keys = [f"vp{i}" for i in range(30)]
    tasks = []
    for k in keys:
        tasks.append(loader.request(k))
        await asyncio.sleep(0.004 if k != keys[-1] else 0)  # some get a frame out, most don't
    await tasks[-1]
    await asyncio.gather(*tasks, return_exceptions=True)
    applied = [e for e in events if e.kind == "result"]
    # every applied result belonged to the viewport that was current when it was applied; the
    # last ones (after the burst) all belong to the final viewport, which completed
    assert [e.value for e in events if e.key == "vp29" and e.kind == "result"] == [
        ("vp29", i) for i in range(4)
    ]
    assert events[-1].kind == "done" and events[-1].key == "vp29"
    last_start = max(i for i, e in enumerate(events) if e.kind == "start" and e.key == "vp29")
    assert all(e.key == "vp29" for e in events[last_start:])
    # no superseded load finished: all but the last were cancelled
    assert layer.finished == ["vp29"]
    assert loader.cancelled == 29 and loader.started == 30
    assert all(t.cancelled() for t in tasks[:-1])
    assert len(applied) < 30 * 4
    await loader.close()


async def test_stale_result_never_applied_when_key_changes_mid_frame():
    gate = asyncio.Event()

    async def load(key):
        if key == "old":
            await gate.wait()
        yield key

    events, cb = _collect()
    loader = LayerLoader(load, cb)
    old = loader.request("old")
    await asyncio.sleep(0)
    new = loader.request("new")
    gate.set()
    await new
    with pytest.raises(asyncio.CancelledError):
        await old
    assert [e.value for e in events if e.kind == "result"] == ["new"]
    await loader.close()


async def test_same_key_is_not_reloaded_but_force_retries():
    layer = FakeLayer(frames=1, delay=0)
    events, cb = _collect()
    loader = LayerLoader(layer.load, cb)
    await loader.request("a")
    await loader.request("a")
    assert layer.started == ["a"]
    await loader.request("a", force=True)
    assert layer.started == ["a", "a"]
    await loader.close()


async def test_error_is_reported_and_same_key_can_retry():
    layer = FakeLayer(frames=2, delay=0, fail={"bad"})
    events, cb = _collect()
    loader = LayerLoader(layer.load, cb)
    await loader.request("bad")
    assert events[-1].kind == "error"
    assert "boom bad" in str(events[-1].value)
    layer.fail.clear()
    await loader.request("bad")  # a failed load is retried even without force
    assert events[-1].kind == "done"
    await loader.close()


async def test_close_cancels_running_task_and_stops_events():
    layer = FakeLayer(frames=100, delay=0.01)
    events, cb = _collect()
    loader = LayerLoader(layer.load, cb)
    task = loader.request("a")
    await asyncio.sleep(0.035)
    n = len(events)
    await loader.close()
    assert task.done()
    assert layer.cancelled == ["a"]
    await asyncio.sleep(0.03)
    assert len(events) == n
    with pytest.raises(RuntimeError):
        loader.request("b")


class _Hangs:
    """Yields ``before`` results ``gap`` seconds apart, then waits forever (an engine that hangs)."""

    def __init__(self, before: int, gap: float) -> None:
        self.before, self.gap = before, gap
        self.closed = False

    async def load(self, key):
        try:
            for i in range(self.before):
                await asyncio.sleep(self.gap)
                yield (key, i)
            await asyncio.Event().wait()
        finally:
            self.closed = True


async def test_a_load_that_stops_producing_results_fails_after_the_stall_time():
    from mapstream.layers.errors import FetchTimeoutError, LayersError

    hangs = _Hangs(before=5, gap=0.05)  # results come well within the stall time, then none
    seen: list[LoadEvent] = []
    loader = LayerLoader(hangs.load, seen.append, stall=0.2)
    task = loader.request("a")
    await asyncio.wait_for(task, 10)  # it ends by itself
    kinds = [ev.kind for ev in seen]
    assert kinds == ["start"] + ["result"] * 5 + ["error"]
    err = seen[-1].value
    assert isinstance(err, FetchTimeoutError) and isinstance(err, LayersError)
    assert "no result for 0.2 s" in str(err)
    assert hangs.closed and not task.cancelled()
    # a failed load is retried by the same key (the retry button)
    again = loader.request("a")
    assert again is not task
    await loader.close()


async def test_the_stall_watchdog_leaves_superseding_and_closing_alone():
    hangs = _Hangs(before=0, gap=0.0)
    seen: list[LoadEvent] = []
    loader = LayerLoader(hangs.load, seen.append, stall=0.3)
    first = loader.request("a")
    await asyncio.sleep(0.05)
    second = loader.request("b")  # a newer view: the first is cancelled, not failed
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.sleep(0.05)
    await loader.close()  # closing: cancelled, no error reported
    assert second.done()
    assert [ev.kind for ev in seen] == ["start", "start"]
