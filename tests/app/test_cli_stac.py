"""``mapstream stac search`` as a real process against rustac's STAC API on loopback: items of
two catalogs to GeoParquet (each once, the filters applied), a catalog's stac layer by name, and a
failing catalog or bad input leave no file and print one line, never a traceback."""

from __future__ import annotations

import geopandas as gpd
import pytest

from mapstream.demo.stacserver import StacServer
from tests.support.cli import cli_env, one_line_error, run_mapstream, write_catalog
from tests.support.stacserver import make_items, stac_servers



@pytest.fixture(scope="module")
def catalogs():
    a = StacServer(make_items("dem", 12) + make_items("utm", 3), paging="merge")
    b = StacServer(make_items("dem", 8, start=8))
    with stac_servers(a, b) as pair:
        yield pair


def test_search_of_two_catalogs_writes_each_item_once(catalogs, tmp_path):
    a, b = catalogs
    out = tmp_path / "items.parquet"
    r = run_mapstream(
        ["stac", "search", a.url, b.url, "--bbox", "-20,30,30,50", "--collections", "dem,utm",
         "--limit", "5", "-o", str(out)],
        env=cli_env(tmp_path / "cache"),
    )
    assert r.returncode == 0, r.stderr
    assert "wrote 19 items" in r.stdout
    frame = gpd.read_parquet(out)
    assert sorted(frame["id"]) == sorted([f"dem-{k:03d}" for k in range(16)] + [f"utm-{k:03d}" for k in range(3)])
    assert frame.crs.to_epsg() == 4326
    assert str(frame["datetime"].dtype).startswith("datetime64")
    assert frame.set_index("id").loc["dem-003", "href"] == "http://127.0.0.1:9/dem-003.tif"


def test_a_catalog_layer_with_a_date_filter(catalogs, tmp_path):
    a, _ = catalogs
    catalog = write_catalog(tmp_path / "cat.yml", [
        {"name": "scenes", "kind": "stac", "url": a.url, "collections": ["dem"], "asset": "data"},
    ])
    out = tmp_path / "items.parquet"
    r = run_mapstream(
        ["stac", "search", "scenes", "--catalog", str(catalog), "--bbox", "-20,30,30,50",
         "--datetime", "2024-01-02T00:00:00Z/2024-01-04T00:00:00Z", "-o", str(out)],
        env=cli_env(tmp_path / "cache"),
    )
    assert r.returncode == 0, r.stderr
    assert sorted(gpd.read_parquet(out)["id"]) == ["dem-001", "dem-002", "dem-003"]


def test_a_failing_catalog_leaves_no_file(catalogs, tmp_path):
    a, _ = catalogs
    out = tmp_path / "items.parquet"
    with stac_servers(StacServer(make_items("dem", 2), faults={"/search": ["503"] * 20})) as (bad,):
        r = run_mapstream(
            ["stac", "search", a.url, bad.url, "--bbox", "-20,30,30,50", "--collections", "dem", "-o", str(out)],
            env=cli_env(tmp_path / "cache"),
        )
    assert r.returncode == 1
    line = one_line_error(r.stderr)
    assert "503" in line and "not written" in line
    assert not out.exists() and not list(tmp_path.glob(".items.part-*"))


def test_urls_need_collections_and_a_feature_layer_is_refused(tmp_path):
    r = run_mapstream(["stac", "search", "http://127.0.0.1:9/", "--bbox", "0,0,1,1", "-o", str(tmp_path / "x.parquet")],
                      env=cli_env(tmp_path / "cache"))
    assert r.returncode == 2 and "--collections" in r.stderr and "Traceback" not in r.stderr
    r = run_mapstream(["stac", "search", "countries", "--bbox", "0,0,1,1", "-o", str(tmp_path / "x.parquet")],
                      env=cli_env(tmp_path / "cache"))
    assert r.returncode == 2 and "not a stac layer" in r.stderr and "Traceback" not in r.stderr


def test_check_probes_a_stac_layer_at_its_landing_page(catalogs, tmp_path):
    a, _ = catalogs
    catalog = write_catalog(tmp_path / "cat.yml", [
        {"name": "scenes", "kind": "stac", "url": a.url, "collections": ["dem"], "asset": "data"},
    ])
    r = run_mapstream(["check", "--catalog", str(catalog)], env=cli_env(tmp_path / "cache"))
    assert r.returncode == 0, r.stdout + r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("scenes "))
    assert "stac" in row and " up " in row and "200" in row, row
    assert "Traceback" not in r.stderr
