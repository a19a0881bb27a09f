"""The disk cache, freshness rules and the in-memory LRU (layers/cache.py)."""

from __future__ import annotations

import email.utils
import threading
import time

import pytest

from layers.cache import (
    DiskCache,
    MemoryLRU,
    cache_key,
    freshness_lifetime,
    make_entry,
    refresh_entry,
)
from layers.errors import BadInputError


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
    assert m.pop("b") == "B2" and m.nbytes == 60
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
