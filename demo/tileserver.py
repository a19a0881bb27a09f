"""The demo basemap: XYZ tiles rendered from Natural Earth, served on loopback by a child process.

``GET /tiles/{z}/{x}/{y}.png`` answers a 256 px PNG (sea, land, borders) for zoom levels
0 to :data:`MAX_ZOOM`, with real tile semantics: an ``ETag`` and a ``Last-Modified`` that only
change with the data, ``304 Not Modified`` to a matching ``If-None-Match`` or
``If-Modified-Since``, ``Cache-Control: max-age`` of :data:`MAX_AGE` (a cache serves a tile
fresh for ten minutes, so a resumed prefetch or a pan back costs no request, then revalidates
and the 304 path is exercised), and ``404`` outside the zoom range or the tile grid. Rendered tiles are kept in a
bounded in-memory LRU, so a tile is drawn once. ``GET /__stats`` answers the counters
``{"requests", "rendered", "not_modified", "failed", "ranges"}``.

``GET /cogs/{name}.tif`` serves the demo's Cloud-Optimized GeoTIFFs (a folder given as
``cogs``) with HTTP range semantics: ``Accept-Ranges: bytes``, one ``Range: bytes=a-b``
(``a-`` and ``-n`` too) answered ``206`` with ``Content-Range``, a range past the end ``416``
with ``Content-Range: bytes */size``, a strong ``ETag`` honoured by ``If-Match`` (``412``) and
``If-None-Match`` (``304``), and the whole file with ``200`` without ``Range``.

The server runs in its own process (:class:`TileServer` starts ``python -m
mapstream.demo.tileserver``), with a thread per connection: rendering never blocks the caller's
event loop. Optional ``latency`` (seconds per request) and ``fail_rate`` (fraction of tile
requests answered 503, drawn from a seeded generator) make the async behaviour visible.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mapstream.layers.projection import MAX_LAT
from mapstream.layers.tilegrid import Tile, in_grid, tile_bounds

from ._child import ChildServer

__all__ = ["COG_PATH", "MAX_ZOOM", "TILE_PATH", "Basemap", "TileServer", "byte_range", "in_range"]

MAX_ZOOM = 10
#: Seconds a client may reuse a tile without revalidating it.
MAX_AGE = 600
TILE_PATH = "/tiles/{z}/{x}/{y}.png"
STYLE_VERSION = 1  # part of the ETag: bump when the drawing changes
SEA = (170, 211, 223)
LAND = (242, 239, 233)
BORDER = (150, 140, 160)
_TILE_RE = re.compile(r"^/tiles/(\d+)/(\d+)/(\d+)\.png$")
_COG_RE = re.compile(r"^/cogs/([A-Za-z0-9_.-]+\.tif)$")
_RANGE_RE = re.compile(r"^\s*bytes=(\d*)-(\d*)\s*$")
#: The path of the demo's COGs.
COG_PATH = "/cogs/{name}"


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``(first, last)`` (inclusive) of one ``Range: bytes=...`` for a file of ``size`` bytes;
    None for a header this server ignores (several ranges, another unit); ``(size, size)``
    when nothing of the file is in range (a 416).

    >>> byte_range("bytes=0-99", 1000), byte_range("bytes=900-", 1000), byte_range("bytes=-10", 1000)
    ((0, 99), (900, 999), (990, 999))
    >>> byte_range("bytes=995-2000", 1000), byte_range("bytes=1000-", 1000), byte_range("bytes=0-1,5-9", 10)
    ((995, 999), (1000, 1000), None)
    """
    m = _RANGE_RE.match(header)
    if not m or not (m.group(1) or m.group(2)):
        return None
    if m.group(1):
        first = int(m.group(1))
        last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        if m.group(2) and int(m.group(2)) < first:
            return None  # invalid: ignored, as RFC 9110 says
    else:
        first, last = max(0, size - int(m.group(2))), size - 1
    if first >= size:
        return size, size
    return first, last


def in_range(z: int, x: int, y: int, max_zoom: int = MAX_ZOOM) -> bool:
    """Whether ``z/x/y`` is a tile this server has.

    >>> in_range(0, 0, 0), in_range(2, 3, 3), in_range(2, 4, 0), in_range(MAX_ZOOM + 1, 0, 0)
    (True, True, False, False)
    """
    return 0 <= z <= max_zoom and in_grid(Tile(z, x, y))


