"""What several suites share: the frozen binary they test and the KMS emulator they run against."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.kms_emulator import EmulatorControl, EmulatorProcess, start_emulator_process

ROOT = Path(__file__).resolve().parents[1]
# Property suites are reproducible in CI: a fixed derivation of examples from each test, no example
# database carried between runs, and a bound on examples per property (HYPOTHESIS_MAX_EXAMPLES raises it
# for a longer local hunt). Time per call is each suite's own assertion, not hypothesis's deadline.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
settings.load_profile("ci")

# scripts/build.sh names each binary for its architecture. PLUGIN_BINARY (PLUGIN_BINARY_ARM64) points the
# suites at another build (e.g. a release artifact).
BINARY = Path(os.environ.get("PLUGIN_BINARY") or ROOT / "dist" / "aws-kms-keymanager-linux-amd64").resolve()
ARM64_BINARY = Path(
    os.environ.get("PLUGIN_BINARY_ARM64") or ROOT / "dist" / "aws-kms-keymanager-linux-arm64"
).resolve()


def _built(binary: Path, build_command: str) -> Path:
    """Missing is a failure, not a skip: these tests are the binary's acceptance."""
    if not binary.is_file():
        pytest.fail(
            f"{binary} is missing: build it with {build_command} (scripts/test.sh does)", pytrace=False
        )
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} is not executable", pytrace=False)
    return binary


@pytest.fixture(scope="session")
def plugin_binary() -> Path:
    """The built binary for this machine (x86-64)."""
    return _built(BINARY, "scripts/build.sh")


@pytest.fixture(scope="session")
def arm64_binary() -> Path:
    """The built binary for arm64, which runs here under qemu-user (scripts/build_root.sh registers it)."""
    return _built(ARM64_BINARY, "scripts/build.sh --arch arm64")


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
