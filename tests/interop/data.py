"""The ground truth every server of the interoperability suite serves, written as each needs it.

:func:`make_points`: ``N_POINTS`` points with ids 1..N, a float ``value``, an int ``rank``, a
``kind`` and a UTC datetime ``observed`` (deterministic); :func:`make_zones`: a grid of polygons.
:func:`write_gpkg` writes both to a GeoPackage that Debian's GDAL 3.6 reads (MapServer, QGIS
Server); :func:`write_spatialite` writes the points to a SpatiaLite database for pygeoapi's
SQLite provider, in a child process (SpatiaLite links the system GEOS, which must not meet
shapely's in one process). The pure selections (:func:`ids_in`, :func:`ids_between`) are what
the tests compare the servers' answers with.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

N_POINTS = 20_000
KINDS = ("alpha", "beta", "gamma", "delta")
#: A sub-box holding about 1 500 points (three pages of 500): more than one page, far less than the whole.
SUB_BOX = (-40.5, -25.25, 35.75, 30.5)
#: A datetime interval and a CQL2 filter, with what they select computed from the truth.
INTERVAL = ("2024-03-01T00:00:00Z", "2024-05-01T00:00:00Z")
CQL2_TEXT = "value < 10"


def make_points(n: int = N_POINTS, seed: int = 14):
    """``n`` points over the world (ids 1..n), typed properties; the same for every call."""
    import geopandas as gpd

    rng = np.random.default_rng(seed)
    lon = rng.uniform(-179.0, 179.0, n).round(6)
    lat = rng.uniform(-79.0, 79.0, n).round(6)
    observed = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 365 * 24 * 3600, n), unit="s"
    )
    return gpd.GeoDataFrame(
        {
            "id": np.arange(1, n + 1, dtype=np.int64),
            "value": rng.uniform(0, 100, n).round(3),
            "rank": rng.integers(0, 1000, n, dtype=np.int64),
            "kind": np.array(KINDS)[rng.integers(0, len(KINDS), n)],
            "observed": observed,
        },
        geometry=gpd.points_from_xy(lon, lat),
        crs="EPSG:4326",
    )


def make_zones():
    """A 12 x 6 grid of 30-degree squares (ids 1..72) with a name each."""
    import geopandas as gpd
    import shapely

    boxes, names = [], []
    for j in range(6):
        for i in range(12):
            w, s = -180 + 30 * i, -90 + 30 * j
            boxes.append(shapely.box(w, s, w + 30, s + 30))
            names.append(f"zone {j}-{i}")
    return gpd.GeoDataFrame(
        {"id": np.arange(1, 73, dtype=np.int64), "name": names}, geometry=boxes, crs="EPSG:4326"
    )


def ids_in(points, box) -> set[int]:
    """Ids of the points inside the (west, south, east, north) ``box`` (edges included)."""
    w, s, e, n = box
    x, y = points.geometry.x.to_numpy(), points.geometry.y.to_numpy()
    inside = (x >= w) & (x <= e) & (y >= s) & (y <= n)
    return set(points["id"].to_numpy()[inside].tolist())


def ids_between(points, start: str, end: str) -> set[int]:
    """Ids of the points observed in [``start``, ``end``] (RFC 3339)."""
    t = points["observed"]
    mask = (t >= pd.Timestamp(start)) & (t <= pd.Timestamp(end))
    return set(points["id"][mask].tolist())


def write_gpkg(path: Path) -> Path:
    """Points and zones as layers ``points`` and ``zones`` of a GeoPackage 1.2 (GDAL 3.6 reads
    1.4 only partly), with the ids as the GeoPackage FIDs."""
    import pyogrio

    for layer, frame in (("points", make_points()), ("zones", make_zones())):
        pyogrio.write_dataframe(
            frame, path, layer=layer, driver="GPKG", dataset_options={"VERSION": "1.2"},
            append=path.exists(),
        )
    return path


_SPATIALITE_SCRIPT = r"""
import json, sys
from pysqlite3 import dbapi2 as sqlite3
out, rows = sys.argv[1], json.load(open(sys.argv[2]))
con = sqlite3.connect(out)
con.enable_load_extension(True)
con.load_extension("mod_spatialite")
con.execute("SELECT InitSpatialMetadata(1)")
con.execute("CREATE TABLE points (id INTEGER PRIMARY KEY, value REAL, rank INTEGER, kind TEXT, observed TEXT)")
con.execute("SELECT AddGeometryColumn('points', 'geom', 4326, 'POINT', 'XY')")
con.executemany(
    "INSERT INTO points (id, value, rank, kind, observed, geom) VALUES (?, ?, ?, ?, ?, MakePoint(?, ?, 4326))",
    rows,
)
con.execute("SELECT CreateSpatialIndex('points', 'geom')")
con.commit()
"""


def write_spatialite(path: Path) -> Path:
    """The points as table ``points`` (geometry ``geom``) of a SpatiaLite database.

    Raises
    ------
    RuntimeError
        The child process failed (its stderr is in the message).
    """
    points = make_points()
    rows = [
        [int(r.id), float(r.value), int(r.rank), r.kind, r.observed.strftime("%Y-%m-%dT%H:%M:%SZ"),
         float(r.geometry.x), float(r.geometry.y)]
        for r in points.itertuples()
    ]
    rows_path = path.with_suffix(".rows.json")
    rows_path.write_text(json.dumps(rows))
    res = subprocess.run(
        [sys.executable, "-c", _SPATIALITE_SCRIPT, str(path), str(rows_path)],
        capture_output=True, text=True, timeout=120,
    )
    if res.returncode != 0:
        raise RuntimeError(f"writing {path} failed: {res.stderr[-2000:]}")
    return path


def write_shapefile(path: Path) -> Path:
    """The points as a shapefile (``observed`` as RFC 3339 text: dBase has no datetime).

    MapServer 8.0 pages a shapefile by ``offset``, but ignores ``offset`` on an OGR GeoPackage
    layer (every page is the first).
    """
    import pyogrio

    points = make_points()
    points["observed"] = points["observed"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    pyogrio.write_dataframe(points, path)
    return path
