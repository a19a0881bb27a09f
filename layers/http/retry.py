"""Retry policy: which failures are retried, how long to wait, and when to stop.

Idempotent requests are retried on :data:`RETRY_STATUSES` and on transport failures and
timeouts, with full-jitter backoff or the server's ``Retry-After`` (capped), while the host's
:class:`RetryBudget` lasts; :meth:`RetryPolicy.send` runs that loop around one attempt.

With the fetcher's :class:`~.limits.HostLimits` the loop also tells each host's adaptive limit
what happened (a latency sample, a push-back, a timeout) and honours ``Retry-After`` for the whole host: the host is
paused (admission holds every attempt to it until then), and requests refused in the same burst
retry after the pause without spending the budget or an attempt. A ``Retry-After`` longer than
``max_retry_after`` ends the request at once (:class:`~mapstream.layers.errors.RetryAfterTooLongError`).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import threading
import time
from collections.abc import Awaitable, Callable

from ..errors import FetchError, FetchTimeoutError, RetriesExhaustedError, StatusError, TransportError
from ..errors import RetryAfterTooLongError, TotalTimeoutError
from ..redact import redact_url
from .admission import LAST_ATTEMPT
from .limits import HostLimit, HostLimits, route_of
from .metrics import FetchMetrics
from .response import Response

__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "RetryBudget",
    "RetryPolicy",
    "backoff_delay",
    "parse_retry_after",
]

#: Statuses worth retrying (for idempotent requests only).
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Statuses by which a server pushes back (too many requests, overloaded): the host's limit
#: halves and its ``Retry-After`` pauses the whole host.
PUSHBACK_STATUSES = frozenset({429, 503})
#: Methods that may be sent twice (RFC 9110 9.2.2): only these are retried.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

#: One attempt of a request: ``(method, url, netloc, headers, content) -> Response``.
Attempt = Callable[[str, str, str, dict[str, str], bytes | None], Awaitable[Response]]


class RetryBudget:
    """A token bucket of retries per host: each retry spends one token, each success refunds
    ``refund``; when empty, failures are not retried, so a dead host fails fast.

    >>> b = RetryBudget(2, refund=0.5)
    >>> b.try_spend(), b.try_spend(), b.try_spend()
    (True, True, False)
    >>> b.success(); b.success(); b.try_spend()
    True
    """

    def __init__(self, capacity: float, refund: float = 0.1) -> None:
        self.capacity = float(capacity)
        self.tokens = float(capacity)
        self.refund = refund

    def try_spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def success(self) -> None:
        self.tokens = min(self.capacity, self.tokens + self.refund)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or ``None``.

    >>> parse_retry_after("3"), parse_retry_after("soon"), parse_retry_after(None)
    (3.0, None, None)
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0)
    10.0
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)].

    >>> 0 <= backoff_delay(3, 0.5, 2.0) <= 2.0
    True
    """
    return (rng or random).uniform(0.0, min(cap, base * 2**attempt))


