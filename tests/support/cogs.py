"""COGs for the tests, written with rasterio, and rasterio's own answer for a view.

:func:`write_cog` writes a Cloud-Optimized GeoTIFF (256 px tiles, deflate, nearest
overviews); :func:`reference` is the independent check of :class:`COGLayer`'s pixels: rasterio
reads the whole overview level and warps it onto a viewport's grid (nearest); :func:`level_for`
works out rio-tiler's overview rule with rasterio's own numbers.
"""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import calculate_default_transform, reproject


def terrain(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth float32 'elevation' with a little seeded noise (compresses, but not to nothing)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    smooth = 800 + 600 * np.sin(x / 97.0) * np.cos(y / 131.0) + 0.2 * x
    return (smooth + rng.normal(0, 5, (h, w))).astype("float32")


def write_cog(path, data, *, crs, transform, nodata) -> bytes:
    """Write ``data`` (rows, cols) or (bands, rows, cols) as a COG at ``path``; its bytes."""
    count = 1 if data.ndim == 2 else data.shape[0]
    with rasterio.open(
        path, "w", driver="COG", height=data.shape[-2], width=data.shape[-1], count=count,
        dtype=data.dtype, crs=crs, transform=transform, nodata=nodata, blocksize=256,
        compress="deflate", overview_resampling="nearest",
    ) as dst:
        dst.write(data if data.ndim == 3 else data[None])
    return path.read_bytes()


def level_for(path, target: float) -> int:
    """rio-tiler's overview rule, worked out with rasterio's own numbers."""
    with rasterio.open(path) as src:
        dst, _, _ = calculate_default_transform(src.crs, "EPSG:3857", src.width, src.height, *src.bounds)
        res = [abs(dst.a)] + [abs(dst.a) * d for d in src.overviews(1)]
    level = 0
    for i, r in enumerate(res):
        if r <= target or abs(r - target) < 0.1:
            level = i
    return level


def reference(path, viewport, level: int) -> np.ndarray:
    """rasterio reads the whole level and warps it onto the viewport's grid (nearest)."""
    kwargs = {} if level == 0 else {"overview_level": level - 1}
    with rasterio.open(path, **kwargs) as src:
        data = src.read()
        ftype = "float32" if data.dtype.itemsize <= 2 or data.dtype == np.float32 else "float64"
        data = data.astype(ftype)
        if src.nodata is not None:
            data[data == src.nodata] = np.nan
        src_transform, src_crs = src.transform, src.crs
    (x0, x1), (y0, y1) = viewport.x_range, viewport.y_range
    out = np.full((data.shape[0], viewport.height, viewport.width), np.nan, dtype=data.dtype)
    reproject(
        data, out, src_transform=src_transform, src_crs=src_crs, src_nodata=np.nan,
        dst_transform=from_bounds(x0, y0, x1, y1, viewport.width, viewport.height),
        dst_crs="EPSG:3857", dst_nodata=np.nan, resampling=Resampling.nearest,
    )
    return out


def assert_same_pixels(got, expected) -> None:
    """Equal values and equal NaN (no data) pixels, and some data."""
    got = np.asarray(got)
    assert got.shape == expected.shape
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.array_equal(got[~np.isnan(got)], expected[~np.isnan(expected)])
    assert (~np.isnan(got)).sum() > 0
