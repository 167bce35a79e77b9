"""The retry, deadline and fast-fail rules of the KMS client, as pure functions and a breaker."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import botocore.exceptions
import botocore.parsers
import pytest

from plugin import awsclient, deadline
from plugin.awsclient import (
    CONNECT_TIMEOUT_SECONDS,
    MAX_ATTEMPTS_WITHOUT_DEADLINE,
    MAX_BACKOFF_SECONDS,
    READ_TIMEOUT_SECONDS,
    Breaker,
    attempt_fits,
    backoff_seconds,
    is_retryable,
    read_timeout_for,
    retry_delay,
)
from plugin.kmsapi import KmsError


@pytest.mark.parametrize("attempts", range(1, 12))
def test_backoff_grows_exponentially_with_jitter_and_a_cap(attempts: int) -> None:
    ceiling = min(MAX_BACKOFF_SECONDS, 0.1 * 2 ** (attempts - 1))
    assert backoff_seconds(attempts, rand=lambda: 0.0) == pytest.approx(ceiling / 2)
    assert backoff_seconds(attempts, rand=lambda: 1.0) == pytest.approx(ceiling)


@dataclass(frozen=True)
class _Answer:
    status_code: int


def _verdict(status: int, code: str | None) -> bool:
    parsed = {"Error": {"Code": code, "Message": ""}} if code else {"Error": {"Code": str(status)}}
    return is_retryable(1, _Answer(status), parsed, None, None)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "ThrottlingException"),  # KMS over its request quota
        (400, "LimitExceededException"),
        (400, "TooManyRequestsException"),
        (400, "Throttling"),  # STS
        (429, None),
        (500, "KMSInternalException"),
        (503, "DependencyTimeoutException"),
        (500, "InternalFailure"),
        (500, None),
        (502, None),  # a proxy or load balancer, no AWS body
        (503, None),
        (504, None),
        (400, "RequestTimeoutException"),
    ],
)
def test_transient_answers_are_retryable(status: int, code: str | None) -> None:
    assert _verdict(status, code)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "AccessDeniedException"),
        (400, "NotFoundException"),
        (400, "DisabledException"),
        (400, "KMSInvalidStateException"),
        (400, "ValidationException"),
        (400, "InvalidKeyUsageException"),
        (400, "AlreadyExistsException"),
        (403, "AccessDenied"),
        (400, None),
        (501, None),
    ],
)
def test_refusals_are_not_retryable(status: int, code: str | None) -> None:
    assert not _verdict(status, code)


@pytest.mark.parametrize(
    "exception",
    [
        botocore.exceptions.EndpointConnectionError(endpoint_url="https://kms.us-east-1.amazonaws.com"),
        botocore.exceptions.ConnectTimeoutError(endpoint_url="https://kms.us-east-1.amazonaws.com"),
        botocore.exceptions.ReadTimeoutError(endpoint_url="https://kms.us-east-1.amazonaws.com"),
    ],
    ids=["refused", "connect timeout", "read timeout"],
)
def test_connection_failures_are_retryable(exception: BaseException) -> None:
    assert is_retryable(1, None, None, exception, None)


def test_retryable_failures_are_retried_while_time_allows() -> None:
    assert retry_delay(True, 1, remaining=30.0, pause=0.2) == 0.2
    assert retry_delay(True, 50, remaining=30.0, pause=0.2) == 0.2
    assert retry_delay(True, 1, remaining=CONNECT_TIMEOUT_SECONDS + 0.4, pause=0.2) is None


def test_other_failures_are_never_retried() -> None:
    assert retry_delay(False, 1, remaining=30.0, pause=0.1) is None
    assert retry_delay(False, 1, remaining=None, pause=0.1) is None


def test_without_a_deadline_attempts_are_bounded() -> None:
    delays = [retry_delay(True, n, None, 0.1) for n in range(1, 10)]
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


@dataclass
class _Request:
    context: dict[str, object]


@pytest.mark.parametrize(
    ("answer", "parsed", "code", "message"),
    [
        (_Answer(503), {"Error": {"Code": "", "Message": ""}}, "503", "(no time left to try again)"),
        (
            _Answer(400),
            {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}},
            "ThrottlingException",
            "Rate exceeded (no time left to try again)",
        ),
    ],
)
def test_a_retry_the_deadline_leaves_no_time_for_reports_the_failure_it_follows(
    answer: _Answer, parsed: dict[str, object], code: str, message: str
) -> None:
    # The pause before a retry fitted the deadline, but the retry finds it spent (a busy machine): the
    # caller hears what KMS answered last, not a bare timeout.
    policy = awsclient._Policy(Breaker(now=FakeTime()))
    context: dict[str, object] = {}
    with awsclient.deadline.scope(30.0):
        delay = policy.needs_retry(attempts=1, response=(answer, parsed), request_dict={"context": context})
    assert delay is not None
    with awsclient.deadline.scope(0.0), pytest.raises(awsclient.KmsError) as failed:
        policy.before_send(_Request(context))
    assert (failed.value.code, failed.value.message) == (code, message)


def test_a_first_attempt_with_no_time_left_is_a_timeout() -> None:
    policy = awsclient._Policy(Breaker(now=FakeTime()))
    with awsclient.deadline.scope(0.0), pytest.raises(awsclient.KmsError) as failed:
        policy.before_send(_Request({}))
    assert failed.value.code == "Timeout"


_SIGN = SimpleNamespace(name="Sign", service_model=SimpleNamespace(service_id="KMS"))


def _proxy_answer(status: int, body: bytes) -> dict[str, object]:
    parser = awsclient.GuardedParserFactory().create_parser("json")
    parsed: dict[str, object] = parser.parse({"status_code": status, "headers": {}, "body": body}, None)
    return parsed


@pytest.mark.parametrize(
    ("protocol", "status", "body"),
    [("json", 200, b"<html>hello</html>"), ("json", 400, b"\xff\xfe"), ("query", 200, b"garbage")],
)
def test_an_answer_the_parser_cannot_read_becomes_a_marked_error(
    protocol: str, status: int, body: bytes
) -> None:
    parser = awsclient.GuardedParserFactory().create_parser(protocol)
    parsed = parser.parse({"status_code": status, "headers": {}, "body": body}, None)
    assert parsed["Error"]["Code"] == "UnparseableResponse"
    assert awsclient.unparseable_error(parsed, _SIGN) is not None


def test_a_5xx_the_parser_cannot_read_keeps_its_status_as_the_code() -> None:
    assert awsclient.unparseable_error(_proxy_answer(502, b"upstream is down"), _SIGN) == (
        "502",
        'KMS Sign answered HTTP 502 with a body that is not an AWS answer: "upstream is down"',
    )


def test_an_aws_answer_is_parsed_as_botocore_would() -> None:
    parsed = _proxy_answer(200, b'{"KeyId": "k"}')
    assert awsclient.unparseable_error(parsed, _SIGN) is None


def test_only_a_short_excerpt_of_the_body_is_quoted() -> None:
    quoted = awsclient.excerpt(b"<html>\n  <body>" + b"x" * 10_000)
    assert quoted == '"<html> <body>' + "x" * 66 + '…"'


def test_an_answer_that_is_not_an_aws_answer_neither_opens_nor_closes_the_breaker() -> None:
    # It came at once (nothing to fail fast for) and not from KMS (no news that KMS is back).
    breaker = Breaker(threshold=3, now=FakeTime())
    policy = awsclient._Policy(breaker)
    answer = _proxy_answer(200, b"<html>portal</html>")
    breaker.failure("Timeout")
    breaker.failure("Timeout")
    with awsclient.deadline.scope(30.0):
        delay = policy.needs_retry(attempts=1, response=(_Answer(200), answer), operation=_SIGN)
    assert delay is not None, "retried"
    assert not breaker.is_open
    breaker.failure("Timeout")
    assert breaker.is_open
    with pytest.raises(botocore.exceptions.ClientError) as failed:
        policy.after_call(parsed=answer, model=_SIGN)
    assert failed.value.response["Error"]["Code"] == "UnparseableResponse"
    assert breaker.is_open


def test_a_parser_error_from_elsewhere_is_unparseable_and_bounded() -> None:
    def call() -> None:
        raise botocore.parsers.ResponseParserError(
            "Unable to parse response, invalid XML received:\n" + "x" * 5000
        )

    with pytest.raises(awsclient.KmsError) as failed:
        awsclient.translate("Sign", call)
    assert failed.value.code == "UnparseableResponse"
    assert len(failed.value.message) < 120


@pytest.mark.parametrize(
    ("service", "event", "operation"),
    [
        ("sts", "before-send.sts.AssumeRole", "ListAliases (STS AssumeRole)"),
        ("kms", "before-send.kms.ListAliases", "ListAliases"),
    ],
)
def test_a_retry_the_deadline_leaves_no_time_for_names_the_step_that_failed(
    service: str, event: str, operation: str
) -> None:
    # The pause before another attempt can end with too little time left for it: the error is then what
    # was said last, named as that answer itself would have been (STS's for a credential step).
    policy = awsclient._Policy(Breaker())
    policy.register(
        SimpleNamespace(meta=SimpleNamespace(events=SimpleNamespace(register=lambda *args: None))), service
    )
    said = ("UnparseableResponse", "answered HTTP 200 with a body that is not an AWS answer")
    request = SimpleNamespace(context={awsclient._LAST_FAILURE: said})
    with deadline.scope(0.1), pytest.raises(KmsError) as raised:
        awsclient.translate("ListAliases", lambda: policy.before_send(request, event_name=event))
    assert raised.value.operation == operation
    assert raised.value.code == "UnparseableResponse"
    assert (
        raised.value.message
        == "answered HTTP 200 with a body that is not an AWS answer (no time left to try again)"
    )
