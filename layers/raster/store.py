"""Ranged reads of one remote file through the :class:`~mapstream.layers.http.Fetcher`.

:class:`RangeStore` is the store a TIFF reader reads through: it has the two methods of
obspec's ``GetRangeAsync`` / ``GetRangesAsync`` protocols (``get_range_async``,
``get_ranges_async``), which is all async-tiff / async-geotiff ask of a store, so every byte
of a Cloud-Optimized GeoTIFF goes through the fetcher: its per-host limits, retries,
single-flight and metrics apply to rasters as to tiles.

What a ranged read checks, so that wrong bytes never reach a decoder:

- ``206 Partial Content``: ``Content-Range`` must start at the byte asked for and cover the
  range (or end at the end of the file), and the body must be as long as it says;
- ``200 OK`` to a ``Range`` request (a server that ignores ``Range``): the body is the whole
  file; the range is cut out of it and the body is kept in memory, so the next ranges of the
  file cost no request;
- ``416 Range Not Satisfiable``: :class:`~mapstream.layers.errors.RangeError`;
- the first response *pins* the file: its ``ETag`` (sent as ``If-Match`` when strong, and
  compared in every later response), its ``Last-Modified`` and its size. A later response that
  differs, or a ``412`` to ``If-Match``, raises :class:`~mapstream.layers.errors.SourceChangedError`.

Nearby ranges of one call are merged into one request when the gap between them is at most
:data:`MERGE_GAP` bytes and the merged request at most :data:`MAX_REQUEST` bytes; a range that
a request already in flight covers (another view of the same file, read at the same time)
waits for that request instead of asking again (single-flight by coverage). Every range
read is kept in ``fetcher.memory`` (keyed by URL, pin and range), so reading a view again makes
no request. Ranged GETs go through the fetcher's disk cache, whose key holds the ``Range`` (and
the pinned ``If-Match``) header: a ``206`` is stored as the answer to that exact range, never as
the whole file, and revalidated with its ``ETag`` like any entry, so another process (the CLI,
a restarted app) reads a COG it read before from disk.
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import BadInputError, LayersError, RangeError, SourceChangedError, StatusError
from ..http.flight import SingleFlight
from ..redact import redact_url

if TYPE_CHECKING:  # pragma: no cover
    from ..http import Fetcher, Response

__all__ = ["MAX_REQUEST", "MERGE_GAP", "RangeStore", "merge_ranges", "parse_content_range"]

#: Two ranges closer than this (bytes) are read in one request: a seek costs a round trip, a few
#: tiles' worth of extra bytes do not. Larger gaps merge a window's rows of tiles too (in a COG
#: they are a row of tiles apart) but read bytes nobody asked for: on the benchmark, 256 KiB
#: halved the requests and more than doubled the bytes, for 0.42x rasterio's time instead of
#: about 0.6x.
MERGE_GAP = 64 * 1024
#: A merged request never grows past this many bytes (so one slow request does not hold back
#: many tiles, and concurrency stays useful).
MAX_REQUEST = 4 * 2**20

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``(first, last, size)`` of a ``Content-Range: bytes first-last/size`` header.

    ``size`` is None for ``*``; None for a missing or malformed header.

    >>> parse_content_range("bytes 0-99/1234"), parse_content_range("bytes 5-9/*")
    ((0, 99, 1234), (5, 9, None))
    >>> parse_content_range("bytes */1234") is None, parse_content_range(None) is None
    (True, True)
    """
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None
    first, last, size = m.groups()
    return int(first), int(last), None if size == "*" else int(size)


def _size_of_416(value: str | None) -> int | None:
    m = re.match(r"^\s*bytes\s+\*/(\d+)\s*$", value or "", re.IGNORECASE)
    return int(m.group(1)) if m else None


def merge_ranges(
    ranges: Sequence[tuple[int, int]], *, gap: int = MERGE_GAP, cap: int = MAX_REQUEST
) -> list[tuple[int, int]]:
    """Half-open byte ranges merged where they are at most ``gap`` apart, up to ``cap`` bytes.

    A single range longer than ``cap`` stays whole.

    >>> merge_ranges([(0, 10), (12, 20), (100, 110)], gap=5)
    [(0, 20), (100, 110)]
    >>> merge_ranges([(0, 10), (10, 20), (20, 30)], gap=0, cap=20)
    [(0, 20), (20, 30)]
    >>> merge_ranges([(50, 60), (0, 100)], gap=0)
    [(0, 100)]
    """
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start - out[-1][1] <= gap and max(end, out[-1][1]) - out[-1][0] <= cap:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return out


class _Pin(NamedTuple):
    etag: str | None
    last_modified: str | None
    size: int | None


@dataclass
class _Stats:
    requests: int = 0  # ranged GETs sent (each may be served by the fetcher's flight)
    ranges: int = 0  # ranges asked for by the reader
    memory_hits: int = 0


