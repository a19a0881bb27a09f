"""Errors raised by the :mod:`mapstream.layers` engine.

Every failure the engine reports is a :class:`LayersError`. Foreign exceptions (httpx, OS,
parsers) are translated once, at the boundary where they occur, with ``raise ... from exc`` so
the original stays attached as ``__cause__``.

Every error survives ``copy.deepcopy`` and ``pickle`` with its message and attributes (results
carry errors, and results are copied and sent to worker processes): :meth:`LayersError.__reduce__`
rebuilds an error from its ``args`` and attributes without calling ``__init__``, whose
parameters differ from ``args`` (``StatusError(status, url)`` has the message as its one arg).
The cause and traceback are not kept, as for any pickled exception.

The tree::

    LayersError
    ├── BadInputError           bad arguments or settings (also a ValueError)
    ├── CatalogError            a catalog file that cannot be used (also a BadInputError)
    ├── CapabilityError         a request the server does not declare it can answer (also a BadInputError)
    ├── FetchError              a request that did not produce a usable response
    │   ├── StatusError         the server answered with an error status (keeps status, URL)
    │   ├── FetchTimeoutError   connect / read / total timeout
    │   │   └── TotalTimeoutError  the whole response took longer than the total timeout (never retried)
    │   ├── TransportError      connection refused, reset, truncated body, TLS, ...
    │   ├── ResponseTooLargeError  the body exceeded the fetcher's size limit
    │   ├── RedirectRefusedError  a redirect from a public origin to an internal address
    │   ├── RetriesExhaustedError  retries used up; ``last_error`` is the final failure
    │   ├── RetryAfterTooLongError  the server asks for a longer wait than the fetcher allows
    │   ├── RangeError      a ranged read answered with the wrong bytes, or 416
    │   ├── SourceChangedError  the file changed while it was read (ETag / size differ)
    │   └── PagingError     paging that cannot be followed: loops, repeats, lying counts, a next link changing the query
    ├── TileError               one tile of a mosaic that failed (keeps its key, URL, status)
    ├── ParseError              a response that could not be decoded or parsed (keeps URL)
    └── ServiceError            an embedded demo service that would not start
"""

from __future__ import annotations

__all__ = [
    "LayersError",
    "BadInputError",
    "CatalogError",
    "FetchError",
    "StatusError",
    "FetchTimeoutError",
    "TotalTimeoutError",
    "TransportError",
    "ResponseTooLargeError",
    "RedirectRefusedError",
    "RetriesExhaustedError",
    "RetryAfterTooLongError",
    "RangeError",
    "SourceChangedError",
    "PagingError",
    "CapabilityError",
    "TileError",
    "ParseError",
    "ServiceError",
]


class LayersError(Exception):
    """Base class of every error the engine raises.

    >>> import copy, pickle
    >>> err = RetriesExhaustedError("http://h/a", 3, StatusError(503, "http://h/a"))
    >>> again = pickle.loads(pickle.dumps(err))
    >>> str(again) == str(err), again.attempts, again.last_error.status, again.url
    (True, 3, 503, 'http://h/a')
    >>> copy.deepcopy(StatusError(404, "http://h/b")).status
    404
    """

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[LayersError], args: tuple[object, ...], state: dict[str, object]) -> LayersError:
    """An error of ``cls`` with ``args`` and attributes ``state``, without calling ``__init__``."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class BadInputError(LayersError, ValueError):
    """An argument or setting the engine cannot work with."""


class CatalogError(BadInputError):
    """A catalog file that is missing, malformed or invalid."""


class FetchError(LayersError):
    """A request that did not produce a usable response.

    Parameters
    ----------
    message
        What went wrong, in words a user can act on.
    url
        The URL requested (credentials already redacted by the caller).
    """

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class StatusError(FetchError):
    """The server answered with a status the caller did not accept."""

    def __init__(self, status: int, url: str, *, reason: str = "") -> None:
        text = f"HTTP {status}{' ' + reason if reason else ''} for {url}"
        super().__init__(text, url=url)
        self.status = status
        self.reason = reason


class FetchTimeoutError(FetchError):
    """Connect, read or total time limit exceeded."""


class TotalTimeoutError(FetchTimeoutError):
    """The whole response (headers and body, redirects included) did not arrive within the
    fetcher's ``total_timeout``: a server that answers too slowly, or a body that trickles in
    and never ends. Never retried: another attempt would take as long."""


class TransportError(FetchError):
    """The connection failed: refused, reset, truncated, TLS, DNS, proxy."""


class ResponseTooLargeError(FetchError):
    """The response body is larger than the fetcher's limit."""

    def __init__(self, url: str, limit: int) -> None:
        super().__init__(f"response from {url} exceeds the {limit}-byte limit", url=url)
        self.limit = limit


