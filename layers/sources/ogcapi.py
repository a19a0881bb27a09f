"""OGC API discovery: landing page, conformance, collections, one collection, queryables, and
what a server can do with a request (:func:`filter_languages`, :func:`probe_filter`).

Queryables are asked for as ``Accept: application/schema+json`` first (what Part 3 specifies;
tipg answers HTTP 422 to ``f=json``), then with ``f=json`` (servers that negotiate by ``f``).

Each document is fetched through the :class:`~mapstream.layers.http.Fetcher` (so its HTTP cache
applies) and parsed into a small frozen value type; the parsed objects are cached in the
fetcher's memory LRU, keyed by URL and by a digest of the caller's ``headers`` (a layer's
credentials, given in Python, go with its discovery requests too), so every layer of a process
that asks a server the same way shares one discovery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..errors import CapabilityError, LayersError, ParseError, StatusError
from ..types import Bounds

if TYPE_CHECKING:
    from ..http import Fetcher

__all__ = [
    "Link",
    "LandingPage",
    "Collection",
    "Queryables",
    "CRS84",
    "EPSG3857",
    "CONF_CORE",
    "CONF_CRS",
    "CONF_FILTER",
    "CONF_FEATURES_FILTER",
    "CONF_CQL2_TEXT",
    "CONF_CQL2_JSON",
    "CapabilityError",
    "filter_languages",
    "probe_filter",
    "get_landing",
    "get_conformance",
    "get_collections",
    "get_collection",
    "get_queryables",
]

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
EPSG3857 = "http://www.opengis.net/def/crs/EPSG/0/3857"
#: Conformance class of OGC API Features Part 2 (CRS by reference: ``crs``, ``bbox-crs``).
CONF_CRS = "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs"
#: Conformance class of Part 1 (core).
CONF_CORE = "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core"
#: Conformance classes of Part 3 filtering (the ``filter`` parameter on items).
CONF_FILTER = "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter"
CONF_FEATURES_FILTER = "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter"
#: The CQL2 encodings a server may declare (and the names of Part 3 drafts for them).
CONF_CQL2_TEXT = "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text"
CONF_CQL2_JSON = "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json"
_LANGUAGE_CLASSES = {
    "cql2-text": (CONF_CQL2_TEXT, "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter-cql2-text"),
    "cql2-json": (CONF_CQL2_JSON, "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter-cql2-json"),
}

ACCEPT_JSON = {"Accept": "application/json"}
ACCEPT_SCHEMA = {"Accept": "application/schema+json, application/json;q=0.9"}
#: A filter no CQL2 parser accepts: a server that parses ``filter`` rejects it (HTTP 4xx).
PROBE_FILTER = "mapstream probe (("


def filter_languages(conformance: frozenset[str]) -> frozenset[str] | None:
    """The filter languages a server declares, or None when it declares no Part 3 filtering.

    A server that declares Part 3 filtering without naming an encoding (tipg) is taken at its
    word for both: it parses ``filter``, so a language it lacks is a loud HTTP 400, not a
    silently unfiltered answer.

    >>> sorted(filter_languages(frozenset({CONF_FILTER, CONF_CQL2_TEXT})))
    ['cql2-text']
    >>> sorted(filter_languages(frozenset({CONF_FEATURES_FILTER})))
    ['cql2-json', 'cql2-text']
    >>> filter_languages(frozenset({CONF_CORE})) is None
    True
    """
    if CONF_FILTER not in conformance and CONF_FEATURES_FILTER not in conformance:
        return None
    langs = frozenset(lang for lang, classes in _LANGUAGE_CLASSES.items() if conformance & set(classes))
    return langs or frozenset(_LANGUAGE_CLASSES)


@dataclass(frozen=True, slots=True)
class Link:
    """One entry of a ``links`` array."""

    href: str
    rel: str = ""
    type: str = ""
    title: str = ""

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Link:
        return cls(str(d["href"]), str(d.get("rel", "")), str(d.get("type", "")), str(d.get("title", "")))


def _links(doc: Mapping[str, Any]) -> tuple[Link, ...]:
    return tuple(Link.parse(l) for l in doc.get("links", ()) if isinstance(l, Mapping) and "href" in l)


@dataclass(frozen=True, slots=True)
class LandingPage:
    """The server's landing page."""

    url: str
    title: str
    description: str
    links: tuple[Link, ...]


