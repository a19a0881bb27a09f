"""``mapstream serve``: run the app (the ``mapstream.app`` directory) with ``panel serve``,
passing the catalog on; the process becomes panel's (``exec``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .shared import catalog_option

__all__ = ["serve", "serve_command"]


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@catalog_option
@click.argument("panel_args", nargs=-1, type=click.UNPROCESSED)
def serve(catalog_path, panel_args) -> None:
    """Run the app with 'panel serve'; extra options (--port, --show, ...) go to panel.

    The catalog is passed as '--args --catalog PATH' and in MAPSTREAM_CATALOG.
    """
    if catalog_path is not None:
        if not catalog_path.is_file():
            raise click.BadParameter(f"{catalog_path} is not a readable file", param_hint="'--catalog'")
        catalog_path = catalog_path.resolve()
        os.environ["MAPSTREAM_CATALOG"] = str(catalog_path)
    cmd = serve_command(catalog_path, tuple(panel_args))
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)


def serve_command(catalog: Path | None, extra: tuple[str, ...]) -> list[str]:
    """The ``panel serve`` command line for the app package, with the catalog passed on.

    >>> cmd = serve_command(Path("c.yml"), ("--port", "5007"))
    >>> cmd[1:4], cmd[5:]
    (['-m', 'panel', 'serve'], ['--warm', '--port', '5007', '--args', '--catalog', 'c.yml'])
    """
    from mapstream.app import APP_DIR

    app_dir = str(APP_DIR)
    # --warm runs the app once at start-up: datashader's JIT compile and the parser processes
    # start then, not when the first visitor's layers need them (countries 32 s -> 7 s).
    cmd = [sys.executable, "-m", "panel", "serve", app_dir, "--warm", *extra]
    if catalog is not None:
        cmd += ["--args", "--catalog", str(catalog)]
    return cmd
