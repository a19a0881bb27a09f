"""``mapstream check``: probe every layer of a catalog concurrently and print a table.

A probe builds the layer and requests one unit of its data without the cache (a tile, a GetMap
cut to the grid, or one item), timing it and noting the cache validators the service sends.
The async core (:func:`probe_all`) takes the fetcher and the layer builder as arguments.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import click

from .params import DURATION
from .shared import (
    TILE_ABSENT,
    cache_option,
    catalog_option,
    layer_headers,
    make_fetcher,
    open_catalog,
    run_async,
)

__all__ = ["ProbeResult", "check", "format_table", "host_lines", "probe_all", "probe_layer"]


@click.command()
@catalog_option
@cache_option
@click.option("--timeout", type=DURATION, default="15s", show_default=True, help="Give up on a layer after this long.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON lines.")
def check(catalog_path, cache_dir, timeout, as_json) -> None:
    """Probe every layer of the catalog concurrently (a tile, a GetMap or one item).

    Prints layer, status (up / down / error), HTTP status, latency, the cache validators the
    service sends (ETag, Last-Modified) and the error; then one line per host: the fetcher's
    adaptive limit of its ceiling, its throughput and its latency floor. Exits 1 if any layer
    is not up.
    """
    catalog = open_catalog(catalog_path)
    rows: list[ProbeResult] = []
    hosts: dict[str, Any] = {}

    async def go():
        from mapstream.layers.catalog import build_layer

        async with make_fetcher(cache_dir) as fetcher:
            rows.extend(await probe_all(catalog.layers, fetcher, build_layer, timeout=timeout))
            hosts.update(fetcher.metrics.snapshot().get("hosts", {}))

    run_async(go, lambda: click.echo("check interrupted", err=True))
    if as_json:
        import dataclasses
        import json

        for r in rows:
            click.echo(json.dumps(dataclasses.asdict(r)))
    else:
        click.echo(format_table(rows))
        for line in host_lines(hosts):
            click.echo(line)
    if any(r.status != "up" for r in rows):
        sys.exit(1)


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


def _is_tiled(layer: Any) -> bool:
    from mapstream.layers.sources.tiled import TiledLayer

    return isinstance(layer, TiledLayer)


def _probe_request(layer: Any, spec: Any) -> tuple[str, dict[str, Any] | None, tuple[int, ...]]:
    """What to request to see that a layer works: a tile, a GetMap, or one item."""
    if _is_tiled(layer):
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
    """``"down"`` for a service that did not answer, ``"error"`` for one that answered wrong."""
    from mapstream.layers.errors import FetchTimeoutError, RetriesExhaustedError, TransportError

    if isinstance(exc, RetriesExhaustedError):
        return _classify(exc.last_error)
    if isinstance(exc, (TransportError, FetchTimeoutError, asyncio.TimeoutError, OSError)):
        return "down"
    return "error"


async def probe_layer(spec: Any, fetcher: Any, build_layer: Any, *, timeout: float) -> ProbeResult:
    """Probe one layer: build it, request one unit of its data without the cache, time it."""
    from mapstream.layers.errors import LayersError, StatusError

    result = ProbeResult(layer=spec.name, kind=spec.kind, status="down")
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            layer = await build_layer(spec, fetcher)
            headers = layer_headers(layer)
            own = getattr(layer, "probe_request", None)  # a source that says how it is probed
            if callable(own):
                url, params, allow, extra = own()  # e.g. a COG: the first bytes, by range
                headers = {**(headers or {}), **extra} or None
            else:
                url, params, allow = _probe_request(layer, spec)
            result.url = url
            start = time.perf_counter()
            r = await fetcher.get(url, params=params, headers=headers, allow_status=allow, cache=False)
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
    if r.status in TILE_ABSENT and _is_tiled(layer):
        result.error = f"probe tile absent (HTTP {r.status})"
    return result


async def probe_all(specs: Iterable[Any], fetcher: Any, build_layer: Any, *, timeout: float) -> list[ProbeResult]:
    """Probe every layer concurrently; rows come back in catalog order."""
    specs = list(specs)
    return list(await asyncio.gather(*(probe_layer(s, fetcher, build_layer, timeout=timeout) for s in specs)))


def host_lines(hosts: dict[str, Any]) -> list[str]:
    """The hosts under the table: ``host NAME: limit L of C, X req/s, floor F ms``.

    >>> host_lines({"tiles.test": {"limit": 4, "ceiling": 8, "throughput": 0.0, "latency_floor": 0.0123}})
    ['host tiles.test: limit 4 of 8, 0.0 req/s, floor 12 ms']
    """
    from mapstream.layers.http.metrics import hosts_text

    return [f"host {line}" for line in hosts_text(hosts, most=len(hosts))]


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
