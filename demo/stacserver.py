"""A real STAC API on loopback: rustac's server (``rustac serve``, memory backend) in a child.

:class:`StacServer` writes the items it is given (STAC Item dicts, each with its
``collection``) to an ItemCollection file and starts ``python -m mapstream.demo.stacserver
SPEC``, which runs two things in its process group:

- **rustac's STAC API server** (stac-utils' Rust ``stac-server``, the one ``rustac serve``
  runs): landing page, conformance, collections (made from the items), and item search by GET
  and POST with ``bbox``, ``datetime``, ``collections``, ``ids``, ``limit``, paged by ``skip``
  in ``next`` links (POST links carry the whole next body). It binds an internal port on
  127.0.0.1 and builds its links for the public one (``--addr``/``--bind``).
- **a front on the public port** (bound on port 0 here, so the URL is known before rustac
  starts): it forwards every request to rustac and adds the test and demo hooks:
  ``latency`` (seconds added to every request), ``faults`` (``{substring of the request's
  path+query: [action, ...]}``, each matching request consumes one: ``"503"`` or any status,
  or ``"ok"``), request counters at ``GET /__stats`` (``requests``, ``in_flight``, ``peak``,
  ``by_method``) and the paging a test asks for. ``paging="merge"``: a POST ``next`` link's
  body is replaced by ``{"token": ...}`` with ``"merge": true`` and a ``headers`` entry
  (``X-Stac-Page``), the STAC API's way to avoid sending the whole body back; a request with
  the token and the header gets the stored body merged back before it reaches rustac, one
  without the header is answered 400 (rustac and stac-fastapi page POST with whole bodies).
  ``paging="get"``: the landing page offers GET search only and next links are GET URLs
  (rustac 0.9 answers 500 to a GET search with ``bbox`` or ``collections`` that has a next
  page: its next link cannot encode the lists, so the front sends such searches to rustac as
  POST).

rustac is imported only in the child's child; importing this module is cheap.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mapstream.layers.errors import ServiceError

from ._child import ChildServer
from ._watchdog import exit_when_orphaned

__all__ = ["DEMO_COLLECTION", "StacServer", "demo_items"]

#: The demo catalog's collection of elevation COGs.
DEMO_COLLECTION = "elevation"
#: Each demo COG's acquisition date (the app's date filter picks one or both).
DEMO_DATES = {"elevation-3857.tif": "2024-03-01T10:00:00Z", "elevation-utm33.tif": "2024-06-01T10:00:00Z"}


def demo_items(cogs_url: str, files: Mapping[str, tuple[str, tuple[float, float, float, float], float, int]]) -> list[dict[str, Any]]:
    """STAC Items for the demo's COGs (``files`` as :data:`mapstream.demo.data.COG_FILES`),
    their ``elevation`` asset at ``cogs_url + name``, the footprint from each file's bounds.

    >>> files = {"a.tif": ("EPSG:3857", (0.0, 0.0, 111_319.49, 111_325.14), 500.0, 1)}
    >>> item = demo_items("http://h/cogs/", files)[0]
    >>> item["id"], item["assets"]["elevation"]["href"], [round(v, 3) for v in item["bbox"]]
    ('a', 'http://h/cogs/a.tif', [0.0, 0.0, 1.0, 1.0])
    """
    from pyproj import Transformer

    items = []
    for name, (crs, bounds, _res, _seed) in files.items():
        w, s, e, n = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform_bounds(*bounds)
        stem = name.removesuffix(".tif")
        items.append({
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": stem,
            "collection": DEMO_COLLECTION,
            "bbox": [w, s, e, n],
            "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
            "properties": {"datetime": DEMO_DATES.get(name, "2024-01-01T00:00:00Z"), "proj:code": crs},
            "assets": {
                "elevation": {
                    "href": cogs_url + name,
                    "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                    "roles": ["data"],
                }
            },
            "links": [],
        })
    return items


class StacServer(ChildServer):
    """rustac's STAC API over ``items``, on 127.0.0.1, behind the hooks' front.

    Parameters
    ----------
    items
        STAC Items (dicts, each with a ``collection``); their collections are made from them.
    latency, faults
        The front's hooks (see the module docstring).
    paging
        ``"post"``: rustac's own (POST next links with the whole body); ``"merge"``: POST
        paging by token with ``merge`` and ``headers``; ``"get"``: the landing page offers GET
        search only, paged by GET next links.
    port
        The public port (0: a free one).
    env
        Extra environment for the child.
    """

    module = "mapstream.demo.stacserver"
    label = "STAC server"

    def __init__(
        self,
        items: Iterable[Mapping[str, Any]],
        *,
        latency: float = 0.0,
        faults: Mapping[str, list[str]] | None = None,
        paging: str = "post",
        port: int = 0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(port=port, env=env)
        self.items = [dict(i) for i in items]
        self.latency = float(latency)
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        if paging not in ("post", "merge", "get"):
            raise ValueError(f"paging must be post, merge or get, got {paging!r}")
        self.paging = paging

    def spec(self, workdir: str) -> dict[str, Any]:
        path = Path(workdir) / "items.json"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": self.items}))
        return {
            "items": str(path),
            "latency": self.latency,
            "faults": self.faults,
            "paging": self.paging,
            "parent": os.getpid(),
        }

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/", timeout=5) as r:
                    json.loads(r.read())
                return
            except OSError:
                if self._proc is None or self._proc.poll() is not None or time.monotonic() > deadline:
                    self._fail("did not answer")
                time.sleep(0.05)


# -- the child ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # rustac must not outlive this process, even when it ends by os._exit (the watchdog).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the process group still ends together
        pass


def _start_rustac(items: str, public: str, log: Path, timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], int]:
    """rustac serving ``items`` on a free internal port, with links for ``public``; waits until
    it answers. A lost race for the port (another process took it) is retried."""
    err = ""
    for _ in range(3):
        port = _free_port()
        launcher = Path(__file__).with_name("_rustac.py")  # rustac's CLI, run as a script
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, str(launcher), "serve", items, "--addr", public, "--bind", f"127.0.0.1:{port}"],
                stdout=out, stderr=out, preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    r.read()
                return proc, port
            except OSError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
        err = log.read_text(errors="replace")[-1000:]
    raise ServiceError(f"rustac did not start: {err}")


def _get_to_body(query: Mapping[str, str]) -> dict[str, Any]:
    """A GET search's query as the POST body rustac takes (pure).

    >>> _get_to_body({"collections": "a,b", "bbox": "0,1,2,3", "limit": "5", "skip": "5"})
    {'collections': ['a', 'b'], 'bbox': [0.0, 1.0, 2.0, 3.0], 'limit': 5, 'skip': 5}
    """
    body: dict[str, Any] = {}
    for key, value in query.items():
        if key in ("collections", "ids"):
            body[key] = value.split(",")
        elif key == "bbox":
            body[key] = [float(v) for v in value.split(",")]
        elif key in ("limit", "skip"):
            body[key] = int(value)
        elif key == "filter" and value.startswith("{"):
            body[key] = json.loads(value)
        else:
            body[key] = value
    return body


def _body_to_query(body: Mapping[str, Any]) -> str:
    """A next POST body as the query of a GET link (pure).

    >>> _body_to_query({"collections": ["a"], "bbox": [0.0, 1.0, 2.0, 3.0], "limit": 5, "skip": 5})
    'collections=a&bbox=0.0%2C1.0%2C2.0%2C3.0&limit=5&skip=5'
    """
    from urllib.parse import urlencode

    return urlencode({
        k: ",".join(str(x) for x in v) if isinstance(v, list) else json.dumps(v) if isinstance(v, dict) else v
        for k, v in body.items()
    })


def _front(spec: Mapping[str, Any], upstream: str) -> Any:
    from aiohttp import ClientSession, web

    latency = float(spec["latency"])
    faults = {k: list(v) for k, v in spec["faults"].items()}
    paging = spec["paging"]
    stats: dict[str, Any] = {"requests": 0, "in_flight": 0, "peak": 0, "by_method": {}}
    bodies: dict[str, dict[str, Any]] = {}  # token -> the full next body (merge paging)
    session: ClientSession | None = None

    async def answer(request: web.Request, target: str) -> web.Response:
        nonlocal session
        method, body = request.method, await request.read()
        if paging == "get" and method == "GET" and request.path == "/search":
            # rustac cannot page a GET search with bbox or collections (its next link fails
            # to encode the lists): the same search goes to rustac as a POST.
            method, target = "POST", "/search"
            body = json.dumps(_get_to_body(dict(request.query))).encode()
        if paging == "merge" and method == "POST" and body:
            doc = json.loads(body)
            token = doc.pop("token", None)
            if token is not None:
                if request.headers.get("X-Stac-Page") != token or token not in bodies:
                    return web.Response(status=400, text="merge paging: unknown token or no X-Stac-Page header")
                doc = {**bodies[token], **doc}
            body = json.dumps(doc).encode()
        if session is None:
            session = ClientSession()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        if method == "POST":
            headers["Content-Type"] = "application/json"
        async with session.request(method, upstream + target, data=body or None, headers=headers) as up:
            content = await up.read()
            ctype = up.headers.get("Content-Type", "application/json")
            status = up.status
        if status != 200 or paging == "post" or not ctype.startswith(("application/json", "application/geo+json")):
            return web.Response(status=status, body=content, headers={"Content-Type": ctype})
        doc = json.loads(content)
        for link in doc.get("links") or ():
            if paging == "get" and link.get("rel") == "search" and link.get("method") == "POST":
                link["rel"] = "search-disabled"  # the landing page offers GET only
            if link.get("rel") != "next" or link.get("method") != "POST":
                continue
            if paging == "get":
                link.update(method="GET", href=f"{link['href']}?{_body_to_query(link.pop('body', {}))}")
            else:
                token = f"t{len(bodies) + 1}"
                bodies[token] = link.get("body") or {}
                link.update(body={"token": token}, merge=True, headers={"X-Stac-Page": token})
        return web.Response(status=status, body=json.dumps(doc).encode(), headers={"Content-Type": ctype})

    async def forward(request: web.Request) -> web.StreamResponse:
        target = request.raw_path  # path and query as sent
        if request.path == "/__stats":
            return web.json_response(stats)
        stats["requests"] += 1
        stats["by_method"][request.method] = stats["by_method"].get(request.method, 0) + 1
        stats["in_flight"] += 1
        stats["peak"] = max(stats["peak"], stats["in_flight"])
        try:
            if latency:
                await asyncio.sleep(latency)
            for key, actions in faults.items():
                if key in target and actions:
                    action = actions.pop(0)
                    if action != "ok":
                        return web.Response(status=int(action), text="injected fault")
                    break
            return await answer(request, target)
        finally:
            stats["in_flight"] -= 1

    app = web.Application(client_max_size=16 * 2**20)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def _serve(spec_path: str) -> None:
    from aiohttp import web

    spec = json.loads(Path(spec_path).read_text())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(spec["port"])))
    sock.listen(128)
    port = sock.getsockname()[1]
    log = Path(spec_path).with_name("rustac.log")
    rustac, internal = _start_rustac(spec["items"], f"http://127.0.0.1:{port}", log)
    signal.signal(signal.SIGTERM, lambda *_: (rustac.kill(), os._exit(0)))

    exit_when_orphaned(spec["parent"], before_exit=rustac.kill)  # rustac dies with us
    print(f"READY {port}", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)  # nobody reads stdout after READY
    os.dup2(devnull, 1)
    sys.stdout = open(1, "w", closefd=False)
    web.run_app(_front(spec, f"http://127.0.0.1:{internal}"), sock=sock, print=None, handle_signals=False)


if __name__ == "__main__":
    _serve(sys.argv[1])
