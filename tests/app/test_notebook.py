"""The app in a real Jupyter kernel: the notebook story of README.md, cell by cell.

A notebook is built in code with the cells a user types and run by nbclient in an ipykernel
started from this virtualenv's Python (a kernel spec written to a temporary JUPYTER_PATH, never
the system Python's kernel). The kernel gets the test session's throw-away
``MAPSTREAM_CACHE_DIR``; the demo services start inside it on first use. At the end the kernel
is shut down and every process it started (demo servers, GeoJSON parser pool) must be gone.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import psutil
import pytest
from nbclient import NotebookClient
from nbclient.util import run_sync

from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
KERNEL = "mapstream-test-venv"
PIDS = "MAPSTREAM-PIDS "
INTERRUPT = "# (the test interrupts the kernel here)"


def readme_notebook_snippet() -> str:
    """The first ```python block after README's "In a notebook" paragraph, verbatim."""
    start = README.index("In a notebook")
    match = re.search(r"```python\n(.*?)```", README[start:], re.S)
    assert match, "README.md: no ```python block after 'In a notebook'"
    return match.group(1)


def readme_layer_line() -> str:
    """The JupyterHub section's ``layer = await m.layer(...)`` line, verbatim."""
    match = re.search(r"`(layer = await m\.layer\(\"basemap\"\))`", README)
    assert match, "README.md: the JupyterHub 'Notebooks' bullet no longer shows m.layer"
    return match.group(1)


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernel spec for this Python in a temporary JUPYTER_PATH; the env for the kernel."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mapstream test (venv)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    # The client (this process) finds the spec there; no user Jupyter or IPython config is read.
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "jupyter-config"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    env = dict(os.environ)
    assert env.get("MAPSTREAM_CACHE_DIR"), "tests/conftest.py sets a throw-away cache per session"
    env.pop("MAPSTREAM_CATALOG", None)  # the embedded demo catalog
    return env


def _outputs(cell, kind: str) -> list:
    return [o for o in cell.outputs if o.output_type == kind]


def _stdout(cell) -> str:
    return "".join(o.text for o in _outputs(cell, "stream") if o.name == "stdout")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


CELLS = {
    "display": "from mapstream import create_app\nm = create_app()\nm",
    "readme": readme_notebook_snippet(),
    "readme_count": (
        'print("countries", len(result.frame), "errors", len(result.errors))'
    ),
    "tiles": readme_layer_line() + "\n" + (
        "frames = []\n"
        "async for mosaic in layer.load(Viewport.from_lonlat((-10, 35, 30, 60)), m.fetcher):\n"
        "    frames.append(mosaic)\n"
        "final = frames[-1]\n"
        "print('tiles', len(frames), final.complete, final.progress.done,\n"
        "      final.progress.failed, int((final.image.values[..., 3] > 0).sum()))"
    ),
    # The map was displayed with no browser attached: pn.state.onload still preloads it.
    "preload": (
        "import asyncio, time\n"
        "t0 = time.monotonic()\n"
        "while m.state.status('basemap').state != 'done' and time.monotonic() - t0 < 60:\n"
        "    await asyncio.sleep(0.1)\n"
        "print('preload', m.state.status('basemap').state, m.state.status('basemap').text())"
    ),
    # Jupyter's interrupt (the stop button) signals the kernel's whole process group; the
    # kernel, the map and the GeoJSON parser processes must all survive it.
    "interrupt": INTERRUPT,
    "after_interrupt": (
        "import asyncio, json\n"
        "from mapstream.layers.sources import geojson\n"
        "await asyncio.sleep(1)  # the pool notices a dead worker asynchronously\n"
        "page = json.dumps({'type': 'FeatureCollection', 'features': [\n"
        "    {'type': 'Feature', 'geometry': {'type': 'Point', 'coordinates': [i % 180, 0]},\n"
        "     'properties': {'i': i}} for i in range(500)]}).encode()\n"
        "parsed, _ = await geojson.parse_off_loop(page, executor='process')\n"
        "again = await countries.fetch(Viewport.from_lonlat((100, -45, 155, -10)), fetcher)\n"
        "print('after interrupt', len(parsed), len(again.frame), geojson._POOL_BROKEN)"
    ),
    # A notebook has no session to end: README says ``await m.aclose()`` stops the map's work.
    "close": (
        "import asyncio, os\n"
        "await m.aclose()\n"
        "await asyncio.sleep(0.5)\n"
        "ours = [os.sep + 'app' + os.sep, os.sep + 'layers' + os.sep]\n"
        "left = [t.get_coro().__qualname__ for t in asyncio.all_tasks()\n"
        "        if any(d in t.get_coro().cr_code.co_filename for d in ours)\n"
        "        and t.get_coro().__qualname__ != 'LoopLagMonitor._run']  # process-wide\n"
        "print('left after aclose', len(left), left)"
    ),
    "pids": (
        "import os, psutil\n"
        "from mapstream.demo import current_demo\n"
        f"print({PIDS!r} + ' '.join(str(p) for p in [os.getpid(), *current_demo().pids,"
        " *(c.pid for c in psutil.Process().children(recursive=True))]))"
    ),
}


