"""The fetcher against a real loopback server that injects faults (tests/support/faultserver.py)."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from mapstream import __version__
from mapstream.layers.errors import (
    BadInputError,
    FetchTimeoutError,
    ResponseTooLargeError,
    RetriesExhaustedError,
    StatusError,
    TransportError,
)
from mapstream.layers.http import TRANSPORTS, Fetcher
from tests.support.faultserver import fault_server  # noqa: F401  (fixture)
from tests.support.waiting import async_wait_for

FAST = dict(backoff_base=0.01, backoff_cap=0.05)


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


@pytest.fixture
async def fetcher(tmp_path, transport):
    async with Fetcher(transport=transport, cache_dir=tmp_path / "cache", **FAST) as f:
        yield f


# -- limits ----------------------------------------------------------------------------------


async def test_per_host_limit_is_never_exceeded(fault_server, tmp_path, transport):
    async with Fetcher(per_host_limit=4, transport=transport, cache_dir=None) as f:
        urls = [fault_server.url(f"/t/{i}", delay=0.05) for i in range(40)]
        responses = await asyncio.gather(*(f.get(u) for u in urls))
    assert [r.status for r in responses] == [200] * 40
    assert sum(fault_server.hits.values()) == 40
    # never over the limit, and concurrent; reaching the limit itself is test_http_admission's
    # (how close a busy machine gets over a socket varies)
    assert 2 <= fault_server.peak <= 4


async def test_global_limit_caps_all_hosts(fault_server):
    async with Fetcher(per_host_limit=8, global_limit=3, cache_dir=None) as f:
        await asyncio.gather(*(f.get(fault_server.url(f"/g/{i}", delay=0.05)) for i in range(15)))
    assert 2 <= fault_server.peak <= 3  # as above


async def test_set_host_limit_applies_to_waiting_requests(fault_server):
    async with Fetcher(per_host_limit=8, cache_dir=None) as f:
        f.set_host_limit("127.0.0.1", 1)
        await asyncio.gather(*(f.get(fault_server.url(f"/h/{i}", delay=0.02)) for i in range(6)))
        assert fault_server.peak == 1
        with pytest.raises(BadInputError):
            f.set_host_limit("127.0.0.1", 0)


# -- retries ---------------------------------------------------------------------------------


async def test_429_retry_after_is_honoured(fault_server, fetcher):
    url = fault_server.url("/ra", status=429, retry_after=1, fail_first=1)
    r = await fetcher.get(url, cache=False)
    assert r.status == 200
    first, second = fault_server.arrivals("/ra")
    assert second - first >= 1.0  # no sooner than Retry-After says
    assert fetcher.metrics.snapshot()["retries"] == 1


async def test_503_is_retried_until_success(fault_server, fetcher):
    r = await fetcher.get(fault_server.url("/r", status=503, fail_first=2), cache=False)
    assert r.status == 200
    assert fault_server.hits["/r"] == 3


async def test_retries_exhausted_keeps_the_last_error(fault_server, tmp_path):
    async with Fetcher(retry_attempts=3, cache_dir=None, **FAST) as f:
        with pytest.raises(RetriesExhaustedError) as info:
            await f.get(fault_server.url("/dead", status=503))
    assert info.value.attempts == 3
    assert isinstance(info.value.last_error, StatusError)
    assert info.value.last_error.status == 503
    assert info.value.__cause__ is info.value.last_error
    assert fault_server.hits["/dead"] == 3


async def test_non_idempotent_request_is_not_retried(fault_server, fetcher):
    with pytest.raises(StatusError) as info:
        await fetcher.request("POST", fault_server.url("/post", status=503), content=b"{}")
    assert info.value.status == 503
    with pytest.raises(TransportError):
        await fetcher.request("POST", fault_server.url("/post-reset", reset=1), content=b"{}")
    assert fault_server.hits["/post"] == 1
    assert fault_server.hits["/post-reset"] == 1


async def test_connection_reset_is_retried(fault_server, fetcher):
    r = await fetcher.get(fault_server.url("/reset", reset=1, fail_first=1), cache=False)
    assert r.status == 200
    assert fault_server.hits["/reset"] == 2


async def test_truncated_body_is_a_transport_error(fault_server, tmp_path, transport):
    async with Fetcher(retry_attempts=2, transport=transport, cache_dir=None, **FAST) as f:
        with pytest.raises(RetriesExhaustedError) as info:
            await f.get(fault_server.url("/trunc", truncate=1, size=10_000))
    assert isinstance(info.value.last_error, TransportError)
    assert fault_server.hits["/trunc"] == 2


async def test_stalled_body_hits_the_read_timeout(fault_server, transport):
    async with Fetcher(read_timeout=0.3, retry_attempts=1, transport=transport, cache_dir=None) as f:
        with pytest.raises(FetchTimeoutError):
            await f.get(fault_server.url("/stall", stall=5, size=10_000))


async def test_total_timeout_bounds_an_attempt(fault_server):
    async with Fetcher(total_timeout=0.3, retry_attempts=1, cache_dir=None) as f:
        with pytest.raises(FetchTimeoutError) as info:
            await f.get(fault_server.url("/slow", delay=2))
    assert info.value.__cause__ is not None


async def test_retry_budget_makes_a_dead_host_fail_fast():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with Fetcher(retry_attempts=5, retry_budget=2, cache_dir=None, **FAST) as f:
        with pytest.raises(RetriesExhaustedError) as info:
            await f.get(f"http://127.0.0.1:{port}/a")
        assert info.value.attempts == 3  # the budget allowed two retries
        assert isinstance(info.value.last_error, TransportError)
        with pytest.raises(TransportError):  # budget spent: one attempt, its own error
            await f.get(f"http://127.0.0.1:{port}/b")
        assert f.metrics.snapshot()["retries"] == 2


# -- single-flight and cancellation -----------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False])
async def test_single_flight_shares_one_upstream_request(fault_server, fetcher, cache):
    url = fault_server.url("/sf", delay=0.2, cc="no-store")
    responses = await asyncio.gather(*(fetcher.get(url, cache=cache) for _ in range(20)))
    assert fault_server.hits["/sf"] == 1
    assert {r.content for r in responses} == {b"body of /sf\n"}
    assert fetcher.metrics.snapshot()["coalesced"] == 19


async def test_different_headers_are_not_coalesced(fault_server, fetcher):
    url = fault_server.url("/cred", delay=0.1, cc="no-store")
    await asyncio.gather(
        fetcher.get(url, headers={"Authorization": "Bearer A"}),
        fetcher.get(url, headers={"Authorization": "Bearer B"}),
    )
    assert fault_server.hits["/cred"] == 2


async def test_cancelled_leader_does_not_fail_followers(fault_server, fetcher):
    url = fault_server.url("/lead", delay=0.5)
    leader = asyncio.create_task(fetcher.get(url))
    assert await async_wait_for(lambda: fault_server.current == 1, 5)  # the leader is on the wire
    follower = asyncio.create_task(fetcher.get(url))
    assert await async_wait_for(lambda: fetcher.metrics.snapshot()["coalesced"] == 1, 5)  # joined
    leader.cancel()
    r = await follower
    assert r.status == 200
    assert leader.cancelled()
    assert fault_server.hits["/lead"] == 1


async def test_cancelling_50_waiting_tasks_leaves_nothing_behind(fault_server, transport):
    async with Fetcher(per_host_limit=2, transport=transport, cache_dir=None) as f:
        before = asyncio.all_tasks()
        # the two on the wire would take 10 s: a stall cannot let them end and admit two more, and
        # only the fetcher hanging up frees their connections sooner
        urls = [fault_server.url(f"/c/{i}", delay=10) for i in range(52)]
        tasks = [asyncio.create_task(f.get(u)) for u in urls]
        assert await async_wait_for(lambda: fault_server.current == 2, 5)
        assert f.metrics.snapshot()["waiting"] == 50
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        # Every flight, limiter slot and counter is released at once...
        assert await async_wait_for(lambda: not (asyncio.all_tasks() - before), 1)
        state = f._state()
        assert not state.flights
        assert all(lim.active == 0 and lim.waiting == 0 for lim in state.admission.limiters.values())
        assert state.admission.global_limiter.active == 0
        snap = f.metrics.snapshot()
        assert (snap["in_flight"], snap["waiting"]) == (0, 0)
        # ...the two requests on the wire were abandoned: their connections are closed...
        assert await async_wait_for(lambda: fault_server.connections == 0, 5)
        # ...and only those two ever reached the server; the fetcher still works.
        assert sum(fault_server.hits.values()) == 2
        assert (await f.get(fault_server.url("/after"))).status == 200


# -- the HTTP cache ----------------------------------------------------------------------------


@pytest.mark.parametrize("validator", [{"etag": "v1"}, {"last_modified": 1}])
async def test_stale_entry_is_revalidated_with_304(fault_server, fetcher, validator):
    url = fault_server.url("/big", size=200_000, **validator)
    first = await fetcher.get(url)
    assert (first.from_cache, first.revalidated) == (False, False)
    bytes_after_first = fetcher.metrics.snapshot()["bytes"]
    second = await fetcher.get(url)
    assert (second.from_cache, second.revalidated) == (True, True)
    assert second.content == first.content and second.status == 200
    sent = fault_server.headers_of("/big")[1]
    assert ("If-None-Match" in sent) if "etag" in validator else ("If-Modified-Since" in sent)
    snap = fetcher.metrics.snapshot()
    assert snap["bytes"] == bytes_after_first  # the 304 carried no body
    assert snap["revalidations"] == 1


async def test_max_age_serves_from_cache_without_network(fault_server, fetcher):
    url = fault_server.url("/fresh", cc="max-age=60")
    await fetcher.get(url)
    r = await fetcher.get(url)
    assert r.from_cache and not r.revalidated
    assert fault_server.hits["/fresh"] == 1
    assert fetcher.cache_has_fresh(url)
    assert fetcher.metrics.snapshot()["cache_hits"] == 1


@pytest.mark.parametrize("cc", ["no-store", "no-cache"])
async def test_no_store_and_no_cache_go_to_the_server(fault_server, fetcher, cc):
    url = fault_server.url("/nc", cc=cc)
    await fetcher.get(url)
    r = await fetcher.get(url)
    assert not r.from_cache
    assert fault_server.hits["/nc"] == 2
    assert not fetcher.cache_has_fresh(url)


@pytest.mark.parametrize("ttl,hits", [(60.0, 1), (0.0, 2)])
async def test_ttl_for_responses_without_validators(fault_server, tmp_path, ttl, hits):
    async with Fetcher(ttl=ttl, cache_dir=tmp_path) as f:
        url = fault_server.url("/ttl")
        await f.get(url)
        await f.get(url)
    assert fault_server.hits["/ttl"] == hits


async def test_cache_false_bypasses_the_cache(fault_server, fetcher):
    url = fault_server.url("/byp", cc="max-age=60")
    await fetcher.get(url, cache=False)
    await fetcher.get(url, cache=False)
    assert fault_server.hits["/byp"] == 2
    assert fetcher.cached_entries() == 0


async def test_credentials_are_isolated_and_never_stored_in_clear(fault_server, fetcher, tmp_path):
    url = fault_server.url("/priv", cc="max-age=60", set_cookie="session=SECRET-COOKIE")
    fetcher.set_source_headers(fault_server.base + "/priv", {"Authorization": "Bearer SECRET-A"})
    await fetcher.get(url)
    await fetcher.get(url)
    assert fault_server.hits["/priv"] == 1
    assert fault_server.headers_of("/priv")[0]["Authorization"] == "Bearer SECRET-A"
    r = await fetcher.get(url, headers={"Authorization": "Bearer SECRET-B"})  # caller's wins
    assert not r.from_cache
    assert fault_server.hits["/priv"] == 2
    await fetcher.get(url + "&api_key=SECRET-KEY")
    assert fetcher.cached_entries() == 3
    blob = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*.entry"))
    for secret in (b"SECRET-A", b"SECRET-B", b"SECRET-COOKIE", b"SECRET-KEY"):
        assert secret not in blob


async def test_corrupt_cache_entry_is_a_miss(fault_server, fetcher, tmp_path):
    url = fault_server.url("/corrupt", cc="max-age=60")
    await fetcher.get(url)
    (path,) = (tmp_path / "cache").rglob("*.entry")
    path.write_bytes(b"\x00\x00\x00\x05garbage")
    r = await fetcher.get(url)
    assert r.status == 200 and not r.from_cache
    assert fault_server.hits["/corrupt"] == 2


# -- size, status, headers, settings -------------------------------------------------------------


@pytest.mark.parametrize("chunked", [0, 1])
async def test_oversized_body_raises_the_size_error(fault_server, transport, chunked):
    async with Fetcher(max_response_bytes=100_000, transport=transport, cache_dir=None) as f:
        with pytest.raises(ResponseTooLargeError) as info:
            await f.get(fault_server.url("/huge", size=5_000_000, chunked=chunked))
        assert info.value.limit == 100_000
        assert (await f.get(fault_server.url("/small", size=1000))).status == 200


async def test_status_errors_and_allow_status(fault_server, fetcher):
    with pytest.raises(StatusError) as info:
        await fetcher.get(fault_server.url("/missing", status=404))
    assert info.value.status == 404
    assert "/missing" in info.value.url
    r = await fetcher.get(fault_server.url("/missing", status=404), allow_status=(404,))
    assert r.status == 404 and r.content


async def test_user_agent_and_source_headers_reach_the_server(fault_server, fetcher):
    fetcher.set_source_headers(fault_server.base + "/src/", {"X-Api-Key": "k1"})
    await fetcher.get(fault_server.url("/src/a"), params={"bbox": "1,2,3,4"})
    await fetcher.get(fault_server.url("/other"))
    (sent,) = fault_server.headers_of("/src/a")
    assert sent["User-Agent"].startswith(f"mapstream/{__version__}")
    assert sent["X-Api-Key"] == "k1"
    assert "X-Api-Key" not in fault_server.headers_of("/other")[0]


def test_unknown_or_bad_settings_raise_bad_input():
    with pytest.raises(BadInputError, match="per_host_limt"):
        Fetcher(per_host_limt=3)
    with pytest.raises(BadInputError):
        Fetcher(per_host_limit=0)
    with pytest.raises(BadInputError):
        Fetcher(transport="curl")


async def test_non_http_url_is_bad_input(fetcher):
    with pytest.raises(BadInputError):
        await fetcher.get("ftp://example.org/x")


async def test_mock_transport_is_accepted(tmp_path):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"path": request.url.path})

    async with Fetcher(transport=httpx.MockTransport(handler), cache_dir=None) as f:
        assert (await f.get("https://example.org/x")).json() == {"path": "/x"}


def test_one_client_per_event_loop(fault_server, tmp_path):
    f = Fetcher(cache_dir=tmp_path)

    async def fetch(path):
        r = await f.get(fault_server.url(path, cc="max-age=60"))
        client = f._state().client
        await f.aclose()
        return r, client

    r1, c1 = asyncio.run(fetch("/loop1"))
    r2, c2 = asyncio.run(fetch("/loop1"))
    assert c1 is not c2
    assert not r1.from_cache and r2.from_cache  # the disk cache is process-wide
    assert f.metrics.snapshot()["cache_hits"] == 1


async def test_proxy_from_the_environment_is_used(fault_server, monkeypatch, transport):
    # The fault server plays the proxy: a request for an unreachable host must arrive there.
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", fault_server.base)
    monkeypatch.setenv("http_proxy", fault_server.base)
    async with Fetcher(transport=transport, cache_dir=None, retry_attempts=1) as f:
        r = await f.get("http://tiles.example.invalid/via-proxy")
    assert r.status == 200
    assert fault_server.hits["/via-proxy"] == 1


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MAPSTREAM_CACHE_DIR", str(tmp_path / "env-cache"))
    assert Fetcher().disk.directory == tmp_path / "env-cache"
    assert Fetcher(cache_dir=None).disk is None


async def test_secrets_in_urls_never_reach_the_logs(fault_server, fetcher, caplog):
    with caplog.at_level("DEBUG"):
        await fetcher.get(fault_server.url("/logged", apikey="S3CRET-LOG"))
        with pytest.raises(StatusError) as info:
            await fetcher.get(fault_server.url("/logged-404", status=404, token="S3CRET-LOG"))
    messages = [r.getMessage() for r in caplog.records]
    assert any("/logged" in m for m in messages)  # httpx did log the request...
    assert not any("S3CRET-LOG" in m for m in messages)  # ...without the key
    assert "S3CRET-LOG" not in str(info.value)


async def test_url_reaches_the_server_exactly_as_encoded(fault_server, fetcher):
    await fetcher.get(fault_server.base + "/enc", params={"filter": "kind = 'a/b'", "p": "x,y"})
    await fetcher.get(fault_server.base + "/enc2?a=%2F%27")
    # the request targets exactly as the server saw them
    assert fault_server.raw_paths == ["/enc?filter=kind+%3D+%27a%2Fb%27&p=x%2Cy", "/enc2?a=%2F%27"]


async def test_cookies_are_never_replayed(fault_server, fetcher):
    await fetcher.get(fault_server.url("/ck", set_cookie="session=abc; Path=/"), cache=False)
    await fetcher.get(fault_server.url("/ck2"), cache=False)
    assert "Cookie" not in fault_server.headers_of("/ck2")[0]


# -- what client.send did, kept on the direct aiohttp path (both transports must agree) --------


async def test_redirects_are_followed(fault_server, fetcher):
    r = await fetcher.get(fault_server.url("/from", status=302, location="/to?x=1"), cache=False)
    assert (r.status, r.content) == (200, b"body of /to\n")
    assert r.url == fault_server.base + "/to?x=1"
    assert (fault_server.hits["/from"], fault_server.hits["/to"]) == (1, 1)


async def test_redirect_to_another_origin_drops_every_configured_header(fault_server, fetcher):
    # Credentials come under any name (issue 17: Private-Token and X-Api-Key were sent on).
    other = f"http://localhost:{fault_server.port}/there"  # same server, another origin
    hdrs = {"Authorization": "Bearer T", "X-Api-Key": "k", "Private-Token": "p"}
    await fetcher.get(fault_server.url("/here", status=307, location="/same"), headers=hdrs, cache=False)
    await fetcher.get(fault_server.url("/away", status=307, location=other), headers=hdrs, cache=False)
    assert fault_server.headers_of("/same")[0]["X-Api-Key"] == "k"  # same origin: all kept
    assert fault_server.headers_of("/same")[0]["Authorization"] == "Bearer T"
    (sent,) = fault_server.headers_of("/there")
    assert "Authorization" not in sent
    assert "X-Api-Key" not in sent and "Private-Token" not in sent
    assert sent["User-Agent"].startswith("mapstream/")  # the fetcher's own defaults stay


@pytest.mark.parametrize("status,method", [(303, "GET"), (302, "GET"), (307, "POST")])
async def test_redirected_post_changes_method_as_httpx_does(fault_server, fetcher, status, method):
    url = fault_server.url("/form", status=status, location="/done")
    r = await fetcher.request("POST", url, content=b'{"a": 1}')
    assert r.status == 200
    assert [m for p, m, _ in fault_server.requests if p == "/done"] == [method]


async def test_redirect_loop_is_a_transport_error(fault_server, fetcher):
    with pytest.raises(RetriesExhaustedError) as info:
        await fetcher.get(fault_server.url("/loop", status=302, redirect_self=1), cache=False)
    assert isinstance(info.value.last_error, TransportError)
    assert "redirect" in str(info.value.last_error).lower()
    assert fault_server.hits["/loop"] == 21 * info.value.attempts  # httpx's max_redirects=20


async def test_compressed_body_is_decoded_and_limited_decoded(fault_server, transport):
    async with Fetcher(max_response_bytes=100_000, transport=transport, cache_dir=None) as f:
        r = await f.get(fault_server.url("/gz", gzip=1, size=50_000))
        assert r.content == b"x" * 50_000
        assert r.headers["content-encoding"] == "gzip"
        with pytest.raises(ResponseTooLargeError):  # 5 MB that compress to a few kB
            await f.get(fault_server.url("/bomb", gzip=1, size=5_000_000))


async def test_event_hooks_on_the_client_still_run(fault_server, transport):
    seen = []

    async def hook(request):
        seen.append(request.url.path)

    async with Fetcher(transport=transport, cache_dir=None) as f:
        f._state().client.event_hooks["request"].append(hook)
        assert (await f.get(fault_server.url("/hooked"))).status == 200
    assert seen == ["/hooked"]


async def test_every_request_is_logged_like_httpx_does(fault_server, fetcher, caplog):
    with caplog.at_level("INFO", logger="httpx"):
        await fetcher.get(fault_server.url("/seen", status=301, location="/moved"), cache=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("GET " + fault_server.base + "/seen" in m and "301" in m for m in lines)
    assert any("/moved" in m and '200 OK"' in m for m in lines)


async def test_total_timeout_bounds_the_body_and_redirects(fault_server, transport):
    # Without the total bound the first would end in a TransportError (the server closes
    # the stalled body after 5 s) and the second would succeed (each hop takes 0.3 s).
    settings = dict(total_timeout=0.5, read_timeout=10, retry_attempts=1, cache_dir=None)
    async with Fetcher(transport=transport, **settings) as f:
        with pytest.raises(FetchTimeoutError):  # headers at once, then the body stalls
            await f.get(fault_server.url("/stall-total", stall=5, size=10_000))
        second_hop = "/slow?delay=0.3&status=302&location=/slow2%3Fdelay%3D0.3"
        with pytest.raises(FetchTimeoutError):
            await f.get(fault_server.url("/hop", status=302, location=second_hop))
    assert fault_server.hits["/slow"] == 1


async def test_aclose_cancels_callers_even_of_a_flight_not_started_yet(fault_server):
    f = Fetcher(cache_dir=None)
    caller = asyncio.create_task(f.get(fault_server.url("/never", delay=0.2)))
    await asyncio.sleep(0)  # the caller has made its flight; the flight has not run yet
    await f.aclose()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, 2)  # cancelled, not left waiting


def test_the_aiohttp_transport_loads_ca_certificates_once_per_setting(monkeypatch, tmp_path):
    from mapstream.layers.http.transport import AiohttpTransport

    first, second = AiohttpTransport(), AiohttpTransport()
    assert first._ssl is second._ssl  # not ~20 ms of loading per client
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    assert AiohttpTransport()._ssl is not first._ssl  # a new setting is honoured


async def test_fetcher_headers_and_caller_overrides_reach_the_server_once(fault_server, transport):
    async with Fetcher(headers={"X-Team": "maps"}, transport=transport, cache_dir=None) as f:
        await f.get(fault_server.url("/d1"))
        await f.get(fault_server.url("/d2"), headers={"User-Agent": "custom/1", "Accept": "image/png"})
    first, second = fault_server.headers_of("/d1")[0], fault_server.headers_of("/d2")[0]
    assert first["X-Team"] == second["X-Team"] == "maps"
    assert first["User-Agent"].startswith("mapstream/") and first["Accept"] == "*/*"
    assert second.get_all("User-Agent") == ["custom/1"]  # replaced, not added
    assert second.get_all("Accept") == ["image/png"]
