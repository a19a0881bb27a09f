"""Redirects: httpx's rules for the request that follows one (:func:`follow`), and the guard
that keeps credentials and internal addresses out of reach of a hostile server
(:class:`RedirectGuard`).

The fetcher follows redirects itself on both paths (the direct aiohttp path and
``client.send``), so both apply the same two rules beyond httpx's:

- every header the request was *configured* with (per-source headers from a catalog, a layer's
  ``headers``, the caller's ``headers=``: ``Authorization``, ``Private-Token``, ``X-Api-Key``,
  anything) is dropped when a redirect leaves the origin it was meant for; httpx drops only
  ``Authorization``. The fetcher's own defaults (``User-Agent``, ``Fetcher(headers=...)``) are
  sent to every origin by design;
- a redirect from a public origin to a loopback, link-local or private address (the cloud
  metadata service at ``169.254.169.254``, an intranet host) is refused, unless the fetcher or
  the source allows it (``Fetcher(allow_private_redirects=True)``; a catalog layer's
  ``allow_private_redirects: true``). Host names are resolved to decide; an origin that is
  itself internal may redirect anywhere (an intranet service pointing at its neighbour).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable, Mapping

import httpx

from ..errors import RedirectRefusedError
from ..redact import redact_url
from .urls import same_origin

__all__ = [
    "INTERNAL_NETWORKS",
    "REDIRECT_STATUSES",
    "REDIRECT_SENSITIVE",
    "RedirectGuard",
    "follow",
]

#: Statuses httpx follows when the response names a ``Location``.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Request headers a redirect may drop or change (:func:`follow`): never session defaults.
REDIRECT_SENSITIVE = frozenset({"authorization", "cookie", "host", "content-length", "transfer-encoding"})
#: Addresses a public server must not send us to: loopback, private (RFC 1918, ULA), link-local
#: (cloud metadata), shared address space (CGNAT) and "this network".
INTERNAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
        "100.64.0.0/10", "0.0.0.0/8", "::1/128", "::/128", "fe80::/10", "fc00::/7",
    )
)  # fmt: skip


def follow(
    method: str,
    url: httpx.URL,
    status: int,
    location: str,
    headers: Mapping[str, str],
    content: bytes | None,
    *,
    bound: Iterable[str] = (),
) -> tuple[str, httpx.URL, dict[str, str], bytes | None]:
    """The request that follows a redirect, by the rules of httpx's client, and ours.

    302 and 303 turn any method but HEAD into GET, 301 turns POST into GET (a GET drops the
    body); a relative ``Location`` is resolved against ``url``; ``Authorization`` and every
    header named in ``bound`` (the request's configured headers: credentials of any name) are
    dropped when the origin changes (unless it is a plain http -> https upgrade of one host);
    ``Cookie`` is always dropped. ``headers`` and ``bound`` have lower-case names.

    >>> m, u, h, c = follow("POST", httpx.URL("http://a.test/x"), 303, "/y?z=1",
    ...                     {"authorization": "t", "cookie": "c"}, b"{}")
    >>> m, str(u), h, c
    ('GET', 'http://a.test/y?z=1', {'authorization': 't'}, None)
    >>> follow("GET", httpx.URL("http://a.test/x"), 307, "http://b.test/x", {"authorization": "t"}, None)[2]
    {}
    >>> follow("GET", httpx.URL("http://a.test/x"), 307, "http://b.test/x",
    ...        {"private-token": "t", "accept": "image/png"}, None, bound={"private-token"})[2]
    {'accept': 'image/png'}
    >>> follow("GET", httpx.URL("http://a.test/x"), 301, "https://a.test/x", {"authorization": "t"}, None)[2]
    {'authorization': 't'}

    >>> follow("GET", httpx.URL("http://a.test/x"), 302, "http://a.test:99999/", {}, None)
    Traceback (most recent call last):
    ...
    httpx.RemoteProtocolError: Invalid URL in location header: port 99999 is out of range.

    Raises
    ------
    httpx.RemoteProtocolError
        ``location`` is not a URL (or its port is out of range).
    httpx.UnsupportedProtocol
        It is not an http(s) URL.
    """
    new_method = method
    if (status in (302, 303) and method != "HEAD") or (status == 301 and method == "POST"):
        new_method = "GET"
    try:
        new = httpx.URL(location)
    except httpx.InvalidURL as exc:
        raise httpx.RemoteProtocolError(f"Invalid URL in location header: {exc}.") from None
    if new.scheme and not new.host:
        new = new.copy_with(host=url.host)
    if new.is_relative_url:
        new = url.join(new)
    if url.fragment and not new.fragment:
        new = new.copy_with(fragment=url.fragment)
    if new.scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{new.scheme}://'.")
    if new.port is not None and not 0 < new.port < 65536:
        raise httpx.RemoteProtocolError(f"Invalid URL in location header: port {new.port} is out of range.")
    out = {k: v for k, v in headers.items() if k != "cookie"}
    if not same_origin(url, new):
        upgrade = (
            url.host == new.host
            and (url.scheme, url.port or 80) == ("http", 80)
            and (new.scheme, new.port or 443) == ("https", 443)
        )
        if not upgrade:
            out.pop("authorization", None)
            for name in bound:
                out.pop(name, None)
        if "host" in out:
            out["host"] = new.netloc.decode("ascii")
    if new_method != method and new_method == "GET":
        content = None
        out.pop("content-length", None)
        out.pop("transfer-encoding", None)
    return new_method, new, out, content


class RedirectGuard:
    """Which redirects a fetcher refuses: from a public origin to an internal address.

    Parameters
    ----------
    allow_private
        Follow every redirect (a fetcher used only inside a trusted network).
    internal_networks
        The addresses that count as internal (default :data:`INTERNAL_NETWORKS`). A test
        narrows it to tell two loopback addresses apart (``127.0.0.1`` "public",
        ``127.0.0.2`` internal).

    Notes
    -----
    Names are resolved with the system resolver when a redirect is met (and remembered for a
    minute); the connection that follows resolves again, so a name that changes its answer in
    between (DNS rebinding) is not caught: a firewall is the guard for that.

    >>> guard = RedirectGuard()
    >>> guard.is_internal_address("169.254.169.254"), guard.is_internal_address("8.8.8.8")
    (True, False)
    >>> guard.is_internal_address("::ffff:10.0.0.1")
    True
    """

    #: Seconds a host name's answer is remembered.
    RESOLVE_TTL = 60.0

    def __init__(
        self,
        allow_private: bool = False,
        internal_networks: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network] = INTERNAL_NETWORKS,
    ) -> None:
        self.allow_private = bool(allow_private)
        self.internal_networks = tuple(ipaddress.ip_network(n) for n in internal_networks)
        self._allowed: set[str] = set()
        self._lock = threading.Lock()
        self._resolved: dict[str, tuple[float, bool]] = {}

    def allow(self, url_prefix: str) -> None:
        """Follow redirects to internal addresses for requests whose URL starts with
        ``url_prefix`` (a catalog layer's ``allow_private_redirects: true``)."""
        with self._lock:
            self._allowed.add(url_prefix)

    def allows(self, url: str) -> bool:
        """Whether a request for ``url`` may be redirected to an internal address.

        >>> g = RedirectGuard(); g.allow("http://intra.test/"); g.allows("http://intra.test/a"), g.allows("http://b.test/")
        (True, False)
        """
        if self.allow_private:
            return True
        with self._lock:
            return any(url.startswith(p) for p in self._allowed)

    def is_internal_address(self, address: str) -> bool:
        """Whether the IP address ``address`` is in :attr:`internal_networks`."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope is not an address
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)
        if mapped is not None:
            ip = mapped
        return any(ip.version == n.version and ip in n for n in self.internal_networks)

    async def is_internal_host(self, host: str) -> bool:
        """Whether ``host`` (an IP address or a name, resolved) is internal: any of its
        addresses is. A name that does not resolve is not internal (the request will fail)."""
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            pass
        else:
            return self.is_internal_address(host)
        now = time.monotonic()
        hit = self._resolved.get(host)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            internal = False
        else:
            internal = any(self.is_internal_address(str(info[4][0])) for info in infos)
        if len(self._resolved) > 1024:
            self._resolved.clear()
        self._resolved[host] = (now + self.RESOLVE_TTL, internal)
        return internal

    async def check(self, first: str, current: httpx.URL, target: httpx.URL) -> None:
        """Refuse the redirect from ``current`` to ``target`` of a request for ``first`` if it
        goes from a public origin to an internal address and nothing allows that.

        Raises
        ------
        RedirectRefusedError
            The redirect goes from a public origin to an internal address.
        """
        if self.allow_private or same_origin(current, target):
            return
        if not await self.is_internal_host(target.host) or await self.is_internal_host(current.host):
            return
        if self.allows(first):
            return
        safe = redact_url(str(current))
        raise RedirectRefusedError(
            f"refused a redirect from {safe} to an internal address ({target.host}): a public "
            "server may not send requests to loopback, private or link-local addresses; if the "
            "server is trusted, set allow_private_redirects: true on its layer in the catalog "
            "(or Fetcher(allow_private_redirects=True))",
            url=safe,
        )