def test_create_app_and_top_level_await_in_a_real_kernel(kernel_env):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS.values()]
    cells = dict(zip(CELLS, nb.cells, strict=True))
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=90,  # per cell
        allow_errors=False,  # an error output raises CellExecutionError with its traceback
        resources={"metadata": {"path": str(ROOT)}},
    )
    with client.setup_kernel(env=kernel_env):
        for index, cell in enumerate(nb.cells):
            if cell.source == INTERRUPT:
                run_sync(client.km.interrupt_kernel)()
                continue
            client.execute_cell(cell, index)
    # nbclient has shut the kernel down here

    for name, cell in cells.items():
        assert not _outputs(cell, "error"), (name, cell.outputs)

    # 1. The map is displayed: Panel's extension loads in the notebook (Bokeh JS, the PyViz
    #    comm set-up), then the cell's value renders as a Bokeh root, not as its text repr.
    display = cells["display"]
    mimes = [set(o.get("data", {})) for o in display.outputs]
    assert any("application/vnd.holoviews_load.v0+json" in m for m in mimes), mimes
    (result,) = _outputs(display, "execute_result")
    assert "application/vnd.holoviews_exec.v0+json" in result.data, sorted(result.data)
    root_id = result.metadata["application/vnd.holoviews_exec.v0+json"]["id"]
    html = result.data["text/html"]
    assert f'data-root-id="{root_id}"' in html
    for title in ("Basemap (Natural Earth)", "Countries", "Sensor readings"):
        assert title in html  # the side panel's layer toggles are in the rendered document
    stderr = "".join(o.text for o in _outputs(display, "stream") if o.name == "stderr")
    assert "requires the panel extension" not in stderr

    # 2. README's snippet runs as written: top-level await, features for a viewport.
    m = re.search(r"countries (\d+) errors (\d+)", _stdout(cells["readme_count"]))
    assert m, cells["readme_count"].outputs
    assert int(m.group(1)) > 0 and int(m.group(2)) == 0

    # 3. The session's own engine layer (README's JupyterHub section), tiles with `async for`.
    m = re.search(r"tiles (\d+) (\w+) (\d+) (\d+) (\d+)", _stdout(cells["tiles"]))
    assert m, cells["tiles"].outputs
    frames, complete, done, failed, opaque = m.groups()
    assert int(frames) >= 1 and complete == "True"
    assert int(done) > 0 and int(failed) == 0 and int(opaque) > 0

    # The displayed map preloaded its first layer without a browser (pn.state.onload).
    assert "preload done" in _stdout(cells["preload"]), cells["preload"].outputs

    # An interrupt neither killed the parser processes nor broke the session's engine.
    m = re.search(r"after interrupt (\d+) (\d+) (\w+)", _stdout(cells["after_interrupt"]))
    assert m, cells["after_interrupt"].outputs
    assert m.groups()[::2] == ("500", "False") and int(m.group(2)) > 0

    # Closing the map left none of its tasks running.
    assert "left after aclose 0 []" in _stdout(cells["close"]), cells["close"].outputs

    # The kernel was shut down by nbclient; nothing it started outlives it.
    line = next(ln for ln in _stdout(cells["pids"]).splitlines() if ln.startswith(PIDS))
    pids = [int(p) for p in line[len(PIDS):].split()]
    assert len(pids) >= 3  # the kernel and the two demo servers at least
    wait_for(lambda: all(_gone(p) for p in pids), 20, interval=0.2)
    alive = [p for p in pids if not _gone(p)]
    assert not alive, [psutil.Process(p).cmdline() for p in alive if not _gone(p)]
