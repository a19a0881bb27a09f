"""The HTTP cache (layers/cache/: policy, disk store, memory LRU) and parse_size (layers/units.py)."""

from __future__ import annotations

import email.utils
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mapstream.layers.cache import (
    DEFAULT_MAX_BYTES,
    DiskCache,
    MemoryLRU,
    cache_key,
    freshness_lifetime,
    make_entry,
    refresh_entry,
)
from mapstream.layers.errors import BadInputError
from mapstream.layers.units import parse_size
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_disk_roundtrip_len_and_clear(tmp_path):
    disk = DiskCache(tmp_path)
    entry = make_entry("http://h/a", 200, [("ETag", '"1"'), ("X-A", "b")], b"\x00body", ttl=60)
    disk.store("ab" + "0" * 62, entry)
    back = disk.load("ab" + "0" * 62)
    assert back is not None
    assert (back.body, back.status, back.etag) == (b"\x00body", 200, '"1"')
    assert back.headers == [("ETag", '"1"'), ("X-A", "b")]
    assert len(disk) == 1
    assert disk.load("cd" + "0" * 62) is None
    disk.clear()
    assert len(disk) == 0


def test_truncated_entry_is_dropped(tmp_path):
    disk = DiskCache(tmp_path)
    key = "ef" + "1" * 62
    disk.store(key, make_entry("http://h/a", 200, [], b"x" * 1000, ttl=60))
    path = next(tmp_path.rglob("*.entry"))
    path.write_bytes(path.read_bytes()[:-10])
    assert disk.load(key) is None
    assert not path.exists()


def test_store_leaves_no_temporary_files(tmp_path):
    disk = DiskCache(tmp_path)
    for i in range(5):
        disk.store("aa" + str(i) * 62, make_entry("http://h/a", 200, [], b"x", ttl=60))
    assert sorted(p.suffix for p in tmp_path.rglob("*") if p.is_file()) == [".entry"] * 5


def test_expires_header_gives_the_lifetime():
    now = time.time()
    headers = {
        "date": email.utils.formatdate(now, usegmt=True),
        "expires": email.utils.formatdate(now + 120, usegmt=True),
    }
    assert 119 <= freshness_lifetime(headers, ttl=5) <= 121
    assert freshness_lifetime({"expires": "0"}, ttl=5) == 0.0  # invalid date: already stale
    assert freshness_lifetime({"cache-control": "max-age=abc"}, ttl=5) == 0.0


def test_uncacheable_status_is_not_stored():
    assert make_entry("http://h/a", 500, [], b"", ttl=60) is None
    assert make_entry("http://h/a", 404, [], b"", ttl=60) is not None


def test_refresh_after_304_with_no_store_drops_the_entry():
    entry = make_entry("http://h/a", 200, [("ETag", '"1"')], b"b", ttl=60)
    assert refresh_entry(entry, [("Cache-Control", "no-store")], ttl=60) is None


def test_cookie_and_api_key_headers_partition_the_key():
    base = cache_key("GET", "http://h/a", {})
    assert cache_key("GET", "http://h/a", {"Cookie": "s=1"}) != base
    assert cache_key("GET", "http://h/a", {"X-Api-Key": "k"}) != base
    assert cache_key("HEAD", "http://h/a", {}) != base


def test_lru_evicts_least_recently_used_first():
    m = MemoryLRU(100)
    for k in "abcd":
        m.put(k, k.upper(), 30)
    assert "a" not in m and m.nbytes == 90
    m.get("b")
    m.put("e", "E", 30)
    assert "c" not in m and "b" in m
    m.put("b", "B2", 10)  # replacing updates the byte count
    assert m.nbytes == 70 and m.get("b") == "B2"
    m.put("huge", "H", 101)  # larger than the budget: not stored, nothing evicted
    assert "huge" not in m and len(m) == 3
    m.clear()
    assert (len(m), m.nbytes, m.get("d", "default")) == (0, 0, "default")


