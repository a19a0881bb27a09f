"""Retry policy (mapstream.layers.http.retry): Retry-After, backoff."""

from __future__ import annotations

import random

import pytest

from mapstream.layers.http.retry import backoff_delay, parse_retry_after


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
