"""pyproject.toml, environment.yml and anaconda-project.yml list the same packages."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Installed by conda itself or only useful inside conda; not a pyproject dependency.
CONDA_ONLY = {"python", "pip", "notebook"}


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _conda_names(deps: list) -> set[str]:
    names: set[str] = set()
    for dep in deps:
        if isinstance(dep, dict):
            names |= {_name(s) for s in dep.get("pip", []) if not s.startswith("-e")}
        else:
            names.add(_name(dep))
    return names - CONDA_ONLY


def _pyproject() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(s) for s in project["dependencies"]}
    test = {_name(s) for s in project["optional-dependencies"]["test"]}
    return runtime, test


def test_environment_yml_matches_pyproject():
    runtime, test = _pyproject()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    assert _conda_names(env["dependencies"]) == runtime | test


def test_anaconda_project_matches_pyproject():
    runtime, test = _pyproject()
    proj = yaml.safe_load((ROOT / "anaconda-project.yml").read_text())
    assert set(proj["commands"]) >= {"dashboard", "notebook", "test"}
    assert "panel serve app" in proj["commands"]["dashboard"]["unix"]
    assert _conda_names(proj["env_specs"]["default"]["packages"]) == runtime
    assert _conda_names(proj["env_specs"]["test"]["packages"]) == test


def test_console_script_prints_help():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "mapstream.app.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "mapstream" in out.stdout
