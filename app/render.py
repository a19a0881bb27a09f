"""Drawing: feature frames rasterized with datashader, tile mosaics as RGBA images.

Everything here is synchronous and CPU-bound; the app calls it through :func:`asyncio.to_thread`
(:mod:`mapstream.app.frames`) so that the event loop never runs datashader. Images are plain
``(height, width, 4)`` uint8 arrays in Web Mercator with the viewport's bounds;
:mod:`mapstream.app.plot` turns them into GeoViews ``RGB`` elements.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from mapstream.layers.types import Bounds

if TYPE_CHECKING:  # pragma: no cover
    from mapstream.layers.types import Mosaic

__all__ = [
    "Aggregates",
    "Image",
    "aggregate_features",
    "merge_aggregates",
    "shade_aggregates",
    "mosaic_image",
    "over_rgba",
    "shade_features",
    "grow_aggregate",
    "line_footprint",
    "warm_up",
    "DEFAULT_CLIM",
    "density_span",
    "count_colors",
    "crop_margin",
]

_DEFAULT_COLOR = "#d62728"

#: Points per pixel drawn with the colormap's last colour when the style gives no ``clim``.
DEFAULT_CLIM = 100


class Image(NamedTuple):
    """An RGBA image in EPSG:3857: ``rgba`` is (height, width, 4) uint8, row 0 at the top.

    ``bounds`` is (xmin, ymin, xmax, ymax) in metres.
    """

    rgba: np.ndarray
    bounds: Bounds

    @property
    def opaque_pixels(self) -> int:
        """How many pixels have a non-zero alpha.

        >>> Image(np.zeros((3, 4, 4), dtype=np.uint8), (0.0, 0.0, 1.0, 1.0)).opaque_pixels
        0
        """
        return int(np.count_nonzero(self.rgba[..., 3]))


def mosaic_image(mosaic: Mosaic) -> Image:
    """A tile layer's :class:`~mapstream.layers.types.Mosaic` as an :class:`Image`.

    The mosaic's image is an xarray ``(y, x, band)`` uint8 RGBA array; the bounds are the pixel
    edges (its coordinates are pixel centres).
    """
    data = np.asarray(mosaic.image.values)
    xs = np.asarray(mosaic.image.coords["x"].values, dtype=float)
    ys = np.asarray(mosaic.image.coords["y"].values, dtype=float)
    dx = abs(xs[1] - xs[0]) if len(xs) > 1 else 1.0
    dy = abs(ys[1] - ys[0]) if len(ys) > 1 else 1.0
    if len(ys) > 1 and ys[0] < ys[-1]:
        data = data[::-1]
    bounds = (xs.min() - dx / 2, ys.min() - dy / 2, xs.max() + dx / 2, ys.max() + dy / 2)
    return Image(data, Bounds(*(float(v) for v in bounds)))


def _style(style: Any, name: str, default: Any) -> Any:
    if style is None:
        return default
    if isinstance(style, Mapping):
        value = style.get(name, default)
    else:
        value = getattr(style, name, default)
    return default if value is None else value


#: The aggregates of a frame, by what they draw: "fill" and "outline" (polygons), "lines",
#: "points" (counts). Pages are aggregated one by one and merged (:func:`merge_aggregates`).
Aggregates = dict


def aggregate_features(
    frame: Any,
    bounds: Bounds,
    width: int,
    height: int,
) -> Aggregates:
    """Aggregate a GeoDataFrame in EPSG:3857 on a ``width`` x ``height`` canvas with datashader.

    Polygons give a "fill" and an "outline", lines "lines" (all booleans: any geometry in the
    pixel), points and multi-points "points" (counts). Aggregates of two frames on one canvas
    merge into those of both (:func:`merge_aggregates`), so that a layer arriving page by page
    aggregates each page once. Synchronous: run it off the event loop.

    Raises
    ------
    ValueError
        ``width`` or ``height`` is not positive.
    """
    import datashader as ds
    import geopandas as gpd
    import pandas as pd
    import shapely

    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aggs: Aggregates = {}
    if frame is None or len(frame) == 0:
        return aggs
    xmin, ymin, xmax, ymax = (float(v) for v in bounds)
    canvas = ds.Canvas(plot_width=width, plot_height=height, x_range=(xmin, xmax), y_range=(ymin, ymax))
    geoms = frame.geometry
    # Empty geometries draw nothing, and a page of them only would fail in shapely's
    # conversion for datashader ("Geometry type combination is not supported ([])").
    kinds = geoms.geom_type.fillna("").where(~np.asarray(geoms.is_empty), "")

    def _lines(lines: Any) -> Any:
        # one-pixel lines, widened on the aggregate when shaded: datashader's anti-aliased
        # wide lines are another kernel to compile (2 s on a fresh server)
        sub = gpd.GeoDataFrame(geometry=lines, crs=frame.crs)
        return canvas.line(sub, geometry="geometry", agg=ds.any(), line_width=0)

    poly = kinds.isin(["Polygon", "MultiPolygon"]).to_numpy()
    line = kinds.isin(["LineString", "MultiLineString", "LinearRing"]).to_numpy()
    point = kinds.isin(["Point", "MultiPoint"]).to_numpy()
    if poly.any():
        sub = gpd.GeoDataFrame(geometry=geoms.values[poly], crs=frame.crs)
        aggs["fill"] = canvas.polygons(sub, geometry="geometry", agg=ds.any())
        aggs["outline"] = _lines(sub.geometry.boundary.values)
    if line.any():
        lines = np.asarray(geoms.values[line])
        rings = shapely.get_type_id(lines) == 2  # LinearRing: datashader takes LineStrings only
        if rings.any():
            coords, index = shapely.get_coordinates(lines[rings], return_index=True)
            lines = lines.copy()
            lines[rings] = shapely.linestrings(coords, indices=index)
        aggs["lines"] = _lines(lines)
    if point.any():
        # Points as x/y columns (multi-points split into their parts): datashader's
        # GeoDataFrame path builds a spatial index of every frame it draws and is one more
        # kernel to compile.
        parts = shapely.get_parts(np.asarray(geoms.values[point]))
        xy = pd.DataFrame({"x": shapely.get_x(parts), "y": shapely.get_y(parts)})
        aggs["points"] = canvas.points(xy, "x", "y", agg=ds.count())
    return aggs


def merge_aggregates(a: Aggregates, b: Aggregates) -> Aggregates:
    """The aggregates of two frames drawn on the same canvas: booleans or-ed, counts added.

    >>> import xarray as xr
    >>> one = {"points": xr.DataArray(np.array([[1, 0]], dtype="uint32"), dims=("y", "x"))}
    >>> two = {"points": xr.DataArray(np.array([[2, 5]], dtype="uint32"), dims=("y", "x"))}
    >>> merge_aggregates(one, two)["points"].values.tolist()
    [[3, 5]]
    >>> sorted(merge_aggregates({}, two))
    ['points']
    """
    out = dict(a)
    for key, agg in b.items():
        mine = out.get(key)
        if mine is None:
            out[key] = agg
        elif agg.dtype == bool:
            out[key] = mine | agg
        else:
            out[key] = mine + agg
    return out


def shade_aggregates(
    aggs: Aggregates,
    bounds: Bounds,
    width: int,
    height: int,
    style: Any = None,
) -> Image:
    """Shade :func:`aggregate_features`' aggregates into one RGBA image, with a layer's style.

    ``color`` (or ``cmap`` for points: :func:`count_colors`, the same count the same colour in
    every tile and view), ``opacity``, ``point_size`` (points grown to
    disks) and ``line_width`` (lines widened); polygons are filled at ``opacity / 2`` and
    outlined. Costs a few passes over the pixels, whatever the number of features.
    """
    import datashader.transfer_functions as tf

    xmin, ymin, xmax, ymax = (float(v) for v in bounds)
    if not aggs:
        return Image(np.zeros((height, width, 4), dtype=np.uint8), Bounds(xmin, ymin, xmax, ymax))
    color = _style(style, "color", _DEFAULT_COLOR)
    opacity = float(_style(style, "opacity", 0.9))
    point_size = int(_style(style, "point_size", 3))
    line_width = int(max(1, np.floor(float(_style(style, "line_width", 1)) + 0.5)))
    def _shade(agg: Any, alpha: float, footprint: np.ndarray | None = None) -> np.ndarray:
        if footprint is not None and footprint.size > 1:
            agg = grow_aggregate(agg, footprint)
        top = int(round(255 * alpha))
        return np.asarray(tf.shade(agg, cmap=[color], how="linear", alpha=top, min_alpha=top).data)

    layers = []
    if "fill" in aggs:
        layers.append(_shade(aggs["fill"], opacity * 0.5))
    for key in ("outline", "lines"):
        if key in aggs:
            layers.append(_shade(aggs[key], opacity, line_footprint(line_width)))
    if "points" in aggs:
        points = grow_aggregate(aggs["points"], disk_footprint(max(0, point_size // 2)))
        layers.append(count_colors(np.asarray(points.data), style))
    rgba = over_rgba([np.ascontiguousarray(img).view(np.uint8).reshape(height, width, 4) for img in layers])
    # datashader's row 0 is the bottom (y increasing); images here have row 0 at the top
    return Image(np.ascontiguousarray(rgba[::-1]), Bounds(xmin, ymin, xmax, ymax))


def density_span(style: Any = None) -> tuple[int, int]:
    """The points per pixel that :func:`count_colors` maps to the colormap's ends.

    ``(1, clim)``: one point is the first colour, ``clim`` points (``style.clim``, default
    :data:`DEFAULT_CLIM`) or more the last; in between the colour follows ``log(count)``.

    >>> density_span(None)
    (1, 100)
    >>> density_span({"clim": 1000})
    (1, 1000)
    """
    clim = int(_style(style, "clim", DEFAULT_CLIM))
    return 1, max(2, clim)


def _colormap(cmap: Any) -> Any:
    import matplotlib
    from matplotlib.colors import LinearSegmentedColormap

    if isinstance(cmap, str):
        if cmap in matplotlib.colormaps:
            return matplotlib.colormaps[cmap]
        cmap = [cmap, cmap]
    if callable(cmap):
        return cmap
    cmap = list(cmap)
    return LinearSegmentedColormap.from_list("style", cmap if len(cmap) > 1 else cmap * 2)


def count_colors(counts: np.ndarray, style: Any = None) -> np.ndarray:
    """The RGBA (uint8, straight alpha) of pixels with ``counts`` points: a fixed mapping.

    Depends on the count and the style only, never on the other pixels, so that the same count
    has the same colour in every tile and every view (a legend can show it). With ``cmap``:
    ``t = log(count) / log(clim)`` clipped to [0, 1] (:func:`density_span`) picks the colour,
    and alpha rises from ``0.6 * opacity`` (one point) to ``opacity`` (``clim`` points or more).
    Without: every pixel with a point is ``color`` at ``opacity``. Zero counts are transparent.

    >>> count_colors(np.array([[0, 1, 100]]), {"cmap": "viridis", "opacity": 1.0})[0, :, 3].tolist()
    [0, 153, 255]
    >>> count_colors(np.array([[1, 7]]), {"color": "#ff0000", "opacity": 0.5})[0].tolist()
    [[255, 0, 0, 128], [255, 0, 0, 128]]
    """
    from matplotlib.colors import to_rgba

    counts = np.asarray(counts, dtype=np.float64)
    opacity = float(_style(style, "opacity", 0.9))
    out = np.zeros(counts.shape + (4,), dtype=np.uint8)
    drawn = counts >= 1
    cmap = _style(style, "cmap", None)
    if cmap:
        low, high = density_span(style)
        t = np.clip(np.log(np.maximum(counts[drawn], low)) / np.log(high), 0.0, 1.0)
        rgba = np.asarray(_colormap(cmap)(t), dtype=np.float64).reshape(-1, 4)
        out[drawn, :3] = np.round(rgba[:, :3] * 255).astype(np.uint8)
        out[drawn, 3] = np.round(255 * opacity * (0.6 + 0.4 * t)).astype(np.uint8)
    else:
        r, g, b, _ = to_rgba(_style(style, "color", _DEFAULT_COLOR))
        out[drawn] = [round(r * 255), round(g * 255), round(b * 255), round(255 * opacity)]
    return out


def crop_margin(image: Image, margin: int) -> Image:
    """``image`` without ``margin`` pixels on every side, with the bounds of what is left.

    A tile shaded on a canvas ``margin`` pixels larger on every side, then cropped, draws a
    point near its edge exactly as its neighbour does.

    >>> big = Image(np.zeros((10, 12, 4), dtype=np.uint8), (0.0, 0.0, 12.0, 10.0))
    >>> small = crop_margin(big, 2)
    >>> small.rgba.shape, small.bounds
    ((6, 8, 4), Bounds(west=2.0, south=2.0, east=10.0, north=8.0))
    """
    m = int(margin)
    if m <= 0:
        return image
    h, w = image.rgba.shape[:2]
    xmin, ymin, xmax, ymax = (float(v) for v in image.bounds)
    px, py = (xmax - xmin) / w, (ymax - ymin) / h
    rgba = np.ascontiguousarray(image.rgba[m : h - m, m : w - m])
    return Image(rgba, Bounds(xmin + m * px, ymin + m * py, xmax - m * px, ymax - m * py))


def shade_features(
    frame: Any,
    bounds: Bounds,
    width: int,
    height: int,
    style: Any = None,
) -> Image:
    """Rasterize a GeoDataFrame in EPSG:3857 (points, lines, polygons) into an RGBA image.

    :func:`aggregate_features` then :func:`shade_aggregates`. Runs synchronously: call it off
    the event loop.

    Raises
    ------
    ValueError
        ``width`` or ``height`` is not positive.
    """
    return shade_aggregates(aggregate_features(frame, bounds, width, height), bounds, width, height, style)


def over_rgba(images: list[np.ndarray]) -> np.ndarray:
    """Composite straight-alpha RGBA uint8 images, later ones on top ("over").

    The same arithmetic as datashader's ``tf.stack(how="over")``, in numpy: datashader's
    version is a numba ufunc that costs seconds to compile on a fresh server.

    >>> red = np.array([[[255, 0, 0, 255]]], dtype=np.uint8)
    >>> half_blue = np.array([[[0, 0, 255, 128]]], dtype=np.uint8)
    >>> over_rgba([red, half_blue])[0, 0].tolist()
    [127, 0, 128, 255]
    >>> over_rgba([half_blue, np.zeros_like(red)])[0, 0].tolist()
    [0, 0, 255, 128]
    """
    out = images[0]
    for top in images[1:]:
        s = top.astype(np.float64) / 255.0
        d = out.astype(np.float64) / 255.0
        sa, da = s[..., 3:], d[..., 3:]
        factor = 1.0 - sa
        a = sa + da * factor
        with np.errstate(divide="ignore", invalid="ignore"):
            rgb = np.where(a > 0, (s[..., :3] * sa + d[..., :3] * da * factor) / a, 0.0)
        merged = np.concatenate([rgb, a], axis=-1)
        out = np.minimum(255, (merged * 255).astype(np.uint32)).astype(np.uint8)
    return out


def disk_footprint(radius: int) -> np.ndarray:
    """A boolean disk of ``radius`` pixels: the shape a point is spread to.

    >>> disk_footprint(1).astype(int)
    array([[0, 1, 0],
           [1, 1, 1],
           [0, 1, 0]])
    """
    r = max(0, int(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= r * r


def line_footprint(width: int) -> np.ndarray:
    """A boolean disk ``width`` pixels across: a one-pixel line grown by it is ``width`` wide.

    >>> line_footprint(1).astype(int)
    array([[1]])
    >>> line_footprint(2).astype(int)
    array([[1, 1],
           [1, 1]])
    >>> int(line_footprint(4).sum())
    12
    """
    w = max(1, int(width))
    c = (w - 1) / 2
    yy, xx = np.mgrid[0:w, 0:w]
    return (xx - c) ** 2 + (yy - c) ** 2 <= (w / 2) ** 2


def grow_aggregate(agg: Any, footprint: np.ndarray) -> Any:
    """Grow every non-empty pixel of an aggregate to ``footprint`` (the maximum wins).

    Spreads points to disks and widens one-pixel lines. It does what datashader's ``tf.spread``
    and anti-aliased ``line_width`` do, with a maximum filter: no numba kernel to compile
    (each costs seconds of JIT on a fresh server, much of it holding the GIL).

    >>> import xarray as xr
    >>> a = xr.DataArray(np.array([[0, 0, 0], [0, 5, 0], [0, 0, 0]], dtype="uint32"), dims=("y", "x"))
    >>> grow_aggregate(a, disk_footprint(1)).values
    array([[0, 5, 0],
           [5, 5, 5],
           [0, 5, 0]], dtype=uint32)
    """
    if footprint.size <= 1:
        return agg
    from scipy.ndimage import maximum_filter

    return agg.copy(data=maximum_filter(np.asarray(agg.data), footprint=footprint, mode="constant"))


_warm_lock = threading.Lock()
_warm_thread: threading.Thread | None = None
_compiled = threading.Event()


def warm_up(wait: bool = False, timeout: float | None = None) -> bool:
    """Compile datashader's kernels once per process, in a background thread.

    Datashader JIT-compiles its aggregation kernels (numba) on first use: seconds of CPU, much of
    it holding the GIL, and numba's generated kernels cannot be cached on disk. Every style is
    drawn with three kernels (polygon fill, one-pixel lines, point counts; wider lines and points
    are grown on the aggregate), each in a single- and a multi-part variant, so that after this
    no layer compiles anything. Idempotent; returns at once unless ``wait``.

    Parameters
    ----------
    wait
        Block until the kernels are compiled (``panel serve --warm`` does this before
        it serves, so that no visitor's first layer waits for the compiler).
    timeout
        Seconds to wait at most.

    Returns
    -------
    bool
        Whether the kernels are compiled.
    """
    global _warm_thread
    with _warm_lock:
        if _warm_thread is None:
            _warm_thread = threading.Thread(target=_warm, name="mapstream-datashader-warm-up", daemon=True)
            _warm_thread.start()
    if wait:
        _compiled.wait(timeout)
    return _compiled.is_set()


def _warm() -> None:
    import geopandas as gpd
    import shapely

    try:
        box, line = shapely.box(0, 0, 1, 1), shapely.LineString([(0, 0), (1, 1)])
        kinds = [  # each in a frame of its own: a frame with single and multi parts compiles
            [box],  # only the multi-part kernel
            [shapely.MultiPolygon([box, shapely.box(1.2, 1.2, 1.5, 1.5)])],
            [line],
            [shapely.MultiLineString([line, shapely.LineString([(1, 0), (0, 1)])])],
            [shapely.Point(0, 0), shapely.Point(0, 0), shapely.Point(1, 1)],  # counts 2 and 1
        ]
        for geoms in kinds:
            frame = gpd.GeoDataFrame(geometry=geoms, crs="EPSG:3857")
            for style in ({"color": "#000000"}, {"cmap": "viridis"}):
                shade_features(frame, (-1.0, -1.0, 2.0, 2.0), 8, 8, style)
    finally:
        _compiled.set()
