#!/usr/bin/env bash
# Makes sure .venv/ at the repository root exists and holds the project (editable) with its `dev` extras.
# Idempotent and cheap when nothing changed: pip runs only when setup.cfg or pyproject.toml is newer than
# the stamp left by the last successful install (or when FORCE_BOOTSTRAP=1).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
venv="$top/.venv"
stamp="$venv/.bootstrap-stamp"

pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [[ -n "$candidate" ]] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "bootstrap: no Python 3.11 on PATH (tried \$PYTHON, python3.11, python3)" >&2
    return 1
}

if [[ ! -x "$venv/bin/python" ]]; then
    python=$(pick_python)
    echo "bootstrap: creating $venv with $python" >&2
    "$python" -m venv "$venv"
    rm -f "$stamp"
fi

up_to_date=1
if [[ "${FORCE_BOOTSTRAP:-0}" == 1 || ! -f "$stamp" ]]; then
    up_to_date=0
else
    for f in "$top/setup.cfg" "$top/pyproject.toml"; do
        if [[ -f "$f" && "$f" -nt "$stamp" ]]; then
            up_to_date=0
        fi
    done
fi

if [[ $up_to_date == 0 ]]; then
    echo "bootstrap: installing the project and its dev extras into $venv" >&2
    log=$(mktemp)
    if ! (cd "$top" && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]') \
        >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "bootstrap: pip install failed" >&2
        exit 1
    fi
    rm -f "$log"
    touch "$stamp"
fi
