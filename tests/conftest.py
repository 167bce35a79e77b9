"""What several suites share: the frozen binary they test and the KMS emulator they run against."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kms_emulator import EmulatorControl, EmulatorProcess, start_emulator_process

ROOT = Path(__file__).resolve().parents[1]
# PLUGIN_BINARY points the suites at another build of the binary (e.g. a release artifact).
BINARY = Path(os.environ.get("PLUGIN_BINARY") or ROOT / "dist" / "aws-kms-keymanager").resolve()


@pytest.fixture(scope="session")
def plugin_binary() -> Path:
    """The built binary. Missing is a failure, not a skip: these tests are the binary's acceptance."""
    if not BINARY.is_file():
        pytest.fail(
            f"{BINARY} is missing: build it with scripts/build.sh (scripts/test.sh does)", pytrace=False
        )
    if not os.access(BINARY, os.X_OK):
        pytest.fail(f"{BINARY} is not executable", pytrace=False)
    return BINARY


@pytest.fixture(scope="session")
def emulator_process() -> Iterator[EmulatorProcess]:
    with start_emulator_process() as process:
        yield process


@pytest.fixture
def emulator(emulator_process: EmulatorProcess) -> EmulatorControl:
    """The shared emulator, reset for this test: no keys, faults, counters or clock offset."""
    control = emulator_process.control()
    control.reset()
    return control
