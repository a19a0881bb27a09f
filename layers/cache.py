"""Caches: the HTTP response cache on disk and a byte-bounded in-memory LRU.

:class:`DiskCache` keeps raw responses, one file per entry, with what is needed to reuse them
(RFC 9111, private-cache subset): the expiry computed from ``Cache-Control: max-age`` /
``Expires`` (or the fetcher's fallback TTL when the server sends no validators), and the
validators (``ETag``, ``Last-Modified``) used to revalidate a stale entry with a conditional
request. The fetcher (:mod:`mapstream.layers.http`) owns the protocol; this module only stores and
computes.

Entries are keyed by :func:`cache_key`, which includes a hash of the request's headers, so a
response fetched with one set of credentials is never served to a request with another, and
no secret is ever written in clear (``Set-Cookie`` is dropped and secret-looking query
parameters are redacted from the stored URL).

Why not hishel: hishel 2.0 (a new API) caches inside the transport, below the fetcher's
single-flight, retries and metrics, so it could neither report hits and revalidations per
request nor share one revalidation among concurrent callers; as a shared-cache implementation
it declines to store responses to requests with ``Authorization``, which per-credential
partitioning needs; and it has no fallback TTL for validator-less responses. The subset we need
is small enough to keep here, tested.

File format: a 4-byte big-endian length, a JSON metadata object, then the body. Files are
written to a temporary name and renamed (atomic on POSIX), so readers never see half an entry.
The directory is bounded in bytes (``$MAPSTREAM_CACHE_MAX_BYTES``, default 1 GiB): see
:class:`DiskCache` for the eviction order and what is safe when several processes share it.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import math
import os
import re
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import BadInputError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_BYTES_ENV",
    "CacheEntry",
    "DiskCache",
    "DiskUsage",
    "MemoryLRU",
    "PruneResult",
    "cache_key",
    "default_cache_dir",
    "freshness_lifetime",
    "max_bytes_from_env",
    "parse_cache_control",
    "parse_size",
    "redact_text",
    "redact_url",
]

#: Statuses a cache may store without explicit freshness (RFC 9110 "heuristically cacheable").
CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 404, 405, 410, 414, 501})

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

_SECRET_PARAMS = ("key", "token", "secret", "password", "signature", "sig", "auth", "credential", "cookie")


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The disk cache directory: ``$MAPSTREAM_CACHE_DIR``, else the per-user cache dir.

    >>> str(default_cache_dir({"MAPSTREAM_CACHE_DIR": "/tmp/ms-cache"}))
    '/tmp/ms-cache'
    >>> str(default_cache_dir({"XDG_CACHE_HOME": "/c"}))
    '/c/mapstream/http'
    """
    return user_cache_dir("http", "MAPSTREAM_CACHE_DIR", environ)


def user_cache_dir(name: str, override: str, environ: Mapping[str, str] | None = None) -> Path:
    """``$override`` if set, else ``$XDG_CACHE_HOME/mapstream/NAME`` (``~/.cache`` by default).

    >>> str(user_cache_dir("demo", "X_DIR", {"HOME": "/h", "XDG_CACHE_HOME": "/c"}))
    '/c/mapstream/demo'
    """
    env = os.environ if environ is None else environ
    if env.get(override):
        return Path(env[override])
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mapstream" / name


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


def redact_url(url: str) -> str:
    """The URL with userinfo and secret-looking query values replaced by ``***``.

    >>> redact_url("https://u:p@h.org/a?api_key=XYZ&z=3")
    'https://***@h.org/a?api_key=%2A%2A%2A&z=3'
    >>> redact_url("https://h.org/a?bbox=1,2")
    'https://h.org/a?bbox=1,2'
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(any(s in k.lower() for s in _SECRET_PARAMS) for k, _ in pairs):
        query = urlencode(
            [(k, "***" if any(s in k.lower() for s in _SECRET_PARAMS) else v) for k, v in pairs]
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_URL_RE = re.compile(r"""https?://[^\s"'<>]+""")


