"""A metrics sink for tests: keeps every report the core, the adapter or the lifecycle makes, in order."""

from __future__ import annotations

import time

from plugin.metrics import Key, Labels


class Recorder:
    """Reports as (kind, key, value, labels): kind is "counter", "gauge" or "sample" (seconds since the
    start given, rounded to `sample_digits` when set, so that whole reports compare equal)."""

    def __init__(self, sample_digits: int | None = None) -> None:
        self.reports: list[tuple[str, Key, float, Labels]] = []
        self._sample_digits = sample_digits

    def incr_counter(self, key: Key, value: float = 1.0, labels: Labels = ()) -> None:
        self.reports.append(("counter", key, value, labels))

    def set_gauge(self, key: Key, value: float, labels: Labels = ()) -> None:
        self.reports.append(("gauge", key, value, labels))

    def measure_since(self, key: Key, start: float, labels: Labels = ()) -> None:
        elapsed = time.monotonic() - start
        if self._sample_digits is not None:
            elapsed = round(elapsed, self._sample_digits)
        self.reports.append(("sample", key, elapsed, labels))

    def counted(self, key: Key, labels: Labels = ()) -> float:
        return sum(v for kind, k, v, ls in self.reports if kind == "counter" and k == key and ls == labels)

    def gauges(self, key: Key) -> list[float]:
        return [v for kind, k, v, _ in self.reports if kind == "gauge" and k == key]

    def samples(self, key: Key, labels: Labels) -> list[float]:
        return [v for kind, k, v, ls in self.reports if kind == "sample" and k == key and ls == labels]
