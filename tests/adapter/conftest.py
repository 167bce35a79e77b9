"""The adapter's suites run against an emulator of their own, with nothing of the machine's AWS settings:
the endpoint each test gives is the only one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from plugin.awsclient import ClientSettings
from plugin.kms import BotocoreKms
from plugin.metrics import NO_METRICS, Metrics
from tests.support.kms_emulator import (
    DUMMY_ACCESS_KEY_ID,
    DUMMY_SECRET_ACCESS_KEY,
    EmulatorControl,
    EmulatorProcess,
    start_emulator_process,
)

REGION = "us-east-1"


def adapter(endpoint: str, metrics: Metrics = NO_METRICS, **settings: Any) -> BotocoreKms:
    """The real adapter with static test credentials, talking to `endpoint` only."""
    return BotocoreKms(
        ClientSettings(
            region=REGION,
            access_key_id=DUMMY_ACCESS_KEY_ID,
            secret_access_key=DUMMY_SECRET_ACCESS_KEY,
            endpoint=endpoint,
            **settings,
        ),
        metrics,
    )


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
