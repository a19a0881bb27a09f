"""``python -m mapstream.app.cli``: the ``mapstream`` console script."""

from mapstream.app.cli import main

main(prog_name="mapstream")
