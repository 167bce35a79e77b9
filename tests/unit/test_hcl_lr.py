"""The HCL parser of plugin_data, assembled from the committed LR tables instead of built at start-up."""

from __future__ import annotations

import pytest
from hcl.ply import yacc

from plugin import hcl_lr
from plugin.config import LiteralHclParser
from plugin.hcl_tables import TABLES

TEXTS = [
    'region = "us-east-1"',
    'region = "us-east-1"\nkey_tags { team = "spire", env = "prod" }\n',
    "a = 1\nb = -2.5\nc = true\nd = [1, 2, [3]]\ne = 0x1f\n",
    'block "label" { nested { x = "y" } }\nblock "label" { x = 1 }',
    "# comment\n/* multi\nline */\nx = <<EOF\nheredoc\nEOF\n",
    'x = "a" + "b"',
    'region "us-east-1"',
    "x = ",
    "{ = 1",
    "x = [1, 2,, 3]",
]


def _plain(value: object) -> object:
    """A parse result as comparable values: pairs, lists, names and expressions spelled out."""
    if hasattr(value, "pairs"):
        return ("pairs", [(_plain(key), _plain(item)) for key, item in value.pairs])
    if isinstance(value, dict):
        return ("dict", [(_plain(key), _plain(item)) for key, item in value.items()])
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return (type(value).__name__, value if isinstance(value, str | int | float | bool) else str(value))


def _outcome(parser: object, text: str) -> object:
    try:
        return _plain(parser.parse(text))  # type: ignore[attr-defined]
    except ValueError as err:
        return ("error", str(err))


def test_the_committed_tables_are_those_of_the_grammar() -> None:
    # Fails after a change of the grammar's actions or of pyhcl: run scripts/gen_hcl_tables.py.
    assert hcl_lr.Tables.built(LiteralHclParser) == TABLES
    assert TABLES.pyhcl_version == "0.4.5"


@pytest.mark.parametrize("text", TEXTS)
def test_a_parser_from_the_tables_parses_as_pyhcl_builds_it(text: str) -> None:
    built = LiteralHclParser()
    assembled = hcl_lr.parser(LiteralHclParser, TABLES)
    assert _outcome(assembled, text) == _outcome(built, text)


def test_assembling_a_parser_computes_no_table(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("LR tables computed")

    monkeypatch.setattr(yacc, "LRTable", refuse)
    with pytest.raises(AssertionError, match="LR tables computed"):
        LiteralHclParser()
    parser = hcl_lr.parser(LiteralHclParser, TABLES)
    assert _plain(parser.parse('region = "us-east-1"')) == (
        "pairs",
        [(("_Name", "region"), ("str", "us-east-1"))],
    )


def test_each_assembled_parser_keeps_its_own_parse_state() -> None:
    first = hcl_lr.parser(LiteralHclParser, TABLES)
    second = hcl_lr.parser(LiteralHclParser, TABLES)
    with pytest.raises(ValueError):
        first.parse("x = ")
    assert _plain(second.parse("x = 1")) == ("pairs", [(("_Name", "x"), ("int", 1))])
    assert _plain(first.parse("y = 2")) == ("pairs", [(("_Name", "y"), ("int", 2))])
