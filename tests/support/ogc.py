"""pygeoapi on loopback for the feature-layer tests, over data the fixtures write.

Fixtures
--------
ogc_data
    (session) a directory with ``points.gpkg`` (N_POINTS generated points: ``id``, ``name``,
    ``value`` (float), ``count`` (int), ``flag`` (bool), ``when`` (UTC datetime), ``kind``) and
    Natural Earth ``countries`` (from pyogrio's test fixtures).
ogc_server
    (session) a :class:`~mapstream.demo.ogcserver.PygeoapiServer` over both, page size PAGE_LIMIT.
make_ogc_server
    (function) factory for a server with ``latency=`` / ``faults=`` over the same data; every
    server it starts is stopped at teardown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mapstream.demo.ogcserver import PygeoapiServer

N_POINTS = 20_000
PAGE_LIMIT = 500
KINDS = ("alpha", "beta", "gamma", "delta")


def make_points(n: int = N_POINTS, seed: int = 42):
    """``n`` points over the world with typed properties (deterministic)."""
    import geopandas as gpd

    rng = np.random.default_rng(seed)
    lon = rng.uniform(-179.0, 179.0, n)
    lat = rng.uniform(-80.0, 80.0, n)
    when = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 365 * 24 * 3600, n), unit="s"
    )
    return gpd.GeoDataFrame(
        {
            "id": np.arange(1, n + 1, dtype=np.int64),
            "name": [f"p{i}" for i in range(1, n + 1)],
            "value": rng.uniform(0, 100, n).round(3),
            "count": rng.integers(0, 1000, n, dtype=np.int64),
            "flag": rng.random(n) < 0.5,
            "when": when,
            "kind": np.array(KINDS)[rng.integers(0, len(KINDS), n)],
        },
        geometry=gpd.points_from_xy(lon, lat),
        crs="EPSG:4326",
    )


def countries_path() -> Path:
    import pyogrio

    return Path(pyogrio.__file__).parent / "tests/fixtures/naturalearth_lowres/naturalearth_lowres.shp"


def resources_for(data_dir: Path) -> dict:
    """pygeoapi resources for the two test collections."""

    def collection(title: str, data: Path, **provider: object) -> dict:
        return {
            "type": "collection",
            "title": title,
            "description": title,
            "keywords": [title],
            "extents": {"spatial": {"bbox": [-180, -90, 180, 90], "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}},
            "providers": [
                {
                    "type": "feature",
                    "name": "mapstream.demo.ogcserver.FrameProvider",
                    "data": str(data),
                    "id_field": "id",
                    "crs": [
                        "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
                        "http://www.opengis.net/def/crs/EPSG/0/4326",
                        "http://www.opengis.net/def/crs/EPSG/0/3857",
                    ],
                    **provider,
                }
            ],
        }

    return {
        "points": collection("points", data_dir / "points.gpkg", time_field="when"),
        "countries": collection("countries", countries_path()),
    }


@pytest.fixture(scope="session")
def ogc_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ogc")
    make_points().to_file(d / "points.gpkg", driver="GPKG", engine="pyogrio")
    return d


@pytest.fixture(scope="session")
def ogc_server(ogc_data):
    server = PygeoapiServer(resources_for(ogc_data), title="test server", limit=PAGE_LIMIT)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_ogc_server(ogc_data):
    started: list[PygeoapiServer] = []

    def make(**kwargs) -> PygeoapiServer:
        kwargs.setdefault("limit", PAGE_LIMIT)
        server = PygeoapiServer(resources_for(ogc_data), **kwargs)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()
