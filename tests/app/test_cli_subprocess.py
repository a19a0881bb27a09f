"""``mapstream`` as real processes, driven through a catalog YAML against loopback servers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import geopandas as gpd
import pytest

from tests.support.cli import ROOT, cli_env, dead_port, one_line_error, run_mapstream, write_catalog
from tests.support.ogc import make_ogc_server, ogc_data, ogc_server  # noqa: F401 (fixtures)
from tests.support.tileserver import tile_server  # noqa: F401 (fixture)
from tests.support.waiting import wait_for

EUROPE = "-10,35,30,60"  # 1+2+2+4+9+16 = 34 tiles at zooms 0-5
EUROPE_TILES_0_5 = 34
EXPORT_BOX = "-60,-40,60,40"


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def env(cache_dir):
    return cli_env(cache_dir)


def tiles_catalog(path, url, name="base", **kw):
    return write_catalog(path, [{"name": name, "title": name, "kind": "tiles", "url": url + "/{z}/{x}/{y}.png", **kw}])


def features_catalog(path, url, name="points"):
    return write_catalog(path, [{"name": name, "title": name, "kind": "features", "url": url, "collection": "points"}])


@pytest.mark.slow
def test_prefetch_twice_then_the_app_cache_serves_it(tile_server, tmp_path, env, cache_dir):  # noqa: F811
    catalog = tiles_catalog(tmp_path / "c.yml", tile_server.url)
    args = ["prefetch", "base", "--bbox", EUROPE, "--zoom", "0-5", "--catalog", str(catalog), "--concurrency", "4"]
    first = run_mapstream(args, env=env)
    assert first.returncode == 0, first.stderr
    assert f"prefetch complete: {EUROPE_TILES_0_5}/{EUROPE_TILES_0_5} tiles" in first.stdout
    assert f"{EUROPE_TILES_0_5} fetched, 0 already cached, 0 failed" in first.stdout
    assert len(tile_server.requests) == EUROPE_TILES_0_5

    second = run_mapstream(args, env=env)
    assert second.returncode == 0, second.stderr
    assert f"0 fetched, {EUROPE_TILES_0_5} already cached" in second.stdout
    assert "0 HTTP requests" in second.stdout
    assert len(tile_server.requests) == EUROPE_TILES_0_5  # the second run asked nothing

    # The app's side, in another process: a Fetcher on the same directory needs no request.
    code = f"""
import asyncio
from mapstream.layers.http import Fetcher
from mapstream.layers.sources.tiles import TileLayer
from mapstream.layers.viewport import Viewport
async def main():
    layer = TileLayer({tile_server.url + '/{z}/{x}/{y}.png'!r})
    async with Fetcher() as f:
        vp = Viewport.from_lonlat((-10, 35, 30, 60), 600)
        await layer.fetch(vp, f)
        print(len(layer.plan(vp).tiles), f.metrics.snapshot()["requests"])
