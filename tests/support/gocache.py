"""The Go module and build caches scripts/install_spire.sh fills, for the project's other Go builds (the
conformance suite, the benchmarks' Go programs): with them, SPIRE's packages compile once."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Where scripts/install_spire.sh keeps SPIRE and its Go caches, computed as it computes it."""
    if os.environ.get("SPIRE_CACHE_DIR"):
        return Path(os.environ["SPIRE_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "aws-kms-keymanager"


def go_cache_env() -> dict[str, str]:
    """The Go variables that point a build at those caches, with the local toolchain and no workspace."""
    gocache = cache_root() / "go"
    return {
        "GOPATH": str(gocache / "path"),
        "GOMODCACHE": str(gocache / "path" / "pkg" / "mod"),
        "GOCACHE": str(gocache / "build"),
        "GOFLAGS": "-modcacherw",
        "GOTOOLCHAIN": "local",
        "GOWORK": "off",
    }
