"""The time SPIRE gave the current request, visible to the KMS adapter without passing it through every
call. The gRPC layer opens a scope per request; code outside any scope (start-up, background tasks) has
no deadline and falls back to bounded retries."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


@contextmanager
def scope(seconds_remaining: float | None) -> Iterator[None]:
    """Within this block, `remaining()` counts down from `seconds_remaining` (None: no deadline)."""
    token = _deadline.set(None if seconds_remaining is None else time.monotonic() + seconds_remaining)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the current request's deadline, or None when it has none."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()
