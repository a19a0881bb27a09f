"""What the commands share: the common options, the catalog and fetcher helpers, the run loop.

Importing this module stays light (click only): the engine is imported inside the helpers.
Expected failures become one line and an exit status, never a traceback: bad input exits 2
(usage), a catalog or service problem 1, Ctrl-C :data:`EXIT_INTERRUPTED`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

__all__ = [
    "EXIT_INTERRUPTED",
    "TILE_ABSENT",
    "cache_option",
    "catalog_option",
    "get_spec",
    "layer_headers",
    "make_fetcher",
    "one_line",
    "open_catalog",
    "quiet_option",
    "request_counts",
    "run_async",
    "source_class",
]

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

#: Statuses that mean "no tile here" rather than failure (drawn transparent by the app).
TILE_ABSENT = (404, 204)

catalog_option = click.option(
    "--catalog",
    "catalog_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MAPSTREAM_CATALOG",
    help="Catalog YAML file [env MAPSTREAM_CATALOG; default: the embedded demo catalog].",
)
cache_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MAPSTREAM_CACHE_DIR",
    help="HTTP cache directory shared with the app [env MAPSTREAM_CACHE_DIR].",
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")


def one_line(exc: BaseException) -> str:
    """The error's message on one line (its type name if it has none).

    >>> one_line(ValueError("two\\n   lines")), one_line(KeyError())
    ('two lines', 'KeyError')
    """
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def open_catalog(path: Path | None) -> Any:
    """The catalog at ``path`` (None: the embedded demo catalog).

    Raises
    ------
    click.ClickException
        The file cannot be read or is not a valid catalog (exit 1).
    """
    from mapstream.layers.catalog import load_catalog
    from mapstream.layers.errors import LayersError

    try:
        return load_catalog(path)
    except (LayersError, OSError) as exc:
        text = one_line(exc)
        if not text.startswith("catalog "):  # a CatalogError names the file itself
            text = f"catalog {path or '(embedded)'}: {text}"
        raise click.ClickException(f"cannot use {text}") from None


def get_spec(catalog: Any, name: str) -> Any:
    """The catalog's layer ``name``.

    Raises
    ------
    click.BadParameter
        No such layer (exit 2; the message comes from the catalog).
    """
    from mapstream.layers.errors import LayersError

    try:
        return catalog.get(name)
    except (LayersError, KeyError) as exc:
        raise click.BadParameter(one_line(exc), param_hint="'LAYER'") from None


def source_class(spec: Any) -> type:
    """The layer class that ``spec`` builds (from the sources' registry), without building it.

    Raises
    ------
    click.ClickException
        No source serves the spec's kind.
    """
    from mapstream.layers.errors import BadInputError
    from mapstream.layers.sources import layer_class

    try:
        return layer_class(spec.kind)
    except BadInputError as exc:
        raise click.ClickException(one_line(exc)) from None


def make_fetcher(cache_dir: Path | None, concurrency: int | None = None, **kw: Any) -> Any:
    """A :class:`~mapstream.layers.http.Fetcher` on ``cache_dir`` (None: the default cache)."""
    from mapstream.layers.http import Fetcher

    if cache_dir is not None:
        kw["cache_dir"] = cache_dir
    if concurrency is not None:
        kw["per_host_limit"] = concurrency
    return Fetcher(**kw)


def run_async(coro_fn: Callable[[], Awaitable[Any]], on_interrupt: Callable[[], None]) -> Any:
    """Run ``coro_fn()`` in a fresh loop; on Ctrl-C call ``on_interrupt`` and exit 130.

    Raises
    ------
    click.UsageError
        The engine rejected an argument (:class:`~mapstream.layers.errors.BadInputError`).
    click.ClickException
        Any other engine error, as one line (exit 1).
    """
    from mapstream.layers.errors import BadInputError, LayersError

    try:
        return asyncio.run(coro_fn())
    except KeyboardInterrupt:
        on_interrupt()
        sys.exit(EXIT_INTERRUPTED)
    except BadInputError as exc:
        raise click.UsageError(one_line(exc)) from None
    except LayersError as exc:
        raise click.ClickException(one_line(exc)) from None


def request_counts(fetcher: Any) -> tuple[int, int]:
    """``(requests, bytes)`` from the fetcher's metrics, ``(0, 0)`` if it has none yet."""
    metrics = getattr(fetcher, "metrics", None)
    if metrics is None:
        return (0, 0)
    snap = metrics.snapshot()
    return int(snap.get("requests", 0)), int(snap.get("bytes", 0))


def layer_headers(layer: Any) -> dict[str, str] | None:
    """Exactly the headers the layer sends itself (None if none).

    The cache key includes the headers, so the app (which requests through the layer) finds
    what the CLI stored. A catalog's own headers reach the fetcher through ``build_layer``
    (``set_source_headers``), not here.
    """
    headers = getattr(layer, "headers", None)
    return dict(headers) if headers else None