class RangeStore:
    """An obspec-style store for one remote file, read in ranges through ``fetcher``.

    Parameters
    ----------
    url
        The file (http or https).
    fetcher
        Every request goes through it.
    headers
        Extra request headers (credentials); part of every key.
    merge_gap, max_request
        As :data:`MERGE_GAP` and :data:`MAX_REQUEST`.
    use_cache
        Read through the fetcher's disk cache (False: always ask the server, e.g. after the
        file changed, so that no stored part of an older version is read again).

    Raises
    ------
    BadInputError
        ``url`` is not an http(s) URL.
    """

    def __init__(
        self,
        url: str,
        fetcher: Fetcher,
        *,
        headers: Mapping[str, str] | None = None,
        merge_gap: int = MERGE_GAP,
        max_request: int = MAX_REQUEST,
        use_cache: bool = True,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise BadInputError(f"a range store reads http(s) URLs, got {url!r}")
        self.url = url
        self.fetcher = fetcher
        self.headers = dict(headers or {})
        self.merge_gap = merge_gap
        self.max_request = max_request
        self.use_cache = use_cache
        self.pin: _Pin | None = None
        self.stats = _Stats()
        #: The last engine error a read raised (a TIFF reader may re-raise it as a plain one).
        self.error: LayersError | None = None
        self._lock = asyncio.Lock()
        self._key = (url, tuple(sorted(self.headers.items())))
        # Per event loop: the requests in flight, by byte range (range -> callers waiting).
        self._loops: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[SingleFlight[tuple[int, int]], dict[tuple[int, int], int]]
        ] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"RangeStore({redact_url(self.url)!r})"

    # -- the obspec protocol --------------------------------------------------------------

    async def get_range_async(
        self, path: str, *, start: int, end: int | None = None, length: int | None = None
    ) -> bytes:
        """Bytes ``[start, end)`` (or ``length`` bytes from ``start``) of the file.

        ``path`` is ignored: a store reads one file. Past the end of the file the rest of it is
        returned (obspec's rule), possibly empty.

        Raises
        ------
        RangeError
            416, or a 206 that is not the range asked for.
        SourceChangedError
            The file is not the one first read.
        FetchError
            As :meth:`Fetcher.get <mapstream.layers.http.Fetcher.get>`.
        """
        end = _end(start, end, length)
        return (await self.read([(start, end)]))[0]

    async def get_ranges_async(
        self,
        path: str,
        *,
        starts: Sequence[int],
        ends: Sequence[int] | None = None,
        lengths: Sequence[int] | None = None,
    ) -> list[bytes]:
        """Several ranges at once, merged where close (see :func:`merge_ranges`).

        Raises
        ------
        RangeError, SourceChangedError, FetchError
            As :meth:`get_range_async`.
        """
        if ends is None:
            if lengths is None:
                raise BadInputError("get_ranges_async needs ends or lengths")
            ends = [s + n for s, n in zip(starts, lengths, strict=True)]
        return await self.read(list(zip(starts, ends, strict=True)))

    # -- reading ------------------------------------------------------------------------

    async def read(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each half-open range, in order, fetched concurrently where missing.

        Raises
        ------
        RangeError, SourceChangedError, FetchError
            As :meth:`get_range_async`.
        """
        try:
            return await self._read(ranges)
        except LayersError as exc:
            self.error = exc
            raise
        except BaseExceptionGroup as group:  # a TaskGroup's: raise the first engine error
            first = next((e for e in _leaves(group) if isinstance(e, LayersError)), None)
            if first is None:
                raise
            self.error = first
            raise first from None

    async def _read(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        self.stats.ranges += len(ranges)
        if self.pin is None:
            # The first read pins the file; later reads compare with it, so it runs alone.
            async with self._lock:
                if self.pin is None:
                    first = await self._fetch(ranges[0][0], ranges[0][1])
                    self._remember(ranges[0], first)
        found: dict[tuple[int, int], bytes] = {}
        whole = self._whole()
        missing = []
        for rng in dict.fromkeys(ranges):
            hit = self._cut(whole, rng) if whole is not None else self.fetcher.memory.get(self._memkey(rng))
            if hit is None:
                missing.append(rng)
            else:
                self.stats.memory_hits += 1
                found[rng] = hit
        if missing:
            _, flying = self._flights()
            # ranges a request in flight covers wait for it; the rest are merged and asked for
            covered = {r: next((g for g in flying if g[0] <= r[0] and r[1] <= g[1]), None) for r in missing}
            new = merge_ranges(
                [r for r, g in covered.items() if g is None], gap=self.merge_gap, cap=self.max_request
            )
            groups = list(dict.fromkeys([*new, *(g for g in covered.values() if g is not None)]))
            flights, flying = self._flights()
            for g in groups:  # now, before any task runs: the next read sees them
                flying[g] = flying.get(g, 0) + 1
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks = [tg.create_task(flights.run(g, self._fetcher_of(g))) for g in groups]
            finally:
                for g in groups:
                    flying[g] -= 1
                    if not flying[g]:
                        del flying[g]
            bodies = {g: t.result() for g, t in zip(groups, tasks, strict=True)}
            for rng in missing:
                group = covered[rng] or next(g for g in new if g[0] <= rng[0] and rng[1] <= g[1])
                start, body = bodies[group]
                data = body[rng[0] - start : rng[1] - start]
                found[rng] = data
                if self._whole() is None:
                    self._remember(rng, (start, body))
        return [found[r] for r in ranges]

    def _flights(self) -> tuple[SingleFlight[tuple[int, int]], dict[tuple[int, int], int]]:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = (SingleFlight(loop), {})
        return state

    def _fetcher_of(self, rng: tuple[int, int]) -> Any:
        return lambda: self._fetch(*rng)

    def _memkey(self, rng: tuple[int, int]) -> tuple[object, ...]:
        return ("range", self._key, self.pin, rng)

    def _whole(self) -> bytes | None:
        hit = self.fetcher.memory.get(("whole", self._key, self.pin))
        return hit if isinstance(hit, bytes) else None

    @staticmethod
    def _cut(body: bytes, rng: tuple[int, int]) -> bytes:
        return body[rng[0] : rng[1]]

    def _remember(self, rng: tuple[int, int], got: tuple[int, bytes]) -> None:
        start, body = got
        if start == 0 and self.pin is not None and self.pin.size == len(body):
            return  # a whole body: stored by _fetch under its own key
        data = body[rng[0] - start : rng[1] - start]
        self.fetcher.memory.put(self._memkey(rng), data, len(data) + 200)

    async def _fetch(self, start: int, end: int) -> tuple[int, bytes]:
        """``(offset, body)`` whose body covers ``[start, end)`` (or up to the end of file)."""
        if end <= start:
            return start, b""
        headers = {**self.headers, "Range": f"bytes={start}-{end - 1}"}
        pin = self.pin
        if pin is not None and pin.etag and not pin.etag.startswith("W/"):
            headers["If-Match"] = pin.etag  # a strong ETag: the server refuses a new version
        self.stats.requests += 1
        resp = await self.fetcher.get(self.url, headers=headers, allow_status=(412, 416), cache=self.use_cache)
        url = redact_url(self.url)
        if resp.status == 412:
            raise SourceChangedError(
                f"{url} changed while it was read (412 to If-Match {pin.etag if pin else ''}): "
                "read it again", url=url
            )
        if resp.status == 416:
            size = _size_of_416(resp.headers.get("content-range"))
            known = f" (the file has {size} bytes)" if size is not None else ""
            raise RangeError(
                f"{url} answered 416 Range Not Satisfiable to bytes={start}-{end - 1}{known}: "
                "the file is shorter than its header says, or the server cannot serve ranges",
                url=url,
            )
        if resp.status == 206:
            return start, self._check_partial(resp, start, end, url)
        if resp.status == 200:  # Range ignored: the whole file
            body = resp.content
            self._check_pin(resp, len(body), url)
            if self.pin is None:
                self.pin = _Pin(resp.headers.get("etag"), resp.headers.get("last-modified"), len(body))
            self.fetcher.memory.put(("whole", self._key, self.pin), body, len(body) + 200)
            return 0, body
        raise StatusError(resp.status, url, reason="unexpected status to a ranged GET")

    def _check_partial(self, resp: Response, start: int, end: int, url: str) -> bytes:
        ctype = resp.headers.get("content-type", "").lower()
        if ctype.startswith("multipart/"):
            raise RangeError(f"{url} answered one range with {ctype}", url=url)
        parsed = parse_content_range(resp.headers.get("content-range"))
        if parsed is None:
            raise RangeError(
                f"{url} answered 206 without a usable Content-Range "
                f"({resp.headers.get('content-range')!r}) to bytes={start}-{end - 1}",
                url=url,
            )
        first, last, size = parsed
        body = resp.content
        want_last = end - 1 if size is None else min(end, size) - 1
        if first != start or last < want_last or last - first + 1 != len(body):
            raise RangeError(
                f"{url} answered bytes {first}-{last} ({len(body)} bytes of body) to a request "
                f"for bytes={start}-{end - 1}",
                url=url,
            )
        self._check_pin(resp, size, url)
        if self.pin is None:
            self.pin = _Pin(resp.headers.get("etag"), resp.headers.get("last-modified"), size)
        return body[: end - start]

    def _check_pin(self, resp: Response, size: int | None, url: str) -> None:
        pin = self.pin
        if pin is None:
            return
        etag, modified = resp.headers.get("etag"), resp.headers.get("last-modified")
        changed = []
        if pin.etag and etag and etag != pin.etag:
            changed.append(f"ETag {pin.etag} -> {etag}")
        elif not (pin.etag and etag) and pin.last_modified and modified and modified != pin.last_modified:
            changed.append(f"Last-Modified {pin.last_modified} -> {modified}")
        if pin.size is not None and size is not None and size != pin.size:
            changed.append(f"size {pin.size} -> {size} bytes")
        if changed:
            raise SourceChangedError(
                f"{url} changed while it was read ({', '.join(changed)}): read it again", url=url
            )


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _end(start: int, end: int | None, length: int | None) -> int:
    if end is None:
        if length is None:
            raise BadInputError("a range needs end or length")
        end = start + length
    if start < 0 or end < start:
        raise BadInputError(f"bad byte range [{start}, {end})")
    return end
