"""FeatureLayer against real OGC API Features servers: MapServer 8, QGIS Server 3.22 and pygeoapi's
SQLite provider, over the same generated points (ids 1..N).

Every answer is compared with the ground truth: all ids for the whole extent and for a sub-box
(more than one page, so paging must keep the box), the cap, and a CQL2 filter and a datetime,
which must select exactly what they select in the truth or fail with a LayersError that says
why (a server that does not declare OGC API Features Part 3 ignores ``filter=``).
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from mapstream.layers.errors import LayersError
from mapstream.layers.sources.features import FeatureLayer, lonlat_boxes
from mapstream.layers.viewport import Viewport

from . import data

pytestmark = [pytest.mark.interop, pytest.mark.slow]

PAGE = 500
PART3 = (
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
)


def ids(frame) -> list[int]:
    return [int(v) for v in frame["id"]]


def conformance(url: str) -> set[str]:
    sep = "&" if "?" in url else "?"
    req = urllib.request.Request(f"{url}/conformance{sep}f=json", headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return set(json.loads(r.read()).get("conformsTo", []))


async def test_whole_extent_is_every_feature_once(feature_server, fetcher, truth):
    layer = FeatureLayer(feature_server.url, feature_server.collection, limit=PAGE)
    result = await layer.fetch(None, fetcher)
    assert result.errors == ()
    got = ids(result.frame)
    assert len(got) == data.N_POINTS and set(got) == set(truth["id"])
    assert not result.progress.truncated


async def test_sub_box_is_exactly_the_points_inside(feature_server, fetcher, truth):
    # More than two pages: every page must keep the box (MapServer's next links drop it,
    # QGIS Server's mangle its encoded commas).
    vp = Viewport.from_lonlat(data.SUB_BOX, width=900)
    (box,) = lonlat_boxes(vp)
    expected = data.ids_in(truth, box)
    assert len(expected) > 2 * PAGE
    result = await FeatureLayer(feature_server.url, feature_server.collection, limit=PAGE).fetch(vp, fetcher)
    assert result.errors == ()
    got = ids(result.frame)
    assert len(got) == len(expected), f"{len(got)} features for {len(expected)} in the box"
    assert set(got) == expected


async def test_max_features_caps_the_load(feature_server, fetcher, truth):
    layer = FeatureLayer(feature_server.url, feature_server.collection, limit=PAGE, max_features=1234)
    result = await layer.fetch(None, fetcher)
    got = ids(result.frame)
    assert len(got) == 1234 and len(set(got)) == 1234 and set(got) <= set(truth["id"])
    assert result.progress.truncated


async def test_cql2_filter_is_exact_or_refused(feature_server, fetcher, truth):
    expected = set(truth["id"][truth["value"] < 10].tolist())
    declared = bool(conformance(feature_server.url) & set(PART3))
    layer = FeatureLayer(feature_server.url, feature_server.collection, limit=PAGE, filter=data.CQL2_TEXT)
    if feature_server.name in ("mapserver", "qgis"):
        # Neither declares Part 3 and both ignore filter=: the answer must be an error.
        assert not declared
        with pytest.raises(LayersError, match="Part 3|filter") as info:
            await layer.fetch(None, fetcher)
        assert feature_server.url.split("//")[1].split("/")[0] in str(info.value)
    else:
        try:
            result = await layer.fetch(None, fetcher)
        except LayersError as exc:
            assert not declared, f"declares Part 3 but refused: {exc}"
        else:
            assert result.errors == ()
            assert set(ids(result.frame)) == expected and len(result.frame) == len(expected)


async def test_cql2_filter_on_the_client_is_exact(feature_server, fetcher, truth):
    expected = set(truth["id"][truth["value"] < 10].tolist())
    layer = FeatureLayer(
        feature_server.url, feature_server.collection, limit=PAGE, filter=data.CQL2_TEXT, client_filter=True
    )
    result = await layer.fetch(None, fetcher)
    assert result.errors == ()
    assert set(ids(result.frame)) == expected and len(result.frame) == len(expected)
    if feature_server.name in ("mapserver", "qgis"):
        assert result.progress.client_filtered


async def test_datetime_is_exact_or_refused(feature_server, fetcher, truth):
    start, end = data.INTERVAL
    expected = data.ids_between(truth, start, end)
    layer = FeatureLayer(feature_server.url, feature_server.collection, limit=PAGE, datetime=f"{start}/{end}")
    try:
        result = await layer.fetch(None, fetcher)
    except LayersError as exc:
        assert "datetime" in str(exc) or "time" in str(exc)
    else:
        assert result.errors == ()
        got = ids(result.frame)
        assert len(got) == len(expected), (
            f"{feature_server.name}: {len(got)} features for {len(expected)} in the interval"
        )
        assert set(got) == expected


async def test_query_finds_the_point(feature_server, fetcher, truth):
    row = truth.iloc[4321]
    rows = await FeatureLayer(feature_server.url, feature_server.collection, limit=PAGE).query(
        row.geometry.x, row.geometry.y, fetcher, radius_m=500
    )
    assert int(row["id"]) in {int(r["id"]) for r in rows}


async def test_a_server_that_ignores_offset_is_an_error_not_duplicates(mapserver, fetcher):
    # MapServer 8.0 ignores offset on an OGR GeoPackage layer: every page is the first. The
    # load must say so, and never hand back the same features again as if they were new.
    layer = FeatureLayer(mapserver.ogc_url, "points_gpkg", limit=PAGE)
    result = await layer.fetch(None, fetcher)
    assert result.errors and "offset" in str(result.errors[0])
    got = ids(result.frame)
    assert len(got) == len(set(got)) < data.N_POINTS


@pytest.mark.parametrize("name", ["mapserver", "qgis_server"])
async def test_polygons_are_every_zone_once(name, request, fetcher):
    server = request.getfixturevalue(name)
    zones = data.make_zones()
    # one page: MapServer serves the zones from the GeoPackage, where it ignores offset
    result = await FeatureLayer(server.ogc_url, "zones", limit=100).fetch(None, fetcher)
    assert result.errors == ()
    assert sorted(ids(result.frame)) == zones["id"].tolist()
    assert set(result.frame.geom_type) == {"Polygon"}
    # each square where Web Mercator holds it is where the truth has it
    got = result.frame.assign(id=ids(result.frame)).set_index("id").to_crs("EPSG:4326")
    for zone in zones.itertuples():
        if abs(zone.geometry.bounds[1]) <= 60 and abs(zone.geometry.bounds[3]) <= 60:
            assert got.geometry[zone.id].bounds == pytest.approx(zone.geometry.bounds, abs=1e-6)


async def test_datetime_a_server_declares_but_ignores_is_not_a_silent_wrong_answer(pygeoapi_sqlite, fetcher, truth):
    # pygeoapi's collection declares time, but its SQLite provider ignores datetime=: the
    # answer must be the interval's points, or an error, never all of them.
    start, end = data.INTERVAL
    expected = data.ids_between(truth, start, end)
    layer = FeatureLayer(pygeoapi_sqlite.ogc_url, "points_timed", limit=PAGE, datetime=f"{start}/{end}")
    try:
        result = await layer.fetch(None, fetcher)
    except LayersError as exc:
        assert "datetime" in str(exc) or "time" in str(exc)
    else:
        got = ids(result.frame)
        if result.errors:
            assert any("datetime" in str(e) or "time" in str(e) for e in result.errors)
            assert set(got) <= expected
        else:
            assert len(got) == len(expected) and set(got) == expected
