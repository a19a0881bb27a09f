"""ARCHITECTURE.md matches the tree: every module is listed once, and every listed path exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mapstream", "layers", "app", "demo")
PAGE = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
# A module line of the page: `- `path/to/module.py`: what it holds`
LISTED = re.findall(r"^\s*- `([\w/]+\.py)`", PAGE, re.M)


def _modules() -> list[str]:
    found = []
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found.append(path.relative_to(ROOT).as_posix())
    return found


def test_every_module_is_on_the_page():
    missing = sorted(set(_modules()) - set(LISTED))
    assert not missing, f"ARCHITECTURE.md does not list: {missing}"


def test_every_listed_module_exists_and_is_listed_once():
    gone = sorted(p for p in set(LISTED) if not (ROOT / p).is_file())
    assert not gone, f"ARCHITECTURE.md lists modules that do not exist: {gone}"
    twice = sorted(p for p in set(LISTED) if LISTED.count(p) > 1)
    assert not twice, f"ARCHITECTURE.md lists these more than once: {twice}"
