"""``mapstream export``: stream a feature layer to a file, page by page (memory stays bounded).

The async core :func:`export_layer` walks the layer's pages as the prefetch does
(:func:`~.prefetch.iter_feature_pages`) and hands each to a streaming writer
(:mod:`.writers`); the file is renamed into place only when every page arrived.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .params import BBOX
from .prefetch import iter_feature_pages
from .progress import ProgressBar, RunStats, format_summary
from .shared import (
    cache_option,
    catalog_option,
    get_spec,
    make_fetcher,
    one_line,
    open_catalog,
    quiet_option,
    run_async,
    source_class,
)
from .writers import ExportError, PageWriter, atomic_output, format_for, open_writer

if TYPE_CHECKING:  # pragma: no cover
    from mapstream.layers.types import Bounds

__all__ = ["export", "export_layer"]


@click.command()
@click.argument("layer")
@click.option("--bbox", type=BBOX, default=None, help="Area as W,S,E,N in degrees; default: the whole layer.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output file: .parquet (GeoParquet), .gpkg or .geojson.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "gpkg", "geojson"]), default=None, help="Override the format the suffix implies.")
@click.option("--crs", default="EPSG:4326", show_default=True, help="CRS of the output (GeoJSON is always EPSG:4326).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@catalog_option
@cache_option
@quiet_option
def export(layer, bbox, output, fmt, crs, force, catalog_path, cache_dir, quiet) -> None:
    """Stream feature layer LAYER to a file, page by page (memory stays bounded).

    The file appears only when complete: it is written under a temporary name beside the
    output and renamed at the end; a failure or Ctrl-C removes the temporary file.
    """
    from mapstream.layers.sources.features import FeatureLayer

    try:
        fmt = format_for(output, fmt)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'-o'") from None
    try:
        import pyproj

        pyproj.CRS.from_user_input(crs)
    except Exception as exc:  # pyproj raises CRSError, a plain Exception subclass
        raise click.BadParameter(f"unknown CRS {crs!r}: {one_line(exc)}", param_hint="'--crs'") from None
    _check_output(output, force)
    catalog = open_catalog(catalog_path)
    spec = get_spec(catalog, layer)
    if not issubclass(source_class(spec), FeatureLayer):
        raise click.UsageError(f"export writes feature layers; {spec.name!r} is a {spec.kind} layer (use prefetch)")
    stats = RunStats(unit="pages")
    done: dict[str, Any] = {}

    async def go():
        from mapstream.layers.catalog import build_layer

        async with make_fetcher(cache_dir) as fetcher:
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
        run_async(go, interrupted)
    except ExportError as exc:
        raise click.ClickException(one_line(exc)) from None
    except OSError as exc:  # the rename into place, or a file system that went away
        raise click.ClickException(f"cannot write {output}: {exc.strerror or one_line(exc)}") from None
    writer = done["writer"]
    click.echo(format_summary(stats, action="export"))
    click.echo(f"wrote {writer.rows} features to {output} ({fmt})")
    if stats.truncated:
        click.echo(
            f"warning: stopped at the layer's feature cap (max_features {spec.max_features} in the "
            "catalog): the file holds only part of the layer",
            err=True,
        )
    if writer.renamed:
        pairs = ", ".join(f"{old!r} -> {new!r}" for old, new in writer.renamed.items())
        click.echo(f"columns renamed for {fmt} (reserved or equal but for case): {pairs}", err=True)
    if writer.dropped_columns:
        click.echo(
            f"columns absent from the first page were dropped: {', '.join(sorted(writer.dropped_columns))}",
            err=True,
        )


def _check_output(path: Path, force: bool) -> None:
    """Refuse an output the export could not write, before any request."""
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


async def export_layer(
    layer: Any,
    fetcher: Any,
    bbox: Bounds | None,
    output: Path,
    *,
    fmt: str,
    crs: str,
    stats: RunStats,
    bar: ProgressBar,
) -> PageWriter:
    """Stream a feature layer's pages for ``bbox`` (None: all) into ``output``.

    The file is written under a temporary name and renamed into place only when every page
    arrived: a failed page, an error or a cancellation leaves no ``output``.

    Returns
    -------
    PageWriter
        The finished writer (``rows``, ``dropped_columns``, ``renamed``).

    Raises
    ------
    ExportError
        A page failed (after the fetcher's retries), pages disagree on a column's type, or the
        format's library could not write a page.
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
