"""``python -m mapstream``: the ``mapstream`` command line."""

from mapstream.app.cli import main

main(prog_name="mapstream")
