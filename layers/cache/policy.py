"""The HTTP cache's rules (RFC 9111, private-cache subset): pure functions, no I/O.

- :func:`cache_key`: what identifies a stored response (method, URL, the headers that matter),
  so a response fetched with one set of credentials is never served to a request with another;
- :func:`freshness_lifetime`: how long a response may be reused without asking the server
  (``Cache-Control: max-age`` / ``no-cache`` / ``no-store``, ``Expires``, or the fetcher's
  fallback TTL when the server sends no validators);
- :class:`CacheEntry`: a stored response with its expiry and validators (``ETag``,
  ``Last-Modified``), and the conditional headers that revalidate it;
- :func:`make_entry` / :func:`refresh_entry`: the entry for a network response, and the entry
  after a ``304 Not Modified``.

No secret is ever kept: ``Set-Cookie`` is dropped and secret-looking query parameters are
redacted from the stored URL (:mod:`mapstream.layers.redact`). The fetcher
(:mod:`mapstream.layers.http`) owns the protocol; :mod:`.disk` stores what these functions build.
"""

from __future__ import annotations

import email.utils
import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..redact import redact_url

__all__ = [
    "CACHEABLE_STATUSES",
    "CacheEntry",
    "cache_key",
    "freshness_lifetime",
    "make_entry",
    "parse_cache_control",
    "refresh_entry",
]

#: Statuses a cache may store without explicit freshness (RFC 9110 "heuristically cacheable").
CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 404, 405, 410, 414, 501})

#: The longest freshness a server can give (RFC 9111 1.2.2: 2**31 seconds, about 68 years).
MAX_DELTA_SECONDS = float(2**31)

#: Request headers that do not change what the server sends back, so they stay out of the key.
_KEY_IGNORED = frozenset(
    {
        "user-agent",
        "accept-encoding",
        "connection",
        "cache-control",
        "pragma",
        "if-none-match",
        "if-modified-since",
    }
)


