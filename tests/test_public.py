"""The public face: ``import mapstream`` gives the map factory, the engine's types and sources."""

import inspect

import mapstream
from mapstream import layers


def test_every_public_name_resolves_to_its_defining_module():
    for name in mapstream.__all__:
        value = getattr(mapstream, name)
        if name == "__version__":
            assert isinstance(value, str) and value.count(".") == 2
            continue
        module = mapstream._EXPORTS[name]
        assert value is getattr(__import__(module, fromlist=[name]), name), name


def test_the_sources_implement_the_layer_protocol():
    for cls in (mapstream.TileLayer, mapstream.WMSLayer, mapstream.FeatureLayer):
        assert isinstance(cls.kind, str) and cls.kind
        for method in ("load", "fetch", "query"):
            assert callable(getattr(cls, method)), (cls, method)
        assert inspect.iscoroutinefunction(cls.query) and inspect.iscoroutinefunction(cls.fetch)
    assert mapstream.Layer is layers.Layer and mapstream.Bounds is layers.Bounds


def test_unknown_names_raise_attribute_error():
    try:
        mapstream.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("mapstream.no_such_name resolved")
