"""SPIRE's Metrics host service as a `plugin.metrics.Metrics` sink.

SPIRE serves its host services on a gRPC server of its own and announces its address on the go-plugin
broker stream (`plugin.goplugin.HostServices`); the Init request says whether Metrics is among them.

Reporting must never slow a signature: the caller only appends to a bounded in-memory queue (a report that
finds it full is dropped and counted), and one background thread sends what gathered once a second.
Counters are summed and gauges reduced to their last value before they are sent, so a busy second costs a
handful of calls to SPIRE, not one per signature; latency samples are kept up to `MAX_SAMPLES_PER_FLUSH`
per metric and second, chosen uniformly (reservoir sampling) so the quantiles SPIRE computes stay unbiased,
while the call counters stay exact. A failing host service is logged once, and once more when it answers
again; counters and gauges not sent wait for the next second, samples are let go.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc

from plugin import metrics
from plugin.log import get_logger
from plugin.metrics import Key, Labels
from proto_gen.spire.metrics import metrics_pb2, metrics_pb2_grpc

METRICS_SERVICE = "spire.hostservice.common.metrics.v1.Metrics"

FLUSH_SECONDS = 1.0
# About 100 seconds of a thousand signatures a second: a host service that stalls costs bounded memory.
QUEUE_CAPACITY = 200_000
# Each sample is one call to SPIRE (about 0.1 ms of CPU here); 20 a second still give SPIRE's summaries
# (quantiles over 10 s) 200 samples per metric.
MAX_SAMPLES_PER_FLUSH = 20
RPC_TIMEOUT_SECONDS = 5.0
# How long the sender waits for SPIRE to announce its host-services address (go-plugin's broker waits 5 s).
ADDRESS_WAIT_SECONDS = 10.0
_CHANNEL_OPTIONS = (("grpc.enable_http_proxy", 0),)

_COUNTER, _GAUGE, _SAMPLE = 0, 1, 2
_Event = tuple[int, Key, float, Labels]
_Series = tuple[Key, Labels]

log = get_logger("metrics")


class _Reservoir:
    """Up to `size` of the values offered, each kept with the same chance."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: list[float] = []
        self.seen = 0

    def offer(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
            return
        slot = random.randrange(self.seen)
        if slot < self.size:
            self.values[slot] = value


def _labels(labels: Labels) -> list[metrics_pb2.Label]:
    return [metrics_pb2.Label(name=name, value=value) for name, value in labels]


class HostMetrics:
    """Reports to SPIRE's Metrics host service at the address `address()` gives (a gRPC target, or None
    when SPIRE announced none); see the module docstring for the guarantees."""

    def __init__(
        self,
        address: Callable[[], str | None],
        flush_seconds: float = FLUSH_SECONDS,
        capacity: int = QUEUE_CAPACITY,
        stub_factory: Callable[[grpc.Channel], Any] = metrics_pb2_grpc.MetricsStub,
    ) -> None:
        self._address = address
        self._flush_seconds = flush_seconds
        self._capacity = capacity
        self._stub_factory = stub_factory
        self._events: deque[_Event] = deque()
        self._dropped = 0
        self._dropped_lock = threading.Lock()
        # What could not be sent yet: summed counters and the latest value of each gauge.
        self._counters: dict[_Series, float] = {}
        self._gauges: dict[_Series, float] = {}
        self._failing = False
        self._channel: grpc.Channel | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()

    # -- the caller's side: append and return ------------------------------------------------------

    def _put(self, event: _Event) -> None:
        # len() and append() are each atomic on a deque; two callers racing past a full check overshoot the
        # capacity by one each, which is harmless.
        if len(self._events) >= self._capacity:
            with self._dropped_lock:
                self._dropped += 1
            return
        self._events.append(event)

    def incr_counter(self, key: Key, value: float = 1.0, labels: Labels = ()) -> None:
        self._put((_COUNTER, key, value, labels))

    def set_gauge(self, key: Key, value: float, labels: Labels = ()) -> None:
        self._put((_GAUGE, key, value, labels))

    def measure_since(self, key: Key, start: float, labels: Labels = ()) -> None:
        # The elapsed time is fixed now; it reaches SPIRE later as a start that far back from the send.
        self._put((_SAMPLE, key, time.monotonic() - start, labels))

    # -- the sender ----------------------------------------------------------------------------------

    def stop(self, timeout: float = 0.5) -> None:
        """Stop sending. What is queued is let go: SPIRE closes its host services before it asks the
        plugin to shut down, and has the process killed 2 s later."""
        self._stopped.set()
        self._thread.join(timeout)
        channel = self._channel
        if channel is not None and not self._thread.is_alive():
            channel.close()

    def wait_sent(self, timeout: float) -> bool:
        """True once everything reported so far was handed to SPIRE (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._events and not self._counters and not self._gauges:
                return True
            time.sleep(0.02)
        return False

    def _run(self) -> None:
        stub = self._connect()
        while not self._stopped.wait(self._flush_seconds):
            samples = self._drain()
            if stub is None:
                continue
            try:
                self._send(stub, samples)
            except Exception:
                # A bug here must not end telemetry silently, nor ever reach a caller.
                log.exception("Sending metrics to SPIRE failed")

    def _connect(self) -> Any:
        try:
            target = self._address()
        except Exception:
            log.exception("Resolving SPIRE's host-services address failed")
            target = None
        if target is None:
            log.warn("SPIRE offered its Metrics host service but announced no address; metrics are not sent")
            return None
        self._channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        log.debug("Sending metrics to SPIRE's Metrics host service", target=target)
        return self._stub_factory(self._channel)

    def _drain(self) -> dict[_Series, _Reservoir]:
        samples: dict[_Series, _Reservoir] = {}
        events = self._events
        for _ in range(len(events)):
            kind, key, value, labels = events.popleft()
            series = (key, labels)
            if kind == _COUNTER:
                self._counters[series] = self._counters.get(series, 0.0) + value
            elif kind == _GAUGE:
                self._gauges[series] = value
            else:
                reservoir = samples.get(series)
                if reservoir is None:
                    reservoir = samples[series] = _Reservoir(MAX_SAMPLES_PER_FLUSH)
                reservoir.offer(value)
        with self._dropped_lock:
            dropped, self._dropped = self._dropped, 0
        if dropped:
            series = (metrics.DROPPED, ())
            self._counters[series] = self._counters.get(series, 0.0) + dropped
        return samples

    def _send(self, stub: Any, samples: dict[_Series, _Reservoir]) -> None:
        sent = 0
        try:
            for series, value in list(self._counters.items()):
                key, labels = series
                stub.IncrCounter(
                    metrics_pb2.IncrCounterRequest(key=key, val=value, labels=_labels(labels)),
                    timeout=RPC_TIMEOUT_SECONDS,
                )
                del self._counters[series]
                sent += 1
            for series, value in list(self._gauges.items()):
                key, labels = series
                stub.SetGauge(
                    metrics_pb2.SetGaugeRequest(key=key, val=value, labels=_labels(labels)),
                    timeout=RPC_TIMEOUT_SECONDS,
                )
                del self._gauges[series]
                sent += 1
            for (key, labels), reservoir in samples.items():
                for elapsed in reservoir.values:
                    # SPIRE measures from `time` to when it reads the request: a start `elapsed` before now
                    # gives it the elapsed time measured when the call ended, whenever this is sent.
                    start = time.time_ns() - int(elapsed * 1e9)
                    stub.MeasureSince(
                        metrics_pb2.MeasureSinceRequest(key=key, time=start, labels=_labels(labels)),
                        timeout=RPC_TIMEOUT_SECONDS,
                    )
                    sent += 1
        except grpc.RpcError as err:
            if not self._failing:
                self._failing = True
                log.warn(
                    "SPIRE's Metrics host service failed; metrics wait until it answers again",
                    code=err.code().name if isinstance(err, grpc.Call) else "",
                    error=(err.details() if isinstance(err, grpc.Call) else str(err)) or "",
                )
            return
        if self._failing and sent:
            self._failing = False
            log.info("SPIRE's Metrics host service answers again")
