"""Servers that misbehave on purpose (issue 17): every load ends, every failure is one clear
:class:`~mapstream.layers.errors.LayersError` per tile or page, credentials stay with their
origin, and no public server can point the fetcher at an internal address.

"Public" and "internal" on loopback: Linux routes all of ``127.0.0.0/8`` to ``lo``, so a server
on ``127.0.0.2`` is another host; the fetcher's :class:`RedirectGuard` is told that only
``127.0.0.2`` is internal, which makes ``127.0.0.1`` a public origin for the test.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mapstream.layers.errors import (
    BadInputError,
    LayersError,
    ParseError,
    RedirectRefusedError,
    TileError,
    TotalTimeoutError,
)
from mapstream.layers.http import TRANSPORTS, Fetcher
from mapstream.layers.http.redirects import RedirectGuard
from mapstream.layers.imaging import MAX_PIXELS, decode_rgba
from mapstream.layers.sources.features import FeatureLayer
from mapstream.layers.sources.tiles import TileLayer
from mapstream.layers.tilegrid import Tile, tile_bounds
from mapstream.layers.viewport import Viewport
from tests.support.hostile import HostileServer, bomb_png, hostile_server, solid_png  # noqa: F401

FAST = dict(backoff_base=0.01, backoff_cap=0.05)
RED, BLUE = (200, 0, 0, 255), (0, 0, 200, 255)
#: Tiles 0..3 of zoom 1, and a viewport that shows exactly these four.
TILES_Z1 = ["1/0/0", "1/1/0", "1/0/1", "1/1/1"]
WORLD = Viewport((-20037508.34, 20037508.34), (-20037508.34, 20037508.34), 512, 512)


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


@pytest.fixture
def internal_server():
    """A server on 127.0.0.2: the internal host a hostile redirect points at."""
    with HostileServer("127.0.0.2") as server:
        server.route("/", body=b"internal secret: db password hunter2", content_type="text/html")
        server.route("/tile.png", body=solid_png(BLUE), content_type="image/png")
        yield server


def public_loopback(fetcher: Fetcher) -> Fetcher:
    """Make ``127.0.0.1`` a public origin for ``fetcher`` (only ``127.0.0.2`` is internal)."""
    fetcher.redirects.internal_networks = RedirectGuard(internal_networks=["127.0.0.2/32"]).internal_networks
    return fetcher


def tile_route(server: HostileServer, special: dict[str, dict]) -> str:
    """Serve red tiles under ``/t/``, and ``special`` routes for some ``z/x/y`` keys."""
    server.route("/t/", body=solid_png(RED), content_type="image/png")
    for key, settings in special.items():
        server.route(f"/t/{key}.png", **{"content_type": "image/png", **settings})
    return server.url("/t/{z}/{x}/{y}.png")


def pixel_of(mosaic, key: str) -> list[int]:
    """The RGBA at the centre of tile ``key`` in ``mosaic``'s image."""
    z, x, y = map(int, key.split("/"))
    west, south, east, north = tile_bounds(Tile(z, x, y))
    image = mosaic.image
    return image.sel(x=(west + east) / 2, y=(south + north) / 2, method="nearest").values.tolist()


# -- a body that trickles in ends at the total timeout ---------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_dripping_body_ends_at_the_total_timeout_and_is_not_retried(
    hostile_server, transport, chunked
):
    url = hostile_server.route("/drip", body=b"x" * 10_000, drip=0.05, chunked=chunked)  # 500 s
    settings = dict(total_timeout=0.5, read_timeout=5, retry_attempts=4, cache_dir=None, **FAST)
    async with Fetcher(transport=transport, **settings) as f:
        with pytest.raises(TotalTimeoutError) as info:
            await asyncio.wait_for(f.get(url), 30)  # the bound of the test, not of the fetcher
    assert "total timeout of 0.5 s" in str(info.value) and "/drip" in str(info.value)
    assert hostile_server.hits("/drip") == 1  # another attempt would drip as long


