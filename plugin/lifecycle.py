"""Background work on keys. For now: the queue that schedules deletion of keys SPIRE no longer uses."""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from plugin.kmsapi import ALREADY_GONE, Kms, KmsError
from plugin.log import get_logger

log = get_logger("lifecycle")

MIN_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0


@dataclass(frozen=True)
class _Deletion:
    kms: Kms
    key_arn: str
    window_days: int
    reason: str


class DeletionQueue:
    """Schedules key deletions off the request path, retrying with backoff until KMS accepts the request
    or says the key is already gone or pending deletion. A deletion lost to a crash leaves an unaliased key
    that the disposal sweep finds later."""

    def __init__(self, wait: Callable[[threading.Event, float], bool] | None = None) -> None:
        self._queue: queue.Queue[_Deletion | None] = queue.Queue()
        self._stopped = threading.Event()
        self._wait = wait or (lambda event, seconds: event.wait(seconds))
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="key-deletion", daemon=True)
        self._thread.start()

    def enqueue(self, kms: Kms, key_arn: str, window_days: int, reason: str) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(_Deletion(kms, key_arn, window_days, reason))

    def stop(self) -> None:
        self._stopped.set()
        self._queue.put(None)

    def wait_idle(self, timeout: float) -> bool:
        """True once every enqueued deletion was accepted or given up (tests and orderly shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _run(self) -> None:
        while not self._stopped.is_set():
            item = self._queue.get()
            if item is None:
                return
            self._delete(item)
            self._done()

    def _delete(self, item: _Deletion) -> None:
        backoff = MIN_BACKOFF_SECONDS
        while not self._stopped.is_set():
            try:
                item.kms.schedule_key_deletion(item.key_arn, item.window_days)
                log.info(
                    "Key scheduled for deletion",
                    key_arn=item.key_arn,
                    pending_window_days=item.window_days,
                    reason=item.reason,
                )
                return
            except KmsError as err:
                if err.code in ALREADY_GONE:
                    log.debug("Key already deleted or pending deletion", key_arn=item.key_arn, code=err.code)
                    return
                log.warn(
                    "Failed to schedule key deletion; will retry",
                    key_arn=item.key_arn,
                    error=str(err),
                    retry_in_seconds=round(backoff, 1),
                )
            if self._wait(self._stopped, backoff * random.uniform(0.5, 1.0)):
                log.error("Key deletion abandoned at shutdown", key_arn=item.key_arn)
                return
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
