"""Debian packages the interoperability suite needs, installed on first use.

:func:`ensure_debian` installs what is missing with ``apt-get install -y`` when run as root on
a machine with ``apt-get`` (``scripts/run-tests`` preinstalls the same list in CI). Elsewhere the
tests that need a package are skipped with the reason, except under CI (``CI=true``), where a
missing server is a failure: a suite that skips everything in CI would prove nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

#: What each server needs from Debian (bookworm: MapServer 8.0, QGIS Server 3.22).
PACKAGES = {
    "mapserver": ("cgi-mapserver", "mapserver-bin"),
    "qgis": ("qgis-server", "python3-qgis"),
    "spatialite": ("libsqlite3-mod-spatialite",),
}
#: Every package, as ``scripts/run-tests`` installs them (kept in step by a test).
ALL_PACKAGES = tuple(p for group in PACKAGES.values() for p in group)

_lock = threading.Lock()


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``): missing servers fail instead of skipping."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip the test with ``reason``, or fail it in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the interoperability suite must run)", pytrace=False)
    pytest.skip(reason)


def missing(packages: tuple[str, ...]) -> list[str]:
    """The packages of ``packages`` that dpkg does not list as installed."""
    out = []
    for pkg in packages:
        res = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True
        )
        if res.returncode != 0 or "install ok installed" not in res.stdout:
            out.append(pkg)
    return out


def ensure_debian(group: str) -> None:
    """Install the Debian packages of ``group`` (a key of :data:`PACKAGES`) if any is missing.

    Skips the calling test (fails it in CI) when they are missing and cannot be installed
    here: not root, or no ``apt-get``/``dpkg``.
    """
    packages = PACKAGES[group]
    if shutil.which("dpkg-query") is None:
        unavailable(f"{group}: not a Debian system (no dpkg), cannot install {' '.join(packages)}")
    with _lock:
        todo = missing(packages)
        if not todo:
            return
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            unavailable(f"{group}: {' '.join(todo)} not installed and cannot install (not root)")
        _apt_install(todo)
        still = missing(packages)
        if still:
            pytest.fail(f"apt-get did not install {' '.join(still)}", pytrace=False)


def _apt_install(packages: list[str], attempts: int = 20) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    updated = False
    for _ in range(attempts):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode == 0:
            return
        text = res.stderr + res.stdout
        if "Could not get lock" in text or "dpkg frontend lock" in text:
            time.sleep(3)  # someone else's apt or dpkg: wait for it
            continue
        if not updated and ("Unable to locate" in text or "404" in text or "no installation candidate" in text):
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
            updated = True
            continue
        pytest.fail(f"apt-get install {' '.join(packages)} failed:\n{text[-2000:]}", pytrace=False)
    pytest.fail(f"apt-get install {' '.join(packages)}: the dpkg lock stayed busy", pytrace=False)
