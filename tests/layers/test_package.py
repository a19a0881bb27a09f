"""The ``mapstream.layers`` package itself: its exports are lazy, so its light modules stay light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mapstream.layers as layers


def test_light_modules_load_no_numpy():
    code = (
        "import sys\n"
        "import mapstream.layers.units, mapstream.layers.types\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('numpy', 'xarray', 'pandas')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_exports_resolve_to_their_modules():
    from mapstream.layers import Bounds, Layer, LayersError, Viewport
    from mapstream.layers.errors import LayersError as base
    from mapstream.layers.types import Bounds as bounds, Layer as layer
    from mapstream.layers.viewport import Viewport as viewport

    assert (Bounds, Layer, LayersError, Viewport) == (bounds, layer, base, viewport)
    assert set(layers.__all__) <= set(dir(layers))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        layers.Nope  # noqa: B018
