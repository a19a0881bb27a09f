"""The demo's data: Natural Earth countries and generated layers, built once into a cache dir.

* ``countries``: Natural Earth 1:110m admin-0 countries (public domain), shipped with the
  package as ``ne_110m_countries.gpkg`` (a copy of pyogrio's ``naturalearth_lowres`` fixture).
* ``sensors``: :data:`N_SENSORS` synthetic sensor readings, points over land with properties
  (``id``, ``sensor``, ``kind``, ``value``, ``when``, ``country``), seeded so every machine
  generates the same rows.
* ``borders``: country outlines as lines (the optional lines layer).
* ``elevation_3857`` and ``elevation_utm``: synthetic elevation rasters (seeded fractal
  terrain, metres, ``int16`` with nodata over the sea) written as Cloud-Optimized GeoTIFFs
  with overviews: one in Web Mercator over the Alps, one in UTM zone 33N over the Balkans.
  The tile server serves them with range support under ``/cogs/`` (:data:`COG_FILES`).

Files are written to :func:`demo_data_dir` under a versioned name and re-used afterwards; a
write goes to a temporary name first and is renamed into place, so concurrent processes never
read a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from mapstream.layers.cache import user_cache_dir

__all__ = [
    "COG_FILES",
    "COUNTRIES_FILE",
    "DATA_VERSION",
    "N_SENSORS",
    "SEED",
    "demo_data_dir",
    "ensure_data",
    "sensor_frame",
]

COUNTRIES_FILE = Path(__file__).with_name("ne_110m_countries.gpkg")
DATA_VERSION = 1  # bump when the generated data changes: a new file name, no stale cache
N_SENSORS = 200_000
SEED = 20240611
KINDS = ("temperature", "pm25", "noise", "humidity")
#: The demo's COGs: name -> (CRS, (west, south, east, north) in that CRS, pixel size, seed).
COG_FILES = {
    "elevation-3857.tif": ("EPSG:3857", (556_597.0, 5_311_972.0, 1_892_431.0, 6_274_861.0), 500.0, 11),
    "elevation-utm33.tif": ("EPSG:32633", (330_000.0, 4_430_000.0, 830_000.0, 5_030_000.0), 500.0, 12),
}
#: The folder of the COGs in the data directory (versioned: regenerated when they change).
COG_DIR = f"cogs-v{DATA_VERSION}"


def demo_data_dir(environ: dict[str, str] | None = None) -> Path:
    """Where generated demo data lives: ``$MAPSTREAM_DEMO_DATA``, else the user cache.

    >>> str(demo_data_dir({"MAPSTREAM_DEMO_DATA": "/tmp/d"}))
    '/tmp/d'
    >>> str(demo_data_dir({"XDG_CACHE_HOME": "/c"}))
    '/c/mapstream/demo'
    """
    return user_cache_dir("demo", "MAPSTREAM_DEMO_DATA", environ)


def read_countries() -> Any:
    """Natural Earth countries as a GeoDataFrame in EPSG:4326, with an integer ``id``."""
    import numpy as np
    import pyogrio

    gdf = pyogrio.read_dataframe(COUNTRIES_FILE)
    gdf.insert(0, "id", np.arange(1, len(gdf) + 1, dtype="int64"))
    return gdf


def sensor_frame(countries: Any, n: int = N_SENSORS, seed: int = SEED) -> Any:
    """``n`` seeded sensor readings at random points over land (pure: same input, same rows).

    Points are drawn uniformly in longitude and latitude (|lat| < 75) and kept when they fall
    on a country, until ``n`` are found.
    """
    import geopandas as gpd
    import numpy as np
    import pandas as pd
    import shapely

    rng = np.random.default_rng(seed)
    polys = np.asarray(countries.geometry.values)
    tree = shapely.STRtree(polys)
    xs: list[Any] = []
    ys: list[Any] = []
    owner: list[Any] = []
    found = 0
    while found < n:
        x = rng.uniform(-180, 180, 4 * n)
        y = rng.uniform(-60, 75, 4 * n)
        pts = shapely.points(x, y)
        ip, ig = tree.query(pts, predicate="within")
        ip, first = np.unique(ip, return_index=True)  # a point on a shared border counts once
        xs.append(x[ip])
        ys.append(y[ip])
        owner.append(ig[first])
        found += len(ip)
    x = np.concatenate(xs)[:n]
    y = np.concatenate(ys)[:n]
    country = countries["name"].to_numpy()[np.concatenate(owner)[:n]]
    kind_idx = rng.integers(0, len(KINDS), n)
    kind = np.asarray(KINDS)[kind_idx]
    value = np.array([15.0, 20.0, 55.0, 60.0])[kind_idx]  # a typical level per kind
    value = np.round(value + rng.normal(0, 8, n) - 0.3 * np.abs(y), 2)
    start = pd.Timestamp("2024-01-01T00:00:00Z")
    when = start + pd.to_timedelta(rng.integers(0, 366 * 24 * 3600, n), unit="s")
    return gpd.GeoDataFrame(
        {
            "id": np.arange(1, n + 1, dtype="int64"),
            "sensor": [f"S{i:06d}" for i in range(1, n + 1)],
            "kind": kind,
            "value": value,
            "when": when,
            "country": country,
        },
        geometry=shapely.points(x, y),
        crs="EPSG:4326",
    )


def border_frame(countries: Any) -> Any:
    """Country outlines as (multi)lines, one row per country."""
    import geopandas as gpd

    return gpd.GeoDataFrame(
        {"id": countries["id"], "name": countries["name"], "continent": countries["continent"]},
        geometry=countries.geometry.boundary,
        crs="EPSG:4326",
    )


def terrain(height: int, width: int, seed: int) -> Any:
    """Seeded fractal elevation in metres (``int16``; below 0 is sea, set to -32768).

    Octaves of smoothed noise, strongest at the coarsest scale, shaped into ridges.
    """
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = np.zeros((height, width), dtype=np.float32)
    for octave in range(1, 8):
        cells = 2**octave
        coarse = rng.normal(0, 1, (cells + 3, cells + 3)).astype(np.float32)
        fine = ndimage.zoom(coarse, ((height + 1) / cells, (width + 1) / cells), order=1)
        out += fine[:height, :width] / 1.8**octave
    ridges = 1.0 - np.abs(out)
    elevation = (ridges**2 * 3200.0 + out * 900.0 - 900.0).clip(-200, 4800)
    data = elevation.astype(np.int16)
    data[elevation < 0] = -32768
    return data


def write_cog(path: Path, name: str) -> Path:
    """Write the demo COG ``name`` (one of :data:`COG_FILES`) to ``path``, atomically."""
    import rasterio
    from rasterio.transform import from_origin

    crs, (west, south, east, north), res, seed = COG_FILES[name]
    width, height = round((east - west) / res), round((north - south) / res)
    data = terrain(height, width, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tif", dir=path.parent)
    os.close(fd)
    try:
        with rasterio.open(
            tmp, "w", driver="COG", width=width, height=height, count=1, dtype="int16",
            crs=crs, transform=from_origin(west, north, res, res), nodata=-32768,
            blocksize=256, compress="deflate", predictor=2, overview_resampling="nearest",
        ) as dst:
            dst.write(data, 1)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _write_once(path: Path, build: Any) -> Path:
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # GDAL creates the file itself
    try:
        build().to_file(tmp, driver="GPKG", layer=path.stem.split("-")[0], engine="pyogrio")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def ensure_data(directory: Path | None = None) -> dict[str, Path]:
    """Generate the demo's layers into ``directory`` unless already there; their paths.

    Returns
    -------
    dict
        ``{"countries": ..., "sensors": ..., "borders": ...}`` (GeoPackage files) and
        ``"elevation_3857"``, ``"elevation_utm33"`` (COGs, in one folder the tile server serves).

    Raises
    ------
    OSError
        ``directory`` cannot be created or written (without ``directory``, a per-user temporary
        directory is used when the cache directory is not writable).
    """
    if directory is None:
        directory = demo_data_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            writable = os.access(directory, os.W_OK)
        except OSError:
            writable = False
        if not writable:  # e.g. a read-only home on a shared server
            directory = Path(tempfile.gettempdir()) / f"mapstream-demo-{os.getuid()}"
    directory = Path(directory)
    countries = None

    def get_countries() -> Any:
        nonlocal countries
        if countries is None:
            countries = read_countries()
        return countries

    v = DATA_VERSION
    return {
        "countries": _write_once(directory / f"countries-v{v}.gpkg", get_countries),
        "sensors": _write_once(
            directory / f"sensors-v{v}-{N_SENSORS}.gpkg", lambda: sensor_frame(get_countries())
        ),
        "borders": _write_once(
            directory / f"borders-v{v}.gpkg", lambda: border_frame(get_countries())
        ),
        **{
            f"elevation_{name.split('-')[1].removesuffix('.tif')}": (
                directory / COG_DIR / name
                if (directory / COG_DIR / name).exists()
                else write_cog(directory / COG_DIR / name, name)
            )
            for name in COG_FILES
        },
    }
