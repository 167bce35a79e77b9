"""Logging as hclog JSON lines on stderr, which SPIRE turns into its own structured log entries.

SPIRE panics if `@level`, `@message` or `@timestamp` is not a JSON string, and logs any non-JSON line at
DEBUG (where a Python traceback would vanish), so every line this process writes to stderr goes through
`HclogFormatter`, uncaught exceptions included.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import threading
import traceback
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from plugin.errors import one_line

_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}
TRACE = 5
_FIELDS_ATTR = "hclog_fields"
REDACTED = "[REDACTED]"


class _Redactor:
    """Replaces known secret values wherever they would appear in a log line."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()

    def register(self, secrets: Iterable[str]) -> None:
        with self._lock:
            self._secrets = self._secrets | {s for s in secrets if len(s) >= 4}

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


redact = _Redactor()


def register_secrets(*secrets: str) -> None:
    """Never let these strings reach a log line (e.g. a secret access key from the configuration)."""
    redact.register(secrets)


def _timestamp(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class HclogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "@level": _LEVELS.get(record.levelno, "trace" if record.levelno < logging.DEBUG else "error"),
            "@message": record.getMessage(),
            "@timestamp": _timestamp(record.created),
            "@module": record.name,
        }
        for key, value in getattr(record, _FIELDS_ATTR, {}).items():
            line[key] = _jsonable(value)
        if record.exc_info:
            line["error"] = "".join(traceback.format_exception(*record.exc_info)).strip()
        return redact(json.dumps(line, ensure_ascii=False))


class Logger:
    """A thin structured logger: `log.info("Key created", key_id="x509-CA-A", key_arn=arn)`."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, message: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, message, extra={_FIELDS_ATTR: fields}, exc_info=exc_info)

    def trace(self, message: str, **fields: Any) -> None:
        self._log(TRACE, message, fields)

    def debug(self, message: str, **fields: Any) -> None:
        self._log(logging.DEBUG, message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._log(logging.INFO, message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._log(logging.WARNING, message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._log(logging.ERROR, message, fields)

    def exception(self, message: str, **fields: Any) -> None:
        self._log(logging.ERROR, message, fields, exc_info=True)


def get_logger(name: str) -> Logger:
    return Logger(name)


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, thread: str = "main"
) -> None:
    logging.getLogger("plugin").error(
        "Uncaught exception", exc_info=(exc_type, exc, tb), extra={_FIELDS_ATTR: {"thread": thread}}
    )


def _log_uncaught_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        name = args.thread.name if args.thread else "unknown"
        _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback, name)


# Libraries whose log lines keep their message but never carry a traceback.
_LIBRARIES = ("botocore", "boto3", "urllib3")
_CAUSE_CHARS = 240


class _NoLibraryTracebacks(logging.Filter):
    """botocore logs some failures with their traceback before it raises them ("Refreshing temporary
    credentials failed during mandatory refresh period." when STS refuses a web identity token); the
    plugin reports those itself, coded (`plugin.awsclient.translate`). The line stays, with what failed on
    one line in `error` instead of a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.split(".")[0] in _LIBRARIES:
            failure = record.exc_info[1]
            record.exc_info = None
            record.exc_text = None
            if failure is not None:
                fields = dict(getattr(record, _FIELDS_ATTR, {}))
                text = one_line(str(failure), _CAUSE_CHARS)
                fields["error"] = f"{type(failure).__name__}: {text}" if text else type(failure).__name__
                setattr(record, _FIELDS_ATTR, fields)
        return True


def setup(level: int = logging.DEBUG) -> None:
    """Send all logging, and uncaught exceptions, to stderr as hclog JSON; SPIRE filters by its own level."""
    logging.addLevelName(TRACE, "TRACE")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(HclogFormatter())
    handler.addFilter(_NoLibraryTracebacks())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore's debug output includes request bodies and signed headers: keep it out.
    for noisy in ("botocore", "boto3", "urllib3", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_thread
