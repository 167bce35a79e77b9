"""Time, as the background work sees it. Code that waits or compares dates takes a `Clock`, so tests can
make days pass in milliseconds (tests/support/fake_clock.py) without touching the host clock."""

from __future__ import annotations

import datetime
import threading
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime.datetime:
        """The current time, timezone-aware (UTC)."""
        ...

    def sleep(self, seconds: float, stop: threading.Event) -> bool:
        """Wait `seconds`, or until `stop` is set; True when it was stopped."""
        ...


class SystemClock:
    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    def sleep(self, seconds: float, stop: threading.Event) -> bool:
        return stop.wait(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()
