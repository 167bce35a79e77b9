#!/usr/bin/env bash
# Runs every test from nothing: installs the machine tools it needs (install_host_tools.sh) and the pinned
# toolchain into .venv, builds the one-file binaries the integration tests drive (x86-64, and arm64 under
# qemu-user), checks style and types, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

scripts/install_host_tools.sh
scripts/bootstrap.sh
scripts/build.sh --arch all

echo "== lint and types"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

echo "== tests"
.venv/bin/pytest "$@"
