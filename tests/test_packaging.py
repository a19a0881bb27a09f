"""Packaging: declared dependencies match the code's imports, the environment files agree, and
the wheel installs one namespace.

- Dependencies derived from the code: every third-party import (module-level or inside a
  function) of the installed packages (the ``mapstream`` namespace: every folder mapped by
  ``[tool.setuptools] package-dir``) is declared in ``[project].dependencies``, and every
  declaration is imported by something. The same for the ``test`` extra against ``tests/`` and
  the ``bench`` extra against ``benchmarks/`` (an extra lists what its code imports beyond the
  runtime). Import names are mapped to distributions by the installed metadata
  (``importlib.metadata.packages_distributions()``: ``PIL`` -> pillow, ``yaml`` -> PyYAML).
- ``environment.yml`` and ``anaconda-project.yml`` list the same packages as ``pyproject.toml``.
- Every folder with an ``__init__.py`` is a listed package; the wheel holds ``mapstream`` only
  (no generic top-level ``app`` or ``layers``), and ``import mapstream`` loads no UI or HTTP stack.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Our own top-level import names (``tests`` and ``benchmarks`` are the checkout's folders; some
#: third-party wheels ship a stray top-level ``tests`` package, which must not count).
FIRST_PARTY = {"mapstream", "tests", "benchmarks"}

#: Declared but never imported: each one is needed at run time by name, not by an import.
NOT_IMPORTED = {
    "test": {
        "pytest-asyncio": "pytest plugin: runs the async tests (asyncio_mode = auto in pyproject)",
        "pytest-timeout": "pytest plugin: the `timeout = 300` ini option in pyproject",
        "ipykernel": "the Jupyter kernel that nbclient starts in tests/app/test_notebook.py",
        "setuptools": "the build backend of the wheel test here (--no-build-isolation: offline)",
    },
}

# Installed by conda itself or only useful inside conda; not a pyproject dependency.
CONDA_ONLY = {"python", "pip", "notebook"}
#: conda-forge name -> PyPI name, where they differ.
CONDA_NAMES = {"matplotlib-base": "matplotlib"}  # matplotlib without the Qt GUI backends


def _name(spec: str) -> str:
    """The normalized distribution name of a requirement (PEP 503): ``PyYAML>=6`` -> pyyaml."""
    raw = re.split(r"[<>=!~ \[;]", spec.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", raw).lower()


def _declared(group: str) -> set[str]:
    project = PYPROJECT["project"]
    specs = project["dependencies"] if group == "runtime" else project["optional-dependencies"][group]
    return {_name(s) for s in specs}


# -- dependencies derived from the code ------------------------------------------------------


def _imports(path: Path) -> dict[str, int]:
    """Top-level names of the absolute imports in one file -> the first line that imports it."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def _package_files() -> list[Path]:
    """Every module of the installed ``mapstream`` packages, found where they are at run time."""
    files: list[Path] = []
    for package in PYPROJECT["tool"]["setuptools"]["package-dir"]:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
        for location in spec.submodule_search_locations:
            files += Path(location).rglob("*.py")
    return sorted(set(files))


def _first_party_closure(files: list[Path]) -> list[Path]:
    """``files`` and the modules of ``tests``/``benchmarks`` they import, transitively."""
    seen: set[Path] = set()
    todo = list(files)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for module in modules:
                if module.split(".")[0] not in {"tests", "benchmarks"}:
                    continue
                parts = module.split(".")
                base = ROOT.joinpath(*parts)
                # the module itself, and the __init__ of every package on its way (they run too)
                candidates = [base.with_suffix(".py")]
                candidates += [ROOT.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts) + 1)]
                todo += [p for p in candidates if p.is_file()]
    return sorted(seen)


def _third_party(files: list[Path]) -> dict[str, list[str]]:
    """Distribution names imported by ``files`` -> where (``path:line``), stdlib and ours excluded.

    Raises AssertionError for an import that no installed distribution provides.
    """
    providers = importlib.metadata.packages_distributions()
    out: dict[str, list[str]] = {}
    unknown: list[str] = []
    for path in files:
        for module, line in _imports(path).items():
            if module in sys.stdlib_module_names or module in FIRST_PARTY or module == "__future__":
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            dists = providers.get(module)
            if not dists:
                unknown.append(f"{module} ({where})")
                continue
            # One import name may come from several distributions; they are all listed.
            out.setdefault("|".join(sorted({_name(d) for d in dists})), []).append(where)
    assert not unknown, f"imported, but no installed distribution provides it: {unknown}"
    return out


def _check(imported: dict[str, list[str]], declared: set[str], provided: set[str],
           allowed: dict[str, str], what: str) -> None:
    """Every import is declared in ``declared`` (or already ``provided``); every declaration used."""
    used: set[str] = set()
    missing = []
    for dists, where in sorted(imported.items()):
        names = set(dists.split("|"))
        if names & provided:
            continue
        if names & declared:
            used |= names & declared
        else:
            missing.append(f"{dists} (imported at {', '.join(where[:3])})")
    assert not missing, f"{what}: imported but not declared: {missing}"
    unused = sorted(declared - used - set(allowed))
    assert not unused, f"{what}: declared but never imported (or already a runtime dependency): {unused}"
    stale = sorted(set(allowed) - declared)
    assert not stale, f"{what}: allow-listed but not declared: {stale}"


