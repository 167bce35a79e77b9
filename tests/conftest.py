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
