"""An OGC API Features server on 127.0.0.1 whose paging misbehaves on purpose, over a generated
ground truth with known ids (``truth()``), and the ``paging_server`` / ``make_paging_server``
fixtures.

Each collection pages one way (its name says how); every one serves the same points:

    plain        next links keep the request's own query (raw, as it was encoded)
    mapserver    next links drop everything but f, limit and offset (MapServer 8 drops bbox)
    qgis         next links turn an encoded ``%2C`` into ``1000C`` (QGIS Server 3.22)
    cursor       an opaque ``token`` instead of offset; the query is kept
    cursor-drop  an opaque ``token``, and bbox dropped (cannot be repaired)
    selfloop     the next link is the request itself
    cycle        offset 0 -> offset L -> offset 0 -> ...
    repeat       the first 5 features on every page, next links for 200 pages
    liar         numberMatched says 10; pages of real features follow for as long as there are
    endless      numberMatched 1e9, 1 feature a page (made up: id = offset + 1), next forever
    endless-cursor  as endless, with an opaque token instead of offset
    five         numberReturned is the string "five"
    overcount    numberMatched says 1 000 000; the pages end with the real features
    loosebox     a bbox selects 5 degrees more north and south (MapServer 8 answers so)
    elsewhere    next links name another origin (``server.elsewhere``, set by the test)

The server honours ``bbox`` (CRS84, literal or encoded commas; anything else is HTTP 400),
``limit`` (at most ``max_limit``), ``offset``, ``datetime`` (on ``when``) and, when it declares
Part 3 (``filters=True``), a CQL2-text ``filter`` (pygeofilter's native evaluator; a filter it
cannot parse is HTTP 400). Without Part 3 it ignores ``filter`` as MapServer and QGIS do;
``filters="parse-only"`` declares no Part 3, rejects a filter it cannot parse and ignores the
others (pygeoapi 0.21 over its SQLite provider).
Queryables: ``queryables="schema"`` answers ``Accept: application/schema+json`` and gives 422
to ``f=json`` (tipg); ``"f"`` answers only ``f=json`` (HTML otherwise); ``"none"`` is 404.

With ``require_auth="Bearer x"`` every request without that ``Authorization`` is HTTP 401.
Every request is recorded (path, raw query, headers) in ``server.requests``.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
import pytest

N = 2000
KINDS = ("alpha", "beta", "gamma", "delta")
CONF_CORE = "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core"
CONF_FILTER = "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter"
CONF_CQL2_TEXT = "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text"
COLLECTIONS = (
    "plain", "mapserver", "qgis", "cursor", "cursor-drop", "selfloop", "cycle", "repeat", "liar",
    "endless", "endless-cursor", "five", "elsewhere", "overcount", "loosebox",
)


def truth(n: int = N) -> list[dict[str, Any]]:
    """The ground truth: ``n`` points with ids 1..n, lon/lat, ``num``, ``kind`` and ``when``
    (deterministic; spread over the world so sub-boxes hold known subsets)."""
    out = []
    for i in range(1, n + 1):
        lon = -179.5 + (i * 7919 % 3590) / 10.0
        lat = -79.5 + (i * 104729 % 1590) / 10.0
        out.append({
            "id": i, "lon": lon, "lat": lat, "num": i * 37 % 1000, "kind": KINDS[i % 4],
            "when": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T12:00:00Z",
        })
    return out


def inside(p: dict[str, Any], box: tuple[float, float, float, float]) -> bool:
    return box[0] <= p["lon"] <= box[2] and box[1] <= p["lat"] <= box[3]


def _feature(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "Feature", "id": p["id"],
        "properties": {"num": p["num"], "kind": p["kind"], "when": p["when"]},
        "geometry": {"type": "Point", "coordinates": [p["lon"], p["lat"]]},
    }


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode().rstrip("=")


def _untoken(token: str) -> int:
    return int(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()[1:])


def _with(raw: str, **params: str) -> str:
    """The raw query with ``params`` replaced or added, every other part left as encoded."""
    parts = [p for p in raw.split("&") if p and p.split("=", 1)[0] not in params]
    parts += [f"{k}={v}" for k, v in params.items()]
    return "&".join(parts)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Any

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        owner: PagingServer = self.server.owner
        parts = urlsplit(self.path)
        owner._record(parts.path, parts.query, dict(self.headers))
        try:
            status, ctype, body = owner.answer(parts.path, parts.query, self.headers)
        except Exception as exc:  # a bug in the test server shows as a 500 naming it
            status, ctype, body = 500, "text/plain", f"{type(exc).__name__}: {exc}".encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class PagingServer:
    """The server (see the module). ``url`` is its landing page."""

    def __init__(
        self, *, n: int = N, filters: bool | str = False, max_limit: int = 1000, queryables: str = "schema",
        temporal: bool = True, require_auth: str | None = None,
    ) -> None:
        self.points = truth(n)
        self.filters = filters
        self.max_limit = max_limit
        self.queryables = queryables
        self.temporal = temporal
        self.require_auth = require_auth  # every request needs this Authorization (else 401)
        self.elsewhere = "http://127.0.0.1:9"  # the other origin of the "elsewhere" collection
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> PagingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _record(self, path: str, query: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((path, query, headers))

    def items_requests(self, collection: str) -> list[str]:
        """The raw queries of every items request to ``collection``."""
        with self._lock:
            return [q for p, q, _ in self.requests if p == f"/collections/{collection}/items"]

    # -- answers ----------------------------------------------------------------------------

    def answer(self, path: str, raw: str, headers: Any) -> tuple[int, str, bytes]:
        if self.require_auth is not None and headers.get("Authorization") != self.require_auth:
            return 401, "application/json", b'{"code": "Unauthorized"}'
        q = dict(parse_qsl(raw, keep_blank_values=True))
        segs = [unquote(s) for s in path.strip("/").split("/") if s]
        if segs == []:
            return self._json({"title": "paging server", "links": []})
        if segs == ["conformance"]:
            classes = [CONF_CORE] + ([CONF_FILTER, CONF_CQL2_TEXT] if self.filters is True else [])
            return self._json({"conformsTo": classes})
        if len(segs) >= 2 and segs[0] == "collections" and segs[1] in COLLECTIONS:
            if len(segs) == 2:
                extent: dict[str, Any] = {"spatial": {"bbox": [[-180, -90, 180, 90]]}}
                if self.temporal:
                    extent["temporal"] = {"interval": [["2024-01-01T00:00:00Z", None]]}
                return self._json({"id": segs[1], "title": segs[1], "extent": extent})
            if segs[2:] == ["queryables"]:
                return self._queryables(q, headers)
            if segs[2:] == ["items"]:
                return self._items(segs[1], raw, q)
        return 404, "application/json", b'{"code": "NotFound"}'

    @staticmethod
    def _json(doc: Any, ctype: str = "application/json") -> tuple[int, str, bytes]:
        return 200, ctype, orjson.dumps(doc)

    def _queryables(self, q: dict[str, str], headers: Any) -> tuple[int, str, bytes]:
        doc = {
            "type": "object",
            "properties": {
                "num": {"type": "integer"}, "kind": {"type": "string"},
                **({"when": {"type": "string", "format": "date-time"}} if self.temporal else {}),
            },
        }
        accept = headers.get("Accept", "")
        if self.queryables == "schema":
            if "f" in q:
                return 422, "application/json", b'{"detail": "unknown parameter f"}'
            if "application/schema+json" in accept:
                return self._json(doc, "application/schema+json")
            return 406, "text/plain", b"not acceptable"
        if self.queryables == "f":
            if q.get("f") == "json":
                return self._json(doc)
            return 200, "text/html", b"<html><body>queryables</body></html>"
        return 404, "application/json", b'{"code": "NotFound"}'

    def _matches(self, q: dict[str, str], slack: float = 0.0) -> list[dict[str, Any]] | tuple[int, str, bytes]:
        rows = self.points
        if "bbox" in q:
            try:
                box = tuple(float(v) for v in q["bbox"].split(","))
                if len(box) != 4:
                    raise ValueError(q["bbox"])
                box = (box[0], box[1] - slack, box[2], box[3] + slack)
            except ValueError:
                return 400, "application/json", orjson.dumps({"code": "InvalidParameterValue", "bbox": q["bbox"]})
            rows = [p for p in rows if inside(p, box)]  # type: ignore[arg-type]
        if "datetime" in q:
            lo, _, hi = q["datetime"].partition("/")
            rows = [p for p in rows if (lo in ("", "..") or p["when"] >= lo) and (hi in ("", "..") or p["when"] <= hi)]
        if "filter" in q and self.filters == "parse-only":  # pygeoapi over a provider without CQL
            try:
                from pygeofilter.parsers.cql2_text import parse

                parse(q["filter"])
            except Exception:
                return 400, "application/json", b'{"code": "InvalidParameterValue", "filter": "bad CQL2"}'
        elif "filter" in q and self.filters:
            try:
                from pygeofilter.backends.native.evaluate import NativeEvaluator
                from pygeofilter.parsers.cql2_text import parse

                match = NativeEvaluator(use_getattr=False).evaluate(parse(q["filter"]))
            except Exception:
                return 400, "application/json", b'{"code": "InvalidParameterValue", "filter": "bad CQL2"}'
            rows = [p for p in rows if match(p)]
        return rows

    def _items(self, coll: str, raw: str, q: dict[str, str]) -> tuple[int, str, bytes]:
        limit = max(1, min(int(q.get("limit", "10")), self.max_limit))
        if coll.startswith("cursor") or coll == "endless-cursor":
            offset = _untoken(q["token"]) if "token" in q else 0
        else:
            offset = int(q.get("offset", "0"))
        if coll.startswith("endless"):
            page = [{"id": offset + 1, "lon": 0.0, "lat": 0.0, "num": 0, "kind": "alpha", "when": "2024-01-01T00:00:00Z"}]
            nxt = {"token": _token(offset + 1)} if coll == "endless-cursor" else {"offset": str(offset + 1)}
            return self._page(page, 10**9, len(page), self._next(coll, raw, **nxt))
        rows = self._matches(q, 5.0 if coll == "loosebox" else 0.0)
        if isinstance(rows, tuple):
            return rows
        if coll == "repeat":
            page = rows[:5]
            more = offset < 200 * 5
            return self._page(page, 1000, len(page), self._next(coll, raw, offset=str(offset + 5)) if more else None)
        page = rows[offset:offset + limit]
        more = offset + limit < len(rows)
        matched: Any = len(rows)
        returned: Any = len(page)
        if coll == "liar":
            matched = 10
        if coll == "overcount":
            matched, more = 10**6, True
        if coll == "five":
            returned = "five"
        nxt: str | None = None
        if more:
            o = str(offset + limit)
            if coll in ("plain", "liar", "five", "overcount", "loosebox"):
                nxt = self._next(coll, raw, offset=o)
            elif coll == "mapserver":
                nxt = self._next(coll, "", f="json", limit=str(limit), offset=o)
            elif coll == "qgis":
                nxt = self._next(coll, raw, offset=o).replace("%2C", "1000C")
            elif coll == "cursor":
                nxt = self._next(coll, _with(raw, token=""), token=_token(offset + limit))
            elif coll == "cursor-drop":
                nxt = self._next(coll, f"limit={limit}", token=_token(offset + limit))
            elif coll == "selfloop":
                nxt = self._next(coll, raw)
            elif coll == "cycle":
                nxt = self._next(coll, raw, offset=str(limit if offset == 0 else 0))
            elif coll == "elsewhere":
                nxt = f"{self.elsewhere}/collections/elsewhere/items?{_with(raw, offset=o)}"
        return self._page(page, matched, returned, nxt)

    def _next(self, coll: str, raw: str, **params: str) -> str:
        return f"/collections/{coll}/items?" + _with(raw, **params)

    def _page(self, rows: list[dict[str, Any]], matched: Any, returned: Any, nxt: str | None) -> tuple[int, str, bytes]:
        links = []
        if nxt is not None:
            href = nxt if nxt.startswith("http") else self.url + nxt
            links.append({"rel": "next", "href": href, "type": "application/geo+json"})
        doc = {
            "type": "FeatureCollection", "features": [_feature(p) for p in rows],
            "numberMatched": matched, "numberReturned": returned, "links": links,
        }
        return 200, "application/geo+json", orjson.dumps(doc)


@pytest.fixture(scope="module")
def paging_server() -> Iterator[PagingServer]:
    """A server without Part 3 (it ignores ``filter``), up for the module."""
    server = PagingServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_paging_server() -> Iterator[Any]:
    """Factory for servers with other settings; each is stopped at teardown."""
    started: list[PagingServer] = []

    def make(**kwargs: Any) -> PagingServer:
        server = PagingServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
