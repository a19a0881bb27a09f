"""pygeoapi's child process with its SQLite provider working: ``python -m tests.interop.pygeoapi_child SPEC``.

pygeoapi's ``SQLiteGPKG`` provider loads SpatiaLite into :mod:`sqlite3`, but this venv's Python is
built without extension loading; ``pysqlite3`` (PyPI ``pysqlite3-binary``) has it, so it stands
in for :mod:`sqlite3` before pygeoapi is imported. The rest is the demo's launcher.
"""

import sys

from pysqlite3 import dbapi2

sys.modules["sqlite3"] = dbapi2

from mapstream.demo.ogcserver import _serve  # noqa: E402 (after the swap, on purpose)

if __name__ == "__main__":
    _serve(sys.argv[1])
