"""The real servers of the interoperability suite, each started on loopback over generated data.

- :class:`MapServer`: Debian's ``mapserv`` (MapServer 8.0) behind :class:`~tests.interop.cgi.CGIServer`,
  from a mapfile and a MapServer 8 config file written here: WMS (GetMap, GetFeatureInfo as
  GeoJSON) at :attr:`MapServer.wms_url`, OGC API Features at :attr:`MapServer.ogc_url`.
- :class:`QGISServer`: ``qgis_mapserver``, QGIS Server's own HTTP server, over a ``.qgs``
  project that PyQGIS (Debian's ``python3-qgis``, run by the system Python) writes: WMS and
  OGC API Features (``/wfs3``).
- :class:`PygeoapiSQLite`: pygeoapi with its stock ``SQLiteGPKG`` provider over a SpatiaLite
  database and over the GeoPackage (:mod:`tests.interop.pygeoapi_child`).
- :class:`MapProxy`: MapProxy serving WMTS (RESTful) tiles from MapServer's WMS, with metatiles and a
  buffer (:mod:`tests.interop.mapproxy_child`).

Each has ``start()``/``stop()``; the fixtures in ``conftest.py`` start each once per session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from mapstream.demo._child import ChildServer
from mapstream.demo.ogcserver import PygeoapiServer

from .cgi import CGIServer

#: Pixel size of the point symbols: large enough that tiles without a gutter cut them.
SYMBOL_PX = 12


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Block until ``url`` answers 200 (or raise with the server's log)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{url} did not answer: {tail}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- MapServer ----------------------------------------------------------------------------------

_MAPFILE = """MAP
  NAME "interop"
  EXTENT -180 -90 180 90
  SIZE 256 256
  MAXSIZE 4096
  UNITS DD
  PROJECTION "init=epsg:4326" END
  IMAGETYPE "png"
  OUTPUTFORMAT
    NAME "png" DRIVER AGG/PNG MIMETYPE "image/png" IMAGEMODE RGBA EXTENSION "png" TRANSPARENT ON
  END
  OUTPUTFORMAT
    NAME "geojson" DRIVER "OGR/GEOJSON" MIMETYPE "application/json"
    FORMATOPTION "FORM=SIMPLE" FORMATOPTION "STORAGE=memory"
  END
  WEB
    METADATA
      "ows_title" "mapstream interop"
      "ows_onlineresource" "{base}?"
      "ows_srs" "EPSG:4326 EPSG:3857"
      "ows_enable_request" "*"
      "oga_enable_request" "*"
      "oga_onlineresource" "{base}/interop/ogcapi"
      "wms_getfeatureinfo_formatlist" "application/json,text/plain"
    END
  END
  SYMBOL NAME "circle" TYPE ELLIPSE FILLED TRUE POINTS 1 1 END END
  LAYER
    NAME "points"
    TYPE POINT
    STATUS ON
    DATA "{shp}"
    PROJECTION "init=epsg:4326" END
    TEMPLATE "query"  # a layer without one is not queryable: no GetFeatureInfo, no collection
    # GetFeatureInfo's search radius, as deployments set it. MapServer 8.0 also widens an OGC
    # API bbox by it (3 px of SIZE 256 over 360 degrees: about 4 degrees), so its items hold
    # points outside the box: the engine must drop them.
    TOLERANCE 3
    TOLERANCEUNITS pixels
    METADATA
      "ows_title" "points"
      "ows_extent" "-180 -90 180 90"
      "gml_include_items" "all"
      "gml_types" "auto"
      "gml_featureid" "id"
      "ows_include_items" "all"
    END
    CLASS
      STYLE SYMBOL "circle" SIZE {size} COLOR 200 30 30 OUTLINECOLOR 20 20 20 END
    END
  END
  LAYER
    NAME "points_gpkg"
    TYPE POINT
    STATUS OFF
    CONNECTIONTYPE OGR
    CONNECTION "{gpkg}"
    DATA "points"
    PROJECTION "init=epsg:4326" END
    TEMPLATE "query"
    METADATA
      "ows_title" "points (GeoPackage)"
      "ows_extent" "-180 -90 180 90"
      "gml_include_items" "all"
      "gml_types" "auto"
      "gml_featureid" "id"
    END
    CLASS
      STYLE SYMBOL "circle" SIZE {size} COLOR 200 30 30 END
    END
  END
  LAYER
    NAME "zones"
    TYPE POLYGON
    STATUS ON
    CONNECTIONTYPE OGR
    CONNECTION "{gpkg}"
    DATA "zones"
    PROJECTION "init=epsg:4326" END
    TEMPLATE "query"
    METADATA
      "ows_title" "zones"
      "ows_extent" "-180 -90 180 90"
      "gml_include_items" "all"
      "gml_types" "auto"
      "gml_featureid" "id"
      "ows_include_items" "all"
    END
    CLASS
      STYLE OUTLINECOLOR 30 30 200 WIDTH 2 END
    END
  END
