"""End-to-end: a real spire-server with the frozen plugin (and with SPIRE's built-in aws_kms), both against
the KMS emulator on loopback. Every test runs on each of SPIRE_VERSIONS: v1.13.3, the oldest release we
support, and v1.15.3, the current one.

The first session installs spire-server with scripts/install_spire.sh (minutes: it compiles SPIRE) into
~/.cache/aws-kms-keymanager/; later sessions, and CI runs on fresh clones of the same machine, reuse it.
SPIRE_SERVER_BINARY points the tests of its version at a spire-server installed some other way.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support.kms_emulator import (
    DUMMY_ACCESS_KEY_ID,
    DUMMY_SECRET_ACCESS_KEY,
    EmulatorControl,
)
from tests.support.spire_server import (
    REGION,
    SPIRE_VERSIONS,
    KeyManagerBlock,
    ServerSettings,
    SpireServer,
    aws_env,
    install_spire,
)

# The community plugin's sample configuration, as its users have it.
COMMUNITY_SAMPLE: Mapping[str, Any] = {
    "access_key_id": DUMMY_ACCESS_KEY_ID,
    "secret_access_key": DUMMY_SECRET_ACCESS_KEY,
    "region": REGION,
}
COMMUNITY_PREFIX = "alias/SPIRE_SERVER_KEY/"

_install_seconds: dict[str, float] = {}
# Where the README has operators put the binary; SPIRE names the plugin's log lines after this file name.
INSTALLED_NAME = "aws-kms-keymanager"


@pytest.fixture(scope="session")
def plugin_binary(plugin_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built binary installed as an operator does: copied under its plain name (the release files are
    named for their architecture)."""
    installed = tmp_path_factory.mktemp("plugins") / INSTALLED_NAME
    shutil.copy2(plugin_binary, installed)
    return installed


@pytest.fixture(scope="session", params=SPIRE_VERSIONS)
def spire_version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def spire_binary(pytestconfig: pytest.Config, spire_version: str) -> Path:
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def progress(line: str) -> None:
        # A cold install compiles SPIRE for minutes: say so on the terminal, past pytest's capture.
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\n{line}", file=sys.stderr, flush=True)

    installed = install_spire(spire_version, progress=progress)
    _install_seconds[spire_version] = installed.seconds
    return installed.binary


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for version, seconds in _install_seconds.items():
        terminalreporter.write_line(
            f"e2e: scripts/install_spire.sh {version} took {seconds:.1f} s (cached after the first run)"
        )


@pytest.fixture
def kms(emulator: EmulatorControl) -> Any:
    """boto3 KMS on the emulator, to look at what the servers did."""
    return emulator.kms_client(REGION)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory for one SPIRE server's files (its admin and plugin sockets live under it)."""
    path = Path(tempfile.mkdtemp(prefix="spire-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


MakeServer = Callable[..., SpireServer]


@pytest.fixture
def make_server(spire_binary: Path, emulator: EmulatorControl, workdir: Path) -> Iterator[MakeServer]:
    """Makes SPIRE servers (not started) on the test's emulator; every one is stopped at the end of the
    test, plugins included, whatever happens. They share the test's workdir unless given another: a second
    server on the same workdir is a restart with the same data dir."""
    servers: list[SpireServer] = []

    def _make(
        keymanager: KeyManagerBlock,
        settings: ServerSettings | None = None,
        env: Mapping[str, str] | None = None,
        directory: Path | None = None,
    ) -> SpireServer:
        server = SpireServer(
            spire_binary,
            directory or workdir,
            keymanager,
            env=env if env is not None else aws_env(emulator.url),
            settings=settings,
        )
        servers.append(server)
        return server

    yield _make
    for server in servers:
        server.close()


def ours(plugin_binary: Path, plugin_data: Mapping[str, Any] | str | None = None) -> KeyManagerBlock:
    """Our plugin; the community plugin's sample configuration unless told otherwise."""
    return KeyManagerBlock.external(plugin_binary, COMMUNITY_SAMPLE if plugin_data is None else plugin_data)


def builtin_alias_prefix(server_id: str, trust_domain: str = "example.org") -> str:
    return f"alias/SPIRE_SERVER/{trust_domain.replace('.', '_')}/{server_id}/"
