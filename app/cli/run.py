"""The async work behind ``mapstream prefetch`` and ``mapstream check``.

Everything here takes the :class:`~mapstream.layers.http.Fetcher` and the built layer as arguments, so
tests drive it against loopback servers; the click commands in :mod:`app.cli` only parse
options, open the fetcher and print.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mapstream.layers.errors import (
    FetchTimeoutError,
    LayersError,
    RetriesExhaustedError,
    StatusError,
    TransportError,
)

from .writers import ExportError, atomic_output, open_writer
from .progress import ProgressBar, RunStats

__all__ = [
    "ProbeResult",
    "export_layer",
    "feature_viewport",
    "iter_tile_urls",
    "prefetch_features",
    "prefetch_tiles",
    "probe_layer",
    "request_counts",
]

#: Width in pixels of the notional screen a feature prefetch/export plans its pages for.
VIEW_WIDTH = 1024
#: Statuses that mean "no tile here" rather than failure (drawn transparent by the app).
TILE_ABSENT = (404, 204)


def request_counts(fetcher: Any) -> tuple[int, int]:
    """``(requests, bytes)`` from the fetcher's metrics, ``(0, 0)`` if it has none yet."""
    metrics = getattr(fetcher, "metrics", None)
    if metrics is None:
        return (0, 0)
    snap = metrics.snapshot()
    return int(snap.get("requests", 0)), int(snap.get("bytes", 0))


def _layer_headers(layer: Any) -> dict[str, str] | None:
    # Exactly what the layer sends itself: the cache key includes the headers, so the app
    # (which requests through the layer) finds what the CLI stored. A catalog's own headers
    # reach the fetcher through build_layer (set_source_headers), not here.
    headers = getattr(layer, "headers", None)
    return dict(headers) if headers else None


def zoom_levels(spec: Any, zooms: Iterable[int]) -> tuple[list[int], list[int]]:
    """The requested levels split into (inside the layer's zoom range, outside it).

    >>> from types import SimpleNamespace as NS
    >>> zoom_levels(NS(min_zoom=2, max_zoom=5), range(0, 8))
    ([2, 3, 4, 5], [0, 1, 6, 7])
    """
    lo = getattr(spec, "min_zoom", None)
    hi = getattr(spec, "max_zoom", None)
    lo = 0 if lo is None else lo
    hi = 99 if hi is None else hi
    inside = [z for z in zooms if lo <= z <= hi]
    outside = [z for z in zooms if not lo <= z <= hi]
    return inside, outside


def effective_concurrency(spec: Any, requested: int) -> int:
    """Requests at once to a layer's host: ``requested``, capped by the catalog's limit.

    >>> from types import SimpleNamespace as NS
    >>> effective_concurrency(NS(concurrency=2), 16), effective_concurrency(NS(concurrency=None), 16)
    (2, 16)
    """
    cap = getattr(spec, "concurrency", None)
    return min(requested, cap) if cap else requested


def iter_tile_urls(layer: Any, bbox: tuple[float, float, float, float], zooms: Iterable[int]):
    """Every tile URL of ``bbox`` at each zoom, in zoom order (one list per zoom at a time)."""
    for z in zooms:
        for tile in layer.tiles_for_bbox(bbox, z):
            yield layer.tile_url(tile)


def count_tiles(bbox: tuple[float, float, float, float], zooms: Iterable[int]) -> int:
    """How many tiles cover ``bbox`` (degrees) over ``zooms``, without listing them.

    >>> count_tiles((-10, 35, 30, 60), range(0, 6)), count_tiles((170, -10, -170, 10), [3])
    (34, 4)
    """
    from mapstream.layers.tilegrid import lonlat_bbox_to_mercator, tile_range

    merc = lonlat_bbox_to_mercator(tuple(bbox))
    total = 0
    for z in zooms:
        ranges = tile_range(merc, z)
        total += 0 if ranges is None else len(ranges[0]) * len(ranges[1])
    return total


