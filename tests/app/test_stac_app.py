"""A STAC layer in the app, without a browser: its footprints are drawn over its COGs' mosaic
(app/frames.py), and the side panel's date filter (state.datetimes) searches the layer again for
the new dates. Real servers on loopback: rustac's STAC API and a range server for the COGs."""

from __future__ import annotations

import numpy as np
import pytest
from pyproj import Transformer
from rasterio.transform import from_origin

from mapstream.app.frames import iter_frames
from mapstream.app.session import MapSession
from mapstream.app.state import MapState
from mapstream.demo.stacserver import StacServer
from mapstream.layers.catalog import LayerSpec, Style
from mapstream.layers.http import Fetcher
from mapstream.layers.sources.stac import STACLayer
from mapstream.layers.viewport import Viewport
from tests.support.cogs import terrain, write_cog
from tests.support.rangeserver import RangeServer
from tests.support.stacserver import stac_servers
from tests.support.waiting import async_wait_for

from .fakes import catalog

X0, Y0, RES = 1_000_000.0, 6_000_000.0, 100.0
ORANGE = (230, 85, 13)


def _item(item_id: str, href: str, x0: float, day: str) -> dict:
    w, s, e, n = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform_bounds(
        x0, Y0 - 512 * RES, x0 + 512 * RES, Y0)
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": "dem", "bbox": [w, s, e, n],
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "properties": {"datetime": day}, "assets": {"data": {"href": href}}, "links": [],
    }


@pytest.fixture(scope="module")
def catalog_url(tmp_path_factory):
    d = tmp_path_factory.mktemp("app-stac")
    whole = terrain(512, 1024, 5)
    files = {
        "west.tif": write_cog(d / "west.tif", whole[:, :512].copy(), crs="EPSG:3857",
                              transform=from_origin(X0, Y0, RES, RES), nodata=None),
        "east.tif": write_cog(d / "east.tif", whole[:, 512:].copy(), crs="EPSG:3857",
                              transform=from_origin(X0 + 512 * RES, Y0, RES, RES), nodata=None),
    }
    files_server = RangeServer(files).start()
    items = [
        _item("west", f"{files_server.url}/west.tif", X0, "2024-03-01T00:00:00Z"),
        _item("east", f"{files_server.url}/east.tif", X0 + 512 * RES, "2024-06-01T00:00:00Z"),
    ]
    try:
        with stac_servers(StacServer(items)) as (server,):
            yield server.url
    finally:
        files_server.stop()


@pytest.fixture
async def fetcher():
    f = Fetcher(cache_dir=None, retry_attempts=1)
    yield f
    await f.aclose()


VIEW = Viewport.create((X0 + 200 * RES, X0 + 800 * RES), (Y0 - 400 * RES, Y0 - 100 * RES), 300, 150)


@pytest.mark.slow  # datashader compiles its kernels on a fresh process (~4 s)
async def test_footprints_are_drawn_over_the_mosaic(catalog_url, fetcher):
    layer = STACLayer(catalog_url, collections=["dem"], asset="data", colormap="gray")
    style = Style(color="#e6550d", line_width=2.0, opacity=1.0)
    frames = [f async for f in iter_frames(layer.load(VIEW, fetcher), VIEW, style)]
    last = frames[-1]
    assert last.complete and last.received and last.errors == ()
    rgba = last.image.rgba
    assert rgba.shape == (150, 300, 4) and (rgba[..., 3] == 255).all()  # the mosaic covers the view
    orange = np.all(np.abs(rgba[..., :3].astype(int) - ORANGE) <= 2, axis=-1)
    seam = int(round((512 - 200) * RES / (600 * RES / 300)))  # the column of the items' border
    assert orange[:, seam - 2: seam + 3].any(axis=1).mean() > 0.9  # the outline runs down the seam
    assert orange.mean() < 0.1  # outlines, not filled footprints: the mosaic stays visible
    grey = np.abs(rgba[..., 0].astype(int) - rgba[..., 1]) <= 1
    assert grey.mean() > 0.8


async def test_the_date_filter_searches_again_and_reloads(catalog_url, fetcher):
    spec = LayerSpec(name="scenes", kind="stac", url=catalog_url, collections=["dem"], asset="data",
                     datetime="2024-01-01T00:00:00Z/2024-12-31T23:59:59Z")
    layer = STACLayer.from_spec(spec, catalog_url)
    seen: list[list[str]] = []
    load = layer.load

    async def recording(viewport, f):
        async for result in load(viewport, f):
            if hasattr(result, "frame"):
                seen.append(sorted(result.frame["id"]))
            yield result

    layer.load = recording  # what the layer found for each load

    async def build(s, f):
        return layer

    session = MapSession(catalog(spec), VIEW, fetcher=fetcher, build_layer=build)
    session.view_settle = 0.0
    try:
        await session.preload()
        assert await async_wait_for(lambda: seen == [["east", "west"]], 10), seen
        session.set_datetime("scenes", "2024-05-01T00:00:00Z/2024-12-31T23:59:59Z")
        assert await async_wait_for(lambda: len(seen) == 2, 10), seen
        assert seen[1] == ["east"] and layer.datetime.startswith("2024-05-01")
        assert await async_wait_for(lambda: session.state.status("scenes").state == "done", 10)
    finally:
        await session.aclose()


def test_the_side_panel_has_a_date_filter_for_a_layer_searched_by_date():
    pytest.importorskip("panel")
    from mapstream.app.sidebar import Sidebar

    spec = LayerSpec(name="scenes", kind="stac", url="http://s.test/", collections=["dem"], asset="data",
                     datetime="2024-03-01T00:00:00Z/2024-06-30T23:59:59Z")
    other = LayerSpec(name="base", kind="tiles", url="http://t.test/{z}/{x}/{y}.png")
    state = MapState.for_layers(["scenes", "base"], visible=["scenes", "base"])
    sidebar = Sidebar(state, [spec, other], on_retry=lambda name: None)
    assert list(sidebar.dates) == ["scenes"]
    picker = sidebar.dates["scenes"]
    assert [d.isoformat() for d in picker.value] == ["2024-03-01", "2024-06-30"]
    import datetime as dt

    picker.value = (dt.date(2024, 4, 1), dt.date(2024, 4, 30))
    assert state.datetimes == {"scenes": "2024-04-01T00:00:00Z/2024-04-30T23:59:59Z"}
