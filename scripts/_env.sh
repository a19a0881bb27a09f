# Sourced by scripts/run-app and scripts/run-tests: create or refresh .venv from pyproject.toml,
# with the test and bench extras (so `python -m benchmarks.X` runs in the same venv).
# Re-installs only when pyproject.toml changed since the last install (a stamp file records it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAPSTREAM_VENV:-$ROOT/.venv}"
PY="${MAPSTREAM_PYTHON:-$(command -v python3.11 || command -v python3)}"
STAMP="$VENV/.mapstream-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
    echo "mapstream: creating virtual environment in $VENV" >&2
    "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "mapstream: installing dependencies into $VENV (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test,bench]"
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
