"""The ``mapstream`` command line: prefetch, export, check, cache, demo and serve.

The same async engine as the app (:mod:`mapstream.layers`), driven in batch: warm the disk cache
the app reads before a workshop, export a feature layer for offline work, check that a catalog's
services answer, look after the disk cache, run the embedded demo services, or run the app.

One module per command, each holding the click command and its async core:

- :mod:`.prefetch`: ``mapstream prefetch`` (tiles of a box over zoom levels, or feature pages);
- :mod:`.export`: ``mapstream export`` (a feature layer to GeoParquet, GeoPackage or GeoJSON);
- :mod:`.raster`: ``mapstream raster`` (a raster layer's values over a box into one GeoTIFF);
- :mod:`.stac`: ``mapstream stac search`` (STAC API items over a box into GeoParquet);
- :mod:`.check`: ``mapstream check`` (probe every layer of a catalog);
- :mod:`.cache`: ``mapstream cache`` (show, prune or clear the disk cache);
- :mod:`.demo`: ``mapstream demo`` (the embedded demo services);
- :mod:`.serve`: ``mapstream serve`` (the app with ``panel serve``);

and what they share: :mod:`.shared` (common options, catalog and fetcher helpers, the run
loop), :mod:`.params` (option types), :mod:`.progress` (bar and summaries), :mod:`.writers`
(the export's streaming file writers).

Importing this package stays light (click only); each command imports what it needs. Bad input
exits with status 2 (usage) or 1 (a catalog or service problem) and one line of explanation;
Ctrl-C stops a run cleanly, prints a partial summary and exits with status 130.
"""

from __future__ import annotations

import click

from mapstream import __version__

from . import cache, check, demo, export, prefetch, raster, serve, stac

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mapstream")
def main() -> None:
    """mapstream: a reactive map for Panel/HoloViz, and batch tools for its data."""


for _command in (
    prefetch.prefetch,
    export.export,
    raster.raster,
    stac.stac,
    check.check,
    cache.cache,
    demo.demo,
    serve.serve,
):
    main.add_command(_command)
del _command
