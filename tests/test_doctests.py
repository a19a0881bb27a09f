"""The doctests of every module of every package (``mapstream``, its engine, app and demo).

Modules are imported by their installed names (``mapstream.layers.tilegrid``, never ``layers.x``),
so a doctest runs against the same module objects the library uses.
"""

import doctest
import importlib
import pkgutil

import pytest

import mapstream


def _all_modules() -> list[str]:
    names = ["mapstream"]
    for info in pkgutil.walk_packages(mapstream.__path__, "mapstream."):
        names.append(info.name)
    for pkg in ("mapstream.layers", "mapstream.app", "mapstream.demo"):
        module = importlib.import_module(pkg)
        names += [pkg] + [i.name for i in pkgutil.walk_packages(module.__path__, pkg + ".")]
    # __main__ modules run the command line when imported.
    return sorted({n for n in names if not n.endswith("__main__")})


def _doctests(name: str) -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [t for t in finder.find(importlib.import_module(name), name) if t.examples]


ALL_MODULES = _all_modules()
#: The modules that have examples in their docstrings (the rest are not collected).
MODULES = [name for name in ALL_MODULES if _doctests(name)]


def test_every_package_is_walked():
    for expected in ("mapstream.layers.http.fetcher", "mapstream.app.cli", "mapstream.demo.services"):
        assert expected in ALL_MODULES
    assert "mapstream" in MODULES and len(MODULES) > 20


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in _doctests(name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"