async def prefetch_tiles(
    layer: Any,
    spec: Any,
    fetcher: Any,
    bbox: tuple[float, float, float, float],
    zooms: Iterable[int],
    *,
    concurrency: int,
    stats: RunStats,
    bar: ProgressBar,
) -> RunStats:
    """Fetch every tile of ``bbox`` for each zoom into the fetcher's cache.

    ``concurrency`` workers pull URLs from one lazy iterator, so memory does not grow with the
    number of tiles. A tile the cache holds fresh is skipped without a request; a failed tile
    is counted and reported, never fatal. ``stats`` is updated as tiles finish, so after
    Ctrl-C (cancellation) it holds a partial count.
    """
    zooms = list(zooms)
    headers = _layer_headers(layer)
    has_fresh = getattr(fetcher, "cache_has_fresh", None)
    req0, bytes0 = request_counts(fetcher)
    bar.set_total(count_tiles(bbox, zooms))
    urls = iter_tile_urls(layer, bbox, zooms)
    hosts: set[str] = set()

    async def one(url: str) -> None:
        host = urlsplit(url).netloc
        if host not in hosts:
            hosts.add(host)
            # The fetcher's default per-host limit must not cap what the user asked for, but a
            # catalog's own limit (a usage policy, e.g. OpenStreetMap's 2) is never exceeded.
            fetcher.set_host_limit(host, effective_concurrency(spec, concurrency))
        try:
            # cache_has_fresh reads a file: off the loop.
            if has_fresh is not None and await asyncio.to_thread(has_fresh, url, headers=headers):
                stats.cached += 1
                return
            r = await fetcher.get(url, headers=headers, allow_status=TILE_ABSENT)
        except (LayersError, OSError) as exc:
            stats.add_error(str(exc))
            return
        if r.status in TILE_ABSENT:
            stats.missing += 1
        if r.revalidated:
            stats.revalidated += 1
        elif r.from_cache:
            stats.cached += 1
        else:
            stats.fetched += 1

    async def worker() -> None:
        for url in urls:  # a shared iterator: each URL goes to exactly one worker
            try:
                await one(url)
            finally:
                stats.done += 1
                stats.requests, stats.bytes = (a - b for a, b in zip(request_counts(fetcher), (req0, bytes0)))
                bar.advance()

    async with asyncio.TaskGroup() as tg:
        for _ in range(max(1, concurrency)):
            tg.create_task(worker())
    return stats


def feature_viewport(bbox: tuple[float, float, float, float]):
    """The :class:`~mapstream.layers.viewport.Viewport` a feature layer is loaded for, for ``bbox``."""
    from mapstream.layers.viewport import Viewport

    return Viewport.from_lonlat(bbox, VIEW_WIDTH)


async def iter_feature_pages(layer: Any, fetcher: Any, bbox, *, stats: RunStats, bar: ProgressBar) -> AsyncIterator[Any]:
    """The layer's pages for ``bbox``, with ``stats`` and the bar updated from each page."""
    req0, bytes0 = request_counts(fetcher)
    viewport = None if bbox is None else feature_viewport(bbox)
    pages = layer.load(viewport, fetcher)
    try:
        async for page in pages:
            p = page.progress
            if p.total is not None:
                bar.set_total(p.total)
            step = max(0, p.done - stats.done)
            stats.done = p.done
            stats.cached = p.cached
            stats.features = p.features
            stats.truncated = p.truncated
            stats.fetched = max(0, p.done - p.cached - p.failed)
            for err in getattr(page, "errors", ()) or ():
                stats.add_error(str(err))
            stats.failed = max(stats.failed, p.failed)
            stats.requests, stats.bytes = (a - b for a, b in zip(request_counts(fetcher), (req0, bytes0)))
            bar.advance(step)
            yield page
    finally:
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()


async def prefetch_features(layer: Any, fetcher: Any, bbox, *, stats: RunStats, bar: ProgressBar) -> RunStats:
    """Walk every page of a feature layer for ``bbox`` so the cache holds them."""
    async for _page in iter_feature_pages(layer, fetcher, bbox, stats=stats, bar=bar):
        pass
    return stats


async def export_layer(
    layer: Any,
    fetcher: Any,
    bbox,
    output: Path,
    *,
    fmt: str,
    crs: str,
    stats: RunStats,
    bar: ProgressBar,
) -> Any:
    """Stream a feature layer's pages for ``bbox`` (None: all) into ``output``.

    The file is written under a temporary name and renamed into place only when every page
    arrived: a failed page, an error or a cancellation leaves no ``output``.

    Returns
    -------
    PageWriter
        The finished writer (``rows``, ``dropped_columns``).

    Raises
    ------
    ExportError
        A page failed (after the fetcher's retries) or pages disagree on a column's type.
    """
    with atomic_output(output) as tmp:
        writer = open_writer(fmt, tmp, crs=crs, layer_name=getattr(layer, "name", "features"))
        try:
            async for page in iter_feature_pages(layer, fetcher, bbox, stats=stats, bar=bar):
                if len(page.frame):
                    # Reprojection, conversion and file I/O block: keep them off the loop.
                    await _uninterrupted(writer.write, page.frame)
            if stats.failed:
                first = stats.errors[0] if stats.errors else "see above"
                raise ExportError(f"{stats.failed} page(s) failed, so {output} was not written: {first}")
            await _uninterrupted(writer.close)
        except BaseException:
            writer.abort()
            raise
    return writer


