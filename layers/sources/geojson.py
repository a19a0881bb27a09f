"""GeoJSON FeatureCollection bytes -> GeoDataFrame, fast, and off the event loop.

:func:`parse_feature_collection` is the pure, synchronous parser: orjson for the document,
shapely's vectorised constructors for geometries (a fast path builds all-point pages straight
from a coordinate array), pandas for typed properties, and a vectorised reprojection to
EPSG:3857. Invalid geometries are kept and flagged in a boolean ``valid`` column; features with
no geometry are kept with a missing geometry and ``valid=False``.

:func:`parse_off_loop` runs it where it cannot stall the event loop, and :func:`parsed_page`
parses a page once per process (keyed by the hash of its bytes in the fetcher's memory LRU).
Parsing holds the GIL, so a thread is not enough for big pages (the loop waits for the GIL): by
default it runs in a small process pool, whose workers never run the caller's ``__main__``
(``workers.py``), and only small pages (below ``INLINE_THREAD_BYTES``) go to a thread, where
process start-up and pickling would cost more than they save. ``benchmarks/features.py``
measures the event loop's lag both ways.

Measured on the shared 2-core build machine (``python -m benchmarks.features``; noisy):
this parser ~39 MB/s on 1 000-point pages, ``pyogrio.read_dataframe(bytes)`` ~21 MB/s, bare
``orjson.loads`` ~90 MB/s (msgspec is not a dependency). One 17 MB page: in a thread the loop's
p99 lag was ~360 ms, in the process pool ~18 ms; a 100-page concurrent load kept p99 lag
~4-9 ms with the pool vs ~44 ms with threads.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import hashlib
import logging
import os
import signal
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ParseError
from ..projection import lonlat_to_mercator_arrays
from .workers import mainless_context

if TYPE_CHECKING:  # pragma: no cover
    from ..http import Fetcher

__all__ = [
    "FeatureCollectionMeta",
    "parse_feature_collection",
    "parse_off_loop",
    "parsed_page",
    "shutdown_pool",
    "warm_pool",
]

#: Where :func:`parse_off_loop` parses by default: ``"auto"``, ``"thread"`` or ``"process"``.
DEFAULT_EXECUTOR = "auto"
#: Pages smaller than this are parsed in a thread (cheaper than a round trip to a process).
INLINE_THREAD_BYTES = 32 * 1024

CRS84 = ("OGC:CRS84", "EPSG:4326", "CRS84")


class FeatureCollectionMeta(dict):  # type: ignore[type-arg]
    """The non-feature members of a page: ``numberMatched``, ``numberReturned``, ``links``."""


def _to_mercator(geoms: np.ndarray) -> np.ndarray:
    import shapely

    def fn(coords: np.ndarray) -> np.ndarray:
        mx, my = lonlat_to_mercator_arrays(coords[:, 0], coords[:, 1])
        return np.column_stack([mx, my])

    return shapely.transform(geoms, fn)


def parse_feature_collection(
    content: bytes,
    *,
    url: str | None = None,
    source_crs: str = "OGC:CRS84",
    datetime_columns: Sequence[str] = (),
) -> tuple[Any, FeatureCollectionMeta]:
    """Parse one GeoJSON page into a GeoDataFrame in EPSG:3857 and the page's metadata.

    Parameters
    ----------
    content
        The response body.
    url
        Named in errors.
    source_crs
        CRS of the coordinates (``"OGC:CRS84"`` by default, ``"EPSG:3857"`` when the server
        reprojected for us). Axis order is always (x, y) / (lon, lat) as GeoJSON requires.
    datetime_columns
        Properties to convert to UTC datetimes (the queryables that say ``format: date-time``).

    Returns
    -------
    (GeoDataFrame, FeatureCollectionMeta)
        Columns: ``id`` (when features have ids), the properties with their JSON types, a
        boolean ``valid`` and ``geometry``.

    Raises
    ------
    ParseError
        Not JSON, not a FeatureCollection, or a geometry that cannot be read.

    Examples
    --------
    >>> body = (b'{"type":"FeatureCollection","numberMatched":2,"features":['
    ...         b'{"type":"Feature","id":"a","properties":{"n":1,"ok":true},'
    ...         b'"geometry":{"type":"Point","coordinates":[0,0]}},'
    ...         b'{"type":"Feature","id":"b","properties":{"n":2,"ok":false},'
    ...         b'"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,1],[1,0],[0,1],[0,0]]]}}]}')
    >>> gdf, meta = parse_feature_collection(body)
    >>> list(gdf.columns), gdf["valid"].tolist(), meta["numberMatched"], str(gdf.crs)
    (['id', 'n', 'ok', 'valid', 'geometry'], [True, False], 2, 'EPSG:3857')
    """
    import geopandas as gpd
    import orjson
    import pandas as pd
    import shapely

    try:
        doc = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"malformed GeoJSON page: {exc}", url=url) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("features"), list):
        raise ParseError("response is not a GeoJSON FeatureCollection", url=url)
    features = doc["features"]
    meta = FeatureCollectionMeta((k, v) for k, v in doc.items() if k != "features")
    n = len(features)
    try:
        geoms_json = [f.get("geometry") for f in features]
        if n and all(g is not None and g.get("type") == "Point" for g in geoms_json):
            xy = np.array([g["coordinates"][:2] for g in geoms_json], dtype=float).reshape(n, 2)
            if source_crs.upper() in CRS84:
                xy = np.column_stack(lonlat_to_mercator_arrays(xy[:, 0], xy[:, 1]))
            geoms = shapely.points(xy)
        else:
            strings = np.array(
                [None if g is None else orjson.dumps(g).decode() for g in geoms_json], dtype=object
            )
            geoms = shapely.from_geojson(strings, on_invalid="ignore")
            if source_crs.upper() in CRS84 and n:
                geoms = _to_mercator(geoms)
        props = pd.DataFrame.from_records(
            [f.get("properties") or {} for f in features], index=pd.RangeIndex(n)
        )
    except (AttributeError, TypeError, ValueError, KeyError, IndexError, shapely.errors.ShapelyError) as exc:
        raise ParseError(f"unreadable feature in GeoJSON page: {exc}", url=url) from exc
    if n and any("id" in f for f in features):
        props.insert(0, "id", [f.get("id") for f in features], allow_duplicates=True)
        if "id" in props.columns[1:]:  # a property also named "id": keep the feature id
            props = props.loc[:, ~props.columns.duplicated()]
    for col in datetime_columns:
        if col in props.columns:
            props[col] = pd.to_datetime(props[col], utc=True, errors="coerce")
    valid = np.zeros(n, dtype=bool)
    present = ~shapely.is_missing(geoms) if n else valid
    if n:
        valid[present] = shapely.is_valid(geoms[present])
    props["valid"] = valid
    return gpd.GeoDataFrame(props, geometry=gpd.GeoSeries(geoms, crs="EPSG:3857")), meta


_POOL: concurrent.futures.ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_POOL_BROKEN = False
logger = logging.getLogger(__name__)


def _pool() -> concurrent.futures.ProcessPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            # forkserver: never fork a process that runs threads and an event loop. The server
            # imports the parser and its dependencies once and forks the workers from it ready
            # to parse; its default, importing ``__main__``, would load the host program
            # (``panel serve``: Panel and Bokeh). The workers skip ``__main__`` too
            # (workers.py): a script without a main guard would otherwise run in each of them.
            ctx = mainless_context(preload=[__name__, "orjson", "shapely", "geopandas"])
            workers = max(1, min(4, (os.cpu_count() or 2)))
            _POOL = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_ignore_sigint
            )
            atexit.register(shutdown_pool)  # before interpreter teardown, not during it
        return _POOL


def _ignore_sigint() -> None:
    """Parser processes ignore SIGINT: it is meant for their host, not for them.

    They share the host's process group, so Ctrl-C in a terminal and Jupyter's interrupt (which
    signals the kernel's whole group) would kill them and break the pool for the rest of the
    process. The host stops them itself (``shutdown_pool`` at exit); other signals (SIGTERM, a
    kernel manager's SIGKILL to the group) still end them.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def warm_pool() -> None:
    """Start the parser processes now, in the background, so the first big page does not wait.

    Returns at once; the app calls it when a session is created. Idempotent.
    """
    global _POOL_BROKEN
    if _POOL_BROKEN:
        return
    try:
        pool = _pool()
        workers = getattr(pool, "_max_workers", 1)
        for _ in range(workers):  # each submit may start a worker, up to the pool's size
            pool.submit(_noop)
    except (concurrent.futures.process.BrokenProcessPool, OSError, RuntimeError) as exc:
        # A pool that cannot start must not fail the caller (the app's session): parsing
        # falls back to threads, as in parse_off_loop.
        shutdown_pool()
        _POOL_BROKEN = True
        logger.warning("GeoJSON parser processes unavailable (%s); parsing in threads", exc)


def _noop() -> None:
    return None


def shutdown_pool() -> None:
    """Stop the parser processes (they restart on the next parse)."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


async def parse_off_loop(
    content: bytes,
    *,
    url: str | None = None,
    source_crs: str = "OGC:CRS84",
    datetime_columns: Sequence[str] = (),
    executor: str | None = None,
) -> tuple[Any, FeatureCollectionMeta]:
    """:func:`parse_feature_collection` away from the event loop.

    Parameters
    ----------
    executor
        ``"process"``, ``"thread"``, or ``"auto"`` (a thread below ``INLINE_THREAD_BYTES``,
        the process pool above); None for ``DEFAULT_EXECUTOR``.

    Raises
    ------
    ParseError
        As :func:`parse_feature_collection`; also when the parser process died.
    """
    executor = executor or DEFAULT_EXECUTOR
    global _POOL_BROKEN
    kwargs = {"url": url, "source_crs": source_crs, "datetime_columns": tuple(datetime_columns)}
    if (
        executor == "thread"
        or (executor == "auto" and (_POOL_BROKEN or len(content) < INLINE_THREAD_BYTES))
    ):
        return await asyncio.to_thread(parse_feature_collection, content, **kwargs)
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_pool(), _parse_in_child, content, kwargs)
    except concurrent.futures.process.BrokenProcessPool as exc:
        # The workers could not start or died (killed, out of memory). Parsing still has to
        # work: fall back to threads for the rest of the process, and say so once.
        shutdown_pool()
        if executor == "process":
            raise ParseError(f"parser process died: {exc}", url=url) from exc
        if not _POOL_BROKEN:
            _POOL_BROKEN = True
            logger.warning("GeoJSON parser processes unavailable (%s); parsing in threads", exc)
        return await asyncio.to_thread(parse_feature_collection, content, **kwargs)


async def parsed_page(
    fetcher: Fetcher,
    content: bytes,
    *,
    url: str,
    source_crs: str,
    datetime_columns: Sequence[str] = (),
) -> tuple[Any, dict[str, Any]]:
    """A page parsed once per process: kept in ``fetcher.memory`` by the hash of its bytes.

    Loading the same view again (the browser reporting the plot's real size, a second session,
    a pan back) then costs a disk-cache read and a hash, not a parse: a page of 5 000 points
    takes about 30 ms to parse and 1 ms to hash. Callers must not modify the frame in place.

    Raises
    ------
    ParseError
        As :func:`parse_off_loop`.
    """
    memory = getattr(fetcher, "memory", None)
    digest = hashlib.blake2b(content, digest_size=16).digest()
    key = ("geojson-page", digest, source_crs, tuple(datetime_columns))
    hit = memory.get(key) if memory is not None else None
    if hit is not None:
        return hit[0], dict(hit[1])
    frame, meta = await parse_off_loop(content, url=url, source_crs=source_crs, datetime_columns=datetime_columns)
    if memory is not None:
        memory.put(key, (frame, dict(meta)), len(content))
    return frame, meta


def _parse_in_child(content: bytes, kwargs: dict[str, Any]) -> tuple[Any, FeatureCollectionMeta]:
    return parse_feature_collection(content, **kwargs)
