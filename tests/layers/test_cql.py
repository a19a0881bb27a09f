"""CQL2 on loaded frames (layers/sources/cql.py), against answers computed by hand."""

from __future__ import annotations

import geopandas as gpd
import pandas as pd
import pytest

from mapstream.layers.errors import BadInputError
from mapstream.layers.sources.cql import ClientFilter, parse_cql2

LON = [-10.0, 0.5, 5.0, 20.0, 170.0]
LAT = [40.0, 45.0, 50.0, 60.0, -10.0]


@pytest.fixture(scope="module")
def frame():
    """Five features in EPSG:3857, as a page arrives: typed columns, ``when`` as UTC datetimes,
    ``stamp`` as text (a column the queryables did not type)."""
    when = pd.to_datetime(["2024-01-10", "2024-02-10", "2024-03-10", "2024-04-10", "2024-05-10"], utc=True)
    return gpd.GeoDataFrame(
        {
            "id": [1, 2, 3, 4, 5],
            "num": [5, 50, 150, 500, 999],
            "name": ["alpha", "alps", "beta", None, "Alpine"],
            "when": when,
            "stamp": [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in when],
        },
        geometry=gpd.points_from_xy(LON, LAT, crs="OGC:CRS84").to_crs("EPSG:3857"),
    )


def ids(flt, frame, lang=None) -> list[int]:
    return ClientFilter(flt, lang).apply(frame)["id"].tolist()


@pytest.mark.parametrize(
    ("flt", "want"),
    [
        ("num > 100", [3, 4, 5]),
        ("num >= 50 AND num < 500", [2, 3]),
        ("num < 10 OR num > 900", [1, 5]),
        ("NOT (num < 100)", [3, 4, 5]),
        ("num BETWEEN 50 AND 500", [2, 3, 4]),
        ("name IN ('alpha', 'beta')", [1, 3]),
        ("name LIKE 'alp%'", [1, 2]),
        ("name IS NULL", [4]),
        ("nothing IS NULL", [1, 2, 3, 4, 5]),  # a property no feature of the page has
        ("nothing = 3", []),
        ("when > TIMESTAMP('2024-03-01T00:00:00Z')", [3, 4, 5]),
        ("stamp > TIMESTAMP('2024-03-01T00:00:00Z')", [3, 4, 5]),  # text column, time literal
        ("when T_AFTER TIMESTAMP('2024-03-10T00:00:00Z')", [4, 5]),  # strictly after
        ("when T_BEFORE TIMESTAMP('2024-02-10T00:00:00Z')", [1]),
        ("S_INTERSECTS(geometry, BBOX(0, 40, 10, 55))", [2, 3]),  # CRS84 literal, 3857 frame
        ("S_WITHIN(geometry, POLYGON((-20 30, 30 30, 30 65, -20 65, -20 30)))", [1, 2, 3, 4]),
    ],
)
def test_cql2_text(frame, flt, want):
    assert ids(flt, frame) == want


@pytest.mark.parametrize(
    ("flt", "want"),
    [
        ({"op": "<", "args": [{"property": "num"}, 100]}, [1, 2]),
        ({"op": "and", "args": [{"op": ">", "args": [{"property": "num"}, 10]},
                                {"op": "like", "args": [{"property": "name"}, "alp%"]}]}, [2]),
        ({"op": "s_intersects", "args": [{"property": "geometry"}, {"bbox": [0, 40, 10, 55]}]}, [2, 3]),
        ({"op": "t_during", "args": [{"property": "when"},
                                     {"interval": ["2024-02-01T00:00:00Z", "2024-04-01T00:00:00Z"]}]}, [2, 3]),
        ({"op": "t_intersects", "args": [{"property": "when"}, {"interval": ["2024-04-01T00:00:00Z", ".."]}]}, [4, 5]),
    ],
)
def test_cql2_json(frame, flt, want):
    assert ids(flt, frame) == want
    import orjson

    assert ids(orjson.dumps(flt).decode(), frame, "cql2-json") == want  # the same, as text


def test_the_frame_is_not_modified_and_an_empty_page_is_fine(frame):
    before = frame.copy()
    ClientFilter("S_INTERSECTS(geometry, BBOX(0, 40, 10, 55))").apply(frame)
    pd.testing.assert_frame_equal(frame, before)
    assert len(ClientFilter("num > 1").apply(frame.iloc[:0])) == 0


@pytest.mark.parametrize("bad", ["num >", "((", "num = = 3"])
def test_not_cql2_is_a_bad_input_error(bad):
    with pytest.raises(BadInputError, match="not valid cql2-text"):
        parse_cql2(bad)


def test_what_cannot_be_evaluated_is_a_bad_input_error(frame):
    with pytest.raises(BadInputError, match="cannot evaluate"):
        ClientFilter("nosuchfunction(num) = 1").apply(frame)


def test_an_unknown_language_is_refused():
    with pytest.raises(BadInputError, match="only cql2-text and cql2-json"):
        ClientFilter("num > 1", "ecql")
