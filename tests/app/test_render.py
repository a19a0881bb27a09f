"""Rasterizing features (app.render): styles honoured pixel by pixel, every geometry kind drawn."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely

from mapstream.app.render import over_rgba, shade_features

BOUNDS = (0.0, 0.0, 100.0, 50.0)  # 1 unit per pixel on a 100 x 50 image


def _frame(*geoms):
    return gpd.GeoDataFrame(geometry=list(geoms), crs="EPSG:3857")


def _rows_drawn(img, column):
    return np.flatnonzero(img.rgba[:, column, 3])


@pytest.mark.parametrize("width", [1, 2, 3, 5])
def test_line_width_is_the_drawn_thickness_in_pixels(width):
    img = shade_features(_frame(shapely.LineString([(10, 25.5), (90, 25.5)])), BOUNDS, 100, 50,
                         {"color": "#ff0000", "line_width": width, "opacity": 1.0})
    rows = _rows_drawn(img, 50)
    assert len(rows) == width and np.all(np.diff(rows) == 1)  # one solid band
    assert tuple(img.rgba[rows[0], 50]) == (255, 0, 0, 255)


def test_point_size_grows_points_to_disks():
    small = shade_features(_frame(shapely.Point(50.5, 25.5)), BOUNDS, 100, 50, {"point_size": 1})
    big = shade_features(_frame(shapely.Point(50.5, 25.5)), BOUNDS, 100, 50, {"point_size": 6})
    assert small.opaque_pixels == 1
    assert big.opaque_pixels == 29  # a disk of radius 3
    assert len(_rows_drawn(big, 50)) == 7


def test_every_geometry_kind_is_drawn():
    kinds = {
        "Polygon": shapely.box(20, 10, 40, 30),
        "MultiPolygon": shapely.MultiPolygon([shapely.box(20, 10, 40, 30), shapely.box(60, 10, 80, 30)]),
        "LineString": shapely.LineString([(10, 10), (90, 40)]),
        "MultiLineString": shapely.MultiLineString([[(10, 10), (90, 40)], [(10, 40), (90, 10)]]),
        "LinearRing": shapely.LinearRing([(20, 10), (40, 10), (40, 30)]),
        "Point": shapely.Point(30, 20),
        "MultiPoint": shapely.MultiPoint([(30, 20), (70, 20)]),
    }
    for kind, geom in kinds.items():
        img = shade_features(_frame(geom), BOUNDS, 100, 50, {"color": "#0000ff", "point_size": 1})
        assert img.opaque_pixels > 0, kind
    parts = shade_features(_frame(kinds["MultiPoint"]), BOUNDS, 100, 50, {"point_size": 1})
    assert parts.opaque_pixels == 2  # a multi-point is drawn as its parts


def test_polygons_are_filled_at_half_opacity_and_outlined():
    img = shade_features(_frame(shapely.box(20.5, 10.5, 60.5, 40.5)), BOUNDS, 100, 50,
                         {"color": "#00ff00", "opacity": 0.8})
    inside = img.rgba[25, 40]
    edge = img.rgba[50 - 1 - 10, 40]  # row 0 is the top: y = 10.5 is row 39
    assert tuple(inside[:3]) == (0, 255, 0) and inside[3] == round(255 * 0.4)
    assert edge[3] > inside[3]
    assert img.rgba[5, 5, 3] == 0  # outside: transparent


def test_over_compositing_matches_datashader_stack():
    import datashader.transfer_functions as tf
    import xarray as xr

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (20, 30, 4), dtype=np.uint8) for _ in range(3)]
    for im in images:
        im[rng.random((20, 30)) < 0.3, 3] = 0
    ds_images = [tf.Image(xr.DataArray(im.view(np.uint32).reshape(20, 30), dims=("y", "x"))) for im in images]
    expected = tf.stack(*ds_images).data.view(np.uint8).reshape(20, 30, 4)
    np.testing.assert_array_equal(over_rgba(images), expected)


def test_bad_size_is_a_clear_error():
    with pytest.raises(ValueError, match="image size must be positive"):
        shade_features(_frame(shapely.Point(1, 1)), BOUNDS, 0, 10)


def test_pages_aggregated_one_by_one_draw_the_same_image_as_the_whole_frame():
    from mapstream.app.render import aggregate_features, merge_aggregates, shade_aggregates

    rng = np.random.default_rng(2)
    geoms = [shapely.Point(x, y) for x, y in rng.uniform(0, 50, (300, 2))]
    geoms += [shapely.box(10, 10, 30, 20), shapely.LineString([(0, 0), (100, 50)])]
    frame = _frame(*geoms)
    style = {"cmap": "viridis", "point_size": 2, "line_width": 2}
    whole = shade_features(frame, BOUNDS, 100, 50, style)
    aggs = {}
    for start in range(0, len(frame), 70):  # pages of 70 features
        aggs = merge_aggregates(aggs, aggregate_features(frame.iloc[start:start + 70], BOUNDS, 100, 50))
    np.testing.assert_array_equal(shade_aggregates(aggs, BOUNDS, 100, 50, style).rgba, whole.rgba)


# --- shading that is right at every density (issue 12) ------------------------------------


@pytest.mark.parametrize("n", [66, 250])
@pytest.mark.parametrize("style", [{"cmap": "viridis", "point_size": 1, "opacity": 0.9},
                                   {"color": "#0000ff", "point_size": 1, "opacity": 0.9}])
def test_sparse_non_overlapping_points_are_all_drawn_clearly(n, style):
    xs = np.arange(n) % 50 * 2 + 0.5
    ys = np.arange(n) // 50 * 2 + 0.5
    img = shade_features(_frame(*[shapely.Point(x, y) for x, y in zip(xs, ys)]),
                         (0.0, 0.0, 100.0, 100.0), 100, 100, style)
    assert img.opaque_pixels == n
    drawn = img.rgba[..., 3][img.rgba[..., 3] > 0]
    assert drawn.min() >= 0.6 * 0.9 * 255 - 1


def test_a_single_point_covers_point_size_pixels_at_visible_alpha():
    img = shade_features(_frame(shapely.Point(50.5, 25.5)), BOUNDS, 100, 50,
                         {"cmap": "viridis", "point_size": 4, "opacity": 1.0})
    assert img.opaque_pixels >= 4
    assert img.rgba[..., 3].max() >= 0.6 * 255 - 1


def test_equal_counts_have_equal_colours_on_different_canvases_and_bounds():
    from mapstream.app.render import count_colors

    style = {"cmap": "viridis", "point_size": 1, "opacity": 0.8}
    # 5 points on one pixel, with a crowd of 200 elsewhere (A) or alone (B), other bounds and size
    five = [shapely.Point(10.5, 10.5)] * 5
    crowd = [shapely.Point(80.5, 40.5)] * 200
    a = shade_features(_frame(*five, *crowd), BOUNDS, 100, 50, style)
    b = shade_features(_frame(*five), (0.0, 0.0, 30.0, 30.0), 30, 30, style)
    pa = a.rgba[50 - 1 - 10, 10]
    pb = b.rgba[30 - 1 - 10, 10]
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(pa, count_colors(np.array([[5]]), style)[0, 0])
    assert b.opaque_pixels == 1


def test_count_colors_rise_with_the_count_and_saturate_at_clim():
    from mapstream.app.render import count_colors, density_span

    style = {"cmap": "viridis", "opacity": 1.0}
    low, high = density_span(style)
    counts = np.array([[0, 1, 10, high, high * 10]])
    rgba = count_colors(counts, style)
    alpha = rgba[0, :, 3].astype(int)
    assert alpha[0] == 0 and alpha[1] < alpha[2] < alpha[3] == 255
    np.testing.assert_array_equal(rgba[0, 3], rgba[0, 4])  # clim and above: the last colour
    assert tuple(rgba[0, 3, :3]) != tuple(rgba[0, 1, :3])
    wider = count_colors(counts, {**style, "clim": 10_000})
    assert wider[0, 3, 3] < 255  # clim is the span's top


@pytest.mark.parametrize("geoms", [
    [shapely.Polygon(), shapely.LineString(), shapely.Point()],
    [shapely.Polygon(), shapely.box(10, 10, 20, 20), None, shapely.Point()],
    [None, None],
    # a polygon across the antimeridian, clipped to the western hemisphere's edge: nothing left
    [shapely.clip_by_rect(shapely.box(179.0, -10.0, 181.0, 10.0), -180.0, -90.0, 0.0, 90.0)
     .intersection(shapely.box(-180.0, -90.0, -179.5, 90.0))],
])
def test_empty_or_missing_geometries_never_raise(geoms):
    img = shade_features(gpd.GeoDataFrame(geometry=geoms, crs="EPSG:3857"), BOUNDS, 100, 50,
                         {"cmap": "viridis"})
    valid = [g for g in geoms if g is not None and not g.is_empty]
    assert (img.opaque_pixels > 0) == bool(valid)


def _tile(frame, x0, size, margin, style):
    from mapstream.app.render import aggregate_features, crop_margin, shade_aggregates

    bounds = (x0 - margin, -margin, x0 + size + margin, size + margin)  # 1 unit per pixel
    n = size + 2 * margin
    return crop_margin(shade_aggregates(aggregate_features(frame, bounds, n, n), bounds, n, n, style), margin)


def test_a_point_on_a_tile_edge_is_drawn_continuously_on_both_tiles():
    style = {"cmap": "viridis", "point_size": 6, "opacity": 0.9, "line_width": 1}
    margin = 3 + 1
    frame = _frame(shapely.Point(32.5, 16.5), shapely.Point(31.5, 8.5), shapely.Point(31.5, 8.5))
    a = _tile(frame, 0, 32, margin, style)
    b = _tile(frame, 32, 32, margin, style)
    assert a.rgba.shape == b.rgba.shape == (32, 32, 4)
    assert a.bounds[2] == b.bounds[0] == 32.0
    whole = shade_features(frame, (0.0, 0.0, 64.0, 32.0), 64, 32, style)
    np.testing.assert_array_equal(np.concatenate([a.rgba, b.rgba], axis=1), whole.rgba)
    # both tiles draw the points that straddle their edge
    assert a.rgba[:, -1, 3].any() and b.rgba[:, 0, 3].any()
    # one point in B's first column: its disk is symmetric about it, A's last column is B's second
    one = _frame(shapely.Point(32.5, 16.5))
    a, b = _tile(one, 0, 32, margin, style), _tile(one, 32, 32, margin, style)
    assert a.rgba[:, -1, 3].any()
    np.testing.assert_array_equal(a.rgba[:, -1], b.rgba[:, 1])


def test_after_warm_up_shading_the_demo_styles_compiles_no_numba_kernel(monkeypatch):
    import numba
    import numba.core.dispatcher as dispatcher
    import yaml

    from mapstream.app.render import warm_up

    assert warm_up(wait=True, timeout=600)
    compiled = []
    original = dispatcher.Dispatcher.compile

    def _compile(self, sig):
        compiled.append(self.py_func.__qualname__)
        return original(self, sig)

    monkeypatch.setattr(dispatcher.Dispatcher, "compile", _compile)
    numba.njit(lambda v: v + 1)(1)  # the probe sees a compile
    assert len(compiled) == 1
    compiled.clear()
    from pathlib import Path

    demo = Path(__file__).resolve().parents[2] / "layers" / "catalogs" / "demo.yml"
    styles = [layer["style"] for layer in yaml.safe_load(demo.read_text())["layers"] if layer.get("style")]
    rng = np.random.default_rng(0)
    points = [shapely.Point(x, y) for x, y in rng.uniform(0, 100, (500, 2))]
    others = [shapely.box(10, 10, 30, 30),
              shapely.MultiPolygon([shapely.box(40, 40, 50, 50), shapely.box(60, 60, 70, 70)]),
              shapely.LineString([(0, 0), (100, 100)]),
              shapely.MultiLineString([[(0, 100), (100, 0)], [(0, 50), (100, 50)]])]
    for style in styles:
        for geoms in (points + others, points, *([g] for g in others), [shapely.Point(5, 5)]):
            shade_features(_frame(*geoms), (0.0, 0.0, 100.0, 100.0), 64, 64, style)
    assert compiled == []


def test_invalid_geometries_never_raise_and_valid_neighbours_are_drawn():
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    geoms = [bowtie, shapely.Polygon([(0, 0), (1, 1), (0, 0)]), shapely.Point(float("nan"), float("nan")),
             shapely.GeometryCollection([shapely.Point(1, 1)]), shapely.LineString([(1, 1), (1, 1)])]
    for geom in geoms:
        shade_features(_frame(geom), BOUNDS, 100, 50, {"cmap": "viridis"})  # no exception
    alone = shade_features(_frame(shapely.box(60, 20, 70, 30)), BOUNDS, 100, 50, {"color": "#00ff00"})
    mixed = shade_features(_frame(*geoms, shapely.box(60, 20, 70, 30)), BOUNDS, 100, 50, {"color": "#00ff00"})
    np.testing.assert_array_equal(mixed.rgba[:, 50:], alone.rgba[:, 50:])
