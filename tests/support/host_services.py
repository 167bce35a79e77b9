"""SPIRE's host services as the test host serves them: a gRPC server on a unix socket in a private directory,
announced to the plugin on the broker stream, with SPIRE's Metrics host service recording what it gets.

    with HostServices() as host, start_plugin(cmd, **host.plugin_args()) as plugin:
        ...
        host.metrics.wait_for(lambda m: m.counter(("server_key_manager", "aws_kms", "kms", "sign")) >= 1)

What SPIRE would show is recorded as SPIRE's telemetry keeps it: counters summed per key and labels, the
last value of each gauge, and every sample (MeasureSince turned into milliseconds, as SPIRE does).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import empty_pb2

from proto_gen.spire.metrics import metrics_pb2, metrics_pb2_grpc

METRICS_SERVICE = "spire.hostservice.common.metrics.v1.Metrics"

Key = tuple[str, ...]
LabelSet = frozenset[tuple[str, str]]


def labels_of(labels: Mapping[str, str] | None = None) -> LabelSet:
    return frozenset((labels or {}).items())


@dataclass(frozen=True)
class Call:
    method: str
    key: Key
    value: float
    labels: LabelSet


class RecordingMetrics(metrics_pb2_grpc.MetricsServicer):
    """SPIRE's Metrics host service, keeping what it was told. `fail_with` makes every call fail."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.fail_with: grpc.StatusCode | None = None
        self.failed_calls = 0
        self._cond = threading.Condition()

    def _record(self, method: str, request: Any, value: float, context: grpc.ServicerContext) -> Any:
        if self.fail_with is not None:
            with self._cond:
                self.failed_calls += 1
            context.abort(self.fail_with, "the host service is failing (test)")
        labels = frozenset((label.name, label.value) for label in getattr(request, "labels", ()))
        with self._cond:
            self.calls.append(Call(method, tuple(request.key), value, labels))
            self._cond.notify_all()
        return empty_pb2.Empty()

    def SetGauge(self, request: metrics_pb2.SetGaugeRequest, context: grpc.ServicerContext) -> Any:
        return self._record("SetGauge", request, request.val, context)

    def EmitKey(self, request: metrics_pb2.EmitKeyRequest, context: grpc.ServicerContext) -> Any:
        return self._record("EmitKey", request, request.val, context)

    def IncrCounter(self, request: metrics_pb2.IncrCounterRequest, context: grpc.ServicerContext) -> Any:
        return self._record("IncrCounter", request, request.val, context)

    def AddSample(self, request: metrics_pb2.AddSampleRequest, context: grpc.ServicerContext) -> Any:
        return self._record("AddSample", request, request.val, context)

    def MeasureSince(self, request: metrics_pb2.MeasureSinceRequest, context: grpc.ServicerContext) -> Any:
        # As SPIRE's telemetry: the time from `time` (Unix ns) to now, in milliseconds.
        return self._record("MeasureSince", request, (time.time_ns() - request.time) / 1e6, context)

    # -- what SPIRE would show ---------------------------------------------------------------------

    def snapshot(self) -> list[Call]:
        with self._cond:
            return list(self.calls)

    def counter(self, key: Key, labels: Mapping[str, str] | None = None) -> float:
        wanted = labels_of(labels)
        return sum(
            c.value
            for c in self.snapshot()
            if c.method == "IncrCounter" and c.key == key and c.labels == wanted
        )

    def gauge(self, key: Key, labels: Mapping[str, str] | None = None) -> float | None:
        wanted = labels_of(labels)
        values = [
            c.value for c in self.snapshot() if c.method == "SetGauge" and c.key == key and c.labels == wanted
        ]
        return values[-1] if values else None

    def samples(self, key: Key, labels: Mapping[str, str] | None = None) -> list[float]:
        wanted = labels_of(labels)
        return [
            c.value
            for c in self.snapshot()
            if c.method in ("MeasureSince", "AddSample") and c.key == key and c.labels == wanted
        ]

    def label_sets(self, key: Key) -> set[LabelSet]:
        return {c.labels for c in self.snapshot() if c.key == key}

    def metric_keys(self) -> set[Key]:
        return {c.key for c in self.snapshot()}

    def wait_for(self, condition: Callable[[RecordingMetrics], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() >= deadline:
                keys = sorted(".".join(key) for key in self.metric_keys())
                raise AssertionError(f"metrics not as expected within {timeout:g} s; keys so far: {keys}")
            time.sleep(0.05)


class HostServices:
    """The host-services server SPIRE starts for each plugin (only Metrics here). Stops on exit."""

    def __init__(self) -> None:
        self.metrics = RecordingMetrics()
        self._dir = tempfile.mkdtemp(prefix="host-services")
        self.address = os.path.join(self._dir, "host.sock")
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="host"))
        metrics_pb2_grpc.add_MetricsServicer_to_server(self.metrics, self._server)
        self._server.add_insecure_port(f"unix:{self.address}")
        self._server.start()

    def plugin_args(self) -> dict[str, Any]:
        """start_plugin's arguments that make the test host offer these services, as SPIRE does."""
        return {"host_services_address": self.address, "host_service_names": [METRICS_SERVICE]}

    def stop(self) -> None:
        self._server.stop(grace=None).wait(5.0)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> HostServices:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