@dataclass(frozen=True, slots=True)
class Collection:
    """One collection's metadata.

    Attributes
    ----------
    bbox
        The first spatial extent box, (west, south, east, north) in CRS84, or None.
    temporal
        The first temporal interval (start, end), ISO strings or None.
    crs
        The CRS URIs the collection offers (``crs`` member; CRS84 when absent).
    storage_crs
        ``storageCrs`` when given.
    item_type
        ``itemType`` (``"feature"`` by default).
    """

    id: str
    title: str
    description: str
    bbox: Bounds | None
    temporal: tuple[str | None, str | None] | None
    crs: tuple[str, ...]
    storage_crs: str | None
    item_type: str
    links: tuple[Link, ...] = field(default=())

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> Collection:
        """Build from a collection document.

        >>> c = Collection.parse({"id": "x", "extent": {"spatial": {"bbox": [[0, 1, 2, 3]]}}})
        >>> tuple(c.bbox), c.crs, c.item_type
        ((0.0, 1.0, 2.0, 3.0), ('http://www.opengis.net/def/crs/OGC/1.3/CRS84',), 'feature')
        """
        extent = doc.get("extent") or {}
        boxes = (extent.get("spatial") or {}).get("bbox") or []
        bbox = None
        if boxes:
            first = boxes[0] if isinstance(boxes[0], list) else boxes
            if len(first) >= 4:
                half = len(first) // 2  # 3D boxes: (x0, y0, z0, x1, y1, z1)
                bbox = Bounds(float(first[0]), float(first[1]), float(first[half]), float(first[half + 1]))
        intervals = (extent.get("temporal") or {}).get("interval") or []
        temporal = tuple(intervals[0][:2]) if intervals and intervals[0] else None
        return cls(
            id=str(doc["id"]),
            title=str(doc.get("title", doc["id"])),
            description=str(doc.get("description", "")),
            bbox=bbox,
            temporal=temporal,  # type: ignore[arg-type]
            crs=tuple(doc.get("crs") or (CRS84,)),
            storage_crs=doc.get("storageCrs"),
            item_type=str(doc.get("itemType", "feature")),
            links=_links(doc),
        )

    def offers(self, uri: str) -> bool:
        """Whether the collection lists ``uri`` (or ``#/crs``-style wildcards) among its CRSs."""
        return uri in self.crs


@dataclass(frozen=True, slots=True)
class Queryables:
    """``/queryables``: property name -> JSON schema."""

    properties: Mapping[str, Mapping[str, Any]]

    @property
    def datetime_properties(self) -> tuple[str, ...]:
        """Properties whose schema says ``format: date-time``.

        >>> Queryables({"t": {"type": "string", "format": "date-time"}, "n": {}}).datetime_properties
        ('t',)
        """
        return tuple(k for k, v in self.properties.items() if v.get("format") == "date-time")


async def _document(
    url: str, fetcher: Fetcher, kind: str, headers: Mapping[str, str] | None = None
) -> Mapping[str, Any]:
    resp = await fetcher.get(url, params={"f": "json"}, headers={**(headers or {}), **ACCEPT_JSON})
    doc = resp.json()
    if not isinstance(doc, Mapping):
        raise ParseError(f"{kind} is not a JSON object", url=resp.url)
    return doc


def _who(headers: Mapping[str, str] | None) -> str:
    """A digest of the caller's headers for the memory key: documents fetched with one
    credential are not handed to a caller with another (or none)."""
    if not headers:
        return ""
    import hashlib

    text = "\n".join(f"{k.lower()}:{v}" for k, v in sorted(headers.items()))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


async def _cached(key: tuple[str, ...], fetcher: Fetcher, build: Any) -> Any:
    memory = getattr(fetcher, "memory", None)
    hit = memory.get(key) if memory is not None else None
    if hit is not None:
        return hit
    value = await build()
    if memory is not None:
        memory.put(key, value, 4096)
    return value


def _root(url: str) -> str:
    return url.rstrip("/")


async def get_landing(url: str, fetcher: Fetcher, headers: Mapping[str, str] | None = None) -> LandingPage:
    """The landing page of the server at ``url``.

    Raises
    ------
    FetchError
        The request failed.
    ParseError
        The answer is not a JSON object.
    """

    async def build() -> LandingPage:
        doc = await _document(_root(url) + "/", fetcher, "landing page", headers)
        return LandingPage(url, str(doc.get("title", "")), str(doc.get("description", "")), _links(doc))

    return await _cached(("ogc-landing", _root(url), _who(headers)), fetcher, build)


async def get_conformance(url: str, fetcher: Fetcher, headers: Mapping[str, str] | None = None) -> frozenset[str]:
    """The conformance classes the server declares.

    Raises
    ------
    FetchError, ParseError
        As :func:`get_landing`.
    """

    async def build() -> frozenset[str]:
        doc = await _document(_root(url) + "/conformance", fetcher, "conformance", headers)
        return frozenset(str(c) for c in doc.get("conformsTo", ()))

    return await _cached(("ogc-conformance", _root(url), _who(headers)), fetcher, build)


