"""Fake layers and catalogs for component tests of the app (no server, no network).

The fakes implement the engine's :class:`~mapstream.layers.types.Layer` contract: ``load``
yields :class:`~mapstream.layers.types.Mosaic` or :class:`~mapstream.layers.types.FeaturePage`,
``query`` answers rows of properties.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import shapely
import xarray as xr

from mapstream.layers.types import FeaturePage, Mosaic, Progress


def spec(name, kind="tiles", priority=0, visible=True, style=None, max_features=None):
    return SimpleNamespace(
        name=name, title=name.title(), kind=kind, priority=priority, visible=visible,
        style=style, max_features=max_features, attribution=None,
    )


def catalog(*specs):
    return SimpleNamespace(title="test", layers=list(specs), uses_demo=False)


class FakeTiles:
    """Yields ``frames`` mosaics filling the viewport with one colour, ``delay`` apart."""

    kind = "tiles"
    attribution = None

    def __init__(self, frames=3, delay=0.01, color=(200, 30, 30, 255), fail=False):
        self.frames, self.delay, self.color, self.fail = frames, delay, color, fail
        self.loads: list = []
        self.finished: list = []

    async def load(self, viewport, fetcher):
        self.loads.append(viewport)
        (x0, x1), (y0, y1) = viewport.x_range, viewport.y_range
        for i in range(1, self.frames + 1):
            await asyncio.sleep(self.delay)
            if self.fail:
                raise ConnectionError("upstream refused the connection")
            data = np.zeros((8, 8, 4), dtype=np.uint8)
            data[: 8 * i // self.frames] = self.color
            xs = np.linspace(x0, x1, 8, endpoint=False) + (x1 - x0) / 16
            ys = np.linspace(y1, y0, 8, endpoint=False) - (y1 - y0) / 16
            image = xr.DataArray(data, dims=("y", "x", "band"), coords={"y": ys, "x": xs, "band": list("rgba")},
                                 attrs={"crs": "EPSG:3857"})
            yield Mosaic(image, Progress(i, self.frames, "tiles", complete=i == self.frames))
        self.finished.append(viewport)

    async def query(self, lon, lat, fetcher):
        return []  # an XYZ layer has no point query


class FakeFeatures:
    """Yields ``pages`` pages of points spread over the viewport; ``props`` answers ``query``."""

    kind = "features"
    attribution = None

    def __init__(self, pages=2, per_page=50, delay=0.01, props=None):
        self.pages, self.per_page, self.delay = pages, per_page, delay
        self.props = props or {"name": "<script>alert(1)</script>"}
        self.loads: list = []

    async def load(self, viewport, fetcher):
        self.loads.append(viewport)
        (x0, x1), (y0, y1) = viewport.x_range, viewport.y_range
        rng = np.random.default_rng(0)
        for i in range(1, self.pages + 1):
            await asyncio.sleep(self.delay)
            xs = rng.uniform(x0, x1, self.per_page)
            ys = rng.uniform(y0, y1, self.per_page)
            frame = gpd.GeoDataFrame({"id": range(self.per_page)}, geometry=shapely.points(xs, ys), crs=3857)
            yield FeaturePage(
                frame, Progress(i, self.pages, "pages", features=i * self.per_page, complete=i == self.pages),
                (), f"fake://page{i}",
            )

    async def query(self, lon, lat, fetcher):
        await asyncio.sleep(self.delay)
        return [dict(self.props)]


def builder(layers):
    """A ``build_layer`` replacement returning ``layers[spec.name]``; counts builds."""
    calls: list[str] = []

    async def build(spec, fetcher):
        calls.append(spec.name)
        await asyncio.sleep(0)
        return layers[spec.name]

    build.calls = calls
    return build
