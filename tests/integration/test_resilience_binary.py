"""Through the frozen binary: SPIRE's deadline honoured under throttling, 5xx and latency; an outage
answered fast while public keys stay served, and recovery; assumed roles and custom endpoints."""

from __future__ import annotations

import hashlib
import time

import boto3
import grpc
import pytest

from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import COMMUNITY_CONFIG, REGION, StartPlugin
from tests.support.kms_emulator import EmulatorControl
from tests.support.plugin_host import PluginProcess
from tests.support.tcp_proxy import TcpProxy

DIGEST = hashlib.sha256(b"resilience").digest()
ROLE = "arn:aws:iam::222233334444:role/spire-server"


def sign(plugin: PluginProcess) -> km.SignDataResponse:
    return plugin.sign_data("x509-CA-A", DIGEST, hash_algorithm=km.SHA256)


def timed_failure(call: object) -> tuple[grpc.RpcError, float]:
    assert callable(call)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value, time.monotonic() - started


@pytest.mark.parametrize("operation", ["Sign", "CreateKey", "CreateAlias"])
def test_throttle_bursts_succeed_while_the_deadline_allows(
    plugin: PluginProcess, emulator: EmulatorControl, operation: str
) -> None:
    if operation == "Sign":
        plugin.generate_key("x509-CA-A", km.EC_P256)
    emulator.reset_calls()
    emulator.add_fault(operation, count=6)
    if operation == "Sign":
        assert sign(plugin).signature
    else:
        assert plugin.generate_key("x509-CA-A", km.EC_P256).public_key.pkix_data
    assert emulator.calls()[operation] == 7


def test_throttling_past_the_deadline_is_unavailable_in_time(
    plugin: PluginProcess, emulator: EmulatorControl
) -> None:
    plugin.generate_key("x509-CA-A", km.EC_P256)
    emulator.add_fault("Sign", count=-1)
    plugin.call_timeout = 5.0
    error, elapsed = timed_failure(lambda: sign(plugin))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "ThrottlingException" in error.details()
    assert elapsed < 5.0


def test_server_errors_are_retried(plugin: PluginProcess, emulator: EmulatorControl) -> None:
    plugin.generate_key("x509-CA-A", km.EC_P256)
    emulator.add_fault("Sign", error="KMSInternalException", status=500, count=3)
    assert sign(plugin).signature


def test_latency_beyond_the_read_timeout_is_answered_before_the_deadline(
    plugin: PluginProcess, emulator: EmulatorControl
) -> None:
    plugin.generate_key("x509-CA-A", km.EC_P256)
    emulator.add_fault("Sign", error=None, delay_ms=20_000, count=-1)
    plugin.call_timeout = 6.0
    error, elapsed = timed_failure(lambda: sign(plugin))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "Timeout" in error.details()
    assert elapsed < 6.0


def test_an_outage_is_answered_fast_public_keys_stay_served_and_signing_recovers(
    start: StartPlugin, emulator: EmulatorControl
) -> None:
    host, port = emulator.url.removeprefix("http://").split(":")
    with TcpProxy(host, int(port)) as proxy:
        plugin = start(AWS_ENDPOINT_URL="")
        plugin.configure(COMMUNITY_CONFIG + f'endpoint = "{proxy.url}"\n')
        key = plugin.generate_key("x509-CA-A", km.EC_P256).public_key
        proxy.down()
        for _ in range(3):
            error, _ = timed_failure(lambda: sign(plugin))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "Unreachable" in error.details()
        started = time.monotonic()
        for _ in range(10):
            assert timed_failure(lambda: sign(plugin))[0].code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 2.0, "signing requests must fail fast while KMS is unreachable"
        assert plugin.get_public_key("x509-CA-A").public_key == key
        assert list(plugin.get_public_keys().public_keys) == [key]

        proxy.up()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert sign(plugin).key_fingerprint == key.fingerprint
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the plugin must recover by itself"
                time.sleep(0.2)


def test_custom_endpoint_is_used(start: StartPlugin, emulator: EmulatorControl) -> None:
    plugin = start(AWS_ENDPOINT_URL="")
    plugin.configure(COMMUNITY_CONFIG + f'endpoint = "{emulator.url}"\n')
    plugin.generate_key("x509-CA-A", km.EC_P256)
    assert emulator.calls()["CreateKey"] == 1


def test_assumed_role_end_to_end(start: StartPlugin, emulator: EmulatorControl) -> None:
    plugin = start()
    plugin.configure(
        f'region = "{REGION}"\nrole_arn = "{ROLE}"\nrole_external_id = "spire-ext-42"\n'
        'role_session_name = "spire-server-a"\n'
    )
    key = plugin.generate_key("x509-CA-A", km.EC_P256).public_key
    assert sign(plugin).key_fingerprint == key.fingerprint
    assert emulator.calls()["AssumeRole"] == 1
    assert emulator.kms_client().list_aliases()["Aliases"] == [], "nothing in the caller's own account"

    assumed = emulator.sts_client().assume_role(RoleArn=ROLE, RoleSessionName="test-check")["Credentials"]
    in_role = boto3.session.Session(
        aws_access_key_id=assumed["AccessKeyId"],
        aws_secret_access_key=assumed["SecretAccessKey"],
        aws_session_token=assumed["SessionToken"],
        region_name=REGION,
    ).client("kms", endpoint_url=emulator.url)
    (alias,) = in_role.list_aliases()["Aliases"]
    assert alias["AliasName"] == "alias/SPIRE_SERVER_KEY/x509-CA-A"
    described = in_role.describe_key(KeyId=alias["TargetKeyId"])["KeyMetadata"]
    assert described["Arn"].startswith("arn:aws:kms:us-east-1:222233334444:key/")


def test_a_refused_role_is_permission_denied(start: StartPlugin, emulator: EmulatorControl) -> None:
    emulator.add_fault("AssumeRole", error="AccessDenied", status=403, message="not trusted", count=-1)
    plugin = start()
    with pytest.raises(grpc.RpcError) as refused:
        plugin.configure(f'region = "{REGION}"\nrole_arn = "{ROLE}"\n')
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "AssumeRole" in refused.value.details() and "AccessDenied" in refused.value.details()
