"""Secrets never leave the engine in clear (layers/redact.py)."""

from __future__ import annotations

import pytest

from mapstream.layers.redact import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://u:p@h.org/a", "https://***@h.org/a"),
        ("https://h.org/t?access_token=T&x=1", "https://h.org/t?access_token=%2A%2A%2A&x=1"),
        ("https://h.org/t?X-Amz-Signature=S", "https://h.org/t?X-Amz-Signature=%2A%2A%2A"),
        ("https://h.org/t?APIKEY=K", "https://h.org/t?APIKEY=%2A%2A%2A"),
        ("https://h.org/t?bbox=1,2,3,4&limit=10", "https://h.org/t?bbox=1,2,3,4&limit=10"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_text_redacts_every_url_and_keeps_the_rest():
    text = 'GET https://h/a?token=S1 then "https://u:pw@h/b?key=S2" failed'
    out = redact_text(text)
    assert "S1" not in out and "S2" not in out and "pw" not in out
    assert out.startswith("GET https://h/a?token=") and out.endswith('" failed')


def test_the_cache_stores_redacted_urls():
    from mapstream.layers.cache import make_entry

    entry = make_entry("https://h/t/1.png?api_key=SECRET", 200, [], b"x", ttl=60)
    assert "SECRET" not in entry.url
