"""TileService: tiles of any layer rendered once, shared, cancelled when nobody waits (fakes)."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image as PILImage

from mapstream.app.session import MapSession
from mapstream.app.tiles import EMPTY_PNG, TILE_SIZE, TileService, UnknownLayerError, view_tiles, zoom_for_view
from mapstream.layers.viewport import Viewport

from .fakes import FakeFeatures, FakeTiles, builder, catalog, spec


def _rgba(png: bytes) -> np.ndarray:
    with PILImage.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGBA"))


def _service(layers):
    return TileService(fetcher=object(), build_layer=builder(layers))


def test_concurrent_requests_share_one_render_and_the_next_comes_from_the_cache():
    async def main():
        tiles = FakeTiles(frames=2)
        svc = _service({"base": tiles})
        token = svc.register(spec("base"))
        a, b = await asyncio.gather(svc.tile(token, 2, 1, 1), svc.tile(token, 2, 1, 1))
        again = await svc.tile(token, 2, 1, 1)
        return svc, token, tiles, a, b, again

    svc, token, tiles, a, b, again = asyncio.run(main())
    assert svc.renders_of(token) == 1 and len(tiles.loads) == 1
    assert a.png == b.png == again.png and again.seconds == 0.0
    rgba = _rgba(a.png)  # the fake's mosaic is 8x8 pixels over the tile
    assert (rgba[..., :3] == (200, 30, 30)).all(axis=-1).mean() > 0.9  # the layer's colour, everywhere
    vp = tiles.loads[0]
    assert (vp.width, vp.height) == (TILE_SIZE, TILE_SIZE)


def test_columns_wrap_around_the_world():
    async def main():
        svc = _service({"base": FakeTiles(frames=1)})
        token = svc.register(spec("base"))
        east = await svc.tile(token, 1, 1, 0)
        west_of_west = await svc.tile(token, 1, -1, 0)  # column -1 is column 1
        return svc.renders_of(token), east, west_of_west

    renders, east, wrapped = asyncio.run(main())
    assert renders == 1 and east.png == wrapped.png


def test_rows_outside_the_world_are_empty_and_unknown_layers_refused():
    async def main():
        svc = _service({"base": FakeTiles(frames=1)})
        token = svc.register(spec("base"))
        outside = await svc.tile(token, 1, 0, 5)
        with pytest.raises(UnknownLayerError):
            await svc.tile("nope-123", 1, 0, 0)
        return outside, svc.renders_of(token)

    outside, renders = asyncio.run(main())
    assert outside.png == EMPTY_PNG and renders == 0


def test_a_failed_tile_raises_and_is_rendered_again_next_time():
    async def main():
        tiles = FakeTiles(frames=1, fail=True)
        svc = _service({"base": tiles})
        token = svc.register(spec("base"))
        for _ in range(2):
            with pytest.raises(Exception, match="refused"):
                await svc.tile(token, 3, 2, 2)
        return tiles

    tiles = asyncio.run(main())
    assert len(tiles.loads) == 2  # errors are never cached


def test_a_render_nobody_waits_for_is_cancelled():
    async def main():
        tiles = FakeTiles(frames=3, delay=0.2)
        svc = _service({"base": tiles})
        token = svc.register(spec("base"))
        task = asyncio.ensure_future(svc.tile(token, 2, 0, 0))
        while not tiles.loads:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.8)  # longer than the whole load would take
        return tiles, svc

    tiles, svc = asyncio.run(main())
    assert tiles.finished == [] and svc.stats()["renders_in_flight"] == 0


def test_feature_tiles_draw_their_points():
    async def main():
        svc = _service({"pts": FakeFeatures(pages=2, per_page=40)})
        token = svc.register(spec("pts", kind="features"))
        return await svc.tile(token, 4, 5, 6)

    tile = asyncio.run(main())
    assert tile.features == 80
    assert np.count_nonzero(_rgba(tile.png)[..., 3]) >= 40


def test_two_sessions_on_one_view_cost_one_render_per_tile():
    vp = Viewport.create((-2e6, 2e6), (-1.5e6, 1.5e6), 512, 384)
    z = zoom_for_view(vp)
    expected = {(t.z, t.x % 2**t.z, t.y) for t in view_tiles(vp, z, border=0)}
    ring = {(t.z, t.x % 2**t.z, t.y) for t in view_tiles(vp, z, border=1)}
    distinct = len(ring) + 4 * min(10, len(expected))  # view, ring and the next zoom's children

    async def main():
        layers = {"base": FakeTiles(frames=1)}
        svc = _service(layers)
        cat = catalog(spec("base"))
        sessions = [MapSession(cat, vp, fetcher=object(), build_layer=builder(layers), tiles=svc) for _ in range(2)]
        for s in sessions:
            s.view_settle = 0
            s.set_viewport(vp)
        for _ in range(400):
            if all(s.state.status("base").state == "done" for s in sessions):
                break
            await asyncio.sleep(0.01)
        texts = [s.state.status("base").text() for s in sessions]
        token = sessions[0].tokens["base"]
        view_renders = svc.renders_of(token)
        for s in sessions:
            await s.aclose()
        return texts, sessions[0].tokens == sessions[1].tokens, view_renders, svc

    texts, same_token, renders, svc = asyncio.run(main())
    assert same_token
    assert all(t.startswith("done") and "tiles" in t for t in texts), texts
    # both sessions asked for every tile of the view; each distinct tile was rendered once
    assert svc.requests >= 2 * len(expected)
    assert len(expected) <= renders <= distinct
    assert svc.stats()["tiles_cached"] >= len(expected)
