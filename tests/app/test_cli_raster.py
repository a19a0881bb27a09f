"""``mapstream raster``: windows of several COGs read concurrently into one GeoTIFF whose pixels
are rasterio's own warp of the same data; a layer that is not a raster, a window that fails and
Ctrl-C all leave no file."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

from mapstream.app import cli
from mapstream.layers.viewport import Viewport
from tests.support.cli import ROOT, cli_env, write_catalog
from tests.support.cogs import assert_same_pixels, level_for, reference, terrain, write_cog
from tests.support.rangeserver import RangeServer
from tests.support.waiting import wait_for

X0, Y0, RES = 1_000_000.0, 6_000_000.0, 100.0
# A box inside the two files (degrees), straddling their seam at X0 + 512 * RES.
BBOX = "9.2,47.0,10.3,47.3"


@pytest.fixture(scope="module")
def cogs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-cogs")
    whole = terrain(700, 1024, 5)
    t = from_origin(X0, Y0, RES, RES)
    return {
        "dir": d,
        "files": {
            "whole.tif": write_cog(d / "whole.tif", whole, crs="EPSG:3857", transform=t, nodata=None),
            "west.tif": write_cog(d / "west.tif", whole[:, :512].copy(), crs="EPSG:3857", transform=t, nodata=None),
            "east.tif": write_cog(d / "east.tif", whole[:, 512:].copy(), crs="EPSG:3857",
                                  transform=from_origin(X0 + 512 * RES, Y0, RES, RES), nodata=None),
        },
    }


def catalog_for(tmp_path, url, **extra):
    layers = [
        {"name": "dem", "kind": "cog", "urls": [f"{url}/west.tif", f"{url}/east.tif"], **extra},
        {"name": "base", "kind": "tiles", "url": url + "/{z}/{x}/{y}.png"},
    ]
    return write_catalog(tmp_path / "cat.yml", layers)


def invoke(*args):
    return CliRunner().invoke(cli.main, list(args))


def test_windows_of_several_cogs_make_one_geotiff(cogs, tmp_path, monkeypatch):
    monkeypatch.setenv("MAPSTREAM_CACHE_DIR", str(tmp_path / "cache"))
    with RangeServer(cogs["files"]) as srv:
        out = tmp_path / "out.tif"
        result = invoke("raster", "dem", "--bbox", BBOX, "--resolution", "120", "-o", str(out),
                        "--window-size", "128", "--catalog", str(catalog_for(tmp_path, srv.url)), "-q")
        assert result.exit_code == 0, result.output
        assert "raster complete" in result.output and "wrote" in result.output
        ranged = len(srv.ranged())
        assert ranged == len(srv.requests)  # every byte by range
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 3857 and ds.count == 1 and ds.res == (120.0, 120.0)
        data = ds.read()
        t = ds.transform
        vp = Viewport.create((t.c, t.c + ds.width * 120.0), (t.f - ds.height * 120.0, t.f), ds.width, ds.height)
    assert data.shape[1] > 128 and data.shape[2] > 3 * 128  # several windows each way
    assert_same_pixels(data, reference(cogs["dir"] / "whole.tif", vp, level_for(cogs["dir"] / "whole.tif", 120.0)))
    assert not list(tmp_path.glob(".out.part-*"))


def test_a_layer_that_is_not_a_raster_writes_no_file(cogs, tmp_path):
    with RangeServer(cogs["files"]) as srv:
        out = tmp_path / "base.tif"
        result = invoke("raster", "base", "--bbox", BBOX, "--resolution", "500", "-o", str(out),
                        "--catalog", str(catalog_for(tmp_path, srv.url)), "-q")
    assert result.exit_code == 1 and "raster writes raster layers" in result.output
    assert not out.exists() and not list(tmp_path.glob(".base.part-*"))


def test_a_failing_window_writes_no_file(cogs, tmp_path):
    with RangeServer(cogs["files"], mode="416") as srv:
        out = tmp_path / "dem.tif"
        result = invoke("raster", "dem", "--bbox", BBOX, "--resolution", "200", "-o", str(out),
                        "--catalog", str(catalog_for(tmp_path, srv.url)), "-q")
    assert result.exit_code == 1 and "416 Range Not Satisfiable" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".dem.part-*"))


@pytest.mark.slow
def test_ctrl_c_leaves_no_file(cogs, tmp_path):
    with RangeServer(cogs["files"], latency=0.3) as srv:
        out = tmp_path / "slow.tif"
        env = cli_env(tmp_path / "cache")
        args = ["raster", "dem", "--bbox", BBOX, "--resolution", "100", "-o", str(out), "--window-size",
                "16", "--concurrency", "1", "--catalog", str(catalog_for(tmp_path, srv.url))]
        proc = subprocess.Popen([sys.executable, "-m", "mapstream.app.cli", *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: list(tmp_path.glob(".slow.part-*")), 60), "never started writing"
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, stderr
    assert "raster interrupted" in stdout and "not written" in stdout
    assert "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".slow.part-*"))


def test_check_probes_a_cog_layer_with_one_small_range(cogs, tmp_path):
    with RangeServer(cogs["files"]) as srv:
        cat = write_catalog(tmp_path / "c.yml", [{"name": "dem", "kind": "cog", "url": f"{srv.url}/west.tif"}])
        result = invoke("check", "--catalog", str(cat))
        assert result.exit_code == 0, result.output
        row = next(line for line in result.output.splitlines() if line.startswith("dem "))
        assert "cog" in row and " up " in row and "206" in row and "ETag" in row
        assert srv.requests == [("/west.tif", "bytes=0-1023")]
