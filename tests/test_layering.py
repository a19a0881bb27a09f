"""House rule 1: the engine never imports the UI stack."""

import subprocess
import sys

FORBIDDEN = ("panel", "param", "holoviews", "geoviews", "bokeh")


def test_layers_imports_no_ui_stack():
    code = (
        "import sys, importlib, pkgutil, mapstream.layers as layers\n"
        "for m in pkgutil.walk_packages(layers.__path__, 'mapstream.layers.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"mapstream.layers imported: {out.stdout.strip()}"
