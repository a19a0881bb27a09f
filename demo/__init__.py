"""Embedded demo services that run on loopback (no internet needed).

>>> from mapstream.demo import ensure_demo, start_demo   # cheap: nothing starts on import
"""

from ._watchdog import watch_parent
from .services import DemoServices, current_demo, ensure_demo, start_demo, start_demo_soon

__all__ = ["DemoServices", "current_demo", "ensure_demo", "start_demo", "start_demo_soon"]

watch_parent()  # in a demo child only: exit when the starter dies (see _watchdog)
