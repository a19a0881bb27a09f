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


def pytest_collection_modifyitems(config, items):
    if os.path.exists("/usr/bin/chromium"):
        return
    skip = pytest.mark.skip(reason="Debian's chromium is not installed (/usr/bin/chromium)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)
