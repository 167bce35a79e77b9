"""What the plugin measures, named as SPIRE names its own metrics, and the narrow sink it reports to.

SPIRE offers every plugin its telemetry as a host service (`plugin.hostmetrics`); when it does, the sink
reaches SPIRE's metrics, which put SPIRE's prefix (`spire_server`) in front of every key. When it does not,
every report goes to `NO_METRICS` and costs a method call. The core and the KMS adapter only ever see the
`Metrics` protocol below: they never block on, or fail because of, telemetry.

Names follow SPIRE's `pkg/common/telemetry`: lower-case snake-case key parts under the subsystem
(`server_key_manager`, as SPIRE's own KeyManager call metrics), then this plugin (`aws_kms`); a call is a
counter plus an `elapsed_time` sample with a `status` label, `OK` when it succeeded. Here a failed KMS call's
status is the AWS error code (`ThrottlingException`), which is what an operator acts on. Every metric keeps
the same label names on every report: SPIRE's Prometheus endpoint fails when one name comes with two sets.
"""

from __future__ import annotations

import re
import time
from typing import Protocol

Key = tuple[str, ...]
Labels = tuple[tuple[str, str], ...]

PREFIX: Key = ("server_key_manager", "aws_kms")
ELAPSED_TIME = "elapsed_time"
STATUS = "status"
OK = "OK"
FAILED = "Failed"

# Gauges: keys this server uses, replaced keys waiting for KMS to accept their deletion, and whether the
# circuit breaker in front of KMS is open (1) or closed (0).
KEYS: Key = (*PREFIX, "keys")
DELETIONS_PENDING: Key = (*PREFIX, "deletions_pending")
CIRCUIT_BREAKER_OPEN: Key = (*PREFIX, "kms", "circuit_breaker_open")
# Background passes (built-in naming scheme): one count per pass with its status, and what each did.
HEARTBEAT_KEYS_REFRESHED: Key = (*PREFIX, "heartbeat", "keys_refreshed")
DISPOSAL_KEYS_SCHEDULED: Key = (*PREFIX, "disposal", "keys_scheduled")
DISPOSAL_ALIASES_DELETED: Key = (*PREFIX, "disposal", "aliases_deleted")
# Reports the sink had no room for (SPIRE's host service slower than the plugin's reports).
DROPPED: Key = (*PREFIX, "telemetry", "dropped")

# A label value is cut to this length: an error code from something that is not AWS must not flood SPIRE.
MAX_LABEL_CHARS = 64


class Metrics(Protocol):
    """Where the plugin reports. Implementations must return at once and never raise."""

    def incr_counter(self, key: Key, value: float = 1.0, labels: Labels = ()) -> None: ...

    def set_gauge(self, key: Key, value: float, labels: Labels = ()) -> None: ...

    def measure_since(self, key: Key, start: float, labels: Labels = ()) -> None:
        """A sample of the time since `start`, a `time.monotonic()` reading."""
        ...


class NoMetrics:
    """Reports nowhere: the plugin without SPIRE's Metrics host service."""

    def incr_counter(self, key: Key, value: float = 1.0, labels: Labels = ()) -> None:
        pass

    def set_gauge(self, key: Key, value: float, labels: Labels = ()) -> None:
        pass

    def measure_since(self, key: Key, start: float, labels: Labels = ()) -> None:
        pass


NO_METRICS = NoMetrics()


class Relay:
    """A sink whose destination is set later: the plugin's parts get it at start-up, and SPIRE's host
    service, when offered, is known only once SPIRE calls Init."""

    def __init__(self) -> None:
        self._target: Metrics = NO_METRICS

    @property
    def target(self) -> Metrics:
        return self._target

    def connect(self, target: Metrics) -> None:
        self._target = target

    def incr_counter(self, key: Key, value: float = 1.0, labels: Labels = ()) -> None:
        self._target.incr_counter(key, value, labels)

    def set_gauge(self, key: Key, value: float, labels: Labels = ()) -> None:
        self._target.set_gauge(key, value, labels)

    def measure_since(self, key: Key, start: float, labels: Labels = ()) -> None:
        self._target.measure_since(key, start, labels)


_WORD_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_OPERATION_KEYS: dict[str, Key] = {}
# The few calls that are not KMS's: who the credentials are, assuming a role, tag-based discovery.
_SERVICES = {"GetCallerIdentity": "sts", "AssumeRole": "sts", "GetResources": "tagging"}


def operation_key(operation: str) -> Key:
    """The key of one AWS operation: `Sign` -> (..., "kms", "sign"), `ScheduleKeyDeletion` ->
    (..., "kms", "schedule_key_deletion"), `GetCallerIdentity` -> (..., "sts", "get_caller_identity").
    Memoised: Sign asks for it per call."""
    key = _OPERATION_KEYS.get(operation)
    if key is None:
        # "Sign (STS AssumeRole)": a credential step failed on the way; the metric is still Sign's.
        name = operation.split(" ", 1)[0]
        key = (*PREFIX, _SERVICES.get(name, "kms"), _WORD_START.sub("_", name).lower())
        _OPERATION_KEYS[operation] = key
    return key


def status_labels(code: str) -> Labels:
    return ((STATUS, code[:MAX_LABEL_CHARS]),)


OK_LABELS = status_labels(OK)


def observe_call(metrics: Metrics, key: Key, start: float, code: str = OK) -> None:
    """One finished call, as SPIRE's CallCounter reports it: a count and its elapsed time, both with the
    call's status."""
    labels = OK_LABELS if code == OK else status_labels(code)
    metrics.incr_counter(key, 1.0, labels)
    metrics.measure_since((*key, ELAPSED_TIME), start, labels)


def observe_failed_attempt(
    metrics: Metrics, operation: str, code: str, throttled: bool, retried: bool
) -> None:
    """One attempt of a call that failed: counted as a throttle if KMS throttled it, and as a retry if
    another attempt follows."""
    key = operation_key(operation)
    if throttled:
        metrics.incr_counter((*key, "throttle"))
    if retried:
        metrics.incr_counter((*key, "retry"), 1.0, status_labels(code))


def now() -> float:
    """The clock `measure_since` starts are read from."""
    return time.monotonic()
