"""The fetch engine: one shared ``httpx.AsyncClient`` behind a :class:`Fetcher`.

INTERFACE CONTRACT (frozen; other modules build on it; the implementation grows behind it):

- ``Fetcher(**settings)`` is an async context manager (``async with Fetcher() as f``) and can also
  be used without one (``await f.aclose()`` at the end). Config, the disk cache, the memory LRU
  and metrics are process-wide; the ``httpx.AsyncClient``, semaphores and single-flight table
  are created lazily per running event loop.
- ``await f.get(url, *, params=None, headers=None, allow_status=(), cache=True) -> Response``.
  Non-2xx statuses raise :class:`~layers.errors.StatusError` unless listed in ``allow_status``
  (tiles pass ``(404, 204)``). Failures raise :class:`~layers.errors.FetchError` subclasses.
- ``await f.request(method, url, *, params=None, headers=None, content=None,
  allow_status=()) -> Response`` for anything else (never cached; retried only if idempotent).
- ``f.memory``: byte-bounded LRU for decoded objects: ``get(key)``, ``put(key, value, nbytes)``.
- ``f.metrics.snapshot() -> dict`` and ``f.set_host_limit(host, n)``,
  ``f.set_source_headers(url_prefix, headers)``.
- ``shared_fetcher()``: the process-wide instance the app and the CLI use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from . import __version__
from .errors import (
    BadInputError,
    FetchTimeoutError,
    ParseError,
    ResponseTooLargeError,
    StatusError,
    TransportError,
)

__all__ = ["Fetcher", "Response", "shared_fetcher", "USER_AGENT"]

USER_AGENT = f"mapstream/{__version__} (+https://github.com/mapstream/mapstream)"


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


class Fetcher:
    """Minimal first implementation; see the module docstring for the contract."""

    def __init__(
        self,
        *,
        per_host_limit: int = 8,
        host_limits: Mapping[str, int] | None = None,
        max_response_bytes: int = 256 * 2**20,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **_future: Any,
    ) -> None:
        if per_host_limit < 1:
            raise BadInputError(f"per_host_limit must be >= 1, got {per_host_limit}")
        self.per_host_limit = per_host_limit
        self.host_limits = dict(host_limits or {})
        self.max_response_bytes = max_response_bytes
        self._headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._sems: dict[str, asyncio.Semaphore] = {}
        self.memory: dict[Any, Any] = {}

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def set_host_limit(self, host: str, limit: int) -> None:
        self.host_limits[host] = limit

    def _client_for_loop(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers=self._headers, transport=self._transport, follow_redirects=True
            )
        return self._client

    def _sem(self, host: str) -> asyncio.Semaphore:
        sem = self._sems.get(host)
        if sem is None:
            sem = self._sems[host] = asyncio.Semaphore(self.host_limits.get(host, self.per_host_limit))
        return sem

    async def get(
        self,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        allow_status: tuple[int, ...] = (),
        cache: bool = True,
    ) -> Response:
        return await self.request("GET", url, params=params, headers=headers, allow_status=allow_status)

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
        host = urlsplit(url).netloc
        client = self._client_for_loop()
        start = time.perf_counter()
        async with self._sem(host):
            try:
                r = await client.request(method, url, params=params, headers=headers, content=content)
            except httpx.TimeoutException as exc:
                raise FetchTimeoutError(f"timed out: {url}", url=url) from exc
            except httpx.TransportError as exc:
                raise TransportError(f"{type(exc).__name__}: {exc} ({url})", url=url) from exc
        if len(r.content) > self.max_response_bytes:
            raise ResponseTooLargeError(url, self.max_response_bytes)
        if not (200 <= r.status_code < 300) and r.status_code not in allow_status:
            raise StatusError(r.status_code, str(r.url), reason=r.reason_phrase)
        return Response(str(r.url), r.status_code, r.headers, r.content, elapsed=time.perf_counter() - start)


_SHARED: Fetcher | None = None


def shared_fetcher() -> Fetcher:
    """The process-wide fetcher (created on first use)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = Fetcher()
    return _SHARED
