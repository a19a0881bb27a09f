"""The :class:`Fetcher`: its settings, its state on each event loop, and the requests it serves.

A GET goes: :mod:`.urls` (the URL httpx would send, and its host key) -> :mod:`.flight` (identical
concurrent requests share one flight) -> :mod:`.cached` (the disk cache: fresh served, stale
revalidated) -> :mod:`.retry` (attempts, backoff, the host's retry budget) -> :mod:`.wire` (one
attempt: :mod:`.admission` slots, then the direct aiohttp path or ``client.send``) ->
:class:`~.response.Response`. The package docstring (:mod:`mapstream.layers.http`) holds the
contract other modules build on.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import threading
import weakref
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from mapstream._version import __version__

from ..cache import DiskCache, MemoryLRU, cache_key, default_cache_dir
from ..errors import BadInputError
from .admission import Admission
from .cached import cached_get
from .flight import SingleFlight
from .limits import HostLimits, adaptive_default
from .logs import install_log_redaction
from .metrics import FetchMetrics
from .redirects import RedirectGuard
from .response import Response, check_status
from .retry import RetryPolicy
from .urls import normalize
from .wire import Wire

__all__ = ["Fetcher", "shared_fetcher", "USER_AGENT", "TRANSPORTS"]

USER_AGENT = f"mapstream/{__version__} (+https://github.com/mapstream/mapstream)"

#: Transport names ``Fetcher(transport=...)`` accepts; the first is the default, chosen by
#: measurement (``python -m benchmarks.fetch``).
TRANSPORTS = ("aiohttp", "httpcore")

_DEFAULT = object()
_NO_COOKIES = http.cookiejar.DefaultCookiePolicy(allowed_domains=[])

install_log_redaction()


@dataclass(eq=False)
class _LoopState:
    """What must live on one event loop: the client, admission, the flights in the air."""

    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    admission: Admission
    flights: SingleFlight[Response]
    wire: Wire


class Fetcher:
    """Concurrent, cached, polite HTTP for every layer and session of a process.

    Parameters
    ----------
    per_host_limit
        Concurrent requests per host (``host`` or ``host:port``) unless ``host_limits`` says
        otherwise: the *ceiling* of each host's adaptive limit.
    host_limits
        ``{host: limit}``, e.g. ``{"tile.openstreetmap.org": 2}`` (ceilings too).
    adaptive
        Learn each host's best concurrency between 1 and its ceiling (:mod:`.limits`: start
        low, grow while throughput grows, shrink when latency rises without a gain, halve on
        429/503 and timeouts). ``False``: every host gets its ceiling at once, as a fixed
        limit. Default: on, unless the environment has ``MAPSTREAM_ADAPTIVE=0``.
    global_limit
        Concurrent requests in total.
    connect_timeout, read_timeout, total_timeout
        Seconds: to connect, between bytes, for a whole attempt (headers, body, redirects).
        With the aiohttp transport aiohttp enforces the total, rounding totals of 5 s or more
        up to the next whole second of the loop's clock.
    retry_attempts
        Attempts in total for an idempotent request (1 disables retries).
    backoff_base, backoff_cap
        Full-jitter backoff: the n-th retry waits uniform(0, min(cap, base * 2**(n-1))).
    retry_after_cap
        The longest wait a server's ``Retry-After`` can impose (longer values, up to
        ``max_retry_after``, wait this long). Default: ``max_retry_after``.
    max_retry_after
        Seconds: a ``Retry-After`` longer than this ends the request at once with
        :class:`~mapstream.layers.errors.RetryAfterTooLongError` ("the server asks us to wait
        1 h before retrying; giving up"), as it does every request to that host until the
        wait is over. Shorter ones are honoured for the whole host: no attempt to it leaves
        before that time.
    retry_budget
        Retries a host may use before failures stop being retried; each success refunds
        0.1, so a dead host fails fast while a flaky one keeps being retried.
    max_response_bytes
        Larger bodies raise :class:`~mapstream.layers.errors.ResponseTooLargeError` while streaming.
    headers
        Sent with every request (``User-Agent`` defaults to :data:`USER_AGENT`).
    source_headers
        ``{url_prefix: headers}`` as with :meth:`set_source_headers`.
    transport
        ``"aiohttp"`` (default, see the benchmark), ``"httpcore"`` (httpx's own), an
        ``httpx.AsyncBaseTransport`` instance (used on every loop: for tests), or a callable
        returning a transport (called once per event loop).
    cache_dir
        Directory of the HTTP disk cache; ``None`` disables it. Default
        :func:`~mapstream.layers.cache.default_cache_dir` (``$MAPSTREAM_CACHE_DIR`` or the user cache).
    ttl
        Freshness, in seconds, of responses that carry neither caching headers nor validators.
    memory_bytes
        Budget of the in-memory LRU :attr:`memory`.
    allow_private_redirects
        Follow redirects from public origins to loopback, private and link-local addresses
        (refused by default; per source: ``fetcher.redirects.allow(url_prefix)``, see
        :class:`~mapstream.layers.http.redirects.RedirectGuard`).

    Raises
    ------
    BadInputError
        An unknown setting or an out-of-range value.

    Notes
    -----
    Proxies and CA bundles come from the environment (``HTTPS_PROXY``, ``NO_PROXY``,
    ``SSL_CERT_FILE``, ``SSL_CERT_DIR``) with both named transports: httpx's ``trust_env`` for
    ``"httpcore"``; for ``"aiohttp"`` (:mod:`mapstream.layers.http.transport`) the SSL context is httpx's
    (which reads ``SSL_CERT_FILE``) and the session reads the proxy variables when any is set.
    Cookies are never stored: send them as source headers.
    A transport *instance* bypasses environment proxies (httpx's rule).
    """

    def __init__(
        self,
        *,
        per_host_limit: int = 8,
        host_limits: Mapping[str, int] | None = None,
        adaptive: bool | None = None,
        global_limit: int = 64,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        total_timeout: float = 120.0,
        retry_attempts: int = 4,
        backoff_base: float = 0.25,
        backoff_cap: float = 8.0,
        retry_after_cap: float | None = None,
        max_retry_after: float = 60.0,
        retry_budget: float = 20.0,
        max_response_bytes: int = 256 * 2**20,
        headers: Mapping[str, str] | None = None,
        source_headers: Mapping[str, Mapping[str, str]] | None = None,
        transport: Any = None,
        cache_dir: Any = _DEFAULT,
        ttl: float = 300.0,
        memory_bytes: int = 256 * 2**20,
        allow_private_redirects: bool = False,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise BadInputError(f"unknown Fetcher setting(s): {', '.join(sorted(unknown))}")
        for name, value in (
            ("per_host_limit", per_host_limit),
            ("global_limit", global_limit),
            ("retry_attempts", retry_attempts),
            *((f"host_limits[{h!r}]", n) for h, n in (host_limits or {}).items()),
        ):
            if not isinstance(value, int) or value < 1:
                raise BadInputError(f"{name} must be an integer >= 1, got {value!r}")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
            ("total_timeout", total_timeout),
            ("max_response_bytes", max_response_bytes),
            ("max_retry_after", max_retry_after),
        ):
            if not value > 0:
                raise BadInputError(f"{name} must be > 0, got {value!r}")
        if isinstance(transport, str) and transport not in TRANSPORTS:
            raise BadInputError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        self.per_host_limit = per_host_limit
        self.host_limits = dict(host_limits or {})
        self.global_limit = global_limit
        self.timeouts = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        )
        self.total_timeout = total_timeout
        self.adaptive = adaptive_default() if adaptive is None else bool(adaptive)
        #: Each host's adaptive limit, latency floors, throughput and pause, for the fetcher's
        #: life (every loop, load and session share it): :mod:`.limits`.
        self.hosts = HostLimits(self._limit_for, adaptive=self.adaptive, max_retry_after=max_retry_after)
        self.retry = RetryPolicy(
            retry_attempts,
            backoff_base,
            backoff_cap,
            max_retry_after if retry_after_cap is None else retry_after_cap,
            retry_budget,
            max_retry_after=max_retry_after,
            hosts=self.hosts,
        )
        self.max_response_bytes = max_response_bytes
        self.ttl = ttl
        self._headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._source_headers: dict[str, dict[str, str]] = {}
        for prefix, hdrs in (source_headers or {}).items():
            self.set_source_headers(prefix, hdrs)
        self._transport = TRANSPORTS[0] if transport is None else transport
        if cache_dir is _DEFAULT:
            cache_dir = default_cache_dir()
        self.disk: DiskCache | None = None if cache_dir is None else DiskCache(cache_dir)
        self.memory = MemoryLRU(memory_bytes)
        self.metrics = FetchMetrics(hosts=self.hosts.snapshot)
        self.redirects = RedirectGuard(allow_private_redirects)
        self._lock = threading.Lock()
        self._last_state: _LoopState | None = None
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close this loop's client (and forget clients of loops that are closed).

        Caches and metrics stay; the fetcher can be used again (a new client is made).
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._loops.pop(loop, None)
            self._last_state = None
            for other in [lp for lp in self._loops if lp.is_closed()]:
                del self._loops[other]
        if state is not None:
            state.flights.cancel_all()
            await state.client.aclose()

    def _make_transport(self) -> httpx.AsyncBaseTransport | None:
        t = self._transport
        if t == "httpcore":
            return None  # httpx builds its own, honouring proxies from the environment
        if t == "aiohttp":
            from .transport import AiohttpTransport

            return AiohttpTransport()
        if isinstance(t, httpx.AsyncBaseTransport):
            return t
        if callable(t):
            return t()
        raise BadInputError(f"unusable transport {t!r}")

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        last = self._last_state  # fast path: the loop of the previous call (no lock, no weakref)
        if last is not None and last.loop is loop:  # aclose() forgets it before closing the client
            return last
        with self._lock:
            state = self._loops.get(loop)
            if state is None:
                state = self._loops[loop] = self._new_state(loop)
            self._last_state = state
            return state

    def _new_state(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        client = httpx.AsyncClient(
            headers=self._headers,
            transport=self._make_transport(),
            timeout=self.timeouts,
            # No pool cap (our limiters admit requests), generous keep-alive.
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=max(self.global_limit, 20),
                keepalive_expiry=30,
            ),
            follow_redirects=True,
            trust_env=True,
            # No cookie jar: one process-wide client must not carry a source's
            # cookies to later requests (credentials go in source headers).
            cookies=http.cookiejar.CookieJar(_NO_COOKIES),
        )
        admission = Admission(self.global_limit, self._limit_for, self.metrics, self.hosts)
        wire = Wire(
            loop,
            client,
            admission,
            self.metrics,
            total_timeout=self.total_timeout,
            max_response_bytes=self.max_response_bytes,
            own_transport=self._transport == "aiohttp",  # made for this client alone
            redirects=self.redirects,
        )
        flights: SingleFlight[Response] = SingleFlight(loop, lambda: self.metrics.incr("coalesced"))
        return _LoopState(loop, client, admission, flights, wire)

    # -- configuration ---------------------------------------------------------------------

    def _limit_for(self, netloc: str) -> int:
        hostname = netloc.rsplit("@", 1)[-1].rsplit(":", 1)[0]
        return self.host_limits.get(netloc, self.host_limits.get(hostname, self.per_host_limit))

    def host_limit(self, url: str) -> int:
        """The number of concurrent requests allowed to the host of ``url``: its ceiling (the
        adaptive limit moves below it, see ``metrics.snapshot()["hosts"]``).

        A caller that plans many requests to one host (a layer's pages) keeps about this many
        outstanding, so it saturates the host's slots without queueing everything at once ahead
        of other layers' requests.

        >>> Fetcher(cache_dir=None, host_limits={"tiles.test": 2}).host_limit("http://tiles.test/1/0/0.png")
        2
        """
        return self._limit_for(httpx.URL(url).netloc.decode("ascii").lower())

    def set_host_limit(self, host: str, limit: int) -> None:
        """Allow ``limit`` concurrent requests to ``host`` (``"name"`` or ``"name:port"``): the
        ceiling of its adaptive limit, never exceeded.

        Takes effect at once, also for requests already waiting.

        Raises
        ------
        BadInputError
            ``limit`` is not an integer >= 1.
        """
        if not isinstance(limit, int) or limit < 1:
            raise BadInputError(f"host limit must be an integer >= 1, got {limit!r}")
        with self._lock:
            self.host_limits[host] = limit
            states = list(self._loops.values())
        self.hosts.refresh()
        for st in states:
            if st.loop.is_closed():
                continue
            if _running_loop() is st.loop:
                st.admission.resize()
            else:
                st.loop.call_soon_threadsafe(st.admission.resize)

    def set_source_headers(self, url_prefix: str, headers: Mapping[str, str] | None) -> None:
        """Send ``headers`` (e.g. credentials) with every request whose URL starts with
        ``url_prefix``; the longest matching prefix wins; ``None`` or ``{}`` removes them.
        The cache keeps responses to different credentials apart."""
        with self._lock:
            if headers:
                self._source_headers[url_prefix] = dict(headers)
            else:
                self._source_headers.pop(url_prefix, None)

    def _prepare(
        self, url: str, params: Mapping[str, Any] | None, headers: Mapping[str, str] | None
    ) -> tuple[str, str, dict[str, str]]:
        """The request's host key (``netloc``), its URL as httpx encodes it, and its headers
        (per-source headers first, the caller's on top)."""
        netloc, full = normalize(url, params)
        merged: dict[str, str] = {}
        if self._source_headers:
            with self._lock:
                matches = [p for p in self._source_headers if full.startswith(p)]
                if matches:
                    merged.update(self._source_headers[max(matches, key=len)])
        if headers:
            merged.update(headers)
        return netloc, full, merged

    # -- requests --------------------------------------------------------------------------

    async def get(
        self,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        allow_status: tuple[int, ...] = (),
        cache: bool = True,
    ) -> Response:
        """GET ``url``, through the disk cache unless ``cache=False``.

        Raises
        ------
        StatusError
            A non-2xx status not in ``allow_status``.
        RetriesExhaustedError
            Two or more attempts met retryable failures (``last_error`` is the final one).
            A single failed attempt (retries disabled, or the host's retry budget spent)
            raises its own error: StatusError 429/5xx, FetchTimeoutError or TransportError.
        FetchTimeoutError, TransportError, ResponseTooLargeError
            A non-retryable failure of the request.
        BadInputError
            The URL is not an http(s) URL.
        """
        netloc, full, hdrs = self._prepare(url, params, headers)
        state = self._state()
        key = cache_key("GET", full, hdrs)
        disk = self.disk if cache else None
        if disk is not None:

            def send(cond: dict[str, str]) -> Awaitable[Response]:
                return self.retry.send(
                    state.wire.attempt, "GET", full, netloc, {**hdrs, **cond}, None, self.metrics
                )

            resp = await state.flights.run(
                ("GET", key, True),
                lambda: cached_get(
                    disk, key, full, send, ttl=self.ttl, metrics=self.metrics,
                    ranged=any(k.lower() == "range" for k in hdrs),  # a 206 is kept under its range
                ),
            )
        else:
            resp = await state.flights.run(
                ("GET", key, False),
                lambda: self.retry.send(state.wire.attempt, "GET", full, netloc, hdrs, None, self.metrics),
            )
        return check_status(resp, allow_status)

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        allow_status: tuple[int, ...] = (),
        idempotent: bool | None = None,
    ) -> Response:
        """Any request, never cached; only idempotent methods are retried (``idempotent=True``:
        the caller says this one is, e.g. a STAC search by POST), and only GET and HEAD without
        a body are coalesced.

        Raises
        ------
        StatusError, RetriesExhaustedError, FetchTimeoutError, TransportError,
        ResponseTooLargeError, BadInputError
            As for :meth:`get`.
        """
        method = method.upper()
        netloc, full, hdrs = self._prepare(url, params, headers)
        state = self._state()
        if method in ("GET", "HEAD") and content is None:
            key = (method, cache_key(method, full, hdrs), False)
            resp = await state.flights.run(
                key, lambda: self.retry.send(state.wire.attempt, method, full, netloc, hdrs, None, self.metrics)
            )
        else:
            resp = await self.retry.send(
                state.wire.attempt, method, full, netloc, hdrs, content, self.metrics, idempotent
            )
        return check_status(resp, allow_status)

    def cache_has_fresh(
        self, url: str, params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None
    ) -> bool:
        """Whether a GET of ``url`` would be served from the disk cache without the network.

        Blocking (reads one file): call it off the loop when many URLs are checked.
        """
        if self.disk is None:
            return False
        _, full, hdrs = self._prepare(url, params, headers)
        entry = self.disk.load(cache_key("GET", full, hdrs))
        return entry is not None and entry.is_fresh()

    def cached_entries(self) -> int:
        """Number of responses in the disk cache (blocking: walks the directory)."""
        return 0 if self.disk is None else len(self.disk)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_SHARED: Fetcher | None = None
_SHARED_LOCK = threading.Lock()


def shared_fetcher() -> Fetcher:
    """The process-wide fetcher (created on first use, with default settings)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = Fetcher()
        return _SHARED
