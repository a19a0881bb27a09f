"""The fetch engine: one shared ``httpx.AsyncClient`` per event loop behind a :class:`Fetcher`.

INTERFACE CONTRACT (other modules build on it; extended, never broken):

- ``Fetcher(**settings)`` is an async context manager (``async with Fetcher() as f``) and can also
  be used without one (``await f.aclose()`` at the end). Config, the disk cache, the memory LRU
  and metrics are process-wide; the ``httpx.AsyncClient``, limiters and single-flight table
  are created lazily per running event loop.
- ``await f.get(url, *, params=None, headers=None, allow_status=(), cache=True) -> Response``.
  Non-2xx statuses raise :class:`~mapstream.layers.errors.StatusError` unless listed in ``allow_status``
  (tiles pass ``(404, 204)``). Failures raise :class:`~mapstream.layers.errors.FetchError` subclasses.
- ``await f.request(method, url, *, params=None, headers=None, content=None,
  allow_status=()) -> Response`` for anything else (never cached; retried only if idempotent).
- ``f.memory``: byte-bounded thread-safe LRU for decoded objects (:class:`~mapstream.layers.cache.MemoryLRU`):
  ``get(key, default=None)``, ``put(key, value, nbytes)``, ``in``, ``nbytes``, ``clear()``.
- ``f.metrics.snapshot() -> dict`` (:class:`~mapstream.layers.metrics.FetchMetrics`),
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

With the aiohttp transport (the default) an attempt skips ``client.send`` and goes straight
to the client's own transport (:meth:`mapstream.layers.http.transport.AiohttpTransport.open`): the client has
no auth, cookie jar, mounts or event hooks to apply, and building the ``httpx.Request`` /
``httpx.Response`` pair, extracting cookies into a jar that refuses them all and re-parsing
the URL cost more CPU than aiohttp's whole request (``python -m benchmarks.fetch``). What
``client.send`` did is kept: the client's default headers under the caller's, redirects
followed by httpx's rules (:func:`_redirect`), httpx's ``Content-Encoding`` decoding, its
``HTTP Request:`` log line and its exceptions (translated as before). Any other transport, or a
client given event hooks or auth, still goes through ``client.send``.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import logging
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from mapstream._version import __version__
from . import transport as _aio
from .limits import Limiter, RetryBudget, backoff_delay, parse_retry_after
from ..cache import (
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
from ..errors import (
    BadInputError,
    FetchError,
    FetchTimeoutError,
    ParseError,
    ResponseTooLargeError,
    RetriesExhaustedError,
    StatusError,
    TransportError,
)
from ..metrics import FetchMetrics

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
#: Statuses httpx follows when the response names a ``Location``.
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Request headers a redirect may drop or change (:func:`_redirect`): never session defaults.
_REDIRECT_SENSITIVE = frozenset({"authorization", "cookie", "host", "content-length", "transfer-encoding"})
#: The fast path logs each exchange as httpx's client does, on its logger (same level, format).
_HTTPX_LOG = logging.getLogger("httpx")


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
    """One upstream request and the callers waiting for it, one future each."""

    task: asyncio.Task[None] | None = None
    waiters: list[asyncio.Future[Response]] = field(default_factory=list)


@dataclass(eq=False)
class _LoopState:
    """What must live on one event loop: the client, limiters, in-flight table."""

    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    global_limiter: Limiter
    limiters: dict[str, Limiter] = field(default_factory=dict)
    flights: dict[tuple[Any, ...], _Flight] = field(default_factory=dict)
    #: The client's transport when attempts may skip ``client.send`` (see the module notes).
    direct: Any = None
    #: The client's default headers, names lower-cased, that the direct path sends itself
    #: (none when the transport's session sends them all).
    base_headers: dict[str, str] = field(default_factory=dict)
    #: aiohttp's form of the connect/read/total timeouts, made once.
    aio_timeout: Any = None


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
        Seconds: to connect, between bytes, for a whole attempt (headers, body, redirects).
        With the aiohttp transport aiohttp enforces the total, rounding totals of 5 s or more
        up to the next whole second of the loop's clock.
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
                if fl.task is not None:
                    fl.task.cancel()
                # A task cancelled before its first step never runs _fly's handlers: let the
                # callers go here.
                for w in fl.waiters:
                    w.cancel()
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
                if isinstance(client._transport, _aio.AiohttpTransport):
                    state.direct = client._transport
                    state.base_headers = dict(client.headers.items())
                    if (
                        self._transport == "aiohttp"  # made for this client alone
                        and not _REDIRECT_SENSITIVE & state.base_headers.keys()
                        and state.direct.set_default_headers(state.base_headers)
                    ):
                        state.base_headers = {}  # the session sends them (~5 us less a request)
                    state.aio_timeout = _aio.client_timeout(
                        self.timeouts.connect, self.timeouts.read, self.total_timeout
                    )
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
    ) -> tuple[str, str, dict[str, str]]:
        """The request's host key (``netloc``), its URL as httpx encodes it, and its headers."""
        netloc = None if params else _plain_netloc(url)
        if netloc is not None:  # httpx would leave it as it is: no need to parse it (~15 us)
            full = url
        else:
            try:
                u = httpx.URL(url)
                if params:
                    u = u.copy_merge_params(params)
            except (httpx.InvalidURL, TypeError, ValueError) as exc:
                raise BadInputError(f"invalid URL {url!r}: {exc}") from exc
            if u.scheme not in ("http", "https"):
                raise BadInputError(f"not an http(s) URL: {redact_url(url)}")
            full = str(u)
            netloc = u.netloc.decode("ascii").lower()
        merged: dict[str, str] = {}
        if self._source_headers:
            with self._lock:
                matches = [p for p in self._source_headers if full.startswith(p)]
                if matches:
                    merged.update(self._source_headers[max(matches, key=len)])
        if headers:
            merged.update(headers)
        return netloc, full, merged

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
        netloc, full, hdrs = self._prepare(url, params, headers)
        use_cache = cache and self.disk is not None
        key = cache_key("GET", full, hdrs)
        if use_cache:
            resp = await self._single_flight(
                ("GET", key, True), lambda: self._cached_get(netloc, full, hdrs, key)
            )
        else:
            resp = await self._single_flight(
                ("GET", key, False), lambda: self._send("GET", netloc, full, hdrs, None)
            )
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
        netloc, full, hdrs = self._prepare(url, params, headers)
        if method in ("GET", "HEAD") and content is None:
            key = (method, cache_key(method, full, hdrs), False)
            resp = await self._single_flight(key, lambda: self._send(method, netloc, full, hdrs, None))
        else:
            resp = await self._send(method, netloc, full, hdrs, content)
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
        # Each caller waits on a future of its own, which the flight's task resolves as its
        # last step: a cancelled caller cancels only its future, and waking the callers takes
        # no extra turn of the loop (asyncio.shield's callbacks cost one, and a third of the
        # engine's own CPU time per request went to shield and a done-callback).
        state = self._state()
        flight = state.flights.get(key)
        if flight is None:
            flight = state.flights[key] = _Flight()
            flight.task = state.loop.create_task(_fly(state, key, flight, factory))
        else:
            self.metrics.incr("coalesced")
        waiter: asyncio.Future[Response] = state.loop.create_future()
        flight.waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if not waiter.cancelled():  # the outcome came, but this caller was cancelled
                if waiter.done():
                    waiter.exception()  # retrieved: nobody else will
                raise
            try:
                flight.waiters.remove(waiter)
            except ValueError:  # the flight was cancelled and let its waiters go
                pass
            if not flight.waiters and flight.task is not None and not flight.task.done():
                # Nobody wants the result any more: drop it now (a new caller starts afresh).
                if state.flights.get(key) is flight:
                    del state.flights[key]
                flight.task.cancel()
            raise

    async def _cached_get(
        self, netloc: str, url: str, headers: dict[str, str], key: str
    ) -> Response:
        assert self.disk is not None
        entry = await self._disk_call(self.disk.load, key)
        if entry is not None and entry.is_fresh():
            self.metrics.incr("cache_hits")
            return _from_entry(entry, url, revalidated=False)
        cond = entry.conditional_headers() if entry is not None else {}
        resp = await self._send("GET", netloc, url, {**headers, **cond}, None)
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
        b = self._budgets.get(host)  # never removed, so found means found
        if b is not None:
            return b
        with self._lock:
            b = self._budgets.get(host)
            if b is None:
                b = self._budgets[host] = RetryBudget(self.retry_budget)
            return b

    async def _send(
        self, method: str, netloc: str, url: str, headers: dict[str, str], content: bytes | None
    ) -> Response:
        """One logical request: attempts, retries and backoff. Returns the final response for
        any status that is not retried (the caller checks it)."""
        budget = self._budget(netloc)
        idempotent = method in IDEMPOTENT_METHODS
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                resp = await self._attempt(method, url, netloc, headers, content)
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
        client = state.client
        try:
            if state.direct is not None and client.auth is None and not (
                client.event_hooks["request"] or client.event_hooks["response"]
            ):  # aiohttp applies the total timeout (cheaper than asyncio.timeout)
                final, status, rheaders, body = await self._exchange(state, method, url, headers, content)
            else:
                async with asyncio.timeout(self.total_timeout):
                    async with client.stream(method, url, headers=headers, content=content) as r:
                        body = await self._read_body(r.aiter_bytes(), r.headers.get("content-length"), url)
                final, status, rheaders = str(r.url), r.status_code, r.headers
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
        return Response(final, status, rheaders, body, elapsed=elapsed)

    async def _exchange(
        self,
        state: _LoopState,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None,
    ) -> tuple[str, int, httpx.Headers, bytes]:
        """One attempt straight over the client's aiohttp transport, doing what ``client.send``
        would: default headers, redirects, decoding, the log line. Returns the final URL, the
        status, the headers and the body. The total timeout bounds the whole attempt,
        redirects included.

        Raises
        ------
        httpx.TransportError, httpx.TooManyRedirects, httpx.DecodingError
            As ``client.send`` would (the caller translates them).
        ResponseTooLargeError
            The body is over the limit.
        """
        client = state.client
        sent = state.base_headers
        if headers:
            sent = {**sent, **{k.lower(): v for k, v in headers.items()}}
        content = content or None
        timeout = state.aio_timeout
        deadline = state.loop.time() + self.total_timeout
        for _ in range(client.max_redirects + 1 if client.follow_redirects else 1):
            resp = await state.direct.open(method, url, sent or None, content, timeout)
            try:
                _HTTPX_LOG.info('HTTP Request: %s %s "HTTP/1.1 %d %s"', method, url, resp.status, resp.reason or "")
                location = resp.headers.get("Location")
                if location is not None and resp.status in _REDIRECTS and client.follow_redirects:
                    method, u, sent, content = _redirect(
                        method, httpx.URL(url), resp.status, location, sent, content
                    )
                    url = str(u)
                    left = deadline - state.loop.time()
                    if left <= 0:
                        raise httpx.ReadTimeout("total timeout spent on redirects")
                    timeout = _aio.client_timeout(timeout.sock_connect, timeout.sock_read, left)
                    continue
                if resp.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
                    # Decoded by httpx: exactly the codings its Accept-Encoding offered.
                    body = await self._read_body(
                        _aio.wrap(resp).aiter_bytes(), resp.headers.get("Content-Length"), url
                    )
                elif resp.content_length is not None and resp.content_length <= self.max_response_bytes:
                    body = await _aio.read(resp)  # the framing bounds it: one read, no chunk list
                else:
                    body = await self._read_body(
                        _aio.iter_body(resp), resp.headers.get("Content-Length"), url
                    )
            finally:
                _aio.release(resp)
            return url, resp.status, httpx.Headers(resp.raw_headers), body
        raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.")

    async def _read_body(self, chunks: AsyncIterator[bytes], declared: str | None, url: str) -> bytes:
        limit = self.max_response_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ResponseTooLargeError(redact_url(url), limit)
        parts: list[bytes] = []
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:  # checked while streaming, on decoded bytes (zip bombs too)
                raise ResponseTooLargeError(redact_url(url), limit)
            parts.append(chunk)
        return b"".join(parts)


