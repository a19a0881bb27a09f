"""Worker processes that never import the caller's ``__main__``.

Children started by multiprocessing's spawn and forkserver methods import the parent's main
module before they run anything: ``multiprocessing.spawn.get_preparation_data`` names it
(``init_main_from_path`` for a script, ``init_main_from_name`` for ``python -m``) and
``multiprocessing.spawn.prepare`` in the child runs it again as ``__mp_main__``, so that
functions defined in a script can be unpickled there. A library's own workers need nothing from
it, and for a script without ``if __name__ == "__main__":`` it is harmful: the script's whole
top-level code runs again in every worker (servers started, data regenerated, and the worker's
own attempt to start the pool breaks it).

:func:`mainless_context` is a forkserver context whose children get the parent's preparation
data minus those two entries (``sys.path``, working directory, authkey and the rest are kept), so
``prepare`` has no main module to fix up. The fork server itself preloads only the modules it is
given, never ``"__main__"``. Fork is not an option: the host runs threads and an event loop.
Only functions importable by module name can run in these workers.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from multiprocessing import context, forkserver, popen_forkserver, spawn, util
from typing import Any

__all__ = ["MAIN_KEYS", "mainless_context", "preparation_data"]

#: The entries of multiprocessing's preparation data that make a child run the parent's main.
MAIN_KEYS = ("init_main_from_path", "init_main_from_name")


def preparation_data(name: str) -> dict[str, Any]:
    """What multiprocessing would send a new child, without the parent's main module.

    ``name`` is the child process's name. Must be called in the parent, as multiprocessing's own
    ``get_preparation_data``.
    """
    data = spawn.get_preparation_data(name)
    for key in MAIN_KEYS:
        data.pop(key, None)
    return data


class _MainlessPopen(popen_forkserver.Popen):
    """``popen_forkserver.Popen`` with :func:`preparation_data` instead of the full data."""

    def _launch(self, process_obj: Any) -> None:
        # CPython 3.11's popen_forkserver.Popen._launch (unchanged through 3.13), but for the
        # preparation data: that function has no seam for it.
        prep_data = preparation_data(process_obj._name)
        buf = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            context.reduction.dump(prep_data, buf)
            context.reduction.dump(process_obj, buf)
        finally:
            context.set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)
        # A duplicate of the write end, kept open, tells the child its parent is alive.
        _parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _MainlessProcess(context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> _MainlessPopen:
        return _MainlessPopen(process_obj)


class _MainlessContext(context.ForkServerContext):
    Process = _MainlessProcess  # type: ignore[assignment]


def mainless_context(preload: Sequence[str] = ()) -> context.BaseContext:
    """A forkserver context whose children never import or run the caller's ``__main__``.

    Give it to ``concurrent.futures.ProcessPoolExecutor(mp_context=...)``.

    Parameters
    ----------
    preload
        Modules the fork server imports once, so that every child starts with them loaded.
        ``"__main__"`` is dropped. There is one fork server per process, shared by every
        forkserver context: this list replaces multiprocessing's default (``["__main__"]``)
        and takes effect when the server starts, not if it is already running.

    Raises
    ------
    ValueError
        The platform has no forkserver start method (it needs to pass file descriptors over
        Unix sockets: not Windows).
    """
    ctx = _MainlessContext()
    ctx._check_available()
    ctx.set_forkserver_preload([m for m in preload if m != "__main__"])
    return ctx