class RetryPolicy:
    """The retry settings of a fetcher and the retry budget of each host (process-wide).

    Parameters
    ----------
    attempts
        Attempts in total for an idempotent request (1 disables retries).
    backoff_base, backoff_cap
        Full-jitter backoff: the n-th retry waits uniform(0, min(cap, base * 2**(n-1))).
    retry_after_cap
        The longest wait a server's ``Retry-After`` can impose (longer values, up to
        ``max_retry_after``, wait this long).
    budget
        Retries a host may use before failures stop being retried (:class:`RetryBudget`).
    max_retry_after
        A ``Retry-After`` longer than this ends the request at once with
        :class:`~mapstream.layers.errors.RetryAfterTooLongError` (``None``: never).
    hosts
        The fetcher's adaptive limits and pauses per host (``None``: none).
    """

    #: Retries after a push-back of the same burst (free of budget and attempts), at most.
    FREE_RETRIES = 8

    def __init__(
        self,
        attempts: int,
        backoff_base: float,
        backoff_cap: float,
        retry_after_cap: float,
        budget: float,
        *,
        max_retry_after: float | None = None,
        hosts: HostLimits | None = None,
    ) -> None:
        self.attempts = attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.retry_after_cap = retry_after_cap
        self.budget = budget
        self.max_retry_after = max_retry_after
        self.hosts = hosts
        self._budgets: dict[str, RetryBudget] = {}
        self._lock = threading.Lock()

    def budget_of(self, host: str) -> RetryBudget:
        """The retry budget of ``host`` (made on first use, shared by every event loop)."""
        b = self._budgets.get(host)  # never removed, so found means found
        if b is not None:
            return b
        with self._lock:
            b = self._budgets.get(host)
            if b is None:
                b = self._budgets[host] = RetryBudget(self.budget)
            return b

    def delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before the ``retry``-th retry (1 for the first): the server's
        ``Retry-After`` capped at ``retry_after_cap``, or full-jitter backoff.

        >>> p = RetryPolicy(4, 0.25, 8.0, 30.0, 20.0)
        >>> p.delay(1, 120.0), 0 <= p.delay(3, None) <= 1.0
        (30.0, True)
        """
        if retry_after is not None:
            return min(retry_after, self.retry_after_cap)
        return backoff_delay(retry - 1, self.backoff_base, self.backoff_cap)

    async def send(
        self,
        attempt: Attempt,
        method: str,
        url: str,
        netloc: str,
        headers: dict[str, str],
        content: bytes | None,
        metrics: FetchMetrics,
        idempotent: bool | None = None,
    ) -> Response:
        """One logical request: ``attempt`` until a response is final, with retries and
        backoff. Returns the final response for any status that is not retried (the caller
        checks it). ``idempotent`` None: by the method (:data:`IDEMPOTENT_METHODS`); True: the
        caller knows that sending it twice is harmless (a search sent by POST).

        Raises
        ------
        RetriesExhaustedError
            Two or more attempts met retryable failures (``last_error`` is the final one).
        StatusError, FetchTimeoutError, TransportError
            A single attempt failed and is not retried (not idempotent, retries disabled,
            or the host's budget spent).
        FetchError
            Any other failure of an attempt, as it is (never retried).
        """
        budget = self.budget_of(netloc)
        idempotent = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        host = self.hosts.host(netloc) if self.hosts is not None else None
        route = route_of(url) if host is not None else ""
        n = free = 0
        while True:
            n += 1
            retry_after: float | None = None
            collateral = False
            LAST_ATTEMPT.set(None)
            try:
                resp = await attempt(method, url, netloc, headers, content)
                if resp.status in RETRY_STATUSES:
                    retry_after = parse_retry_after(resp.headers.get("retry-after"))
                    self._refuse_long_wait(retry_after, netloc, url, host)
                if host is not None:
                    collateral = self._observe(host, route, resp.status, retry_after)
            except RetryAfterTooLongError:  # from this answer, or from admission (the host is paused)
                metrics.incr("errors")
                raise
            except TotalTimeoutError:
                if host is not None:
                    host.timeout()
                metrics.incr("errors")
                raise  # the whole total timeout spent: another attempt would take as long
            except (FetchTimeoutError, TransportError) as exc:
                if host is not None and isinstance(exc, FetchTimeoutError):
                    host.timeout()
                error: FetchError = exc
            else:
                if resp.status not in RETRY_STATUSES or not idempotent:
                    budget.success()
                    return resp
                error = StatusError(resp.status, redact_url(url))
            if not idempotent:
                metrics.incr("errors")
                raise error
            if collateral and free < self.FREE_RETRIES and host is not None and host.pause_left() > 0:
                # Refused in a burst the host already answered: the pause covers it.
                free += 1
                n -= 1
                metrics.incr("retries")
                continue
            if n >= self.attempts or not budget.try_spend():
                metrics.incr("errors")
                if n == 1:  # retries disabled, or the host's budget is spent: fail fast
                    raise error
                raise RetriesExhaustedError(redact_url(url), n, error) from error
            metrics.incr("retries")
            if host is not None and retry_after is not None and host.pause_left() > 0:
                continue  # admission holds the next attempt until the host's pause is over
            await asyncio.sleep(self.delay(n, retry_after))

    def _refuse_long_wait(self, retry_after: float | None, netloc: str, url: str, host: HostLimit | None) -> None:
        """Raise :class:`RetryAfterTooLongError` for a ``Retry-After`` over ``max_retry_after``
        (and pause the host that long, so its other requests end at once too)."""
        if retry_after is None or self.max_retry_after is None or retry_after <= self.max_retry_after:
            return
        if host is not None:
            host.pushback(LAST_ATTEMPT.get(), retry_after, retry_after)
        raise RetryAfterTooLongError(netloc, retry_after, self.max_retry_after, url=redact_url(url))

    def _observe(self, host: HostLimit, route: str, status: int, retry_after: float | None) -> bool:
        """Tell ``host`` how the attempt went; returns whether a push-back was collateral."""
        seen = LAST_ATTEMPT.get()
        if status in PUSHBACK_STATUSES:
            wait = None if retry_after is None else min(retry_after, self.retry_after_cap)
            return host.pushback(seen, retry_after, wait)
        if status == 504:
            host.timeout()
        elif status not in RETRY_STATUSES and seen is not None:
            host.success(route, seen)
        return False
