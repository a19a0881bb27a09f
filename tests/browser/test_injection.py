"""Nothing a server or a catalog writes runs in the page: markup everywhere, shown as text.

``panel serve app`` in headless Chromium, on a catalog written to hurt and on loopback servers
that answer with markup wherever their words can reach the page:

- the catalog: a layer title and an attribution with ``<img onerror>`` and ``<script>``;
- a tile server that answers every tile with an HTML page (its content type and an unclosed
  ``<img ... onerror=`` reach the layer's status line, its error and the notification);
- an OGC API server whose collection titles carry markup, one collection whose features'
  property keys and values are markup (click-inspect shows them), and one whose features'
  coordinates are markup (the parse error that quotes them reaches the status line).

Every payload sets ``window.__pwned``; the test checks that it stays undefined, that no
element with an ``onerror`` attribute or an injected ``<script>`` exists anywhere in the
page (shadow roots included), and that the text is visible as text.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support.tileserver import TileServer

from .served import launch, plot_box, served_app, status_lines, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

IMG = '<img src=x onerror="window.__pwned=1">'
SCRIPT = "<script>window.__pwned=1</script>"
#: An unclosed tag: a tag stripper that removes whole ``<...>`` tags leaves it in place, and in
#: ``innerHTML`` it closes on the next ``>`` of the markup around it.
OPEN_IMG = "<img src=x onerror=window.__pwned=1 "

#: Every text node of the page, shadow roots included.
DEEP_TEXT = """() => {
  const out = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) walk(el.shadowRoot);
    }
    const w = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    while (w.nextNode()) out.push(w.currentNode.nodeValue);
  };
  walk(document);
  return out.join('\\n');
}"""

#: Elements that only an injection would have made: anything with an ``onerror`` attribute, an
#: image whose source is ``x``, a script whose text sets ``__pwned``.
INJECTED = """() => {
  const found = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) walk(el.shadowRoot);
      if (el.hasAttribute('onerror') || (el.tagName === 'IMG' && el.getAttribute('src') === 'x')
          || (el.tagName === 'SCRIPT' && (el.textContent || '').includes('__pwned'))) {
        found.push(el.outerHTML.slice(0, 120));
      }
    }
  };
  walk(document);
  return found;
}"""


#: Notifications come and go (six seconds): the page keeps the text of every one it showed.
KEEP_NOTES = """
window.__pwned = undefined;
window.__notes = new Set();
setInterval(() => {
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) walk(el.shadowRoot);
      if (el.classList && el.classList.contains('notyf__message')) window.__notes.add(el.textContent);
    }
  };
  walk(document);
}, 100);
"""


class _Hostile(BaseHTTPRequestHandler):
    """Tiles that are HTML pages, and an OGC API whose every word is markup."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, doc: object, status: int = 200) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urlsplit(self.path).path.rstrip("/")
        base = f"http://127.0.0.1:{self.server.server_address[1]}/ogc"
        if path.startswith("/html/"):  # a "tile": an HTML error page with a 200
            return self._send(200, f"{OPEN_IMG}{SCRIPT}".encode(), f"text/html; x={OPEN_IMG}")
        if path in ("/ogc", "/ogc/collections"):
            colls = [self._collection(base, cid) for cid in ("props", "coords")]
            return self._json({"title": IMG, "description": SCRIPT, "collections": colls, "links": []})
        parts = path.split("/")  # /ogc/collections/<id>[/items]
        if len(parts) >= 4 and parts[2] == "collections" and parts[3] in ("props", "coords"):
            cid = parts[3]
            if len(parts) == 4:
                return self._json(self._collection(base, cid))
            if parts[4:] == ["items"]:
                return self._json(self._items(cid), 200)
        return self._json({"code": "NotFound", "description": f"{IMG}{SCRIPT}"}, 404)

    @staticmethod
    def _collection(base: str, cid: str) -> dict:
        return {
            "id": cid, "title": f"{IMG}{cid}", "description": SCRIPT, "itemType": "feature",
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}},
            "links": [{"rel": "items", "href": f"{base}/collections/{cid}/items", "title": IMG}],
        }

    @staticmethod
    def _items(cid: str) -> dict:
        if cid == "props":  # one polygon over most of the world: every click hits it
            geometry = {"type": "Polygon", "coordinates": [[[-170, -80], [170, -80], [170, 80], [-170, 80], [-170, -80]]]}
            props = {"name": IMG, SCRIPT: "key", "note": f"{OPEN_IMG}tail"}
        else:  # coordinates that are markup: the parser's error quotes them
            geometry = {"type": "Point", "coordinates": [OPEN_IMG, 0]}
            props = {"name": "x"}
        feature = {"type": "Feature", "id": 1, "geometry": geometry, "properties": props}
        return {"type": "FeatureCollection", "features": [feature], "numberReturned": 1}


