"""Builds the benchmarks' Go programs (scripts/benchclient, scripts/builtinplugin) with the Go module and
build caches scripts/install_spire.sh fills, so that after SPIRE is installed they compile in seconds."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.gocache import go_cache_env

ROOT = Path(__file__).resolve().parents[1]


def go_build(program: str) -> Path:
    """scripts/`program` built (cached by Go) to build/`program`/`program`; its path."""
    output = ROOT / "build" / program / program
    env = {**os.environ, **go_cache_env(), "CGO_ENABLED": "0"}
    subprocess.run(
        ["go", "build", "-trimpath", "-o", str(output), "."],
        cwd=ROOT / "scripts" / program,
        env=env,
        check=True,
    )
    return output