asyncio.run(main())
"""
    app = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert app.returncode == 0, app.stderr
    n_tiles, requests = map(int, app.stdout.split())
    assert n_tiles > 0 and requests == 0
    assert len(tile_server.requests) == EUROPE_TILES_0_5


@pytest.mark.slow
def test_export_of_a_paged_layer_as_a_process(ogc_server, tmp_path, env):  # noqa: F811
    catalog = features_catalog(tmp_path / "c.yml", ogc_server.url)
    out = tmp_path / "points.parquet"
    result = run_mapstream(
        ["export", "points", "--bbox", EXPORT_BOX, "-o", str(out), "--catalog", str(catalog), "-q"], env=env
    )
    assert result.returncode == 0, result.stderr
    got = gpd.read_parquet(out)
    assert f"wrote {len(got)} features to {out}" in result.stdout
    assert len(got) > 2000 and got["id"].is_unique
    w, s, e, n = map(float, EXPORT_BOX.split(","))
    assert got.geometry.x.between(w, e).all() and got.geometry.y.between(s, n).all()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["c.yml", "points.parquet"]


def test_check_reports_a_dead_layer_as_down(tile_server, tmp_path, env):  # noqa: F811
    catalog = write_catalog(
        tmp_path / "c.yml",
        [
            {"name": "alive", "title": "alive", "kind": "tiles", "url": tile_server.url + "/{z}/{x}/{y}.png"},
            {"name": "dead", "title": "dead", "kind": "tiles", "url": f"http://127.0.0.1:{dead_port()}/{{z}}/{{x}}/{{y}}.png"},
        ],
    )
    result = run_mapstream(["check", "--catalog", str(catalog), "--timeout", "20s"], env=env)
    assert result.returncode == 1, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["alive"][2] == "up" and rows["alive"][3] == "200"
    assert rows["dead"][2] == "down"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("make_args", "code", "message"),
    [
        (lambda c: ["prefetch", "nope", "--bbox", EUROPE, "--zoom", "2", "--catalog", c], 2, "base"),
        (lambda c: ["prefetch", "base", "--bbox", "1,2,3", "--zoom", "2", "--catalog", c], 2, "expected four numbers"),
        (lambda c: ["prefetch", "base", "--bbox", EUROPE, "--zoom", "5-2", "--catalog", c], 2, "zoom range 5-2 is empty"),
        (lambda c: ["prefetch", "base", "--bbox", EUROPE, "--catalog", c], 2, "--zoom is required"),
        (lambda c: ["export", "base", "--bbox", EUROPE, "-o", "/proc/x.parquet", "--catalog", c], 2, "not writable"),
        (lambda c: ["check", "--catalog", c + ".missing"], None, "catalog"),
    ],
)
def test_bad_input_exits_with_one_line(tile_server, tmp_path, env, make_args, code, message):  # noqa: F811
    catalog = tiles_catalog(tmp_path / "c.yml", tile_server.url)
    result = run_mapstream(make_args(str(catalog)), env=env)
    assert result.returncode == code if code is not None else result.returncode in (1, 2), result.stderr
    assert message in one_line_error(result.stderr)
    assert tile_server.requests == []


def test_malformed_catalog_is_one_line(tmp_path, env):
    bad = tmp_path / "bad.yml"
    bad.write_text("layers:\n  - name: x\n    kind: tiles\n    bogus_key: 1\n    url: [\n")
    result = run_mapstream(["check", "--catalog", str(bad)], env=env)
    assert result.returncode in (1, 2)
    assert "bad.yml" in one_line_error(result.stderr)


def test_export_of_a_tile_layer_is_refused(tile_server, tmp_path, env):  # noqa: F811
    catalog = tiles_catalog(tmp_path / "c.yml", tile_server.url)
    result = run_mapstream(["export", "base", "-o", str(tmp_path / "x.gpkg"), "--catalog", str(catalog)], env=env)
    assert result.returncode == 2
    assert "export writes feature layers" in one_line_error(result.stderr)


# ------------------------------------------------------------------ Ctrl-C


def _start(args, env):
    return subprocess.Popen(
        [sys.executable, "-m", "mapstream.app.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _interrupt_when(proc, ready) -> tuple[str, str]:
    """Ctrl-C ``proc`` once ``ready()`` holds; its output. Never leaves the process running."""
    try:
        assert wait_for(ready, 60), "the command never got under way"
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ctrl_c_during_prefetch_prints_a_partial_summary(tile_server, tmp_path, env):  # noqa: F811
    tile_server.latency = 0.2
    catalog = tiles_catalog(tmp_path / "c.yml", tile_server.url)
    proc = _start(["prefetch", "base", "--bbox", EUROPE, "--zoom", "0-6", "--concurrency", "2", "--catalog", str(catalog)], env)
    out, err = _interrupt_when(proc, lambda: len(tile_server.requests) >= 4)
    assert proc.returncode == 130, err
    assert "prefetch interrupted:" in out
    assert "Traceback" not in err
    done = int(out.split("prefetch interrupted: ")[1].split("/")[0])
    assert 0 < done < 98


@pytest.mark.slow
def test_ctrl_c_during_export_leaves_no_file(make_ogc_server, tmp_path, env):  # noqa: F811
    server = make_ogc_server(latency=0.5)
    catalog = features_catalog(tmp_path / "c.yml", server.url)
    out = tmp_path / "points.gpkg"
    proc = _start(["export", "points", "-o", str(out), "--catalog", str(catalog)], env)
    # Interrupt once pages are being written (the temporary file exists).
    stdout, err = _interrupt_when(proc, lambda: any(p.name.startswith(".points.part-") for p in tmp_path.iterdir()))
    assert proc.returncode == 130, err
    assert "export interrupted:" in stdout and "not written" in stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["c.yml"]


# ------------------------------------------------------------------ demo


@pytest.mark.slow
def test_demo_serves_until_ctrl_c_and_leaves_nothing_running(tmp_path, env):
    import httpx
    import psutil

    proc = _start(["demo", "--latency", "10ms"], env)
    try:
        urls = {}
        end = time.monotonic() + 120
        while len(urls) < 2 and time.monotonic() < end:
            line = proc.stdout.readline()
            if not line:
                break
            name, _, url = line.partition(":")
            urls[name.strip()] = url.strip()
        assert set(urls) == {"OGC API Features", "XYZ tiles"}, (urls, proc.stderr.read() if proc.poll() is not None else "")
        children = psutil.Process(proc.pid).children(recursive=True)
        landing = httpx.get(urls["OGC API Features"], params={"f": "json"}, timeout=30)
        assert landing.status_code == 200
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "demo services stopped" in err and "Traceback" not in err
    assert wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), 10)
    with pytest.raises(httpx.TransportError):
        httpx.get(urls["OGC API Features"], timeout=5)


def test_check_json_and_export_force_in_process(tile_server, ogc_server, tmp_path, monkeypatch):  # noqa: F811
    import json

    from click.testing import CliRunner

    from mapstream.app import cli

    monkeypatch.setenv("MAPSTREAM_CACHE_DIR", str(tmp_path / "cache"))
    catalog = write_catalog(
        tmp_path / "c.yml",
        [
            {"name": "base", "kind": "tiles", "url": tile_server.url + "/{z}/{x}/{y}.png"},
            {"name": "points", "kind": "features", "url": ogc_server.url, "collection": "points"},
        ],
    )
    runner = CliRunner()
    result = runner.invoke(cli.main, ["check", "--catalog", str(catalog), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [(r["layer"], r["status"], r["http_status"]) for r in rows] == [("base", "up", 200), ("points", "up", 200)]

    # The table says what the adaptive limiter learned of each host: limit of ceiling, rate, floor.
    result = runner.invoke(cli.main, ["check", "--catalog", str(catalog)])
    assert result.exit_code == 0, result.output
    hosts = [line for line in result.output.splitlines() if line.startswith("host ")]
    netloc = tile_server.url.split("//")[1]
    assert any(line.startswith(f"host {netloc}: limit ") and " of 8, " in line and "req/s" in line
               and "floor" in line for line in hosts), result.output

    out = tmp_path / "p.geojson"
    out.write_text("old")
    args = ["export", "points", "--bbox", "0,0,10,10", "-o", str(out), "--catalog", str(catalog), "-q"]
    assert runner.invoke(cli.main, args).exit_code == 2 and out.read_text() == "old"
    result = runner.invoke(cli.main, [*args, "--force"])
    assert result.exit_code == 0, result.output
    got = gpd.read_file(out)
    assert len(got) > 0 and f"wrote {len(got)} features" in result.output


def test_export_says_when_the_feature_cap_truncated_it(ogc_server, tmp_path, monkeypatch):  # noqa: F811
    from click.testing import CliRunner

    from mapstream.app import cli

    monkeypatch.setenv("MAPSTREAM_CACHE_DIR", str(tmp_path / "cache"))
    catalog = write_catalog(
        tmp_path / "c.yml",
        [{"name": "points", "kind": "features", "url": ogc_server.url, "collection": "points", "max_features": 700}],
    )
    out = tmp_path / "p.parquet"
    result = CliRunner().invoke(cli.main, ["export", "points", "-o", str(out), "--catalog", str(catalog), "-q"])
    assert result.exit_code == 0, result.output
    assert len(gpd.read_parquet(out)) == 700
    assert "truncated by the layer's feature cap" in result.output
    assert "max_features 700" in result.output


@pytest.mark.slow
def test_prefetch_of_the_demo_catalog_warms_the_next_process(env):
    # Each process starts its own demo services; they prefer the same ports, so the URLs, and
    # with them the cache entries, are the same from one process to the next. The test picks
    # its own preferred ports: the defaults may be taken by a demo running on this machine.
    env = {**env, "MAPSTREAM_DEMO_PORTS": ",".join(map(str, _free_ports(2)))}
    args = ["prefetch", "basemap", "--bbox", EUROPE, "--zoom", "0-5"]
    first = run_mapstream(args, env=env)
    assert first.returncode == 0, first.stderr
    assert f"{EUROPE_TILES_0_5} fetched, 0 already cached, 0 failed" in first.stdout
    second = run_mapstream(args, env=env)
    assert second.returncode == 0, second.stderr
    assert f"0 fetched, {EUROPE_TILES_0_5} already cached" in second.stdout
    assert "0 HTTP requests" in second.stdout


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:  # all bound at once: n distinct ports
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
