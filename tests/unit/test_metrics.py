"""What the plugin reports and under which names, and how reports reach SPIRE's Metrics host service
without ever holding up the caller."""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from plugin import hostmetrics, metrics
from plugin.algorithms import KeyType
from plugin.clock import SYSTEM_CLOCK
from plugin.goplugin import HostServices as Announced
from plugin.hostmetrics import HostMetrics
from plugin.keymanager import KeyManager, KeySettings
from plugin.lifecycle import DeletionQueue, PeriodicRunner, PeriodicTask
from plugin.metrics import Key, Relay
from plugin.naming import CommunityScheme
from plugin.service import PluginServices
from proto_gen.goplugin import broker_pb2
from tests.support.fake_kms import FakeKms
from tests.support.host_services import HostServices
from tests.support.metrics_recorder import Recorder

SIGN: Key = ("server_key_manager", "aws_kms", "kms", "sign")
SIGN_ELAPSED: Key = ("server_key_manager", "aws_kms", "kms", "sign", "elapsed_time")


@pytest.mark.parametrize(
    ("operation", "key"),
    [
        ("Sign", SIGN),
        ("ScheduleKeyDeletion", ("server_key_manager", "aws_kms", "kms", "schedule_key_deletion")),
        ("GetPublicKey", ("server_key_manager", "aws_kms", "kms", "get_public_key")),
        ("ListAliases", ("server_key_manager", "aws_kms", "kms", "list_aliases")),
        ("GetCallerIdentity", ("server_key_manager", "aws_kms", "sts", "get_caller_identity")),
        ("AssumeRole", ("server_key_manager", "aws_kms", "sts", "assume_role")),
        ("GetResources", ("server_key_manager", "aws_kms", "tagging", "get_resources")),
        # A credential step that failed on the way to a Sign is still Sign's failure.
        ("Sign (STS AssumeRole)", SIGN),
    ],
)
def test_operations_are_named_as_spire_names_its_metrics(operation: str, key: Key) -> None:
    assert metrics.operation_key(operation) == key


def test_a_call_is_a_count_and_an_elapsed_time_with_its_status() -> None:
    recorder = Recorder(sample_digits=1)
    start = time.monotonic() - 0.2
    metrics.observe_call(recorder, SIGN, start)
    metrics.observe_call(recorder, SIGN, start, "ThrottlingException")
    assert recorder.reports == [
        ("counter", SIGN, 1.0, (("status", "OK"),)),
        ("sample", SIGN_ELAPSED, 0.2, (("status", "OK"),)),
        ("counter", SIGN, 1.0, (("status", "ThrottlingException"),)),
        ("sample", SIGN_ELAPSED, 0.2, (("status", "ThrottlingException"),)),
    ]


def test_a_status_from_something_that_is_not_aws_is_cut_short() -> None:
    recorder = Recorder(sample_digits=1)
    metrics.observe_call(recorder, SIGN, time.monotonic(), "X" * 500)
    assert recorder.reports[0][3] == (("status", "X" * 64),)


def test_failed_attempts_count_throttles_and_retries() -> None:
    recorder = Recorder(sample_digits=1)
    metrics.observe_failed_attempt(recorder, "Sign", "ThrottlingException", throttled=True, retried=True)
    metrics.observe_failed_attempt(recorder, "Sign", "ThrottlingException", throttled=True, retried=False)
    metrics.observe_failed_attempt(recorder, "Sign", "Timeout", throttled=False, retried=True)
    assert recorder.reports == [
        ("counter", (*SIGN, "throttle"), 1.0, ()),
        ("counter", (*SIGN, "retry"), 1.0, (("status", "ThrottlingException"),)),
        ("counter", (*SIGN, "throttle"), 1.0, ()),
        ("counter", (*SIGN, "retry"), 1.0, (("status", "Timeout"),)),
    ]


def test_a_relay_reports_nowhere_until_connected() -> None:
    relay = Relay()
    relay.incr_counter(SIGN)
    recorder = Recorder(sample_digits=1)
    relay.connect(recorder)
    relay.set_gauge(metrics.KEYS, 2.0)
    assert recorder.reports == [("gauge", ("server_key_manager", "aws_kms", "keys"), 2.0, ())]