class Basemap:
    """Natural Earth countries in Web Mercator with a spatial index, ready to draw tiles."""

    def __init__(self, path: str | Path) -> None:
        import numpy as np
        import pyogrio
        import shapely

        gdf = pyogrio.read_dataframe(path)
        geoms = shapely.clip_by_rect(np.asarray(gdf.geometry.values), -180, -MAX_LAT, 180, MAX_LAT)
        self.geoms = gdf.set_geometry(geoms).to_crs(3857).geometry.to_numpy()
        self.tree = shapely.STRtree(self.geoms)

    def render(self, z: int, x: int, y: int, size: int = 256, supersample: int = 2) -> bytes:
        """The PNG of tile ``z/x/y``."""
        import shapely
        from PIL import Image, ImageDraw

        w, s, e, n = tile_bounds(Tile(z, x, y))
        px = size * supersample
        scale = px / (e - w)
        pad = (e - w) * 0.02  # clip a little outside so outlines at the edge are drawn
        img = Image.new("RGB", (px, px), SEA)
        draw = ImageDraw.Draw(img)
        hits = self.tree.query(shapely.box(w, s, e, n))
        width = max(1, supersample)

        def pixels(coords: Any) -> list[tuple[float, float]]:
            return [((cx - w) * scale, (n - cy) * scale) for cx, cy in coords]

        outlines = []
        for i in hits:
            clipped = shapely.clip_by_rect(self.geoms[i], w - pad, s - pad, e + pad, n + pad)
            for poly in getattr(clipped, "geoms", [clipped]):
                if poly.is_empty or poly.geom_type != "Polygon":
                    continue
                draw.polygon(pixels(poly.exterior.coords), fill=LAND)
                for hole in poly.interiors:
                    draw.polygon(pixels(hole.coords), fill=SEA)
            outlines.append(
                shapely.clip_by_rect(self.geoms[i].boundary, w - pad, s - pad, e + pad, n + pad)
            )
        for line in outlines:
            for part in getattr(line, "geoms", [line]):
                if not part.is_empty and part.geom_type == "LineString":
                    draw.line(pixels(part.coords), fill=BORDER, width=width)
        if supersample > 1:
            img = img.resize((size, size), Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=False)
        return buf.getvalue()


# --- the child process -------------------------------------------------------------------------


