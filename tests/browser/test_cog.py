"""The demo's elevation COGs in the served app: toggled on, the map draws their mosaic (terrain
colours over the Alps) and the status line reports its tiles; toggled off, the basemap again."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from mapstream.layers.catalog import DEMO_CATALOG

from tests.support.waiting import wait_for

from .served import collect_errors, launch, plot_pixels, served_app, status_lines, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory):
    data = yaml.safe_load(DEMO_CATALOG.read_text())
    data["layers"] = [l for l in data["layers"] if l["name"] in ("basemap", "elevation")]
    path = tmp_path_factory.mktemp("catalog") / "catalog.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def _terrain_pixels(pixels: np.ndarray) -> int:
    """Pixels of the terrain colormap's greens and browns, which the basemap never draws."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    green = (g > 150) & (r < 140) & (b < 140)
    brown = (r > 100) & (r < 180) & (g > 70) & (g < 140) & (b > 50) & (b < 120) & (r > g)
    return int((green | brown).sum())


def test_the_elevation_layer_draws_when_toggled_on(catalog_file):
    from playwright.sync_api import sync_playwright

    with served_app(catalog_file) as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors = collect_errors(page)
        page.goto(url)
        page.wait_for_selector("canvas", timeout=60_000)
        wait_status(page, "basemap", "done")
        assert _terrain_pixels(plot_pixels(page)) == 0
        page.get_by_label("Elevation (COGs, synthetic)").check()
        wait_status(page, "elevation", "done")
        assert "failed" not in status_lines(page)["elevation"]
        # the frame reaches the canvas after the status line
        assert wait_for(lambda: _terrain_pixels(plot_pixels(page)) > 200, 30)
        drawn = _terrain_pixels(plot_pixels(page))
        page.get_by_label("Elevation (COGs, synthetic)").uncheck()
        wait_status(page, "elevation", "hidden")
        assert wait_for(lambda: _terrain_pixels(plot_pixels(page)) < drawn / 10, 30)
        browser.close()
    assert errors == [], f"JavaScript console errors: {errors}"
