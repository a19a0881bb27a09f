"""A loopback WMS that draws round point symbols the way real servers do: only the points inside
the BBOX it is asked for, so a symbol near a tile's edge is cut off in one tile and missing from
its neighbour (what a gutter cures).

Any BBOX (EPSG:3857, x,y order), WIDTH and HEIGHT are accepted; a pixel is painted when its
centre lies within :data:`RADIUS_PX` pixels of a point, so the image of an area depends only on
the area's pixel grid: a mosaic of gutter-cropped tiles equals one GetMap of the whole view,
pixel for pixel. ``requests`` records each GetMap's parameters.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest

RADIUS_PX = 6
COLOUR = (200, 30, 30, 255)


def make_points(n: int = 400, seed: int = 6, box=(-2.5e6, -1.5e6, 2.5e6, 1.5e6)) -> np.ndarray:
    """``n`` points (x, y) in EPSG:3857 metres inside ``box`` (deterministic)."""
    rng = np.random.default_rng(seed)
    w, s, e, n_ = box
    return np.column_stack([rng.uniform(w, e, n), rng.uniform(s, n_, n)])


def render(points: np.ndarray, bbox: tuple[float, float, float, float], width: int, height: int) -> bytes:
    """A PNG of the points of ``points`` inside ``bbox``, each a disc of RADIUS_PX pixels."""
    from PIL import Image

    w, s, e, n = bbox
    rx, ry = (e - w) / width, (n - s) / height
    inside = points[(points[:, 0] >= w) & (points[:, 0] <= e) & (points[:, 1] >= s) & (points[:, 1] <= n)]
    img = np.zeros((height, width, 4), dtype=np.uint8)
    cols = (np.arange(width) + 0.5) * rx + w  # pixel-centre coordinates
    rows = n - (np.arange(height) + 0.5) * ry
    for px, py in inside:
        i0, i1 = np.searchsorted(cols, [px - RADIUS_PX * rx, px + RADIUS_PX * rx])
        j0, j1 = np.searchsorted(-rows, [-(py + RADIUS_PX * ry), -(py - RADIUS_PX * ry)])
        if i1 <= i0 or j1 <= j0:
            continue
        dx = (cols[i0:i1] - px) / rx
        dy = (rows[j0:j1] - py) / ry
        disc = dx[None, :] ** 2 + dy[:, None] ** 2 <= RADIUS_PX**2
        img[j0:j1, i0:i1][disc] = COLOUR
    buf = io.BytesIO()
    Image.fromarray(img, "RGBA").save(buf, "PNG")
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        owner = self.server.owner
        q = {k.upper(): v for k, v in parse_qsl(urlsplit(self.path).query, keep_blank_values=True)}
        try:
            bbox = tuple(float(v) for v in q["BBOX"].split(","))
            width, height = int(q["WIDTH"]), int(q["HEIGHT"])
            assert q.get("REQUEST") == "GetMap" and len(bbox) == 4 and 0 < width <= 4096 and 0 < height <= 4096
        except (KeyError, ValueError, AssertionError):
            body, status, ctype = b"bad GetMap", 400, "text/plain"
        else:
            with owner.lock:
                owner.requests.append(q)
            body, status, ctype = render(owner.points, bbox, width, height), 200, "image/png"  # type: ignore[arg-type]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: PointWMS


class PointWMS:
    """The point-drawing WMS on a loopback port, in a thread (a context manager)."""

    def __init__(self, points: np.ndarray | None = None) -> None:
        self.points = make_points() if points is None else points
        self.requests: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/wms"

    def __enter__(self) -> PointWMS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def point_wms() -> Iterator[PointWMS]:
    """A started :class:`PointWMS`, stopped at teardown."""
    with PointWMS() as server:
        yield server


def mosaic_getmap(image, gutter: int = 0, **params: str) -> dict[str, str]:
    """GetMap parameters (EPSG:3857, WMS 1.3.0) for the area and pixel grid of a mosaic's image
    (an ``xarray`` with pixel-centre ``x``/``y``), widened by ``gutter`` pixels on every side:
    one image whose centre (``image[g:-g, g:-g]``) a mosaic of tiles must equal. The gutter is
    needed here too: a server cuts the symbols at the edge of any BBOX, the whole view's as well.
    """
    x, y = image.x.values, image.y.values
    res = float(x[1] - x[0])
    pad = (gutter + 0.5) * res
    bbox = (x[0] - pad, y[-1] - pad, x[-1] + pad, y[0] + pad)
    return {
        "SERVICE": "WMS", "VERSION": "1.3.0", "REQUEST": "GetMap", "STYLES": "", "CRS": "EPSG:3857",
        "FORMAT": "image/png", "TRANSPARENT": "TRUE",
        "BBOX": ",".join(repr(float(v)) for v in bbox),
        "WIDTH": str(len(x) + 2 * gutter), "HEIGHT": str(len(y) + 2 * gutter),
        **params,
    }


def crop(image: np.ndarray, gutter: int) -> np.ndarray:
    """``image`` without ``gutter`` pixels on every side."""
    return image[gutter : image.shape[0] - gutter, gutter : image.shape[1] - gutter] if gutter else image
