"""Windows of rasters warped onto a viewport's pixel grid in EPSG:3857, and mosaicked.

GDAL (``rasterio.warp.reproject``) works here on arrays already in memory: it never opens a
file or a URL, so every byte still comes through the fetcher. Everything is synchronous and
CPU-bound: callers run it in a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    from affine import Affine

    from ..viewport import Viewport

__all__ = ["Grid", "first_valid", "grid_for", "warp_to_grid"]

DST_CRS = "EPSG:3857"


class Grid(NamedTuple):
    """A north-up pixel grid in EPSG:3857: the transform of its top-left corner and its size."""

    transform: Affine
    width: int
    height: int

    @property
    def x(self) -> np.ndarray:
        """Pixel-centre x coordinates, west to east."""
        t = self.transform
        return t.c + t.a * (np.arange(self.width) + 0.5)

    @property
    def y(self) -> np.ndarray:
        """Pixel-centre y coordinates, north to south."""
        t = self.transform
        return t.f + t.e * (np.arange(self.height) + 0.5)


def grid_for(viewport: Viewport) -> Grid:
    """The grid of a viewport's screen pixels.

    >>> from mapstream.layers.viewport import Viewport
    >>> g = grid_for(Viewport((0.0, 100.0), (0.0, 50.0), 4, 2))
    >>> g.x.tolist(), g.y.tolist()
    ([12.5, 37.5, 62.5, 87.5], [37.5, 12.5])
    """
    from rasterio.transform import from_bounds

    (x0, x1), (y0, y1) = viewport.x_range, viewport.y_range
    return Grid(from_bounds(x0, y0, x1, y1, viewport.width, viewport.height), viewport.width, viewport.height)


def warp_to_grid(
    data: np.ndarray, src_transform: Affine, src_crs: Any, grid: Grid, *, resampling: str = "nearest"
) -> np.ndarray:
    """``data`` (bands, rows, cols; float, NaN = no data) warped onto ``grid``; NaN outside.

    Raises
    ------
    BadInputError
        An unknown resampling name.
    """
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    _quiet_memory_datasets()

    try:
        method = Resampling[resampling]
    except KeyError:
        raise BadInputError(f"unknown resampling {resampling!r}") from None
    out = np.full((data.shape[0], grid.height, grid.width), np.nan, dtype=data.dtype)
    if data.size == 0:
        return out
    reproject(
        source=np.ascontiguousarray(data),
        destination=out,
        src_transform=src_transform,
        src_crs=src_crs,
        src_nodata=np.nan,
        dst_transform=grid.transform,
        dst_crs=DST_CRS,
        dst_nodata=np.nan,
        resampling=method,
    )
    return out


def _quiet_memory_datasets() -> None:
    """rasterio 1.4 warns ``NotGeoreferencedWarning`` while it builds the in-memory datasets of
    an array ``reproject`` (before it sets their transforms): not about our data. Filtered by
    message (adding the same filter again replaces it) rather than with ``catch_warnings``,
    which is not thread-safe."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings(
        "ignore", message="Dataset has no geotransform", category=NotGeoreferencedWarning
    )


def first_valid(layers: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """Mosaic of same-shaped (bands, rows, cols) arrays: each pixel from the first array in
    which it has data (not NaN in every band); None when there is none.

    >>> a = np.array([[[1.0, np.nan]]]); b = np.array([[[5.0, 6.0]]])
    >>> first_valid([a, b]).tolist(), first_valid([None, b]).tolist()
    ([[[1.0, 6.0]]], [[[5.0, 6.0]]])
    """
    present = [a for a in layers if a is not None]
    if not present:
        return None
    bands = {a.shape[0] for a in present}
    if len(bands) > 1:
        raise BadInputError(f"rasters of one mosaic need the same band count, got {sorted(bands)}")
    dtype = np.result_type(*present)
    out = present[0].astype(dtype, copy=True)
    for more in present[1:]:
        empty = np.isnan(out).all(axis=0)
        if not empty.any():
            break
        out[:, empty] = more[:, empty]
    return out
