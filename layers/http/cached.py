"""GET through the HTTP disk cache: the protocol the fetcher follows around the network.

A fresh entry is served; a stale one with validators is revalidated with a conditional
request (a 304 refreshes the entry and serves the stored body); anything else goes to the
network and is stored if cacheable. The rules themselves (keys, freshness, validators) are
:mod:`mapstream.layers.cache.policy`'s; the store is :class:`~mapstream.layers.cache.DiskCache`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from ..cache import CacheEntry, DiskCache, make_entry, refresh_entry
from .metrics import FetchMetrics
from .response import Response

__all__ = ["cached_get", "from_entry"]

log = logging.getLogger(__name__)


def from_entry(entry: CacheEntry, url: str, *, revalidated: bool, elapsed: float = 0.0) -> Response:
    """The :class:`Response` a cache entry stands for (``from_cache`` set)."""
    return Response(
        url, entry.status, httpx.Headers(entry.headers), entry.body, True, revalidated, elapsed
    )


async def cached_get(
    disk: DiskCache,
    key: str,
    url: str,
    send: Callable[[dict[str, str]], Awaitable[Response]],
    *,
    ttl: float,
    metrics: FetchMetrics,
    ranged: bool = False,
) -> Response:
    """The response to a GET of ``url`` (cache key ``key``), from ``disk`` when it may be.

    Parameters
    ----------
    send
        Sends the GET with the given extra headers (the validators of a conditional request,
        or none) and returns the final response, whatever its status.
    ttl
        Freshness, in seconds, of responses that carry neither caching headers nor validators.
    metrics
        Counts ``cache_hits``, ``cache_misses`` and ``revalidations``.
    ranged
        The request has a ``Range`` header (part of ``key``): a ``206`` may be stored.

    Raises
    ------
    FetchError
        As ``send`` raises. A disk cache that cannot be read or written is logged, never
        raised: the request goes to the network as if nothing were cached.
    """
    entry = await _disk_call(disk.load, key)
    if entry is not None and entry.is_fresh():
        metrics.incr("cache_hits")
        return from_entry(entry, url, revalidated=False)
    resp = await send(entry.conditional_headers() if entry is not None else {})
    if resp.status == 304 and entry is not None:
        metrics.incr("revalidations")
        new = refresh_entry(entry, resp.headers.multi_items(), ttl)
        if new is None:
            await _disk_call(disk.delete, key)
        else:
            await _disk_call(disk.store, key, new)
        return from_entry(entry, resp.url, revalidated=True, elapsed=resp.elapsed)
    metrics.incr("cache_misses")
    new = make_entry(url, resp.status, resp.headers.multi_items(), resp.content, ttl, ranged=ranged)
    if new is not None:
        await _disk_call(disk.store, key, new)
    elif entry is not None:
        await _disk_call(disk.delete, key)
    return resp


async def _disk_call(fn: Callable[..., Any], *args: Any) -> Any:
    # A cache that cannot be read or written degrades to the network; it is logged, not
    # raised, because the response itself is fine.
    try:
        return await asyncio.to_thread(fn, *args)
    except OSError as exc:
        log.warning("HTTP disk cache unusable (%s: %s)", type(exc).__name__, exc)
        return None
