"""Request URLs: the form httpx sends, and the host key (``host[:port]``) that limits and
retry budgets are counted by; a fast path for URLs httpx would send exactly as written.

Parsing a URL with ``httpx.URL`` costs ~15 us, a noticeable share of a request's CPU time at
zero latency (``python -m benchmarks.fetch``); most tile URLs need none of its normalisation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from ..errors import BadInputError
from ..redact import redact_url

__all__ = ["DEFAULT_PORTS", "http_urls", "normalize", "plain_netloc", "same_origin"]

#: The port a scheme implies (httpx leaves it out of the URL it sends).
DEFAULT_PORTS = {"http": 80, "https": 443}

# URLs that httpx leaves exactly as they are: lower-case http(s) scheme and host, no userinfo,
# no default port, a path and query of characters it never encodes, no fragment. Anything
# else is parsed by httpx (tests/layers/test_http_urls.py checks the two agree).
_PLAIN_URL = re.compile(
    r"(https?)://([a-z0-9._~-]+)(?::([1-9][0-9]{0,4}))?"
    r"(/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*)(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*)?"
)
_IPV4_STYLE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.|$)){4}")
_DOT_SEGMENT = re.compile(r"/\.\.?(?:/|$)")


def plain_netloc(url: str) -> str | None:
    """``host[:port]`` of ``url`` if httpx would send ``url`` exactly as written, else ``None``
    (then httpx parses and normalises it).

    >>> plain_netloc("https://tile.example.org/5/16/10.png?key=a%2Fb")
    'tile.example.org'
    >>> plain_netloc("http://127.0.0.1:8080/a"), plain_netloc("http://127.0.0.1:80/a")
    ('127.0.0.1:8080', None)
    >>> [plain_netloc(u) for u in ("HTTP://h/a", "http://H/a", "http://h/a b", "http://h/./a", "http://h")]
    [None, None, None, None, None]
    """
    m = _PLAIN_URL.fullmatch(url)
    if m is None or len(url) > 65536:
        return None
    scheme, host, port, path = m.group(1, 2, 3, 4)
    if port is not None and int(port) == DEFAULT_PORTS[scheme]:
        return None
    if _IPV4_STYLE.fullmatch(host) and not _IPV4.fullmatch(host):
        return None  # httpx rejects it
    if "/." in path and _DOT_SEGMENT.search(path):
        return None  # httpx removes dot segments
    return host if port is None else f"{host}:{port}"


def normalize(url: str, params: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """The host key (``host[:port]``, lower-case) and the URL as httpx sends it, ``params``
    merged into its query.

    >>> normalize("HTTPS://Tiles.test:443/a/../b", {"z": 1})
    ('tiles.test', 'https://tiles.test/b?z=1')
    >>> normalize("http://h.test:99999/")
    Traceback (most recent call last):
    ...
    mapstream.layers.errors.BadInputError: invalid URL http://h.test:99999/: port 99999 is out of range

    Raises
    ------
    BadInputError
        ``url`` is not a valid http(s) URL.
    """
    netloc = None if params else plain_netloc(url)
    if netloc is not None:  # httpx would leave it as it is: no need to parse it
        if len(netloc) > 6 and netloc[-6] == ":" and netloc[-5:] > "65535":  # ports have 1-5 digits
            raise BadInputError(f"invalid URL {redact_url(url)}: port {netloc[-5:]} is out of range")
        return netloc, url
    try:
        u = httpx.URL(url)
        if params:
            u = u.copy_merge_params(params)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise BadInputError(f"invalid URL {url!r}: {exc}") from exc
    if u.scheme not in ("http", "https"):
        raise BadInputError(f"not an http(s) URL: {redact_url(url)}")
    if u.port is not None and not 0 < u.port < 65536:  # httpx accepts it; no socket does
        raise BadInputError(f"invalid URL {redact_url(url)}: port {u.port} is out of range")
    return u.netloc.decode("ascii").lower(), str(u)


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    """Whether ``a`` and ``b`` have one scheme, host and port (the default port implied).

    >>> same_origin(httpx.URL("http://a.test/x"), httpx.URL("http://a.test:80/y"))
    True
    >>> same_origin(httpx.URL("http://a.test/x"), httpx.URL("https://a.test/x"))
    False
    """
    return (a.scheme, a.host, a.port or DEFAULT_PORTS.get(a.scheme)) == (
        b.scheme,
        b.host,
        b.port or DEFAULT_PORTS.get(b.scheme),
    )


def http_urls(url_or_urls: str | Sequence[str], what: str) -> list[str]:
    """One URL or several, as a list without repeats, each checked to be http(s).

    ``what`` names them in the error (``"a COG URL"``).

    >>> http_urls(["http://a.test/x", "http://a.test/x", "https://b.test/"], "a URL")
    ['http://a.test/x', 'https://b.test/']
    >>> http_urls("ftp://a.test/x", "a COG URL")
    Traceback (most recent call last):
    ...
    mapstream.layers.errors.BadInputError: a COG URL must be http(s), got 'ftp://a.test/x'

    Raises
    ------
    BadInputError
        No URL, or one that is not an http(s) string.
    """
    urls = [url_or_urls] if isinstance(url_or_urls, str) else list(url_or_urls)
    if not urls:
        raise BadInputError(f"{what} is needed: no URL given")
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise BadInputError(f"{what} must be http(s), got {url!r}")
    return list(dict.fromkeys(urls))
