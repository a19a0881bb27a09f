"""The fetch engine: one shared ``httpx.AsyncClient`` per event loop behind a :class:`Fetcher`.

INTERFACE CONTRACT (other modules build on it; extended, never broken):

- ``Fetcher(**settings)`` is an async context manager (``async with Fetcher() as f``) and can also
  be used without one (``await f.aclose()`` at the end). Config, the disk cache, the memory LRU
  and metrics are process-wide; the ``httpx.AsyncClient``, limiters and single-flight table
  are created lazily per running event loop.
- ``await f.get(url, *, params=None, headers=None, allow_status=(), cache=True) -> Response``.
  Non-2xx statuses raise :class:`~layers.errors.StatusError` unless listed in ``allow_status``
  (tiles pass ``(404, 204)``). Failures raise :class:`~layers.errors.FetchError` subclasses.
- ``await f.request(method, url, *, params=None, headers=None, content=None,
  allow_status=()) -> Response`` for anything else (never cached; retried only if idempotent).
- ``f.memory``: byte-bounded thread-safe LRU for decoded objects (:class:`~layers.cache.MemoryLRU`):
  ``get(key, default=None)``, ``put(key, value, nbytes)``, ``in``, ``nbytes``, ``clear()``.
- ``f.metrics.snapshot() -> dict`` (:class:`~layers.metrics.FetchMetrics`),
  ``f.set_host_limit(host, n)``, ``f.set_source_headers(url_prefix, headers)``,
  ``f.cache_has_fresh(url, params=None, headers=None) -> bool``, ``f.cached_entries() -> int``.
- ``shared_fetcher()``: the process-wide instance the app and the CLI use.

How a GET goes: the caller's URL and headers (per-source headers first, the caller's on top)
make a key; identical concurrent requests join one *flight*, a task of its own that is
cancelled only when no caller is left waiting for it (single-flight). The flight consults the
disk cache (fresh: served; stale with validators: conditional request, a 304 refreshes the
entry), then sends: it waits for a slot on the per-host limiter and the global limiter (never
inside the client's pool), streams the body under a size limit and a total timeout, and
retries idempotent requests on 429/502/503/504 and transport errors with full-jitter backoff
or the server's ``Retry-After`` (capped), while the host's retry budget lasts.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import __version__
from ._limits import Limiter, RetryBudget, backoff_delay, parse_retry_after
from .cache import (
    CacheEntry,
    DiskCache,
    MemoryLRU,
    cache_key,
    default_cache_dir,
    make_entry,
    redact_text,
    redact_url,
    refresh_entry,
)
from .errors import (
    BadInputError,
    FetchError,
    FetchTimeoutError,
    ParseError,
    ResponseTooLargeError,
    RetriesExhaustedError,
    StatusError,
    TransportError,
)
from .metrics import FetchMetrics

__all__ = ["Fetcher", "Response", "shared_fetcher", "USER_AGENT", "TRANSPORTS"]

log = logging.getLogger(__name__)

USER_AGENT = f"mapstream/{__version__} (+https://github.com/mapstream/mapstream)"

#: Statuses worth retrying (for idempotent requests only).
RETRY_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Transport names ``Fetcher(transport=...)`` accepts; the first is the default, chosen by
#: measurement (``python -m benchmarks.fetch``).
TRANSPORTS = ("aiohttp", "httpcore")

_DEFAULT = object()
_NO_COOKIES = http.cookiejar.DefaultCookiePolicy(allowed_domains=[])


class _RedactingFilter(logging.Filter):
    """Redacts credentials from URLs in log records (httpx logs every request URL at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(
                redact_text(str(a)) if isinstance(a, httpx.URL | str) else a for a in args
            )
        if isinstance(record.msg, str) and "://" in record.msg:
            record.msg = redact_text(record.msg)
        return True


def _install_log_redaction() -> None:
    for name in ("httpx", "httpcore", "httpx_aiohttp"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactingFilter) for f in logger.filters):
            logger.addFilter(_RedactingFilter())


