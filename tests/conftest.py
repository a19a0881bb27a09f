"""Shared pytest set-up. Loopback servers live in tests/support/, one module each."""

import os
import shutil
import tempfile

import pytest

_CACHE_DIR = None


def pytest_configure(config):
    # Tests (and the servers and CLIs they start as subprocesses) never write to the user's
    # HTTP cache: one throw-away cache directory per test session.
    global _CACHE_DIR
    _CACHE_DIR = tempfile.mkdtemp(prefix="mapstream-test-cache-")
    os.environ["MAPSTREAM_CACHE_DIR"] = _CACHE_DIR


def pytest_unconfigure(config):
    if _CACHE_DIR:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _restore_mapstream_environment():
    # Code under test may set MAPSTREAM_* variables in-process (``mapstream serve`` exports
    # MAPSTREAM_CATALOG before it execs panel): one test's settings never leak into the next.
    before = {k: v for k, v in os.environ.items() if k.startswith("MAPSTREAM_")}
    yield
    for key in [k for k in os.environ if k.startswith("MAPSTREAM_")]:
        if key not in before:
            del os.environ[key]
    os.environ.update(before)


def pytest_collection_modifyitems(config, items):
    if os.path.exists("/usr/bin/chromium"):
        return
    skip = pytest.mark.skip(reason="Debian's chromium is not installed (/usr/bin/chromium)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)
