"""``mapstream check`` and ``mapstream export`` on a catalog of the real servers.

The export of a sub-box must hold exactly the ground truth's points in the box, in every format
(QGIS Server's ``fid`` property must not break a GeoPackage); a filter a server would ignore must
end the export with one line, not a file of unfiltered features and not a traceback.
"""

from __future__ import annotations

import json

import geopandas as gpd
import pyogrio
import pytest
from click.testing import CliRunner

from mapstream.app import cli
from tests.support.cli import cli_env, one_line_error, run_mapstream, write_catalog

from . import data
from .servers import SYMBOL_PX

pytestmark = [pytest.mark.interop, pytest.mark.slow]

FEATURE_LAYERS = {"mapserver": "ms_points", "qgis": "qgis_points", "pygeoapi": "pg_points"}


@pytest.fixture(scope="module")
def catalog(mapserver, qgis_server, pygeoapi_sqlite, mapproxy, tmp_path_factory):
    path = tmp_path_factory.mktemp("interop-cli") / "servers.yml"
    features = dict(kind="features", collection="points", page_size=500)
    return write_catalog(
        path,
        [
            {"name": "ms_points", "url": mapserver.ogc_url, **features},
            {"name": "qgis_points", "url": qgis_server.ogc_url, **features},
            {"name": "pg_points", "url": pygeoapi_sqlite.ogc_url, **features},
            {"name": "ms_zones", "kind": "features", "url": mapserver.ogc_url, "collection": "zones"},
            {"name": "ms_wms", "kind": "wms", "url": mapserver.wms_url, "wms_layers": "points", "gutter": SYMBOL_PX},
            {"name": "qgis_wms", "kind": "wms", "url": qgis_server.wms_url, "wms_layers": "points,zones"},
            {"name": "mapproxy", "kind": "tiles", "url": mapproxy.tile_template()},
            {"name": "ms_filtered", "url": mapserver.ogc_url, "filter": data.CQL2_TEXT, **features},
        ],
    )


def test_check_finds_every_server_up(catalog, tmp_path):
    result = run_mapstream(
        ["check", "--catalog", str(catalog), "--json", "--timeout", "60s"], env=cli_env(tmp_path / "cache")
    )
    assert "Traceback" not in result.stderr
    rows = {r["layer"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(rows) >= {"ms_points", "qgis_points", "pg_points", "ms_zones", "ms_wms", "qgis_wms", "mapproxy"}
    for name, row in rows.items():
        if name != "ms_filtered":
            assert (row["status"], row["http_status"]) == ("up", 200), row


def read_ids(path, fmt: str) -> list[int]:
    if fmt == "parquet":
        frame = gpd.read_parquet(path)
    else:
        frame = pyogrio.read_dataframe(path)
    return [int(v) for v in frame["id"]]


@pytest.mark.parametrize("fmt", ["parquet", "gpkg", "geojson"])
@pytest.mark.parametrize("server", ["mapserver", "qgis", "pygeoapi"])
def test_export_of_a_sub_box_is_the_truth(catalog, truth, tmp_path, monkeypatch, server, fmt):
    monkeypatch.setenv("MAPSTREAM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / f"out.{fmt}"
    bbox = ",".join(str(v) for v in data.SUB_BOX)
    args = ["export", FEATURE_LAYERS[server], "--bbox", bbox, "-o", str(out), "--catalog", str(catalog), "-q"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 0, result.output
    if (server, fmt) == ("qgis", "gpkg"):  # QGIS Server's fid property beside the GeoPackage's
        assert "'fid' -> 'fid_2'" in result.output
    expected = data.ids_in(truth, data.SUB_BOX)
    got = read_ids(out, fmt)
    assert len(got) == len(expected), f"{server}: {len(got)} exported for {len(expected)} in the box"
    assert set(got) == expected


def test_export_of_a_filter_the_server_ignores_is_one_line(catalog, tmp_path):
    out = tmp_path / "filtered.gpkg"
    result = run_mapstream(
        ["export", "ms_filtered", "-o", str(out), "--catalog", str(catalog), "-q"], env=cli_env(tmp_path / "cache")
    )
    assert result.returncode in (1, 2)  # a CapabilityError is a BadInputError: usage, 2
    line = one_line_error(result.stderr)  # fails on a traceback
    assert "Part 3" in line or "filter" in line
    assert not out.exists()
