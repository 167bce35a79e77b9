"""The emulator's clock: real time plus a settable offset.

Lifecycle tests (key rotation, deletion windows) need days to pass in a few milliseconds. Every date
the patched KMS backend hands out or compares against comes from this clock, so moving the offset
moves the emulator's notion of "now" without touching the host clock or the client's.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime


class EmulatorClock:
    """Wall-clock time shifted by an offset in seconds (thread-safe; the server is threaded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset_seconds = 0.0

    @property
    def offset_seconds(self) -> float:
        with self._lock:
            return self._offset_seconds

    def set_offset(self, seconds: float) -> None:
        with self._lock:
            self._offset_seconds = float(seconds)

    def reset(self) -> None:
        self.set_offset(0.0)

    def now(self) -> float:
        """The emulator's "now" as POSIX seconds, the unit KMS uses for dates in its JSON answers."""
        return time.time() + self.offset_seconds

    def now_naive_utc(self) -> datetime:
        """The emulator's "now" as a naive UTC datetime, the form moto stores on its models."""
        return datetime.fromtimestamp(self.now(), tz=UTC).replace(tzinfo=None)


# One emulator per process: the moto backends are process-global, so the clock that patches them is too.
CLOCK = EmulatorClock()
