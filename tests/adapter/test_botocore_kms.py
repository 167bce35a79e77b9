"""The real boto3 adapter against the KMS emulator: retries within the deadline, timeouts, outages and
recovery, assumed roles, custom and FIPS endpoints."""

from __future__ import annotations

import datetime
import hashlib
import time
from typing import Any

import botocore.client
import pytest

from plugin import awsclient, deadline
from plugin.awsclient import AssumeRole, ClientSettings, kms_client
from plugin.kms import BotocoreKms
from plugin.kmsapi import KmsError
from tests.adapter.conftest import REGION, adapter
from tests.support.kms_emulator import (
    EmulatorControl,
)
from tests.support.tcp_proxy import TcpProxy

DIGEST = hashlib.sha256(b"adapter").digest()
ROLE = "arn:aws:iam::222233334444:role/spire-server"


def new_key(kms: BotocoreKms) -> str:
    return kms.create_key("ECC_NIST_P256", "adapter test", {}, None).arn


def sign(kms: BotocoreKms, arn: str) -> bytes:
    return kms.sign(arn, DIGEST, "ECDSA_SHA_256")


def test_a_burst_of_throttles_is_absorbed_within_the_deadline(emulator: EmulatorControl) -> None:
    kms = adapter(emulator.url)
    arn = new_key(kms)
    for operation in ("Sign", "CreateKey", "CreateAlias"):
        emulator.add_fault(operation, count=5)
    with deadline.scope(30):
        assert sign(kms, arn)
        other = new_key(kms)
        kms.create_alias("alias/adapter", other)
    calls = emulator.calls()
    assert (calls["Sign"], calls["CreateKey"], calls["CreateAlias"]) == (6, 7, 6)


def test_throttling_that_outlasts_the_deadline_is_reported_in_time(emulator: EmulatorControl) -> None:
    kms = adapter(emulator.url)
    arn = new_key(kms)
    emulator.add_fault("Sign", count=-1)
    started = time.monotonic()
    with deadline.scope(4.0), pytest.raises(KmsError) as failed:
        sign(kms, arn)
    elapsed = time.monotonic() - started
    assert failed.value.code == "ThrottlingException"
    assert elapsed < 4.0
    assert emulator.calls()["Sign"] > 3


@pytest.mark.parametrize(
    ("error", "status"), [("KMSInternalException", 500), ("DependencyTimeoutException", 503)]
)
def test_server_errors_are_retried(emulator: EmulatorControl, error: str, status: int) -> None:
    kms = adapter(emulator.url)
    arn = new_key(kms)
    emulator.add_fault("Sign", error=error, status=status, count=2)
    with deadline.scope(30):
        assert sign(kms, arn)
    assert emulator.calls()["Sign"] == 3


# What a proxy, a captive portal or a wrong endpoint answers in KMS's place: not an AWS answer at all.
PROXY_PAGE = (
    "<html><head><title>Sign in</title></head><body>"
    + "Please sign in to continue. " * 200
    + "</body></html>"
)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (503, ""),
        (502, "<html><body>502 Bad Gateway</body></html>"),
        (504, "upstream timed out"),
        (200, PROXY_PAGE),
        (200, "[1, 2, 3]"),
        (400, "garbage \x00\xff here"),
    ],
    ids=["empty 503", "HTML 502", "text 504", "HTML 200", "JSON array 200", "garbage 400"],
)
def test_a_proxys_answers_are_retried(emulator: EmulatorControl, status: int, body: str) -> None:
    # What a proxy or load balancer in front of KMS answers: no AWS error code, or no AWS answer at all.
    kms = adapter(emulator.url)
    arn = new_key(kms)
    emulator.add_fault("Sign", error=None, status=status, body=body, count=2)
    with deadline.scope(30):
        assert sign(kms, arn)
    assert emulator.calls()["Sign"] == 3


def test_a_proxys_bare_server_error_that_lasts_is_reported_with_its_status(emulator: EmulatorControl) -> None:
    kms = adapter(emulator.url)
    arn = new_key(kms)
    emulator.add_fault("Sign", error=None, status=503, body="", count=-1)
    with deadline.scope(3.0), pytest.raises(KmsError) as failed:
        sign(kms, arn)
    assert failed.value.code == "503"
    assert emulator.calls()["Sign"] > 1


