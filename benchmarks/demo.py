"""Measure the demo: start-up time, and a page of the big layer from the indexed provider
against pygeoapi's GeoJSON provider over the same points. Prints ratios from one run::

    python -m benchmarks.demo            # 200 000 points (the demo's layer)
    python -m benchmarks.demo --points 20000 --pages 5

The GeoJSON provider re-reads and filters the whole file on every request; the demo's
``FrameProvider`` keeps the frame in memory with a spatial index.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from mapstream.demo.ogcserver import PygeoapiServer
from mapstream.demo.services import demo_resources, start_demo

QUERIES = (
    "limit=1000&bbox=0,40,10,50",  # a viewport over western Europe
    "limit=1000&offset=5000",  # a page deep into the layer
)


def _page_seconds(url: str, query: str, pages: int) -> float:
    times = []
    for _ in range(pages):
        t0 = time.perf_counter()
        with urllib.request.urlopen(
            f"{url}/collections/sensors/items?f=json&{query}", timeout=600
        ) as r:
            r.read()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--points", type=int, default=0, help="points for the GeoJSON copy (0: all)"
    )
    parser.add_argument("--pages", type=int, default=3)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    services = start_demo(latency=0, fail_rate=0)
    print(
        f"demo start-up: {services.startup_seconds:.2f} s (start_demo returned after {time.perf_counter() - t0:.2f} s)"
    )
    import pyogrio

    from mapstream.demo.data import ensure_data

    paths = ensure_data()
    with tempfile.TemporaryDirectory(prefix="mapstream-measure-") as tmp:
        gdf = pyogrio.read_dataframe(paths["sensors"])
        if args.points:
            gdf = gdf.iloc[: args.points]
        geojson = Path(tmp) / "sensors.geojson"
        gdf.to_file(geojson, driver="GeoJSON", engine="pyogrio")
        size = geojson.stat().st_size / 1e6
        resources = {"sensors": demo_resources(paths)["sensors"]}
        resources["sensors"]["providers"] = [
            {"type": "feature", "name": "GeoJSON", "data": str(geojson), "id_field": "id"}
        ]
        with PygeoapiServer(resources, limit=1000) as plain:
            _page_seconds(plain.url, "limit=1", 1)  # first read
            for query in QUERIES:
                indexed = _page_seconds(services.ogc_url, query, args.pages)
                slow = _page_seconds(plain.url, query, args.pages)
                print(
                    f"page [{query}]: indexed provider {indexed * 1000:.0f} ms, GeoJSON provider "
                    f"({len(gdf)} points, {size:.0f} MB) {slow * 1000:.0f} ms: {slow / indexed:.0f}x"
                )
    services.stop()


if __name__ == "__main__":
    main()