async def _uninterrupted(fn: Any, *args: Any) -> Any:
    """Run blocking ``fn`` in a thread; if cancelled meanwhile, let it finish, then re-raise.

    A thread cannot be stopped: without this, a write could still be going on (and recreate
    the temporary file) after the export removed it.
    """
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        raise


@dataclass
class ProbeResult:
    """One row of ``mapstream check``."""

    layer: str
    kind: str
    status: str  # "up", "down" or "error"
    http_status: int | None = None
    latency: float | None = None
    validators: tuple[str, ...] = ()
    error: str = ""
    url: str = ""


def _probe_url(layer: Any, spec: Any) -> tuple[str, dict[str, Any] | None, tuple[int, ...]]:
    """What to request to see that a layer works: a tile, a GetMap, or one item."""
    if spec.kind in ("tiles", "wms"):
        lo = getattr(layer, "min_zoom", None) or getattr(spec, "min_zoom", None) or 0
        # A tiny box at the origin: one to four tiles whatever the zoom.
        tiles = layer.tiles_for_bbox((-0.001, -0.001, 0.001, 0.001), lo)
        return layer.tile_url(tiles[0]), None, TILE_ABSENT
    items = getattr(layer, "items_url", None)
    if items:
        return items, {"limit": 1}, ()
    url = spec.url.rstrip("/")
    if not url.endswith("/items"):
        if "/collections/" not in url:
            url = f"{url}/collections/{spec.collection}"
        url = f"{url}/items"
    return url, {"limit": 1}, ()


def _classify(exc: BaseException) -> str:
    if isinstance(exc, RetriesExhaustedError):
        return _classify(exc.last_error)
    if isinstance(exc, (TransportError, FetchTimeoutError, asyncio.TimeoutError, OSError)):
        return "down"
    return "error"


async def probe_layer(spec: Any, fetcher: Any, build_layer: Any, *, timeout: float) -> ProbeResult:
    """Probe one layer: build it, request one unit of its data without the cache, time it."""
    result = ProbeResult(layer=spec.name, kind=spec.kind, status="down")
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            layer = await build_layer(spec, fetcher)
            url, params, allow = _probe_url(layer, spec)
            result.url = url
            start = time.perf_counter()
            r = await fetcher.get(url, params=params, headers=_layer_headers(layer), allow_status=allow, cache=False)
    except TimeoutError:
        result.latency = time.perf_counter() - start
        result.error = f"no answer within {timeout:g}s"
        return result
    except (LayersError, OSError) as exc:
        result.latency = time.perf_counter() - start
        result.status = _classify(exc)
        if isinstance(exc, StatusError):
            result.http_status = exc.status
        result.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return result
    result.status = "up"
    result.http_status = r.status
    result.latency = r.elapsed or (time.perf_counter() - start)
    result.validators = tuple(
        name for name, key in (("ETag", "etag"), ("Last-Modified", "last-modified")) if key in r.headers
    )
    if r.status in TILE_ABSENT and spec.kind != "features":
        result.error = f"probe tile absent (HTTP {r.status})"
    return result


async def probe_all(specs: Iterable[Any], fetcher: Any, build_layer: Any, *, timeout: float) -> list[ProbeResult]:
    """Probe every layer concurrently; rows come back in catalog order."""
    specs = list(specs)
    return list(await asyncio.gather(*(probe_layer(s, fetcher, build_layer, timeout=timeout) for s in specs)))


def format_table(rows: list[ProbeResult]) -> str:
    """The ``check`` table, columns aligned.

    >>> print(format_table([ProbeResult("osm", "tiles", "up", 200, 0.0123, ("ETag",))]))
    layer  kind   status  http  latency  validators  error
    osm    tiles  up      200   12 ms    ETag
    """
    head = ("layer", "kind", "status", "http", "latency", "validators", "error")
    body = [
        (
            r.layer,
            r.kind,
            r.status,
            "-" if r.http_status is None else str(r.http_status),
            "-" if r.latency is None else f"{r.latency * 1000:.0f} ms",
            ", ".join(r.validators) or "-",
            r.error,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
    return "\n".join(lines)
