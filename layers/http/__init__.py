"""The fetch engine: one :class:`Fetcher` over ``httpx.AsyncClient`` (aiohttp on the wire).

INTERFACE CONTRACT (other modules build on it; extended, never broken):

- ``Fetcher(**settings)`` is an async context manager (``async with Fetcher() as f``) and can also
  be used without one (``await f.aclose()`` at the end). Config, the disk cache, the memory LRU
  and metrics are process-wide; the ``httpx.AsyncClient``, limiters and single-flight table
  are created lazily per running event loop.
- ``await f.get(url, *, params=None, headers=None, allow_status=(), cache=True) -> Response``.
  Non-2xx statuses raise :class:`~mapstream.layers.errors.StatusError` unless listed in
  ``allow_status`` (tiles pass ``(404, 204)``). Failures raise
  :class:`~mapstream.layers.errors.FetchError` subclasses.
- ``await f.request(method, url, *, params=None, headers=None, content=None,
  allow_status=()) -> Response`` for anything else (never cached; retried only if idempotent).
- ``f.memory``: byte-bounded thread-safe LRU for decoded objects
  (:class:`~mapstream.layers.cache.MemoryLRU`): ``get(key, default=None)``,
  ``put(key, value, nbytes)``, ``in``, ``nbytes``, ``clear()``.
- ``f.metrics.snapshot() -> dict`` (:class:`~mapstream.layers.http.metrics.FetchMetrics`),
  ``f.set_host_limit(host, n)``, ``f.set_source_headers(url_prefix, headers)``,
  ``f.cache_has_fresh(url, params=None, headers=None) -> bool``, ``f.cached_entries() -> int``.
- ``shared_fetcher()``: the process-wide instance the app and the CLI use.

How a GET goes, one module per step: the caller's URL is put in the form httpx sends
(:mod:`.urls`, which skips parsing URLs httpx would leave as written) and, with its headers
(per-source headers first, the caller's on top), makes a key; identical concurrent requests
join one *flight*, a task of its own that is cancelled only when no caller is left waiting for
it (:mod:`.flight`). The flight consults the disk cache (:mod:`.cached`: fresh: served; stale
with validators: conditional request, a 304 refreshes the entry), then sends (:mod:`.retry`):
it retries idempotent requests on 429/502/503/504 and transport errors with full-jitter
backoff or the server's ``Retry-After`` (capped), while the host's retry budget lasts. Each
attempt (:mod:`.wire`) waits for a slot on the per-host limiter and the global limiter
(:mod:`.admission`, never inside the client's pool), then goes straight to the aiohttp
transport (:mod:`.transport`, following redirects by httpx's rules, :mod:`.redirects`) or
through ``client.send``, streams the body under a size limit and a total timeout, and
translates httpx's failures into the engine's errors. The result is a :class:`Response`
(:mod:`.response`); counters go to :mod:`.metrics`; URLs are redacted from the HTTP loggers'
records (:mod:`.logs`). The :class:`Fetcher` itself (:mod:`.fetcher`) holds the settings and
each event loop's client, admission and flights.
"""

from .fetcher import TRANSPORTS, USER_AGENT, Fetcher, shared_fetcher
from .response import Response

__all__ = ["Fetcher", "Response", "shared_fetcher", "USER_AGENT", "TRANSPORTS"]
