"""Shared pytest set-up. Loopback servers live in tests/support/, one module each."""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.path.exists("/usr/bin/chromium"):
        return
    skip = pytest.mark.skip(reason="Debian's chromium is not installed (/usr/bin/chromium)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)
