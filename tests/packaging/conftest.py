"""Fixtures for the tests of the frozen binaries dist/aws-kms-keymanager-linux-{amd64,arm64} (built by
scripts/build.sh --arch all): every test here runs once for each, the arm64 one under qemu-user.

Every run of the binary gets its own TMPDIR: staticx's bootloader unpacks the program there (`staticx-*`)
and the plugin makes its socket directory there, so a test can see exactly what a run leaves behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 60.0
# Variables that would change what the binary does; the tests set them explicitly when they want them.
_PLUGIN_ENV = ("KeyManager", "PLUGIN_PROTOCOL_VERSIONS", "PLUGIN_MIN_PORT", "PLUGIN_MAX_PORT")


@pytest.fixture(scope="session", params=["amd64", "arm64"])
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def binary(arch: str, request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue("arm64_binary" if arch == "arm64" else "plugin_binary"))


@pytest.fixture
def private_tmpdir() -> Iterator[Path]:
    """A fresh, short TMPDIR (the plugin's unix socket path must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="akm-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def plugin_env(tmpdir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _PLUGIN_ENV}
    env["TMPDIR"] = str(tmpdir)
    env.update(extra or {})
    return env


def unpack_dirs(tmpdir: Path) -> list[str]:
    return sorted(p.name for p in tmpdir.glob("staticx-*"))


@dataclass
class Runner:
    binary: Path
    tmpdir: Path

    def __call__(
        self, *args: str, env: Mapping[str, str] | None = None, replace_env: bool = False
    ) -> subprocess.CompletedProcess[str]:
        full_env = dict(env or {}) if replace_env else plugin_env(self.tmpdir, env)
        full_env.setdefault("TMPDIR", str(self.tmpdir))
        return subprocess.run(
            [str(self.binary), *args],
            env=full_env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )


@pytest.fixture
def run(binary: Path, private_tmpdir: Path) -> Runner:
    """Runs the binary to completion in a private TMPDIR, without the go-plugin environment."""
    return Runner(binary, private_tmpdir)
