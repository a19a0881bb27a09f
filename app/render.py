"""Drawing: feature frames rasterized with datashader, tile mosaics as RGBA images.

Everything here is synchronous and CPU-bound; the app calls it through :func:`asyncio.to_thread`
(:func:`shade_features_async`) so that the event loop never runs datashader. Images are plain
``(height, width, 4)`` uint8 arrays in Web Mercator with the viewport's bounds; :mod:`app.views`
turns them into GeoViews ``RGB`` elements.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "Image",
    "empty_image",
    "mosaic_image",
    "shade_features",
    "shade_features_async",
    "to_rgba",
    "warm_up",
]

_DEFAULT_COLOR = "#d62728"


class Image(NamedTuple):
    """An RGBA image in EPSG:3857: ``rgba`` is (height, width, 4) uint8, row 0 at the top.

    ``bounds`` is (xmin, ymin, xmax, ymax) in metres.
    """

    rgba: np.ndarray
    bounds: tuple[float, float, float, float]

    @property
    def opaque_pixels(self) -> int:
        """How many pixels have a non-zero alpha.

        >>> empty_image((0, 0, 1, 1), 4, 3).opaque_pixels
        0
        """
        return int(np.count_nonzero(self.rgba[..., 3]))


def empty_image(bounds: tuple[float, float, float, float], width: int = 1, height: int = 1) -> Image:
    """A fully transparent image.

    >>> empty_image((0, 0, 10, 10), 2, 3).rgba.shape
    (3, 2, 4)
    """
    return Image(np.zeros((max(1, height), max(1, width), 4), dtype=np.uint8), tuple(map(float, bounds)))


def to_rgba(color: str, opacity: float = 1.0) -> tuple[int, int, int, int]:
    """A CSS hex colour (``#rgb`` or ``#rrggbb``) or a named colour as an RGBA tuple.

    >>> to_rgba("#ff8000", 0.5)
    (255, 128, 0, 128)
    >>> to_rgba("#f00")
    (255, 0, 0, 255)
    """
    c = str(color).strip()
    if not c.startswith("#"):
        from matplotlib.colors import to_hex

        c = to_hex(c)
    c = c.lstrip("#")
    if len(c) == 3:
        c = "".join(ch * 2 for ch in c)
    r, g, b = (int(c[i : i + 2], 16) for i in (0, 2, 4))
    return r, g, b, int(round(255 * max(0.0, min(1.0, float(opacity)))))


def mosaic_image(mosaic: Any) -> Image:
    """A tile layer's mosaic (xarray ``(y, x, band)`` uint8 RGBA, y decreasing) as an :class:`Image`.

    The bounds are the pixel edges (the coordinates are pixel centres).
    """
    data = np.asarray(mosaic.values)
    xs = np.asarray(mosaic.coords["x"].values, dtype=float)
    ys = np.asarray(mosaic.coords["y"].values, dtype=float)
    dx = abs(xs[1] - xs[0]) if len(xs) > 1 else 1.0
    dy = abs(ys[1] - ys[0]) if len(ys) > 1 else 1.0
    if len(ys) > 1 and ys[0] < ys[-1]:
        data = data[::-1]
    bounds = (xs.min() - dx / 2, ys.min() - dy / 2, xs.max() + dx / 2, ys.max() + dy / 2)
    return Image(data, tuple(float(v) for v in bounds))


def _style(style: Any, name: str, default: Any) -> Any:
    if style is None:
        return default
    if isinstance(style, Mapping):
        value = style.get(name, default)
    else:
        value = getattr(style, name, default)
    return default if value is None else value


def shade_features(
    frame: Any,
    bounds: tuple[float, float, float, float],
    width: int,
    height: int,
    style: Any = None,
) -> Image:
    """Rasterize a GeoDataFrame in EPSG:3857 (points, lines, polygons) into an RGBA image.

    Each geometry kind is aggregated with datashader on the same canvas and shaded with the
    style's ``color`` (or ``cmap`` for dense points), ``opacity``, ``point_size`` (spread) and
    ``line_width``; polygons are filled at ``opacity / 2`` and outlined. Runs synchronously: call
    it off the event loop (:func:`shade_features_async`).

    Raises
    ------
    ValueError
        ``width`` or ``height`` is not positive.
    """
    import datashader as ds
    import datashader.transfer_functions as tf
    import geopandas as gpd
    import pandas as pd
    import shapely

    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    xmin, ymin, xmax, ymax = (float(v) for v in bounds)
    out = np.zeros((height, width, 4), dtype=np.uint8)
    if frame is None or len(frame) == 0:
        return Image(out, (xmin, ymin, xmax, ymax))
    color = _style(style, "color", _DEFAULT_COLOR)
    opacity = float(_style(style, "opacity", 0.9))
    point_size = int(_style(style, "point_size", 3))
    line_width = int(max(1, round(float(_style(style, "line_width", 1)))))
    cmap = _style(style, "cmap", None)
    if isinstance(cmap, str):
        import matplotlib

        cmap = matplotlib.colormaps[cmap] if cmap in matplotlib.colormaps else [cmap]
    canvas = ds.Canvas(plot_width=width, plot_height=height, x_range=(xmin, xmax), y_range=(ymin, ymax))
    geoms = frame.geometry
    kinds = geoms.geom_type.fillna("")
    layers = []

    def _shade(agg: Any, alpha: float, how: str = "eq_hist", spread: int = 0) -> Any:
        if cmap and how != "solid":
            img = tf.shade(agg, cmap=cmap, how=how, min_alpha=int(255 * alpha * 0.6))
        else:
            img = tf.shade(agg, cmap=[color], how="linear", min_alpha=int(255 * alpha))
        if spread:
            img = tf.spread(img, px=spread, shape="circle")
        return img

    poly = kinds.isin(["Polygon", "MultiPolygon"])
    line = kinds.isin(["LineString", "MultiLineString", "LinearRing"])
    point = (kinds == "Point").to_numpy()
    multi = (kinds == "MultiPoint").to_numpy()
    if poly.any():
        sub = gpd.GeoDataFrame(geometry=geoms[poly].values, crs=frame.crs)
        layers.append(_shade(canvas.polygons(sub, geometry="geometry", agg=ds.any()), opacity * 0.5, "solid"))
        outline = gpd.GeoDataFrame(geometry=sub.geometry.boundary.values, crs=frame.crs)
        agg = canvas.line(outline, geometry="geometry", agg=ds.any(), line_width=line_width if line_width > 1 else 0)
        layers.append(_shade(agg, opacity, "solid"))
    if line.any():
        sub = gpd.GeoDataFrame(geometry=geoms[line].values, crs=frame.crs)
        agg = canvas.line(sub, geometry="geometry", agg=ds.any(), line_width=line_width if line_width > 1 else 0)
        layers.append(_shade(agg, opacity, "solid"))
    if point.any() or multi.any():
        aggs = []
        if point.any():
            # Plain points as x/y columns: datashader's GeoDataFrame path builds a spatial
            # index of every frame it draws, seconds for the 200 000 points re-shaded as pages
            # arrive; coordinate arrays cost milliseconds.
            arr = np.asarray(geoms.values[point])
            xy = pd.DataFrame({"x": shapely.get_x(arr), "y": shapely.get_y(arr)})
            aggs.append(canvas.points(xy, "x", "y", agg=ds.count()))
        if multi.any():
            sub = gpd.GeoDataFrame(geometry=geoms.values[multi], crs=frame.crs)
            aggs.append(canvas.points(sub, geometry="geometry", agg=ds.count()))
        agg = aggs[0] if len(aggs) == 1 else aggs[0] + aggs[1]
        layers.append(_shade(agg, opacity, "eq_hist", spread=max(0, point_size // 2)))
    if not layers:
        return Image(out, (xmin, ymin, xmax, ymax))
    stacked = tf.stack(*layers) if len(layers) > 1 else layers[0]
    rgba = stacked.to_numpy().view(np.uint8).reshape(height, width, 4)
    # datashader's row 0 is the bottom (y increasing); images here have row 0 at the top
    return Image(np.ascontiguousarray(rgba[::-1]), (xmin, ymin, xmax, ymax))


async def shade_features_async(
    frame: Any, bounds: tuple[float, float, float, float], width: int, height: int, style: Any = None
) -> Image:
    """:func:`shade_features` in a worker thread, so that the event loop keeps serving.

    Raises
    ------
    ValueError
        As :func:`shade_features`.
    """
    return await asyncio.to_thread(shade_features, frame, bounds, width, height, style)


_warm_lock = __import__("threading").Lock()
_warm_thread: Any = None


def warm_up() -> None:
    """Compile datashader's kernels once per process, in a background thread.

    Datashader JIT-compiles its aggregation kernels (numba) on first use, which costs seconds;
    doing it while the page, the basemap and the demo services start keeps that cost off the
    first feature layer's time to screen. Returns at once; idempotent.
    """
    global _warm_thread
    import threading

    with _warm_lock:
        if _warm_thread is not None:
            return
        _warm_thread = threading.Thread(target=_warm, name="mapstream-datashader-warm-up", daemon=True)
        _warm_thread.start()


def _warm() -> None:
    import geopandas as gpd
    import shapely

    geoms = [  # two points on one pixel: counts differ, so shading has a span to scale
        shapely.Point(0, 0),
        shapely.Point(0, 0),
        shapely.Point(1, 1),
        shapely.LineString([(0, 0), (1, 1)]),
        shapely.box(0, 0, 1, 1),
    ]
    frame = gpd.GeoDataFrame({"v": [1.0, 2.0, 3.0, 4.0, 5.0]}, geometry=geoms, crs="EPSG:3857")
    for style in ({"color": "#000000"}, {"cmap": "viridis"}):
        shade_features(frame, (-1.0, -1.0, 2.0, 2.0), 8, 8, style)
