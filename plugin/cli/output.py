"""What the commands print: aligned tables for people, JSON for scripts, and never a secret."""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from plugin.log import redact, register_secrets

# The environment's own credentials: an error text that echoed one (none should) is redacted all the same.
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
COLUMN_GAP = "  "


def guard_secrets(*secrets: str | None) -> None:
    """Never print these, nor the secrets the environment holds."""
    register_secrets(*(s for s in (*secrets, *(os.environ.get(v) for v in _SECRET_VARIABLES)) if s))


def redact_text(text: str) -> str:
    return redact(text)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last column is not padded (it holds free text)."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    text = [
        COLUMN_GAP.join(cell.ljust(width) for cell, width in zip(line[:-1], widths[:-1], strict=True))
        + COLUMN_GAP
        + line[-1]
        for line in lines
    ]
    return redact("\n".join(line.rstrip() for line in text) + "\n")


def to_json(document: Any) -> str:
    return redact(json.dumps(document, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def _jsonable(value: object) -> object:
    if isinstance(value, datetime.datetime):
        return timestamp(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def timestamp(moment: datetime.datetime) -> str:
    """ISO 8601 in UTC, to the second: for JSON."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def short_time(moment: datetime.datetime | None) -> str:
    """UTC to the minute: for tables."""
    return "-" if moment is None else moment.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%MZ")
