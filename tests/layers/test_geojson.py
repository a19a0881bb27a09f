"""The GeoJSON page parser: types, geometries, errors, and off-loop execution."""

from __future__ import annotations

import orjson
import pandas as pd
import pytest
import shapely

from mapstream.layers.errors import ParseError
from mapstream.layers.sources.geojson import parse_feature_collection, parse_off_loop
from mapstream.layers.projection import lonlat_to_mercator


def fc(features, **extra) -> bytes:
    return orjson.dumps({"type": "FeatureCollection", "features": features, **extra})


def feat(fid, geometry, **props):
    return {"type": "Feature", "id": fid, "properties": props, "geometry": geometry}


BOWTIE = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
MIXED = [
    feat(1, {"type": "Point", "coordinates": [10, 20]}, n=1, x=1.5, b=True, s="a", t="2024-01-02T03:04:05Z"),
    feat(2, {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, n=2, x=2.5, b=False, s="b", t=None),
    feat(3, {"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]]]}, n=3, x=None, b=True, s=None, t=None),
    feat(4, BOWTIE, n=4, x=4.0, b=False, s="d", t=None),
    feat(5, None, n=5, x=5.0, b=True, s="e", t=None),
]


def test_mixed_geometries_types_and_invalid_flagged():
    gdf, meta = parse_feature_collection(fc(MIXED, numberMatched=5), datetime_columns=("t",))
    assert meta["numberMatched"] == 5
    assert gdf["id"].tolist() == [1, 2, 3, 4, 5]
    assert list(gdf.geom_type[:4]) == ["Point", "LineString", "MultiPolygon", "Polygon"]
    assert gdf.geometry.iloc[4] is None  # a feature without geometry is kept
    assert gdf["valid"].tolist() == [True, True, True, False, False]  # kept and flagged
    assert pd.api.types.is_integer_dtype(gdf["n"]) and pd.api.types.is_bool_dtype(gdf["b"])
    assert pd.api.types.is_float_dtype(gdf["x"]) and gdf["x"].isna().sum() == 1
    assert pd.api.types.is_datetime64_any_dtype(gdf["t"])
    assert gdf["t"].iloc[0] == pd.Timestamp("2024-01-02T03:04:05Z")
    assert str(gdf.crs) == "EPSG:3857"
    x, y = lonlat_to_mercator(10, 20)
    assert gdf.geometry.iloc[0].equals_exact(shapely.Point(x, y), 1e-6)


def test_already_mercator_is_not_reprojected():
    gdf, _ = parse_feature_collection(fc(MIXED[:2]), source_crs="EPSG:3857")
    assert gdf.geometry.iloc[0].equals(shapely.Point(10, 20))
    assert gdf.geometry.iloc[1].equals(shapely.LineString([(0, 0), (1, 1)]))


def test_empty_page():
    gdf, meta = parse_feature_collection(fc([], numberMatched=0))
    assert len(gdf) == 0 and meta["numberMatched"] == 0 and "valid" in gdf.columns


@pytest.mark.parametrize(
    "body",
    [b'{"type": "FeatureCollection", "features": [{"type": "Feat', b"<html>oops</html>", b'{"type": "Feature"}',
     fc([feat(1, {"type": "Point", "coordinates": "nope"})])],
    ids=["truncated", "html", "not-a-collection", "bad-coordinates"],
)
def test_malformed_is_a_parse_error_naming_the_url(body):
    with pytest.raises(ParseError) as info:
        parse_feature_collection(body, url="http://h/items?offset=9")
    assert info.value.url == "http://h/items?offset=9" and "offset=9" in str(info.value)


@pytest.mark.parametrize("executor", ["thread", "process"])
async def test_off_loop_gives_the_same_frame(executor):
    points = [feat(i, {"type": "Point", "coordinates": [i % 180, (i % 80) - 40]}, v=i) for i in range(5000)]
    body = fc(points)
    want, _ = parse_feature_collection(body)
    got, _ = await parse_off_loop(body, url="http://h", executor=executor)
    assert got["id"].tolist() == want["id"].tolist()
    assert got.geometry.geom_equals_exact(want.geometry, 1e-9).all()


async def test_off_loop_errors_cross_the_process_boundary():
    with pytest.raises(ParseError) as info:
        await parse_off_loop(b"{" * 10, url="http://h/bad", executor="process")
    assert info.value.url == "http://h/bad"


async def test_broken_process_pool_falls_back_to_threads(monkeypatch):
    import concurrent.futures

    import mapstream.layers.sources.geojson as gj

    class Broken(concurrent.futures.Executor):
        def submit(self, *args, **kwargs):
            raise concurrent.futures.process.BrokenProcessPool("workers could not start")

    monkeypatch.setattr(gj, "_pool", lambda: Broken())
    monkeypatch.setattr(gj, "_POOL_BROKEN", False)
    body = fc([feat(1, {"type": "Point", "coordinates": [1, 2]}, v=1)] * 2000)
    gdf, _ = await parse_off_loop(body, url="http://h", executor="auto")
    assert len(gdf) == 2000 and gj._POOL_BROKEN
    with pytest.raises(ParseError, match="parser process died"):
        await parse_off_loop(body, url="http://h", executor="process")  # explicit: no fallback


def test_warm_pool_never_raises_when_the_workers_cannot_start(monkeypatch, caplog):
    import concurrent.futures

    import mapstream.layers.sources.geojson as gj

    class Broken(concurrent.futures.Executor):
        _max_workers = 2

        def submit(self, *args, **kwargs):
            raise concurrent.futures.process.BrokenProcessPool("a child process terminated abruptly")

    monkeypatch.setattr(gj, "_pool", lambda: Broken())
    monkeypatch.setattr(gj, "_POOL_BROKEN", False)
    gj.warm_pool()  # the app calls this while it builds a session: it must not fail it
    assert gj._POOL_BROKEN
    assert "parsing in threads" in caplog.text