def test_keys_managed_and_deletions_pending_are_gauges() -> None:
    recorder = Recorder(sample_digits=1)
    kms = FakeKms()
    deletions = DeletionQueue(wait=lambda event, seconds: event.wait(0.01), metrics=recorder)
    keys = KeyManager(deletions, metrics=recorder)
    try:
        keys.configure(
            KeySettings(scheme=CommunityScheme(), key_tags={}, key_policy=None, deletion_window_days=7), kms
        )
        keys.generate_key("x509-CA-A", KeyType.EC_P256)
        keys.generate_key("JWT-Signer-A", KeyType.EC_P256)
        kms.fail("ScheduleKeyDeletion", "ThrottlingException")
        keys.generate_key("x509-CA-A", KeyType.EC_P256)
        assert deletions.wait_idle(5.0)
    finally:
        keys.stop()
    assert recorder.gauges(metrics.KEYS) == [0.0, 1.0, 2.0, 2.0]
    assert recorder.gauges(metrics.DELETIONS_PENDING) == [1.0, 0.0]


@pytest.mark.parametrize("outcome", ["failures", "exception"])
def test_a_background_pass_that_failed_is_counted_as_failed(outcome: str) -> None:
    recorder = Recorder(sample_digits=1)
    stopped = threading.Event()

    def disposal() -> int:
        stopped.set()
        if outcome == "exception":
            raise RuntimeError("a bug")
        return 2

    runner = PeriodicRunner(
        [PeriodicTask("disposal", datetime.timedelta(hours=1), disposal)],
        SYSTEM_CLOCK,
        stopped,
        datetime.timedelta(minutes=1),
        metrics=recorder,
    )
    assert runner.join(5.0)
    disposal_key = ("server_key_manager", "aws_kms", "disposal")
    assert recorder.reports == [
        ("counter", disposal_key, 1.0, (("status", "Failed"),)),
        ("sample", (*disposal_key, "elapsed_time"), 0.0, (("status", "Failed"),)),
    ]


# -- the host-service client --------------------------------------------------------------------------


@pytest.fixture
def host() -> Iterator[HostServices]:
    with HostServices() as served:
        yield served


@pytest.fixture
def sink(host: HostServices) -> Iterator[HostMetrics]:
    client = HostMetrics(lambda: f"unix:{host.address}", flush_seconds=0.1)
    yield client
    client.stop()


def test_counters_reach_spire_summed(host: HostServices, sink: HostMetrics) -> None:
    for _ in range(250):
        sink.incr_counter(SIGN, 1.0, (("status", "OK"),))
    sink.set_gauge(metrics.KEYS, 1.0)
    sink.set_gauge(metrics.KEYS, 3.0)
    assert sink.wait_sent(5.0)
    calls = host.metrics.snapshot()
    sign_calls = [c for c in calls if c.key == SIGN]
    # Summed before sending: a few calls to SPIRE, not one per signature.
    assert len(sign_calls) <= 3
    assert host.metrics.counter(SIGN, {"status": "OK"}) == 250.0
    assert host.metrics.gauge(("server_key_manager", "aws_kms", "keys")) == 3.0


def test_latency_reaches_spire_as_measured_not_as_delayed(host: HostServices) -> None:
    # A flush every 1.5 s: a sample measured at 250 ms must not arrive as 250 ms + the wait.
    sink = HostMetrics(lambda: f"unix:{host.address}", flush_seconds=1.5)
    try:
        sink.measure_since(SIGN_ELAPSED, time.monotonic() - 0.25, (("status", "OK"),))
        host.metrics.wait_for(lambda m: len(m.samples(SIGN_ELAPSED, {"status": "OK"})) == 1, timeout=10)
    finally:
        sink.stop()
    (sample,) = host.metrics.samples(SIGN_ELAPSED, {"status": "OK"})
    assert 249.0 <= sample < 400.0


def test_samples_are_capped_per_flush_while_counts_stay_exact(host: HostServices) -> None:
    sink = HostMetrics(lambda: f"unix:{host.address}", flush_seconds=0.5)
    try:
        start = time.monotonic()
        for _ in range(1000):
            metrics.observe_call(sink, SIGN, start)
        host.metrics.wait_for(lambda m: m.counter(SIGN, {"status": "OK"}) == 1000.0)
        assert sink.wait_sent(5.0)
    finally:
        sink.stop()
    assert len(host.metrics.samples(SIGN_ELAPSED, {"status": "OK"})) == hostmetrics.MAX_SAMPLES_PER_FLUSH


