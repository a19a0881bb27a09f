"""An ``httpx.AsyncBaseTransport`` that sends requests with aiohttp.

httpx's own transport (httpcore) collapses under many concurrent requests (httpx #3215; see
``python -m benchmarks.fetch``), so the fetcher runs ``httpx.AsyncClient`` over aiohttp. This is
a lean variant of the ``AiohttpTransport`` of the httpx-aiohttp package (not a dependency) that
fixes what the fetcher needs:

- the URL is sent exactly as httpx encoded it (``yarl.URL(..., encoded=True)``): yarl would
  otherwise re-quote it (``%2F`` -> ``/``, ``%27`` -> ``'``), changing what servers receive;
- no cookie jar (a process-wide client must not carry one source's cookies to another);
- proxies from the environment only when the environment names one (aiohttp's ``trust_env``
  looks them up on every request, which halves throughput);
- aiohttp failures become the matching httpx exceptions (a reset is a ``ReadError``, not a
  ``ConnectTimeout``), so the fetcher translates one family.

Besides the httpx interface, :meth:`AiohttpTransport.open` sends a request given as plain
strings and returns aiohttp's response (errors mapped the same way): the fetcher's fast path,
which skips building an ``httpx.Request`` / ``httpx.Response`` pair, httpx's cookie extraction
and its per-request URL merging (about half of a request's CPU time at zero latency; see
``python -m benchmarks.fetch``).
"""

from __future__ import annotations

import functools
import os
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager

import aiohttp
import httpx
import yarl

__all__ = ["AiohttpTransport", "client_timeout", "iter_body", "read", "release", "wrap"]

# aiohttp >= 3.10 tells connect timeouts apart; before, they are plain timeouts (read).
_CONNECT_TIMEOUT: type[BaseException] | tuple[()] = getattr(aiohttp, "ConnectionTimeoutError", ())


#: What :func:`_httpx_error` translates (anything else propagates as it is).
_FAILURES = (aiohttp.ClientError, OSError)  # TimeoutError is an OSError


def _httpx_error(exc: BaseException, request: httpx.Request | None) -> httpx.TransportError:
    """The httpx exception for an aiohttp failure (the caller raises it ``from exc``).

    A plain function called from ``except`` clauses rather than a context manager: this is on
    every request's path, and entering a ``@contextmanager`` costs more than a ``try``.
    """
    if isinstance(exc, _CONNECT_TIMEOUT):
        return httpx.ConnectTimeout(str(exc), request=request)
    if isinstance(exc, TimeoutError):  # SocketTimeoutError, ServerTimeoutError, total timeout
        return httpx.ReadTimeout(str(exc) or "read timed out", request=request)
    if isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return httpx.ProxyError(str(exc), request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc), request=request)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.ReadError(str(exc) or "incomplete body", request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(str(exc), request=request)
    if isinstance(exc, aiohttp.ClientResponseError):  # malformed status line or headers
        return httpx.RemoteProtocolError(str(exc), request=request)
    return httpx.ReadError(str(exc) or type(exc).__name__, request=request)  # reset, ...


@contextmanager
def _mapped(request: httpx.Request | None) -> Iterator[None]:
    try:
        yield
    except _FAILURES as exc:
        raise _httpx_error(exc, request) from exc


async def iter_body(
    response: aiohttp.ClientResponse, request: httpx.Request | None = None
) -> AsyncIterator[bytes]:
    """The raw body of ``response`` in chunks of up to 64 KiB, failures as httpx exceptions.

    Raises
    ------
    httpx.ReadError, httpx.ReadTimeout
        The connection failed or stalled while the body was read.
    """
    with _mapped(request):
        async for chunk in response.content.iter_chunked(64 * 1024):
            yield chunk


async def read(response: aiohttp.ClientResponse) -> bytes:
    """The whole raw body of ``response`` (failures as httpx exceptions, as :func:`iter_body`).

    Raises
    ------
    httpx.ReadError, httpx.ReadTimeout
        The connection failed or stalled while the body was read.
    """
    try:
        return await response.read()
    except _FAILURES as exc:
        raise _httpx_error(exc, None) from exc


def release(response: aiohttp.ClientResponse) -> None:
    """Give ``response``'s connection back to the pool, or close it if the body is unread."""
    if response.content.at_eof():
        response.release()  # back to the pool
    else:
        response.close()  # abandoned mid-body: the connection cannot be reused


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request | None) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in iter_body(self._response, self._request):
            yield chunk

    async def aclose(self) -> None:
        release(self._response)


