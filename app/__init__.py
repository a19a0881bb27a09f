"""The mapstream Panel app.

``from app import create_app; create_app()`` gives a map in a notebook; ``panel serve app`` serves
the same factory. Panel is imported lazily so that ``mapstream`` CLI commands stay light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .factory import create_app

        return create_app
    raise AttributeError(f"module 'app' has no attribute {name!r}")
