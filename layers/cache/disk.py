"""The disk store of the HTTP cache: raw responses, one file per entry, bounded in bytes.

:class:`DiskCache` stores and loads the :class:`~.policy.CacheEntry` values that
:mod:`.policy` builds, under the keys :func:`~.policy.cache_key` computes; it decides nothing
about freshness itself.

File format: a 4-byte big-endian length, a JSON metadata object, then the body. Files are
written to a temporary name (``.tmp-<pid>-*``, next to the entry) and renamed (atomic on POSIX),
so readers never see half an entry. A process killed mid-write leaves its temporary file
behind: temporary files count against the bound, and every scan removes those whose writer
is dead (after :attr:`DiskCache.TMP_DEAD_GRACE_SECONDS`) or that are older than
:attr:`DiskCache.STALE_TMP_SECONDS` whoever wrote them.
The directory is bounded in bytes (``$MAPSTREAM_CACHE_MAX_BYTES``, default 1 GiB): see
:class:`DiskCache` for the eviction order and what is safe when several processes share it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import BadInputError
from ..units import parse_size
from .policy import CacheEntry

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_BYTES_ENV",
    "DiskCache",
    "DiskUsage",
    "PruneResult",
    "max_bytes_from_env",
]

#: Default bound of the disk cache: room for tens of thousands of tiles, small on any disk.
DEFAULT_MAX_BYTES = 1 << 30

#: The environment variable that overrides :data:`DEFAULT_MAX_BYTES` (e.g. ``500M``, ``2G``).
MAX_BYTES_ENV = "MAPSTREAM_CACHE_MAX_BYTES"

def max_bytes_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``$MAPSTREAM_CACHE_MAX_BYTES`` in bytes, or :data:`DEFAULT_MAX_BYTES` if unset or empty.

    Raises
    ------
    BadInputError
        If the variable is set to something that is not a size (the message names it).

    >>> max_bytes_from_env({}) == DEFAULT_MAX_BYTES
    True
    >>> max_bytes_from_env({"MAPSTREAM_CACHE_MAX_BYTES": "200M"})
    209715200
    """
    env = os.environ if environ is None else environ
    value = env.get(MAX_BYTES_ENV, "").strip()
    return parse_size(value, name=MAX_BYTES_ENV) if value else DEFAULT_MAX_BYTES


class DiskUsage(NamedTuple):
    """Entries and bytes (file sizes: metadata and body) in a disk cache."""

    entries: int
    nbytes: int


class PruneResult(NamedTuple):
    """What :meth:`DiskCache.prune` removed and what it kept."""

    removed: DiskUsage
    kept: DiskUsage


class _Scan(NamedTuple):
    files: list[_File]
    temporary: DiskUsage  # temporary files left, live writers' or not stale yet
    removed: DiskUsage  # orphaned temporary files this scan removed


class _File(NamedTuple):
    mtime_ns: int  # first: a list of these sorts least recently used first
    size: int
    path: str
    inode: int