def test_lru_rejects_bad_sizes():
    with pytest.raises(BadInputError):
        MemoryLRU(-1)
    with pytest.raises(BadInputError):
        MemoryLRU(10).put("a", 1, -5)


def test_lru_is_thread_safe():
    m = MemoryLRU(1000)

    def work(t):
        for i in range(2000):
            m.put((t, i % 50), i, 7)
            m.get((t, (i + 1) % 50))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert m.nbytes == 7 * len(m) <= 1000


# -- the byte bound of the disk cache -------------------------------------------------------


def _key(i: int) -> str:
    return f"{i:064x}"[::-1]  # varied first two characters: entries spread over subdirectories


def _entry(i: int, size: int = 1000, headers=(), ttl: float = 600):
    return make_entry(f"http://h/{i}", 200, list(headers), bytes([i % 251]) * size, ttl=ttl)


def _on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*.entry"))


def _age(disk: DiskCache, i: int, seconds_ago: float) -> None:
    # Recency is the file's mtime; tests set it explicitly because stores in a tight loop can
    # share one coarse file-system timestamp.
    t = time.time() - seconds_ago
    os.utime(disk._path(_key(i)), (t, t))


def test_size_strings_and_the_environment_variable(monkeypatch, tmp_path):
    assert parse_size("512k") == parse_size("0.5M") == 512 * 1024
    assert parse_size("3B") == 3 and parse_size("1TiB") == 1 << 40
    monkeypatch.delenv("MAPSTREAM_CACHE_MAX_BYTES", raising=False)
    assert DiskCache(tmp_path).max_bytes == DEFAULT_MAX_BYTES == 1 << 30
    monkeypatch.setenv("MAPSTREAM_CACHE_MAX_BYTES", "500M")
    assert DiskCache(tmp_path).max_bytes == 500 * 2**20
    assert DiskCache(tmp_path, max_bytes="2G").max_bytes == 2 * 2**30  # the argument wins
    assert DiskCache(tmp_path, max_bytes=1e6).max_bytes == 1_000_000


@pytest.mark.parametrize("value", ["lots", "-5M", "5X", "1.2.3G"])
def test_a_bad_environment_value_is_a_clear_error(monkeypatch, tmp_path, value):
    from mapstream.layers.http import Fetcher

    monkeypatch.setenv("MAPSTREAM_CACHE_MAX_BYTES", value)
    with pytest.raises(BadInputError, match="MAPSTREAM_CACHE_MAX_BYTES=.*is not a size.*500M"):
        DiskCache(tmp_path)
    with pytest.raises(BadInputError, match="MAPSTREAM_CACHE_MAX_BYTES"):
        Fetcher(cache_dir=tmp_path)  # at construction, not at the first store
    assert Fetcher(cache_dir=None).disk is None  # no disk cache: the setting is not needed


@pytest.mark.parametrize("value", [-1, "huge", True, None.__class__, float("nan")])
def test_a_bad_bound_argument_is_rejected(tmp_path, value):
    with pytest.raises(BadInputError, match="max_bytes"):
        DiskCache(tmp_path, max_bytes=value)
    with pytest.raises(BadInputError, match="max_bytes"):
        DiskCache(tmp_path, max_bytes=1000).prune(value)


