"""``mapstream stac search``: the items of STAC API catalogs over a box, to GeoParquet.

A catalog's ``stac`` layer, or STAC API URLs given on the command line, are searched as the app
searches them (:meth:`~mapstream.layers.sources.stac.STACLayer.search`: every catalog and
collection at once, ``next`` links followed, each item once), with a progress bar of pages.
The items are written as GeoParquet (EPSG:4326; ``id``, ``collection``, ``datetime``,
``catalog``, ``href`` of the asset, ``assets`` as JSON, ``self_href``, the footprint) under a
temporary name and renamed into place at the end: a failed catalog, an error or Ctrl-C leaves
no file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .params import BBOX
from .progress import ProgressBar, RunStats, format_summary
from .shared import (
    cache_option,
    catalog_option,
    get_spec,
    make_fetcher,
    one_line,
    open_catalog,
    quiet_option,
    request_counts,
    run_async,
)
from .writers import ExportError, atomic_output, open_writer

__all__ = ["stac", "search_to_parquet"]


@click.group()
def stac() -> None:
    """STAC API catalogs: search items over an area."""


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


@stac.command()
@click.argument("layer_or_urls", nargs=-1, required=True, metavar="LAYER_OR_URL...")
@click.option("--bbox", type=BBOX, required=True, help="Area as W,S,E,N in degrees.")
@click.option("--datetime", "when", default=None, help="RFC 3339 instant or interval, e.g. 2024-01-01T00:00:00Z/.. (default: the layer's).")
@click.option("--collections", default=None, help="Comma-separated collection ids (default: the layer's; needed with URLs).")
@click.option("--asset", default=None, help="Asset key whose href fills the 'href' column (default: the layer's, or 'data').")
@click.option("--max-items", type=click.IntRange(min=1), default=None, help="Stop after this many items.")
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=100, show_default=True, help="Items per page asked of the servers.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output GeoParquet file (.parquet).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@catalog_option
@cache_option
@quiet_option
def search(layer_or_urls, bbox, when, collections, asset, max_items, limit, output, force, catalog_path, cache_dir, quiet) -> None:
    """Search STAC layer LAYER of the catalog, or the STAC APIs at URL..., over --bbox, and
    write the items to a GeoParquet file.

    The file appears only when every catalog answered: it is written under a temporary name
    and renamed at the end.
    """
    from .export import _check_output

    if output.suffix.lower() not in (".parquet", ".geoparquet"):
        raise click.BadParameter(f"{output} is not a .parquet file", param_hint="'-o'")
    _check_output(output, force)
    urls = [u for u in layer_or_urls if u.startswith(("http://", "https://"))]
    spec = None
    if not urls:
        if len(layer_or_urls) != 1:
            raise click.UsageError("give one STAC layer of the catalog, or one or more http(s) URLs")
        spec = get_spec(open_catalog(catalog_path), layer_or_urls[0])
        if spec.kind != "stac":
            raise click.UsageError(f"{spec.name!r} is a {spec.kind} layer, not a stac layer")
    elif len(urls) != len(layer_or_urls):
        raise click.UsageError("give either one catalog layer or http(s) URLs, not both")
    elif not collections:
        raise click.UsageError("searching URLs needs --collections")
    stats = RunStats(unit="pages")
    out: dict[str, Any] = {}

    async def go() -> None:
        from mapstream.layers.catalog import build_layer
        from mapstream.layers.sources.stac import STACLayer

        async with make_fetcher(cache_dir) as fetcher:
            if spec is not None:
                layer = await build_layer(spec, fetcher)
            else:
                layer = STACLayer(urls, collections=_split(collections) or [], asset=asset or "data", name="stac")
            if spec is not None and collections:
                layer.collections = _split(collections) or layer.collections
            if asset:
                layer.asset = asset
            if when:
                layer.datetime = when
            if max_items:
                layer.max_items = max_items
            layer.limit = limit
            bar = ProgressBar(stats, desc=layer.name, enabled=not quiet)
            try:
                out["result"] = await search_to_parquet(layer, fetcher, bbox, output, stats=stats, bar=bar)
            finally:
                stats.requests, stats.bytes = request_counts(fetcher)
                bar.close()

    def interrupted() -> None:
        stats.interrupted = True
        click.echo(format_summary(stats, action="stac search") + f"\n  {output} not written")

    try:
        run_async(go, interrupted)
    except ExportError as exc:
        raise click.ClickException(one_line(exc)) from None
    result = out["result"]
    click.echo(format_summary(stats, action="stac search").replace(" features", " items"))
    click.echo(f"wrote {len(result.frame)} items to {output}")
    if result.progress.truncated:
        click.echo("warning: stopped at max_items: the file holds only part of the matches", err=True)


async def search_to_parquet(layer: Any, fetcher: Any, bbox: Any, output: Path, *, stats: RunStats, bar: ProgressBar) -> Any:
    """Search ``layer`` over ``bbox`` and write the items to ``output`` (GeoParquet, atomic).

    Returns
    -------
    ItemSearch
        The search's result.

    Raises
    ------
    ExportError
        A catalog's search failed: no file is written.
    """
    from .export import _uninterrupted

    def on_page(progress: Any) -> None:
        stats.done = progress.done
        stats.fetched = progress.done
        stats.features = progress.features
        bar.advance()

    result = await layer.search(bbox, fetcher, on_page=on_page)
    stats.features = len(result.frame)
    stats.truncated = result.progress.truncated
    for err in result.errors:
        stats.add_error(one_line(err))
    if result.errors:
        raise ExportError(f"{len(result.errors)} search(es) failed, so {output} was not written: {one_line(result.errors[0])}")
    with atomic_output(output) as tmp:
        writer = open_writer("parquet", tmp, crs="EPSG:4326", layer_name=layer.name)
        try:
            await _uninterrupted(writer.write, result.frame)
            await _uninterrupted(writer.close)
        except BaseException:
            writer.abort()
            raise
    return result