def test_runtime_dependencies_are_what_the_packages_import():
    files = _package_files()
    assert any(p.name == "fetcher.py" for p in files) and any(p.parent.name == "cli" for p in files)
    _check(_third_party(files), _declared("runtime"), set(), NOT_IMPORTED.get("runtime", {}),
           "[project].dependencies vs mapstream")


def test_test_extra_is_what_the_tests_import_beyond_the_runtime():
    files = sorted((ROOT / "tests").rglob("*.py"))
    _check(_third_party(files), _declared("test"), _declared("runtime"), NOT_IMPORTED["test"],
           "[test] extra vs tests/")


def test_bench_extra_is_what_the_benchmarks_import_beyond_the_runtime():
    # A benchmark may reuse a test helper (benchmarks/app.py drives the browser like the browser
    # tests): the bench extra covers the helpers' imports too, so `.[bench]` runs every benchmark.
    files = _first_party_closure(sorted((ROOT / "benchmarks").rglob("*.py")))
    _check(_third_party(files), _declared("bench"), _declared("runtime"), NOT_IMPORTED.get("bench", {}),
           "[bench] extra vs benchmarks/")


def test_requirement_names_are_normalized():
    assert [_name(s) for s in ("PyYAML>=6.0", "pytest_asyncio", "Werkzeug", "zope.interface")] == [
        "pyyaml", "pytest-asyncio", "werkzeug", "zope-interface"]


# -- the environment files agree with pyproject ----------------------------------------------


def _conda_names(deps: list) -> set[str]:
    names: set[str] = set()
    for dep in deps:
        if isinstance(dep, dict):
            names |= {_name(s) for s in dep.get("pip", []) if not s.startswith("-e")}
        else:
            names.add(CONDA_NAMES.get(_name(dep), _name(dep)))
    return names - CONDA_ONLY


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    everything = _declared("runtime") | _declared("test") | _declared("bench")
    assert _conda_names(env["dependencies"]) == everything


def test_anaconda_project_matches_pyproject():
    proj = yaml.safe_load((ROOT / "anaconda-project.yml").read_text())
    assert set(proj["commands"]) >= {"dashboard", "notebook", "test"}
    assert "panel serve app" in proj["commands"]["dashboard"]["unix"]
    specs = proj["env_specs"]
    assert _conda_names(specs["default"]["packages"]) == _declared("runtime")
    assert _conda_names(specs["test"]["packages"]) == _declared("test")
    assert _conda_names(specs["bench"]["packages"]) == _declared("bench")


# -- one namespace ---------------------------------------------------------------------------


def _package_folders() -> dict[str, Path]:
    """Dotted package name -> folder, for every folder with an ``__init__.py`` under a mapped root."""
    found: dict[str, Path] = {}
    for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder).parts
            found[".".join((package, *rel))] = init.parent
    return found


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = _package_folders()
    assert sorted(set(folders) - listed) == [], "folders with an __init__.py missing from packages"
    assert sorted(listed - set(folders)) == [], "listed packages without a folder"
    assert all(p == "mapstream" or p.startswith("mapstream.") for p in listed)


def _source_copy(dest: Path) -> Path:
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    junk = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                  ".pytest_cache", ".mapstream-cache")
    return Path(shutil.copytree(ROOT, dest, ignore=junk))


def test_wheel_installs_only_the_mapstream_namespace(tmp_path):
    src = _source_copy(tmp_path / "src")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("mapstream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"mapstream"}
    # every module of every mapped folder is in the wheel, at its namespaced path
    expected = {
        "/".join((*package.split("."), py.name))
        for package, folder in _package_folders().items()
        for py in folder.glob("*.py")
    }
    assert sorted(expected - set(names)) == []
    assert any(n.startswith("mapstream/layers/catalogs/") and n.endswith(".yml") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "mapstream = mapstream.app.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.parametrize("generic", ["app", "layers", "demo"])
def test_no_generic_top_level_module_outside_the_checkout(tmp_path, generic):
    out = subprocess.run([sys.executable, "-c", f"import {generic}"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode != 0 and f"No module named '{generic}'" in out.stderr
    ok = subprocess.run([sys.executable, "-c", f"import mapstream.{generic}"], cwd=tmp_path,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_import_mapstream_loads_no_ui_or_http_stack(tmp_path):
    heavy = ["panel", "param", "holoviews", "geoviews", "bokeh", "httpx", "aiohttp"]
    code = (
        "import json, sys, mapstream\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout) == []


def test_console_script_prints_help():
    out = subprocess.run(
        [sys.executable, "-m", "mapstream.app.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "mapstream" in out.stdout
