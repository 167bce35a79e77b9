"""What the botocore adapter reports per KMS operation: calls by status (the AWS error code), throttles,
retries, latency, and the state of the circuit breaker."""

from __future__ import annotations

import hashlib

import pytest

from plugin import deadline
from plugin.kmsapi import KmsError
from plugin.metrics import Key
from tests.adapter.conftest import adapter
from tests.support.kms_emulator import (
    EmulatorControl,
)
from tests.support.metrics_recorder import Recorder

DIGEST = hashlib.sha256(b"metrics").digest()
SIGN: Key = ("server_key_manager", "aws_kms", "kms", "sign")
CREATE_KEY: Key = ("server_key_manager", "aws_kms", "kms", "create_key")
BREAKER: Key = ("server_key_manager", "aws_kms", "kms", "circuit_breaker_open")


OK = (("status", "OK"),)
THROTTLED = (("status", "ThrottlingException"),)


def test_throttled_signatures_count_throttles_retries_and_one_successful_call(
    emulator: EmulatorControl,
) -> None:
    recorder = Recorder()
    kms = adapter(emulator.url, recorder)
    arn = kms.create_key("ECC_NIST_P256", "metrics test", {}, None).arn
    emulator.add_fault("Sign", count=2)
    with deadline.scope(30):
        kms.sign(arn, DIGEST, "ECDSA_SHA_256")
    assert recorder.counted(SIGN, OK) == 1.0
    assert recorder.counted((*SIGN, "throttle")) == 2.0
    assert recorder.counted((*SIGN, "retry"), THROTTLED) == 2.0
    (elapsed,) = recorder.samples((*SIGN, "elapsed_time"), OK)
    # Two backoffs (0.05 s at least each) are part of the call's time.
    assert elapsed >= 0.1
    assert recorder.counted(CREATE_KEY, OK) == 1.0


def test_throttles_and_retries_of_other_operations_are_theirs(emulator: EmulatorControl) -> None:
    # Every operation but Sign goes through botocore's client and its retry events.
    recorder = Recorder()
    kms = adapter(emulator.url, recorder)
    emulator.add_fault("CreateKey", count=1)
    emulator.add_fault("ListAliases", error="InternalServiceException", status=500, message="oops", count=1)
    with deadline.scope(30):
        kms.create_key("ECC_NIST_P256", "metrics test", {}, None)
        list(kms.list_aliases())
    list_aliases = ("server_key_manager", "aws_kms", "kms", "list_aliases")
    assert recorder.counted((*CREATE_KEY, "throttle")) == 1.0
    assert recorder.counted((*CREATE_KEY, "retry"), THROTTLED) == 1.0
    assert recorder.counted(CREATE_KEY, OK) == 1.0
    assert recorder.counted((*list_aliases, "throttle")) == 0.0
    assert recorder.counted((*list_aliases, "retry"), (("status", "InternalServiceException"),)) == 1.0
    assert recorder.counted(list_aliases, OK) == 1.0
    assert recorder.counted((*SIGN, "retry"), THROTTLED) == 0.0


def test_a_refusal_is_counted_by_its_aws_code_and_not_retried(emulator: EmulatorControl) -> None:
    recorder = Recorder()
    kms = adapter(emulator.url, recorder)
    arn = kms.create_key("ECC_NIST_P256", "metrics test", {}, None).arn
    emulator.add_fault("Sign", error="AccessDeniedException", message="not allowed", count=1)
    emulator.add_fault("CreateKey", error="AccessDeniedException", message="not allowed", count=1)
    with deadline.scope(30), pytest.raises(KmsError):
        kms.sign(arn, DIGEST, "ECDSA_SHA_256")
    with deadline.scope(30), pytest.raises(KmsError):
        kms.create_key("ECC_NIST_P256", "metrics test", {}, None)
    denied = (("status", "AccessDeniedException"),)
    assert recorder.counted(SIGN, denied) == 1.0
    assert recorder.counted(CREATE_KEY, denied) == 1.0
    assert [k for kind, k, _, _ in recorder.reports if k[-1] in ("retry", "throttle")] == []


def test_the_breaker_state_is_a_gauge(emulator: EmulatorControl) -> None:
    recorder = Recorder()
    # Nothing listens on port 9 of loopback: every attempt is refused at once.
    kms = adapter("http://127.0.0.1:9", recorder)
    for _ in range(4):
        with deadline.scope(5), pytest.raises(KmsError):
            kms.sign("arn:aws:kms:us-east-1:123456789012:key/x", DIGEST, "ECDSA_SHA_256")
    assert recorder.gauges(BREAKER) == [0.0, 1.0]
    assert recorder.counted(SIGN, (("status", "Unreachable"),)) == 4.0
