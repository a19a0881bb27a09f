"""An ``httpx.AsyncBaseTransport`` that sends requests with aiohttp.

httpx's own transport (httpcore) collapses under many concurrent requests (httpx #3215; see
``python -m benchmarks.fetch``), so the fetcher runs ``httpx.AsyncClient`` over aiohttp. This is
a lean variant of ``httpx_aiohttp.AiohttpTransport`` that fixes what the fetcher needs:

- the URL is sent exactly as httpx encoded it (``yarl.URL(..., encoded=True)``): yarl would
  otherwise re-quote it (``%2F`` -> ``/``, ``%27`` -> ``'``), changing what servers receive;
- no cookie jar (a process-wide client must not carry one source's cookies to another);
- proxies from the environment only when the environment names one (aiohttp's ``trust_env``
  looks them up on every request, which halves throughput);
- aiohttp failures become the matching httpx exceptions (a reset is a ``ReadError``, not a
  ``ConnectTimeout``), so the fetcher translates one family.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx
import yarl

__all__ = ["AiohttpTransport"]

# aiohttp >= 3.10 tells connect timeouts apart; before, they are plain timeouts (read).
_CONNECT_TIMEOUT: type[BaseException] | tuple[()] = getattr(aiohttp, "ConnectionTimeoutError", ())


@contextmanager
def _mapped(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except _CONNECT_TIMEOUT as exc:
        raise httpx.ConnectTimeout(str(exc), request=request) from exc
    except TimeoutError as exc:  # SocketTimeoutError, ServerTimeoutError
        raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
    except (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError) as exc:
        raise httpx.ProxyError(str(exc), request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc
    except aiohttp.ClientPayloadError as exc:
        raise httpx.ReadError(str(exc) or "incomplete body", request=request) from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
    except aiohttp.ClientResponseError as exc:  # malformed status line or headers
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except (aiohttp.ClientError, OSError) as exc:  # disconnected, reset, ...
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped(self._request):
            async for chunk in self._response.content.iter_chunked(64 * 1024):
                yield chunk

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # back to the pool
        else:
            self._response.close()  # abandoned mid-body: the connection cannot be reused


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests through one lazily created ``aiohttp.ClientSession`` (one per loop).

    Parameters
    ----------
    ssl_context
        Certificate verification; default ``httpx.create_ssl_context()``, which honours
        ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``.
    keepalive
        Seconds an idle connection stays open.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None, keepalive: float = 30.0) -> None:
        self._ssl = ssl_context or httpx.create_ssl_context(trust_env=True)
        self._keepalive = keepalive
        self._trust_env = bool(urllib.request.getproxies())
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # limit=0: no pool cap; the fetcher's limiters admit requests.
            connector = aiohttp.TCPConnector(limit=0, ssl=self._ssl, keepalive_timeout=self._keepalive)
            self._session = aiohttp.ClientSession(
                connector=connector,
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
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=timeout.get("connect"), sock_read=timeout.get("read")
                ),
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
