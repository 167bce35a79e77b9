"""A clock that only moves when a test says so, for the background work (`plugin.clock.Clock`).

Threads sleeping on it wake when `advance` carries the time past their deadline, or when their stop event
is set, so a test can make weeks pass and then wait for the background work to settle.
"""

from __future__ import annotations

import datetime
import threading

_POLL_SECONDS = 0.01


class ManualClock:
    def __init__(self, start: datetime.datetime | None = None) -> None:
        self._now = start or datetime.datetime.now(datetime.UTC)
        self._changed = threading.Condition()

    def now(self) -> datetime.datetime:
        with self._changed:
            return self._now

    def advance(self, seconds: float = 0, *, hours: float = 0, days: float = 0) -> datetime.datetime:
        with self._changed:
            self._now += datetime.timedelta(seconds=seconds, hours=hours, days=days)
            self._changed.notify_all()
            return self._now

    def set(self, moment: datetime.datetime) -> None:
        with self._changed:
            self._now = moment
            self._changed.notify_all()

    def sleep(self, seconds: float, stop: threading.Event) -> bool:
        with self._changed:
            deadline = self._now + datetime.timedelta(seconds=max(0.0, seconds))
            while self._now < deadline:
                if stop.is_set():
                    return True
                # A stop event cannot notify this condition: look at it often.
                self._changed.wait(_POLL_SECONDS)
        return stop.is_set()
