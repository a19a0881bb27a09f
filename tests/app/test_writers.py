"""The export writers on the schemas real servers send (issue 14): a ``fid`` property (QGIS
Server), names equal but for case, spaces and non-ASCII in names, mixed geometry types, null
geometries, nested values; every format writes them, and reads back what was written."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely

from mapstream.app.cli.writers import ExportError, open_writer, safe_names
from mapstream.layers.errors import LayersError

GEOMS = [
    shapely.Point(1e5, 2e5),
    shapely.box(0, 0, 1e5, 1e5),
    None,
    shapely.LineString([(0, 0), (1e5, 1e5)]),
    shapely.MultiPoint([(0, 0), (1e4, 1e4)]),
]


def page(start: int) -> gpd.GeoDataFrame:
    """Five features of a real-world schema, ids from ``start``, in EPSG:3857 like the engine's."""
    n = len(GEOMS)
    return gpd.GeoDataFrame(
        {
            "id": np.arange(start, start + n),
            "fid": np.arange(100 + start, 100 + start + n),
            "Name": [f"N{i}" for i in range(n)],
            "name": [f"n{i}" for i in range(n)],
            "a field": np.linspace(0.5, 2.5, n),
            "température": ["é", "ü", None, "ß", "∑"],
            "nested": [{"k": 1}, [1, 2], None, "text", {"k": [2]}],
            "when": pd.to_datetime(["2024-01-01T00:00Z", None, "2024-03-01T12:00Z", None, None], utc=True),
        },
        geometry=list(GEOMS),
        crs="EPSG:3857",
    )


def read_back(fmt: str, path):
    if fmt == "parquet":
        return gpd.read_parquet(path)
    if fmt == "geojson":  # as JSON: objects stay objects
        doc = json.loads(path.read_text(encoding="utf-8"))
        return gpd.GeoDataFrame.from_features(doc["features"], crs="EPSG:4326")
    return pyogrio.read_dataframe(path)


def as_object(value):
    """A nested value as written: JSON text in GeoPackage and GeoParquet, itself in GeoJSON."""
    return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value


@pytest.mark.parametrize("fmt,suffix", [("parquet", "parquet"), ("gpkg", "gpkg"), ("geojson", "geojson")])
def test_real_schemas_are_written_and_read_back(tmp_path, fmt, suffix):
    path = tmp_path / f"out.{suffix}"
    writer = open_writer(fmt, path, crs="EPSG:4326", layer_name="points")
    writer.write(page(1))
    writer.write(page(6))
    writer.close()
    back = read_back(fmt, path)
    names = {c: writer.renamed.get(c, c) for c in page(1).columns if c != "geometry"}
    if fmt == "gpkg":  # fid is the GeoPackage's feature id; SQLite names ignore case
        assert writer.renamed == {"fid": "fid_2", "name": "name_2"}
    else:
        assert writer.renamed == {}
    assert writer.rows == 10 and len(back) == 10
    assert back[names["id"]].tolist() == list(range(1, 11))
    assert back[names["fid"]].tolist() == [100 + i for i in range(1, 11)]
    assert back[names["Name"]].tolist()[:2] == ["N0", "N1"] and back[names["name"]].tolist()[:2] == ["n0", "n1"]
    assert back[names["a field"]].tolist()[:5] == pytest.approx(np.linspace(0.5, 2.5, 5).tolist())
    assert back[names["température"]].tolist()[:2] == ["é", "ü"]
    assert pd.isna(back[names["température"]].iloc[2])
    nested = back[names["nested"]].tolist()
    assert as_object(nested[0]) == {"k": 1} and as_object(nested[1]) == [1, 2] and nested[3] == "text"
    when = pd.to_datetime(back[names["when"]], utc=True)
    assert when.iloc[0] == pd.Timestamp("2024-01-01T00:00Z") and pd.isna(when.iloc[1])
    # every geometry type in one layer, nulls kept as nulls, reprojected to EPSG:4326
    assert (back.geometry.isna() | back.geometry.is_empty).tolist() == [g is None for g in GEOMS] * 2
    kinds = [t for t in back.geom_type.tolist()[:5] if isinstance(t, str)]
    assert kinds == ["Point", "Polygon", "LineString", "MultiPoint"]
    x = back.geometry.iloc[0].x
    assert x == pytest.approx(0.898315, abs=1e-5)


def test_a_library_failure_is_an_export_error(tmp_path):
    writer = open_writer("gpkg", tmp_path / "missing-dir" / "out.gpkg", crs="EPSG:4326", layer_name="x")
    with pytest.raises(ExportError, match="cannot write GeoPackage out.gpkg") as info:
        writer.write(page(1))
    assert isinstance(info.value, LayersError)


def test_safe_names_rename_only_what_must_change():
    assert safe_names(["fid", "FID", "Fid"], reserved=("fid",), fold_case=True) == {
        "fid": "fid_2", "FID": "FID_3", "Fid": "Fid_4"
    }
    assert safe_names(["a", "a_2", "A"], fold_case=True) == {"A": "A_3"}
    assert safe_names(["x y", "ü"], reserved=("fid",), fold_case=True) == {}
