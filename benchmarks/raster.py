"""Raster windows benchmark: ``python -m benchmarks.raster``.

Four Cloud-Optimized GeoTIFFs (2048 x 2048 int16, 256 px tiles, deflate, overviews; two in
Web Mercator, two in UTM zone 32N) are served by the demo's tile server in its own process with
range support and 100 ms of latency per request. Sixteen windows (four per file, 512 x 512
pixels of EPSG:3857 at about the files' resolution) are read and warped onto their view's grid
(nearest), cold, by:

- ours: ``COGLayer.fetch`` for all sixteen at once through one fetcher (per-host limit 8);
- rasterio: sixteen ``rasterio.open("/vsicurl/...")`` + ``read(window=...)`` + the same
  in-memory ``reproject``, in a pool of 8 threads, with the GDAL settings TiTiler recommends
  for COGs (``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``, ``GDAL_HTTP_MERGE_CONSECUTIVE_RANGES``,
  ``GDAL_INGESTED_BYTES_AT_OPEN``, ``VSI_CACHE``), in a fresh process each run (GDAL's
  ``/vsicurl/`` cache is per process: every run starts cold).

Both must give the same pixels (checked). Prints the median of ``--runs`` runs, the ratio
ours/rasterio (target <= 0.8), our requests and bytes, and the requests the server saw from
rasterio. Then runs ``benchmarks.stac`` if that
module exists.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mapstream.layers.http import Fetcher
from mapstream.layers.sources.cog import COGLayer
from mapstream.layers.viewport import Viewport

LATENCY = 0.1
THREADS = 8
SIZE = 2048
RES = 100.0
WINDOW = 512
GDAL_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif",
    "VSI_CACHE": "TRUE",
    "GDAL_HTTP_MULTIPLEX": "YES",
}
#: (name, CRS, west, north) of the four files.
FILES = [
    ("a-3857.tif", "EPSG:3857", 1_000_000.0, 6_000_000.0),
    ("b-3857.tif", "EPSG:3857", 1_000_000.0 + SIZE * RES, 6_000_000.0),
    ("c-utm32.tif", "EPSG:32632", 400_000.0, 5_300_000.0),
    ("d-utm32.tif", "EPSG:32632", 400_000.0 + SIZE * RES, 5_300_000.0),
]


def write_files(directory: Path) -> None:
    """The four COGs (seeded terrain), written with rasterio."""
    import rasterio
    from rasterio.transform import from_origin

    from mapstream.demo.data import terrain

    for i, (name, crs, west, north) in enumerate(FILES):
        data = terrain(SIZE, SIZE, 100 + i)
        with rasterio.open(
            directory / name, "w", driver="COG", width=SIZE, height=SIZE, count=1, dtype="int16",
            crs=crs, transform=from_origin(west, north, RES, RES), nodata=-32768, blocksize=256,
            compress="deflate", predictor=2, overview_resampling="nearest",
        ) as dst:
            dst.write(data, 1)


def windows() -> list[tuple[str, tuple[float, float, float, float]]]:
    """Sixteen (file, EPSG:3857 bounds) pairs: four seeded windows inside each file."""
    import rasterio.warp

    rng = np.random.default_rng(7)
    out = []
    for name, crs, west, north in FILES:
        # the file's middle in EPSG:3857, and its pixel size there
        cx, cy = west + SIZE * RES / 2, north - SIZE * RES / 2
        (mx,), (my,) = rasterio.warp.transform(crs, "EPSG:3857", [cx], [cy])
        scale = 1.0 if crs == "EPSG:3857" else 1.47  # UTM metres at 47 N in Web Mercator
        res = RES * scale
        half = SIZE * res / 2 - WINDOW * res
        for _ in range(4):
            x0 = mx + rng.uniform(-half, half - WINDOW * res)
            y0 = my + rng.uniform(-half, half - WINDOW * res)
            out.append((name, (x0, y0, x0 + WINDOW * res, y0 + WINDOW * res)))
    return out


def viewport(bounds: tuple[float, float, float, float]) -> Viewport:
    w, s, e, n = bounds
    return Viewport.create((w, e), (s, n), WINDOW, WINDOW)


async def ours(base: str, wins) -> tuple[float, list[np.ndarray], dict]:
    import async_geotiff  # noqa: F401  (imports are not the race: rasterio's child has its own)
    import rasterio.warp  # noqa: F401

    async with Fetcher(per_host_limit=THREADS, cache_dir=None) as f:
        layers = {name: COGLayer(f"{base}/cogs/{name}") for name, *_ in FILES}
        t0 = time.perf_counter()
        results = await asyncio.gather(*(layers[n].fetch(viewport(b), f) for n, b in wins))
        elapsed = time.perf_counter() - t0
        return elapsed, [r.values for r in results], f.metrics.snapshot()


# The rasterio side runs in a fresh process (``--rasterio-child``): GDAL's caches start cold.
def rasterio_child(base: str, out_path: str) -> None:
    import concurrent.futures

    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_bounds
    from rasterio.warp import reproject, transform_bounds
    from rasterio.windows import from_bounds as window_from_bounds

    wins = windows()

    def one(item):
        name, bounds = item
        with rasterio.open(f"/vsicurl/{base}/cogs/{name}") as src:
            # the same source window as the layer reads: the view's box in the file's CRS
            sb = transform_bounds("EPSG:3857", src.crs, *bounds, densify_pts=21)
            w = window_from_bounds(*sb, transform=src.transform)
            c0, r0 = math.floor(w.col_off) - 2, math.floor(w.row_off) - 2
            c1, r1 = math.ceil(w.col_off + w.width) + 2, math.ceil(w.row_off + w.height) + 2
            win = rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)
            data = src.read(1, window=win, boundless=True, fill_value=src.nodata).astype("float32")
            data[data == src.nodata] = np.nan
            dst = np.full((WINDOW, WINDOW), np.nan, dtype="float32")
            reproject(
                data, dst, src_transform=src.window_transform(win), src_crs=src.crs, src_nodata=np.nan,
                dst_transform=from_bounds(*bounds, WINDOW, WINDOW), dst_crs="EPSG:3857",
                dst_nodata=np.nan, resampling=Resampling.nearest,
            )
            return dst

    with rasterio.Env(**GDAL_ENV):
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            arrays = list(pool.map(one, wins))
        elapsed = time.perf_counter() - t0
    np.save(out_path, np.stack(arrays))
    print(json.dumps({"elapsed": elapsed}))


def run_rasterio(base: str, workdir: Path) -> tuple[float, np.ndarray]:
    out = workdir / "rasterio.npy"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.raster", "--rasterio-child", base, str(out)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the rasterio run failed:\n{proc.stderr[-2000:]}")
    elapsed = json.loads(proc.stdout.strip().splitlines()[-1])["elapsed"]
    return elapsed, np.load(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rasterio-child", nargs=2, metavar=("BASE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rasterio_child:
        rasterio_child(*args.rasterio_child)
        return

    from mapstream.demo.data import COUNTRIES_FILE
    from mapstream.demo.tileserver import TileServer

    with tempfile.TemporaryDirectory(prefix="mapstream-bench-raster-") as tmp:
        workdir = Path(tmp)
        write_files(workdir)
        sizes = sum((workdir / name).stat().st_size for name, *_ in FILES)
        server = TileServer(COUNTRIES_FILE, latency=LATENCY, cogs=workdir)
        server.start()
        try:
            wins = windows()
            ours_t, rio_t, rio_requests = [], [], []
            same = True
            snap: dict = {}
            for _ in range(args.runs):
                t, mine, snap = asyncio.run(ours(server.url, wins))
                ours_t.append(t)
                before = server.stats()["requests"]
                t, theirs = run_rasterio(server.url, workdir)
                rio_t.append(t)
                rio_requests.append(server.stats()["requests"] - before)
                ok = all(
                    np.array_equal(np.isnan(a[0]), np.isnan(b)) and np.array_equal(a[0][~np.isnan(b)], b[~np.isnan(b)])
                    for a, b in zip(mine, theirs, strict=True)
                )
                same = same and ok
        finally:
            server.stop()
    o, r = statistics.median(ours_t), statistics.median(rio_t)
    print(f"{len(wins)} windows of {WINDOW}x{WINDOW} px over {len(FILES)} COGs ({sizes / 2**20:.1f} MiB), "
          f"{LATENCY * 1000:.0f} ms latency, {THREADS} connections; median of {args.runs} cold runs")
    print(f"  mapstream COGLayer.fetch:             {o:6.2f} s  ({snap.get('requests')} requests, "
          f"{snap.get('bytes', 0) / 2**20:.2f} MiB)")
    print(f"  rasterio /vsicurl/ in {THREADS} threads:      {r:6.2f} s  ({statistics.median(rio_requests):.0f} requests)")
    print(f"  ratio mapstream / rasterio: {o / r:.2f}x (target <= 0.8)   pixels equal: {same}")
    print(f"  runs: mapstream {[round(t, 2) for t in ours_t]}  rasterio {[round(t, 2) for t in rio_t]}")

    if (Path(__file__).with_name("stac.py")).exists():
        from benchmarks import stac

        sys.argv[1:] = []  # its own defaults, not this benchmark's options
        stac.main()


if __name__ == "__main__":
    main()