def redact_text(text: str) -> str:
    """``text`` with every http(s) URL in it passed through :func:`redact_url`.

    >>> redact_text('HTTP Request: GET https://h/t/1.png?apikey=S3CRET "HTTP/1.1 200 OK"')
    'HTTP Request: GET https://h/t/1.png?apikey=%2A%2A%2A "HTTP/1.1 200 OK"'
    """
    return _URL_RE.sub(lambda m: redact_url(m.group(0)), text)


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
    """
    cc = parse_cache_control(headers.get("cache-control"))
    if "no-store" in cc:
        return None
    if "no-cache" in cc:
        return 0.0
    if "max-age" in cc:
        try:
            return max(0.0, float(int(cc["max-age"] or "")))
        except ValueError:
            return 0.0
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
    extra: dict[str, Any] = field(default_factory=dict)

    def is_fresh(self, now: float | None = None) -> bool:
        """Whether the entry may be used without asking the server."""
        return (time.time() if now is None else now) < self.expires_at

    @property
    def has_validators(self) -> bool:
        return self.etag is not None or self.last_modified is not None

    def conditional_headers(self) -> dict[str, str]:
        """``If-None-Match`` / ``If-Modified-Since`` for revalidating this entry."""
        out = {}
        if self.etag is not None:
            out["If-None-Match"] = self.etag
        if self.last_modified is not None:
            out["If-Modified-Since"] = self.last_modified
        return out


def _storable_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    # Never keep a secret the server handed out.
    return [(k, v) for k, v in headers if k.lower() not in ("set-cookie", "set-cookie2")]


def make_entry(
    url: str, status: int, headers: Iterable[tuple[str, str]], body: bytes, ttl: float
) -> CacheEntry | None:
    """Build the entry for a fresh network response, or ``None`` if it must not be stored.

    >>> make_entry("http://h/a", 200, [("Cache-Control", "no-store")], b"x", 60) is None
    True
    >>> e = make_entry("http://h/a", 200, [("ETag", '"1"'), ("Set-Cookie", "s=1")], b"x", 60)
    >>> e.etag, e.headers, e.is_fresh()
    ('"1"', [('ETag', '"1"')], False)
    """
    pairs = list(headers)
    lower = {k.lower(): v for k, v in pairs}
    if status not in CACHEABLE_STATUSES:
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


#: Default bound of the disk cache: room for tens of thousands of tiles, small on any disk.
DEFAULT_MAX_BYTES = 1 << 30

#: The environment variable that overrides :data:`DEFAULT_MAX_BYTES` (e.g. ``500M``, ``2G``).
MAX_BYTES_ENV = "MAPSTREAM_CACHE_MAX_BYTES"

_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, *, name: str = "size") -> int:
    """Bytes from ``"4096"``, ``"500M"``, ``"2G"``, ``"1.5GiB"``: K, M, G, T are powers of 1024.

    Parameters
    ----------
    text
        A non-negative number, optionally followed by a unit (case-insensitive; ``B``, ``iB``
        accepted after it).
    name
        What the value is, for the error message (the setting or environment variable).

    Raises
    ------
    BadInputError
        If ``text`` is not a size; the message names ``name``.

    >>> parse_size("4096"), parse_size("500M"), parse_size("2g"), parse_size(" 1.5 GiB ")
    (4096, 524288000, 2147483648, 1610612736)
    >>> parse_size("lots", name="MAPSTREAM_CACHE_MAX_BYTES")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mapstream.layers.errors.BadInputError: MAPSTREAM_CACHE_MAX_BYTES='lots' is not a size: ...
    """
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise BadInputError(
            f"{name}={text!r} is not a size: use a number of bytes, optionally with K, M, G or T "
            "(powers of 1024), e.g. 500M or 2G"
        )
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def max_bytes_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``$MAPSTREAM_CACHE_MAX_BYTES`` in bytes, or :data:`DEFAULT_MAX_BYTES` if unset or empty.

    Raises
    ------
    BadInputError
        If the variable is set to something that is not a size (the message names it).

    >>> max_bytes_from_env({}) == DEFAULT_MAX_BYTES
    True
    >>> max_bytes_from_env({"MAPSTREAM_CACHE_MAX_BYTES": "200M"})
    209715200
    """
    env = os.environ if environ is None else environ
    value = env.get(MAX_BYTES_ENV, "").strip()
    return parse_size(value, name=MAX_BYTES_ENV) if value else DEFAULT_MAX_BYTES


class DiskUsage(NamedTuple):
    """Entries and bytes (file sizes: metadata and body) in a disk cache."""

    entries: int
    nbytes: int


