"""The commands' output: tables aligned for people, and secrets never printed; the IAM table as `check`
reads it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from plugin.cli import output
from plugin.cli.permissions import for_operation, required
from plugin.config import parse_config
from tests.conftest import ROOT


def test_columns_line_up_and_the_last_one_is_free_text() -> None:
    text = output.table(
        ("STATUS", "CHECK", "DETAIL"),
        [("ok", "credentials", "from the environment"), ("FAIL", "key JWT-Signer-A", "kms:Sign denied")],
    )
    lines = text.splitlines()
    assert lines == [
        "STATUS  CHECK             DETAIL",
        "ok      credentials       from the environment",
        "FAIL    key JWT-Signer-A  kms:Sign denied",
    ]


def test_no_trailing_spaces_when_the_last_column_is_empty() -> None:
    assert output.table(("A", "B"), [("long value", "")]).splitlines()[1] == "long value"


def test_a_guarded_secret_is_redacted_from_tables_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FQoGZXIvYXdzEXAMPLEtoken")
    output.guard_secrets("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    text = output.table(("A",), [("AWS said: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",)])
    document = output.to_json({"message": "token FQoGZXIvYXdzEXAMPLEtoken"})
    assert "EXAMPLEKEY" not in text and "[REDACTED]" in text
    assert "EXAMPLEtoken" not in document and json.loads(document) == {"message": "token [REDACTED]"}


@pytest.mark.parametrize(
    ("plugin_data", "also", "never"),
    [
        (
            'region = "r"',
            {"kms:Sign", "kms:CreateKey", "kms:ScheduleKeyDeletion"},
            {"kms:ListKeys", "kms:DeleteAlias"},
        ),
        ('region = "r"\nkey_tags = { a = "b" }', {"kms:TagResource"}, {"kms:ListKeys"}),
        (
            'region = "r"\nkey_identifier_value = "s"',
            {"kms:DeleteAlias", "kms:ListKeys"},
            {"tag:GetResources"},
        ),
        (
            'region = "r"\nkey_identifier_value = "s"\nenable_tag_based_key_discovery = true',
            {"kms:DeleteAlias", "kms:TagResource", "tag:GetResources"},
            {"kms:ListKeys"},
        ),
        ('region = "r"\nrole_arn = "arn:aws:iam::123456789012:role/r"', {"sts:AssumeRole"}, {"kms:ListKeys"}),
    ],
)
def test_the_permissions_each_mode_needs_are_the_readmes(
    plugin_data: str, also: set[str], never: set[str]
) -> None:
    actions = {permission.action for permission in required(parse_config(plugin_data, "example.org"))}
    assert also <= actions and not never & actions
    assert {"kms:ListAliases", "kms:DescribeKey", "kms:GetPublicKey", "kms:UpdateAlias"} <= actions


def test_only_harmless_permissions_are_tried() -> None:
    config = parse_config('region = "r"\nkey_identifier_value = "s"\nkey_tags = { a = "b" }', "example.org")
    harmless = {p.action for p in required(config) if p.harmless}
    assert harmless == {"kms:ListAliases", "kms:DescribeKey", "kms:GetPublicKey", "kms:Sign", "kms:ListKeys"}


def test_operations_name_their_iam_actions() -> None:
    assert [for_operation(o) for o in ("Sign", "GetResources", "AssumeRole")] == [
        "kms:Sign",
        "tag:GetResources",
        "sts:AssumeRole",
    ]


def test_what_spire_starts_never_loads_the_commands() -> None:
    # Everything serving imports, up to the first Configure (which loads the botocore adapter).
    probe = (
        "import sys, plugin.__main__, plugin.goplugin, plugin.service, plugin.kms; "
        "print(sorted(m for m in sys.modules if m.startswith('plugin.cli')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert loaded.stdout.strip() == "[]"
