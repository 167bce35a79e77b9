"""Errors the plugin's core raises. The gRPC layer maps each kind to one status code, once."""

from __future__ import annotations

import enum

# Inputs are quoted in errors and logs up to this many characters: enough for any key id SPIRE uses,
# small enough that a hostile megabyte comes back as a line, not a megabyte.
QUOTE_LIMIT = 64


def escaped(text: str) -> str:
    """`text` with quotes, backslashes and unprintable characters (newlines, surrogates) escaped: one
    line of UTF-8 whatever was given."""
    return "".join(
        char
        if char.isprintable() and char not in '"\\'
        else ("\\" + char if char in '"\\' else repr(char)[1:-1])
        for char in text
    )


def quoted(value: str, limit: int = QUOTE_LIMIT) -> str:
    """`value` in double quotes for an error or log line, escaped, and cut to `limit` characters of its
    escaped form (an escape is up to ten) with the length of what was given."""
    text = escaped(value[:limit])
    if len(value) <= limit and len(text) <= limit:
        return f'"{text}"'
    return f'"{text[:limit]}..." ({len(value)} characters)'


def one_line(text: str, limit: int) -> str:
    """Someone else's text (an AWS message, a decoder's complaint) on one line, cut at `limit`."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ErrorKind(enum.Enum):
    INVALID_ARGUMENT = "invalid argument"
    NOT_FOUND = "not found"
    FAILED_PRECONDITION = "failed precondition"
    PERMISSION_DENIED = "permission denied"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline exceeded"
    INTERNAL = "internal"


class PluginError(Exception):
    """An error whose message is safe to show SPIRE: it never carries a secret."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(PluginError):
    kind = ErrorKind.INVALID_ARGUMENT


class NotFound(PluginError):
    kind = ErrorKind.NOT_FOUND


class FailedPrecondition(PluginError):
    kind = ErrorKind.FAILED_PRECONDITION


class PermissionDenied(PluginError):
    kind = ErrorKind.PERMISSION_DENIED


class Unavailable(PluginError):
    kind = ErrorKind.UNAVAILABLE


class DeadlineExceeded(PluginError):
    kind = ErrorKind.DEADLINE_EXCEEDED


class Internal(PluginError):
    kind = ErrorKind.INTERNAL
