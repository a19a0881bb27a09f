"""STAC fan-out: a search of several pages over 3 catalogs at once, against pystac-client.

Three real STAC APIs on loopback (rustac's server behind the demo's front, 100 ms added to every
request) hold one collection each, paged in 4, 7 and 10 pages. Measured, cold (a new Fetcher
with no disk cache, a new pystac-client Client) and the median of ``--runs``:

- **fan-out**: one :meth:`STACLayer.search <mapstream.layers.sources.stac.STACLayer.search>`
  over the three catalogs (every catalog's pages walked at once);
- **slowest alone**: the same search over the catalog with the most pages only: the ideal the
  fan-out should be close to (paging is sequential within a catalog);
- **pystac-client**: ``Client.open(url).search(...).item_collection()`` for each catalog, one
  after another (its API pages one request at a time).

Prints the seconds, the ratios fan-out / slowest alone (target: close to 1) and pystac-client /
fan-out, and checks that every side found the same items::

    python -m benchmarks.stac [--runs 3] [--latency 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from mapstream.demo.stacserver import StacServer
from mapstream.layers.http import Fetcher
from mapstream.layers.sources.stac import STACLayer

LIMIT = 50
PAGES = (4, 7, 10)  # pages per catalog
BBOX = (-180.0, -90.0, 180.0, 90.0)


def _items(collection: str, n: int, prefix: str) -> list[dict]:
    out = []
    for k in range(n):
        x = -170.0 + (k % 340)
        y = -60.0 + (k // 340) % 120
        out.append({
            "type": "Feature", "stac_version": "1.0.0", "id": f"{prefix}-{k:05d}", "collection": collection,
            "bbox": [x, y, x + 1, y + 1],
            "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + 1, y], [x + 1, y + 1], [x, y + 1], [x, y]]]},
            "properties": {"datetime": f"2024-{1 + k % 12:02d}-{1 + k % 28:02d}T00:00:00Z"},
            "assets": {"data": {"href": f"http://127.0.0.1:9/{collection}/{k}.tif"}}, "links": [],
        })
    return out


async def _ours(urls: list[str]) -> tuple[float, set]:
    async with Fetcher(cache_dir=None) as fetcher:
        layer = STACLayer(urls, collections=["scenes"], asset="data", limit=LIMIT)
        t = time.perf_counter()
        result = await layer.search(BBOX, fetcher)
        elapsed = time.perf_counter() - t
    assert not result.errors, result.errors
    return elapsed, set(result.frame["id"])


def _pystac(urls: list[str]) -> tuple[float, set]:
    from pystac_client import Client

    found = set()
    t = time.perf_counter()
    for url in urls:
        client = Client.open(url)
        search = client.search(collections=["scenes"], bbox=list(BBOX), limit=LIMIT)
        found |= {item.id for item in search.items()}
    return time.perf_counter() - t, found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="STAC fan-out over 3 loopback catalogs vs pystac-client.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds added to every request")
    args = parser.parse_args(argv)
    # Distinct ids per catalog: the same (collection, id) in two catalogs is one item to us.
    servers = [StacServer(_items("scenes", p * LIMIT, f"c{i}"), latency=args.latency) for i, p in enumerate(PAGES)]
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda s: s.start(60), servers))
        urls = [s.url for s in servers]
        slowest = urls[PAGES.index(max(PAGES))]
        fan, alone, pc = [], [], []
        for _ in range(args.runs):
            t, ours = asyncio.run(_ours(urls))
            fan.append(t)
            t, _ = asyncio.run(_ours([slowest]))
            alone.append(t)
            t, theirs = _pystac(urls)
            pc.append(t)
        assert ours == theirs and len(ours) == sum(PAGES) * LIMIT, (len(ours), len(theirs))
    finally:
        for s in servers:
            s.stop()
    f, a, p = (statistics.median(x) for x in (fan, alone, pc))
    print(f"STAC search over 3 catalogs ({', '.join(map(str, PAGES))} pages of {LIMIT} items), "
          f"{args.latency * 1000:.0f} ms latency; median of {args.runs} cold runs; {len(ours)} items, same on both sides")
    print(f"  mapstream fan-out (3 catalogs at once): {f:6.2f} s")
    print(f"  mapstream, the slowest catalog alone:   {a:6.2f} s  ({max(PAGES)} pages + landing page)")
    print(f"  pystac-client, one catalog after another: {p:6.2f} s")
    print(f"  ratio fan-out / slowest alone: {f / a:.2f}x (target: close to 1)   pystac-client / fan-out: {p / f:.2f}x")
    print(f"  runs: fan-out {[round(t, 2) for t in fan]}  alone {[round(t, 2) for t in alone]}  pystac-client {[round(t, 2) for t in pc]}")


if __name__ == "__main__":
    main()
