"""``mapstream cache``: where the HTTP disk cache is, its entries and size against its bound;
prune it to a size or clear it (:class:`~mapstream.layers.cache.DiskCache` does the work)."""

from __future__ import annotations

from pathlib import Path

import click

from .shared import cache_option, one_line

__all__ = ["cache"]


@click.command()
@cache_option
@click.option("--prune", "prune_to", default=None, metavar="SIZE",
              help="Evict down to SIZE (e.g. 500M; default: the bound) after dropping useless entries.")
@click.option("--clear", is_flag=True, help="Remove every entry.")
def cache(cache_dir, prune_to, clear) -> None:
    """Show the HTTP disk cache (where, entries, size, bound); prune or clear it.

    The bound is MAPSTREAM_CACHE_MAX_BYTES (default 1G); when the cache is full, expired
    responses that cannot be revalidated go first, then the least recently used. Temporary
    files left by an interrupted write (a killed prefetch) count against the bound and are
    removed by every look at the cache once their writer is gone.
    """
    from mapstream.layers.cache import DiskCache, default_cache_dir
    from mapstream.layers.errors import BadInputError, LayersError
    from mapstream.layers.units import parse_size

    if prune_to is not None and clear:
        raise click.UsageError("--prune and --clear exclude each other")
    if prune_to is not None:
        try:
            prune_to = parse_size(prune_to, name="--prune")
        except BadInputError as exc:
            raise click.BadParameter(one_line(exc), param_hint="'--prune'") from None
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        disk = DiskCache(directory)
        if clear:
            before = disk.size()
            disk.clear()
            click.echo(f"removed {before.entries} entries ({_human(before.nbytes)}) from {directory}")
            _echo_orphans(disk)
            return
        if prune_to is not None:
            result = disk.prune(prune_to)
            click.echo(f"removed {result.removed.entries} entries ({_human(result.removed.nbytes)}); "
                       f"kept {result.kept.entries} ({_human(result.kept.nbytes)})")
            _echo_orphans(disk)
            return
        usage = disk.size()
        temporary = disk.temporary()
    except LayersError as exc:
        raise click.ClickException(one_line(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot use the cache at {directory}: {one_line(exc)}") from None
    click.echo(f"cache:   {directory}")
    click.echo(f"entries: {usage.entries}")
    click.echo(f"size:    {_human(usage.nbytes)} of {_human(disk.max_bytes)} "
               f"({usage.nbytes / max(disk.max_bytes, 1):.0%}; bound from MAPSTREAM_CACHE_MAX_BYTES, default 1G)")
    if temporary.entries:
        click.echo(f"temporary: {temporary.entries} files ({_human(temporary.nbytes)}) being written, "
                   "or left by an interrupted write (removed once their writer is gone)")
    _echo_orphans(disk)


def _echo_orphans(disk) -> None:
    """Say how many temporary files of interrupted writes the look at the cache removed."""
    gone = disk.removed_temporary
    if gone.entries:
        click.echo(f"removed {gone.entries} temporary files ({_human(gone.nbytes)}) left by interrupted writes")


def _human(nbytes: int) -> str:
    """Bytes for people.

    >>> _human(512), _human(3 * 2**20), _human(int(1.5 * 2**30))
    ('512 B', '3.0 MiB', '1.5 GiB')
    """
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