_PORTS = {"http": 80, "https": 443}

# URLs that httpx leaves exactly as they are: lower-case http(s) scheme and host, no userinfo,
# no default port, a path and query of characters it never encodes, no fragment. Anything
# else is parsed by httpx (tests/layers/test_http.py checks the two agree).
_PLAIN_URL = re.compile(
    r"(https?)://([a-z0-9._~-]+)(?::([1-9][0-9]{0,4}))?"
    r"(/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*)(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*)?"
)
_IPV4_STYLE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.|$)){4}")
_DOT_SEGMENT = re.compile(r"/\.\.?(?:/|$)")


def _plain_netloc(url: str) -> str | None:
    """``host[:port]`` of ``url`` if httpx would send ``url`` exactly as written, else ``None``
    (then httpx parses and normalises it).

    >>> _plain_netloc("https://tile.example.org/5/16/10.png?key=a%2Fb")
    'tile.example.org'
    >>> _plain_netloc("http://127.0.0.1:8080/a"), _plain_netloc("http://127.0.0.1:80/a")
    ('127.0.0.1:8080', None)
    >>> [_plain_netloc(u) for u in ("HTTP://h/a", "http://H/a", "http://h/a b", "http://h/./a", "http://h")]
    [None, None, None, None, None]
    """
    m = _PLAIN_URL.fullmatch(url)
    if m is None or len(url) > 65536:
        return None
    scheme, host, port, path = m.group(1, 2, 3, 4)
    if port is not None and int(port) == _PORTS[scheme]:
        return None
    if _IPV4_STYLE.fullmatch(host) and not _IPV4.fullmatch(host):
        return None  # httpx rejects it
    if "/." in path and _DOT_SEGMENT.search(path):
        return None  # httpx removes dot segments
    return host if port is None else f"{host}:{port}"


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port or _PORTS.get(a.scheme)) == (
        b.scheme,
        b.host,
        b.port or _PORTS.get(b.scheme),
    )