class RedirectRefusedError(FetchError):
    """A redirect the fetcher will not follow: from a public origin to a loopback, private or
    link-local address (allowed per source with ``allow_private_redirects``). The internal
    address is never asked, so nothing it would answer can show up in an error."""


class RetriesExhaustedError(FetchError):
    """Every attempt failed; ``last_error`` is the failure of the final attempt."""

    def __init__(self, url: str, attempts: int, last_error: BaseException) -> None:
        super().__init__(f"gave up on {url} after {attempts} attempts: {last_error}", url=url)
        self.attempts = attempts
        self.last_error = last_error



class RetryAfterTooLongError(FetchError):
    """The server asks us to wait longer (``Retry-After``) than the fetcher's
    ``max_retry_after`` before retrying: the request ends at once, and so does every request
    to that host until the wait is over, instead of retrying or hanging.

    >>> str(RetryAfterTooLongError("tiles.test", 3600, 60))
    'the server tiles.test asks us to wait 1 h before retrying; giving up (the fetcher waits at most 60 s: Fetcher(max_retry_after=...))'
    """

    def __init__(self, where: str, retry_after: float, limit: float, *, url: str | None = None) -> None:
        super().__init__(
            f"the server {where} asks us to wait {_duration(retry_after)} before retrying; giving up "
            f"(the fetcher waits at most {_duration(limit)}: Fetcher(max_retry_after=...))",
            url=url,
        )
        self.retry_after = retry_after
        self.limit = limit


def _duration(seconds: float) -> str:
    """``3600`` -> ``'1 h'``, ``90`` -> ``'2 min'``, ``60`` -> ``'60 s'``."""
    hours = seconds / 3600
    if hours >= 0.99 and abs(hours - round(hours)) < 0.05:  # a pause counted down since sent
        return f"{round(hours)} h"
    if seconds > 90:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"

class RangeError(FetchError):
    """A ranged read (``Range: bytes=a-b``) the server could not or did not answer correctly:
    ``416 Range Not Satisfiable``, or a ``206`` whose ``Content-Range`` or body length is not
    the range asked for. Never papered over: the bytes would decode into wrong pixels."""


class SourceChangedError(FetchError):
    """The remote file changed between two reads of it (its ``ETag``, ``Last-Modified`` or
    size differ from the first response's, or the server answered ``412`` to ``If-Match``).

    Reading on would mix two versions of the file; read it again from its header.
    """


class TileError(LayersError):
    """One tile of a mosaic that failed; the mosaic shows a transparent hole in its place.

    Parameters
    ----------
    key
        The tile's ``"z/x/y"``.
    reason
        Why, in words (``"HTTP 503"``, ``"not a decodable image: ..."``); secrets redacted.
    url
        The tile's URL (secrets redacted).
    status
        The HTTP status when the server answered with an error status.

    >>> str(TileError("3/1/2", "HTTP 503", status=503))
    '3/1/2: HTTP 503'
    """

    def __init__(
        self, key: str, reason: str, *, url: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason
        self.url = url
        self.status = status


class ParseError(LayersError):
    """A response that could not be decoded or parsed."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message if url is None else f"{message} ({url})")
        self.url = url


class PagingError(FetchError):
    """A server's paging that cannot be followed: a next link that would change the query, a
    loop of next links, pages that repeat themselves, counts that lie, too many pages.

    The load ends with this error in its result; the features received so far are kept.
    """


class CapabilityError(BadInputError):
    """A request the server cannot answer as asked: a filter without OGC API Features Part 3
    (or in a language it does not declare), a CRS without Part 2, a datetime on a collection
    without time. The message names the server and the missing conformance class."""


class ServiceError(LayersError):
    """An embedded (demo) service that failed to start; the message quotes its stderr."""
