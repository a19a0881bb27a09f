"""One attempt of a request on the wire: admission, the send, the body under its size limit,
and foreign failures translated into the engine's errors (:func:`fetch_error`).

With the aiohttp transport (the default) an attempt skips ``client.send`` and goes straight to
the client's own transport (:meth:`mapstream.layers.http.transport.AiohttpTransport.open`): the
client has no auth, cookie jar, mounts or event hooks to apply, and building the
``httpx.Request`` / ``httpx.Response`` pair, extracting cookies into a jar that refuses them all
and re-parsing the URL cost more CPU than aiohttp's whole request (``python -m
benchmarks.fetch``). What ``client.send`` did is kept: the client's default headers under the
caller's, redirects followed by httpx's rules (:func:`mapstream.layers.http.redirects.follow`),
httpx's ``Content-Encoding`` decoding, its ``HTTP Request:`` log line and its exceptions
(translated as before). Any other transport, or a client given event hooks or auth, still goes
through ``client.send``.

Both paths follow redirects here, one hop at a time, so both apply the same rules beyond
httpx's (:mod:`.redirects`): a redirect to another origin drops every header the request was
configured with, and a redirect from a public origin to an internal address is refused.

The total timeout bounds the whole attempt, the body included: a body that trickles in a
byte at a time ends at ``total_timeout`` with a
:class:`~mapstream.layers.errors.TotalTimeoutError`, which is not retried (another attempt
would take as long), so a request never runs for a multiple of the total timeout.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator

import httpx

from ..errors import (
    BadInputError,
    FetchTimeoutError,
    LayersError,
    ResponseTooLargeError,
    TotalTimeoutError,
    TransportError,
)
from ..redact import redact_text, redact_url
from . import transport as _aio
from .admission import Admission
from .metrics import FetchMetrics
from .redirects import REDIRECT_SENSITIVE, REDIRECT_STATUSES, RedirectGuard, follow
from .response import Response

__all__ = ["Wire", "check_headers", "fetch_error"]

#: The direct path logs each exchange as httpx's client does, on its logger (same level, format).
_HTTPX_LOG = logging.getLogger("httpx")
#: A timeout met after this fraction of the total timeout is the total timeout (aiohttp rounds
#: its deadline up, never down; a read timeout this late is as good as the total).
_TOTAL_SPENT = 0.98
#: RFC 9110 5.1 token (a header name) and field value (visible ASCII, space and tab only).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
#: Header names already checked (a few dozen in a process: a set lookup beats the regex).
_NAMES_SEEN: set[str] = set()


def _good_name(name: str) -> bool:
    if _HEADER_NAME.fullmatch(name) is None:
        return False
    if len(_NAMES_SEEN) < 1024:
        _NAMES_SEEN.add(name)
    return True


def check_headers(headers: dict[str, str], url: str) -> None:
    """Refuse headers that cannot be sent as they are: a name that is not an HTTP token, a
    value with a line break or NUL (it would split the request), or non-ASCII text (httpx
    refuses it, aiohttp would send UTF-8 bytes the server may read otherwise).

    >>> check_headers({"X-Api-Key": "a\\r\\nHost: evil"}, "http://h.test/")
    Traceback (most recent call last):
    ...
    mapstream.layers.errors.BadInputError: header 'X-Api-Key' for http://h.test/ contains a line break or NUL: refused (check where its value comes from, e.g. an environment variable)
    >>> check_headers({"X-Key": "café"}, "http://h.test/")
    Traceback (most recent call last):
    ...
    mapstream.layers.errors.BadInputError: header 'X-Key' for http://h.test/ holds non-ASCII characters: encode the value as the server expects (e.g. percent-encoding)
    >>> check_headers({"X Key": "v"}, "http://h.test/")
    Traceback (most recent call last):
    ...
    mapstream.layers.errors.BadInputError: header name 'X Key' for http://h.test/ is not a valid HTTP header name

    Raises
    ------
    BadInputError
        Which header, and why (the value is not shown: it may be a secret).
    """
    for name, value in headers.items():
        # The fast test first (str methods, ~0.1 us): visible ASCII and spaces, a known name.
        if value.isascii() and value.isprintable() and (name in _NAMES_SEEN or _good_name(name)):
            continue
        if _HEADER_NAME.fullmatch(name) and _HEADER_VALUE.fullmatch(value):
            continue  # a tab in the value
        if not _HEADER_NAME.fullmatch(name):
            problem = f"header name {name!r} for {redact_url(url)} is not a valid HTTP header name"
        elif "\r" in value or "\n" in value or "\0" in value:
            problem = (
                f"header {name!r} for {redact_url(url)} contains a line break or NUL: refused "
                "(check where its value comes from, e.g. an environment variable)"
            )
        elif not value.isascii():
            problem = (
                f"header {name!r} for {redact_url(url)} holds non-ASCII characters: encode the "
                "value as the server expects (e.g. percent-encoding)"
            )
        else:
            problem = f"header {name!r} for {redact_url(url)} holds control characters"
        raise BadInputError(problem)


def fetch_error(exc: Exception, url: str) -> LayersError:
    """An httpx failure (or a timeout) as one of ours; the caller raises it ``from exc``.

    >>> fetch_error(httpx.ReadTimeout("slow"), "http://h.test/a?token=s3cr3t")
    FetchTimeoutError('timed out (ReadTimeout): http://h.test/a?token=%2A%2A%2A')
    >>> type(fetch_error(httpx.UnsupportedProtocol("ftp"), "ftp://h.test/")).__name__
    'BadInputError'
    """
    safe = redact_url(url)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return BadInputError(f"unsupported URL {safe}: {exc}")
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return FetchTimeoutError(f"timed out ({type(exc).__name__}): {safe}", url=safe)
    # Connection failures, decoding errors, too many redirects.
    return TransportError(f"{type(exc).__name__}: {redact_text(str(exc))} ({safe})", url=safe)


class Wire:
    """One event loop's way onto the network: its ``httpx.AsyncClient`` and its admission.

    Parameters
    ----------
    loop
        The loop the client belongs to.
    client
        The client (made for this loop).
    admission
        Slots per host and overall, taken for the whole attempt.
    metrics
        Told of requests in flight and of every response.
    total_timeout
        Seconds for a whole attempt (headers, body, redirects).
    max_response_bytes
        Larger bodies raise :class:`~mapstream.layers.errors.ResponseTooLargeError`.
    own_transport
        The client's transport was made for this client alone, so its session may send the
        client's default headers itself.
    redirects
        Which redirects are refused (default: a :class:`~.redirects.RedirectGuard` that
        refuses public -> internal).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: httpx.AsyncClient,
        admission: Admission,
        metrics: FetchMetrics,
        *,
        total_timeout: float,
        max_response_bytes: int,
        own_transport: bool,
        redirects: RedirectGuard | None = None,
    ) -> None:
        self.loop = loop
        self.client = client
        self.admission = admission
        self.metrics = metrics
        self.total_timeout = total_timeout
        self.max_response_bytes = max_response_bytes
        self.redirects = redirects if redirects is not None else RedirectGuard()
        #: The client's transport when attempts may skip ``client.send`` (see the module notes).
        self.direct: _aio.AiohttpTransport | None = None
        #: The client's default headers, names lower-cased, that the direct path sends itself
        #: (none when the transport's session sends them all).
        self.base_headers: dict[str, str] = {}
        #: aiohttp's form of the connect/read/total timeouts, made once.
        self.aio_timeout = None
        transport = client._transport
        if isinstance(transport, _aio.AiohttpTransport):
            self.direct = transport
            self.base_headers = dict(client.headers.items())
            if (
                own_transport
                and not REDIRECT_SENSITIVE & self.base_headers.keys()
                and transport.set_default_headers(self.base_headers)
            ):
                self.base_headers = {}  # the session sends them (~5 us less a request)
            timeout = client.timeout
            self.aio_timeout = _aio.client_timeout(timeout.connect, timeout.read, total_timeout)

    async def attempt(
        self, method: str, url: str, netloc: str, headers: dict[str, str], content: bytes | None
    ) -> Response:
        """Send one request once it is admitted and read its whole body.

        Returns the response whatever its status (redirects followed).

        Raises
        ------
        FetchTimeoutError, TransportError
            The request failed on the wire.
        TotalTimeoutError
            The whole response took longer than ``total_timeout`` (not worth retrying).
        ResponseTooLargeError
            The body is over ``max_response_bytes``.
        RedirectRefusedError
            A redirect from a public origin to an internal address.
        BadInputError
            The URL (or a redirect) is not an http(s) URL, or a header value holds a line break.
        """
        if headers:
            check_headers(headers, url)
        host = await self.admission.enter(netloc)
        metrics = self.metrics
        metrics.add_in_flight(1)
        start = time.perf_counter()
        client = self.client
        try:
            if self.direct is not None and client.auth is None and not (
                client.event_hooks["request"] or client.event_hooks["response"]
            ):  # aiohttp applies the total timeout (cheaper than asyncio.timeout)
                final, status, rheaders, body = await self._exchange(method, url, headers, content)
            else:
                async with asyncio.timeout(self.total_timeout):
                    final, status, rheaders, body = await self._send(method, url, headers, content)
        except (httpx.HTTPError, TimeoutError) as exc:
            if isinstance(exc, httpx.TimeoutException | TimeoutError) and (
                time.perf_counter() - start >= _TOTAL_SPENT * self.total_timeout
            ):
                safe = redact_url(url)
                raise TotalTimeoutError(
                    f"no complete response within the total timeout of {self.total_timeout:g} s "
                    f"(the server answers too slowly, or its body never ends): {safe}; raise "
                    "Fetcher(total_timeout=...) if the server is only slow",
                    url=safe,
                ) from exc
            raise fetch_error(exc, url) from exc
        finally:
            metrics.add_in_flight(-1)
            self.admission.leave(host)
        elapsed = time.perf_counter() - start
        metrics.record_response(elapsed, len(body))
        return Response(final, status, rheaders, body, elapsed=elapsed)

    async def _send(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None
    ) -> tuple[str, int, httpx.Headers, bytes]:
        """One attempt through ``client.send``, following redirects here (one hop at a time) so
        that :mod:`.redirects`' rules apply as on the direct path.

        Raises
        ------
        httpx.HTTPError
            As ``client.send`` would, and ``httpx.TooManyRedirects``.
        ResponseTooLargeError, RedirectRefusedError
            The body is over the limit; a redirect is refused.
        """
        client = self.client
        first = url
        bound = {k.lower() for k in headers}
        sent = {k.lower(): v for k, v in headers.items()}
        for _ in range(client.max_redirects + 1 if client.follow_redirects else 1):
            async with client.stream(
                method, url, headers=sent, content=content, follow_redirects=False
            ) as r:
                location = r.headers.get("location")
                if location is not None and r.status_code in REDIRECT_STATUSES and client.follow_redirects:
                    current = httpx.URL(url)
                    method, u, sent, content = follow(
                        method, current, r.status_code, location, sent, content, bound=bound
                    )
                    await self.redirects.check(first, current, u)
                    url = str(u)
                    continue
                body = await self._read_body(r.aiter_bytes(), r.headers.get("content-length"), url)
                return str(r.url), r.status_code, r.headers, body
        raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.")

    async def _exchange(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None
    ) -> tuple[str, int, httpx.Headers, bytes]:
        """One attempt straight over the client's aiohttp transport, doing what ``client.send``
        would: default headers, redirects, decoding, the log line. Returns the final URL, the
        status, the headers and the body. The total timeout bounds the whole attempt,
        redirects included.

        Raises
        ------
        httpx.TransportError, httpx.TooManyRedirects, httpx.DecodingError
            As ``client.send`` would (the caller translates them).
        ResponseTooLargeError, RedirectRefusedError
            The body is over the limit; a redirect is refused.
        """
        client = self.client
        assert self.direct is not None and self.aio_timeout is not None
        first = url
        base = self.base_headers
        sent = base
        if headers:
            sent = {**sent, **{k.lower(): v for k, v in headers.items()}}
        content = content or None
        timeout = self.aio_timeout
        deadline = self.loop.time() + self.total_timeout
        for _ in range(client.max_redirects + 1 if client.follow_redirects else 1):
            resp = await self.direct.open(method, url, sent or None, content, timeout)
            try:
                _HTTPX_LOG.info('HTTP Request: %s %s "HTTP/1.1 %d %s"', method, url, resp.status, resp.reason or "")
                location = resp.headers.get("Location")
                if location is not None and not location.isascii():
                    # aiohttp decodes header bytes as UTF-8 with surrogates; httpx, as Latin-1
                    location = location.encode("utf-8", "surrogateescape").decode("latin-1")
                if location is not None and resp.status in REDIRECT_STATUSES and client.follow_redirects:
                    current = httpx.URL(url)
                    # Every header the request was configured with is bound to its origin;
                    # a default the caller had overridden comes back as the default.
                    bound = {k.lower() for k in headers}
                    method, u, sent, content = follow(
                        method, current, resp.status, location, sent, content, bound=bound
                    )
                    for name in bound:
                        if name not in sent and name in base:
                            sent[name] = base[name]
                    await self.redirects.check(first, current, u)
                    url = str(u)
                    left = deadline - self.loop.time()
                    if left <= 0:
                        raise httpx.ReadTimeout("total timeout spent on redirects")
                    timeout = _aio.client_timeout(timeout.sock_connect, timeout.sock_read, left)
                    continue
                if resp.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
                    # Decoded by httpx: exactly the codings its Accept-Encoding offered.
                    body = await self._read_body(
                        _aio.wrap(resp).aiter_bytes(), resp.headers.get("Content-Length"), url
                    )
                elif resp.content_length is not None and resp.content_length <= self.max_response_bytes:
                    body = await _aio.read(resp)  # the framing bounds it: one read, no chunk list
                else:
                    body = await self._read_body(_aio.iter_body(resp), resp.headers.get("Content-Length"), url)
            finally:
                _aio.release(resp)
            return url, resp.status, httpx.Headers(resp.raw_headers), body
        raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.")

    async def _read_body(self, chunks: AsyncIterator[bytes], declared: str | None, url: str) -> bytes:
        limit = self.max_response_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ResponseTooLargeError(redact_url(url), limit)
        parts: list[bytes] = []
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:  # checked while streaming, on decoded bytes (zip bombs too)
                raise ResponseTooLargeError(redact_url(url), limit)
            parts.append(chunk)
        return b"".join(parts)
