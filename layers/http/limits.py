"""Adaptive concurrency per host: how many attempts each host gets at once, learned from what it
answers (:class:`HostLimit`), and the process-wide table of hosts (:class:`HostLimits`).

The fixed per-host limit (8) suits a server that waits on I/O and hurts one that burns CPU: at 8
in flight a small pygeoapi answers a page in 12 s instead of 0.5 s, its throughput collapsing.
So each host's limit moves between 1 and a *ceiling* (the fetcher's ``per_host_limit``, or the
catalog's ``concurrency`` through ``Fetcher.set_host_limit``), which it never exceeds.

What it measures, per host (all :class:`~.admission.Admission` and :mod:`.retry` tell it):

- *The latency floor*, per route (a URL path with its digit runs and long hex runs folded, so
  ``/tiles/3/1/2.png`` and ``/tiles/4/5/6.png`` are one route and a landing page is another,
  and a cheap landing page does not make every data page look queued): the lowest latency
  seen, as the ``rtt_noload`` of ``VegasLimit`` and the ``minRTT`` of Envoy's adaptive
  concurrency filter (envoyproxy.io, *Adaptive Concurrency*, gradient controller). Queueing
  only adds latency, so any sample may lower it; an attempt that ran alone (nothing else in
  flight to the host: Envoy measures its ``minRTT`` "by only allowing a very low outstanding
  request count") also pulls it up, a quarter of the way, so one lucky answer does not pin
  the limit low for ever. Envoy stops traffic to re-measure; we do not (no probe costs a
  latency-bound server its round trips): the throughput rule below does not trust the floor.
- *Windows* of about one limit's worth of completed attempts (at least 3). For each sample,
  ``g = floor / latency`` (1 without queueing) and ``c`` the attempts in flight when it started.
  By Little's law the pipe carried ``X = mean(c * g)`` requests' worth of work while ``L =
  mean(c)`` were in flight, so ``q = L - X`` requests queued: this is TCP Vegas's
  ``diff = (expected - actual) * baseRTT`` (Brakmo & Peterson 1995) and the ``queueSize =
  limit * (1 - rtt_noload / rtt)`` of Netflix concurrency-limits' ``VegasLimit``, with the
  floor kept per route instead of per host.

The control law, once per window (fake-clock tests: ``tests/layers/test_http_adaptive.py``):

- *Slow start* (TCP): the limit starts at ``start`` (4, or a quarter of a ceiling above 16, or the
  ceiling if lower) and doubles
  each window while ``q < alpha``; the first queueing, 429/503 or timeout ends it. A
  latency-bound server with a ceiling of 8 is at 8 after one round trip.
- ``q < alpha`` (``alpha = max(1, L/10)``): one more slot, unless the next limit was found not
  to pay within the last :data:`MEMORY` seconds.
- ``q > beta`` (``beta = max(2, L/4)``): the limit drops to what the pipe carried plus one,
  ``ceil(X) + 1`` (the gradient step of concurrency-limits' ``Gradient2Limit``, ``limit *
  longRtt / shortRtt + queueSize``, and of Envoy's ``limit * minRTT / sampleRTT + headroom``,
  without their smoothing, which is there for thousands of requests a second, not tens) --
  unless the throughput measured at that lower limit was clearly less: a floor set by a cheap
  answer must not pin a server that gains from concurrency.
- In between (some queueing): throughput decides, a hill-climb on ``X``. If the throughput
  measured one slot lower is known, the current limit must beat it by a quarter of the ideal
  gain (:data:`GAIN`: ``X(L) >= X(L-1) * (1 + 0.25 / (L-1))``) or the limit steps down and
  remembers for :data:`MEMORY` seconds that ``L`` does not pay once it failed twice (only
  windows that ran at the limit count); otherwise one more slot is
  tried, unless it was tried and did not pay. So a server whose latency rises without a gain
  in throughput (a CPU-bound one) settles low; one whose service time grows with load settles
  near its best; a latency-bound one holds its ceiling: noise moves ``q`` but not the
  comparison, and nothing shrinks while throughput is there. Limits are only raised while the
  host is busy (half the limit or more in flight on average: the "app limited" rule of
  ``VegasLimit`` and ``Gradient2Limit``).
- *429 and 503* (the server pushes back): multiplicative decrease (half), at most once per
  round trip (TCP's one reduction per window of data), and a cap one below the concurrency
  that was refused, kept :data:`MEMORY` seconds after the last push-back. With ``Retry-After``
  the whole host pauses: no attempt to it leaves before that time (:meth:`HostLimit.pause_left`,
  honoured in admission), and attempts refused for the same burst do not spend the retry
  budget (:meth:`HostLimit.pushback`). A ``Retry-After`` longer than ``max_retry_after`` ends
  requests at once with :class:`~mapstream.layers.errors.RetryAfterTooLongError` (issue 17).
- *Timeouts*: multiplicative decrease, once per round trip.

What is learned is kept per host for the life of the fetcher (every event loop, every load and
session share it), so a new load starts where the last one ended. ``Fetcher(adaptive=False)``
or ``MAPSTREAM_ADAPTIVE=0`` turns the learning off (each host gets its ceiling, as before);
``Retry-After`` pauses and the long-wait rule still apply.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["HostLimit", "HostLimits", "adaptive_default", "first_limit", "route_of", "MEMORY", "START"]

#: The first limit of a host (slow start doubles it from there).
START = 4
#: Seconds a finding is kept: a limit that did not pay, a push-back cap, a throughput figure.
MEMORY = 60.0
#: Throughput (responses a second) is counted over this many seconds.
RATE_WINDOW = 10.0
#: A slot must buy this share of its ideal gain in throughput (1 / L more at L) to be kept.
GAIN = 0.25
#: At most this many routes keep a floor per host; beyond, every other path shares one.
MAX_ROUTES = 32

_FOLD = re.compile(r"[0-9a-fA-F]{8,}|\d+")


def first_limit(start: int, ceiling: int) -> int:
    """Where slow start begins: ``start``, or a quarter of a high ceiling (two doublings from it).

    A ceiling is what the host is known to take (the catalog's ``concurrency``, a policy cap, the
    fetcher's limit); starting at 4 under a ceiling of 100 costs five round trips of doubling,
    a third of the time of 2 000 GETs at 50 ms (``benchmarks.fetch``), for no protection that a
    quarter of the ceiling does not give.

    >>> first_limit(4, 8), first_limit(4, 100), first_limit(4, 2)
    (4, 25, 4)
    """
    return max(start, ceiling // 4)


def route_of(url: str) -> str:
    """The route of ``url``: its path with digit runs and hex runs of 8+ folded to ``#``.

    Requests of one route cost the server about the same; a latency floor is kept per route.

    >>> route_of("http://h.test/tiles/12/2048/1361.png?key=1")
    '/tiles/#/#/#.png'
    >>> route_of("http://h.test/collections/points/items?offset=500")
    '/collections/points/items'
    >>> route_of("http://h.test")
    '/'
    """
    rest = url.split("://", 1)[-1]
    slash = rest.find("/")
    path = "/" if slash < 0 else rest[slash:].split("?", 1)[0].split("#", 1)[0]
    return _FOLD.sub("#", path) or "/"


def adaptive_default() -> bool:
    """Whether adaptive limits are on when the fetcher does not say: ``MAPSTREAM_ADAPTIVE``
    unset, or anything but ``0``, ``false``, ``no``, ``off`` (``tests/layers/test_http_adaptive.py``).
    """
    return os.environ.get("MAPSTREAM_ADAPTIVE", "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass
class Attempt:
    """What admission saw of one attempt: when it left, how many were in flight when it left
    (``concurrency``, itself included), how many on average while it ran (``load``), how long
    it took and whether it ran alone."""

    started: float
    concurrency: int
    area: float = 0.0  # the host's in-flight integral when it left
    load: float = 1.0
    latency: float = 0.0
    solo: bool = False


class HostLimit:
    """One host's adaptive limit, latency floors, throughput and ``Retry-After`` pause.

    Thread-safe (event loops in several threads may share a host). ``clock`` is
    ``time.monotonic`` unless a test gives a fake one.

    Parameters
    ----------
    ceiling
        The most attempts at once (the catalog's or the fetcher's limit); never exceeded.
    adaptive
        ``False``: the limit is the ceiling (pauses still apply).
    start
        The first limit (slow start doubles it from there), raised to a quarter of a high
        ceiling (:func:`first_limit`): a host allowed 100 at once is asked 25 at first.
    clock
        Seconds, monotonic.
    """

    def __init__(
        self, ceiling: int, *, adaptive: bool = True, start: int = START, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ceiling = ceiling
        self.adaptive = adaptive
        self.start = start = first_limit(start, ceiling)
        self.clock = clock
        self._lock = threading.RLock()
        self.estimate = float(start)  # the learned limit (before the ceiling and the cap)
        self.slow_start = True
        self.floors: dict[str, float] = {}
        self.in_flight = 0
        self._area = 0.0  # integral of in_flight over time: the mean load of each attempt
        self._area_t = clock()
        self._peak = 0  # most in flight since the host was last idle
        self._window: list[tuple[float, float]] = []  # (c, g) per sample
        self._window_peak = 0.0
        self.throughput_at: dict[int, tuple[float, float]] = {}  # limit -> (X, when)
        self.no_gain: dict[int, float] = {}  # limit -> when it was found not to pay (twice)
        self._failed: dict[int, float] = {}  # limit -> when it last did not pay
        self.cap: int | None = None
        self.cap_until = 0.0
        self.paused_until = 0.0
        self.pushed_at = -math.inf  # when the host last pushed back (429/503)
        self.last_decrease = -math.inf
        self.srtt = 0.0  # smoothed latency, for "once per round trip"
        self._done: deque[float] = deque(maxlen=4096)  # completion times, for throughput
        self._watchers: list[tuple[asyncio.AbstractEventLoop, weakref.ref[Any]]] = []
        self._shown = self.limit

    # -- the limit -----------------------------------------------------------------------

    @property
    def limit(self) -> int:
        """Attempts allowed at once now."""
        if not self.adaptive:
            return self.ceiling
        top = self.ceiling
        if self.cap is not None:
            if self.clock() < self.cap_until:
                top = min(top, self.cap)
            else:
                self.cap = None
        return max(1, min(top, int(self.estimate)))

    def set_ceiling(self, ceiling: int) -> None:
        with self._lock:
            fresh = self.slow_start and not self.throughput_at and not self._window
            self.ceiling = ceiling
            if fresh:  # nothing learned yet: start as a host with this ceiling would
                self.start = first_limit(START, ceiling)
                self.estimate = float(self.start)
            self.estimate = min(self.estimate, float(ceiling))
        self._notify()

    def watch(self, loop: asyncio.AbstractEventLoop, limiter: Any) -> None:
        """Keep ``limiter.limit`` (an :class:`~.admission.Limiter` of ``loop``) equal to :attr:`limit`."""
        with self._lock:
            self._watchers = [(lp, ref) for lp, ref in self._watchers if ref() is not None and not lp.is_closed()]
            self._watchers.append((loop, weakref.ref(limiter)))

    def _notify(self) -> None:
        limit = self.limit
        if limit == self._shown:
            return
        self._shown = limit
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, ref in list(self._watchers):
            limiter = ref()
            if limiter is None or loop.is_closed():
                continue
            if loop is running:
                limiter.set_limit(limit)
            else:
                loop.call_soon_threadsafe(lambda lim=limiter: lim.set_limit(self.limit))

    # -- attempts (admission) ------------------------------------------------------------

    def started(self) -> Attempt:
        """An attempt left for this host (admission calls it once the attempt has its slots)."""
        with self._lock:
            now = self._advance()
            self.in_flight += 1
            self._peak = max(self._peak, self.in_flight)
            return Attempt(now, self.in_flight, self._area)

    def _advance(self) -> float:
        now = self.clock()
        self._area += self.in_flight * (now - self._area_t)
        self._area_t = now
        return now

    def finished(self, attempt: Attempt) -> Attempt:
        """The attempt is over (whatever its outcome): its latency and whether it ran alone."""
        with self._lock:
            now = self._advance()
            self.in_flight -= 1
            span = now - attempt.started
            attempt.latency = max(1e-6, span)
            attempt.load = (self._area - attempt.area) / span if span > 0 else float(attempt.concurrency)
            attempt.solo = self.in_flight == 0 and self._peak == 1
            if self.in_flight == 0:
                self._peak = 0
            return attempt

    def pause_left(self) -> float:
        """Seconds until an attempt may leave for this host (``Retry-After``), 0 if it may now."""
        return max(0.0, self.paused_until - self.clock())

    def _route(self, route: str) -> str:
        return route if route in self.floors or len(self.floors) < MAX_ROUTES else "*"

    # -- outcomes (retry) ------------------------------------------------------------------

    def success(self, route: str, attempt: Attempt) -> None:
        """A response that was not a push-back: a latency sample for ``route``."""
        with self._lock:
            now = self.clock()
            self._done.append(now)
            lat = attempt.latency
            self.srtt = lat if not self.srtt else 0.8 * self.srtt + 0.2 * lat
            if not self.adaptive:
                return
            route = self._route(route)
            floor = self.floors.get(route)
            if floor is None or lat < floor:
                floor = lat
            elif attempt.solo:
                floor += 0.25 * (lat - floor)  # alone, so no queue of ours: the floor was low
            self.floors[route] = floor
            c = max(1.0, attempt.load)
            self._window.append((c, min(1.0, floor / lat)))
            if len(self._window) >= max(3, self.limit):
                self._close_window(now)
        self._notify()

    def _close_window(self, now: float) -> None:
        samples, self._window = self._window, []
        n = len(samples)
        L = sum(c for c, _ in samples) / n
        X = sum(c * g for c, g in samples) / n
        q = L - X
        limit = self.limit
        key = max(1, round(L))
        alpha, beta = max(1.0, limit / 10), max(2.0, limit / 4)
        busy = L >= limit / 2
        if key != limit:
            # the window did not run at the limit (a load's tail, a limit that just moved):
            # its throughput belongs to no level, and nothing is decided on it
            return
        old = self.throughput_at.get(key)
        fresh_old = old is not None and now - old[1] < MEMORY
        self.throughput_at[key] = ((X + old[0]) / 2 if fresh_old else X, now)
        if self.slow_start:
            if q < alpha:
                if busy:
                    self.estimate = min(float(self.ceiling), max(float(self.start), 2 * self.estimate))
                return
            self.slow_start = False
        here = self.throughput_at[key][0]
        if q > beta:
            target = max(1, min(limit - 1, math.ceil(X) + 1))
            there = self._fresh(target, now)
            # the floor may be too low (a cheap first answer): a drop must not cost throughput
            if there is None or here < there * (1 + GAIN * (key - target) / target):
                self._set(float(target), now)
                return
        if q >= alpha:
            below = self._fresh(key - 1, now) if key > 1 else None
            if below is not None and here < below * (1 + GAIN / (key - 1)):
                # one step down; a level is barred only when it fails twice (noise fails once)
                if key in self._failed and now - self._failed[key] < MEMORY:
                    self.no_gain[key] = now
                self._failed[key] = now
                self._set(float(key - 1), now)
                return
            above = self._fresh(key + 1, now)
            if above is not None and above < here * (1 + GAIN / key):
                return  # one more was tried and did not pay: hold
        if busy and limit < self.ceiling:
            bad = self.no_gain.get(limit + 1)
            if bad is None or now - bad >= MEMORY:
                self.estimate = float(limit + 1)

    def _fresh(self, key: int, now: float) -> float | None:
        """The throughput measured at ``key`` in flight within :data:`MEMORY`, or ``None``."""
        got = self.throughput_at.get(key)
        return got[0] if got is not None and now - got[1] < MEMORY else None

    def _set(self, estimate: float, now: float) -> None:
        if estimate < self.estimate:
            self.last_decrease = now
        self.estimate = estimate

    def _decrease(self, now: float) -> None:
        """Halve the limit, at most once a round trip (the failures of one burst count once)."""
        if now - self.last_decrease < max(self.srtt, 0.05):
            return
        self.slow_start = False
        self._window = []
        self.estimate = max(1.0, min(float(self.limit), self.estimate) / 2)
        self.last_decrease = now

    def timeout(self) -> None:
        """An attempt timed out or failed on the wire: multiplicative decrease."""
        with self._lock:
            if self.adaptive:
                self._decrease(self.clock())
        self._notify()

    def pushback(self, attempt: Attempt | None, retry_after: float | None, wait: float | None) -> bool:
        """The host answered 429 or 503 to ``attempt``. Halves the limit, caps it below the
        concurrency refused, and pauses the host ``wait`` seconds (the honoured
        ``Retry-After``; ``None``: no pause).

        Returns whether the refusal is *collateral*: the attempt left before the host's
        previous push-back, so it belongs to a burst already answered (it spends no retry
        budget and no attempt).
        """
        with self._lock:
            now = self.clock()
            collateral = attempt is not None and attempt.started < self.pushed_at
            self.pushed_at = now
            if wait is not None and wait > 0:
                self.paused_until = max(self.paused_until, now + wait)
            if self.adaptive and attempt is not None and not collateral:
                self._decrease(now)
                self.cap = max(1, min(self.cap or attempt.concurrency, attempt.concurrency - 1))
                self.cap_until = now + MEMORY
            elif self.adaptive:
                self.cap_until = max(self.cap_until, now + MEMORY) if self.cap is not None else self.cap_until
        self._notify()
        return collateral

    # -- figures ---------------------------------------------------------------------------

    def throughput(self) -> float:
        """Responses a second over the last :data:`RATE_WINDOW` seconds."""
        with self._lock:
            now = self.clock()
            recent = [t for t in self._done if now - t <= RATE_WINDOW]
        if not recent:
            return 0.0
        return len(recent) / max(1.0, now - recent[0])  # at least a second: no burst of 2 in 1 ms

    def latency_floor(self) -> float | None:
        """The lowest latency floor over the host's routes (seconds), ``None`` before any."""
        with self._lock:
            return min(self.floors.values(), default=None)

    def snapshot(self) -> dict[str, Any]:
        """``limit``, ``ceiling``, ``throughput`` (responses/s), ``latency_floor`` (s or
        ``None``), ``in_flight``, ``paused`` (s left), ``adaptive``."""
        return {
            "limit": self.limit,
            "ceiling": self.ceiling,
            "throughput": round(self.throughput(), 3),
            "latency_floor": self.latency_floor(),
            "in_flight": self.in_flight,
            "paused": round(self.pause_left(), 3),
            "adaptive": self.adaptive,
        }


class HostLimits:
    """The hosts of one fetcher, each with its :class:`HostLimit` (made on first use, kept for
    the fetcher's life, shared by every event loop).

    Parameters
    ----------
    ceiling
        A host key's (``host[:port]``) ceiling: read when the host is first seen and again by
        :meth:`refresh`.
    adaptive
        Learn each host's limit (else every host gets its ceiling).
    max_retry_after
        A ``Retry-After`` longer than this ends the request (and the host's requests until
        then) with :class:`~mapstream.layers.errors.RetryAfterTooLongError`.
    clock
        Seconds, monotonic (tests give a fake one).
    """

    def __init__(
        self,
        ceiling: Callable[[str], int],
        *,
        adaptive: bool = True,
        max_retry_after: float = 60.0,
        start: int = START,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ceiling = ceiling
        self.adaptive = adaptive
        self.max_retry_after = max_retry_after
        self.start = start
        self.clock = clock
        self._hosts: dict[str, HostLimit] = {}
        self._lock = threading.Lock()

    def host(self, netloc: str) -> HostLimit:
        h = self._hosts.get(netloc)
        if h is not None:
            return h
        with self._lock:
            h = self._hosts.get(netloc)
            if h is None:
                h = self._hosts[netloc] = HostLimit(
                    self._ceiling(netloc), adaptive=self.adaptive, start=self.start, clock=self.clock
                )
            return h

    def refresh(self) -> None:
        """Read every host's ceiling again (after ``Fetcher.set_host_limit``)."""
        with self._lock:
            items = list(self._hosts.items())
        for netloc, h in items:
            h.set_ceiling(self._ceiling(netloc))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{host: HostLimit.snapshot()}`` for every host seen."""
        with self._lock:
            items = list(self._hosts.items())
        return {netloc: h.snapshot() for netloc, h in items}
