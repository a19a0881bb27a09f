"""Run pygeoapi (the OGC API reference server) on loopback, in a child process.

:class:`PygeoapiServer` writes a pygeoapi configuration from plain resource definitions (the
``resources:`` section of a pygeoapi config, as a dict), starts pygeoapi's Flask app under
werkzeug's threaded server at ``127.0.0.1`` in its own process group, waits until it answers and
kills the whole group on :meth:`~PygeoapiServer.stop` (the child also exits by itself when its
parent dies, so a killed test run leaves no server behind). Tests, benchmarks and the embedded demo
share it::

    resources = {
        "points": {
            "type": "collection",
            "title": "Points",
            "description": "generated points",
            "keywords": ["points"],
            "extents": {"spatial": {"bbox": [-180, -90, 180, 90]}},
            "providers": [{
                "type": "feature",
                "name": "mapstream.demo.ogcserver.FrameProvider",  # or "SQLiteGPKG", "OGR", ...
                "data": "/path/points.gpkg",
                "id_field": "id",
                "time_field": "when",
            }],
        }
    }
    with PygeoapiServer(resources, limit=500) as server:
        print(server.url)        # http://127.0.0.1:PORT

Any pygeoapi provider can be named. Note that on this project's environment pygeoapi's stock
``OGR`` provider needs GDAL's Python bindings (``osgeo``, not installed) and ``SQLiteGPKG`` needs
``mod_spatialite`` (not installed, and this Python's sqlite3 cannot load extensions), so use
``FrameProvider`` for GeoPackages: it reads them with pyogrio and indexes them with an STRtree
(memory: the whole layer; fine up to a few hundred thousand features). This module also
ships :class:`FrameProvider`, a small in-memory provider over any file pyogrio reads, that
supports what the stock file providers lack: ``datetime`` on a ``time_field``, CQL2 ``filter``
(text and JSON, evaluated by pygeofilter), ``properties`` equality filters, sorting by id and
stable offset paging with ``numberMatched``.

Two test hooks run inside the child as WSGI middleware: ``latency`` (seconds added to every
request) and ``faults`` (``{substring of the request's path+query: [action, ...]}``; each
matching request consumes one action: ``"503"`` (or any status), ``"malformed"`` (a truncated
JSON body with status 200) or ``"ok"``). ``GET /__stats`` answers the child's request counters:
``{"requests": n, "in_flight": n, "by_path": {...}}``.

pygeoapi is imported only in the child: importing this module is cheap.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._child import ChildServer
from ._watchdog import exit_when_orphaned

__all__ = ["PygeoapiServer", "pygeoapi_config"]


def pygeoapi_config(
    resources: Mapping[str, Any], *, url: str, title: str = "mapstream demo", limit: int = 10
) -> dict[str, Any]:
    """A complete pygeoapi configuration serving ``resources`` at ``url``.

    >>> cfg = pygeoapi_config({}, url="http://127.0.0.1:5000", limit=50)
    >>> cfg["server"]["url"], cfg["server"]["limits"]["default_items"]
    ('http://127.0.0.1:5000', 50)
    """
    host, _, port = url.split("://", 1)[1].partition(":")
    return {
        "server": {
            "bind": {"host": host, "port": int(port or 80)},
            "url": url,
            "mimetype": "application/json; charset=UTF-8",
            "encoding": "utf-8",
            "languages": ["en-US"],
            "limits": {"default_items": limit, "max_items": max(10_000, limit)},
            "map": {"url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png", "attribution": "OSM"},
            "pretty_print": False,
        },
        "logging": {"level": "ERROR"},
        "metadata": {
            "identification": {
                "title": title,
                "description": title,
                "keywords": ["mapstream"],
                "keywords_type": "theme",
                "terms_of_service": "",
                "url": url,
            },
            "license": {"name": "CC-BY 4.0", "url": ""},
            "provider": {"name": "mapstream", "url": url},
            "contact": {"name": "mapstream"},
        },
        "resources": dict(resources),
    }


class PygeoapiServer(ChildServer):
    """pygeoapi on ``127.0.0.1`` in a child process (its own process group).

    Parameters
    ----------
    resources
        pygeoapi resource definitions (the ``resources:`` mapping of a pygeoapi config).
    title
        Title of the landing page.
    limit
        Default page size (``server.limits.default_items``).
    port
        0 for a free port.
    env
        Extra environment variables for the child.
    latency
        Seconds of delay added to every request (benchmarks, cancellation tests).
    faults
        Fault injection, see the module docstring.

    Raises
    ------
    ServiceError
        From :meth:`start`: the child exited or did not answer within ``timeout`` seconds
        (the child's stderr is included).
    """

    module = "mapstream.demo.ogcserver"
    label = "pygeoapi"

    def __init__(
        self,
        resources: Mapping[str, Any],
        *,
        title: str = "mapstream demo",
        limit: int = 10,
        port: int = 0,
        env: Mapping[str, str] | None = None,
        latency: float = 0.0,
        faults: Mapping[str, list[str]] | None = None,
    ) -> None:
        super().__init__(port=port, env=env)
        self.resources = dict(resources)
        self.title = title
        self.limit = limit
        self.latency = latency
        self.faults = {k: list(v) for k, v in (faults or {}).items()}

    def spec(self, workdir: str) -> dict[str, Any]:
        return {
            "resources": self.resources,
            "title": self.title,
            "limit": self.limit,
            "latency": self.latency,
            "faults": self.faults,
            "dir": workdir,
            "parent": os.getpid(),
        }

    def wait_ready(self, timeout: float) -> None:
        # pygeoapi reports its port before its app is importable: wait for the landing page.
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/?f=json", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self._proc is None or self._proc.poll() is not None or time.monotonic() > deadline:
                self._fail("did not answer")
            time.sleep(0.05)


# --- in the child ------------------------------------------------------------------------------


def _middleware(app: Any, latency: float, faults: dict[str, list[str]]) -> Any:
    lock = threading.Lock()
    stats: dict[str, Any] = {"requests": 0, "in_flight": 0, "by_path": {}}

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        target = path + ("?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else "")
        if path == "/__stats":
            with lock:
                body = json.dumps(stats).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        action = "ok"
        with lock:
            stats["requests"] += 1
            stats["in_flight"] += 1
            stats["by_path"][path] = stats["by_path"].get(path, 0) + 1
            for key, actions in faults.items():
                if key in target and actions:
                    action = actions.pop(0)
                    break
        try:
            if latency:
                time.sleep(latency)
            if action == "malformed":
                start_response("200 OK", [("Content-Type", "application/geo+json")])
                return [b'{"type": "FeatureCollection", "features": [{"type": "Feat']
            if action != "ok":
                start_response(f"{int(action)} Injected", [("Content-Type", "text/plain")])
                return [b"injected fault"]
            return list(app(environ, start_response))
        finally:
            with lock:
                stats["in_flight"] -= 1

    return wrapped


def _serve(spec_path: str) -> None:
    import yaml
    from werkzeug.serving import make_server

    spec = json.loads(Path(spec_path).read_text())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(spec["port"])))
    sock.listen(128)
    port = sock.getsockname()[1]
    cfg = pygeoapi_config(
        spec["resources"], url=f"http://127.0.0.1:{port}", title=spec["title"], limit=spec["limit"]
    )
    cfg_path = Path(spec["dir"]) / "pygeoapi.yml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    openapi = Path(spec["dir"]) / "openapi.yml"
    openapi.write_text("openapi: 3.0.2\ninfo: {title: mapstream, version: 0.1.0}\npaths: {}\n")
    os.environ["PYGEOAPI_CONFIG"] = str(cfg_path)
    os.environ["PYGEOAPI_OPENAPI"] = str(openapi)
    from pygeoapi.flask_app import APP

    app = _middleware(APP.wsgi_app, float(spec["latency"]), spec["faults"])
    server = make_server("127.0.0.1", port, app, threaded=True, fd=sock.fileno())
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    exit_when_orphaned(spec["parent"])  # the parent died without stop(): do not outlive it
    print(f"READY {port}", flush=True)
    # Nobody reads our stdout after READY: a full pipe would block the server on its next print.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = open(1, "w", closefd=False)
    server.serve_forever()


def __getattr__(name: str) -> Any:
    # FrameProvider subclasses pygeoapi's BaseProvider: built on first access (in the child),
    # so importing this module never imports pygeoapi.
    if name == "FrameProvider":
        return _frame_provider_class()
    raise AttributeError(name)


_FRAME_PROVIDER: Any = None


def _frame_provider_class() -> Any:
    global _FRAME_PROVIDER
    if _FRAME_PROVIDER is not None:
        return _FRAME_PROVIDER

    import numpy as np
    import pandas as pd
    import pyogrio
    import shapely
    from pygeoapi.provider.base import BaseProvider, ProviderItemNotFoundError
    from pygeoapi.util import crs_transform

    frames: dict[str, Any] = {}
    frames_lock = threading.Lock()

    def load(path: str, id_field: str, time_field: str | None) -> Any:
        with frames_lock:
            if path not in frames:
                gdf = pyogrio.read_dataframe(path)
                if gdf.crs is not None and gdf.crs.to_epsg() != 4326:
                    gdf = gdf.to_crs(4326)
                if id_field not in gdf.columns:
                    gdf[id_field] = np.arange(1, len(gdf) + 1)
                if time_field:
                    gdf[time_field] = pd.to_datetime(gdf[time_field], utc=True)
                frames[path] = gdf.sort_values(id_field, kind="stable").reset_index(drop=True)
            return frames[path]

    def to_json_value(v: Any) -> Any:
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
            return None
        if isinstance(v, pd.Timestamp):
            return v.isoformat().replace("+00:00", "Z")
        if isinstance(v, np.generic):
            return v.item()
        return v

    def column_values(series: Any) -> list[Any]:
        """A column as JSON-ready Python values (NaN and NaT as None, times as ISO 8601)."""
        kind = series.dtype.kind
        if kind in "biu":
            return series.tolist()
        if kind == "f":
            return [None if v != v else v for v in series.tolist()]
        return [to_json_value(v) for v in series.tolist()]

    class FrameProvider(BaseProvider):
        """In-memory feature provider over any file pyogrio reads (see module docstring)."""

        def __init__(self, provider_def: dict[str, Any]) -> None:
            super().__init__(provider_def)
            self.id_field = provider_def.get("id_field", "id")
            self.gdf = load(self.data, self.id_field, self.time_field)
            # A layer of points answers a bbox with a bounds test on coordinate arrays (about
            # 1 ms for 200 000 points) instead of an R-tree query with a predicate (~100 ms).
            geoms = self.gdf.geometry.values
            self._xy = None
            if len(geoms) and bool((shapely.get_type_id(geoms) == 0).all()):
                self._xy = (shapely.get_x(geoms), shapely.get_y(geoms))
            self.get_fields()

        def get_fields(self) -> dict[str, Any]:
            if not self._fields:
                for name, dtype in self.gdf.dtypes.items():
                    if name == self.gdf.geometry.name:
                        continue
                    if pd.api.types.is_bool_dtype(dtype):
                        self._fields[name] = {"type": "boolean"}
                    elif pd.api.types.is_integer_dtype(dtype):
                        self._fields[name] = {"type": "integer"}
                    elif pd.api.types.is_float_dtype(dtype):
                        self._fields[name] = {"type": "number"}
                    elif pd.api.types.is_datetime64_any_dtype(dtype):
                        self._fields[name] = {"type": "string", "format": "date-time"}
                    else:
                        self._fields[name] = {"type": "string"}
            return self._fields

        def _time_mask(self, datetime_: str) -> Any:
            t = self.gdf[self.time_field]
            if "/" in datetime_:
                begin, end = datetime_.split("/")
                mask = np.ones(len(t), dtype=bool)
                if begin not in ("", ".."):
                    mask &= (t >= pd.Timestamp(begin).tz_convert("UTC")
                             if pd.Timestamp(begin).tzinfo else t >= pd.Timestamp(begin, tz="UTC")).to_numpy()
                if end not in ("", ".."):
                    mask &= (t <= pd.Timestamp(end).tz_convert("UTC")
                             if pd.Timestamp(end).tzinfo else t <= pd.Timestamp(end, tz="UTC")).to_numpy()
                return mask
            ts = pd.Timestamp(datetime_)
            ts = ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")
            return (t == ts).to_numpy()

        @crs_transform
        def query(self, offset=0, limit=10, resulttype="results", bbox=[], datetime_=None,
                  properties=[], sortby=[], select_properties=[], skip_geometry=False,
                  q=None, filterq=None, **kwargs):
            gdf = self.gdf
            mask = np.ones(len(gdf), dtype=bool)
            if bbox and self._xy is not None:
                x, y = self._xy
                x0, x1 = sorted(bbox[0:3:2] if len(bbox) == 4 else (bbox[0], bbox[3]))
                y0, y1 = sorted(bbox[1:4:2] if len(bbox) == 4 else (bbox[1], bbox[4]))
                mask &= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
            elif bbox:
                hits = gdf.sindex.query(shapely.box(*bbox[:4]), predicate="intersects")
                sub = np.zeros(len(gdf), dtype=bool)
                sub[hits] = True
                mask &= sub
            if datetime_ and self.time_field:
                mask &= self._time_mask(datetime_)
            for name, value in properties:
                mask &= (gdf[name].astype(str) == str(value)).to_numpy()
            if filterq is not None:
                from pygeofilter.backends.geopandas.evaluate import to_filter

                mask &= np.asarray(to_filter(gdf, filterq), dtype=bool)
            # Row numbers, not a filtered copy: a world view matches all 200 000 sensors, and
            # copying them for every page of 1 000 cost most of a page's time.
            rows = np.flatnonzero(mask)
            take = rows[offset:offset + limit] if resulttype != "hits" else rows[:0]
            features = self._features(gdf.iloc[take], select_properties, skip_geometry)
            return {"type": "FeatureCollection", "features": features,
                    "numberMatched": int(len(rows)), "numberReturned": len(features)}

        def _features(self, page: Any, select: list[str], skip_geometry: bool) -> list[dict[str, Any]]:
            """GeoJSON features of a page, built column by column (not row by row)."""
            geom_name = page.geometry.name
            names = [c for c in page.columns
                     if c not in (geom_name, self.id_field) and (not select or c in select)]
            ids = column_values(page[self.id_field])
            columns = [column_values(page[c]) for c in names]
            geoms = page.geometry.values
            if skip_geometry:
                shapes: list[Any] = [None] * len(page)
            elif self._xy is not None:  # points: coordinates straight from the arrays
                shapes = [{"type": "Point", "coordinates": [x, y]}
                          for x, y in zip(shapely.get_x(geoms).tolist(), shapely.get_y(geoms).tolist())]
            else:
                shapes = [None if g is None else shapely.geometry.mapping(g) for g in geoms]
            return [{"type": "Feature", "id": fid, "properties": dict(zip(names, values)), "geometry": shape}
                    for fid, shape, *values in zip(ids, shapes, *columns)]

        def _feature(self, row: Any, select: list[str], skip_geometry: bool) -> dict[str, Any]:
            rec = row._asdict()
            geom = rec.pop(self.gdf.geometry.name)
            fid = to_json_value(rec.pop(self.id_field))
            props = {k: to_json_value(v) for k, v in rec.items() if not select or k in select}
            return {"type": "Feature", "id": fid, "properties": props,
                    "geometry": None if skip_geometry or geom is None else shapely.geometry.mapping(geom)}

        @crs_transform
        def get(self, identifier, **kwargs):
            gdf = self.gdf
            hit = gdf[gdf[self.id_field].astype(str) == str(identifier)]
            if hit.empty:
                raise ProviderItemNotFoundError(f"no item {identifier}")
            return self._feature(next(hit.itertuples(index=False)), [], False)

    _FRAME_PROVIDER = FrameProvider
    return FrameProvider


if __name__ == "__main__":
    _serve(sys.argv[1])
