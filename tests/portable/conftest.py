"""The frozen binary where operators run it: inside root file systems the tests make themselves, as uid 1000,
the binary on a read-only path, /tmp the only place it can write (see tests/support/rootfs.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.container import Bind
from tests.support.plugin_host import PluginProcess, start_plugin
from tests.support.rootfs import (
    HELM_PLUGIN_PATH,
    Container,
    can_make_containers,
    debian_root,
    empty_root,
    spire_tmp,
)

# Where operators run the binary: the official image's empty root on x86-64 and on arm64 (Graviton, arm64
# nodes; here under qemu-user), and a Debian 11 root (glibc 2.31) on x86-64.
PLATFORMS = [
    pytest.param("empty", "amd64", id="empty-amd64"),
    pytest.param("debian11", "amd64", id="debian11-amd64"),
    pytest.param("empty", "arm64", id="empty-arm64"),
]


@pytest.fixture(scope="session", autouse=True)
def _containers_possible() -> None:
    reason = can_make_containers()
    if reason:
        pytest.fail(f"these tests run the binary in containers: {reason}", pytrace=False)


@pytest.fixture(scope="session")
def debian11_root() -> Path:
    return debian_root("bullseye")


@pytest.fixture
def base() -> Iterator[Path]:
    """A short private directory for one test's root, /tmp and files (unix socket paths stay short)."""
    path = Path(tempfile.mkdtemp(prefix="akm-root-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Box:
    """A container to run the plugin in, and the host directory behind its /tmp."""

    container: Container
    tmp: Path

    def start(self, env: Mapping[str, str]) -> PluginProcess:
        return start_plugin(
            self.container.command([HELM_PLUGIN_PATH]),
            env=env,
            cwd=self.container.cwd,
            path_on_host=self.container.host_path,
        )

    def leftovers(self) -> list[str]:
        return sorted(entry.name for entry in self.tmp.iterdir())


MakeBox = Callable[..., Box]


@pytest.fixture
def make_box(base: Path, request: pytest.FixtureRequest) -> MakeBox:
    def _make(root: str, *extra: Bind, arch: str = "amd64") -> Box:
        tmp = spire_tmp(base)
        chosen = empty_root(base) if root == "empty" else request.getfixturevalue("debian11_root")
        binary = request.getfixturevalue("arm64_binary" if arch == "arm64" else "plugin_binary")
        binds = (Bind(tmp, "/tmp"), Bind(binary, HELM_PLUGIN_PATH, read_only=True), *extra)
        return Box(Container(chosen, binds), tmp)

    return _make


def container_env(endpoint: str, **extra: str) -> dict[str, str]:
    """What SPIRE's container has in its environment (nothing but what its operator sets), plus the
    emulator's endpoint."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true", **extra}
