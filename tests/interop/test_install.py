"""The interoperability suite's installer and CI's preinstall agree (no server needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .install import ALL_PACKAGES

ROOT = Path(__file__).resolve().parents[2]


def test_run_tests_preinstalls_every_package_the_suite_installs():
    script = (ROOT / "scripts" / "run-tests").read_text()
    listed = re.search(r'^INTEROP_PACKAGES="([^"]*)"', script, re.M)
    assert listed, "scripts/run-tests lists no INTEROP_PACKAGES"
    assert sorted(listed.group(1).split()) == sorted(ALL_PACKAGES)


def test_a_missing_server_skips_here_and_fails_in_ci(monkeypatch):
    from .install import unavailable

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not root"):
        unavailable("mapserver: cgi-mapserver not installed and cannot install (not root)")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        unavailable("mapserver: cgi-mapserver not installed and cannot install (not root)")
