"""Secret redaction: URLs and log lines with credentials replaced by ``***``.

Used wherever a URL leaves the engine's hands: the fetcher's log records and error messages,
and the URL stored beside a cached response (:mod:`mapstream.layers.cache`). A secret is the
userinfo of a URL (``user:password@``) or the value of a query parameter whose name contains one
of :data:`SECRET_PARAMS` (``api_key``, ``access_token``, ``X-Amz-Signature``...).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["SECRET_PARAMS", "redact_text", "redact_url"]

#: Substrings of a query parameter's name (lower-cased) that mark its value as a secret.
SECRET_PARAMS = (
    "key", "token", "secret", "password", "signature", "sig", "auth", "credential", "cookie"
)

_URL_RE = re.compile(r"""https?://[^\s"'<>]+""")


def _is_secret(name: str) -> bool:
    lower = name.lower()
    return any(s in lower for s in SECRET_PARAMS)


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
    if any(_is_secret(k) for k, _ in pairs):
        query = urlencode([(k, "***" if _is_secret(k) else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with every http(s) URL in it passed through :func:`redact_url`.

    >>> redact_text('HTTP Request: GET https://h/t/1.png?apikey=S3CRET "HTTP/1.1 200 OK"')
    'HTTP Request: GET https://h/t/1.png?apikey=%2A%2A%2A "HTTP/1.1 200 OK"'
    """
    return _URL_RE.sub(lambda m: redact_url(m.group(0)), text)
