"""Demo children exit when the process that started them dies (even by SIGKILL or SIGTERM).

``atexit`` stops the demo services on a normal exit; a parent killed by a signal runs no
``atexit``. The starter passes its pid in ``MAPSTREAM_DEMO_PARENT``; a child that finds it at
import of :mod:`mapstream.demo` (both servers run as ``python -m mapstream.demo.<server>``) watches
its parent and exits once it is gone, so nothing is left running.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

ENV = "MAPSTREAM_DEMO_PARENT"


def watch_parent(interval: float = 0.5) -> bool:
    """Start watching if this process is a demo child; True when a watch started."""
    value = os.environ.pop(ENV, None)  # popped: nothing this process starts inherits it
    if not value or not value.isdigit() or os.getppid() != int(value):
        return False
    exit_when_orphaned(int(value), interval=interval)
    return True


def exit_when_orphaned(parent: int, *, interval: float = 1.0, before_exit: Callable[[], object] | None = None) -> None:
    """Exit this process (after ``before_exit``, e.g. killing a grandchild) once ``parent`` is no
    longer its parent: a server child whose starter died without stopping it does not outlive it.
    """

    def run() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        if before_exit is not None:
            before_exit()
        os._exit(0)

    threading.Thread(target=run, name="mapstream-orphan-watch", daemon=True).start()
