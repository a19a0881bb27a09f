"""What a feature page's URL and body say, as pure functions: page URLs on the client's own query,
next links followed without losing it, offsets, sub-boxes, counts, and the box check.

:class:`~mapstream.layers.sources.paging.PageWalk` plans and guards a load with these; they need
no event loop and no fetcher, so each is doctested here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urljoin, urlsplit, urlunsplit

from ..errors import PagingError, ParseError
from ..types import Bounds

__all__ = [
    "POSITIONAL_KEYS",
    "QUERY_KEYS",
    "SAFE",
    "count_member",
    "frame_ids",
    "encode_query",
    "follow_next",
    "in_boxes",
    "next_link",
    "offset_of",
    "page_url",
    "request_boxes",
    "split_box",
    "visit_key",
    "with_offset",
]

#: Parameters that say *which* features a request selects: a next link must not change them.
QUERY_KEYS = frozenset(
    {"bbox", "bbox-crs", "crs", "datetime", "filter", "filter-lang", "filter-crs", "properties", "sortby", "q"}
)
#: Paging tokens that count positions in the result: valid against the client's own query.
POSITIONAL_KEYS = frozenset({"offset", "startindex", "startIndex", "start", "page"})
#: Characters sent literally in a query: what GDAL sends, and what QGIS Server keeps intact.
SAFE = ",:/"


def next_link(meta: Mapping[str, Any]) -> str | None:
    """The ``rel="next"`` href of a page, if any.

    >>> next_link({"links": [{"rel": "self", "href": "a"}, {"rel": "next", "href": "b"}]})
    'b'
    """
    for link in meta.get("links") or ():
        if isinstance(link, Mapping) and link.get("rel") == "next" and link.get("href"):
            return str(link["href"])
    return None


def encode_query(query: Mapping[str, str] | Sequence[tuple[str, str]]) -> str:
    """A query string with commas, colons and slashes literal and spaces as ``%20``.

    >>> encode_query({"bbox": "-30,20,50,75", "crs": "http://x/1", "filter": "a = 'b c'"})
    'bbox=-30,20,50,75&crs=http://x/1&filter=a%20%3D%20%27b%20c%27'
    """
    items = list(query.items()) if isinstance(query, Mapping) else list(query)
    return urlencode(items, safe=SAFE, quote_via=quote)


def page_url(items_url: str, query: Mapping[str, str]) -> str:
    """``items_url`` with ``query`` (see :func:`encode_query`).

    >>> page_url("http://h/items", {"limit": "10", "offset": "20"})
    'http://h/items?limit=10&offset=20'
    """
    return f"{items_url}?{encode_query(query)}" if query else items_url


def _same_value(key: str, a: str, b: str) -> bool:
    if a == b:
        return True
    if key == "bbox":  # "-30,20,50,75" and "-30.0,20.0,50.0,75.0" are one box
        try:
            return [float(v) for v in a.split(",")] == [float(v) for v in b.split(",")]
        except ValueError:
            return False
    return a.strip() == b.strip()


def follow_next(items_url: str, client: Mapping[str, str], href: str, base: str | None = None) -> str:
    """The page URL a ``next`` link stands for: ``items_url`` with the client's query and the
    link's paging token.

    The token is every parameter of the link that the client did not send and that does not
    select features (:data:`QUERY_KEYS`). The link's host and path are not used (a server
    behind a proxy names its internal host; a hostile one, any host): the page is asked of the
    layer's own items URL.

    Raises
    ------
    PagingError
        The link names another resource (its path does not end like ``items_url``), or it
        changes the query and its token is opaque (not an offset or page number), so it may
        point into another result set.

    >>> client = {"limit": "10", "bbox": "-30,20,50,75"}
    >>> follow_next("http://h/c/items", client, "http://h/c/items?limit=10&offset=10")  # MapServer
    'http://h/c/items?limit=10&bbox=-30,20,50,75&offset=10'
    >>> follow_next("http://h/c/items", client, "/c/items?bbox=-301000C201000C501000C75&offset=10", "http://h/c/items")
    'http://h/c/items?limit=10&bbox=-30,20,50,75&offset=10'
    >>> try:  # a cursor on a query without the bbox: it may point anywhere in another result
    ...     follow_next("http://h/c/items", client, "http://h/c/items?token=abc")
    ... except PagingError as exc:
    ...     print(exc)
    the server's next link would change the query (bbox dropped) and its paging token (token) is opaque, so it cannot be repaired: http://h/c/items?token=abc
    """
    href = urljoin(base or items_url, href)
    parts = urlsplit(href)
    want = unquote(urlsplit(items_url).path).rstrip("/")
    got = unquote(parts.path).rstrip("/")
    tail = "/".join(want.split("/")[-3:])  # collections/{id}/items
    if not got.endswith(tail):
        raise PagingError(f"the server's next link names another resource ({got}, not {want}): {href}", url=href)
    link = parse_qsl(parts.query, keep_blank_values=True)
    values = dict(link)
    token = [(k, v) for k, v in link if k not in client and k not in QUERY_KEYS]
    changed = [
        f"{k} {'dropped' if k not in values else 'changed'}"
        for k, v in client.items()
        if k in QUERY_KEYS and (k not in values or not _same_value(k, v, values[k]))
    ] + [f"{k} added" for k, _ in link if k in QUERY_KEYS and k not in client]
    if changed and not any(k in POSITIONAL_KEYS for k, _ in token):
        names = ", ".join(k for k, _ in token) or "none"
        raise PagingError(
            f"the server's next link would change the query ({', '.join(changed)}) and its paging "
            f"token ({names}) is opaque, so it cannot be repaired: {href}",
            url=href,
        )
    return page_url(items_url, {**client, **dict(token)})


def with_offset(url: str, offset: int) -> str | None:
    """``url`` with its ``offset`` query parameter replaced; None when it has none.

    >>> with_offset("http://h/items?limit=10&offset=10&f=json", 30)
    'http://h/items?limit=10&offset=30&f=json'
    >>> with_offset("http://h/items?token=abc", 30) is None
    True
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(k == "offset" for k, _ in query):
        return None
    query = [(k, str(offset) if k == "offset" else v) for k, v in query]
    return urlunsplit(parts._replace(query=encode_query(query)))