class DiskCache:
    """Responses on disk, one file per key, bounded in bytes. Methods are blocking: call them off
    the loop.

    The bound is kept by evicting least-recently-used entries, with recency the file's
    modification time: a store writes the file and a hit touches it (``os.utime``). The file
    system is the index, so the app and ``mapstream prefetch`` can share one directory with no
    lock and no index to drift from the files or to rebuild after a crash (atime is not used:
    ``noatime``/``relatime`` mounts do not keep it).

    Eviction is amortised: each object keeps an estimate of the total (its last scan plus its
    own writes) and scans the directory only when that estimate passes ``max_bytes``, then
    evicts down to :attr:`LOW_WATER` of it, so a scan is due once per tenth of the bound
    written, not per store. A writing object also rescans every :attr:`RESCAN_SECONDS` to see
    what other processes wrote; with several writers the total can exceed the bound by about
    what the others write in that window, until the next scan. Expired entries without
    validators are evicted first (they can never be served again), then the least recently
    used. What eviction needs from each file's metadata is remembered per inode, so after the
    first eviction in a process only files written by others have their headers read. An entry
    deleted by another process is a miss; a file is replaced atomically, so a reader never sees
    half an entry, and eviction skips a file used or rewritten since it was scanned.

    Parameters
    ----------
    directory
        Where entries live; created on first write.
    max_bytes
        The bound: bytes, or a size string such as ``"500M"``. Default
        ``$MAPSTREAM_CACHE_MAX_BYTES``, else :data:`DEFAULT_MAX_BYTES` (1 GiB). ``0`` stores
        nothing. An entry larger than the bound is not stored. Bytes are file sizes; the file
        system's block rounding (``du``) can add a few KiB per entry.

    Raises
    ------
    BadInputError
        If ``max_bytes`` (or the environment variable) is not a non-negative size.
    """

    #: After an eviction the total is at most this fraction of ``max_bytes``.
    LOW_WATER = 0.9
    #: A writer rescans at least this often to notice other processes' writes.
    RESCAN_SECONDS = 30.0
    #: A temporary file older than this was left by a process that died while writing (a
    #: store writes its file in well under a second), whatever its name says.
    STALE_TMP_SECONDS = 600.0
    #: A temporary file whose writer (the pid in its name) is dead is removed once it is this
    #: old (not at once: a process in another PID namespace sharing the directory may have
    #: that pid for us).
    TMP_DEAD_GRACE_SECONDS = 60.0

    def __init__(
        self, directory: str | os.PathLike[str], max_bytes: int | str | None = None
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes_from_env() if max_bytes is None else _as_size(max_bytes)
        self._lock = threading.Lock()  # guards the estimate below
        self._evicting = threading.Lock()  # one scan-and-evict at a time per object
        self._estimate: int | None = None  # bytes on disk; None until the first scan
        self._written = 0  # bytes written (net) since the current scan began
        self._scanned_at = 0.0
        # inode -> (file size, time after which the entry is useless): what eviction needs from
        # each file's metadata, remembered from our own stores and from earlier evictions so an
        # eviction reads only the headers of files it has not seen (a ~20 us read each).
        self._useful: dict[int, tuple[int, float]] = {}
        #: Orphaned temporary files removed by this object's scans so far.
        self.removed_temporary = DiskUsage(0, 0)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.entry"

    def load(self, key: str) -> CacheEntry | None:
        """The entry for ``key``, or ``None`` if absent or unreadable (a corrupt file is removed).

        A hit counts as a use: it refreshes the entry's place in the eviction order.
        """
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            meta, body = _decode(data)
            entry = CacheEntry(
                url=meta["url"],
                status=meta["status"],
                headers=[tuple(p) for p in meta["headers"]],
                body=body,
                stored_at=meta["stored_at"],
                expires_at=meta["expires_at"],
                etag=meta["etag"],
                last_modified=meta["last_modified"],
            )
        except (struct.error, ValueError, KeyError, TypeError):
            # A corrupt entry is a miss, and is removed so it is not read again.
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)
        except OSError:
            pass  # deleted meanwhile, or a read-only cache: the hit stands, recency is lost
        return entry

    def store(self, key: str, entry: CacheEntry) -> None:
        """Write ``entry`` atomically (temporary file, then rename), evicting if over the bound.

        An entry larger than the whole bound, or already expired with no validators (nothing
        could ever use it), is not stored, and the old entry for ``key`` is removed.
        """
        path = self._path(key)
        meta = json.dumps(
            {
                "url": entry.url,
                "status": entry.status,
                "headers": entry.headers,
                "stored_at": entry.stored_at,
                "expires_at": entry.expires_at,
                "etag": entry.etag,
                "last_modified": entry.last_modified,
                "size": len(entry.body),
            }
        ).encode()
        size = 4 + len(meta) + len(entry.body)
        if size > self.max_bytes or not (entry.has_validators or entry.is_fresh()):
            self.delete(key)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TMP_PREFIX}{os.getpid()}-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(struct.pack(">I", len(meta)))
                fh.write(meta)
                fh.write(entry.body)
                inode = os.fstat(fh.fileno()).st_ino  # kept by the rename
            old = _size_or_zero(path)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        useful = math.inf if entry.has_validators else entry.expires_at
        self._account(size - old, (inode, size, useful))
        self._evict_if_due()

    def delete(self, key: str) -> None:
        """Remove the entry for ``key`` if there is one."""
        path = self._path(key)
        size = _size_or_zero(path)
        path.unlink(missing_ok=True)
        self._account(-size)

    def size(self) -> DiskUsage:
        """Entries and bytes on disk now (scans the directory); the bytes include temporary
        files (stores in progress, and those left by a dead writer not removed yet)."""
        scan = self._scan()
        files = scan.files
        usage = DiskUsage(len(files), sum(f.size for f in files) + scan.temporary.nbytes)
        with self._lock:
            self._estimate, self._written = usage.nbytes, 0
            self._scanned_at = time.monotonic()
        return usage

    def temporary(self) -> DiskUsage:
        """Temporary files on disk now, after removing orphaned ones (scans the directory):
        stores in progress, and files of dead writers still within their grace period."""
        return self._scan().temporary

    def __len__(self) -> int:
        """Number of entries on disk (scans the directory)."""
        return len(self._scan().files)

    def prune(self, max_bytes: int | str | None = None) -> PruneResult:
        """Remove expired entries without validators, then the least recently used until the
        total is at most ``max_bytes`` (default: this cache's bound).

        Raises
        ------
        BadInputError
            If ``max_bytes`` is not a non-negative size.
        """
        target = self.max_bytes if max_bytes is None else _as_size(max_bytes)
        with self._evicting:
            return self._scan_and_evict(target, over=-1)

    def clear(self) -> None:
        """Remove every entry (and orphaned temporary files; a live writer's stays)."""
        for f in self._scan().files:
            with contextlib.suppress(OSError):
                os.unlink(f.path)
        with self._lock:
            self._estimate, self._written = 0, 0

    # -- eviction --------------------------------------------------------------------------

    def _account(self, delta: int, stored: tuple[int, int, float] | None = None) -> None:
        with self._lock:
            if self._estimate is not None:
                self._estimate += delta
            self._written += delta
            if stored is not None:
                self._useful[stored[0]] = stored[1:]

    def _evict_if_due(self) -> None:
        with self._lock:
            due = (
                self._estimate is None
                or self._estimate > self.max_bytes
                or time.monotonic() - self._scanned_at >= self.RESCAN_SECONDS
            )
        # If another thread of this process is already evicting, it will see our write.
        if due and self._evicting.acquire(blocking=False):
            try:
                self._scan_and_evict(int(self.max_bytes * self.LOW_WATER), over=self.max_bytes)
            finally:
                self._evicting.release()

    def _scan_and_evict(self, target: int, over: int) -> PruneResult:
        # Scan; if the total exceeds ``over``, evict the dead, then the least recently used
        # until it is at most ``target``. Caller holds self._evicting.
        with self._lock:
            self._written = 0
        scan = self._scan()
        files = scan.files
        # Temporary files take room too; they cannot be evicted (a writer is at work, or they
        # are not stale yet), so entries make room for them.
        total = sum(f.size for f in files) + scan.temporary.nbytes
        entries, removed, removed_bytes = len(files), 0, 0
        with self._lock:
            known, self._useful = self._useful, {}
        useful: dict[int, tuple[int, float]] = {}
        if total <= over:
            # Forget files that are gone (replaced, evicted elsewhere): the map stays the size
            # of the directory.
            useful = {f.inode: known[f.inode] for f in files if f.inode in known}
        else:
            now = time.time()
            dead, alive = [], []
            for f in files:
                u = known.get(f.inode) if f.inode else None  # some file systems report 0
                if u is None or u[0] != f.size:  # not seen, or another file on a reused inode
                    u = (f.size, _useful_until(f.path))
                useful[f.inode] = u
                (dead if u[1] <= now else alive).append(f)
            alive.sort()  # least recently used first
            for i, f in enumerate(dead + alive):
                if i >= len(dead) and total <= target:
                    break
                gone = _unlink_unless_used(f)
                if gone is not None:  # deleted, by us (True) or by another process (False)
                    useful.pop(f.inode, None)
                    total -= f.size
                    entries -= 1
                    if gone:
                        removed += 1
                        removed_bytes += f.size
        with self._lock:
            useful.update(self._useful)  # stores made while we scanned
            self._useful = useful
            # Writes made while we scanned may be counted twice: an overestimate, which only
            # brings the next scan forward.
            self._estimate = total + self._written
            self._scanned_at = time.monotonic()
        return PruneResult(DiskUsage(removed, removed_bytes), DiskUsage(entries, total))

    def _scan(self) -> _Scan:
        """Every entry file as (mtime, size, path, inode), and the temporary files; removes
        orphaned temporary files (see the module notes)."""
        out: list[_File] = []
        now = time.time()
        tmp_n = tmp_bytes = gone_n = gone_bytes = 0
        try:
            top = os.scandir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return _Scan(out, DiskUsage(0, 0), DiskUsage(0, 0))
        with top:
            subdirs = [d.path for d in top if len(d.name) == 2 and d.is_dir(follow_symlinks=False)]
        for sub in subdirs:
            try:
                it = os.scandir(sub)
            except OSError:
                continue
            with it:
                for f in it:
                    try:
                        if f.name.endswith(".entry"):
                            st = f.stat(follow_symlinks=False)
                            out.append(_File(st.st_mtime_ns, st.st_size, f.path, f.inode()))
                        elif f.name.startswith(_TMP_PREFIX):
                            st = f.stat(follow_symlinks=False)
                            if self._orphaned(f.name, now - st.st_mtime):
                                os.unlink(f.path)
                                gone_n, gone_bytes = gone_n + 1, gone_bytes + st.st_size
                            else:
                                tmp_n, tmp_bytes = tmp_n + 1, tmp_bytes + st.st_size
                    except OSError:
                        continue  # removed by another process while we looked
        removed = DiskUsage(gone_n, gone_bytes)
        if gone_n:
            with self._lock:
                before = self.removed_temporary
                self.removed_temporary = DiskUsage(before.entries + gone_n, before.nbytes + gone_bytes)
        return _Scan(out, DiskUsage(tmp_n, tmp_bytes), removed)

    def _orphaned(self, name: str, age: float) -> bool:
        """Whether the temporary file ``name``, ``age`` seconds old, was left by a dead writer."""
        if age >= self.STALE_TMP_SECONDS:
            return True
        if age < self.TMP_DEAD_GRACE_SECONDS:
            return False
        pid = _writer_pid(name)
        return pid is not None and pid != os.getpid() and not _alive(pid)


