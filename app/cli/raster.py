"""``mapstream raster``: a raster layer's values over a box, read window by window into one GeoTIFF.

The async core :func:`write_raster` cuts the output grid (EPSG:3857, square pixels of
``resolution`` metres, snapped to the box's north-west corner) into windows
(:func:`plan_windows`), reads them concurrently with the layer's ``fetch`` (a COG layer reads
only the internal tiles under each window, with HTTP ranges, through one fetcher: its per-host
limits, retries and caches apply), and writes each window into a tiled GeoTIFF as it arrives.
The file is written under a temporary name and renamed into place only when every window
arrived: a failure or Ctrl-C leaves no file. The command dispatches on the type of the
result (an ``xarray.DataArray``), never on the layer's kind.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import click

from .progress import ProgressBar, RunStats, format_summary
from .params import BBOX
from .shared import (
    cache_option,
    catalog_option,
    get_spec,
    make_fetcher,
    open_catalog,
    quiet_option,
    request_counts,
    run_async,
)
from .export import _check_output, _uninterrupted
from .writers import atomic_output

if TYPE_CHECKING:  # pragma: no cover
    from mapstream.layers.types import Bounds
    from mapstream.layers.viewport import Viewport

__all__ = ["RasterError", "Window", "plan_windows", "raster", "write_raster"]

#: The largest output the command writes (pixels); beyond it, ask for a coarser resolution.
MAX_PIXELS = 2**31 - 1


class RasterError(click.ClickException):
    """The layer cannot be written as a raster, or a window failed."""


class Window(NamedTuple):
    """One window of the output: pixel offsets and size, and its view in EPSG:3857."""

    col: int
    row: int
    width: int
    height: int
    viewport: Viewport


def plan_windows(
    bounds_3857: Bounds, resolution: float, size: int
) -> tuple[tuple[float, float, float, float], int, int, list[Window]]:
    """The output grid over ``bounds_3857`` at ``resolution`` metres, cut into windows.

    Returns ``((west, south, east, north), width, height, windows)``: the grid snapped to whole
    pixels from the box's north-west corner, and its windows of at most ``size`` x ``size``
    pixels, row by row.

    Raises
    ------
    BadInputError
        A non-positive resolution or window size, or more than :data:`MAX_PIXELS` pixels.

    >>> grid, w, h, wins = plan_windows((0.0, 0.0, 250.0, 100.0), 10.0, 16)
    >>> grid, w, h, len(wins), wins[1][:4]
    ((0.0, 0.0, 250.0, 100.0), 25, 10, 2, (16, 0, 9, 10))
    >>> wins[1].viewport.x_range
    (160.0, 250.0)
    """
    from mapstream.layers.errors import BadInputError
    from mapstream.layers.viewport import Viewport

    if not resolution > 0 or size < 1:
        raise BadInputError(f"resolution and window size must be positive, got {resolution}, {size}")
    west, south, east, north = bounds_3857
    width = max(1, math.ceil((east - west) / resolution - 1e-9))
    height = max(1, math.ceil((north - south) / resolution - 1e-9))
    if width * height > MAX_PIXELS:
        raise BadInputError(
            f"{width} x {height} pixels at {resolution} m is too large: use a coarser --resolution"
        )
    east, south = west + width * resolution, north - height * resolution
    windows = []
    for row in range(0, height, size):
        for col in range(0, width, size):
            w, h = min(size, width - col), min(size, height - row)
            x0, y1 = west + col * resolution, north - row * resolution
            vp = Viewport.create((x0, x0 + w * resolution), (y1 - h * resolution, y1), w, h)
            windows.append(Window(col, row, w, h, vp))
    return (west, south, east, north), width, height, windows


@click.command()
@click.argument("layer")
@click.option("--bbox", type=BBOX, required=True, help="Area as W,S,E,N in degrees.")
@click.option("--resolution", type=click.FloatRange(min=0, min_open=True), required=True, help="Pixel size in metres (EPSG:3857).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output GeoTIFF.")
@click.option("--window-size", type=click.IntRange(min=16), default=1024, show_default=True, help="Pixels per side of each window read.")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True, help="Windows read at once.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@catalog_option
@cache_option
@quiet_option
def raster(layer, bbox, resolution, output, window_size, concurrency, force, catalog_path, cache_dir, quiet) -> None:
    """Read raster layer LAYER over --bbox at --resolution into the GeoTIFF -o (EPSG:3857).

    Windows are read concurrently (a COG layer reads only the tiles under each window, with
    HTTP range requests). The file appears only when complete: it is written under a
    temporary name and renamed at the end; a failure or Ctrl-C removes the temporary file.
    """
    from mapstream.layers.projection import lonlat_bbox_to_mercator

    if output.suffix.lower() not in (".tif", ".tiff"):
        raise click.BadParameter(f"{output} is not a .tif file", param_hint="'-o'")
    _check_output(output, force)
    catalog = open_catalog(catalog_path)
    spec = get_spec(catalog, layer)
    bounds = lonlat_bbox_to_mercator(tuple(bbox))
    stats = RunStats(unit="windows")
    done: dict[str, Any] = {}

    async def go():
        from mapstream.layers.catalog import build_layer

        async with make_fetcher(cache_dir) as fetcher:
            lay = await build_layer(spec, fetcher)
            bar = ProgressBar(stats, desc=spec.name, enabled=not quiet)
            try:
                done["shape"] = await write_raster(
                    lay, fetcher, bounds, resolution, output,
                    window_size=window_size, concurrency=concurrency, stats=stats, bar=bar,
                )
            finally:
                bar.close()
                stats.requests, stats.bytes = request_counts(fetcher)

    def interrupted():
        stats.interrupted = True
        click.echo(format_summary(stats, action="raster") + f"\n  {output} not written")

    run_async(go, interrupted)
    bands, height, width = done["shape"]
    click.echo(format_summary(stats, action="raster"))
    click.echo(f"wrote {width} x {height} pixels, {bands} band(s), to {output} (EPSG:3857, {resolution} m)")


async def write_raster(
    layer: Any,
    fetcher: Any,
    bounds_3857: Bounds,
    resolution: float,
    output: Path,
    *,
    window_size: int = 1024,
    concurrency: int = 8,
    stats: RunStats | None = None,
    bar: ProgressBar | None = None,
) -> tuple[int, int, int]:
    """Read ``layer`` window by window over ``bounds_3857`` into the GeoTIFF ``output``.

    Returns
    -------
    tuple
        ``(bands, height, width)`` of the file written.

    Raises
    ------
    RasterError
        The layer's results are not rasters (an ``xarray.DataArray`` of dims band, y, x).
    LayersError
        A window failed (after the fetcher's retries); no file is written.
    """
    import xarray as xr

    grid, width, height, windows = plan_windows(bounds_3857, resolution, window_size)
    stats = stats if stats is not None else RunStats(unit="windows")
    if bar is not None:
        bar.set_total(len(windows))
    else:
        stats.total = len(windows)
    gate = asyncio.Semaphore(concurrency)

    async def read(win: Window) -> tuple[Window, Any]:
        async with gate:
            return win, await layer.fetch(win.viewport, fetcher)

    first, rest = windows[0], windows[1:]
    _, sample = await read(first)  # the first window says the band count and type
    if not isinstance(sample, xr.DataArray) or sample.dims != ("band", "y", "x"):
        kind = getattr(layer, "kind", type(layer).__name__)
        raise RasterError(
            f"raster writes raster layers (values on a grid); {getattr(layer, 'name', '?')!r} "
            f"is a {kind} layer (use prefetch or export)"
        )
    with atomic_output(output) as tmp:
        writer = _Writer(tmp, grid, resolution, width, height, sample)
        try:
            await _uninterrupted(writer.write, first, sample)
            _advance(stats, bar)
            tasks = [asyncio.create_task(read(w)) for w in rest]
            try:
                for next_done in asyncio.as_completed(tasks):
                    win, values = await next_done
                    await _uninterrupted(writer.write, win, values)
                    _advance(stats, bar)
            finally:
                for task in tasks:
                    task.cancel()
            await _uninterrupted(writer.close)
        except BaseException:
            writer.abort()
            raise
    return writer.count, height, width


def _advance(stats: RunStats, bar: ProgressBar | None) -> None:
    stats.done += 1
    stats.fetched += 1
    if bar is not None:
        bar.advance()


class _Writer:
    """A tiled, compressed GeoTIFF in EPSG:3857 written window by window (in a thread)."""

    def __init__(
        self, path: Path, grid: tuple[float, float, float, float], resolution: float,
        width: int, height: int, sample: Any,
    ) -> None:
        import rasterio
        from rasterio.transform import from_origin

        self.count = int(sample.sizes["band"])
        dtype = str(sample.dtype)
        tiled = width >= 256 and height >= 256
        self._ds = rasterio.open(
            path, "w", driver="GTiff", width=width, height=height, count=self.count, dtype=dtype,
            crs="EPSG:3857", transform=from_origin(grid[0], grid[3], resolution, resolution),
            nodata=float("nan") if sample.dtype.kind == "f" else None,
            compress="deflate", tiled=tiled, **({"blockxsize": 256, "blockysize": 256} if tiled else {}),
            BIGTIFF="IF_SAFER",
        )
        self._ds.update_tags(**{f"band_{i}": str(b) for i, b in enumerate(sample["band"].values.tolist(), 1)})

    def write(self, win: Window, values: Any) -> None:
        from rasterio.windows import Window as RioWindow

        data = values.values
        if data.shape != (self.count, win.height, win.width):
            raise RasterError(f"a window came back {data.shape}, expected {(self.count, win.height, win.width)}")
        self._ds.write(data, window=RioWindow(win.col, win.row, win.width, win.height))

    def close(self) -> None:
        self._ds.close()

    def abort(self) -> None:
        if not self._ds.closed:
            self._ds.close()
