"""The adapter's suites run against an emulator of their own, with nothing of the machine's AWS settings:
the endpoint each test gives is the only one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.kms_emulator import EmulatorControl, EmulatorProcess, start_emulator_process


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[EmulatorProcess]:
    with start_emulator_process() as process:
        yield process


@pytest.fixture
def emulator(emulator_process: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> EmulatorControl:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL_STS", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    control = emulator_process.control()
    control.reset()
    return control