async def test_a_dripping_tile_is_one_failed_tile(hostile_server):
    template = tile_route(hostile_server, {"1/1/0": dict(body=solid_png(BLUE), drip=0.05, drip_bytes=4)})
    async with Fetcher(total_timeout=0.5, cache_dir=None, **FAST) as f:
        mosaic = await asyncio.wait_for(TileLayer(template, name="drip").fetch(WORLD, f), 30)
    assert mosaic.progress.complete and mosaic.progress.failed == 1
    (error,) = mosaic.errors
    assert isinstance(error, TileError) and error.key == "1/1/0" and "total timeout" in error.reason
    assert [pixel_of(mosaic, k) for k in ("1/0/0", "1/0/1", "1/1/1")] == [list(RED)] * 3
    assert pixel_of(mosaic, "1/1/0") == [0, 0, 0, 0]  # a transparent hole


async def test_a_dripping_feature_page_ends_with_a_clear_error(hostile_server):
    page = json.dumps({"type": "FeatureCollection", "features": []}).encode() * 50
    hostile_server.route("/api/", body=page, content_type="application/geo+json", drip=0.05, drip_bytes=8)
    layer = FeatureLayer(hostile_server.url("/api"), "pts")
    async with Fetcher(total_timeout=0.5, cache_dir=None, **FAST) as f:
        try:
            result = await asyncio.wait_for(layer.fetch(None, f), 30)
        except LayersError as exc:  # the layer may fail as a whole: as a LayersError
            errors = [exc]
        else:
            errors = list(result.errors)
    assert errors and all(isinstance(e, LayersError) for e in errors)
    assert any("total timeout" in str(e) for e in errors)


# -- decompression bombs are one failed tile ---------------------------------------------------


def test_a_bomb_is_refused_from_its_header_without_decoding():
    with pytest.raises(ParseError, match=r"declares 400000000 pixels, over the \d+-pixel budget"):
        decode_rgba(bomb_png(20_000, 20_000), 256, url="http://h.test/bomb.png")
    with pytest.raises(ParseError, match="10000 x 10000 px"):
        decode_rgba(bomb_png(10_000, 10_000), 256)
    assert decode_rgba(bomb_png(512, 512), 256).shape == (256, 256, 4)  # big is fine, bombs not
    with pytest.raises(ParseError, match="budget"):
        decode_rgba(bomb_png(512, 512), 256, max_pixels=512 * 511)


