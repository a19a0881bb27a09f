"""Every source implements the Layer protocol and registers its kind; the catalog builds
layers through that registry, not by branching on the kind."""

from __future__ import annotations

import pytest

import mapstream
from mapstream.layers import Bounds, Layer
from mapstream.layers.catalog import KINDS, LayerSpec
from mapstream.layers.sources import SOURCES, layer_class
from mapstream.layers.sources.cog import COGLayer
from mapstream.layers.sources.features import FeatureLayer
from mapstream.layers.sources.tiled import TiledLayer
from mapstream.layers.sources.tiles import TileLayer
from mapstream.layers.sources.wms import WMSLayer

LAYERS = {
    "tiles": TileLayer("https://t.test/{z}/{x}/{y}.png", name="base"),
    "wms": WMSLayer("https://w.test/wms", "roads", name="roads"),
    "features": FeatureLayer("https://f.test/api", "points", name="points"),
    "cog": COGLayer("https://c.test/dem.tif", rescale=(0, 3000), colormap="terrain", name="dem"),
}
# What the app and the CLI call on every layer.
APP_FACING = ("load", "fetch", "query", "kind", "name", "attribution")


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_each_source_is_a_layer(kind):
    layer = LAYERS[kind]
    assert isinstance(layer, Layer)
    assert layer.kind == type(layer).kind == kind
    for attr in APP_FACING:
        assert hasattr(layer, attr), attr
    for method in ("from_spec", "request_prefixes"):
        assert callable(getattr(type(layer), method)), method


def test_registry_holds_the_catalog_kinds():
    assert layer_class("tiles") is TileLayer
    assert layer_class("wms") is WMSLayer
    assert layer_class("features") is FeatureLayer
    assert layer_class("cog") is COGLayer
    assert set(SOURCES) == set(KINDS)


def test_the_tile_pipeline_base_registers_no_kind():
    # layer_class imports every module of the package, the base's tiled.py among them
    layer_class("tiles")
    assert TiledLayer not in SOURCES.values() and not hasattr(TiledLayer, "kind")
    assert issubclass(TileLayer, TiledLayer) and issubclass(WMSLayer, TiledLayer)


async def test_tiles_hold_no_attributes_to_query():
    assert await LAYERS["tiles"].query(2.35, 48.85, fetcher=None) == []


@pytest.mark.parametrize(
    "spec",
    [
        dict(name="t", kind="tiles", url="https://t.test/{z}/{x}/{y}.png", max_zoom=12),
        dict(name="o", kind="tiles", provider="OpenStreetMap.Mapnik", attribution="OSM"),
        dict(name="w", kind="wms", url="https://w.test/wms?map=x", wms_layers="a,b"),
        dict(name="f", kind="features", url="https://f.test/api", collection="c", page_size=50),
        dict(name="c", kind="cog", urls=["https://c.test/a.tif", "https://c.test/b.tif"], bands=[1],
             rescale=[0, 3000], style={"cmap": "terrain"}),
    ],
    ids=lambda d: d["name"],
)
def test_from_spec_builds_the_class_of_the_kind(spec):
    spec = LayerSpec(**spec)
    cls = layer_class(spec.kind)
    layer = cls.from_spec(spec, spec.url, min_zoom=spec.min_zoom)
    assert type(layer) is cls and layer.name == spec.name and isinstance(layer, Layer)
    assert all(p.startswith("https://") for p in layer.request_prefixes())


def test_public_face_exports_bounds_and_layer():
    assert mapstream.Bounds is Bounds and mapstream.Layer is Layer
    assert mapstream.TileLayer is TileLayer and mapstream.FeatureLayer is FeatureLayer