_install_log_redaction()


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response, from the network or the cache."""

    url: str
    status: int
    headers: httpx.Headers
    content: bytes
    from_cache: bool = False
    revalidated: bool = False
    elapsed: float = 0.0

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises
        ------
        ParseError
            The body is not valid JSON.
        """
        import orjson

        try:
            return orjson.loads(self.content)
        except orjson.JSONDecodeError as exc:
            raise ParseError(f"invalid JSON: {exc}", url=self.url) from exc

    @property
    def text(self) -> str:
        """The body decoded with the charset the server declared (UTF-8 otherwise)."""
        ctype = self.headers.get("content-type", "")
        charset = "utf-8"
        for part in ctype.split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "charset" and value:
                charset = value.strip('"')
        return self.content.decode(charset, errors="replace")


def _from_entry(entry: CacheEntry, url: str, *, revalidated: bool, elapsed: float = 0.0) -> Response:
    return Response(
        url, entry.status, httpx.Headers(entry.headers), entry.body, True, revalidated, elapsed
    )


@dataclass(eq=False)
class _Flight:
    task: asyncio.Task[Response]
    waiters: int = 0


@dataclass(eq=False)
class _LoopState:
    """What must live on one event loop: the client, limiters, in-flight table."""

    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    global_limiter: Limiter
    limiters: dict[str, Limiter] = field(default_factory=dict)
    flights: dict[tuple[Any, ...], _Flight] = field(default_factory=dict)


def _translate(exc: Exception, url: str) -> FetchError:
    """An httpx / aiohttp failure as one of ours (the caller raises it ``from exc``)."""
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        # httpx-aiohttp maps every ClientConnectionError to ConnectTimeout: look underneath.
        timed_out = isinstance(cause, TimeoutError)
    else:
        timed_out = isinstance(exc, httpx.TimeoutException | TimeoutError)
    safe = redact_url(url)
    if timed_out:
        return FetchTimeoutError(f"timed out ({type(exc).__name__}): {safe}", url=safe)
    return TransportError(f"{type(exc).__name__}: {redact_text(str(exc))} ({safe})", url=safe)


