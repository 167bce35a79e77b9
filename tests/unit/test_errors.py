"""How inputs are quoted back in errors and logs: escaped onto one line and bounded, whatever was sent."""

from __future__ import annotations

import pytest

from plugin.errors import one_line, quoted


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("x509-CA-A", '"x509-CA-A"'),
        ('a"b\\c\nd', '"a\\"b\\\\c\\nd"'),
        ("k" * 64, '"' + "k" * 64 + '"'),
        ("k" * 65, '"' + "k" * 64 + '..." (65 characters)'),
        # Unassigned code points escape to ten characters each: the escaped form is what is bounded.
        ("\U00018cd6" * 10_000, '"' + ("\\U00018cd6" * 7)[:64] + '..." (10000 characters)'),
        ("\ud800", '"\\ud800"'),
    ],
    ids=["plain", "quote, backslash, newline", "at the limit", "over it", "escapes over it", "surrogate"],
)
def test_quoted(value: str, shown: str) -> None:
    assert quoted(value) == shown


def test_one_line_joins_and_cuts() -> None:
    assert one_line("KMS\n  said\tno", 240) == "KMS said no"
    assert one_line("x" * 300, 240) == "x" * 239 + "…"