class PruneResult(NamedTuple):
    """What :meth:`DiskCache.prune` removed and what it kept."""

    removed: DiskUsage
    kept: DiskUsage


class _File(NamedTuple):
    mtime_ns: int  # first: a list of these sorts least recently used first
    size: int
    path: str
    inode: int


class DiskCache:
    """Responses on disk, one file per key, bounded in bytes. Methods are blocking: call them off
    the loop.

    The bound is kept by evicting least-recently-used entries, with recency the file's
    modification time: a store writes the file and a hit touches it (``os.utime``). The file
    system is the index, so the app and ``mapstream prefetch`` can share one directory with no
    lock and no index to drift from the files or to rebuild after a crash (atime is not used:
    ``noatime``/``relatime`` mounts do not keep it).

    Eviction is amortised: each object keeps an estimate of the total (its last scan plus its
    own writes) and scans the directory only when that estimate passes ``max_bytes``, then
    evicts down to :attr:`LOW_WATER` of it, so a scan is due once per tenth of the bound
    written, not per store. A writing object also rescans every :attr:`RESCAN_SECONDS` to see
    what other processes wrote; with several writers the total can exceed the bound by about
    what the others write in that window, until the next scan. Expired entries without
    validators are evicted first (they can never be served again), then the least recently
    used. What eviction needs from each file's metadata is remembered per inode, so after the
    first eviction in a process only files written by others have their headers read. An entry
    deleted by another process is a miss; a file is replaced atomically, so a reader never sees
    half an entry, and eviction skips a file used or rewritten since it was scanned.

    Parameters
    ----------
    directory
        Where entries live; created on first write.
    max_bytes
        The bound: bytes, or a size string such as ``"500M"``. Default
        ``$MAPSTREAM_CACHE_MAX_BYTES``, else :data:`DEFAULT_MAX_BYTES` (1 GiB). ``0`` stores
        nothing. An entry larger than the bound is not stored. Bytes are file sizes; the file
        system's block rounding (``du``) can add a few KiB per entry.

    Raises
    ------
    BadInputError
        If ``max_bytes`` (or the environment variable) is not a non-negative size.
    """

    #: After an eviction the total is at most this fraction of ``max_bytes``.
    LOW_WATER = 0.9
    #: A writer rescans at least this often to notice other processes' writes.
    RESCAN_SECONDS = 30.0
    #: A temporary file older than this was left by a process that died while writing.
    STALE_TMP_SECONDS = 3600.0

    def __init__(
        self, directory: str | os.PathLike[str], max_bytes: int | str | None = None
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes_from_env() if max_bytes is None else _as_size(max_bytes)
        self._lock = threading.Lock()  # guards the estimate below
        self._evicting = threading.Lock()  # one scan-and-evict at a time per object
        self._estimate: int | None = None  # bytes on disk; None until the first scan
        self._written = 0  # bytes written (net) since the current scan began
        self._scanned_at = 0.0
        # inode -> (file size, time after which the entry is useless): what eviction needs from
        # each file's metadata, remembered from our own stores and from earlier evictions so an
        # eviction reads only the headers of files it has not seen (a ~20 us read each).
        self._useful: dict[int, tuple[int, float]] = {}

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.entry"

    def load(self, key: str) -> CacheEntry | None:
        """The entry for ``key``, or ``None`` if absent or unreadable (a corrupt file is removed).

        A hit counts as a use: it refreshes the entry's place in the eviction order.
        """
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            meta, body = _decode(data)
            entry = CacheEntry(
                url=meta["url"],
                status=meta["status"],
                headers=[tuple(p) for p in meta["headers"]],
                body=body,
                stored_at=meta["stored_at"],
                expires_at=meta["expires_at"],
                etag=meta["etag"],
                last_modified=meta["last_modified"],
            )
        except (struct.error, ValueError, KeyError, TypeError):
            # A corrupt entry is a miss, and is removed so it is not read again.
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)
        except OSError:
            pass  # deleted meanwhile, or a read-only cache: the hit stands, recency is lost
        return entry

    def store(self, key: str, entry: CacheEntry) -> None:
        """Write ``entry`` atomically (temporary file, then rename), evicting if over the bound.

        An entry larger than the whole bound, or already expired with no validators (nothing
        could ever use it), is not stored, and the old entry for ``key`` is removed.
        """
        path = self._path(key)
        meta = json.dumps(
            {
                "url": entry.url,
                "status": entry.status,
                "headers": entry.headers,
                "stored_at": entry.stored_at,
                "expires_at": entry.expires_at,
                "etag": entry.etag,
                "last_modified": entry.last_modified,
                "size": len(entry.body),
            }
        ).encode()
        size = 4 + len(meta) + len(entry.body)
        if size > self.max_bytes or not (entry.has_validators or entry.is_fresh()):
            self.delete(key)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(struct.pack(">I", len(meta)))
                fh.write(meta)
                fh.write(entry.body)
                inode = os.fstat(fh.fileno()).st_ino  # kept by the rename
            old = _size_or_zero(path)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        useful = math.inf if entry.has_validators else entry.expires_at
        self._account(size - old, (inode, size, useful))
        self._evict_if_due()

    def delete(self, key: str) -> None:
        """Remove the entry for ``key`` if there is one."""
        path = self._path(key)
        size = _size_or_zero(path)
        path.unlink(missing_ok=True)
        self._account(-size)

    def size(self) -> DiskUsage:
        """Entries and bytes on disk now (scans the directory)."""
        files = self._scan()
        usage = DiskUsage(len(files), sum(f.size for f in files))
        with self._lock:
            self._estimate, self._written = usage.nbytes, 0
            self._scanned_at = time.monotonic()
        return usage

    def __len__(self) -> int:
        """Number of entries on disk (scans the directory)."""
        return len(self._scan())

    def prune(self, max_bytes: int | str | None = None) -> PruneResult:
        """Remove expired entries without validators, then the least recently used until the
        total is at most ``max_bytes`` (default: this cache's bound).

        Raises
        ------
        BadInputError
            If ``max_bytes`` is not a non-negative size.
        """
        target = self.max_bytes if max_bytes is None else _as_size(max_bytes)
        with self._evicting:
            return self._scan_and_evict(target, over=-1)

    def clear(self) -> None:
        """Remove every entry."""
        for f in self._scan():
            with contextlib.suppress(OSError):
                os.unlink(f.path)
        with self._lock:
            self._estimate, self._written = 0, 0

    # -- eviction --------------------------------------------------------------------------

    def _account(self, delta: int, stored: tuple[int, int, float] | None = None) -> None:
        with self._lock:
            if self._estimate is not None:
                self._estimate += delta
            self._written += delta
            if stored is not None:
                self._useful[stored[0]] = stored[1:]

    def _evict_if_due(self) -> None:
        with self._lock:
            due = (
                self._estimate is None
                or self._estimate > self.max_bytes
                or time.monotonic() - self._scanned_at >= self.RESCAN_SECONDS
            )
        # If another thread of this process is already evicting, it will see our write.
        if due and self._evicting.acquire(blocking=False):
            try:
                self._scan_and_evict(int(self.max_bytes * self.LOW_WATER), over=self.max_bytes)
            finally:
                self._evicting.release()

    def _scan_and_evict(self, target: int, over: int) -> PruneResult:
        # Scan; if the total exceeds ``over``, evict the dead, then the least recently used
        # until it is at most ``target``. Caller holds self._evicting.
        with self._lock:
            self._written = 0
        files = self._scan()
        total = sum(f.size for f in files)
        entries, removed, removed_bytes = len(files), 0, 0
        with self._lock:
            known, self._useful = self._useful, {}
        useful: dict[int, tuple[int, float]] = {}
        if total <= over:
            # Forget files that are gone (replaced, evicted elsewhere): the map stays the size
            # of the directory.
            useful = {f.inode: known[f.inode] for f in files if f.inode in known}
        else:
            now = time.time()
            dead, alive = [], []
            for f in files:
                u = known.get(f.inode) if f.inode else None  # some file systems report 0
                if u is None or u[0] != f.size:  # not seen, or another file on a reused inode
                    u = (f.size, _useful_until(f.path))
                useful[f.inode] = u
                (dead if u[1] <= now else alive).append(f)
            alive.sort()  # least recently used first
            for i, f in enumerate(dead + alive):
                if i >= len(dead) and total <= target:
                    break
                gone = _unlink_unless_used(f)
                if gone is not None:  # deleted, by us (True) or by another process (False)
                    useful.pop(f.inode, None)
                    total -= f.size
                    entries -= 1
                    if gone:
                        removed += 1
                        removed_bytes += f.size
        with self._lock:
            useful.update(self._useful)  # stores made while we scanned
            self._useful = useful
            # Writes made while we scanned may be counted twice: an overestimate, which only
            # brings the next scan forward.
            self._estimate = total + self._written
            self._scanned_at = time.monotonic()
        return PruneResult(DiskUsage(removed, removed_bytes), DiskUsage(entries, total))

    def _scan(self) -> list[_File]:
        """Every entry file as (mtime, size, path); removes stale temporary files."""
        out: list[_File] = []
        stale_before = time.time() - self.STALE_TMP_SECONDS
        try:
            top = os.scandir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return out
        with top:
            subdirs = [d.path for d in top if len(d.name) == 2 and d.is_dir(follow_symlinks=False)]
        for sub in subdirs:
            try:
                it = os.scandir(sub)
            except OSError:
                continue
            with it:
                for f in it:
                    try:
                        if f.name.endswith(".entry"):
                            st = f.stat(follow_symlinks=False)
                            out.append(_File(st.st_mtime_ns, st.st_size, f.path, f.inode()))
                        elif f.name.startswith(".tmp-") and f.stat().st_mtime < stale_before:
                            os.unlink(f.path)
                    except OSError:
                        continue  # removed by another process while we looked
        return out