_TMP_PREFIX = ".tmp-"


def _writer_pid(name: str) -> int | None:
    """The pid in a temporary file's name (``.tmp-<pid>-<random>``), if it has one.

    >>> _writer_pid(".tmp-4242-abc123"), _writer_pid(".tmp-abc123")
    (4242, None)
    """
    pid, sep, _ = name[len(_TMP_PREFIX) :].partition("-")
    return int(pid) if sep and pid.isdigit() else None


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on this host, in this PID namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # exists but not ours, or cannot tell: keep its file
    return True


def _as_size(value: object) -> int:
    if isinstance(value, str):
        return parse_size(value, name="max_bytes")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 2**63:
        return int(value)
    raise BadInputError(f"max_bytes must be a size >= 0 (bytes, or a string like '2G'): {value!r}")


def _decode(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack(">I", data[:4])
    meta = json.loads(data[4 : 4 + n])
    body = data[4 + n :]
    if len(body) != meta["size"]:
        raise ValueError("size mismatch")
    return meta, body


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _useful_until(path: str) -> float:
    # When the entry becomes useless: its expiry if it has no validators (then the fetcher can
    # never use it again), else never. Reads the metadata only.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))  # no buffered file object
        try:
            head = os.read(fd, 4096)
            (n,) = struct.unpack(">I", head[:4])
            while 4 + n > len(head) and (more := os.read(fd, 4 + n - len(head))):
                head += more
        finally:
            os.close(fd)
        meta = json.loads(head[4 : 4 + n])
        if meta["etag"] is None and meta["last_modified"] is None:
            return float(meta["expires_at"])
        return math.inf
    except FileNotFoundError:
        return math.inf  # gone already; the unlink will find out
    except (OSError, struct.error, ValueError, KeyError, TypeError):
        return -math.inf  # unreadable or corrupt: useless


def _unlink_unless_used(f: _File) -> bool | None:
    """Delete ``f`` unless it was used or rewritten since the scan: True if deleted, False if
    another process deleted it first, None if it was kept."""
    try:
        if os.stat(f.path).st_mtime_ns != f.mtime_ns:
            return None
        os.unlink(f.path)
    except FileNotFoundError:
        return False
    except OSError:
        return None  # e.g. open in another process on Windows: try the next one
    return True
