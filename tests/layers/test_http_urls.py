"""URL fast paths (mapstream.layers.http.urls): what the fetcher sends without httpx parsing it."""

from __future__ import annotations

import random

import httpx
import pytest

from mapstream.layers.errors import BadInputError
from mapstream.layers.http.urls import normalize, plain_netloc


def test_urls_sent_as_written_are_exactly_what_httpx_would_send():
    """The fetcher skips httpx's URL parsing for URLs httpx would leave unchanged; a seeded
    fuzz of URL-ish strings checks that every one it accepts is indeed unchanged."""
    rng = random.Random(7)
    hosts = ["h.test", "H.test", "127.0.0.1", "256.1.1.1", "01.2.3.4", "1.2.3", "a_b.test", "xn--p.test", "[::1]"]
    ports = ["", ":80", ":443", ":8080", ":08080", ":0", ":65536"]
    pieces = ["a", "/", ".", "..", "%", "%2F", "%zz", "~", "-", " ", "é", "?", "#", "&", "=", ",", "'", '"', "`", "{", "|", "\\", "@", ":", ";", "+", "*", "[", "\t"]
    accepted = 0
    for _ in range(20_000):
        scheme = rng.choice(["http", "https", "HTTP", "ftp"])
        tail = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        url = f"{scheme}://{rng.choice(hosts)}{rng.choice(ports)}/{tail}"
        netloc = plain_netloc(url)
        if netloc is None:
            continue
        accepted += 1
        u = httpx.URL(url)
        assert str(u) == url, url
        assert u.netloc.decode("ascii").lower() == netloc, url
    assert accepted > 1000  # the fast path is not vacuous
    for url in ["http://h.test/a b", "http://h.test/a/../b", "http://h.test:80/", "http://u@h.test/",
                "http://h.test/#f", "http://h.test/é", "http://256.1.1.1/", "https://H.test/"]:
        assert plain_netloc(url) is None, url


def test_normalize_merges_params_and_gives_the_lower_case_host_key():
    assert normalize("http://H.test:8080/a?x=1", {"y": "2 3"}) == ("h.test:8080", "http://h.test:8080/a?x=1&y=2+3")
    assert normalize("https://h.test/a%2Fb?k=%27") == ("h.test", "https://h.test/a%2Fb?k=%27")  # as written


@pytest.mark.parametrize("url", ["ftp://h.test/a", "not a url", "/relative/path"])
def test_normalize_refuses_what_is_not_an_http_url(url):
    with pytest.raises(BadInputError):
        normalize(url)
