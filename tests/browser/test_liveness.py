"""After the last pan, every visible layer ends: ``panel serve app`` with two tabs panning at once.

A catalog over loopback servers this test starts (tiles, and pygeoapi with 20 000 points paged
500 at a time, and countries); each tab drags the map 25 times while its loads run, then the
test waits (bounded) until every layer's status line in both tabs says done or error.
"""

from __future__ import annotations

import random
import time

import pytest
import yaml

from tests.support.ogc import make_ogc_server, ogc_data  # noqa: F401 (fixtures)
from tests.support.tileserver import tile_server  # noqa: F401 (fixture)

from .served import drag, launch, served_app, status_lines

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_two_tabs_panning_end_with_every_layer_done(make_ogc_server, tile_server, tmp_path):
    from playwright.sync_api import sync_playwright

    ogc = make_ogc_server(latency=0.01)
    path = tmp_path / "catalog.yml"
    path.write_text(yaml.safe_dump({"title": "liveness", "layers": [
        {"name": "base", "kind": "tiles", "url": tile_server.url + "/{z}/{x}/{y}.png"},
        {"name": "points", "kind": "features", "url": ogc.url, "collection": "points", "priority": 1,
         "page_size": 500},
        {"name": "countries", "kind": "features", "url": ogc.url, "collection": "countries", "priority": 2},
    ]}))
    with served_app(path, env={"MAPSTREAM_CACHE_DIR": str(tmp_path / "cache")}) as url, sync_playwright() as p:
        browser = launch(p)
        pages = []
        for _ in range(2):
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(url)
            page.wait_for_selector("canvas", timeout=90_000)
            pages.append(page)
        rng = random.Random(7)
        for _ in range(25):
            for page in pages:
                drag(page, rng.randint(-150, 150), rng.randint(-80, 80), steps=2)
        deadline = time.monotonic() + 240
        while True:
            lines = [status_lines(page) for page in pages]
            pending = [(i, n, v) for i, s in enumerate(lines) for n, v in s.items() if not v.startswith(("done", "error"))]
            if not pending or time.monotonic() > deadline:
                break
            pages[0].wait_for_timeout(1000)
        browser.close()
    assert not pending, f"still loading long after the last pan: {pending}"
    assert all(v.startswith("done") for s in lines for v in s.values()), lines
    assert all(set(s) == {"base", "points", "countries"} for s in lines), lines