def _redirect(
    method: str,
    url: httpx.URL,
    status: int,
    location: str,
    headers: Mapping[str, str],
    content: bytes | None,
) -> tuple[str, httpx.URL, dict[str, str], bytes | None]:
    """The request that follows a redirect, by the rules of httpx's client.

    302 and 303 turn any method but HEAD into GET, 301 turns POST into GET (a GET drops the
    body); a relative ``Location`` is resolved against ``url``; ``Authorization`` is dropped
    when the origin changes (unless it is a plain http -> https upgrade); ``Cookie`` is always
    dropped. ``headers`` have lower-case names.

    >>> m, u, h, c = _redirect("POST", httpx.URL("http://a.test/x"), 303, "/y?z=1",
    ...                        {"authorization": "t", "cookie": "c"}, b"{}")
    >>> m, str(u), h, c
    ('GET', 'http://a.test/y?z=1', {'authorization': 't'}, None)
    >>> _redirect("GET", httpx.URL("http://a.test/x"), 307, "http://b.test/x", {"authorization": "t"}, None)[2]
    {}
    >>> _redirect("GET", httpx.URL("http://a.test/x"), 301, "https://a.test/x", {"authorization": "t"}, None)[2]
    {'authorization': 't'}

    Raises
    ------
    httpx.RemoteProtocolError
        ``location`` is not a URL.
    httpx.UnsupportedProtocol
        It is not an http(s) URL.
    """
    new_method = method
    if (status in (302, 303) and method != "HEAD") or (status == 301 and method == "POST"):
        new_method = "GET"
    try:
        new = httpx.URL(location)
    except httpx.InvalidURL as exc:
        raise httpx.RemoteProtocolError(f"Invalid URL in location header: {exc}.") from None
    if new.scheme and not new.host:
        new = new.copy_with(host=url.host)
    if new.is_relative_url:
        new = url.join(new)
    if url.fragment and not new.fragment:
        new = new.copy_with(fragment=url.fragment)
    if new.scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{new.scheme}://'.")
    out = {k: v for k, v in headers.items() if k != "cookie"}
    if not _same_origin(url, new):
        upgrade = (
            url.host == new.host
            and (url.scheme, url.port or 80) == ("http", 80)
            and (new.scheme, new.port or 443) == ("https", 443)
        )
        if not upgrade:
            out.pop("authorization", None)
        if "host" in out:
            out["host"] = new.netloc.decode("ascii")
    if new_method != method and new_method == "GET":
        content = None
        out.pop("content-length", None)
        out.pop("transfer-encoding", None)
    return new_method, new, out, content


async def _fly(
    state: _LoopState,
    key: tuple[Any, ...],
    flight: _Flight,
    factory: Callable[[], Awaitable[Response]],
) -> None:
    """The body of a flight's task: run ``factory`` and hand its outcome to every waiter.

    The task itself ends without an exception (the waiters re-raise it; nobody left means
    nobody cares), or cancelled, which cancels the waiters still there.
    """
    try:
        result = await factory()
    except Exception as exc:  # noqa: BLE001  (any failure is the waiters' to re-raise)
        _land(state, key, flight)
        for w in flight.waiters:
            if not w.done():
                w.set_exception(exc)
        return
    except BaseException:  # cancelled (aclose), or the process is going down
        _land(state, key, flight)
        for w in flight.waiters:
            w.cancel()
        flight.waiters.clear()
        raise
    _land(state, key, flight)
    for w in flight.waiters:
        if not w.done():
            w.set_result(result)


def _land(state: _LoopState, key: tuple[Any, ...], flight: _Flight) -> None:
    # Out of the table before anyone learns the outcome: a later caller starts afresh.
    if state.flights.get(key) is flight:
        del state.flights[key]


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