@pytest.fixture(scope="module")
def hostile():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tiles():
    server = TileServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app_url(hostile, tiles, tmp_path_factory):
    layers = [
        {"name": "base", "title": f"Base {IMG}{SCRIPT}", "kind": "tiles", "priority": 0,
         "url": tiles.url + "/{z}/{x}/{y}.png", "attribution": f"{SCRIPT} tiles by <b>{IMG}</b>"},
        {"name": "htmltiles", "title": "HTML tiles", "kind": "tiles", "priority": 1,
         "url": hostile + "/html/{z}/{x}/{y}.png"},
        {"name": "props", "title": "Marked-up properties", "kind": "features", "priority": 2,
         "url": hostile + "/ogc", "collection": "props", "attribution": IMG},
        {"name": "coords", "title": "Marked-up coordinates", "kind": "features", "priority": 3,
         "url": hostile + "/ogc", "collection": "coords"},
    ]
    path = tmp_path_factory.mktemp("catalog") / "hostile.yml"
    path.write_text(yaml.safe_dump({"title": f"Hostile {IMG}", "description": SCRIPT, "layers": layers}))
    with served_app(path) as url:
        yield url


def test_no_server_or_catalog_markup_runs_and_all_of_it_shows_as_text(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.add_init_script(KEEP_NOTES)
        page.goto(app_url)
        page.wait_for_selector("canvas", timeout=60_000)
        lines = wait_until(
            page, lambda: (s := status_lines(page)) and all(
                s.get(n, "").startswith(("done", "error")) for n in ("base", "htmltiles", "props", "coords")) and s,
            timeout=90, what="every layer done or failed")
        assert lines["base"].startswith("done") and lines["props"].startswith("done"), lines
        # the tile server's words, as text in the status line
        assert lines["htmltiles"].startswith("error:") and "onerror=window.__pwned=1" in lines["htmltiles"], lines
        assert "<img src=x" in lines["htmltiles"]
        assert lines["coords"].startswith("error:") and "<img src=x onerror" in lines["coords"], lines
        # click-inspect on the marked-up polygon
        box = plot_box(page)
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        text = wait_until(page, lambda: (t := page.evaluate(DEEP_TEXT)) and "tail" in t and t, timeout=30,
                          what="the inspect answer")
        page.wait_for_timeout(1000)  # any handler that was injected has had its chance
        text = page.evaluate(DEEP_TEXT)
        page.screenshot(path=str(tmp_path / "injection.png"), full_page=True)
        notes = page.evaluate("() => [...window.__notes]")
        pwned = page.evaluate("() => window.__pwned")
        injected = page.evaluate(INJECTED)
        browser.close()
    assert pwned is None, "an injected handler ran in the page"
    assert injected == [], f"markup from a server or the catalog became elements: {injected}"
    assert f"Base {IMG}{SCRIPT}" in text  # the layer title, as written
    assert f"{SCRIPT} tiles by <b>{IMG}</b>" in text  # the attribution, as written
    assert IMG in text and SCRIPT in text and f"{OPEN_IMG}tail" in text  # inspect: values and keys
    # the notifications of the failed layers quote the servers too, as text
    assert any(n.startswith("HTML tiles: ") and "<img src=x onerror" in n for n in notes), notes
    assert any(n.startswith("Marked-up coordinates: ") and "<img src=x onerror" in n for n in notes), notes
