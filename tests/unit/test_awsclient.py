"""The retry, deadline and fast-fail rules of the KMS client, as pure functions and a breaker."""

from __future__ import annotations

import pytest

from plugin import awsclient
from plugin.awsclient import (
    CONNECT_TIMEOUT_SECONDS,
    MAX_ATTEMPTS_WITHOUT_DEADLINE,
    MAX_BACKOFF_SECONDS,
    READ_TIMEOUT_SECONDS,
    RETRYABLE_CODES,
    Breaker,
    attempt_fits,
    backoff_seconds,
    read_timeout_for,
    retry_delay,
)


@pytest.mark.parametrize("attempts", range(1, 12))
def test_backoff_grows_exponentially_with_jitter_and_a_cap(attempts: int) -> None:
    ceiling = min(MAX_BACKOFF_SECONDS, 0.1 * 2 ** (attempts - 1))
    assert backoff_seconds(attempts, rand=lambda: 0.0) == pytest.approx(ceiling / 2)
    assert backoff_seconds(attempts, rand=lambda: 1.0) == pytest.approx(ceiling)


@pytest.mark.parametrize("code", sorted(RETRYABLE_CODES))
def test_transient_codes_are_retried_while_time_allows(code: str) -> None:
    assert retry_delay(code, 1, remaining=30.0, pause=0.2) == 0.2
    assert retry_delay(code, 50, remaining=30.0, pause=0.2) == 0.2
    assert retry_delay(code, 1, remaining=CONNECT_TIMEOUT_SECONDS + 0.4, pause=0.2) is None


@pytest.mark.parametrize(
    "code",
    ["AccessDeniedException", "NotFoundException", "DisabledException", "KMSInvalidStateException",
     "ValidationException", "InvalidKeyUsageException", "AlreadyExistsException", "NoCredentials"],
)  # fmt: skip
def test_permanent_codes_are_never_retried(code: str) -> None:
    assert retry_delay(code, 1, remaining=30.0, pause=0.1) is None
    assert retry_delay(code, 1, remaining=None, pause=0.1) is None


def test_without_a_deadline_attempts_are_bounded() -> None:
    delays = [retry_delay("ThrottlingException", n, None, 0.1) for n in range(1, 10)]
    assert delays == [0.1] * (MAX_ATTEMPTS_WITHOUT_DEADLINE - 1) + [None] * (
        10 - MAX_ATTEMPTS_WITHOUT_DEADLINE
    )


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [(None, READ_TIMEOUT_SECONDS), (60.0, READ_TIMEOUT_SECONDS), (5.0, 2.8), (2.5, 0.3), (1.0, 0.0)],
)
def test_read_timeout_shrinks_to_fit_the_deadline(remaining: float | None, expected: float) -> None:
    assert read_timeout_for(remaining) == pytest.approx(expected)
    assert attempt_fits(remaining) == (expected >= awsclient.MIN_ATTEMPT_SECONDS)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_transport_failures_and_probes() -> None:
    clock = FakeTime()
    breaker = Breaker(threshold=3, probe_interval=1.0, now=clock)
    for _ in range(2):
        breaker.failure("Unreachable")
        assert breaker.allow() and not breaker.is_open
    breaker.failure("Unreachable: connection refused")
    assert breaker.is_open
    assert breaker.last_error == "Unreachable: connection refused"
    assert not breaker.allow(), "fails fast right after opening"
    clock.now += 1.0
    assert breaker.allow(), "one probe per interval"
    assert not breaker.allow()
    breaker.success()
    assert not breaker.is_open
    assert all(breaker.allow() for _ in range(5))


def test_any_answer_resets_the_failure_count() -> None:
    breaker = Breaker(threshold=3, now=FakeTime())
    breaker.failure("Timeout")
    breaker.failure("Timeout")
    breaker.success()
    breaker.failure("Timeout")
    assert not breaker.is_open