class Fetcher:
    """Concurrent, cached, polite HTTP for every layer and session of a process.

    Parameters
    ----------
    per_host_limit
        Concurrent requests per host (``host`` or ``host:port``) unless ``host_limits`` says
        otherwise.
    host_limits
        ``{host: limit}``, e.g. ``{"tile.openstreetmap.org": 2}``.
    global_limit
        Concurrent requests in total.
    connect_timeout, read_timeout, total_timeout
        Seconds: to connect, between bytes, for a whole attempt (headers and body).
    retry_attempts
        Attempts in total for an idempotent request (1 disables retries).
    backoff_base, backoff_cap
        Full-jitter backoff: the n-th retry waits uniform(0, min(cap, base * 2**(n-1))).
    retry_after_cap
        The longest wait a server's ``Retry-After`` can impose (longer values wait this long).
    retry_budget
        Retries a host may use before failures stop being retried; each success refunds
        0.1, so a dead host fails fast while a flaky one keeps being retried.
    max_response_bytes
        Larger bodies raise :class:`~layers.errors.ResponseTooLargeError` while streaming.
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
        :func:`~layers.cache.default_cache_dir` (``$MAPSTREAM_CACHE_DIR`` or the user cache).
    ttl
        Freshness, in seconds, of responses that carry neither caching headers nor validators.
    memory_bytes
        Budget of the in-memory LRU :attr:`memory`.

    Raises
    ------
    BadInputError
        An unknown setting or an out-of-range value.

    Notes
    -----
    Proxies and CA bundles come from the environment (``HTTPS_PROXY``, ``NO_PROXY``,
    ``SSL_CERT_FILE``, ``SSL_CERT_DIR``) with both named transports: httpx's ``trust_env`` for
    ``"httpcore"``; for ``"aiohttp"`` (:mod:`layers._aiohttp`) the SSL context is httpx's
    (which reads ``SSL_CERT_FILE``) and the session reads the proxy variables when any is set.
    Cookies are never stored: send them as source headers.
    A transport *instance* bypasses environment proxies (httpx's rule).
    """

    def __init__(
        self,
        *,
        per_host_limit: int = 8,
        host_limits: Mapping[str, int] | None = None,
        global_limit: int = 64,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        total_timeout: float = 120.0,
        retry_attempts: int = 4,
        backoff_base: float = 0.25,
        backoff_cap: float = 8.0,
        retry_after_cap: float = 30.0,
        retry_budget: float = 20.0,
        max_response_bytes: int = 256 * 2**20,
        headers: Mapping[str, str] | None = None,
        source_headers: Mapping[str, Mapping[str, str]] | None = None,
        transport: Any = None,
        cache_dir: Any = _DEFAULT,
        ttl: float = 300.0,
        memory_bytes: int = 256 * 2**20,
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
        self.retry_attempts = retry_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.retry_after_cap = retry_after_cap
        self.retry_budget = retry_budget
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
        self.metrics = FetchMetrics()
        self._budgets: dict[str, RetryBudget] = {}
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
            for fl in list(state.flights.values()):
                fl.task.cancel()
            await state.client.aclose()

    def _make_transport(self) -> httpx.AsyncBaseTransport | None:
        t = self._transport
        if t == "httpcore":
            return None  # httpx builds its own, honouring proxies from the environment
        if t == "aiohttp":
            from ._aiohttp import AiohttpTransport

            return AiohttpTransport()
        if isinstance(t, httpx.AsyncBaseTransport):
            return t
        if callable(t):
            return t()
        raise BadInputError(f"unusable transport {t!r}")

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        last = self._last_state  # fast path: the loop of the previous call (no lock, no weakref)
        if last is not None and last.loop is loop and not last.client.is_closed:
            return last
        with self._lock:
            state = self._loops.get(loop)
            if state is None:
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
                state = _LoopState(loop, client, Limiter(self.global_limit))
                self._loops[loop] = state
            self._last_state = state
            return state

    # -- configuration ---------------------------------------------------------------------

    def _limit_for(self, netloc: str) -> int:
        hostname = netloc.rsplit("@", 1)[-1].rsplit(":", 1)[0]
        return self.host_limits.get(netloc, self.host_limits.get(hostname, self.per_host_limit))

    def host_limit(self, url: str) -> int:
        """The number of concurrent requests allowed to the host of ``url``.

        A caller that plans many requests to one host (a layer's pages) keeps about this many
        outstanding, so it saturates the host's slots without queueing everything at once ahead
        of other layers' requests.

        >>> Fetcher(cache_dir=None, host_limits={"tiles.test": 2}).host_limit("http://tiles.test/1/0/0.png")
        2
        """
        return self._limit_for(httpx.URL(url).netloc.decode("ascii").lower())

    def set_host_limit(self, host: str, limit: int) -> None:
        """Allow ``limit`` concurrent requests to ``host`` (``"name"`` or ``"name:port"``).

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
        for st in states:
            for netloc, lim in st.limiters.items():
                new = self._limit_for(netloc)
                if st.loop.is_closed():
                    continue
                if _running_loop() is st.loop:
                    lim.set_limit(new)
                else:
                    st.loop.call_soon_threadsafe(lim.set_limit, new)

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
    ) -> tuple[httpx.URL, str, dict[str, str]]:
        try:
            u = httpx.URL(url)
            if params:
                u = u.copy_merge_params(params)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise BadInputError(f"invalid URL {url!r}: {exc}") from exc
        if u.scheme not in ("http", "https"):
            raise BadInputError(f"not an http(s) URL: {redact_url(url)}")
        full = str(u)
        merged: dict[str, str] = {}
        with self._lock:
            matches = [p for p in self._source_headers if full.startswith(p)]
            if matches:
                merged.update(self._source_headers[max(matches, key=len)])
        merged.update(headers or {})
        return u, full, merged

    # -- public requests -------------------------------------------------------------------

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
        u, full, hdrs = self._prepare(url, params, headers)
        use_cache = cache and self.disk is not None
        key = cache_key("GET", full, hdrs)
        if use_cache:
            resp = await self._single_flight(("GET", key, True), lambda: self._cached_get(u, full, hdrs, key))
        else:
            resp = await self._single_flight(("GET", key, False), lambda: self._send("GET", u, full, hdrs, None))
        return _check_status(resp, allow_status)

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        allow_status: tuple[int, ...] = (),
    ) -> Response:
        """Any request, never cached; only idempotent methods are retried or coalesced.

        Raises
        ------
        StatusError, RetriesExhaustedError, FetchTimeoutError, TransportError,
        ResponseTooLargeError, BadInputError
            As for :meth:`get`.
        """
        method = method.upper()
        u, full, hdrs = self._prepare(url, params, headers)
        if method in ("GET", "HEAD") and content is None:
            key = (method, cache_key(method, full, hdrs), False)
            resp = await self._single_flight(key, lambda: self._send(method, u, full, hdrs, None))
        else:
            resp = await self._send(method, u, full, hdrs, content)
        return _check_status(resp, allow_status)

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

    # -- machinery -------------------------------------------------------------------------

    async def _single_flight(
        self, key: tuple[Any, ...], factory: Callable[[], Awaitable[Response]]
    ) -> Response:
        state = self._state()
        flight = state.flights.get(key)
        if flight is None:
            flight = _Flight(asyncio.ensure_future(factory()))
            state.flights[key] = flight
            flight.task.add_done_callback(lambda t, k=key, f=flight: _flight_done(state, k, f, t))
        else:
            self.metrics.incr("coalesced")
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Nobody wants the result any more: drop it now (a new caller starts afresh).
                if state.flights.get(key) is flight:
                    del state.flights[key]
                flight.task.cancel()

    async def _cached_get(
        self, u: httpx.URL, url: str, headers: dict[str, str], key: str
    ) -> Response:
        assert self.disk is not None
        entry = await self._disk_call(self.disk.load, key)
        if entry is not None and entry.is_fresh():
            self.metrics.incr("cache_hits")
            return _from_entry(entry, url, revalidated=False)
        cond = entry.conditional_headers() if entry is not None else {}
        resp = await self._send("GET", u, url, {**headers, **cond}, None)
        if resp.status == 304 and entry is not None:
            self.metrics.incr("revalidations")
            new = refresh_entry(entry, resp.headers.multi_items(), self.ttl)
            if new is None:
                await self._disk_call(self.disk.delete, key)
            else:
                await self._disk_call(self.disk.store, key, new)
            return _from_entry(entry, resp.url, revalidated=True, elapsed=resp.elapsed)
        self.metrics.incr("cache_misses")
        new = make_entry(url, resp.status, resp.headers.multi_items(), resp.content, self.ttl)
        if new is not None:
            await self._disk_call(self.disk.store, key, new)
        elif entry is not None:
            await self._disk_call(self.disk.delete, key)
        return resp

    async def _disk_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        # A cache that cannot be read or written degrades to the network; it is logged, not
        # raised, because the response itself is fine.
        try:
            return await asyncio.to_thread(fn, *args)
        except OSError as exc:
            log.warning("HTTP disk cache unusable (%s: %s)", type(exc).__name__, exc)
            return None

    def _budget(self, host: str) -> RetryBudget:
        with self._lock:
            b = self._budgets.get(host)
            if b is None:
                b = self._budgets[host] = RetryBudget(self.retry_budget)
            return b

    async def _send(
        self, method: str, u: httpx.URL, url: str, headers: dict[str, str], content: bytes | None
    ) -> Response:
        """One logical request: attempts, retries and backoff. Returns the final response for
        any status that is not retried (the caller checks it)."""
        netloc = u.netloc.decode("ascii").lower()
        budget = self._budget(netloc)
        idempotent = method in IDEMPOTENT_METHODS
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                resp = await self._attempt(method, u, url, netloc, headers, content)
            except (FetchTimeoutError, TransportError) as exc:
                error: FetchError = exc
            else:
                if resp.status not in RETRY_STATUSES or not idempotent:
                    budget.success()
                    return resp
                error = StatusError(resp.status, redact_url(url))
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if not idempotent:
                self.metrics.incr("errors")
                raise error
            if attempt >= self.retry_attempts or not budget.try_spend():
                self.metrics.incr("errors")
                if attempt == 1:  # retries disabled, or the host's budget is spent: fail fast
                    raise error
                raise RetriesExhaustedError(redact_url(url), attempt, error) from error
            if retry_after is not None:
                delay = min(retry_after, self.retry_after_cap)
            else:
                delay = backoff_delay(attempt - 1, self.backoff_base, self.backoff_cap)
            self.metrics.incr("retries")
            await asyncio.sleep(delay)

    async def _attempt(
        self,
        method: str,
        u: httpx.URL,
        url: str,
        netloc: str,
        headers: dict[str, str],
        content: bytes | None,
    ) -> Response:
        state = self._state()
        host_lim = state.limiters.get(netloc)
        if host_lim is None:
            host_lim = state.limiters[netloc] = Limiter(self._limit_for(netloc))
        queued = time.perf_counter()
        self.metrics.add_waiting(1)
        try:
            await host_lim.acquire()
            try:
                await state.global_limiter.acquire()
            except BaseException:
                host_lim.release()
                raise
        finally:
            self.metrics.add_waiting(-1)
        self.metrics.record_queue_wait(time.perf_counter() - queued)
        self.metrics.add_in_flight(1)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.total_timeout):
                async with state.client.stream(method, u, headers=headers, content=content) as r:
                    body = await self._read_body(r, url)
        except (httpx.TransportError, TimeoutError) as exc:
            if isinstance(exc, httpx.UnsupportedProtocol):
                raise BadInputError(f"unsupported URL {redact_url(url)}: {exc}") from exc
            raise _translate(exc, url) from exc
        except httpx.HTTPError as exc:  # decoding errors, too many redirects
            safe = redact_url(url)
            raise TransportError(f"{type(exc).__name__}: {redact_text(str(exc))} ({safe})", url=safe) from exc
        finally:
            self.metrics.add_in_flight(-1)
            state.global_limiter.release()
            host_lim.release()
        elapsed = time.perf_counter() - start
        self.metrics.record_response(elapsed, len(body))
        return Response(str(r.url), r.status_code, r.headers, body, elapsed=elapsed)

    async def _read_body(self, r: httpx.Response, url: str) -> bytes:
        limit = self.max_response_bytes
        declared = r.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLargeError(redact_url(url), limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in r.aiter_bytes():
            size += len(chunk)
            if size > limit:  # checked while streaming, on decoded bytes (zip bombs too)
                raise ResponseTooLargeError(redact_url(url), limit)
            chunks.append(chunk)
        return b"".join(chunks)


def _flight_done(state: _LoopState, key: tuple[Any, ...], flight: _Flight, task: asyncio.Task[Any]) -> None:
    if state.flights.get(key) is flight:
        del state.flights[key]
    if not task.cancelled():
        task.exception()  # retrieved: the waiters re-raise it; nobody left means nobody cares


def _check_status(resp: Response, allow_status: tuple[int, ...]) -> Response:
    if 200 <= resp.status < 300 or resp.status in allow_status:
        return resp
    reason = httpx.codes.get_reason_phrase(resp.status)
    raise StatusError(resp.status, redact_url(resp.url), reason=reason)


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
