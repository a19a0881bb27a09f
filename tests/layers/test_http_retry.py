"""Retry policy (mapstream.layers.http.retry): Retry-After, backoff, the retry loop and budget."""

from __future__ import annotations

import random

import httpx
import pytest

from mapstream.layers.errors import RetriesExhaustedError, StatusError, TransportError
from mapstream.layers.http.metrics import FetchMetrics
from mapstream.layers.http.response import Response
from mapstream.layers.http.retry import RetryPolicy, backoff_delay, parse_retry_after


def test_retry_after_http_date_in_the_past_is_zero():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after(" 7 ") == 7.0


@pytest.mark.parametrize("attempt", [0, 1, 5, 20])
def test_backoff_is_full_jitter_within_the_cap(attempt):
    rng = random.Random(1)
    delays = [backoff_delay(attempt, 0.1, 2.0, rng) for _ in range(500)]
    bound = min(2.0, 0.1 * 2**attempt)
    assert all(0 <= d <= bound for d in delays)
    assert max(delays) > 0.8 * bound and min(delays) < 0.2 * bound  # spread, not fixed


def _attempts(*outcomes):
    """An attempt function that returns (or raises) ``outcomes`` in turn, recording each call."""
    calls = []

    async def attempt(method, url, netloc, headers, content):
        calls.append(method)
        out = outcomes[len(calls) - 1]
        if isinstance(out, Exception):
            raise out
        return Response(url, out, httpx.Headers({"Retry-After": "0"} if out == 503 else {}), b"")

    return attempt, calls


async def test_policy_retries_idempotent_requests_until_a_final_status():
    policy, metrics = RetryPolicy(4, 0.0, 0.0, 1.0, 20), FetchMetrics()
    attempt, calls = _attempts(503, TransportError("reset"), 200)
    resp = await policy.send(attempt, "GET", "http://h.test/a", "h.test", {}, None, metrics)
    assert resp.status == 200 and len(calls) == 3
    assert (metrics.snapshot()["retries"], metrics.snapshot()["errors"]) == (2, 0)


async def test_policy_never_retries_a_post_and_stops_when_attempts_run_out():
    policy, metrics = RetryPolicy(2, 0.0, 0.0, 1.0, 20), FetchMetrics()
    attempt, calls = _attempts(TransportError("reset"))
    with pytest.raises(TransportError):
        await policy.send(attempt, "POST", "http://h.test/a", "h.test", {}, b"x", metrics)
    attempt, calls = _attempts(503, 503)
    with pytest.raises(RetriesExhaustedError) as info:
        await policy.send(attempt, "GET", "http://h.test/a", "h.test", {}, None, metrics)
    assert info.value.attempts == 2 and info.value.last_error.status == 503
    assert metrics.snapshot()["errors"] == 2


async def test_a_spent_budget_fails_fast_with_the_attempts_own_error():
    policy = RetryPolicy(4, 0.0, 0.0, 1.0, budget=1)
    attempt, calls = _attempts(503, 503, 503)
    with pytest.raises(RetriesExhaustedError):  # one retry spends the budget
        await policy.send(attempt, "GET", "http://dead.test/a", "dead.test", {}, None, FetchMetrics())
    attempt, calls = _attempts(503)
    with pytest.raises(StatusError):
        await policy.send(attempt, "GET", "http://dead.test/b", "dead.test", {}, None, FetchMetrics())
    assert len(calls) == 1
    assert policy.budget_of("dead.test") is policy.budget_of("dead.test")


async def test_a_retry_after_over_max_retry_after_ends_the_request_at_once():
    from mapstream.layers.errors import RetryAfterTooLongError

    calls = []

    async def attempt(method, url, netloc, headers, content):
        calls.append(url)
        return Response(url, 429, httpx.Headers({"Retry-After": "3600"}), b"")

    policy = RetryPolicy(4, 0.0, 0.0, 60.0, 20, max_retry_after=60.0)
    with pytest.raises(RetryAfterTooLongError) as info:
        await policy.send(attempt, "GET", "http://h.test/t/1.png", "h.test", {}, None, FetchMetrics())
    assert len(calls) == 1 and info.value.retry_after == 3600.0
    assert "asks us to wait 1 h before retrying; giving up" in str(info.value)


async def test_refusals_of_a_burst_already_answered_spend_no_budget():
    import time

    from mapstream.layers.http.admission import LAST_ATTEMPT
    from mapstream.layers.http.limits import Attempt, HostLimits

    hosts = HostLimits(lambda netloc: 8)
    policy = RetryPolicy(2, 0.0, 0.0, 60.0, budget=1, max_retry_after=60.0, hosts=hosts)
    left_at = time.monotonic()  # our attempt leaves...
    hosts.host("b.test").pushback(Attempt(left_at, 4, latency=0.01), 0.05, 0.05)  # ...another is refused
    outcomes = [429, 200]

    async def attempt(method, url, netloc, headers, content):
        LAST_ATTEMPT.set(Attempt(left_at - 1.0, 3, latency=0.01))  # it left before that refusal
        status = outcomes.pop(0)
        return Response(url, status, httpx.Headers({"Retry-After": "0"} if status == 429 else {}), b"")

    resp = await policy.send(attempt, "GET", "http://b.test/a", "b.test", {}, None, FetchMetrics())
    assert resp.status == 200 and outcomes == []
    assert policy.budget_of("b.test").tokens == 1.0  # the collateral retry spent nothing