def split_box(box: Bounds, n: int) -> list[Bounds]:
    """Cut a (west, south, east, north) box into ``n`` x ``n`` sub-boxes.

    >>> [tuple(b) for b in split_box((0, 0, 2, 2), 2)]
    [(0.0, 0.0, 1.0, 1.0), (1.0, 0.0, 2.0, 1.0), (0.0, 1.0, 1.0, 2.0), (1.0, 1.0, 2.0, 2.0)]
    """
    w, s, e, nn = box
    xs = [w + (e - w) * i / n for i in range(n + 1)]
    ys = [s + (nn - s) * j / n for j in range(n + 1)]
    return [
        Bounds(float(xs[i]), float(ys[j]), float(xs[i + 1]), float(ys[j + 1]))
        for j in range(n)
        for i in range(n)
    ]


def offset_of(url: str, default: int) -> int:
    """The ``offset`` query parameter of ``url``, or ``default`` when it has none.

    >>> offset_of("http://h/items?offset=20", 10), offset_of("http://h/items", 10)
    (20, 10)
    """
    for k, v in parse_qsl(urlsplit(url).query):
        if k == "offset":
            try:
                return int(v)
            except ValueError:
                break
    return default


def count_member(meta: Mapping[str, Any], key: str, url: str | None = None) -> int | None:
    """A page's ``numberMatched`` / ``numberReturned`` as an int; None when absent.

    Raises
    ------
    ParseError
        The member is there but not a non-negative whole number (``"five"``, ``-1``, ``2.5``).

    >>> count_member({"numberMatched": 10}, "numberMatched"), count_member({}, "numberMatched")
    (10, None)
    >>> try:
    ...     count_member({"numberReturned": "five"}, "numberReturned", "http://h/items")
    ... except ParseError as exc:
    ...     print(exc)
    numberReturned is 'five', not a count of features (http://h/items)
    """
    value = meta.get(key)
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if number is None or number < 0:
        raise ParseError(f"{key} is {value!r}, not a count of features", url=url)
    return number


def visit_key(url: str) -> frozenset[tuple[str, str]]:
    """What makes two page URLs the same page: their parameters in any order, ``offset=0``
    and no offset alike (a 2-cycle of next links closes on the first page either way).

    >>> visit_key("http://h/i?limit=5&offset=0") == visit_key("http://h/i?limit=5")
    True
    """
    return frozenset((k, v) for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True) if (k, v) != ("offset", "0"))


def request_boxes(queries: Sequence[Mapping[str, str]]) -> list[Bounds] | None:
    """The boxes the first requests select, in EPSG:3857 (None when a request has no bbox).

    >>> [round(v) for v in request_boxes([{"bbox": "0,0,1,1"}])[0]]
    [0, 0, 111319, 111325]
    >>> request_boxes([{"limit": "10"}]) is None
    True
    """
    from ..projection import lonlat_to_mercator

    out = []
    for q in queries:
        try:
            vals = [float(v) for v in q["bbox"].split(",")]
        except (KeyError, ValueError):
            return None
        if len(vals) == 6:  # (x0, y0, z0, x1, y1, z1)
            vals = [vals[0], vals[1], vals[3], vals[4]]
        if len(vals) != 4:
            return None
        if q.get("bbox-crs", "").rstrip("/").endswith("/3857"):
            out.append(Bounds(*vals))
        else:
            x0, y0 = lonlat_to_mercator(vals[0], vals[1])
            x1, y1 = lonlat_to_mercator(vals[2], vals[3])
            out.append(Bounds(x0, y0, x1, y1))
    return out


def in_boxes(frame: Any, boxes: Sequence[Bounds], tolerance: float = 1e-3) -> Any:
    """A boolean array: which rows' envelopes meet one of ``boxes`` (EPSG:3857, edges
    included, ``tolerance`` metres of slack); rows without a geometry count as in.

    Envelopes, not exact intersection: never drops a feature a server's exact test keeps, and
    never raises on an invalid geometry. For points (the common case) it is exact.
    """
    import numpy as np
    import shapely

    bounds = shapely.bounds(frame.geometry.to_numpy())
    minx, miny, maxx, maxy = bounds.T
    keep = np.isnan(minx)
    for w, s, e, n in boxes:
        keep |= (minx <= e + tolerance) & (maxx >= w - tolerance) & (miny <= n + tolerance) & (maxy >= s - tolerance)
    return keep


def frame_ids(frame: Any) -> list[Any]:
    """The feature ids of a page's frame, in order (none without an ``id`` column)."""
    return frame["id"].tolist() if "id" in frame.columns and len(frame) else []
