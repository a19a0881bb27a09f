"""Web Mercator projection: the scalar and vectorised functions agree, and invert."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from mapstream.layers.projection import (
    MAX_LAT,
    ORIGIN_SHIFT,
    lonlat_to_mercator,
    lonlat_to_mercator_arrays,
    mercator_scale,
    mercator_to_lonlat,
)


def test_arrays_agree_with_the_scalar_function():
    rng = np.random.default_rng(3)
    lon = rng.uniform(-180, 180, 2000)
    lat = rng.uniform(-89.9, 89.9, 2000)
    x, y = lonlat_to_mercator_arrays(lon, lat)
    want = np.array([lonlat_to_mercator(a, b) for a, b in zip(lon, lat, strict=True)])
    np.testing.assert_allclose(x, want[:, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(y, want[:, 1], rtol=0, atol=1e-6)


def test_round_trip_and_world_edges():
    rng = random.Random(1)
    for _ in range(500):
        lon, lat = rng.uniform(-180, 180), rng.uniform(-MAX_LAT, MAX_LAT)
        back = mercator_to_lonlat(*lonlat_to_mercator(lon, lat))
        assert back == pytest.approx((lon, lat), abs=1e-9)
    x, y = lonlat_to_mercator(180.0, MAX_LAT)
    assert x == pytest.approx(ORIGIN_SHIFT) and y == pytest.approx(ORIGIN_SHIFT)
    assert lonlat_to_mercator(0.0, 90.0) == lonlat_to_mercator(0.0, MAX_LAT)  # clamped


def test_scale_is_secant_of_latitude():
    for lat in (0.0, 30.0, -45.0, 60.0):
        assert mercator_scale(lat) == pytest.approx(1 / math.cos(math.radians(lat)))
    assert mercator_scale(90.0) == mercator_scale(MAX_LAT)  # finite at the pole