def test_an_answer_that_is_not_an_aws_answer_that_lasts_is_unavailable_naming_the_operation(
    emulator: EmulatorControl,
) -> None:
    kms = adapter(emulator.url)
    arn = new_key(kms)
    emulator.add_fault("Sign", error=None, status=200, body=PROXY_PAGE, count=-1)
    with deadline.scope(3.0), pytest.raises(KmsError) as failed:
        sign(kms, arn)
    assert failed.value.code == "UnparseableResponse"
    assert failed.value.operation == "Sign"
    assert failed.value.message.startswith(
        'KMS Sign answered HTTP 200 with a body that is not an AWS answer: "<html><head><title>Sign in'
    )
    assert len(failed.value.message) < 170, "a short excerpt of the body, never all of it"
    assert emulator.calls()["Sign"] > 1


def test_an_error_message_of_any_length_is_cut_short(emulator: EmulatorControl) -> None:
    # A proxy's JSON can pass for an AWS error whose message is a whole page.
    kms = adapter(emulator.url)
    arn = new_key(kms)
    emulator.add_fault("Sign", error="AccessDeniedException", status=400, message="denied\n" * 2000)
    with deadline.scope(3.0), pytest.raises(KmsError) as failed:
        sign(kms, arn)
    assert failed.value.code == "AccessDeniedException"
    assert failed.value.message == "denied " * 34 + "d…", "240 characters on one line"


def test_permanent_errors_are_not_retried(emulator: EmulatorControl) -> None:
    kms = adapter(emulator.url)
    arn = new_key(kms)
    emulator.add_fault("Sign", error="AccessDeniedException", count=-1)
    with deadline.scope(30), pytest.raises(KmsError) as failed:
        sign(kms, arn)
    assert failed.value.code == "AccessDeniedException"
    assert emulator.calls()["Sign"] == 1


def test_latency_beyond_the_time_left_is_cut_short(emulator: EmulatorControl) -> None:
    kms = adapter(emulator.url)
    arn = new_key(kms)
    emulator.add_fault("Sign", error=None, delay_ms=8000, count=-1)
    started = time.monotonic()
    with deadline.scope(4.0), pytest.raises(KmsError) as failed:
        sign(kms, arn)
    assert failed.value.code == "Timeout"
    assert time.monotonic() - started < 4.0


def test_an_outage_fails_fast_and_recovers_by_itself(emulator: EmulatorControl) -> None:
    host, port = emulator.url.removeprefix("http://").split(":")
    with TcpProxy(host, int(port)) as proxy:
        kms = adapter(proxy.url)
        arn = new_key(kms)
        proxy.down()
        for _ in range(3):
            with deadline.scope(30), pytest.raises(KmsError) as failed:
                sign(kms, arn)
            assert failed.value.code == "Unreachable"
        started = time.monotonic()
        for _ in range(20):
            with deadline.scope(30), pytest.raises(KmsError):
                sign(kms, arn)
        assert time.monotonic() - started < 1.0, "while KMS is unreachable, requests fail at once"

        proxy.up()
        recovered_at = None
        give_up = time.monotonic() + 5
        while recovered_at is None and time.monotonic() < give_up:
            try:
                with deadline.scope(30):
                    sign(kms, arn)
                recovered_at = time.monotonic()
            except KmsError:
                time.sleep(0.1)
        assert recovered_at is not None, "the adapter must recover by itself once KMS answers"
        with deadline.scope(30):
            assert sign(kms, arn)


