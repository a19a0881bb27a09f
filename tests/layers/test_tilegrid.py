"""Pure tile-grid math against the OpenStreetMap wiki's reference formula and known tiles."""

from __future__ import annotations

import math
import random

import pytest

from mapstream.layers.errors import BadInputError
from mapstream.layers.projection import ORIGIN_SHIFT, lonlat_bbox_to_mercator, lonlat_to_mercator
from mapstream.layers.tilegrid import (
    Tile,
    in_grid,
    pixel_centres,
    pixel_window,
    resolution,
    tile_at,
    tile_bounds,
    tile_window,
    tiles_in_window,
    tile_range,
    tiles_in_bbox,
    tms_y,
    wrap_x,
    zoom_for_resolution,
)
from mapstream.layers.viewport import Viewport


def osm_tile(lon: float, lat: float, zoom: int) -> tuple[int, int]:
    """The slippy-map formula from wiki.openstreetmap.org (an independent reference)."""
    n = 2**zoom
    lat_r = math.radians(lat)
    x = int((lon + 180.0) / 360.0 * n)
    y = int((1.0 - math.asinh(math.tan(lat_r)) / math.pi) / 2.0 * n)
    return x, y


@pytest.mark.parametrize(
    ("lon", "lat", "zoom", "tile"),
    [
        (2.3522, 48.8566, 10, (518, 352)),  # Paris
        (-0.1276, 51.5072, 12, (2046, 1362)),  # London
        (139.6917, 35.6895, 8, (227, 100)),  # Tokyo
        (-74.0060, 40.7128, 15, (9647, 12320)),  # New York
        (0.5, 0.5, 1, (1, 0)),
        (-0.5, -0.5, 1, (0, 1)),
    ],
)
def test_known_tiles(lon, lat, zoom, tile):
    bbox = (lon - 1e-7, lat - 1e-7, lon + 1e-7, lat + 1e-7)
    assert tiles_in_bbox(lonlat_bbox_to_mercator(bbox), zoom) == [Tile(zoom, *tile)]
    assert osm_tile(lon, lat, zoom) == tile


def test_agrees_with_reference_formula_at_many_points_and_zooms():
    rng = random.Random(7)
    for _ in range(500):
        lon, lat, zoom = rng.uniform(-179.9, 179.9), rng.uniform(-84, 84), rng.randint(0, 18)
        x, y = lonlat_to_mercator(lon, lat)
        (xs, ys) = tile_range((x - 1e-3, y - 1e-3, x + 1e-3, y + 1e-3), zoom)
        if len(xs) == 1 and len(ys) == 1:  # not sitting on a tile edge
            assert (xs[0], ys[0]) == osm_tile(lon, lat, zoom)


def test_bbox_tile_ranges_at_several_zooms():
    box = lonlat_bbox_to_mercator((-10, 35, 30, 60))  # Europe
    expected = {
        0: (range(0, 1), range(0, 1)),
        3: (range(3, 5), range(2, 4)),
        6: (range(30, 38), range(18, 26)),
    }
    for zoom, ranges in expected.items():
        assert tile_range(box, zoom) == ranges
        nw, se = osm_tile(-10, 60, zoom), osm_tile(30, 35, zoom)
        assert ranges == (range(nw[0], se[0] + 1), range(nw[1], se[1] + 1))
        w, _, _, n = tile_bounds(Tile(zoom, ranges[0].start, ranges[1].start))
        assert w <= box[0] and n >= box[3]  # the first tile covers the box's north-west corner


def test_antimeridian_takes_columns_from_both_sides():
    tiles = tiles_in_bbox(lonlat_bbox_to_mercator((175, -5, -175, 5)), 4)
    assert {t.x for t in tiles} == {15, 16}  # unwrapped: 16 is column 0 again
    assert sorted({t.key.split("/")[1] for t in tiles}) == ["0", "15"]
    assert wrap_x(16, 4) == 0 and wrap_x(-1, 4) == 15
    # the unwrapped column's bounds continue east of the antimeridian
    assert tile_bounds(Tile(4, 16, 7))[0] == pytest.approx(ORIGIN_SHIFT)


