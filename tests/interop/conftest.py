"""Session fixtures of the interoperability suite: the ground truth, and each real server
started once per test session (installed first when missing: :mod:`tests.interop.install`)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pytest

from mapstream.layers.http import Fetcher

from . import data
from .install import ensure_debian, unavailable
from .servers import MapProxy, MapServer, PygeoapiSQLite, QGISServer


class FeatureServer(NamedTuple):
    """An OGC API Features server of the suite, as the tests see it."""

    name: str
    url: str  # the landing page
    collection: str
    server: Any
    #: Requests at once the server takes (None: the fetcher's default). pygeoapi's SQLiteGPKG
    #: provider over a GeoPackage answers HTTP 500 now and then to concurrent requests (seen at
    #: 8 in flight: 1 in 24), so the suite sets what a catalog would: ``concurrency: 1``.
    concurrency: int | None = None


@pytest.fixture(scope="session")
def truth():
    """The points every server serves (a GeoDataFrame in EPSG:4326, ids 1..N)."""
    return data.make_points()


@pytest.fixture(scope="session")
def interop_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("interop")


@pytest.fixture(scope="session")
def truth_gpkg(interop_dir) -> Path:
    return data.write_gpkg(interop_dir / "truth.gpkg")


def _need_module(name: str, dist: str) -> None:
    if importlib.util.find_spec(name) is None:
        unavailable(f"{dist} is not installed (the test extra: pip install -e '.[test]')")


@pytest.fixture(scope="session")
def mapserver(interop_dir, truth_gpkg) -> Iterator[MapServer]:
    ensure_debian("mapserver")
    work = interop_dir / "mapserver"
    work.mkdir()
    shp = data.write_shapefile(work / "points.shp")
    server = MapServer(work, truth_gpkg, shp).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def qgis_server(interop_dir, truth_gpkg) -> Iterator[QGISServer]:
    ensure_debian("qgis")
    work = interop_dir / "qgis"
    work.mkdir()
    server = QGISServer(work, truth_gpkg).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pygeoapi_sqlite(interop_dir, truth_gpkg) -> Iterator[PygeoapiSQLite]:
    ensure_debian("spatialite")
    _need_module("pysqlite3", "pysqlite3-binary")
    db = data.write_spatialite(interop_dir / "points.sqlite")
    server = PygeoapiSQLite(db, truth_gpkg, limit=500).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mapproxy(mapserver, interop_dir) -> Iterator[MapProxy]:
    _need_module("mapproxy", "mapproxy")
    work = interop_dir / "mapproxy"
    work.mkdir()
    server = MapProxy(mapserver.wms_url, work).start()
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["mapserver", "qgis", "pygeoapi", "pygeoapi_gpkg"])
def feature_server(request) -> FeatureServer:
    """Each OGC API Features collection of the points in turn."""
    if request.param == "mapserver":
        s = request.getfixturevalue("mapserver")
    elif request.param == "qgis":
        s = request.getfixturevalue("qgis_server")
    else:
        s = request.getfixturevalue("pygeoapi_sqlite")
    gpkg = request.param == "pygeoapi_gpkg"
    return FeatureServer(request.param, s.ogc_url, "points_gpkg" if gpkg else "points", s, 1 if gpkg else None)


@pytest.fixture
async def fetcher(tmp_path, request):
    async with Fetcher(per_host_limit=4, cache_dir=tmp_path / "http", retry_attempts=2) as f:
        if "feature_server" in request.fixturenames:
            server = request.getfixturevalue("feature_server")
            if server.concurrency is not None:
                f.set_host_limit(urlsplit(server.url).netloc, server.concurrency)
        yield f