async def get_collections(url: str, fetcher: Fetcher, headers: Mapping[str, str] | None = None) -> tuple[Collection, ...]:
    """Every collection the server lists.

    Raises
    ------
    FetchError, ParseError
        As :func:`get_landing`; ParseError also when a collection has no ``id``.
    """

    async def build() -> tuple[Collection, ...]:
        doc = await _document(_root(url) + "/collections", fetcher, "collections", headers)
        try:
            return tuple(Collection.parse(c) for c in doc.get("collections", ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise ParseError(f"bad collection entry: {exc}", url=url) from exc

    return await _cached(("ogc-collections", _root(url), _who(headers)), fetcher, build)


async def get_collection(
    url: str, collection: str, fetcher: Fetcher, headers: Mapping[str, str] | None = None
) -> Collection:
    """One collection's metadata.

    Raises
    ------
    FetchError
        The request failed (``StatusError`` with status 404 for an unknown collection).
    ParseError
        The document is not a collection.
    """
    curl = f"{_root(url)}/collections/{quote(collection, safe='')}"

    async def build() -> Collection:
        doc = await _document(curl, fetcher, "collection", headers)
        try:
            return Collection.parse({"id": collection, **doc})
        except (KeyError, TypeError, ValueError) as exc:
            raise ParseError(f"bad collection document: {exc}", url=curl) from exc

    return await _cached(("ogc-collection", curl, _who(headers)), fetcher, build)


async def get_queryables(
    url: str, collection: str, fetcher: Fetcher, headers: Mapping[str, str] | None = None
) -> Queryables | None:
    """The collection's queryables, or None when the server does not offer them.

    Asked for as ``application/schema+json`` (Part 3; tipg answers 422 to ``f=json``), then
    with ``f=json`` when that answer is an error status or not a JSON object (a server that
    negotiates by ``f`` may answer HTML).

    Raises
    ------
    FetchError
        The request failed for another reason than a 4xx status.
    """
    qurl = f"{_root(url)}/collections/{quote(collection, safe='')}/queryables"

    async def attempt(params: dict[str, str] | None, accept: dict[str, str]) -> Mapping[str, Any] | None:
        try:
            resp = await fetcher.get(qurl, params=params, headers={**(headers or {}), **accept})
        except StatusError as exc:
            if 400 <= exc.status < 500:
                return None
            raise
        try:
            doc = resp.json()
        except (ValueError, LayersError):
            return None
        return doc if isinstance(doc, Mapping) else None

    async def build() -> Queryables | bool:
        doc = await attempt(None, ACCEPT_SCHEMA)
        if doc is None or not isinstance(doc.get("properties"), Mapping):
            doc = await attempt({"f": "json"}, ACCEPT_JSON)
        if doc is None:
            return False  # cached as "not offered"
        props = doc.get("properties") or {}
        if not isinstance(props, Mapping):
            return False
        return Queryables({str(k): dict(v) for k, v in props.items() if isinstance(v, Mapping)})

    result = await _cached(("ogc-queryables", qurl, _who(headers)), fetcher, build)
    return result or None


async def probe_filter(
    url: str, collection: str, fetcher: Fetcher, headers: Mapping[str, str] | None = None
) -> bool:
    """Whether the server parses ``filter`` though it declares no Part 3 (pygeoapi 0.21).

    One request with a filter no CQL2 parser accepts: a server that reads ``filter`` rejects it
    with HTTP 400 or 422; one that ignores it (MapServer 8, QGIS Server 3.22) answers 200 with
    features. A server that rejects every unknown parameter also answers 400: then its real
    answer is a loud error too, never an unfiltered result. ``headers`` are the layer's (a
    server behind authentication must see the probe as it sees the load). Cached per
    collection, like the documents.

    Raises
    ------
    FetchError
        The probe failed (another error status, 5xx after retries, timeout, connection).
    """
    from .paging import page_url

    iurl = f"{_root(url)}/collections/{quote(collection, safe='')}/items"

    async def build() -> str:
        probe = page_url(iurl, {"limit": "1", "filter": PROBE_FILTER})
        hdrs = {**(headers or {}), **ACCEPT_JSON}
        resp = await fetcher.get(probe, headers=hdrs, allow_status=(400, 422), cache=False)
        return "parses" if resp.status in (400, 422) else "ignores"

    return await _cached(("ogc-filter-probe", iurl, _who(headers)), fetcher, build) == "parses"