END
"""

_MAPSERVER_CONF = """CONFIG
  ENV
    MS_MAP_PATTERN "^{dir}"
    MS_MAPFILE "{mapfile}"
  END
  MAPS
    interop "{mapfile}"
  END
END
"""


class MapServer:
    """MapServer 8 as CGI behind a loopback front: layer ``points`` from the shapefile ``shp``,
    ``points_gpkg`` (the same points) and ``zones`` from the GeoPackage ``gpkg``."""

    program = "/usr/lib/cgi-bin/mapserv"

    def __init__(self, workdir: Path, gpkg: Path, shp: Path) -> None:
        self.workdir = workdir
        program = self.program if os.path.exists(self.program) else shutil.which("mapserv") or self.program
        conf = workdir / "mapserver.conf"
        self.front = CGIServer(program, script_name="/mapserv", env={"MAPSERVER_CONFIG_FILE": str(conf)})
        mapfile = workdir / "interop.map"
        mapfile.write_text(_MAPFILE.format(base=self.front.url, gpkg=gpkg, shp=shp, size=SYMBOL_PX))
        conf.write_text(_MAPSERVER_CONF.format(dir=workdir, mapfile=mapfile))

    @property
    def wms_url(self) -> str:
        return self.front.url

    @property
    def ogc_url(self) -> str:
        return f"{self.front.url}/interop/ogcapi"

    def start(self) -> MapServer:
        self.front.start()
        wait_http(self.ogc_url + "/collections?f=json", timeout=30)
        return self

    def stop(self) -> None:
        self.front.stop()


# -- QGIS Server --------------------------------------------------------------------------------

_QGS_SCRIPT = r"""
import sys
from qgis.core import (QgsApplication, QgsCoordinateReferenceSystem, QgsMarkerSymbol, QgsProject,
                       QgsSingleSymbolRenderer, QgsVectorLayer)
app = QgsApplication([], False)
app.initQgis()
out, gpkg, size = sys.argv[1], sys.argv[2], float(sys.argv[3])
project = QgsProject.instance()
project.setCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
ids = []
for name in ("points", "zones"):
    layer = QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr")
    if not layer.isValid():
        sys.exit(f"layer {name} of {gpkg} is not valid")
    if name == "points":
        symbol = QgsMarkerSymbol.createSimple(
            {"name": "circle", "color": "200,30,30", "outline_color": "20,20,20", "size": str(size), "size_unit": "Pixel"})
        layer.setRenderer(QgsSingleSymbolRenderer(symbol))
    project.addMapLayer(layer)
    ids.append(layer.id())
project.writeEntry("WFSLayers", "/", ids)
for i in ids:
    project.writeEntry("WFSLayersPrecision", "/" + i, 8)
project.writeEntry("WMSServiceCapabilities", "/", True)
project.writeEntry("WMSCrsList", "/", ["EPSG:4326", "EPSG:3857"])
project.writeEntry("WMSExtent", "/", ["-180", "-90", "180", "90"])
if not project.write(out):
    sys.exit("could not write " + out)
