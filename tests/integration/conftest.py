"""The frozen binary, started as SPIRE starts it, against the KMS emulator on loopback."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.kms_emulator import (
    DUMMY_ACCESS_KEY_ID,
    DUMMY_SECRET_ACCESS_KEY,
    EmulatorControl,
)
from tests.support.plugin_host import PluginProcess, start_plugin

REGION = "us-east-1"
# The community plugin's sample configuration, as its users have it.
COMMUNITY_CONFIG = f"""
access_key_id = "{DUMMY_ACCESS_KEY_ID}"
secret_access_key = "{DUMMY_SECRET_ACCESS_KEY}"
region = "{REGION}"
"""

StartPlugin = Callable[..., PluginProcess]


@pytest.fixture
def plugin_tmpdir(tmp_path: Path) -> Path:
    """The TMPDIR the plugin unpacks into, private to one test so leftovers are visible."""
    path = tmp_path / "plugin-tmp"
    path.mkdir()
    return path


def plugin_env(emulator_url: str, tmpdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))}
    env.update(
        AWS_ENDPOINT_URL=emulator_url,
        # The default credential chain's first link, for configurations without static keys.
        AWS_ACCESS_KEY_ID=DUMMY_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=DUMMY_SECRET_ACCESS_KEY,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        TMPDIR=str(tmpdir),
    )
    env.update(extra)
    return env


@pytest.fixture
def start(plugin_binary: Path, emulator: EmulatorControl, plugin_tmpdir: Path) -> Iterator[StartPlugin]:
    """Starts plugins; every one started is stopped at the end of the test, whatever happens."""
    started: list[PluginProcess] = []

    def _start(**extra_env: str) -> PluginProcess:
        plugin = start_plugin([str(plugin_binary)], env=plugin_env(emulator.url, plugin_tmpdir, **extra_env))
        started.append(plugin)
        return plugin

    yield _start
    for plugin in started:
        plugin.__exit__(None, None, None)


@pytest.fixture
def plugin(start: StartPlugin) -> PluginProcess:
    """A plugin configured with the community plugin's sample configuration."""
    process = start()
    process.configure(COMMUNITY_CONFIG)
    return process
