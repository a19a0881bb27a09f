"""STAC API servers on loopback for the tests: rustac's server (:class:`StacServer` of
:mod:`mapstream.demo.stacserver`) over items the tests make.

:func:`make_items` builds STAC Items on a grid of 1-degree footprints (``lon0 + i``, 40..41 N),
one a day from 2024-01-01, with a ``data`` asset; :func:`stac_servers` starts several servers
at once (each on a port of its own, port 0) and stops them. Fixtures: ``stac_pair`` (two
servers sharing ten items, one paging POST with ``merge``, the other as rustac does),
``stac_get`` (GET-only search).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from mapstream.demo.stacserver import StacServer

__all__ = ["make_items", "stac_servers", "stac_pair", "stac_get"]


def make_items(
    collection: str, n: int, *, start: int = 0, lon0: float = -10.0, href: str = "http://127.0.0.1:9/{id}.tif"
) -> list[dict[str, Any]]:
    """``n`` items of ``collection``: ids ``{collection}-{k:03d}`` for k from ``start``; item k
    covers lon ``lon0 + k`` to ``lon0 + k + 1``, lat 40 to 41, dated 2024-01-01 + k days."""
    items = []
    for k in range(start, start + n):
        x = lon0 + k
        item_id = f"{collection}-{k:03d}"
        day = f"2024-{1 + k // 28:02d}-{1 + k % 28:02d}T00:00:00Z"
        items.append({
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": item_id,
            "collection": collection,
            "bbox": [x, 40.0, x + 1, 41.0],
            "geometry": {"type": "Polygon", "coordinates": [[[x, 40], [x + 1, 40], [x + 1, 41], [x, 41], [x, 40]]]},
            "properties": {"datetime": day},
            "assets": {"data": {"href": href.format(id=item_id), "roles": ["data"]}},
            "links": [],
        })
    return items


@contextlib.contextmanager
def stac_servers(*servers: StacServer) -> Iterator[Sequence[StacServer]]:
    """Start ``servers`` at once (each takes about a second), stop them all at the end."""
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda s: s.start(60), servers))
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def stac_pair() -> Iterator[Sequence[StacServer]]:
    """Two catalogs: A (POST paging with ``merge``) holds ``dem`` 0-29 and ``utm`` 0-9; B
    (rustac's POST paging) holds ``dem`` 20-39: ``dem`` 20-29 are in both."""
    a = StacServer(make_items("dem", 30) + make_items("utm", 10), paging="merge")
    b = StacServer(make_items("dem", 20, start=20), paging="post")
    with stac_servers(a, b) as pair:
        yield pair


@pytest.fixture(scope="module")
def stac_get() -> Iterator[StacServer]:
    """One catalog that offers GET search only: ``dem`` 0-24."""
    with stac_servers(StacServer(make_items("dem", 25), paging="get")) as (server,):
        yield server
