"""rustac's command line, run by path (``python .../_rustac.py serve ...``) by the STAC server.

rustac's CLI parses the process's own arguments after the interpreter's first one, so it cannot
run under ``python -c`` or ``-m``; this file is the script it runs as. Importing it does nothing.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    import rustac

    sys.exit(rustac.main())
