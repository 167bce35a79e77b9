"""What `--version` says about this build: the version, the commit, the build date, and where it runs.

scripts/build.sh bakes the commit and date into the bundle (build.spec writes `plugin/build.json`); where the
binary runs is read from the process itself, so the line stays true for any way the code is started.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from plugin import PLUGIN_NAME, __version__
from plugin.bundle import STATICX_BUNDLE_ENV

BUILD_INFO_FILE = Path(__file__).with_name("build.json")

# The names operators know the architectures by (SPIRE's release files, container platforms), by what the
# kernel reports; a binary run under qemu-user sees the architecture it was built for.
ARCHITECTURE_NAMES = {"x86_64": "x86-64", "aarch64": "arm64"}
DYNAMIC = "dynamically linked: needs the C library of the machine it was built on"
FROM_SOURCE = "from source"


@dataclass(frozen=True)
class BuildInfo:
    version: str
    commit: str
    date: str
    platform: str

    def line(self) -> str:
        return f"{PLUGIN_NAME} {self.version} (commit {self.commit}, built {self.date}, {self.platform})"


def platform_of(frozen: bool, environ: Mapping[str, str], machine: str) -> str:
    if not frozen:
        return FROM_SOURCE
    if not environ.get(STATICX_BUNDLE_ENV):
        return DYNAMIC
    return f"static, any {ARCHITECTURE_NAMES.get(machine, machine)} Linux"


def current() -> BuildInfo:
    try:
        baked = json.loads(BUILD_INFO_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        baked = {}
    return BuildInfo(
        version=__version__,
        commit=str(baked.get("commit", "unknown")),
        date=str(baked.get("date", "unknown")),
        platform=platform_of(bool(getattr(sys, "frozen", False)), os.environ, platform.machine()),
    )
