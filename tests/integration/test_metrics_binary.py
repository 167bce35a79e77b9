"""The frozen binary's metrics, sent to SPIRE's Metrics host service as the test host serves it over the
go-plugin broker, against the KMS emulator; and nothing sent when SPIRE does not offer the service."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import COMMUNITY_CONFIG, REGION, plugin_env
from tests.support.host_services import HostServices
from tests.support.kms_emulator import DUMMY_SECRET_ACCESS_KEY, EmulatorControl
from tests.support.plugin_host import PluginProcess, hclog_problems, start_plugin

DIGEST = hashlib.sha256(b"metrics").digest()
PREFIX = ("server_key_manager", "aws_kms")
SIGN = (*PREFIX, "kms", "sign")
OK = {"status": "OK"}


@pytest.fixture
def host() -> Iterator[HostServices]:
    with HostServices() as served:
        yield served


def started(binary: Path, emulator: EmulatorControl, tmpdir: Path, **host_args: object) -> PluginProcess:
    return start_plugin([str(binary)], env=plugin_env(emulator.url, tmpdir), **host_args)  # type: ignore[arg-type]


def test_kms_calls_keys_and_breaker_reach_spire(
    plugin_binary: Path, emulator: EmulatorControl, plugin_tmpdir: Path, host: HostServices
) -> None:
    with started(plugin_binary, emulator, plugin_tmpdir, **host.plugin_args()) as plugin:
        plugin.configure(COMMUNITY_CONFIG)
        plugin.generate_key("x509-CA-A", km.EC_P256)
        emulator.add_fault("Sign", count=2)
        for _ in range(3):
            plugin.sign_data("x509-CA-A", DIGEST, km.SHA256)
        metrics = host.metrics
        # Counters and latency samples travel in separate calls to SPIRE: wait for both.
        metrics.wait_for(
            lambda m: (
                m.counter(SIGN, OK) == 3.0
                and m.gauge((*PREFIX, "keys")) == 1.0
                and len(m.samples((*SIGN, "elapsed_time"), OK)) == 3
            )
        )
        assert metrics.counter((*SIGN, "throttle")) == 2.0
        assert metrics.counter((*SIGN, "retry"), {"status": "ThrottlingException"}) == 2.0
        assert len(metrics.samples((*SIGN, "elapsed_time"), OK)) == 3
        assert metrics.counter((*PREFIX, "kms", "create_key"), OK) == 1.0
        assert metrics.counter((*PREFIX, "kms", "list_aliases"), OK) >= 1.0
        assert metrics.gauge((*PREFIX, "kms", "circuit_breaker_open")) == 0.0
        assert metrics.gauge((*PREFIX, "deletions_pending")) == 0.0
        # Labels carry codes: no secret, no key ARN or alias.
        told = repr(metrics.snapshot())
        assert DUMMY_SECRET_ACCESS_KEY not in told
        assert "arn:" not in told and "alias/" not in told
        # Every metric keeps one set of label names (SPIRE's Prometheus endpoint fails otherwise).
        for key in metrics.metric_keys():
            assert len({frozenset(name for name, _ in labels) for labels in metrics.label_sets(key)}) == 1, (
                key
            )
        assert plugin.shutdown() == 0
        assert hclog_problems(plugin.raw_stderr()) == []


def test_heartbeat_and_disposal_passes_reach_spire(
    plugin_binary: Path, emulator: EmulatorControl, plugin_tmpdir: Path, host: HostServices
) -> None:
    with started(plugin_binary, emulator, plugin_tmpdir, **host.plugin_args()) as plugin:
        plugin.configure(f'region = "{REGION}"\nkey_identifier_value = "server1"\n')
        plugin.generate_key("x509-CA-A", km.EC_P256)
        host.metrics.wait_for(
            lambda m: (
                m.counter((*PREFIX, "heartbeat"), OK) == 1.0
                and m.counter((*PREFIX, "disposal"), OK) == 1.0
                and len(m.samples((*PREFIX, "heartbeat", "elapsed_time"), OK)) == 1
            )
        )
        assert len(host.metrics.samples((*PREFIX, "heartbeat", "elapsed_time"), OK)) == 1
        assert host.metrics.counter((*PREFIX, "disposal", "keys_scheduled")) == 0.0
        assert host.metrics.gauge((*PREFIX, "keys")) == 1.0
        plugin.shutdown()


def test_without_the_host_service_nothing_is_sent(
    plugin_binary: Path, emulator: EmulatorControl, plugin_tmpdir: Path, host: HostServices
) -> None:
    # The broker announces a live host-services server, but Init does not list Metrics.
    with started(plugin_binary, emulator, plugin_tmpdir, host_services_address=host.address) as plugin:
        plugin.configure(COMMUNITY_CONFIG)
        plugin.generate_key("x509-CA-A", km.EC_P256)
        plugin.sign_data("x509-CA-A", DIGEST, km.SHA256)
        time.sleep(2.5)  # more than two of the sender's seconds
        assert host.metrics.snapshot() == []
        assert plugin.shutdown() == 0


def test_a_host_service_that_goes_away_is_logged_once_and_signing_goes_on(
    plugin_binary: Path, emulator: EmulatorControl, plugin_tmpdir: Path, host: HostServices
) -> None:
    with started(plugin_binary, emulator, plugin_tmpdir, **host.plugin_args()) as plugin:
        plugin.configure(COMMUNITY_CONFIG)
        plugin.generate_key("x509-CA-A", km.EC_P256)
        host.metrics.wait_for(lambda m: m.gauge((*PREFIX, "keys")) == 1.0)
        host.stop()
        for _ in range(4):
            assert plugin.sign_data("x509-CA-A", DIGEST, km.SHA256).signature
            time.sleep(1.0)
        failures = [e for e in plugin.log_lines() if "Metrics host service failed" in e["@message"]]
        assert [e["@level"] for e in failures] == ["warn"]
        assert plugin.shutdown() == 0
        assert hclog_problems(plugin.raw_stderr()) == []
