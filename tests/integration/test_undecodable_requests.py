"""Bytes that are no request, sent to the frozen binary: INVALID_ARGUMENT, one log line each, no traceback,
and the plugin goes on serving."""

from __future__ import annotations

import time

import grpc
import pytest

from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import COMMUNITY_CONFIG
from tests.support.plugin_host import PluginProcess, hclog_problems
from tests.support.signatures import digest_of, verify

SIGN_DATA = "/spire.plugin.server.keymanager.v1.KeyManager/SignData"
CONFIGURE = "/spire.service.common.config.v1.Config/Configure"
# Enough for a traceback, were one logged, to have reached the test's reader.
LOG_SETTLE_SECONDS = 0.5


def _raw_call(plugin: PluginProcess, method: str, data: bytes) -> grpc.RpcError:
    call = plugin.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as failed:
        call(data, timeout=10)
    return failed.value


def test_undecodable_requests_are_invalid_argument_logged_once_and_the_plugin_serves_on(
    plugin: PluginProcess,
) -> None:
    # The fixture's Configure logs as it ends: count from after its last line.
    plugin.wait_for_log("Configured")
    before = len(plugin.raw_stderr())

    sign = _raw_call(plugin, SIGN_DATA, b"\xff\xff\xff")
    configure = _raw_call(plugin, CONFIGURE, b"\xff\xff\xff")

    assert (sign.code(), sign.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "request is not a valid SignDataRequest: Wire format was corrupt",
    )
    assert (configure.code(), configure.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "request is not a valid ConfigureRequest: Wire format was corrupt",
    )
    plugin.wait_for_log(lambda entry: entry.get("method") == CONFIGURE)
    time.sleep(LOG_SETTLE_SECONDS)
    logged = plugin.raw_stderr()[before:]
    assert hclog_problems(logged) == []
    assert not any("Traceback" in line or "deserializing" in line for line in logged)
    refusals = [e for e in plugin.log_lines() if e.get("@message") == "Undecodable request refused"]
    assert len(logged) == len(refusals) == 2, logged
    assert [(e["@level"], e["method"], e["error"]) for e in refusals] == [
        ("warn", SIGN_DATA, "Wire format was corrupt"),
        ("warn", CONFIGURE, "Wire format was corrupt"),
    ]

    plugin.configure(COMMUNITY_CONFIG)
    key = plugin.generate_key("x509-CA-A", km.EC_P256).public_key
    answer = plugin.sign_data("x509-CA-A", digest_of(km.SHA256), km.SHA256)
    verify(key.pkix_data, answer.signature, km.SHA256, None)