def test_eviction_keeps_the_total_under_the_bound_and_drops_the_least_recent(tmp_path):
    one = DiskCache(tmp_path, max_bytes=10**9)
    one.store(_key(0), _entry(0))
    size = _on_disk(tmp_path)  # one entry's file: metadata and body
    one.clear()
    disk = DiskCache(tmp_path, max_bytes=10 * size + size // 2)
    for i in range(40):
        disk.store(_key(i), _entry(i))
        _age(disk, i, 1000 - i)  # later stores are more recent
        assert _on_disk(tmp_path) <= disk.max_bytes
    kept = sorted(i for i in range(40) if disk.load(_key(i)) is not None)
    assert kept == list(range(40 - len(kept), 40))  # exactly the most recent ones
    assert len(kept) >= 9  # evicts down to LOW_WATER, not to nothing
    assert disk.size() == (len(kept), _on_disk(tmp_path))


def test_a_hit_refreshes_recency(tmp_path):
    disk = DiskCache(tmp_path, max_bytes=10**9)
    for i in range(3):
        disk.store(_key(i), _entry(i))
        _age(disk, i, 100 - i)
    size = _on_disk(tmp_path) // 3
    disk.max_bytes = int(3.5 * size)  # three fit, four do not
    assert disk.load(_key(0)).body == _entry(0).body  # the oldest, used now
    assert os.stat(disk._path(_key(0))).st_mtime > time.time() - 50
    disk.store(_key(3), _entry(3))
    assert disk.load(_key(1)) is None  # the least recently used went
    assert all(disk.load(_key(i)) is not None for i in (0, 2, 3))


def _store_expiring(disk: DiskCache, which: dict[int, list]) -> None:
    # Entries that expire a moment after they are stored (one already expired is not stored):
    # each expiry is taken just before its own store, so a stall between stores cannot make an
    # entry expire before it is written; then wait until the last one has expired.
    last = 0.0
    for i, headers in which.items():
        entry = _entry(i, headers=headers)
        entry.expires_at = last = time.time() + 0.2
        disk.store(_key(i), entry)
        assert disk._path(_key(i)).exists(), f"entry {i} expired before it was stored"
    assert wait_for(lambda: time.time() > last, timeout=10)


@pytest.mark.parametrize("reopen", [False, True], ids=["same-object", "another-process"])
def test_expired_entries_without_validators_go_first(tmp_path, reopen):
    disk = DiskCache(tmp_path, max_bytes=10**9)
    disk.store(_key(2), _entry(2))  # fresh
    _store_expiring(disk, {0: [], 4: [], 1: [("ETag", '"v"')]})  # 1 is revalidatable
    for i, ago in ((0, 1), (4, 2), (1, 300), (2, 200)):  # the useless ones are the most recent
        _age(disk, i, ago)
    if reopen:  # what the eviction needs is read from the files, not remembered
        disk = DiskCache(tmp_path, max_bytes=10**9)
    size = _on_disk(tmp_path) // 4
    disk.max_bytes = int(4.5 * size)
    disk.store(_key(3), _entry(3))
    assert disk.load(_key(0)) is None and disk.load(_key(4)) is None
    assert all(disk.load(_key(i)) is not None for i in (1, 2, 3))  # not the least recent (1)


def test_prune_removes_useless_entries_then_the_least_recent(tmp_path):
    disk = DiskCache(tmp_path, max_bytes=10**9)
    for i in (1, 2, 3):
        disk.store(_key(i), _entry(i))
    _store_expiring(disk, {4: []})
    for i, ago in ((1, 30), (2, 20), (3, 10), (4, 1)):
        _age(disk, i, ago)
    size = _on_disk(tmp_path) // 4
    before = disk.size()
    result = disk.prune()  # far under the bound: only the useless entry goes
    assert result.removed.entries == 1 and result.kept == disk.size() == (3, _on_disk(tmp_path))
    assert result.removed.nbytes + result.kept.nbytes == before.nbytes
    assert disk.load(_key(4)) is None
    result = disk.prune(max_bytes=int(1.5 * size))
    assert result.kept == disk.size() and result.kept.entries == 1 and result.removed.entries == 2
    assert disk.load(_key(3)) is not None  # the most recently used stays
    assert disk.prune("0").kept == (0, 0) and len(disk) == 0


def test_an_entry_used_while_eviction_runs_is_kept(tmp_path, monkeypatch):
    disk = DiskCache(tmp_path, max_bytes=10**9)
    for i in range(4):
        disk.store(_key(i), _entry(i))
        _age(disk, i, 100 - i)
    size = _on_disk(tmp_path) // 4
    scan = disk._scan

    def scan_then_a_hit_elsewhere():
        files = scan()
        DiskCache(tmp_path).load(_key(0))  # another process uses the oldest entry meanwhile
        return files

    monkeypatch.setattr(disk, "_scan", scan_then_a_hit_elsewhere)
    assert disk.prune(max_bytes=int(3.5 * size)).removed.entries == 1
    assert disk.load(_key(0)) is not None and disk.load(_key(1)) is None


def test_an_entry_larger_than_the_bound_is_not_stored(tmp_path):
    disk = DiskCache(tmp_path, max_bytes=5000)
    disk.store(_key(1), _entry(1, size=100))
    disk.store(_key(1), _entry(1, size=6000))  # the new response does not fit...
    assert disk.load(_key(1)) is None  # ...and the old one is not served in its place
    nothing = DiskCache(tmp_path, max_bytes=0)
    nothing.store(_key(2), _entry(2, size=1))
    assert len(nothing) == 0


def test_an_entry_useless_on_arrival_is_not_stored(tmp_path):
    disk = DiskCache(tmp_path)
    disk.store(_key(1), _entry(1))
    disk.store(_key(1), _entry(1, headers=[("Cache-Control", "no-cache")]))  # no validators
    assert disk.load(_key(1)) is None and len(disk) == 0
    disk.store(_key(2), _entry(2, headers=[("Cache-Control", "no-cache"), ("ETag", '"e"')]))
    assert disk.load(_key(2)).etag == '"e"'  # stale but revalidatable: kept


def test_stores_scan_the_directory_only_when_due(tmp_path, monkeypatch):
    disk = DiskCache(tmp_path, max_bytes=10**9)
    scans = []
    real_scan = disk._scan
    monkeypatch.setattr(disk, "_scan", lambda: scans.append(1) or real_scan())
    for i in range(200):
        disk.store(_key(i), _entry(i))
    assert len(scans) == 1  # the first store learns the total; the rest keep count
    size = _on_disk(tmp_path) // 200
    disk.max_bytes = 100 * size
    scans.clear()
    for i in range(200, 500):
        disk.store(_key(i), _entry(i))
    assert _on_disk(tmp_path) <= disk.max_bytes
    # One scan per tenth of the bound written (about 10 stores), not one per store.
    assert len(scans) <= 300 / ((1 - disk.LOW_WATER) * 100) + 3


def test_deleting_and_replacing_keep_the_count(tmp_path):
    disk = DiskCache(tmp_path, max_bytes=10**9)
    for i in range(5):
        disk.store(_key(i), _entry(i))
    disk.store(_key(0), _entry(0, size=3000))  # a replaced entry is not counted twice
    disk.delete(_key(1))
    disk.delete(_key(99))  # absent: nothing to do
    assert disk._estimate == _on_disk(tmp_path) == disk.size().nbytes


def test_stale_temporary_files_are_removed_and_never_counted(tmp_path):
    disk = DiskCache(tmp_path, max_bytes=10**9)
    disk.store(_key(1), _entry(1))
    sub = disk._path(_key(1)).parent
    stale, fresh = sub / ".tmp-dead", sub / ".tmp-writing"
    stale.write_bytes(b"x" * 500)
    fresh.write_bytes(b"x" * 500)
    old = time.time() - 2 * disk.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    assert disk.size().entries == 1
    assert not stale.exists() and fresh.exists()  # a live writer's file is left alone


def test_an_entry_removed_by_another_cache_object_is_a_miss(tmp_path):
    a, b = DiskCache(tmp_path), DiskCache(tmp_path)
    a.store(_key(1), _entry(1))
    assert b.load(_key(1)) is not None
    b.clear()
    assert a.load(_key(1)) is None
    a.delete(_key(1))
    assert a.prune().kept == (0, 0)


def test_a_writer_notices_what_another_process_wrote_at_its_next_rescan(tmp_path):
    app = DiskCache(tmp_path, max_bytes=20_000)
    app.store(_key(0), _entry(0))  # the first store scans: the app knows the total
    prefetch = DiskCache(tmp_path, max_bytes=10**9)  # another process, a larger bound
    for i in range(1, 40):
        prefetch.store(_key(i), _entry(i))
    app.store(_key(40), _entry(40))
    assert _on_disk(tmp_path) > 20_000  # within RESCAN_SECONDS the app trusts its count
    app.RESCAN_SECONDS = 0  # ...and when it is up, the next store rescans and evicts
    app.store(_key(41), _entry(41))
    assert _on_disk(tmp_path) <= 20_000 and app.load(_key(41)) is not None


def _check(disk: DiskCache, i: int) -> None:
    got = disk.load(_key(i))
    if got is not None and (got.url, got.body) != (f"http://h/{i}", _entry(i, 300 + i).body):
        raise AssertionError(f"entry {i} read back wrong")


def test_two_cache_objects_on_one_directory_never_raise(tmp_path):
    disks = [DiskCache(tmp_path, max_bytes=20_000), DiskCache(tmp_path, max_bytes=20_000)]
    for d in disks:
        d.RESCAN_SECONDS = 0  # scan after every store: as many races as possible
    errors = []

    def work(seed):
        rng = random.Random(seed)
        disk = disks[seed % 2]
        try:
            for _ in range(400):
                i = rng.randrange(30)
                op = rng.random()
                if op < 0.5:
                    disk.store(_key(i), _entry(i, 300 + i))
                elif op < 0.9:
                    _check(disk, i)
                elif op < 0.97:
                    disk.delete(_key(i))
                else:
                    disk.prune()
        except Exception as exc:  # noqa: BLE001 - the test reports any exception at all
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    disks[0].store(_key(0), _entry(0, 300))
    assert _on_disk(tmp_path) <= 20_000
    assert not [p for p in tmp_path.rglob(".tmp-*")]


_CHILD = textwrap.dedent(
    """
    import random, sys, time
    from mapstream.layers.cache import DiskCache, make_entry

    def key(i):
        return f"{i:064x}"[::-1]

    def entry(i):
        return make_entry(f"http://h/{i}", 200, [], bytes([i % 251]) * (300 + i), ttl=600)

    disk = DiskCache(sys.argv[1], max_bytes=20_000)
    disk.RESCAN_SECONDS = 0
    rng = random.Random(int(sys.argv[2]))
    for n in range(1500):
        i = rng.randrange(30)
        if n % 2:
            disk.store(key(i), entry(i))
        else:
            got = disk.load(key(i))
            assert got is None or got.body == entry(i).body, i
        if n % 100 == 0:
            disk.prune()
    print("ok")
    """
)


def test_two_processes_share_a_directory(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path), str(seed)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["ok", "ok"]
    disk = DiskCache(tmp_path, max_bytes=20_000)
    disk.store(_key(0), _entry(0, 300))  # the last writer's scan sees everything
    assert _on_disk(tmp_path) <= 20_000


# -- temporary files left by a writer that died (issue 17) -------------------------------------

_KILLED_MID_WRITE = textwrap.dedent(
    """
    import os, sys, time
    from mapstream.layers.cache import DiskCache, make_entry

    def never_renamed(src, dst):  # the store has written its temporary file: die here
        print("writing", flush=True)
        time.sleep(600)

    os.replace = never_renamed
    disk = DiskCache(sys.argv[1])
    disk.store("ab" + "0" * 62, make_entry("http://h/big", 200, [("ETag", '"1"')], b"x" * 200_000, ttl=600))
    """
)


def _tmp_files(directory: Path) -> list[Path]:
    return list(directory.rglob(".tmp-*"))


def test_a_prefetch_killed_mid_write_leaves_a_file_that_is_counted_then_removed(tmp_path):
    disk = DiskCache(tmp_path, max_bytes=10**9)
    disk.store(_key(1), _entry(1))
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_MID_WRITE, str(tmp_path)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "writing"
        (tmp,) = _tmp_files(tmp_path)
        assert tmp.name.startswith(f".tmp-{child.pid}-") and tmp.stat().st_size > 200_000
        disk.TMP_DEAD_GRACE_SECONDS = 0  # the writer's pid decides, at once
        assert disk.size() == (1, _on_disk(tmp_path) + tmp.stat().st_size)  # counted
        assert disk.temporary().entries == 1 and tmp.exists()  # its writer lives: kept
    finally:
        child.kill()
        child.wait(timeout=30)
    usage = disk.size()
    assert not tmp.exists() and usage == (1, _on_disk(tmp_path))
    assert disk.removed_temporary.entries == 1 and disk.removed_temporary.nbytes > 200_000
    assert disk.load(_key(1)) is not None  # the entries are untouched


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def test_orphaned_temporary_files_go_by_writer_and_age(tmp_path):
    disk = DiskCache(tmp_path, max_bytes=10**9)
    disk.store(_key(1), _entry(1))
    sub = disk._path(_key(1)).parent
    dead = _dead_pid()
    now = time.time()
    files = {
        "dead-writer-past-grace": (f".tmp-{dead}-a", disk.TMP_DEAD_GRACE_SECONDS + 5),
        "dead-writer-in-grace": (f".tmp-{dead}-b", 1),
        "live-writer": (f".tmp-{os.getpid()}-c", disk.TMP_DEAD_GRACE_SECONDS + 5),
        "unnamed-stale": (".tmp-xyz", disk.STALE_TMP_SECONDS + 5),
        "live-writer-stale": (f".tmp-{os.getpid()}-d", disk.STALE_TMP_SECONDS + 5),
    }
    for name, age in files.values():
        (sub / name).write_bytes(b"x" * 1000)
        os.utime(sub / name, (now - age, now - age))
    usage = disk.size()
    left = sorted(p.name for p in _tmp_files(tmp_path))
    assert left == sorted([files["dead-writer-in-grace"][0], files["live-writer"][0]])
    assert usage == (1, _on_disk(tmp_path) + 2000)
    assert disk.removed_temporary == (3, 3000)


def test_temporary_files_count_against_the_bound(tmp_path):
    one = DiskCache(tmp_path)
    one.store(_key(0), _entry(0))
    size = _on_disk(tmp_path)
    one.clear()
    disk = DiskCache(tmp_path, max_bytes=10 * size)
    (tmp_path / "00").mkdir(exist_ok=True)
    live = tmp_path / "00" / f".tmp-{os.getpid()}-writing"
    live.write_bytes(b"x" * (5 * size))  # a store in progress, half the bound
    for i in range(30):
        disk.store(_key(i), _entry(i))
        _age(disk, i, 1000 - i)
        assert _on_disk(tmp_path) + live.stat().st_size <= disk.max_bytes
    assert live.exists() and len(disk) <= 5


def test_the_cache_command_shows_and_cleans_temporary_files(tmp_path):
    from click.testing import CliRunner

    from mapstream.app import cli

    disk = DiskCache(tmp_path)
    disk.store(_key(1), _entry(1))
    sub = disk._path(_key(1)).parent
    (sub / f".tmp-{os.getpid()}-live").write_bytes(b"x" * 3000)
    orphan = sub / f".tmp-{_dead_pid()}-orphan"
    orphan.write_bytes(b"x" * 5000)
    old = time.time() - 2 * disk.STALE_TMP_SECONDS
    os.utime(orphan, (old, old))
    result = CliRunner().invoke(cli.main, ["cache", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "entries: 1" in result.output
    assert "temporary: 1 files (2.9 KiB) being written" in result.output
    assert "removed 1 temporary files (4.9 KiB) left by interrupted writes" in result.output
    assert not orphan.exists()
