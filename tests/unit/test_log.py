"""Log lines are hclog JSON that SPIRE can ingest, and secrets never reach them."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from plugin import log

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    buffer = io.StringIO()
    monkeypatch.setattr("sys.stderr", buffer)
    log.setup()
    return buffer


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("method", "level"),
    [("trace", "trace"), ("debug", "debug"), ("info", "info"), ("warn", "warn"), ("error", "error")],
)
def test_levels_and_required_string_fields(stderr: io.StringIO, method: str, level: str) -> None:
    logger = log.get_logger("test")
    logging.getLogger().setLevel(log.TRACE)
    getattr(logger, method)("Key created", key_id="x509-CA-A", count=3, data=b"\x00")
    (line,) = lines(stderr)
    assert line["@level"] == level
    assert line["@message"] == "Key created"
    assert isinstance(line["@timestamp"], str) and TIMESTAMP.match(line["@timestamp"])
    assert line["key_id"] == "x509-CA-A"
    assert line["count"] == 3
    assert line["data"] == "b'\\x00'"


def test_exceptions_are_one_json_line(stderr: io.StringIO) -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.get_logger("test").exception("Unexpected failure")
    (line,) = lines(stderr)
    assert line["@level"] == "error"
    assert "ValueError: boom" in str(line["error"])


def test_registered_secrets_are_redacted(stderr: io.StringIO) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    log.register_secrets(secret)
    log.get_logger("test").error(f"call failed with {secret}", detail=f"key={secret}")
    output = stderr.getvalue()
    assert secret not in output
    assert output.count(log.REDACTED) == 2


def test_library_failures_are_logged_on_one_line_without_a_traceback(stderr: io.StringIO) -> None:
    # What botocore does when STS refuses a web identity token during a mandatory refresh; the plugin
    # reports the failure itself, coded.
    try:
        raise RuntimeError("An error occurred (InvalidIdentityToken)\nwhen calling AssumeRoleWithWebIdentity")
    except RuntimeError:
        logging.getLogger("botocore.credentials").warning(
            "Refreshing temporary credentials failed during %s refresh period.", "mandatory", exc_info=True
        )
    output = stderr.getvalue()
    (line,) = lines(stderr)
    assert line["@level"] == "warn"
    assert line["@message"] == "Refreshing temporary credentials failed during mandatory refresh period."
    assert line["error"] == (
        "RuntimeError: An error occurred (InvalidIdentityToken) when calling AssumeRoleWithWebIdentity"
    )
    assert "Traceback" not in output


def test_the_plugins_own_unexpected_failures_keep_their_traceback(stderr: io.StringIO) -> None:
    try:
        raise ValueError("a bug")
    except ValueError:
        log.get_logger("plugin.service").exception("Unexpected failure")
    (line,) = lines(stderr)
    assert "Traceback" in str(line["error"])
