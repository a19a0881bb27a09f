"""A loopback XYZ/TMS tile server and WMS endpoint whose every tile is one solid colour.

The colour of tile (z, x, y) (XYZ rows) is :func:`tile_colour`, so a test can check that each
pixel of a mosaic came from the right tile. Routes:

- ``/{z}/{x}/{y}.png`` (also ``.jpg``, ``.webp``; ``{y}@2x.png`` gives a 512 px tile): XYZ.
- ``/tms/{z}/{x}/{y}.png``: the same tiles addressed with TMS rows (south at 0).
- ``/wms?SERVICE=WMS&REQUEST=GetMap|GetFeatureInfo&...``: checks its parameters strictly (BBOX
  order, CRS vs SRS per version, WIDTH/HEIGHT, I/J vs X/Y) and renders the colour of the tile
  whose bounds equal the BBOX; a bad request gets a 400 naming the problem.

Knobs on :class:`TileServer`: ``latency`` (seconds per request), ``missing`` (tiles answered
404), ``empty`` (204), ``failing`` (500 every time); what it saw: ``requests`` (paths served, in
order) and ``peak_in_flight`` (the most requests it was answering at once).

Run ``python -m tests.support.tileserver --latency 0.1`` for a server in its own process (the
benchmark does): it prints ``http://127.0.0.1:PORT`` on its first line and serves until killed.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import re
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from mapstream.layers.types import Bounds

# The server is the tests' independent reference for the grid: it does its own arithmetic
# rather than calling mapstream.layers.tilegrid, which it checks.
ORIGIN_SHIFT = 20037508.342789244
_TILE = re.compile(
    r"^/(?P<tms>tms/)?(?P<z>\d+)/(?P<x>\d+)/(?P<y>\d+)(?P<r>@2x)?\.(?P<ext>png|jpg|webp)$"
)
_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
_MIME = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


def tile_colour(z: int, x: int, y: int) -> tuple[int, int, int, int]:
    """RGBA of XYZ tile (z, x, y): distinct for neighbouring tiles at any zoom."""
    return (x * 37 % 256, y * 53 % 256, (z * 29 + 17) % 256, 255)


@functools.lru_cache(maxsize=4096)
def render(colour: tuple[int, int, int, int], size: int, ext: str = "png") -> bytes:
    """A ``size`` x ``size`` image of one colour, encoded as ``ext``."""
    from PIL import Image

    mode = "RGB" if ext == "jpg" else "RGBA"
    img = Image.new(mode, (size, size), colour[: len(mode)])
    buf = io.BytesIO()
    img.save(buf, _FORMATS[ext], **({"lossless": True} if ext == "webp" else {}))
    return buf.getvalue()


def bbox_to_tile(bbox: Bounds) -> tuple[int, int, int] | None:
    """The XYZ tile whose bounds are ``bbox`` (west, south, east, north, EPSG:3857), if any."""
    w, s, e, n = bbox
    span = e - w
    if span <= 0 or abs((n - s) - span) > 1e-3 * span:
        return None
    z = round(math.log2(2 * ORIGIN_SHIFT / span))
    x = round((w + ORIGIN_SHIFT) / span)
    y = round((ORIGIN_SHIFT - n) / span)
    if (
        abs(-ORIGIN_SHIFT + x * span - w) > 1e-3 * span
        or abs(ORIGIN_SHIFT - y * span - n) > 1e-3 * span
    ):
        return None
    return z, x, y


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    server: _Server

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        owner = self.server.owner
        with owner.lock:
            owner.requests.append(self.path)
            owner.in_flight += 1
            owner.peak_in_flight = max(owner.peak_in_flight, owner.in_flight)
        try:
            self._answer()
        finally:
            with owner.lock:
                owner.in_flight -= 1

    def _answer(self) -> None:
        owner = self.server.owner
        if owner.latency:
            time.sleep(owner.latency)
        parts = urlsplit(self.path)
        if parts.path == "/wms":
            return self._wms(dict(parse_qsl(parts.query, keep_blank_values=True)))
        m = _TILE.match(parts.path)
        if not m:
            return self._send(400, b"not a tile path")
        z, x, y = int(m["z"]), int(m["x"]), int(m["y"])
        if not (0 <= x < 2**z and 0 <= y < 2**z):
            return self._send(400, b"tile outside the grid")
        if m["tms"]:
            y = 2**z - 1 - y
        key = (z, x, y)
        if key in owner.failing:
            return self._send(500, b"boom")
        if key in owner.missing:
            return self._send(404, b"no tile")
        if key in owner.empty:
            return self._send(204)
        size = 512 if m["r"] else 256
        self._send(200, render(tile_colour(z, x, y), size, m["ext"]), _MIME[m["ext"]])

    def _wms(self, q: dict[str, str]) -> None:
        owner = self.server.owner
        q = {k.upper(): v for k, v in q.items()}
        with owner.lock:
            owner.wms_params.append(q)
        problems = []
        version = q.get("VERSION")
        if q.get("SERVICE") != "WMS":
            problems.append("SERVICE must be WMS")
        if version not in ("1.1.1", "1.3.0"):
            problems.append(f"unsupported VERSION {version}")
        crs_key, other = ("CRS", "SRS") if version == "1.3.0" else ("SRS", "CRS")
        if q.get(crs_key) != "EPSG:3857" or other in q:
            problems.append(f"version {version} needs {crs_key}=EPSG:3857 and no {other}")
        try:
            width, height = int(q["WIDTH"]), int(q["HEIGHT"])
            bbox = tuple(float(v) for v in q["BBOX"].split(","))
        except (KeyError, ValueError):
            return self._send(400, b"WIDTH, HEIGHT and BBOX are required")
        tile = bbox_to_tile(bbox) if len(bbox) == 4 else None  # type: ignore[arg-type]
        if tile is None:
            problems.append(f"BBOX {q['BBOX']} is not one tile in minx,miny,maxx,maxy order")
        if width != height or width not in (256, 512):
            problems.append(f"WIDTH/HEIGHT {width}x{height} is not a tile")
        if q.get("LAYERS") != owner.wms_layers:
            problems.append(f"LAYERS {q.get('LAYERS')} != {owner.wms_layers}")
        if "STYLES" not in q:
            problems.append("STYLES is required")
        request = q.get("REQUEST")
        if request == "GetFeatureInfo":
            i_key, j_key = ("I", "J") if version == "1.3.0" else ("X", "Y")
            try:
                i, j = int(q[i_key]), int(q[j_key])
            except (KeyError, ValueError):
                problems.append(f"version {version} needs {i_key}/{j_key}")
                i = j = -1
            if q.get("QUERY_LAYERS") != owner.wms_layers:
                problems.append("QUERY_LAYERS missing")
            if problems:
                return self._send(400, "; ".join(problems).encode())
            w, s, e, n = bbox
            x = w + (i + 0.5) * (e - w) / width
            y = n - (j + 0.5) * (n - s) / height
            body = {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": None,
                        "properties": {"x": x, "y": y, "tile": list(tile or ())},
                    }
                ],
            }
            return self._send(200, json.dumps(body).encode(), "application/json")
        if request != "GetMap":
            problems.append(f"unsupported REQUEST {request}")
        fmt = q.get("FORMAT", "")
        if fmt not in ("image/png", "image/jpeg"):
            problems.append(f"unsupported FORMAT {fmt}")
        if problems:
            return self._send(400, "; ".join(problems).encode())
        if tuple(tile) in owner.failing:  # type: ignore[arg-type]
            body = (
                b"<ServiceExceptionReport><ServiceException>layer broken"
                b"</ServiceException></ServiceExceptionReport>"
            )
            return self._send(200, body, "application/vnd.ogc.se_xml")
        ext = "png" if fmt == "image/png" else "jpg"
        self._send(200, render(tile_colour(*tile), width, ext), fmt)  # type: ignore[misc]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    owner: TileServer


class TileServer:
    """A loopback tile + WMS server in a background thread (a context manager)."""

    def __init__(self, latency: float = 0.0, wms_layers: str = "roads,water") -> None:
        self.latency = latency
        self.wms_layers = wms_layers
        self.missing: set[tuple[int, int, int]] = set()
        self.empty: set[tuple[int, int, int]] = set()
        self.failing: set[tuple[int, int, int]] = set()
        self.requests: list[str] = []
        self.in_flight = 0  # requests being answered now
        self.peak_in_flight = 0  # the most answered at once
        self.wms_params: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self, port: int = 0) -> TileServer:
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> TileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def tile_server() -> Iterator[TileServer]:
    """A started :class:`TileServer`, stopped at teardown."""
    with TileServer() as server:
        yield server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = TileServer(latency=args.latency).start(args.port)
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