def _as_size(value: object) -> int:
    if isinstance(value, str):
        return parse_size(value, name="max_bytes")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 2**63:
        return int(value)
    raise BadInputError(f"max_bytes must be a size >= 0 (bytes, or a string like '2G'): {value!r}")


def _decode(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack(">I", data[:4])
    meta = json.loads(data[4 : 4 + n])
    body = data[4 + n :]
    if len(body) != meta["size"]:
        raise ValueError("size mismatch")
    return meta, body


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _useful_until(path: str) -> float:
    # When the entry becomes useless: its expiry if it has no validators (then the fetcher can
    # never use it again), else never. Reads the metadata only.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))  # no buffered file object
        try:
            head = os.read(fd, 4096)
            (n,) = struct.unpack(">I", head[:4])
            while 4 + n > len(head) and (more := os.read(fd, 4 + n - len(head))):
                head += more
        finally:
            os.close(fd)
        meta = json.loads(head[4 : 4 + n])
        if meta["etag"] is None and meta["last_modified"] is None:
            return float(meta["expires_at"])
        return math.inf
    except FileNotFoundError:
        return math.inf  # gone already; the unlink will find out
    except (OSError, struct.error, ValueError, KeyError, TypeError):
        return -math.inf  # unreadable or corrupt: useless


def _unlink_unless_used(f: _File) -> bool | None:
    """Delete ``f`` unless it was used or rewritten since the scan: True if deleted, False if
    another process deleted it first, None if it was kept."""
    try:
        if os.stat(f.path).st_mtime_ns != f.mtime_ns:
            return None
        os.unlink(f.path)
    except FileNotFoundError:
        return False
    except OSError:
        return None  # e.g. open in another process on Windows: try the next one
    return True


class MemoryLRU:
    """A thread-safe, byte-bounded least-recently-used map for decoded objects.

    Parameters
    ----------
    max_bytes
        Budget; putting a value evicts the least recently used entries until the total fits.
        A single value larger than the budget is not stored.

    >>> m = MemoryLRU(10)
    >>> m.put("a", "A", 6); m.put("b", "B", 4); _ = m.get("a"); m.put("c", "C", 3)
    >>> "b" in m, m.get("a"), m.nbytes
    (False, 'A', 9)
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise BadInputError(f"memory_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._data: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return default
            self._data.move_to_end(key)
            return item[0]

    def put(self, key: Any, value: Any, nbytes: int) -> None:
        if nbytes < 0:
            raise BadInputError(f"nbytes must be >= 0, got {nbytes}")
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._nbytes -= old[1]
            if nbytes > self.max_bytes:
                return
            self._data[key] = (value, nbytes)
            self._nbytes += nbytes
            while self._nbytes > self.max_bytes:
                _, (_, n) = self._data.popitem(last=False)
                self._nbytes -= n

    def pop(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            item = self._data.pop(key, None)
            if item is None:
                return default
            self._nbytes -= item[1]
            return item[0]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    @property
    def nbytes(self) -> int:
        """Bytes currently held (as declared by ``put``)."""
        with self._lock:
            return self._nbytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._nbytes = 0
