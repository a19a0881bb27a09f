"""Shared aliases and small value types of the engine (hashable, so they double as cache keys).

Every module that passes a box, a progress report or a load's result uses these, so each idea
has one name:

- :class:`Bounds`: a box as (west, south, east, north) / (xmin, ymin, xmax, ymax); the CRS is
  said by the name of the argument or attribute holding it (``bbox_lonlat``, ``bounds_3857``).
- :class:`Progress`: how far a load has got.
- :class:`Mosaic`: one frame of a tile layer's load (an RGBA image and what went into it).
- :class:`FeaturePage` / :class:`FeatureResult`: one page, and the whole of a feature load.
- :class:`Layer`: the protocol every source implements (``load``, ``fetch``, ``query``).

Errors travel in the ``errors`` field of a result, never inside ``DataFrame.attrs`` or
``DataArray.attrs`` (pandas deep-copies ``attrs`` on every column access).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import geopandas as gpd
    import xarray as xr

    from .errors import LayersError
    from .http import Fetcher
    from .viewport import Viewport

__all__ = [
    "Bounds",
    "FeaturePage",
    "FeatureResult",
    "Layer",
    "Mosaic",
    "Progress",
    "QueryResult",
]


class Bounds(NamedTuple):
    """A box: (west, south, east, north), or (xmin, ymin, xmax, ymax) in a projected CRS.

    A plain tuple of four floats is accepted wherever a ``Bounds`` is (it is a ``NamedTuple``).

    >>> b = Bounds(-10.0, 35.0, 30.0, 60.0)
    >>> b.width, b.height
    (40.0, 25.0)
    >>> Bounds(*"-10,35,30,60".split(",")) == ("-10", "35", "30", "60")
    True
    """

    west: float
    south: float
    east: float
    north: float

    @property
    def width(self) -> float:
        return self.east - self.west

    @property
    def height(self) -> float:
        return self.north - self.south


class Progress(NamedTuple):
    """How far a layer's load has got, reported with every partial result.

    Attributes
    ----------
    done, total
        Units finished and planned (``total`` is None when unknown, e.g. pages without
        ``numberMatched``).
    unit
        ``"tiles"`` or ``"pages"``.
    features
        Features received so far (feature layers; 0 for tiles).
    matched
        The server's ``numberMatched`` when known.
    failed
        Units that failed after retries (their errors are reported with the result).
    cached
        Units served from the cache without a network request.
    truncated
        True when a feature cap stopped the load early.
    complete
        True on the final result of a load.
    client_filtered
        True when a feature layer's CQL2 filter was evaluated here, on the loaded pages,
        because the server cannot filter (it declares no OGC API Features Part 3).
    """

    done: int
    total: int | None
    unit: str
    features: int = 0
    matched: int | None = None
    failed: int = 0
    cached: int = 0
    truncated: bool = False
    complete: bool = False
    client_filtered: bool = False


@dataclass(frozen=True, slots=True)
class Mosaic:
    """One frame of a tiled layer's load: the image so far and what went into it.

    Attributes
    ----------
    image
        RGBA ``xarray.DataArray`` (dims ``y, x, band``; EPSG:3857 pixel-centre coordinates),
        cropped to the viewport. Its ``attrs`` hold only ``crs`` and ``zoom``.
    progress
        Tiles done / planned, failed and cached; ``complete`` on the last frame.
    errors
        One :class:`~mapstream.layers.errors.TileError` per tile that failed (a transparent
        hole in the image); it keeps the tile's key, URL and status.
    zoom
        The zoom level of the tiles.
    tiles_used
        Keys of the tiles painted into the image.
    tiles_missing
        Tile key -> reason, for tiles that failed or were absent.
    attribution
        The source's attribution text, if any.
    """

    image: xr.DataArray
    progress: Progress
    errors: tuple[LayersError, ...] = ()
    zoom: int = 0
    tiles_used: tuple[str, ...] = ()
    tiles_missing: Mapping[str, str] = field(default_factory=dict)
    attribution: str | None = None

    @property
    def complete(self) -> bool:
        return self.progress.complete


@dataclass(frozen=True, slots=True)
class FeaturePage:
    """One page of a feature layer's load.

    Attributes
    ----------
    frame
        GeoDataFrame in EPSG:3857 (``id``, properties, ``valid``, ``geometry``); empty for a page
        that failed.
    progress
        Pages done / planned, features so far, ``matched``, ``truncated``, ``complete``.
    errors
        The :class:`~mapstream.layers.errors.LayersError` of this page, if it failed.
    url
        The page's URL.
    """

    frame: gpd.GeoDataFrame
    progress: Progress
    errors: tuple[LayersError, ...]
    url: str

    @property
    def complete(self) -> bool:
        return self.progress.complete


@dataclass(frozen=True, slots=True)
class FeatureResult:
    """The whole of a feature layer's load (:meth:`Layer.fetch` of a feature source).

    Attributes
    ----------
    frame
        Every feature received, one GeoDataFrame in EPSG:3857.
    progress
        The final progress (pages, features, ``matched``, ``truncated``).
    errors
        The errors of the pages that failed; the frame holds the rest.
    """

    frame: gpd.GeoDataFrame
    progress: Progress
    errors: tuple[LayersError, ...] = ()

    @property
    def truncated(self) -> bool:
        return self.progress.truncated

    @property
    def complete(self) -> bool:
        return self.progress.complete


#: Rows answered by :meth:`Layer.query`: one mapping of property name to value per feature hit.
QueryResult = list[dict[str, Any]]


@runtime_checkable
class Layer(Protocol):
    """What every source implements (XYZ tiles, WMS, OGC API Features, and the next ones).

    The app and the CLI talk to layers through this protocol only; adding a source means adding
    one module under :mod:`mapstream.layers.sources` that registers its ``kind``.

    Attributes
    ----------
    kind
        The catalog's name for the source (``"tiles"``, ``"wms"``, ``"features"``).
    name
        The layer's name in its catalog.
    attribution
        Text the map must show for the source, or None.
    """

    kind: ClassVar[str]
    name: str
    attribution: str | None

    def load(self, viewport: Viewport, fetcher: Fetcher) -> AsyncIterator[Mosaic | FeaturePage]:
        """Stream partial results for ``viewport`` as they arrive; the last one is complete."""
        ...

    async def fetch(
        self, viewport: Viewport, fetcher: Fetcher
    ) -> Mosaic | FeatureResult | xr.DataArray:
        """The complete result for ``viewport`` (a raster source's values: a DataArray)."""
        ...

    async def query(self, lon: float, lat: float, fetcher: Fetcher) -> QueryResult:
        """What the source holds at a point (click-inspect); ``[]`` when nothing, or no support."""
        ...