@pytest.fixture
def recorded_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []
    original = botocore.client.BaseClient._make_api_call

    def record(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        calls.append((operation_name, dict(api_params)))
        return original(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    return calls


def test_assumed_role_keys_land_in_the_assumed_account(
    emulator: EmulatorControl,
    recorded_calls: list[tuple[str, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", emulator.url)
    role = AssumeRole(ROLE, external_id="spire-external-1", session_name="spire-test")
    kms = adapter(emulator.url, assume_role=role)
    arn = new_key(kms)
    assert ":222233334444:key/" in arn
    assert sign(kms, arn)
    (assume,) = [params for name, params in recorded_calls if name == "AssumeRole"]
    assert assume["RoleArn"] == ROLE
    assert assume["ExternalId"] == "spire-external-1"
    assert assume["RoleSessionName"] == "spire-test"
    own_account_keys = emulator.kms_client().list_keys()["Keys"]
    assert own_account_keys == [], "nothing is created in the caller's own account"

    # An hour later the role's credentials are about to expire: the next call renews them first.
    later = awsclient.utcnow() + datetime.timedelta(minutes=55)
    monkeypatch.setattr(awsclient, "utcnow", lambda: later)
    assert sign(kms, arn)
    assert [name for name, _ in recorded_calls].count("AssumeRole") == 2


def test_a_refused_role_is_permission_denied(
    emulator: EmulatorControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", emulator.url)
    emulator.add_fault("AssumeRole", error="AccessDenied", status=403, message="not trusted", count=-1)
    kms = adapter(emulator.url, assume_role=AssumeRole(ROLE))
    with pytest.raises(KmsError) as failed:
        list(kms.list_aliases())
    assert failed.value.code == "AccessDenied"
    assert "STS AssumeRole" in failed.value.operation


def test_an_sts_answer_that_is_not_an_aws_answer_names_sts_assume_role(
    emulator: EmulatorControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", emulator.url)
    emulator.add_fault("AssumeRole", error=None, status=200, body="<html><body>hello", count=-1)
    kms = adapter(emulator.url, assume_role=AssumeRole(ROLE))
    # Another attempt starts only while 2.5 s (connect timeout, margin, shortest read) and the pause are
    # left: 5 s lets the first attempt, which also makes the STS client, take 2 s on a busy machine.
    with deadline.scope(5.0), pytest.raises(KmsError) as failed:
        list(kms.list_aliases())
    assert failed.value.code == "UnparseableResponse"
    assert failed.value.operation == "ListAliases (STS AssumeRole)"
    assert failed.value.message == (
        'STS AssumeRole answered HTTP 200 with a body that is not an AWS answer: "<html><body>hello"'
    )
    calls = emulator.calls()
    assert calls["AssumeRole"] > 1
    assert "ListAliases" not in calls, "KMS is never called without credentials"


def test_an_sts_answer_that_is_not_an_aws_answer_is_retried(
    emulator: EmulatorControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", emulator.url)
    emulator.add_fault("AssumeRole", error=None, status=400, body="garbage", count=2)
    kms = adapter(emulator.url, assume_role=AssumeRole(ROLE))
    with deadline.scope(30):
        assert list(kms.list_aliases()) is not None
    assert emulator.calls()["AssumeRole"] == 3


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ("us-east-1", "https://kms-fips.us-east-1.amazonaws.com"),
        ("us-gov-west-1", "https://kms-fips.us-gov-west-1.amazonaws.com"),
    ],
)
def test_fips_endpoints(monkeypatch: pytest.MonkeyPatch, region: str, expected: str) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_KMS", raising=False)
    client = kms_client(ClientSettings(region=region, use_fips_endpoint=True))
    assert client.meta.endpoint_url == expected


def test_custom_endpoint_is_used_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    url = "https://vpce-0123-abcd.kms.us-east-1.vpce.amazonaws.com"
    assert kms_client(ClientSettings(region=REGION, endpoint=url)).meta.endpoint_url == url


@pytest.mark.parametrize("body", ["", "{}"], ids=["empty 200", "empty JSON object"])
def test_an_answer_without_its_result_is_unavailable_not_internal(
    emulator: EmulatorControl, body: str
) -> None:
    # A proxy that swallows the body: a 200 that carries no signature is no KMS answer.
    kms = adapter(emulator.url)
    arn = new_key(kms)
    emulator.add_fault("Sign", error=None, status=200, body=body, count=-1)
    with deadline.scope(3.0), pytest.raises(KmsError) as failed:
        sign(kms, arn)
    assert (failed.value.operation, failed.value.code) == ("Sign", "UnparseableResponse")
    assert failed.value.message == "the answer has no Signature: it is not a KMS answer"
