"""The ``mapstream`` command line (commands arrive in a later change)."""

from __future__ import annotations

import click

from layers import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mapstream")
def main() -> None:
    """mapstream: a reactive map for Panel/HoloViz, and batch tools for its data."""


if __name__ == "__main__":  # pragma: no cover
    main()
