"""The ``mapstream`` command line: prefetch, export, check, cache, demo and serve.

The same async engine as the app (:mod:`mapstream.layers`), driven in batch: warm the disk cache the app
reads before a workshop, export a feature layer for offline work, check that a catalog's
services answer, run the embedded demo services, or run the app.

Importing this module stays light (click only); each command imports what it needs. Bad input
exits with status 2 (usage) or 1 (a catalog or service problem) and one line of explanation;
Ctrl-C stops a run cleanly, prints a partial summary and exits with status 130.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import click

from mapstream import __version__

from .params import BBOX, DURATION, FRACTION, ZOOM_RANGE

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

_catalog_option = click.option(
    "--catalog",
    "catalog_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MAPSTREAM_CATALOG",
    help="Catalog YAML file [env MAPSTREAM_CATALOG; default: the embedded demo catalog].",
)
_cache_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MAPSTREAM_CACHE_DIR",
    help="HTTP cache directory shared with the app [env MAPSTREAM_CACHE_DIR].",
)
_quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mapstream")
def main() -> None:
    """mapstream: a reactive map for Panel/HoloViz, and batch tools for its data."""


# ---------------------------------------------------------------------------- helpers


def _load_catalog(path: Path | None) -> Any:
    from mapstream.layers.catalog import load_catalog
    from mapstream.layers.errors import LayersError

    try:
        return load_catalog(path)
    except (LayersError, OSError) as exc:
        raise click.ClickException(f"cannot use catalog {path or '(embedded)'}: {_one_line(exc)}") from None


def _get_spec(catalog: Any, name: str) -> Any:
    from mapstream.layers.errors import LayersError

    try:
        return catalog.get(name)
    except (LayersError, KeyError) as exc:
        raise click.BadParameter(_one_line(exc), param_hint="'LAYER'") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def _fetcher(cache_dir: Path | None, concurrency: int | None = None, **kw: Any) -> Any:
    from mapstream.layers.http import Fetcher

    if cache_dir is not None:
        kw["cache_dir"] = cache_dir
    if concurrency is not None:
        kw["per_host_limit"] = concurrency
    return Fetcher(**kw)


def _run(coro_fn, on_interrupt) -> Any:
    """Run ``coro_fn()`` in a fresh loop; on Ctrl-C call ``on_interrupt`` and exit 130.

    Engine errors become one line (exit 1); never a traceback for expected failures.
    """
    from mapstream.layers.errors import BadInputError, LayersError

    try:
        return asyncio.run(coro_fn())
    except KeyboardInterrupt:
        on_interrupt()
        sys.exit(EXIT_INTERRUPTED)
    except BadInputError as exc:
        raise click.UsageError(_one_line(exc)) from None
    except LayersError as exc:
        raise click.ClickException(_one_line(exc)) from None


def _check_output(path: Path, force: bool) -> None:
    if path.exists() and path.is_dir():
        raise click.BadParameter(f"{path} is a directory", param_hint="'-o'")
    if path.exists() and not force:
        raise click.BadParameter(f"{path} exists (use --force to replace it)", param_hint="'-o'")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise click.BadParameter(f"directory {parent} does not exist", param_hint="'-o'")
    import tempfile

    try:  # a real probe: os.access says yes to root on a read-only mount
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".mapstream-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise click.BadParameter(f"directory {parent} is not writable ({reason})", param_hint="'-o'") from None


# ---------------------------------------------------------------------------- prefetch


@main.command()
@click.argument("layer")
@click.option("--bbox", type=BBOX, required=True, help="Area as W,S,E,N in degrees (WGS84).")
@click.option("--zoom", type=ZOOM_RANGE, default=None, help="Zoom levels, e.g. 3-9 (tile layers; required for them).")
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True, help="Requests in flight at once.")
@click.option("--max-tiles", type=click.IntRange(1), default=500_000, show_default=True, help="Refuse a run that needs more tiles than this.")
@_catalog_option
@_cache_option
@_quiet_option
def prefetch(layer, bbox, zoom, concurrency, max_tiles, catalog_path, cache_dir, quiet) -> None:
    """Fill the disk cache the app reads with LAYER's data for an area.

    Tile and WMS layers: every tile of BBOX at each level of ZOOM. Feature layers: every page
    of items in BBOX. Resumable: tiles already cached and fresh cost no request. Ends with a
    summary (also after Ctrl-C).
    """
    from .progress import ProgressBar, RunStats, format_summary
    from .run import count_tiles, effective_concurrency, prefetch_features, prefetch_tiles, zoom_levels

    catalog = _load_catalog(catalog_path)
    spec = _get_spec(catalog, layer)
    tiled = spec.kind in ("tiles", "wms")
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

        async with _fetcher(cache_dir, concurrency) as fetcher:
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

    _run(go, interrupted)
    click.echo(format_summary(stats))
    if stats.failed:
        sys.exit(1)


# ---------------------------------------------------------------------------- export


@main.command()
@click.argument("layer")
@click.option("--bbox", type=BBOX, default=None, help="Area as W,S,E,N in degrees; default: the whole layer.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output file: .parquet (GeoParquet), .gpkg or .geojson.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "gpkg", "geojson"]), default=None, help="Override the format the suffix implies.")
@click.option("--crs", default="EPSG:4326", show_default=True, help="CRS of the output (GeoJSON is always EPSG:4326).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@_catalog_option
@_cache_option
@_quiet_option
def export(layer, bbox, output, fmt, crs, force, catalog_path, cache_dir, quiet) -> None:
    """Stream feature layer LAYER to a file, page by page (memory stays bounded).

    The file appears only when complete: it is written under a temporary name beside the
    output and renamed at the end; a failure or Ctrl-C removes the temporary file.
    """
    from .writers import ExportError, format_for
    from .progress import ProgressBar, RunStats, format_summary
    from .run import export_layer

    try:
        fmt = format_for(output, fmt)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'-o'") from None
    try:
        import pyproj

        pyproj.CRS.from_user_input(crs)
    except Exception as exc:  # pyproj raises CRSError, a plain Exception subclass
        raise click.BadParameter(f"unknown CRS {crs!r}: {_one_line(exc)}", param_hint="'--crs'") from None
    _check_output(output, force)
    catalog = _load_catalog(catalog_path)
    spec = _get_spec(catalog, layer)
    if spec.kind != "features":
        raise click.UsageError(f"export writes feature layers; {spec.name!r} is a {spec.kind} layer (use prefetch)")
    stats = RunStats(unit="pages")
    done: dict[str, Any] = {}

    async def go():
        from mapstream.layers.catalog import build_layer

        async with _fetcher(cache_dir) as fetcher:
            lay = await build_layer(spec, fetcher)
            bar = ProgressBar(stats, desc=spec.name, enabled=not quiet)
            try:
                done["writer"] = await export_layer(
                    lay, fetcher, bbox, output, fmt=fmt, crs=crs, stats=stats, bar=bar
                )
            finally:
                bar.close()

    def interrupted():
        stats.interrupted = True
        click.echo(format_summary(stats, action="export") + f"\n  {output} not written")

    try:
        _run(go, interrupted)
    except ExportError as exc:
        raise click.ClickException(_one_line(exc)) from None
    writer = done["writer"]
    click.echo(format_summary(stats, action="export"))
    click.echo(f"wrote {writer.rows} features to {output} ({fmt})")
    if stats.truncated:
        click.echo(
            f"warning: stopped at the layer's feature cap (max_features {spec.max_features} in the "
            "catalog): the file holds only part of the layer",
            err=True,
        )
    if writer.dropped_columns:
        click.echo(
            f"columns absent from the first page were dropped: {', '.join(sorted(writer.dropped_columns))}",
            err=True,
        )


# ---------------------------------------------------------------------------- check


@main.command()
@_catalog_option
@_cache_option
@click.option("--timeout", type=DURATION, default="15s", show_default=True, help="Give up on a layer after this long.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON lines.")
def check(catalog_path, cache_dir, timeout, as_json) -> None:
    """Probe every layer of the catalog concurrently (a tile, a GetMap or one item).

    Prints layer, status (up / down / error), HTTP status, latency, the cache validators the
    service sends (ETag, Last-Modified) and the error. Exits 1 if any layer is not up.
    """
    from .run import format_table, probe_all

    catalog = _load_catalog(catalog_path)
    rows: list[Any] = []

    async def go():
        from mapstream.layers.catalog import build_layer

        async with _fetcher(cache_dir) as fetcher:
            rows.extend(await probe_all(catalog.layers, fetcher, build_layer, timeout=timeout))

    _run(go, lambda: click.echo("check interrupted", err=True))
    if as_json:
        import dataclasses
        import json

        for r in rows:
            click.echo(json.dumps(dataclasses.asdict(r)))
    else:
        click.echo(format_table(rows))
    if any(r.status != "up" for r in rows):
        sys.exit(1)


# ---------------------------------------------------------------------------- cache


def _human(nbytes: int) -> str:
    """Bytes for people.

    >>> _human(512), _human(3 * 2**20), _human(int(1.5 * 2**30))
    ('512 B', '3.0 MiB', '1.5 GiB')
    """
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@main.command()
@_cache_option
@click.option("--prune", "prune_to", default=None, metavar="SIZE",
              help="Evict down to SIZE (e.g. 500M; default: the bound) after dropping useless entries.")
@click.option("--clear", is_flag=True, help="Remove every entry.")
def cache(cache_dir, prune_to, clear) -> None:
    """Show the HTTP disk cache (where, entries, size, bound); prune or clear it.

    The bound is MAPSTREAM_CACHE_MAX_BYTES (default 1G); when the cache is full, expired
    responses that cannot be revalidated go first, then the least recently used.
    """
    from mapstream.layers.cache import DiskCache, default_cache_dir
    from mapstream.layers.units import parse_size
    from mapstream.layers.errors import BadInputError, LayersError

    if prune_to is not None and clear:
        raise click.UsageError("--prune and --clear exclude each other")
    if prune_to is not None:
        try:
            prune_to = parse_size(prune_to, name="--prune")
        except BadInputError as exc:
            raise click.BadParameter(_one_line(exc), param_hint="'--prune'") from None
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        disk = DiskCache(directory)
        if clear:
            before = disk.size()
            disk.clear()
            click.echo(f"removed {before.entries} entries ({_human(before.nbytes)}) from {directory}")
            return
        if prune_to is not None:
            result = disk.prune(prune_to)
            click.echo(f"removed {result.removed.entries} entries ({_human(result.removed.nbytes)}); "
                       f"kept {result.kept.entries} ({_human(result.kept.nbytes)})")
            return
        usage = disk.size()
    except LayersError as exc:
        raise click.ClickException(_one_line(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot use the cache at {directory}: {_one_line(exc)}") from None
    click.echo(f"cache:   {directory}")
    click.echo(f"entries: {usage.entries}")
    click.echo(f"size:    {_human(usage.nbytes)} of {_human(disk.max_bytes)} "
               f"({usage.nbytes / max(disk.max_bytes, 1):.0%}; bound from MAPSTREAM_CACHE_MAX_BYTES, default 1G)")


# ---------------------------------------------------------------------------- demo


@main.command()
@click.option("--latency", type=DURATION, default=None, help="Delay added to every response, e.g. 150ms [env MAPSTREAM_DEMO_LATENCY; default 0].")
@click.option("--fail-rate", type=FRACTION, default=None, help="Fraction of tile and item requests answered 503, e.g. 0.05 [env MAPSTREAM_DEMO_FAIL_RATE; default 0].")
def demo(latency, fail_rate) -> None:
    """Run the embedded demo services (OGC API Features and XYZ tiles) until Ctrl-C."""
    import signal
    import threading

    from mapstream.demo import start_demo
    from mapstream.layers.errors import LayersError

    try:
        services = start_demo(latency=latency, fail_rate=fail_rate)
    except (LayersError, OSError) as exc:
        raise click.ClickException(f"cannot start the demo services: {_one_line(exc)}") from None
    stop = threading.Event()
    # SIGTERM stops as cleanly as Ctrl-C (process managers, test harnesses).
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        click.echo(f"OGC API Features: {services.ogc_url}")
        click.echo(f"XYZ tiles:        {services.tiles_url}")
        started = getattr(services, "startup_seconds", None)
        if started is not None:
            click.echo(f"started in {started:.2f}s; press Ctrl-C to stop", err=True)
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        services.stop()
        click.echo("demo services stopped", err=True)


# ---------------------------------------------------------------------------- serve


def serve_command(catalog: Path | None, extra: tuple[str, ...]) -> list[str]:
    """The ``panel serve`` command line for the app package, with the catalog passed on.

    >>> cmd = serve_command(Path("c.yml"), ("--port", "5007"))
    >>> cmd[1:4], cmd[5:]
    (['-m', 'panel', 'serve'], ['--warm', '--port', '5007', '--args', '--catalog', 'c.yml'])
    """
    from mapstream.app import APP_DIR

    app_dir = str(APP_DIR)
    # --warm runs the app once at start-up: datashader's JIT compile and the parser processes
    # start then, not when the first visitor's layers need them (countries 32 s -> 7 s).
    cmd = [sys.executable, "-m", "panel", "serve", app_dir, "--warm", *extra]
    if catalog is not None:
        cmd += ["--args", "--catalog", str(catalog)]
    return cmd


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@_catalog_option
@click.argument("panel_args", nargs=-1, type=click.UNPROCESSED)
def serve(catalog_path, panel_args) -> None:
    """Run the app with ``panel serve``; extra options (--port, --show, ...) go to panel.

    The catalog is passed as ``--args --catalog PATH`` and in MAPSTREAM_CATALOG.
    """
    if catalog_path is not None:
        if not catalog_path.is_file():
            raise click.BadParameter(f"{catalog_path} is not a readable file", param_hint="'--catalog'")
        catalog_path = catalog_path.resolve()
        os.environ["MAPSTREAM_CATALOG"] = str(catalog_path)
    cmd = serve_command(catalog_path, tuple(panel_args))
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)

