"""Redirects as httpx's client follows them, for the fetcher's direct aiohttp path (which
skips ``client.send``, where httpx applies these rules itself).
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from .urls import same_origin

__all__ = ["REDIRECT_STATUSES", "REDIRECT_SENSITIVE", "follow"]

#: Statuses httpx follows when the response names a ``Location``.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Request headers a redirect may drop or change (:func:`follow`): never session defaults.
REDIRECT_SENSITIVE = frozenset({"authorization", "cookie", "host", "content-length", "transfer-encoding"})


def follow(
    method: str,
    url: httpx.URL,
    status: int,
    location: str,
    headers: Mapping[str, str],
    content: bytes | None,
) -> tuple[str, httpx.URL, dict[str, str], bytes | None]:
    """The request that follows a redirect, by the rules of httpx's client.

    302 and 303 turn any method but HEAD into GET, 301 turns POST into GET (a GET drops the
    body); a relative ``Location`` is resolved against ``url``; ``Authorization`` is dropped
    when the origin changes (unless it is a plain http -> https upgrade); ``Cookie`` is always
    dropped. ``headers`` have lower-case names.

    >>> m, u, h, c = follow("POST", httpx.URL("http://a.test/x"), 303, "/y?z=1",
    ...                     {"authorization": "t", "cookie": "c"}, b"{}")
    >>> m, str(u), h, c
    ('GET', 'http://a.test/y?z=1', {'authorization': 't'}, None)
    >>> follow("GET", httpx.URL("http://a.test/x"), 307, "http://b.test/x", {"authorization": "t"}, None)[2]
    {}
    >>> follow("GET", httpx.URL("http://a.test/x"), 301, "https://a.test/x", {"authorization": "t"}, None)[2]
    {'authorization': 't'}

    Raises
    ------
    httpx.RemoteProtocolError
        ``location`` is not a URL.
    httpx.UnsupportedProtocol
        It is not an http(s) URL.
    """
    new_method = method
    if (status in (302, 303) and method != "HEAD") or (status == 301 and method == "POST"):
        new_method = "GET"
    try:
        new = httpx.URL(location)
    except httpx.InvalidURL as exc:
        raise httpx.RemoteProtocolError(f"Invalid URL in location header: {exc}.") from None
    if new.scheme and not new.host:
        new = new.copy_with(host=url.host)
    if new.is_relative_url:
        new = url.join(new)
    if url.fragment and not new.fragment:
        new = new.copy_with(fragment=url.fragment)
    if new.scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{new.scheme}://'.")
    out = {k: v for k, v in headers.items() if k != "cookie"}
    if not same_origin(url, new):
        upgrade = (
            url.host == new.host
            and (url.scheme, url.port or 80) == ("http", 80)
            and (new.scheme, new.port or 443) == ("https", 443)
        )
        if not upgrade:
            out.pop("authorization", None)
        if "host" in out:
            out["host"] = new.netloc.decode("ascii")
    if new_method != method and new_method == "GET":
        content = None
        out.pop("content-length", None)
        out.pop("transfer-encoding", None)
    return new_method, new, out, content