class _State:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.basemap = Basemap(spec["data"])
        mtime = os.stat(spec["data"]).st_mtime
        self.last_modified = email.utils.formatdate(mtime, usegmt=True)
        self.modified_ts = int(mtime)
        self.tag = hashlib.sha1(f"{spec['data']}:{mtime}:{STYLE_VERSION}".encode()).hexdigest()[:12]
        self.latency = float(spec.get("latency", 0.0))
        self.fail_rate = float(spec.get("fail_rate", 0.0))
        self.rng = random.Random(spec.get("seed", 0))
        self.cache: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self.cache_max = int(spec.get("cache_tiles", 4096))
        self.lock = threading.Lock()
        self.rendering: dict[tuple[int, int, int], threading.Lock] = {}
        self.stats = {"requests": 0, "rendered": 0, "not_modified": 0, "failed": 0, "ranges": 0}
        self.cogs = Path(spec["cogs"]) if spec.get("cogs") else None
        self.files: dict[str, tuple[bytes, str, str]] = {}  # name -> (bytes, ETag, Last-Modified)

    def cog(self, name: str) -> tuple[bytes, str, str] | None:
        """The bytes, ``ETag`` and ``Last-Modified`` of COG ``name``, read once."""
        if self.cogs is None:
            return None
        with self.lock:
            if name in self.files:
                return self.files[name]
        path = self.cogs / name
        try:
            body = path.read_bytes()
            mtime = path.stat().st_mtime
        except OSError:
            return None
        tag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
        entry = (body, tag, email.utils.formatdate(mtime, usegmt=True))
        with self.lock:
            self.files[name] = entry
        return entry

    def count(self, key: str) -> None:
        with self.lock:
            self.stats[key] += 1

    def tile(self, key: tuple[int, int, int]) -> bytes:
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
            gate = self.rendering.setdefault(key, threading.Lock())
        with gate:  # one render per tile even when requested concurrently
            with self.lock:
                if key in self.cache:
                    return self.cache[key]
            png = self.basemap.render(*key)
            with self.lock:
                self.stats["rendered"] += 1
                self.cache[key] = png
                self.rendering.pop(key, None)
                while len(self.cache) > self.cache_max:
                    self.cache.popitem(last=False)
            return png


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        st = self.state
        path = self.path.split("?", 1)[0]
        if path == "/__stats":
            with st.lock:
                body = json.dumps(st.stats).encode()
            return self._send(200, body, {"Content-Type": "application/json"})
        st.count("requests")
        if st.latency:
            time.sleep(st.latency)
        cog = _COG_RE.match(path)
        if cog:
            return self._send_cog(cog.group(1))
        m = _TILE_RE.match(path)
        if not m or not in_range(*(int(v) for v in m.groups())):
            return self._send(404, b"no such tile", {"Content-Type": "text/plain"})
        if st.fail_rate:
            with st.lock:
                fail = st.rng.random() < st.fail_rate
            if fail:
                st.count("failed")
                return self._send(
                    503, b"injected fault", {"Content-Type": "text/plain", "Retry-After": "0"}
                )
        z, x, y = (int(v) for v in m.groups())
        etag = f'"{st.tag}-{z}-{x}-{y}"'
        validators = {"ETag": etag, "Last-Modified": st.last_modified, "Cache-Control": f"max-age={MAX_AGE}"}
        inm = self.headers.get("If-None-Match")
        ims = self.headers.get("If-Modified-Since")
        fresh = False
        if inm is not None:
            fresh = etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*"
        elif ims is not None:
            try:
                fresh = email.utils.parsedate_to_datetime(ims).timestamp() >= st.modified_ts
            except (TypeError, ValueError):
                fresh = False
        if fresh:
            st.count("not_modified")
            return self._send(304, b"", validators)
        png = st.tile((z, x, y))
        self._send(200, png, {"Content-Type": "image/png", **validators})


    def _send_cog(self, name: str) -> None:
        st = self.state
        found = st.cog(name)
        if found is None:
            return self._send(404, b"no such file", {"Content-Type": "text/plain"})
        if st.fail_rate:
            with st.lock:
                fail = st.rng.random() < st.fail_rate
            if fail:
                st.count("failed")
                return self._send(503, b"injected fault", {"Content-Type": "text/plain", "Retry-After": "0"})
        body, etag, modified = found
        size = len(body)
        headers = {
            "Content-Type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Last-Modified": modified,
            "Cache-Control": f"max-age={MAX_AGE}",
        }
        match = self.headers.get("If-Match")
        if match is not None and match.strip() != "*" and etag not in [t.strip() for t in match.split(",")]:
            return self._send(412, b"", headers)
        inm = self.headers.get("If-None-Match")
        if inm is not None and (etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*"):
            st.count("not_modified")
            return self._send(304, b"", headers)
        rng = self.headers.get("Range")
        span = byte_range(rng, size) if rng is not None else None
        if span is None:
            return self._send(200, body, headers)
        st.count("ranges")
        first, last = span
        if first >= size:
            return self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        self._send(206, body[first : last + 1], headers)


def _serve(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    _Handler.state = _State(spec)
    server = ThreadingHTTPServer(("127.0.0.1", int(spec.get("port", 0))), _Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


class TileServer(ChildServer):
    """The basemap tile server in a child process (its own process group) on ``127.0.0.1``.

    Parameters
    ----------
    data
        Polygons to draw (any file pyogrio reads; the demo passes its countries GeoPackage).
    port
        0 for a free port.
    latency
        Seconds added to every request.
    fail_rate
        Fraction of tile requests answered 503 (seeded, so runs repeat).
    cogs
        A folder of COGs served under ``/cogs/`` with range support (None: none).
    env
        Extra environment variables for the child.

    Raises
    ------
    ServiceError
        From :meth:`start`: the child exited or did not report its port in time.
    """

    module = "mapstream.demo.tileserver"
    label = "tile server"

    def __init__(
        self,
        data: str | Path,
        *,
        port: int = 0,
        latency: float = 0.0,
        fail_rate: float = 0.0,
        cogs: str | Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(port=port, env=env)
        self.data = str(data)
        self.cogs = None if cogs is None else str(cogs)
        self.latency = latency
        self.fail_rate = fail_rate

    @property
    def tiles_url(self) -> str:
        """The XYZ URL template, e.g. ``http://127.0.0.1:PORT/tiles/{z}/{x}/{y}.png``."""
        return f"{self.url}{TILE_PATH}"

    @property
    def cogs_url(self) -> str:
        """Where the COGs are, e.g. ``http://127.0.0.1:PORT/cogs/`` (a file name follows)."""
        return f"{self.url}/cogs/"

    def spec(self, workdir: str) -> dict[str, Any]:
        return {
            "data": self.data, "latency": self.latency, "fail_rate": self.fail_rate, "cogs": self.cogs,
        }


if __name__ == "__main__":
    _serve(sys.argv[1])