app.exitQgis()
"""


def _qt_env(workdir: Path) -> dict[str, str]:
    runtime = workdir / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(runtime), "HOME": str(workdir)}


class QGISServer:
    """``qgis_mapserver`` (QGIS Server 3.22's HTTP server) over a project on ``gpkg``."""

    def __init__(self, workdir: Path, gpkg: Path) -> None:
        self.workdir = workdir
        self.gpkg = gpkg
        self.project = workdir / "interop.qgs"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def wms_url(self) -> str:
        return f"{self.base}/ows/"

    @property
    def ogc_url(self) -> str:
        return f"{self.base}/wfs3"

    def write_project(self) -> None:
        res = subprocess.run(
            ["/usr/bin/python3", "-c", _QGS_SCRIPT, str(self.project), str(self.gpkg), str(SYMBOL_PX)],
            capture_output=True, text=True, timeout=120, env=_qt_env(self.workdir),
        )
        if res.returncode != 0 or not self.project.exists():
            raise RuntimeError(f"PyQGIS could not write the project: {res.stderr[-2000:]}")

    def start(self) -> QGISServer:
        self.write_project()
        env = {**_qt_env(self.workdir), "QGIS_PROJECT_FILE": str(self.project), "QGIS_SERVER_LOG_LEVEL": "2"}
        log = self.workdir / "qgis_mapserver.log"
        for _ in range(3):  # the port is free when picked; another process may take it first
            self.port = free_port()
            with open(log, "wb") as err:
                self._proc = subprocess.Popen(
                    ["qgis_mapserver", f"127.0.0.1:{self.port}"], stdout=err, stderr=subprocess.STDOUT,
                    env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                )
            try:
                wait_http(self.ogc_url + "/collections.json", timeout=60, proc=self._proc, log=log)
                return self
            except RuntimeError:
                self.stop()
        raise RuntimeError(f"qgis_mapserver did not start: {log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(5)


# -- pygeoapi (SQLite provider) -----------------------------------------------------------------


class PygeoapiSQLite(PygeoapiServer):
    """pygeoapi with its stock SQLite provider (``SQLiteGPKG``): collection ``points`` from a
    SpatiaLite database, ``points_gpkg`` from the GeoPackage (its FIDs are the ids), and
    ``points_timed``, the SpatiaLite points with a temporal extent and a time field declared,
    though the provider ignores ``datetime``."""

    module = "tests.interop.pygeoapi_child"
    label = "pygeoapi-sqlite"

    def __init__(self, database: Path, gpkg: Path, *, limit: int = 500) -> None:
        def collection(title: str, data: Path, id_field: str) -> dict[str, Any]:
            return {
                "type": "collection",
                "title": title,
                "description": title,
                "keywords": ["points"],
                "extents": {"spatial": {"bbox": [-180, -90, 180, 90], "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}},
                "providers": [
                    {"type": "feature", "name": "SQLiteGPKG", "data": str(data), "id_field": id_field, "table": "points"}
                ],
            }

        timed = collection("points in SpatiaLite, with time", database, "id")
        # Declares time (an extent and a time field) that the SQLite provider then ignores.
        timed["extents"]["temporal"] = {"begin": "2024-01-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"}
        timed["providers"][0]["time_field"] = "observed"
        resources = {
            "points": collection("points in SpatiaLite", database, "id"),
            "points_gpkg": collection("points in a GeoPackage", gpkg, "fid"),
            "points_timed": timed,
        }
        root = str(Path(__file__).resolve().parents[2])
        super().__init__(resources, title="pygeoapi sqlite", limit=limit, env={"PYTHONPATH": root})

    @property
    def ogc_url(self) -> str:
        assert self.url is not None
        return self.url


# -- MapProxy -----------------------------------------------------------------------------------


def mapproxy_config(wms_url: str, cache_dir: Path, *, meta_buffer: int = 64) -> dict[str, Any]:
    """A MapProxy configuration: WMTS tiles of MapServer's ``points`` in EPSG:3857, 4x4 metatiles
    with a ``meta_buffer`` (MapProxy's gutter), PNG kept RGBA (not paletted)."""
    return {
        "services": {"wmts": {"restful": True, "kvp": False}, "demo": None},
        "layers": [{"name": "points", "title": "points", "sources": ["points_cache"]}],
        "caches": {
            "points_cache": {
                "grids": ["GLOBAL_WEBMERCATOR"],
                "sources": ["mapserver"],
                "meta_size": [4, 4],
                "meta_buffer": meta_buffer,
                "format": "image/png",
                "cache": {"type": "file", "directory": str(cache_dir / "tiles")},
            }
        },
        "sources": {
            "mapserver": {
                "type": "wms",
                "req": {"url": wms_url + "?", "layers": "points", "transparent": True},
                "supported_srs": ["EPSG:3857"],
                "wms_opts": {"version": "1.3.0"},
            }
        },
        "globals": {
            "image": {"paletted": False},
            "cache": {"base_dir": str(cache_dir), "lock_dir": str(cache_dir / "locks")},
        },
    }


class MapProxy(ChildServer):
    """MapProxy's WSGI app under werkzeug's threaded server, in a child process."""

    module = "tests.interop.mapproxy_child"
    label = "mapproxy"

    def __init__(self, wms_url: str, workdir: Path) -> None:
        root = str(Path(__file__).resolve().parents[2])
        super().__init__(env={"PYTHONPATH": root})
        self.config = workdir / "mapproxy.yaml"
        self.config.write_text(yaml.safe_dump(mapproxy_config(wms_url, workdir / "cache")))

    def spec(self, workdir: str) -> dict[str, Any]:
        return {"config": str(self.config), "parent": os.getpid()}

    def wait_ready(self, timeout: float) -> None:
        wait_http(f"{self.url}/wmts/1.0.0/WMTSCapabilities.xml", timeout=timeout)

    def tile_template(self, layer: str = "points") -> str:
        """The URL template of ``layer``'s tiles: WMTS RESTful, whose matrices of
        GLOBAL_WEBMERCATOR are the XYZ levels (rows from the north; MapProxy's TMS numbers
        its levels otherwise)."""
        return f"{self.url}/wmts/{layer}/GLOBAL_WEBMERCATOR/{{z}}/{{x}}/{{y}}.png"