def test_poles_are_clamped():
    box = lonlat_bbox_to_mercator((-10, 80, 10, 90))  # north of Web Mercator's 85.05 degrees
    xs, ys = tile_range(box, 5)
    assert ys == range(0, osm_tile(0, 80, 5)[1] + 1)  # rows from the top edge, none above
    assert tile_range((0, 3e7, 1e6, 4e7), 5) is None  # entirely beyond the world
    xs, ys = tile_range((0, -4e7, 1, 4e7), 3)
    assert ys == range(0, 8)


def test_tms_flip():
    assert [tms_y(y, 2) for y in range(4)] == [3, 2, 1, 0]
    for z in range(0, 10):
        for y in (0, 2**z - 1):
            assert tms_y(tms_y(y, z), z) == y


def test_zoom_for_viewports_including_retina():
    world = (-ORIGIN_SHIFT, ORIGIN_SHIFT)
    for zoom in range(0, 6):
        vp = Viewport.create(world, world, 256 * 2**zoom, 256 * 2**zoom)
        assert zoom_for_resolution(vp.resolution) == zoom
        # 512 px (@2x) tiles reach the same pixel size one zoom earlier
        assert zoom_for_resolution(vp.resolution, tile_size=512) == max(0, zoom - 1)
    assert zoom_for_resolution(10.0, max_zoom=12) == 12
    with pytest.raises(BadInputError):
        zoom_for_resolution(0.0)
    with pytest.raises(BadInputError, match="south"):
        lonlat_bbox_to_mercator((0, 10, 1, 5))
    with pytest.raises(BadInputError, match="four numbers"):
        lonlat_bbox_to_mercator((0, 1, 2))


def test_point_tile_matches_reference_formula():
    rng = random.Random(11)
    for _ in range(300):
        lon, lat, zoom = rng.uniform(-179.9, 179.9), rng.uniform(-84, 84), rng.randint(0, 18)
        tile = tile_at(*lonlat_to_mercator(lon, lat), zoom)
        assert (tile.x, tile.y) == osm_tile(lon, lat, zoom) and in_grid(tile)
    assert tile_at(ORIGIN_SHIFT, ORIGIN_SHIFT, 3) == Tile(3, 7, 0)  # edges stay in the world


def test_pixel_window_tiles_agree_with_tile_range():
    rng = random.Random(5)
    for _ in range(200):
        w, s = rng.uniform(-170, 160), rng.uniform(-80, 70)
        box = lonlat_bbox_to_mercator((w, s, w + rng.uniform(0.1, 10), s + rng.uniform(0.1, 10)))
        zoom, size = rng.randint(0, 12), rng.choice([256, 512])
        window = pixel_window(box, zoom, size)
        tiles = tiles_in_window(window, zoom, size)
        if size == 256:  # the grid of tile_range: the same tiles (up to a sliver on an edge)
            xs, ys = tile_range(box, zoom)
            assert {t.x for t in tiles} <= set(range(xs.start - 1, xs.stop + 1))
            assert {t.y for t in tiles} <= set(range(ys.start - 1, ys.stop + 1))
        for t in tiles:  # every tile touches the window; together they hold all of it
            tw = tile_window(t, size)
            assert tw.col0 < window.col1 and tw.col1 > window.col0
            assert tw.row0 < window.row1 and tw.row1 > window.row0
        assert min(tile_window(t, size).col0 for t in tiles) <= window.col0
        assert max(tile_window(t, size).row1 for t in tiles) >= window.row1
        x, y = pixel_centres(window, zoom, size)
        assert len(x) == window.col1 - window.col0 and len(y) == window.row1 - window.row0
        assert box.west - resolution(zoom, size) < x[0] < box.west + resolution(zoom, size)
        assert box.north - resolution(zoom, size) < y[0] < box.north + resolution(zoom, size)


def test_grid_membership():
    assert in_grid(Tile(0, 0, 0)) and not in_grid(Tile(0, 1, 0)) and not in_grid(Tile(3, 0, 8))
    assert not in_grid(Tile(3, -1, 0))  # an unwrapped column is not a grid tile until wrapped
    assert in_grid(Tile(3, wrap_x(-1, 3), 0))
