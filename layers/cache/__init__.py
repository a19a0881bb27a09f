"""The HTTP response cache (disk) and the decoded-object cache (memory) the fetcher uses.

One module per responsibility:

- :mod:`.policy`: the rules (RFC 9111, private-cache subset): cache keys, freshness, validators,
  the :class:`CacheEntry` value; pure and doctested;
- :mod:`.disk`: :class:`DiskCache`, raw responses on disk, bounded in bytes, shared safely by
  several processes (the app and ``mapstream prefetch``);
- :mod:`.memory`: :class:`MemoryLRU`, the byte-bounded LRU for decoded objects;
- :mod:`.dirs`: the per-user cache directories.

The fetcher (:mod:`mapstream.layers.http`) owns the protocol (when to look up, revalidate with a
conditional request, store); these modules only compute and store.

Why not hishel: hishel 2.0 (a new API) caches inside the transport, below the fetcher's
single-flight, retries and metrics, so it could neither report hits and revalidations per
request nor share one revalidation among concurrent callers; as a shared-cache implementation
it declines to store responses to requests with ``Authorization``, which per-credential
partitioning needs; and it has no fallback TTL for validator-less responses. The subset we need
is small enough to keep here, tested.
"""

from __future__ import annotations

from .dirs import default_cache_dir, user_cache_dir
from .disk import (
    DEFAULT_MAX_BYTES,
    MAX_BYTES_ENV,
    DiskCache,
    DiskUsage,
    PruneResult,
    max_bytes_from_env,
)
from .memory import MemoryLRU
from .policy import (
    CACHEABLE_STATUSES,
    CacheEntry,
    cache_key,
    freshness_lifetime,
    make_entry,
    parse_cache_control,
    refresh_entry,
)

__all__ = [
    "CACHEABLE_STATUSES",
    "DEFAULT_MAX_BYTES",
    "MAX_BYTES_ENV",
    "CacheEntry",
    "DiskCache",
    "DiskUsage",
    "MemoryLRU",
    "PruneResult",
    "cache_key",
    "default_cache_dir",
    "freshness_lifetime",
    "make_entry",
    "max_bytes_from_env",
    "parse_cache_control",
    "refresh_entry",
    "user_cache_dir",
]
