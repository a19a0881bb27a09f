"""``mapstream prefetch``: fill the disk cache the app reads with a layer's data for an area.

Tiled layers (XYZ tiles, WMS cut to the tile grid): every tile of the box at each zoom level,
pulled by a few workers from one lazy iterator. Feature layers: every page of items in the box,
as the app would load them. The async cores take the built layer and the
:class:`~mapstream.layers.http.Fetcher` as arguments, so tests drive them against loopback
servers; the command only parses options, opens the fetcher and prints.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from .params import BBOX, ZOOM_RANGE
from .progress import ProgressBar, RunStats, format_summary
from .shared import (
    TILE_ABSENT,
    cache_option,
    catalog_option,
    get_spec,
    layer_headers,
    make_fetcher,
    open_catalog,
    quiet_option,
    request_counts,
    run_async,
    source_class,
)

if TYPE_CHECKING:  # pragma: no cover
    from mapstream.layers.types import Bounds

__all__ = [
    "count_tiles",
    "effective_concurrency",
    "feature_viewport",
    "iter_feature_pages",
    "iter_tile_urls",
    "prefetch",
    "prefetch_features",
    "prefetch_tiles",
    "zoom_levels",
]

#: Width in pixels of the notional screen a feature prefetch/export plans its pages for.
VIEW_WIDTH = 1024


@click.command()
@click.argument("layer")
@click.option("--bbox", type=BBOX, required=True, help="Area as W,S,E,N in degrees (WGS84).")
@click.option("--zoom", type=ZOOM_RANGE, default=None, help="Zoom levels, e.g. 3-9 (tile layers; required for them).")
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True, help="Requests in flight at once.")
@click.option("--max-tiles", type=click.IntRange(1), default=500_000, show_default=True, help="Refuse a run that needs more tiles than this.")
@catalog_option
@cache_option
@quiet_option
def prefetch(layer, bbox, zoom, concurrency, max_tiles, catalog_path, cache_dir, quiet) -> None:
    """Fill the disk cache the app reads with LAYER's data for an area.

    Tile and WMS layers: every tile of BBOX at each level of ZOOM. Feature layers: every page
    of items in BBOX. Resumable: tiles already cached and fresh cost no request. Ends with a
    summary (also after Ctrl-C).
    """
    from mapstream.layers.sources.tiled import TiledLayer

    catalog = open_catalog(catalog_path)
    spec = get_spec(catalog, layer)
    # Decided before any request: a layer on the tile grid is prefetched tile by tile.
    tiled = issubclass(source_class(spec), TiledLayer)
    if tiled and zoom is None:
        raise click.UsageError(f"--zoom is required for {spec.kind} layer {spec.name!r} (e.g. --zoom 3-9)")
    levels: list[int] = []
    n = 0
    if tiled:
        levels, outside = zoom_levels(spec, zoom)
        if not levels:
            raise click.BadParameter(
                f"layer {spec.name!r} has zoom levels {spec.min_zoom}-{spec.max_zoom}, none in {zoom.start}-{zoom.stop - 1}",
                param_hint="'--zoom'",
            )
        if outside:
            click.echo(f"skipping zoom levels outside the layer's range: {outside}", err=True)
        n = count_tiles(bbox, levels)
        if n > max_tiles:
            raise click.UsageError(
                f"{n} tiles at zoom {levels[0]}-{levels[-1]} is more than --max-tiles {max_tiles}: "
                "narrow the bbox or the zoom range, or raise --max-tiles"
            )
    if effective_concurrency(spec, concurrency) < concurrency:
        click.echo(
            f"the catalog limits {spec.name!r} to {spec.concurrency} requests at once: using {spec.concurrency}",
            err=True,
        )
    stats = RunStats(unit="tiles" if tiled else "pages", total=n if tiled else None)

    async def go():
        from mapstream.layers.catalog import build_layer
        from mapstream.layers.errors import BadInputError

        async with make_fetcher(cache_dir, concurrency) as fetcher:
            lay = await build_layer(spec, fetcher)
            if tiled:
                # The built layer knows the service's real range (e.g. the demo's max zoom).
                inside, dropped = zoom_levels(lay, levels)
                if not inside:
                    raise BadInputError(
                        f"layer {spec.name!r} has zoom levels {lay.min_zoom}-{lay.max_zoom}, "
                        f"none in {levels[0]}-{levels[-1]}"
                    )
                if dropped:
                    click.echo(f"skipping zoom levels outside the layer's range: {dropped}", err=True)
                levels[:] = inside
            bar = ProgressBar(stats, desc=spec.name, enabled=not quiet)
            try:
                if tiled:
                    await prefetch_tiles(lay, spec, fetcher, bbox, levels, concurrency=concurrency, stats=stats, bar=bar)
                else:
                    await prefetch_features(lay, fetcher, bbox, stats=stats, bar=bar)
            finally:
                bar.close()

    def interrupted():
        stats.interrupted = True
        click.echo(format_summary(stats), err=False)

    run_async(go, interrupted)
    click.echo(format_summary(stats))
    if stats.failed:
        sys.exit(1)


# ---------------------------------------------------------------------------- planning (pure)


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


def iter_tile_urls(layer: Any, bbox: Bounds, zooms: Iterable[int]) -> Iterator[str]:
    """Every tile URL of ``bbox`` at each zoom, in zoom order (one list per zoom at a time)."""
    for z in zooms:
        for tile in layer.tiles_for_bbox(bbox, z):
            yield layer.tile_url(tile)


def count_tiles(bbox: Bounds, zooms: Iterable[int]) -> int:
    """How many tiles cover ``bbox`` (degrees) over ``zooms``, without listing them.

    >>> count_tiles((-10, 35, 30, 60), range(0, 6)), count_tiles((170, -10, -170, 10), [3])
    (34, 4)
    """
    from mapstream.layers.projection import lonlat_bbox_to_mercator
    from mapstream.layers.tilegrid import tile_range

    merc = lonlat_bbox_to_mercator(tuple(bbox))
    total = 0
    for z in zooms:
        ranges = tile_range(merc, z)
        total += 0 if ranges is None else len(ranges[0]) * len(ranges[1])
    return total


def feature_viewport(bbox: Bounds) -> Any:
    """The :class:`~mapstream.layers.viewport.Viewport` a feature layer is loaded for, for ``bbox``."""
    from mapstream.layers.viewport import Viewport

    return Viewport.from_lonlat(bbox, VIEW_WIDTH)


# ---------------------------------------------------------------------------- async cores


async def prefetch_tiles(
    layer: Any,
    spec: Any,
    fetcher: Any,
    bbox: Bounds,
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
    from mapstream.layers.errors import LayersError

    zooms = list(zooms)
    headers = layer_headers(layer)
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


async def iter_feature_pages(
    layer: Any, fetcher: Any, bbox: Bounds | None, *, stats: RunStats, bar: ProgressBar
) -> AsyncIterator[Any]:
    """The layer's pages for ``bbox`` (None: all), with ``stats`` and the bar updated from each."""
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
            for err in page.errors:
                stats.add_error(str(err))
            stats.failed = max(stats.failed, p.failed)
            stats.requests, stats.bytes = (a - b for a, b in zip(request_counts(fetcher), (req0, bytes0)))
            bar.advance(step)
            yield page
    finally:
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()


async def prefetch_features(
    layer: Any, fetcher: Any, bbox: Bounds | None, *, stats: RunStats, bar: ProgressBar
) -> RunStats:
    """Walk every page of a feature layer for ``bbox`` so the cache holds them."""
    async for _page in iter_feature_pages(layer, fetcher, bbox, stats=stats, bar=bar):
        pass
    return stats
