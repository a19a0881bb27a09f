"""The served app in headless Chromium, on the embedded demo: pixels on the canvas, not only DOM.

One server for the module (demo layers, the heavy 200 000-point layer hidden, plus a layer
pointed at a closed loopback port) and one under ``--prefix``. Every server is stopped at
teardown together with the demo services it started.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from mapstream.layers.catalog import DEMO_CATALOG

from .served import (
    OCEAN, collect_errors, drag, fraction_blank, fraction_near, fraction_purple, free_port, launch, plot_box, plot_pixels,
    served_app, status_lines, wait_status, wait_until,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BASEMAP, COUNTRIES, BROKEN = "basemap", "countries", "broken"


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory):
    data = yaml.safe_load(DEMO_CATALOG.read_text())
    for layer in data["layers"]:
        if layer["name"] == "sensors":
            layer["visible"] = False  # 200 000 points: the benchmark covers it, not every test
    dead = free_port()  # nothing listens there: connections are refused
    data["layers"].append({
        "name": "broken", "title": "Broken tiles", "kind": "tiles", "priority": 9,
        "url": f"http://127.0.0.1:{dead}/{{z}}/{{x}}/{{y}}.png",
    })
    path = tmp_path_factory.mktemp("catalog") / "catalog.yml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def app_url(catalog_file):
    with served_app(catalog_file) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    pg = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = collect_errors(pg)
    pg.goto(app_url)
    pg.wait_for_selector("canvas", timeout=60_000)
    yield pg
    pg.close()
    assert errors == [], f"JavaScript console errors: {errors}"


def _loaded(page):
    wait_status(page, BASEMAP, "done")
    wait_status(page, COUNTRIES, "done")
    return wait_until(page, lambda: (p := plot_pixels(page)) is not None and fraction_purple(p) > 0.05 and p,
                      what="countries drawn")


def test_renders_basemap_and_priority_layers_and_reports_a_failing_layer(page):
    pixels = _loaded(page)
    assert fraction_near(pixels, OCEAN) > 0.2, "basemap water not on the canvas"
    assert fraction_purple(pixels) > 0.05, "countries not on the canvas"
    assert fraction_blank(pixels) < 0.05
    # the layer on a dead port shows its error and a retry button; the others still work
    err = wait_status(page, BROKEN, "error")
    assert "127.0.0.1" in err or "refused" in err.lower() or "connect" in err.lower()
    assert page.get_by_role("button", name="Retry").count() == 1
    assert status_lines(page)[BASEMAP].startswith("done")


def test_pan_loads_new_data_and_a_burst_ends_on_the_final_view(page):
    _loaded(page)
    box = plot_box(page)
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -400)  # zoom in, so that pans stay inside the world
    wait_until(page, lambda: fraction_blank(plot_pixels(page)) < 0.05, what="tiles after zooming in")
    wait_status(page, BASEMAP, "done")
    before = plot_pixels(page)
    drag(page, -600)  # pan east by more than the mosaic's margin: the right part needs new tiles
    wait_until(page, lambda: fraction_blank(plot_pixels(page)) < 0.05, what="new tiles after the pan")
    wait_status(page, BASEMAP, "done")
    assert np.abs(plot_pixels(page) - before).sum(-1).mean() > 5  # the view shows other data
    for dx, dy in [(120, 40), (-200, 0), (150, -60), (-180, 80), (220, -30), (-300, 0)]:
        drag(page, dx, dy, steps=2)  # a burst, faster than loads complete
    wait_status(page, BASEMAP, "done", timeout=120)
    wait_status(page, COUNTRIES, "done", timeout=120)
    final = wait_until(page, lambda: (p := plot_pixels(page)) is not None and fraction_blank(p) < 0.05 and p,
                       what="the final view fully drawn")
    assert fraction_near(final, OCEAN) > 0.05
    assert fraction_purple(final) > 0.02
    page.wait_for_timeout(1500)  # nothing stale arrives afterwards
    assert fraction_blank(plot_pixels(page)) < 0.05


def test_toggling_a_layer_hides_and_shows_it(page):
    _loaded(page)
    page.locator("input[type=checkbox]").nth(1).click()  # Countries (priority order)
    wait_until(page, lambda: fraction_purple(plot_pixels(page)) < 0.005, what="countries hidden")
    assert fraction_near(plot_pixels(page), OCEAN) > 0.2  # basemap still there
    page.locator("input[type=checkbox]").nth(1).click()  # Countries (priority order)
    wait_until(page, lambda: fraction_purple(plot_pixels(page)) > 0.05, what="countries shown again")


def test_app_works_under_a_prefix(browser):
    with served_app(prefix="/foo") as url:
        assert "/foo/app" in url
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        errors = collect_errors(pg)
        try:
            pg.goto(url)
            pg.wait_for_selector("canvas", timeout=60_000)
            wait_status(pg, BASEMAP, "done")
            wait_until(pg, lambda: fraction_near(plot_pixels(pg), OCEAN) > 0.2, what="basemap under /foo")
        finally:
            pg.close()
        assert errors == []


FIGURE_JS = """() => { const out = []; for (const doc of Bokeh.documents) { for (const m of doc._all_models.values()) {
  if (m.x_range && m.y_range && m.inner_width) out.push([m.inner_width, m.inner_height, m.x_range.start,
  m.x_range.end, m.y_range.start, m.y_range.end]); } } return out; }"""


@pytest.mark.parametrize("size", [(800, 1000), (1400, 600)], ids=["tall", "wide"])
def test_the_map_keeps_one_metre_as_wide_as_tall_in_any_window(browser, app_url, size):
    pg = browser.new_page(viewport={"width": size[0], "height": size[1]})
    errors = collect_errors(pg)
    try:
        pg.goto(app_url)
        pg.wait_for_selector("canvas", timeout=60_000)
        wait_status(pg, BASEMAP, "done")

        def square():
            figures = pg.evaluate(FIGURE_JS)
            if len(figures) != 1:
                return None
            w, h, x0, x1, y0, y1 = figures[0]
            return abs(((x1 - x0) / w) / ((y1 - y0) / h) - 1) < 0.01 and figures[0]

        w, h, x0, x1, y0, y1 = wait_until(pg, square, what="equal metres per pixel across and up")
        # the initial view (most of the world) is still all in view: only widened
        assert x0 <= -18_900_000 and x1 >= 18_900_000
        assert y0 <= -8_399_000 and y1 >= 12_932_000
        wait_status(pg, COUNTRIES, "done")
    finally:
        pg.close()
    assert errors == []