def wrap(response: aiohttp.ClientResponse, request: httpx.Request | None = None) -> httpx.Response:
    """``response`` as a streaming ``httpx.Response`` (its body not read yet)."""
    return httpx.Response(
        status_code=response.status,
        headers=response.raw_headers,
        stream=_Body(response, request),
        request=request,
        extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
    )


def client_timeout(
    connect: float | None, read: float | None, total: float | None = None
) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts: httpx's ``connect`` / ``read``, and a ``total`` for the request
    from sending it to the end of its body (reading the body included)."""
    return aiohttp.ClientTimeout(total=total, sock_connect=connect, sock_read=read)


@functools.lru_cache(maxsize=4)
def _ssl_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    # Loading the CA bundle takes ~20 ms of CPU, on the event loop that makes the client: do
    # it once per process (per SSL_CERT_FILE / SSL_CERT_DIR, which httpx reads), not per
    # client. A context is safe to share between connectors and loops.
    return httpx.create_ssl_context(trust_env=True)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests through one lazily created ``aiohttp.ClientSession`` (one per loop).

    Parameters
    ----------
    ssl_context
        Certificate verification; default ``httpx.create_ssl_context()``, which honours
        ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` (made once per process and setting).
    keepalive
        Seconds an idle connection stays open.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None, keepalive: float = 30.0) -> None:
        self._ssl = ssl_context or _ssl_context(
            os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
        )
        self._keepalive = keepalive
        self._trust_env = bool(urllib.request.getproxies())
        self._session: aiohttp.ClientSession | None = None
        self._default_headers: dict[str, str] | None = None

    def set_default_headers(self, headers: Mapping[str, str]) -> bool:
        """Send ``headers`` with every request that does not set them itself, so that
        :meth:`open` callers can leave them out (aiohttp merges a session's defaults faster
        than headers given per request). Only the first call sets them, and only before the
        first request; returns whether ``headers`` are the defaults in effect.
        """
        if self._default_headers is None and self._session is None:
            self._default_headers = dict(headers)
        return self._default_headers == dict(headers)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # limit=0: no pool cap; the fetcher's limiters admit requests.
            connector = aiohttp.TCPConnector(limit=0, ssl=self._ssl, keepalive_timeout=self._keepalive)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._default_headers,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=self._trust_env,
                auto_decompress=False,  # httpx decodes Content-Encoding
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        try:
            data: bytes | httpx.AsyncByteStream | None = request.content or None
        except httpx.RequestNotRead:
            data = request.stream  # type: ignore[assignment]
        with _mapped(request):
            response = await self._get_session().request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=request.headers.multi_items(),
                data=data,
                allow_redirects=False,
                timeout=client_timeout(timeout.get("connect"), timeout.get("read")),
            )
        return wrap(response, request)

    async def open(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        content: bytes | None,
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        """Send one request (no redirects followed); the response's body is not read yet.

        The caller reads it (:func:`iter_body`, or ``await response.read()``) and always
        calls :func:`release`.

        Parameters
        ----------
        url
            Sent exactly as given: it must already be encoded (``str(httpx.URL(...))``).
        headers
            The headers to send, over the defaults of :meth:`set_default_headers` (aiohttp
            adds ``Host``, ``Content-Length`` and its own ``Accept``, ``Accept-Encoding`` and
            ``User-Agent`` where these are still missing).
        timeout
            From :func:`client_timeout` (made once, not per request); its ``total`` also
            bounds reading the body.

        Raises
        ------
        httpx.TransportError
            The matching subclass (``ConnectError``, ``ConnectTimeout``, ``ReadError``, ...).
        httpx.UnsupportedProtocol
            yarl or aiohttp cannot send to ``url`` (a port out of range, ...).
        """
        try:
            return await self._get_session().request(
                method,
                yarl.URL(url, encoded=True),
                headers=headers,
                data=content,
                allow_redirects=False,
                timeout=timeout,
            )
        except _FAILURES as exc:
            raise _httpx_error(exc, None) from exc
        except ValueError as exc:  # yarl's checks httpx.URL does not make (port 99999, ...)
            raise httpx.UnsupportedProtocol(f"cannot send a request to this URL: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