def cache_key(method: str, url: str, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """A stable key for a request: method, URL and a hash of the headers that matter.

    Credential headers (``Authorization``, ``Cookie``, API-key headers, ...) are part of the
    key, so two requests that differ only in credentials never share an entry.

    >>> a = cache_key("GET", "https://h/t/1", {"Authorization": "Bearer A"})
    >>> b = cache_key("GET", "https://h/t/1", {"Authorization": "Bearer B"})
    >>> a == b, len(a)
    (False, 64)
    >>> cache_key("GET", "https://h/t/1", {"User-Agent": "x"}) == cache_key("get", "https://h/t/1", {})
    True
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    kept = sorted((k.lower(), v) for k, v in pairs if k.lower() not in _KEY_IGNORED)
    h = hashlib.sha256()
    h.update(method.upper().encode())
    h.update(b"\0")
    h.update(url.encode())
    for k, v in kept:
        h.update(b"\0")
        h.update(k.encode())
        h.update(b":")
        h.update(v.encode())
    return h.hexdigest()


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """Directives of a ``Cache-Control`` header, names lower-cased.

    >>> parse_cache_control('public, max-age=60, no-cache="Set-Cookie"')
    {'public': None, 'max-age': '60', 'no-cache': 'Set-Cookie'}
    >>> parse_cache_control(None)
    {}
    """
    out: dict[str, str | None] = {}
    for part in (value or "").split(","):
        name, sep, arg = part.strip().partition("=")
        if name:
            out[name.strip().lower()] = arg.strip().strip('"') if sep else None
    return out


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def freshness_lifetime(headers: Mapping[str, str], ttl: float) -> float | None:
    """Seconds a response stays fresh, or ``None`` if it must not be stored.

    ``no-store`` forbids storing; ``no-cache`` stores but requires revalidation (lifetime 0);
    ``max-age`` wins over ``Expires``; a response with validators but no explicit freshness is
    revalidated every time (lifetime 0); one with neither gets the fallback ``ttl``.

    >>> freshness_lifetime({"cache-control": "max-age=60"}, ttl=5)
    60.0
    >>> freshness_lifetime({"cache-control": "no-store"}, ttl=5) is None
    True
    >>> freshness_lifetime({"etag": '"v1"'}, ttl=5), freshness_lifetime({}, ttl=5)
    (0.0, 5.0)
    >>> freshness_lifetime({"cache-control": "no-cache, max-age=60"}, ttl=5)
    0.0
    >>> freshness_lifetime({"cache-control": "max-age=" + "9" * 400}, ttl=5) == MAX_DELTA_SECONDS
    True
    """
    cc = parse_cache_control(headers.get("cache-control"))
    if "no-store" in cc:
        return None
    if "no-cache" in cc:
        return 0.0
    if "max-age" in cc:
        try:
            return min(max(0.0, float(int(cc["max-age"] or ""))), MAX_DELTA_SECONDS)
        except ValueError:
            return 0.0
        except OverflowError:  # hundreds of digits (RFC 9111 1.2.2: the largest value, then)
            return MAX_DELTA_SECONDS
    expires = headers.get("expires")
    if expires is not None:
        when = _http_date(expires)
        date = _http_date(headers.get("date")) or time.time()
        return max(0.0, when - date) if when is not None else 0.0
    if "etag" in headers or "last-modified" in headers:
        return 0.0
    return float(ttl)


@dataclass(slots=True)
class CacheEntry:
    """A stored response: status, headers, body, expiry and validators."""

    url: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stored_at: float
    expires_at: float
    etag: str | None = None
    last_modified: str | None = None

    def is_fresh(self, now: float | None = None) -> bool:
        """Whether the entry may be used without asking the server."""
        return (time.time() if now is None else now) < self.expires_at

    @property
    def has_validators(self) -> bool:
        return self.etag is not None or self.last_modified is not None

    def conditional_headers(self) -> dict[str, str]:
        """``If-None-Match`` / ``If-Modified-Since`` for revalidating this entry.

        A validator that could not be sent back as it came (non-ASCII or control characters
        from a server that should not have sent them) is left out: the request is then a
        plain GET, not a failure.

        >>> CacheEntry("u", 200, [], b"", 0, 0, etag='"caf\xe9"', last_modified="Wed, 21 Oct 2015 07:28:00 GMT").conditional_headers()
        {'If-Modified-Since': 'Wed, 21 Oct 2015 07:28:00 GMT'}
        """
        out = {}
        if self.etag is not None and _sendable(self.etag):
            out["If-None-Match"] = self.etag
        if self.last_modified is not None and _sendable(self.last_modified):
            out["If-Modified-Since"] = self.last_modified
        return out


def _sendable(value: str) -> bool:
    return value.isascii() and value.isprintable()


def _storable_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    # Never keep a secret the server handed out.
    return [(k, v) for k, v in headers if k.lower() not in ("set-cookie", "set-cookie2")]


def make_entry(
    url: str,
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    ttl: float,
    *,
    ranged: bool = False,
) -> CacheEntry | None:
    """Build the entry for a fresh network response, or ``None`` if it must not be stored.

    A ``206 Partial Content`` is stored only for a ``ranged`` request, whose key holds its
    ``Range`` header: the part is kept as the answer to that exact range, never as the whole.

    >>> make_entry("http://h/a", 206, [("Content-Range", "bytes 0-0/9")], b"x", 60) is None
    True
    >>> make_entry("http://h/a", 206, [("Content-Range", "bytes 0-0/9")], b"x", 60, ranged=True).status
    206

    >>> make_entry("http://h/a", 200, [("Cache-Control", "no-store")], b"x", 60) is None
    True
    >>> e = make_entry("http://h/a", 200, [("ETag", '"1"'), ("Set-Cookie", "s=1")], b"x", 60)
    >>> e.etag, e.headers, e.is_fresh()
    ('"1"', [('ETag', '"1"')], False)
    """
    pairs = list(headers)
    lower = {k.lower(): v for k, v in pairs}
    if status not in CACHEABLE_STATUSES and not (status == 206 and ranged):
        return None
    lifetime = freshness_lifetime(lower, ttl)
    if lifetime is None:
        return None
    now = time.time()
    return CacheEntry(
        url=redact_url(url),
        status=status,
        headers=_storable_headers(pairs),
        body=body,
        stored_at=now,
        expires_at=now + lifetime,
        etag=lower.get("etag"),
        last_modified=lower.get("last-modified"),
    )


def refresh_entry(entry: CacheEntry, headers: Iterable[tuple[str, str]], ttl: float) -> CacheEntry | None:
    """The entry after a ``304 Not Modified``: headers merged, expiry recomputed.

    >>> e = make_entry("http://h/a", 200, [("ETag", '"1"')], b"body", 60)
    >>> r = refresh_entry(e, [("Cache-Control", "max-age=30")], 60)
    >>> r.body, r.is_fresh(), r.etag
    (b'body', True, '"1"')
    """
    new = _storable_headers(headers)
    names = {k.lower() for k, _ in new}
    merged = [(k, v) for k, v in entry.headers if k.lower() not in names] + new
    lower = {k.lower(): v for k, v in merged}
    lifetime = freshness_lifetime(lower, ttl)
    if lifetime is None:
        return None
    now = time.time()
    return CacheEntry(
        url=entry.url,
        status=entry.status,
        headers=merged,
        body=entry.body,
        stored_at=now,
        expires_at=now + lifetime,
        etag=lower.get("etag"),
        last_modified=lower.get("last-modified"),
    )
