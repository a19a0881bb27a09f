"""Start and stop the embedded demo services: once per process, shared, stopped at exit.

Three child processes on ``127.0.0.1``, each in its own process group:

* an OGC API Features server (pygeoapi, through :class:`~mapstream.demo.ogcserver.PygeoapiServer`)
  over the demo data of :mod:`mapstream.demo.data`: ``countries`` (polygons), ``sensors``
  (200 000 points) and ``borders`` (lines). Every collection is served by the in-memory
  ``FrameProvider`` (a spatial index, stable offset paging with ``numberMatched``), not by
  pygeoapi's GeoJSON provider that re-reads and filters the whole file on every request;
* the basemap tile server of :mod:`mapstream.demo.tileserver` (it also serves the COGs);
* a STAC API (rustac's server, :mod:`mapstream.demo.stacserver`) whose items are the COGs.

:func:`ensure_demo` (async) and :func:`start_demo` (its sync twin, for the CLI) share one start:
callers that arrive while the services start wait for the same start, and a cancelled caller
does not cancel it. The services stop at interpreter exit (``atexit``) or on
:meth:`DemoServices.stop`.

Latency and fault injection, for seeing the async behaviour on a laptop, come from the
arguments or, when those are None, from ``MAPSTREAM_DEMO_LATENCY`` (``"150ms"``, ``"0.2s"``)
and ``MAPSTREAM_DEMO_FAIL_RATE`` (``"0.05"``): every request is delayed by the latency, and
that fraction of item, tile and STAC search requests is answered ``503`` (a seeded sequence).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import os
import random
import socket
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapstream.layers.errors import BadInputError, LayersError
from mapstream.layers.units import parse_duration
from ._watchdog import ENV as WATCHDOG_ENV
from .data import COG_FILES, ensure_data
from .ogcserver import PygeoapiServer
from .stacserver import StacServer, demo_items
from .tileserver import MAX_ZOOM, TileServer

__all__ = ["DemoServices", "demo_resources", "ensure_demo", "start_demo"]

PAGE_LIMIT = 1000  # pygeoapi's default page size for the demo
_FAULT_SEQUENCE = 20_000  # injected outcomes drawn for item requests (then all succeed)


def _parse_rate(text: str | float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise BadInputError(f"expected a failure rate between 0 and 1, got {text!r}")
    return value


def _settings(latency: float | str | None, fail_rate: float | str | None) -> tuple[float, float]:
    env = os.environ
    if latency is None:
        latency = env.get("MAPSTREAM_DEMO_LATENCY") or 0.0
    if fail_rate is None:
        fail_rate = env.get("MAPSTREAM_DEMO_FAIL_RATE") or 0.0
    return parse_duration(latency), _parse_rate(fail_rate)


def demo_resources(paths: Mapping[str, Path]) -> dict[str, Any]:
    """pygeoapi resource definitions for the demo data files ``paths`` (pure).

    >>> sorted(demo_resources({"countries": Path("c"), "sensors": Path("s"), "borders": Path("b")}))
    ['borders', 'countries', 'sensors']
    """
    provider = "mapstream.demo.ogcserver.FrameProvider"

    def resource(title: str, description: str, path: Path, **extra: Any) -> dict[str, Any]:
        return {
            "type": "collection",
            "title": title,
            "description": description,
            "keywords": ["mapstream", "demo"],
            "extents": {
                "spatial": {
                    "bbox": [-180, -90, 180, 90],
                    "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
                },
                **extra.pop("extents", {}),
            },
            "providers": [
                {"type": "feature", "name": provider, "data": str(path), "id_field": "id", **extra}
            ],
        }

    return {
        "countries": resource(
            "Countries", "Natural Earth 1:110m countries (public domain)", paths["countries"]
        ),
        "sensors": resource(
            "Sensor readings",
            "200 000 synthetic sensor readings over land (seeded)",
            paths["sensors"],
            time_field="when",
            extents={"temporal": {"begin": "2024-01-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"}},
        ),
        "borders": resource("Borders", "Natural Earth country outlines as lines", paths["borders"]),
    }


@dataclass
class DemoServices:
    """The running demo services.

    Attributes
    ----------
    ogc_url
        Landing page of the OGC API Features server.
    tiles_url
        XYZ template of the basemap, ``http://127.0.0.1:PORT/tiles/{z}/{x}/{y}.png``.
    max_zoom
        The basemap's deepest zoom level.
    stac_url
        Landing page of the STAC API over the demo's COGs.
    startup_seconds
        Wall time of the start (data generation on a first run included), until both servers
        answered and every collection had served a first page.
    latency, fail_rate
        The injected delay (seconds) and failure fraction.
    """

    ogc_url: str
    tiles_url: str
    startup_seconds: float
    latency: float = 0.0
    fail_rate: float = 0.0
    max_zoom: int = MAX_ZOOM
    stac_url: str = ""
    ogc: PygeoapiServer | None = field(default=None, repr=False)
    tiles: TileServer | None = field(default=None, repr=False)
    stac: StacServer | None = field(default=None, repr=False)

    @property
    def pids(self) -> list[int]:
        """Process ids of the children (empty once stopped)."""
        procs = [getattr(s, "_proc", None) for s in (self.ogc, self.tiles, self.stac)]
        return [p.pid for p in procs if p is not None]

    def stop(self) -> None:
        """Stop both servers (idempotent); the next :func:`ensure_demo` starts new ones."""
        global _current
        with _lock:
            if _current is self:
                _current = None
        for server in (self.ogc, self.tiles, self.stac):
            if server is not None:
                server.stop()


_lock = threading.Lock()
_current: DemoServices | None = None
_starting: concurrent.futures.Future[DemoServices] | None = None


def _warm(url: str, collections: list[str], timeout: float) -> None:
    # The provider loads its data and builds its spatial index on the first requests: pay
    # that during the start, not on the first page a user waits for.
    def one(name: str) -> None:
        query = "f=json&limit=1&bbox=-180,-90,180,90"
        with urllib.request.urlopen(
            f"{url}/collections/{name}/items?{query}", timeout=timeout
        ) as r:
            json.loads(r.read())

    with concurrent.futures.ThreadPoolExecutor(len(collections)) as pool:
        list(pool.map(one, collections))


#: Ports the demo prefers, so that every process (the app, ``mapstream prefetch``) uses the same
#: URLs and therefore the same HTTP cache entries; a busy port falls back to a free one.
DEFAULT_PORTS = (47801, 47802)


def demo_ports(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """The (OGC API, tiles) ports to try first: ``MAPSTREAM_DEMO_PORTS="OGC,TILES"`` or defaults.

    ``0,0`` asks for any free ports.

    >>> demo_ports({"MAPSTREAM_DEMO_PORTS": "9001, 9002"})
    (9001, 9002)
    >>> demo_ports({})
    (47801, 47802)

    Raises
    ------
    BadInputError
        The variable is not two port numbers.
    """
    env = os.environ if environ is None else environ
    text = env.get("MAPSTREAM_DEMO_PORTS", "").strip()
    if not text:
        return DEFAULT_PORTS
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.isdigit() and int(p) < 65536 for p in parts):
        raise BadInputError(f"MAPSTREAM_DEMO_PORTS must be two ports like '47801,47802', got {text!r}")
    return int(parts[0]), int(parts[1])


def _port_is_free(port: int) -> bool:
    if port == 0:
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _launch(
    latency: float, fail_rate: float, data_dir: Path | None, timeout: float
) -> DemoServices:
    t0 = time.perf_counter()
    paths = ensure_data(data_dir)
    faults = None
    if fail_rate:
        rng = random.Random(7)
        faults = {
            "/items": ["503" if rng.random() < fail_rate else "ok" for _ in range(_FAULT_SEQUENCE)]
        }
    resources = demo_resources(paths)
    parent = {WATCHDOG_ENV: str(os.getpid())}  # children exit if we die without atexit

    def servers(ogc_port: int, tiles_port: int) -> tuple[PygeoapiServer, TileServer]:
        ogc = PygeoapiServer(
            resources,
            title="mapstream demo",
            limit=PAGE_LIMIT,
            latency=latency,
            faults=faults,
            env=parent,
            port=ogc_port,
        )
        tiles = TileServer(
            paths["countries"], latency=latency, fail_rate=fail_rate, env=parent, port=tiles_port,
            cogs=paths["elevation_3857"].parent,
        )
        return ogc, tiles

    def start(ogc: PygeoapiServer, tiles: TileServer) -> None:
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                tiles_started = pool.submit(tiles.start, timeout)
                ogc.start(timeout)
                tiles_started.result()
        except BaseException:
            ogc.stop()
            tiles.stop()
            raise

    preferred = demo_ports()
    ports = tuple(p if _port_is_free(p) else 0 for p in preferred)
    ogc, tiles = servers(*ports)
    try:
        start(ogc, tiles)
    except LayersError:
        if ports == (0, 0):
            raise
        # Lost a race for a preferred port: any free port serves, only the cache is colder.
        ogc, tiles = servers(0, 0)
        start(ogc, tiles)
    stac = StacServer(
        demo_items(tiles.tiles_url.split("/tiles/", 1)[0] + "/cogs/", COG_FILES),
        latency=latency, env=parent,
        faults={"/search": faults["/items"][:2000]} if faults else None,  # searches fail too
    )
    try:
        stac.start(timeout)  # after the tile server: its items point at the COGs' URLs
        if not fail_rate:  # with faults, warming would eat injected failures
            _warm(ogc.url, list(resources), timeout)
    except BaseException:
        ogc.stop()
        tiles.stop()
        stac.stop()
        raise
    return DemoServices(
        ogc_url=ogc.url,
        tiles_url=tiles.tiles_url,
        startup_seconds=time.perf_counter() - t0,
        latency=latency,
        fail_rate=fail_rate,
        stac_url=stac.url or "",
        ogc=ogc,
        tiles=tiles,
        stac=stac,
    )


def _shared_start(
    latency: Any, fail_rate: Any, data_dir: Path | None, timeout: float
) -> concurrent.futures.Future[DemoServices]:
    global _starting
    lat, rate = _settings(latency, fail_rate)
    with _lock:
        if _current is not None:
            done: concurrent.futures.Future[DemoServices] = concurrent.futures.Future()
            done.set_result(_current)
            return done
        if _starting is not None:
            return _starting
        fut: concurrent.futures.Future[DemoServices] = concurrent.futures.Future()
        fut.set_running_or_notify_cancel()  # running: a waiter's cancel cannot cancel the start
        _starting = fut

    def run() -> None:
        global _current, _starting
        try:
            services = _launch(lat, rate, data_dir, timeout)
        except Exception as exc:  # noqa: BLE001 (handed to every waiter)
            with _lock:
                _starting = None
            err = (
                exc
                if isinstance(exc, LayersError)
                else LayersError(f"cannot start the demo services: {exc}")
            )
            err.__cause__ = exc if err is not exc else exc.__cause__
            fut.set_exception(err)
            return
        with _lock:
            _current, _starting = services, None
        fut.set_result(services)

    threading.Thread(target=run, name="mapstream-demo-start", daemon=True).start()
    return fut


async def ensure_demo(
    *,
    latency: float | str | None = None,
    fail_rate: float | str | None = None,
    data_dir: Path | None = None,
    timeout: float = 120.0,
) -> DemoServices:
    """The process's demo services, started on first use without blocking the event loop.

    Parameters
    ----------
    latency, fail_rate
        Injected delay (seconds or ``"150ms"``) and failure fraction; None reads
        ``MAPSTREAM_DEMO_LATENCY`` / ``MAPSTREAM_DEMO_FAIL_RATE``. Used by the first start
        only: later callers share the running services.
    data_dir
        Where generated data is cached (default :func:`~mapstream.demo.data.demo_data_dir`).
    timeout
        Seconds each server may take to answer.

    Raises
    ------
    BadInputError
        A bad latency or failure rate.
    LayersError
        The services could not start (the cause is attached).
    """
    fut = _shared_start(latency, fail_rate, data_dir, timeout)
    return await asyncio.shield(asyncio.wrap_future(fut))


def start_demo(
    *,
    latency: float | str | None = None,
    fail_rate: float | str | None = None,
    data_dir: Path | None = None,
    timeout: float = 120.0,
) -> DemoServices:
    """Sync twin of :func:`ensure_demo` (blocks until the services answer), for the CLI.

    Raises
    ------
    BadInputError, LayersError
        As :func:`ensure_demo`.
    """
    return _shared_start(latency, fail_rate, data_dir, timeout).result()


def start_demo_soon(
    *,
    latency: float | str | None = None,
    fail_rate: float | str | None = None,
    data_dir: Path | None = None,
    timeout: float = 120.0,
) -> concurrent.futures.Future[DemoServices]:
    """Start the services in the background and return at once (``panel serve --warm``).

    The future holds the services or the start's error; a failed start is retried by the next
    :func:`ensure_demo`, so nothing is lost by not waiting.

    Raises
    ------
    BadInputError
        A bad latency or failure rate (raised at once).
    """
    return _shared_start(latency, fail_rate, data_dir, timeout)


def current_demo() -> DemoServices | None:
    """The running services, if any (never starts them)."""
    return _current


@atexit.register
def _stop_at_exit() -> None:
    fut = _starting
    if fut is not None:  # a start under way: let it finish, then stop what it started
        concurrent.futures.wait([fut], timeout=130)
    services = _current
    if services is not None:
        services.stop()
