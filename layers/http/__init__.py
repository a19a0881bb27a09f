"""The fetch engine: one :class:`Fetcher` over ``httpx.AsyncClient`` (aiohttp on the wire).

See :mod:`mapstream.layers.http.fetcher` for how a GET goes, and ARCHITECTURE.md for the modules.
"""

from .fetcher import TRANSPORTS, USER_AGENT, Fetcher, Response, shared_fetcher

__all__ = ["Fetcher", "Response", "shared_fetcher", "USER_AGENT", "TRANSPORTS"]
