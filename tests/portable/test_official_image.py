"""A real SPIRE Server in an empty root laid out as SPIRE's official image with packaging/image/Dockerfile
applied, for amd64 and for arm64 (everything under qemu-user, the arm64 spire-server cross-compiled):
spire-server (static, as SPIRE releases it) at /opt/spire/bin, our binary of that architecture where the
Dockerfile copies it, both read-only, run as uid 1000 as pid 1 of its own pid namespace, with /tmp and its
data directory the only places it can write. It must start healthy on KMS keys, hand out a bundle whose CA
key is the KMS key, mint SVIDs that verify, and stop leaving nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import COMMUNITY_CONFIG, REGION
from tests.support.container import Bind
from tests.support.kms_emulator import EmulatorControl
from tests.support.rootfs import (
    OFFICIAL_IMAGE_SPIRE_SERVER,
    SPIRE_GID,
    SPIRE_UID,
    Container,
    empty_root,
    uid_of,
)
from tests.support.spire_server import (
    KeyManagerBlock,
    SpireServer,
    alias_public_key,
    aws_env,
    descendants,
    install_spire,
    sha256_file,
    spki_der,
    verify_x509_svid,
    wait_gone,
)

DOCKERFILE = Path(__file__).resolve().parents[2] / "packaging" / "image" / "Dockerfile"
WORKLOAD = "spiffe://example.org/workload"
EXIT_WAIT = 10.0


@dataclass(frozen=True)
class Recipe:
    spire_version: str  # of the official image it builds on
    source: str  # the file its one COPY takes, for the platform docker builds (${TARGETARCH})
    plugin_path: str  # where that COPY puts the plugin

    def source_for(self, arch: str) -> str:
        return self.source.replace("${TARGETARCH}", arch)


def dockerfile_recipe() -> Recipe:
    text = DOCKERFILE.read_text()
    (version,) = re.findall(r"^FROM ghcr\.io/spiffe/spire-server:(\d+\.\d+\.\d+)$", text, re.MULTILINE)
    ((source, copy),) = re.findall(r"^COPY --chmod=0555 (\S+) (/\S+)$", text, re.MULTILINE)
    return Recipe(f"v{version}", source, copy)


def test_the_dockerfile_takes_the_release_file_of_each_platform() -> None:
    # docker sets TARGETARCH to amd64 or arm64; scripts/build.sh names its files for them.
    recipe = dockerfile_recipe()
    assert recipe.source_for("amd64") == "aws-kms-keymanager-linux-amd64"
    assert recipe.source_for("arm64") == "aws-kms-keymanager-linux-arm64"


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not under /tmp: the container's /tmp is a directory inside it. Short: unix sockets live under it.
    path = Path(tempfile.mkdtemp(prefix="akm-spire-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module", params=["amd64", "arm64"])
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def spire_binary(arch: str) -> Path:
    """The static spire-server of the release the Dockerfile builds on, for the image's architecture."""
    return install_spire(dockerfile_recipe().spire_version, arch=arch).binary


@pytest.fixture(scope="module")
def image_plugin_binary(arch: str, request: pytest.FixtureRequest) -> Path:
    """Our release file that the Dockerfile's COPY takes for that architecture."""
    return Path(request.getfixturevalue("arm64_binary" if arch == "arm64" else "plugin_binary"))


@pytest.fixture
def kms(emulator: EmulatorControl) -> Any:
    return emulator.kms_client(REGION)


def test_spire_server_runs_our_plugin_in_the_official_image_layout(
    spire_binary: Path, image_plugin_binary: Path, emulator: EmulatorControl, workdir: Path, kms: Any
) -> None:
    plugin_path = dockerfile_recipe().plugin_path
    (workdir / "server").mkdir()
    container = Container(
        empty_root(workdir),
        binds=(
            Bind(workdir / "server", str(workdir / "server")),
            Bind(workdir / "server" / "tmp", "/tmp"),
            Bind(spire_binary, OFFICIAL_IMAGE_SPIRE_SERVER, read_only=True),
            Bind(image_plugin_binary, plugin_path, read_only=True),
        ),
        pid_namespace=True,
    )
    checksum = sha256_file(image_plugin_binary)
    block = KeyManagerBlock(COMMUNITY_CONFIG, plugin_cmd=Path(plugin_path), plugin_checksum=checksum)
    # Only the credentials the configuration gives: nothing of the host's environment goes in.
    env = {k: v for k, v in aws_env(emulator.url, credentials=False).items() if k.startswith(("AWS_", "NO_"))}
    with SpireServer(spire_binary, workdir / "server", block, env=env, container=container) as server:
        for directory in (server.workdir, server.data_dir, server.tmpdir):
            os.chown(directory, SPIRE_UID, SPIRE_GID)
        server.start()
        assert "Server is healthy" in server.healthcheck().stdout
        processes = descendants(server.pid)  # spire-server, then the plugin's two
        assert len(processes) == 3, processes
        assert {uid_of(pid) for pid in processes} == {SPIRE_UID}

        bundle = server.bundle()
        (ca,) = bundle.x509_authorities
        assert spki_der(ca.public_key()) == alias_public_key(kms, "alias/SPIRE_SERVER_KEY/x509-CA-A")
        svid = server.mint_x509(WORKLOAD)
        assert verify_x509_svid(svid.chain, bundle.x509_authorities, WORKLOAD) == ca

        assert server.stop(signal.SIGTERM) == 0, server.log_tail()
        assert wait_gone(processes, EXIT_WAIT) == []
        assert sorted(p.name for p in server.tmpdir.iterdir()) == [], "left behind in /tmp"
