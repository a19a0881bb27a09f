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
