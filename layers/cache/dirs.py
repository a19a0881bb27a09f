"""Where mapstream keeps files per user: ``$XDG_CACHE_HOME/mapstream/NAME``, or an override.

The HTTP disk cache (``http``) and the demo's data files (``demo``) live there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["default_cache_dir", "user_cache_dir"]


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The disk cache directory: ``$MAPSTREAM_CACHE_DIR``, else the per-user cache dir.

    >>> str(default_cache_dir({"MAPSTREAM_CACHE_DIR": "/tmp/ms-cache"}))
    '/tmp/ms-cache'
    >>> str(default_cache_dir({"XDG_CACHE_HOME": "/c"}))
    '/c/mapstream/http'
    """
    return user_cache_dir("http", "MAPSTREAM_CACHE_DIR", environ)


def user_cache_dir(name: str, override: str, environ: Mapping[str, str] | None = None) -> Path:
    """``$override`` if set, else ``$XDG_CACHE_HOME/mapstream/NAME`` (``~/.cache`` by default).

    >>> str(user_cache_dir("demo", "X_DIR", {"HOME": "/h", "XDG_CACHE_HOME": "/c"}))
    '/c/mapstream/demo'
    """
    env = os.environ if environ is None else environ
    if env.get(override):
        return Path(env[override])
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mapstream" / name