def test_decoding_a_bomb_never_allocates_its_pixels():
    # Peak memory of a fresh process that refuses a 20 000 x 20 000 tile (1.6 GB as RGBA).
    code = textwrap.dedent(
        """
        import resource
        from mapstream.layers.errors import ParseError
        from mapstream.layers.imaging import decode_rgba
        from tests.support.hostile import bomb_png
        data = bomb_png(20_000, 20_000)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            decode_rgba(data, 256)
        except ParseError:
            pass
        print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    before, after = map(int, out.stdout.split())
    assert after - before < 50 * 1024  # KiB: nothing like the 1.6 GB the image declares


@pytest.mark.parametrize("ext", ["eps", "garbage"])
def test_only_raster_tile_formats_are_opened(ext):
    data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n" if ext == "eps" else b"\x00\xff" * 64
    with pytest.raises(ParseError, match="not a decodable image"):
        decode_rgba(data)


async def test_bomb_tiles_fail_alone_and_the_rest_of_the_layer_is_drawn(hostile_server):
    template = tile_route(
        hostile_server,
        {
            "1/0/0": dict(body=bomb_png(20_000, 20_000)),
            "1/1/1": dict(body=bomb_png(10_000, 10_000)),
            "1/0/1": dict(body=b"\x89PNG\r\n\x1a\n" + b"\x00" * 40),  # a broken PNG
        },
    )
    async with Fetcher(cache_dir=None, **FAST) as f:
        mosaic = await TileLayer(template, name="bombs").fetch(WORLD, f)
    assert mosaic.progress.complete and mosaic.progress.failed == 3
    reasons = {e.key: e.reason for e in mosaic.errors}
    assert "400000000 pixels, over the" in reasons["1/0/0"] and "10000 x 10000 px" in reasons["1/1/1"]
    assert "not a decodable image" in reasons["1/0/1"]
    assert pixel_of(mosaic, "1/1/0") == list(RED)
    assert MAX_PIXELS >= 4096 * 4096  # the budget leaves room for any real tile


# -- credentials stay with their origin --------------------------------------------------------


async def test_a_redirect_to_another_origin_drops_every_configured_header(
    hostile_server, internal_server, transport
):
    # 127.0.0.1 -> 127.0.0.2: both internal by default, so the redirect itself is allowed.
    target = internal_server.url("/landing")
    internal_server.route("/landing", body=b"ok")
    url = hostile_server.route("/go", status=302, headers={"Location": target})
    hostile_server.route("/same", status=302, headers={"Location": "/stay"})
    hostile_server.route("/stay", body=b"ok")
    secrets = {"Authorization": "Bearer A", "Private-Token": "P", "X-Api-Key": "K"}
    async with Fetcher(transport=transport, cache_dir=None) as f:
        f.set_source_headers(hostile_server.base + "/", {"X-Custom-Secret": "S", **secrets})
        r = await f.get(url, headers={"X-Caller-Token": "C"})
        await f.get(hostile_server.url("/same"), headers={"X-Caller-Token": "C"})
    assert (r.status, r.content) == (200, b"ok")
    (sent,) = internal_server.headers_of("/landing")
    for name in [*secrets, "X-Custom-Secret", "X-Caller-Token"]:
        assert name.lower() not in sent, name
    assert sent["user-agent"].startswith("mapstream/")
    (kept,) = hostile_server.headers_of("/stay")  # the same origin keeps them all
    assert kept["private-token"] == "P" and kept["x-caller-token"] == "C"


async def test_a_tile_layers_headers_never_follow_a_redirect_away(hostile_server, internal_server):
    tile = internal_server.url("/tile.png")
    template = tile_route(hostile_server, {k: dict(status=302, headers={"Location": tile}) for k in TILES_Z1})
    layer = TileLayer(template, name="moved", headers={"Private-Token": "P", "X-Api-Key": "K"})
    async with Fetcher(cache_dir=None) as f:
        mosaic = await layer.fetch(WORLD, f)
    assert mosaic.progress.failed == 0 and pixel_of(mosaic, "1/0/0") == list(BLUE)
    sent = internal_server.headers_of("/tile.png")
    assert sent and not any("private-token" in h or "x-api-key" in h for h in sent)


# -- no redirect from a public origin to an internal address -----------------------------------


async def test_a_redirect_from_a_public_origin_to_an_internal_address_is_refused(
    hostile_server, internal_server, transport
):
    url = hostile_server.route("/r", status=302, headers={"Location": internal_server.url("/")})
    async with Fetcher(transport=transport, cache_dir=None, **FAST) as f:
        public_loopback(f)
        with pytest.raises(RedirectRefusedError) as info:
            await f.get(url)
    message = str(info.value)
    assert "internal address (127.0.0.2)" in message and "allow_private_redirects" in message
    assert "hunter2" not in message
    assert internal_server.hits("/") == 0  # never asked
    assert hostile_server.hits("/r") == 1  # and not retried


async def test_a_refused_redirect_is_one_tile_error_that_shows_no_internal_body(
    hostile_server, internal_server
):
    template = tile_route(hostile_server, {"1/0/0": dict(status=302, headers={"Location": internal_server.url("/")})})
    async with Fetcher(cache_dir=None, **FAST) as f:
        mosaic = await TileLayer(template, name="ssrf").fetch(WORLD, public_loopback(f))
    (error,) = mosaic.errors
    assert error.key == "1/0/0" and "RedirectRefusedError" in error.reason
    assert "hunter2" not in str(error) and internal_server.hits("/") == 0
    assert pixel_of(mosaic, "1/1/0") == list(RED)


async def test_private_redirects_can_be_allowed_per_source_or_per_fetcher(hostile_server, internal_server):
    url = hostile_server.route("/r", status=302, headers={"Location": internal_server.url("/tile.png")})
    async with Fetcher(cache_dir=None) as f:
        public_loopback(f).redirects.allow(hostile_server.base + "/r")
        assert (await f.get(url)).status == 200
        with pytest.raises(RedirectRefusedError):  # another source of the same host is not allowed
            await f.get(hostile_server.route("/other", status=302, headers={"Location": internal_server.url("/")}))
    async with Fetcher(cache_dir=None, allow_private_redirects=True) as f:
        assert (await public_loopback(f).get(url)).status == 200
    assert internal_server.hits("/tile.png") == 2 and internal_server.hits("/") == 0


async def test_internal_names_are_resolved():
    guard = RedirectGuard()
    assert await guard.is_internal_host("localhost")
    assert await guard.is_internal_host("127.0.0.1") and await guard.is_internal_host("[::1]")
    assert not await guard.is_internal_host("93.184.216.34")
    # the spellings of loopback and metadata addresses a hostile Location may use
    for host in ["0x7f000001", "2130706433", "127.1", "017700000001", "0", "::ffff:127.0.0.1",
                 "::ffff:7f00:1", "169.254.169.254", "fd00::1", "10.1.2.3", "192.168.0.1"]:
        assert await guard.is_internal_host(host), host


# -- a header that would split the request -----------------------------------------------------


async def test_a_header_with_a_line_break_is_a_bad_input_per_tile(hostile_server, transport):
    template = tile_route(hostile_server, {})
    async with Fetcher(transport=transport, cache_dir=None) as f:
        with pytest.raises(BadInputError, match="'X-Api-Key' .* contains a line break"):
            await f.get(hostile_server.url("/t/0/0/0.png"), headers={"X-Api-Key": "k\r\nHost: evil"})
        layer = TileLayer(template, name="bad", headers={"X-Api-Key": "k\r\nX-Injected: 1"})
        mosaic = await layer.fetch(WORLD, f)
    assert mosaic.progress.failed == 4 and all("line break" in e.reason for e in mosaic.errors)
    assert hostile_server.hits("/t/0/0/0.png") == 0 and not hostile_server.requests
    assert np.all(mosaic.image.values == 0)


# -- headers written to hurt -------------------------------------------------------------------


async def test_hostile_caching_and_charset_headers_are_survived(hostile_server, tmp_path):
    url = hostile_server.route(
        "/weird",
        body=b"plain words",
        headers={"Cache-Control": "max-age=" + "9" * 400, "Expires": "Tue, 99 Foo 99999 99:99:99 GMT"},
        content_type="text/plain; charset=zlib_codec",
    )
    async with Fetcher(cache_dir=tmp_path) as f:
        first = await f.get(url)  # a freshness of 10**400 s was an OverflowError
        again = await f.get(url)
    assert first.text == "plain words"  # a charset that is no text encoding: UTF-8 instead
    assert again.from_cache and hostile_server.hits("/weird") == 1


async def test_a_redirect_to_a_file_url_is_a_bad_input_not_a_crash(hostile_server, transport):
    url = hostile_server.route("/f", status=302, headers={"Location": "file:///etc/passwd"})
    async with Fetcher(transport=transport, cache_dir=None) as f:
        with pytest.raises(BadInputError, match="unsupported"):
            await f.get(url)


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({"X-Key": "café"}, "non-ASCII"),
        ({"X-Key": "日本"}, "non-ASCII"),
        ({"X Key": "v"}, "not a valid HTTP header name"),
        ({"X-Kéy": "v"}, "not a valid HTTP header name"),
    ],
)
async def test_headers_that_cannot_be_sent_are_a_bad_input_on_both_paths(hostile_server, transport, headers, words):
    url = hostile_server.route("/h")
    async with Fetcher(transport=transport, cache_dir=None) as f:
        with pytest.raises(BadInputError, match=words):
            await f.get(url, headers=headers)
    assert hostile_server.hits("/h") == 0


async def test_a_non_ascii_validator_from_the_server_does_not_break_revalidation(hostile_server, tmp_path, transport):
    url = hostile_server.route("/etag", body=b"v1", headers={"ETag": '"caf\xe9"'})
    async with Fetcher(transport=transport, cache_dir=tmp_path) as f:
        first, second = await f.get(url), await f.get(url)  # stale at once: asked again
    assert first.content == second.content == b"v1" and hostile_server.hits("/etag") == 2
    assert "if-none-match" not in hostile_server.headers_of("/etag")[1]  # a plain GET instead


# -- responses no well-behaved server sends ----------------------------------------------------

RAW = {
    "badstatus": b"HTTP/1.1 abc OK\r\n\r\n",
    "http09": b"hello world\r\n",
    "garbage": bytes(range(256)) * 4,
    "nocolon": b"HTTP/1.1 200 OK\r\nBadHeader\r\nContent-Length: 2\r\n\r\nok",
    "hugeheader": b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 100_000 + b"\r\n\r\n",
    "badchunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "negative-length": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nok",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nok",
    "badgzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nabcde",
    "location-not-a-url": b"HTTP/1.1 302 Found\r\nLocation: http://[::1\r\nContent-Length: 0\r\n\r\n",
    "location-port-99999": b"HTTP/1.1 302 Found\r\nLocation: http://a.test:99999/\r\nContent-Length: 0\r\n\r\n",
    "location-latin1": b"HTTP/1.1 302 Found\r\nLocation: /ok\xe9\xff\r\nContent-Length: 0\r\n\r\n",
    "interim-only": b"HTTP/1.1 100 Continue\r\n\r\n",
    "nothing": b"",
    "ok\xc3\xa9\xc3\xbf": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",  # where location-latin1 leads
}


@pytest.fixture(scope="module")
def raw_server():
    from tests.support.hostile import RawServer

    with RawServer(RAW) as server:
        yield server


@pytest.mark.parametrize("case", [c for c in RAW if not c.startswith("ok")])
async def test_malformed_responses_are_layers_errors_on_both_paths(raw_server, transport, case):
    async with Fetcher(transport=transport, cache_dir=None, retry_attempts=1, total_timeout=5, read_timeout=3) as f:
        try:
            resp = await f.get(f"{raw_server.base}/{case}")
        except LayersError as exc:
            assert str(exc)  # a message, and nothing foreign escaped
        else:  # read as httpx reads it (h11 ends the headers early), or a redirect followed
            assert case in ("location-latin1", "hugeheader"), resp
            return
    assert case != "location-latin1"


async def test_a_location_in_latin1_is_followed_alike_on_both_paths(raw_server, transport):
    async with Fetcher(transport=transport, cache_dir=None, retry_attempts=1) as f:
        resp = await f.get(f"{raw_server.base}/location-latin1")  # aiohttp had a UnicodeEncodeError
    assert resp.content == b"ok" and resp.url.endswith("/ok%C3%A9%C3%BF")  # the bytes as Latin-1


async def test_a_url_with_a_port_out_of_range_is_a_bad_input(transport):
    async with Fetcher(transport=transport, cache_dir=None) as f:
        with pytest.raises(BadInputError, match="port 99999 is out of range"):
            await f.get("http://127.0.0.1:99999/")


async def test_a_tile_may_be_bigger_than_asked_but_not_without_bound(hostile_server):
    template = tile_route(
        hostile_server,
        {"1/0/0": dict(body=solid_png(BLUE, 512)), "1/1/0": dict(body=solid_png(BLUE, 2048))},
    )
    async with Fetcher(cache_dir=None) as f:
        mosaic = await TileLayer(template, name="sizes").fetch(WORLD, f)
    assert pixel_of(mosaic, "1/0/0") == list(BLUE)  # 512 px for a 256 px layer: resampled
    (error,) = mosaic.errors  # 2048 px: 64 times the pixels of the tile, refused undecoded
    assert error.key == "1/1/0" and "2048 x 2048 px is over the 1048576-pixel budget" in error.reason
