"""The :class:`Response` value the fetcher returns (from the network or the cache), its body
decoded as text or JSON, and the status check that turns an error status into an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import ParseError, StatusError
from ..redact import redact_url

__all__ = ["Response", "check_status", "content_charset"]


def content_charset(content_type: str, default: str = "utf-8") -> str:
    """The ``charset`` parameter of a ``Content-Type`` value, or ``default``.

    >>> content_charset('text/plain; charset="ISO-8859-1"'), content_charset("text/html")
    ('ISO-8859-1', 'utf-8')
    >>> content_charset("text/xml;Charset=windows-1252;q=1")
    'windows-1252'
    """
    for part in content_type.split(";")[1:]:  # the first part is the media type
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            return value.strip('"')
    return default


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response, from the network or the cache."""

    url: str
    status: int
    headers: httpx.Headers
    content: bytes
    from_cache: bool = False
    revalidated: bool = False
    elapsed: float = 0.0

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises
        ------
        ParseError
            The body is not valid JSON.
        """
        import orjson

        try:
            return orjson.loads(self.content)
        except orjson.JSONDecodeError as exc:
            raise ParseError(f"invalid JSON: {exc}", url=self.url) from exc

    @property
    def text(self) -> str:
        """The body decoded with the charset the server declared (UTF-8 otherwise).

        >>> Response("http://h.test/", 200, httpx.Headers({"Content-Type": "text/plain; charset=latin-1"}),
        ...          "café".encode("latin-1")).text
        'café'
        >>> Response("http://h.test/", 200, httpx.Headers({"Content-Type": "text/plain; charset=zlib_codec"}),
        ...          b"ok").text
        'ok'
        """
        charset = content_charset(self.headers.get("content-type", ""))
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:  # a charset Python does not know, or not a text encoding (a server's word)
            return self.content.decode("utf-8", errors="replace")


def check_status(resp: Response, allow_status: tuple[int, ...]) -> Response:
    """``resp`` itself if its status is 2xx or in ``allow_status``.

    Raises
    ------
    StatusError
        Any other status (with httpx's reason phrase, and the URL redacted).
    """
    if 200 <= resp.status < 300 or resp.status in allow_status:
        return resp
    reason = httpx.codes.get_reason_phrase(resp.status)
    raise StatusError(resp.status, redact_url(resp.url), reason=reason)