def test_reports_beyond_the_queue_are_dropped_and_counted(host: HostServices) -> None:
    sink = HostMetrics(lambda: f"unix:{host.address}", flush_seconds=1.0, capacity=10)
    try:
        for _ in range(15):
            sink.incr_counter(SIGN, 1.0, (("status", "OK"),))
        host.metrics.wait_for(lambda m: m.counter(metrics.DROPPED) == 5.0)
    finally:
        sink.stop()
    assert host.metrics.counter(SIGN, {"status": "OK"}) == 10.0
    assert metrics.DROPPED == ("server_key_manager", "aws_kms", "telemetry", "dropped")


class _StuckMetrics:
    """A host service that never answers until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, channel: grpc.Channel) -> Any:
        return self

    def __getattr__(self, name: str) -> Any:
        def call(request: Any, timeout: float) -> None:
            self.release.wait(timeout)

        return call


def test_reporting_never_waits_for_a_stuck_host_service() -> None:
    stuck = _StuckMetrics()
    sink = HostMetrics(lambda: "unix:/nonexistent", flush_seconds=0.01, stub_factory=stuck)
    try:
        time.sleep(0.05)  # the sender is now inside a call that does not return
        began = time.perf_counter()
        for _ in range(10_000):
            metrics.observe_call(sink, SIGN, began)
        spent = time.perf_counter() - began
    finally:
        stuck.release.set()
        sink.stop()
    # 20,000 reports; well under 50 microseconds each even on a slow, shared machine.
    assert spent < 1.0


def test_a_failing_host_service_is_logged_once_and_recovery_once(
    host: HostServices, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="metrics")
    host.metrics.fail_with = grpc.StatusCode.UNAVAILABLE
    sink = HostMetrics(lambda: f"unix:{host.address}", flush_seconds=0.05)
    try:
        for _ in range(5):
            sink.incr_counter(SIGN, 1.0, (("status", "OK"),))
            time.sleep(0.1)
        host.metrics.wait_for(lambda m: m.failed_calls >= 3)
        host.metrics.fail_with = None
        # Counters not sent while it failed are sent once it answers.
        host.metrics.wait_for(lambda m: m.counter(SIGN, {"status": "OK"}) == 5.0)
    finally:
        sink.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "metrics"]
    assert messages == [
        "SPIRE's Metrics host service failed; metrics wait until it answers again",
        "SPIRE's Metrics host service answers again",
    ]


def test_without_an_announced_address_nothing_is_sent_and_nothing_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = HostMetrics(lambda: None, flush_seconds=0.01)
    try:
        sink.incr_counter(SIGN)
        time.sleep(0.1)
    finally:
        sink.stop()
    assert [r.getMessage() for r in caplog.records if r.name == "metrics"] == [
        "SPIRE offered its Metrics host service but announced no address; metrics are not sent"
    ]


# -- wiring: the broker's announcement and Init's list of host services ---------------------------------


def test_the_host_services_address_is_the_one_spire_announces_on_the_broker() -> None:
    unix = Announced()
    unix.announce(broker_pb2.ConnInfo(service_id=7, network="unix", address="/tmp/other"))
    unix.announce(broker_pb2.ConnInfo(service_id=1, network="unix", address="/tmp/plugin123"))
    assert unix.target(0.0) == "unix:/tmp/plugin123"
    tcp = Announced()
    tcp.announce(broker_pb2.ConnInfo(service_id=1, network="tcp", address="127.0.0.1:10001"))
    assert tcp.target(0.0) == "127.0.0.1:10001"
    began = time.monotonic()
    assert Announced().target(0.2) is None
    assert time.monotonic() - began >= 0.2


def test_metrics_go_to_spire_only_when_init_lists_its_metrics_host_service() -> None:
    without = PluginServices.create()
    with_metrics = PluginServices.create()
    try:
        without.use_host_services(["spire.hostservice.server.agentstore.v1.AgentStore"])
        with_metrics.use_host_services(["spire.hostservice.common.metrics.v1.Metrics"])
        assert without.metrics.target is metrics.NO_METRICS
        assert isinstance(with_metrics.metrics.target, HostMetrics)
        with_metrics.stop_metrics()
        assert with_metrics.metrics.target is metrics.NO_METRICS
    finally:
        without.stop()
        with_metrics.stop()
