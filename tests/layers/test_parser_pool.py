"""The GeoJSON parser's process pool never runs its caller's ``__main__``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mapstream.layers.sources import workers

# A script without ``if __name__ == "__main__":``: its top level marks each run, then parses a
# page in the process pool (``executor="process"``: no fall-back to threads, the workers must
# start) and reports which process parsed it. Parsing is the workers' first task and they
# import ``__main__`` (if they do) before any task, so a second mark is written before the
# answer; ``shutdown_pool`` then waits for every worker that started.
SCRIPT = """
import asyncio, json, multiprocessing, os, sys

with open({marker!r}, "a") as f:
    f.write(f"{{os.getpid()}}\\n")
if {start_method!r} is not None:  # the caller's own choice must not matter
    multiprocessing.set_start_method({start_method!r})

from mapstream.layers.sources import geojson

page = json.dumps({{"type": "FeatureCollection", "features": [
    {{"type": "Feature", "properties": {{"n": i}},
      "geometry": {{"type": "Point", "coordinates": [i, i]}}}} for i in range(3)]}}).encode()
frame, meta = asyncio.run(geojson.parse_off_loop(page, executor="process"))
worker = geojson._pool().submit(os.getpid).result(timeout=60)
print(json.dumps({{"rows": len(frame), "worker": worker, "script": os.getpid(),
                  "broken": geojson._POOL_BROKEN}}))
geojson.shutdown_pool()
"""


@pytest.mark.parametrize(
    ("how", "start_method"),
    [("path", None), ("path", "spawn"), ("path", "forkserver"), ("module", None)],
)
def test_a_script_without_a_main_guard_runs_once(tmp_path, how, start_method):
    marker = tmp_path / "marker.txt"
    (tmp_path / "unguarded.py").write_text(
        SCRIPT.format(marker=str(marker), start_method=start_method)
    )
    # A script by path (multiprocessing's init_main_from_path) or a module by name (``-m``:
    # init_main_from_name); the child's working directory holds nothing else.
    args = ["unguarded.py"] if how == "path" else ["-m", "unguarded"]
    done = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert marker.read_text().splitlines() == [str(report["script"])]
    assert report["rows"] == 3 and not report["broken"]
    assert report["worker"] != report["script"]  # parsed in a process, not a thread


def test_preparation_data_names_no_main_module():
    data = workers.preparation_data("child")
    assert not set(workers.MAIN_KEYS) & set(data)
    assert data["sys_path"] and data["dir"] == os.getcwd() and data["name"] == "child"


def test_the_fork_server_never_preloads_main(monkeypatch):
    from multiprocessing import forkserver

    monkeypatch.setattr(forkserver._forkserver, "_preload_modules", ["__main__"])
    ctx = workers.mainless_context(preload=["__main__", "json"])
    assert ctx.get_start_method() == "forkserver"
    assert forkserver._forkserver._preload_modules == ["json"]


def test_the_script_has_no_main_guard():
    # The test above is only meaningful if the script really has no main guard.
    assert "__name__" not in textwrap.dedent(SCRIPT)
