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
