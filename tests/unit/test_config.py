"""plugin_data (HCL1) -> Config, every problem reported at once, naming the key; and the config's files."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugin.config
from plugin.config import (
    Config,
    ConfigError,
    ServerIdFile,
    ServerIdValue,
    StaticCredentials,
    check_files,
    load_server_id,
    naming_scheme,
    parse_config,
    read_key_policy,
    summary,
)
from plugin.naming import BuiltinScheme, CommunityScheme

TD = "example.org"
REGION = 'region = "us-east-1"\n'
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
UUID = "0b3f4e0a-6b3c-4d5e-8f70-123456789abc"
CHARSET = "alias names may only contain a-z, A-Z, 0-9, /, _ and -"
TAG_CHARSET = "letters, digits, spaces and _ . : / = + - @"


def expected(**fields: Any) -> Config:
    """The Config for `region = "us-east-1"` and nothing else, with some fields changed."""
    defaults: dict[str, Any] = {
        "region": "us-east-1",
        "credentials": None,
        "trust_domain": TD,
        "key_prefix": "SPIRE_SERVER_KEY/",
        "server_id": None,
        "key_policy_file": None,
        "key_tags": {},
        "deletion_window_days": 7,
        "warnings": (),
    }
    return Config(**(defaults | fields))


def problems_of(hcl_text: str, trust_domain: str = TD) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_config(hcl_text, trust_domain)
    return caught.value.problems


# --- valid configurations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hcl_text", "config"),
    [
        pytest.param(REGION, expected(), id="region only: community scheme, default prefix"),
        pytest.param('region = "eu-west-3"', expected(region="eu-west-3"), id="another region"),
        pytest.param('{"region": "us-east-1"}', expected(), id="JSON is HCL1 too"),
        pytest.param(
            REGION + 'access_key_id = "AKIDEXAMPLE"\nsecret_access_key = "' + SECRET + '"',
            expected(credentials=StaticCredentials("AKIDEXAMPLE", SECRET)),
            id="static credentials",
        ),
        pytest.param(
            REGION + 'key_prefix = "prod/spire/"', expected(key_prefix="prod/spire/"), id="key_prefix"
        ),
        pytest.param(REGION + 'key_prefix = "spire-"', expected(key_prefix="spire-"), id="prefix without /"),
        pytest.param(
            REGION + 'key_identifier_value = "server1"',
            expected(key_prefix=None, server_id=ServerIdValue("server1")),
            id="key_identifier_value",
        ),
        pytest.param(
            REGION + 'key_identifier_file = "/var/lib/spire/server-id"',
            expected(key_prefix=None, server_id=ServerIdFile("/var/lib/spire/server-id")),
            id="key_identifier_file",
        ),
        pytest.param(
            REGION + 'key_metadata_file = "/var/lib/spire/server-id"',
            expected(
                key_prefix=None,
                server_id=ServerIdFile("/var/lib/spire/server-id", "key_metadata_file"),
                warnings=("key_metadata_file is deprecated: use key_identifier_file instead",),
            ),
            id="key_metadata_file is the deprecated key_identifier_file",
        ),
        pytest.param(
            REGION + 'key_policy_file = "/etc/spire/policy.json"',
            expected(key_policy_file="/etc/spire/policy.json"),
            id="key_policy_file",
        ),
        pytest.param(
            REGION + 'key_tags { team = "identity" "cost center" = "42" }',
            expected(key_tags={"team": "identity", "cost center": "42"}),
            id="key_tags block",
        ),
        pytest.param(
            REGION + 'key_tags = { team = "identity" }',
            expected(key_tags={"team": "identity"}),
            id="key_tags map",
        ),
        pytest.param(
            REGION + 'key_tags { a = "1" }\nkey_tags { b = "2" }',
            expected(key_tags={"a": "1", "b": "2"}),
            id="key_tags blocks merge",
        ),
        pytest.param(
            REGION + 'key_tags = [{ a = "1" }, { b = "2" }]',
            expected(key_tags={"a": "1", "b": "2"}),
            id="key_tags list of maps",
        ),
        pytest.param(
            REGION + 'key_tags { "k_.:/=+-@ 9" = "" "Ünïcode" = "値" }',
            expected(key_tags={"k_.:/=+-@ 9": "", "Ünïcode": "値"}),
            id="every allowed tag character, empty value",
        ),
        pytest.param(
            REGION + 'key_tags { "a" = "' + "v" * 256 + '" "' + "k" * 128 + '" = "x" }',
            expected(key_tags={"a": "v" * 256, "k" * 128: "x"}),
            id="longest tag key and value",
        ),
        pytest.param(
            REGION + "key_tags {\n" + "".join(f'  t{i} = "v"\n' for i in range(50)) + "}",
            expected(key_tags={f"t{i}": "v" for i in range(50)}),
            id="50 tags",
        ),
        pytest.param(
            REGION + 'key_tags { "AWSX" = "a" "Spire-x" = "b" }',
            expected(key_tags={"AWSX": "a", "Spire-x": "b"}),
            id="near-reserved tag keys",
        ),
        pytest.param(REGION + "key_tags = []", expected(), id="no tags"),
        pytest.param(REGION + "deletion_window_days = 7", expected(), id="window 7"),
        pytest.param(REGION + "deletion_window_days = 30", expected(deletion_window_days=30), id="window 30"),
        pytest.param(
            "# comment\n" + REGION + "/* block */ deletion_window_days = 14 // trailing\n",
            expected(deletion_window_days=14),
            id="comments",
        ),
    ],
)
def test_valid_configurations(hcl_text: str, config: Config) -> None:
    parsed = parse_config(hcl_text, TD)
    assert parsed == config
    assert dict(parsed.key_tags) == dict(config.key_tags)


def test_trust_domain_is_not_needed_by_the_community_scheme() -> None:
    assert parse_config(REGION, "") == expected(trust_domain="")


def test_config_is_frozen_hashable_and_its_tags_read_only() -> None:
    config = parse_config(REGION + 'key_tags { a = "b" }', TD)
    assert hash(config) == hash(parse_config(REGION + 'key_tags { a = "b" }', TD))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.region = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.key_tags["c"] = "d"  # type: ignore[index]


# --- problems -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hcl_text", "problems"),
    [
        pytest.param("", ("region is required",), id="empty"),
        pytest.param("  \n\t\n", ("region is required",), id="whitespace only"),
        pytest.param('region = ""', ("region must not be empty",), id="empty region"),
        pytest.param('region = "  "', ("region must not be empty",), id="blank region"),
        pytest.param("region = 5", ("region must be a string, not a number",), id="region number"),
        pytest.param('region = ["us-east-1"]', ("region must be a string, not a list",), id="region list"),
        pytest.param("region = true", ("region must be a string, not a boolean",), id="region bool"),
        pytest.param("region { a = 1 }", ("region must be a string, not a block",), id="region block"),
        pytest.param('{"region": null}', ("region must be a string, not null",), id="region null"),
        pytest.param(
            'region = "us east 1"',
            ('region "us east 1" is invalid: expected a region name such as us-east-1',),
            id="region with spaces",
        ),
        pytest.param(
            'region = "-us-east-1"',
            ('region "-us-east-1" is invalid: expected a region name such as us-east-1',),
            id="region leading hyphen",
        ),
        pytest.param(
            REGION + 'regoin = "x"',
            ('unknown configuration key "regoin" (did you mean "region"?)',),
            id="typo gets a hint",
        ),
        pytest.param(
            REGION + 'bogus = 1\nalso_bogus { x = 1 }\nkey_identifer_file = "/x"',
            (
                'unknown configuration key "bogus"',
                'unknown configuration key "also_bogus"',
                'unknown configuration key "key_identifer_file" (did you mean "key_identifier_file"?)',
            ),
            id="every unknown key is named",
        ),
        pytest.param(
            REGION + 'access_key_id = "AKIDEXAMPLE"',
            ("secret_access_key is required when access_key_id is set",),
            id="access key without secret",
        ),
        pytest.param(
            REGION + f'secret_access_key = "{SECRET}"',
            ("access_key_id is required when secret_access_key is set",),
            id="secret without access key",
        ),
        pytest.param(
            REGION + f'access_key_id = ""\nsecret_access_key = "{SECRET}"',
            ("access_key_id must not be empty",),
            id="empty access key",
        ),
        pytest.param(
            REGION + 'access_key_id = "AKIDEXAMPLE"\nsecret_access_key = ""',
            ("secret_access_key must not be empty",),
            id="empty secret",
        ),
        pytest.param(
            REGION + f'access_key_id = 12\nsecret_access_key = ["{SECRET}"]',
            (
                "access_key_id must be a string, not a number",
                "secret_access_key must be a string, not a list",
            ),
            id="credential types",
        ),
        pytest.param(REGION + 'key_prefix = ""', ("key_prefix must not be empty",), id="empty key_prefix"),
        pytest.param(
            REGION + "key_prefix = 3", ("key_prefix must be a string, not a number",), id="prefix type"
        ),
        pytest.param(
            REGION + 'key_prefix = "a.b/"',
            (f'key_prefix "a.b/" is invalid: {CHARSET}',),
            id="key_prefix characters",
        ),
        pytest.param(
            REGION + 'key_prefix = "aws/"',
            (
                'key_prefix "aws/" is invalid: alias names must not start with alias/aws/ '
                "(reserved for AWS managed keys)",
            ),
            id="key_prefix reserved",
        ),
        pytest.param(
            REGION + f'key_prefix = "{"p" * 239}"',
            (
                f'key_prefix "{"p" * 64}..." (239 characters) is invalid: alias names may be at most 256 '
                "characters, and the alias for key JWT-Signer-A would have 257",
            ),
            id="key_prefix too long",
        ),
        pytest.param(
            REGION + 'key_prefix = "p/"\nkey_identifier_value = "s"',
            (
                "key_prefix and key_identifier_value cannot be used together: key_prefix selects the "
                "community naming scheme, key_identifier_value the built-in one",
            ),
            id="key_prefix with key_identifier_value",
        ),
        pytest.param(
            REGION + 'key_prefix = "p/"\nkey_identifier_file = "/f"',
            (
                "key_prefix and key_identifier_file cannot be used together: key_prefix selects the "
                "community naming scheme, key_identifier_file the built-in one",
            ),
            id="key_prefix with key_identifier_file",
        ),
        pytest.param(
            REGION + 'key_prefix = "p/"\nkey_metadata_file = "/f"',
            (
                "key_prefix and key_metadata_file cannot be used together: key_prefix selects the "
                "community naming scheme, key_metadata_file the built-in one",
            ),
            id="key_prefix with key_metadata_file",
        ),
        pytest.param(
            REGION + 'key_identifier_file = "/f"\nkey_identifier_value = "s"',
            (
                "key_identifier_file and key_identifier_value cannot be used together: "
                "give one server id source",
            ),
            id="file and value",
        ),
        pytest.param(
            REGION + 'key_metadata_file = "/f"\nkey_identifier_file = "/g"',
            ("key_metadata_file and key_identifier_file cannot be used together: give one server id source",),
            id="metadata file and file",
        ),
        pytest.param(
            REGION + 'key_metadata_file = "/f"\nkey_identifier_value = "s"',
            (
                "key_metadata_file and key_identifier_value cannot be used together: "
                "give one server id source",
            ),
            id="metadata file and value",
        ),
        pytest.param(
            REGION + 'key_identifier_value = ""',
            ("key_identifier_value must not be empty",),
            id="empty key_identifier_value",
        ),
        pytest.param(
            REGION + 'key_identifier_file = ""',
            ("key_identifier_file must not be empty",),
            id="empty key_identifier_file",
        ),
        pytest.param(
            REGION + 'key_metadata_file = ""',
            ("key_metadata_file must not be empty",),
            id="empty key_metadata_file",
        ),
        pytest.param(
            REGION + "key_identifier_value = 1",
            ("key_identifier_value must be a string, not a number",),
            id="key_identifier_value type",
        ),
        pytest.param(
            REGION + 'key_identifier_file = ["/f"]',
            ("key_identifier_file must be a string, not a list",),
            id="key_identifier_file type",
        ),
        pytest.param(
            REGION + 'key_identifier_value = "srv.1"',
            (f'key_identifier_value "srv.1" is invalid: {CHARSET}',),
            id="server id characters",
        ),
        pytest.param(
            REGION + f'key_identifier_value = "{"s" * 213}"',
            (
                f'key_identifier_value "{"s" * 64}..." (213 characters) is invalid: alias names may be at '
                "most 256 characters, and the alias for key JWT-Signer-A would have 257",
            ),
            id="server id too long",
        ),
        pytest.param(
            REGION + 'key_policy_file = ""',
            ("key_policy_file must not be empty",),
            id="empty key_policy_file",
        ),
        pytest.param(
            REGION + "key_policy_file = { a = 1 }",
            ("key_policy_file must be a string, not a block",),
            id="key_policy_file type",
        ),
        pytest.param(
            REGION + 'deletion_window_days = "7"',
            ("deletion_window_days must be a whole number of days, not a string",),
            id="window string",
        ),
        pytest.param(
            REGION + "deletion_window_days = 7.5",
            ("deletion_window_days must be a whole number of days, not a number",),
            id="window fraction",
        ),
        pytest.param(
            REGION + "deletion_window_days = true",
            ("deletion_window_days must be a whole number of days, not a boolean",),
            id="window bool",
        ),
        pytest.param(
            REGION + "deletion_window_days = 6",
            ("deletion_window_days must be between 7 and 30, not 6",),
            id="window 6",
        ),
        pytest.param(
            REGION + "deletion_window_days = 31",
            ("deletion_window_days must be between 7 and 30, not 31",),
            id="window 31",
        ),
        pytest.param(
            REGION + "deletion_window_days = -7",
            ("deletion_window_days must be between 7 and 30, not -7",),
            id="window negative",
        ),
    ],
)
def test_each_bad_setting_is_named(hcl_text: str, problems: tuple[str, ...]) -> None:
    assert problems_of(hcl_text) == problems


@pytest.mark.parametrize(
    ("key_tags", "problems"),
    [
        pytest.param(
            'key_tags = "team"',
            ("key_tags must be a map of tag names to string values, not a string",),
            id="string",
        ),
        pytest.param(
            'key_tags = ["a"]',
            ("key_tags must be a map of tag names to string values, not a list",),
            id="list of strings",
        ),
        pytest.param(
            "key_tags = 1",
            ("key_tags must be a map of tag names to string values, not a number",),
            id="number",
        ),
        pytest.param(
            "key_tags { a = 1 }", ('key_tags "a" must be a string, not a number',), id="number value"
        ),
        pytest.param(
            "key_tags { a = true }", ('key_tags "a" must be a string, not a boolean',), id="bool value"
        ),
        pytest.param(
            'key_tags { a { b = "c" } }', ('key_tags "a" must be a string, not a block',), id="nested"
        ),
        pytest.param(
            'key_tags { a = "1" a = "2" }',
            ('key_tags "a" is given twice',),
            id="repeated key in one block",
        ),
        pytest.param(
            'key_tags { a = "1" }\nkey_tags { a = "2" }',
            ('key_tags "a" is given twice',),
            id="repeated key across blocks",
        ),
        pytest.param(
            'key_tags { "" = "x" }',
            ('key_tags key "" is invalid: tag keys must be 1 to 128 characters long',),
            id="empty key",
        ),
        pytest.param(
            f'key_tags {{ "{"k" * 129}" = "x" }}',
            (
                f'key_tags key "{"k" * 64}..." (129 characters) is invalid: tag keys must be 1 to 128 '
                "characters long",
            ),
            id="long key",
        ),
        pytest.param(
            f'key_tags {{ a = "{"v" * 257}" }}',
            ('key_tags "a" has an invalid value: tag values may be at most 256 characters, not 257',),
            id="long value",
        ),
        pytest.param(
            'key_tags { "a!" = "x" }',
            (f'key_tags key "a!" is invalid: tag keys may only contain {TAG_CHARSET}',),
            id="key char",
        ),
        pytest.param(
            'key_tags { "a\tb" = "x" }',
            # Escaped: a problem is one line whatever the text held.
            (f'key_tags key "a\\tb" is invalid: tag keys may only contain {TAG_CHARSET}',),
            id="key tab",
        ),
        pytest.param(
            'key_tags { a = "x#y" }',
            (f'key_tags "a" has an invalid value: tag values may only contain {TAG_CHARSET}',),
            id="value char",
        ),
        pytest.param(
            'key_tags { "aws:created" = "x" }',
            ('key_tags key "aws:created" is reserved: tag keys starting with aws: belong to AWS',),
            id="aws: reserved",
        ),
        pytest.param(
            'key_tags { "AWS:x" = "x" }',
            ('key_tags key "AWS:x" is reserved: tag keys starting with aws: belong to AWS',),
            id="aws: reserved in any case",
        ),
        pytest.param(
            'key_tags { "spire-server" = "x" }',
            ('key_tags key "spire-server" is reserved: tag keys starting with spire- belong to this plugin',),
            id="spire- reserved",
        ),
        pytest.param(
            "key_tags {\n" + "".join(f'  t{i} = "v"\n' for i in range(51)) + "}",
            ("key_tags has 51 tags: KMS allows at most 50 tags per key",),
            id="51 tags",
        ),
        pytest.param(
            'key_tags { "aws:x!" = 5 }',
            (
                f'key_tags key "aws:x!" is invalid: tag keys may only contain {TAG_CHARSET}',
                'key_tags key "aws:x!" is reserved: tag keys starting with aws: belong to AWS',
                'key_tags "aws:x!" must be a string, not a number',
            ),
            id="several problems in one tag",
        ),
    ],
)
def test_key_tags_follow_kms_rules(key_tags: str, problems: tuple[str, ...]) -> None:
    assert problems_of(REGION + key_tags) == problems


@pytest.mark.parametrize(
    ("hcl_text", "trust_domain", "problems"),
    [
        pytest.param(
            REGION + 'key_identifier_value = "s"',
            "",
            (
                "trust_domain is required: the built-in naming scheme (key_identifier_value) "
                "puts it in alias names",
            ),
            id="value",
        ),
        pytest.param(
            REGION + 'key_identifier_file = "/f"',
            " ",
            (
                "trust_domain is required: the built-in naming scheme (key_identifier_file) "
                "puts it in alias names",
            ),
            id="file",
        ),
        pytest.param(
            REGION + 'key_metadata_file = "/f"',
            "",
            (
                "trust_domain is required: the built-in naming scheme (key_metadata_file) "
                "puts it in alias names",
            ),
            id="metadata file",
        ),
        pytest.param(
            REGION + 'key_identifier_file = "/f"',
            "t" * 188,
            (
                f'trust_domain "{"t" * 64}..." (188 characters) is invalid: alias names may be at most 256 '
                "characters, and the alias for key JWT-Signer-A would have 257",
            ),
            id="trust domain too long for UUID server ids",
        ),
        pytest.param(
            REGION + 'key_identifier_file = "/f"\nkey_metadata_file = "/g"',
            "bad td",
            (
                "key_metadata_file and key_identifier_file cannot be used together: "
                "give one server id source",
                f'trust_domain "bad td" is invalid: {CHARSET}',
            ),
            id="a trust domain problem is reported once",
        ),
        pytest.param(
            REGION + 'key_identifier_value = "srv.1"',
            "bad td",
            (
                f'trust_domain "bad td" is invalid: {CHARSET}',
                f'key_identifier_value "srv.1" is invalid: {CHARSET}',
            ),
            id="trust domain and server id both bad",
        ),
    ],
)
def test_trust_domain_problems_with_the_builtin_scheme(
    hcl_text: str, trust_domain: str, problems: tuple[str, ...]
) -> None:
    assert problems_of(hcl_text, trust_domain) == problems


def test_every_problem_is_reported_at_once() -> None:
    hcl_text = (
        "region = 1\n"
        'access_key_id = "AKIDEXAMPLE"\n'
        'key_prefix = "p/"\n'
        'key_identifier_value = "s"\n'
        'key_tags { "aws:x" = "y" }\n'
        "deletion_window_days = 3\n"
        "extra = true\n"
    )
    expected_problems = (
        'unknown configuration key "extra"',
        "region must be a string, not a number",
        "secret_access_key is required when access_key_id is set",
        "key_prefix and key_identifier_value cannot be used together: key_prefix selects the community "
        "naming scheme, key_identifier_value the built-in one",
        'key_tags key "aws:x" is reserved: tag keys starting with aws: belong to AWS',
        "deletion_window_days must be between 7 and 30, not 3",
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(hcl_text, TD)
    assert caught.value.problems == expected_problems
    assert str(caught.value) == "; ".join(expected_problems)


@pytest.mark.parametrize(
    ("hcl_text", "detail"),
    [
        pytest.param("region = ", "Unexpected end of file", id="missing value"),
        pytest.param(
            'region = "us-east-1',
            "Line 1, column 19, index 19: EOF before closing string quote",
            id="unterminated string",
        ),
        pytest.param('region "us-east-1"', "Unexpected end of file", id="missing equals"),
        pytest.param('region = "a" + "b"', "Line 1, column 13: unexpected ADD", id="expression"),
        pytest.param('{"region": }', "Expecting value: line 1 column 12 (char 11)", id="bad JSON"),
        pytest.param("region = @", "Line 1, column 9, index 9: Illegal character", id="illegal character"),
    ],
)
def test_hcl_syntax_errors_say_so_with_the_parser_detail(hcl_text: str, detail: str) -> None:
    (problem,) = problems_of(hcl_text)
    assert problem.startswith("the configuration is not valid HCL: ")
    assert detail in problem


def test_unexpected_parser_failures_are_named_without_their_text(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_parse(parser: object, text: str) -> object:
        raise TypeError(f"{SECRET} is of type str")

    monkeypatch.setattr(plugin.config.LiteralHclParser, "parse", failing_parse)
    assert problems_of(f'secret_access_key = "{SECRET}"') == (
        "the configuration is not valid HCL: the parser failed with TypeError",
    )


@pytest.mark.parametrize(
    "hcl_text",
    [
        pytest.param(REGION + f'access_key_id = "AKIDEXAMPLE"\nsecret_access_key = "{SECRET}"', id="valid"),
        pytest.param(f'secret_access_key = "{SECRET}"', id="missing region and access key"),
        pytest.param(f'secret_access_key = ["{SECRET}"]', id="secret as a list"),
        pytest.param(f'secret_access_key {{ v = "{SECRET}" }}', id="secret as a block"),
        pytest.param(f'secrett_access_key = "{SECRET}"', id="misspelt key"),
        pytest.param(f'secret_access_key = "{SECRET}" "{SECRET}"', id="syntax error after the secret"),
        pytest.param(f'secret_access_key = "{SECRET}', id="unterminated secret"),
        pytest.param(f"secret_access_key = {SECRET[:8]}@{SECRET[8:]}", id="illegal character in the secret"),
        pytest.param(f'{{"secret_access_key": "{SECRET}" x}}', id="JSON error after the secret"),
    ],
)
def test_secret_access_key_never_appears_in_messages(hcl_text: str) -> None:
    try:
        config = parse_config(hcl_text, TD)
    except ConfigError as err:
        shown = [str(err), repr(err), *err.problems]
    else:
        shown = [repr(config), str(config), repr(config.credentials)]
    for text in shown:
        assert SECRET not in text
        assert "@" not in text  # not even one character of it


def test_secret_is_kept_but_hidden_from_repr() -> None:
    credentials = StaticCredentials("AKIDEXAMPLE", SECRET)
    assert credentials.secret_access_key == SECRET
    assert repr(credentials) == "StaticCredentials(access_key_id='AKIDEXAMPLE')"


def test_config_error_lists_its_problems() -> None:
    err = ConfigError(["a is bad", "b is bad"])
    assert err.problems == ("a is bad", "b is bad")
    assert str(err) == "a is bad; b is bad"


# --- naming_scheme ------------------------------------------------------------------------------


def test_naming_scheme_community() -> None:
    config = parse_config(REGION + 'key_prefix = "p/"', TD)
    assert naming_scheme(config, None) == CommunityScheme("p/")


@pytest.mark.parametrize("setting", ['key_identifier_value = "s1"', 'key_identifier_file = "/f"'])
def test_naming_scheme_builtin(setting: str) -> None:
    config = parse_config(REGION + setting, TD)
    assert naming_scheme(config, "s1") == BuiltinScheme(TD, "s1")


def test_naming_scheme_builtin_needs_the_server_id() -> None:
    config = parse_config(REGION + 'key_identifier_file = "/f"', TD)
    with pytest.raises(ValueError, match="server id"):
        naming_scheme(config, None)


# --- key policy file ----------------------------------------------------------------------------


def test_read_key_policy_returns_the_text_verbatim(tmp_path: Path) -> None:
    text = '{\n  "Version": "2012-10-17",\n  "Statement": []\n}\n'
    path = tmp_path / "policy.json"
    path.write_text(text)
    assert read_key_policy(str(path)) == text


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(None, "cannot be read: No such file or directory", id="missing"),
        pytest.param(b"", "is not valid JSON: Expecting value: line 1 column 1 (char 0)", id="empty"),
        pytest.param(
            b"{not json",
            "is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
            id="not JSON",
        ),
        pytest.param(b"[]", "must hold a JSON object (a key policy), not an array", id="array"),
        pytest.param(b'"policy"', "must hold a JSON object (a key policy), not a string", id="string"),
        pytest.param(b"\xff\xfe{}", "cannot be read: it is not UTF-8 text", id="not UTF-8"),
        pytest.param(
            b'{"a": "' + b"x" * 32763 + b'"}',
            "is too large: KMS key policies may be at most 32768 bytes",
            id="too large",
        ),
    ],
)
def test_read_key_policy_problems_name_the_key(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "policy.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        read_key_policy(str(path))
    assert caught.value.problems == (f'key_policy_file "{path}" {problem}',)


def test_read_key_policy_at_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_bytes(b'{"a": "' + b"x" * 32759 + b'"}')
    assert len(read_key_policy(str(path))) == 32768


def test_read_key_policy_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        read_key_policy(str(tmp_path))
    assert caught.value.problems == (f'key_policy_file "{tmp_path}" is a directory, not a file',)


# --- server id ----------------------------------------------------------------------------------


def test_load_server_id_value_is_returned_as_is() -> None:
    assert load_server_id(ServerIdValue("server1")) == "server1"


def test_load_server_id_creates_a_private_uuid_file_and_reuses_it(tmp_path: Path) -> None:
    path = tmp_path / "server-id"
    created = load_server_id(ServerIdFile(str(path)))
    assert uuid.UUID(created).version == 4
    assert str(uuid.UUID(created)) == created
    assert path.read_text() == created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_server_id(ServerIdFile(str(path))) == created


def test_created_id_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "server-id"
    old = os.umask(0o277)
    try:
        load_server_id(ServerIdFile(str(path)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("content", "server_id"),
    [
        pytest.param(UUID, UUID, id="as SPIRE writes it"),
        pytest.param(UUID + "\n", UUID, id="trailing newline"),
        pytest.param(UUID.upper(), UUID, id="upper case, canonicalised like SPIRE"),
        pytest.param("{" + UUID + "}", UUID, id="braces"),
    ],
)
def test_load_server_id_reads_an_existing_file(tmp_path: Path, content: str, server_id: str) -> None:
    path = tmp_path / "server-id"
    path.write_text(content)
    assert load_server_id(ServerIdFile(str(path))) == server_id
    assert path.read_text() == content  # never rewritten


def test_load_server_id_uses_the_id_of_a_server_that_created_the_file_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "server-id"
    real_open = os.open

    def racing_open(file: str, flags: int, mode: int = 0o777) -> int:
        if file == str(path) and not path.exists():
            path.write_text(UUID)  # the other server wins the race
        return real_open(file, flags, mode)

    monkeypatch.setattr(os, "open", racing_open)
    assert load_server_id(ServerIdFile(str(path))) == UUID
    assert path.read_text() == UUID


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(b"", "does not hold a server id (a UUID)", id="empty"),
        pytest.param(b"server1", "does not hold a server id (a UUID)", id="not a UUID"),
        pytest.param(b"\xff\xfe", "does not hold a server id (a UUID)", id="binary"),
    ],
)
def test_load_server_id_bad_file(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "server-id"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_server_id(ServerIdFile(str(path)))
    assert caught.value.problems == (f'key_identifier_file "{path}" {problem}',)
    assert "server1" not in str(caught.value)  # the content is not echoed


def test_load_server_id_needs_the_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "server-id"
    with pytest.raises(ConfigError) as caught:
        load_server_id(ServerIdFile(str(path)))
    assert caught.value.problems == (
        f'key_identifier_file "{path}" cannot be created: No such file or directory',
    )
    assert not path.parent.exists()


def test_load_server_id_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_server_id(ServerIdFile(str(tmp_path)))
    assert caught.value.problems == (f'key_identifier_file "{tmp_path}" is a directory, not a file',)


# --- check_files (Validate) ---------------------------------------------------------------------


def config_with(key_policy_file: str | None = None, id_file: str | None = None) -> Config:
    if id_file is None:
        return expected(key_policy_file=key_policy_file)
    return expected(key_policy_file=key_policy_file, key_prefix=None, server_id=ServerIdFile(id_file))


def test_check_files_without_files() -> None:
    assert check_files(expected()) == []
    assert check_files(expected(key_prefix=None, server_id=ServerIdValue("s"))) == []


def test_check_files_all_good(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text("{}")
    existing = tmp_path / "existing-id"
    existing.write_text(UUID)
    absent = tmp_path / "absent-id"
    assert check_files(config_with(str(policy), str(existing))) == []
    assert check_files(config_with(str(policy), str(absent))) == []
    assert not absent.exists()  # Validate creates nothing


def test_check_files_reports_both_files(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text("[]")
    id_file = tmp_path / "server-id"
    id_file.write_text("nope")
    assert check_files(config_with(str(policy), str(id_file))) == [
        f'key_policy_file "{policy}" must hold a JSON object (a key policy), not an array',
        f'key_identifier_file "{id_file}" does not hold a server id (a UUID)',
    ]


def test_check_files_missing_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    assert check_files(config_with(str(policy))) == [
        f'key_policy_file "{policy}" cannot be read: No such file or directory'
    ]


def test_check_files_id_file_directory_missing(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "server-id"
    assert check_files(config_with(id_file=str(path))) == [
        f'key_identifier_file "{path}" cannot be created: directory "{path.parent}" does not exist'
    ]
    assert not path.parent.exists()


def test_check_files_id_file_directory_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulated: the suite may run as root, for whom every directory is writable.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    path = tmp_path / "server-id"
    assert check_files(config_with(id_file=str(path))) == [
        f'key_identifier_file "{path}" cannot be created: directory "{tmp_path}" is not writable'
    ]


def test_check_files_relative_id_file_in_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_files(config_with(id_file="server-id")) == []
    assert not (tmp_path / "server-id").exists()


def test_check_files_id_file_is_a_directory(tmp_path: Path) -> None:
    assert check_files(config_with(id_file=str(tmp_path))) == [
        f'key_identifier_file "{tmp_path}" is a directory, not a file'
    ]


# --- hostile files: each answered at once, without reading more than the limit -----------------------


def _answered_within(seconds: float, call: Callable[[], object]) -> object:
    """call()'s result or the exception it raised, failing the test if it does not return within `seconds`
    (its thread is left behind, a daemon, for the fixtures to free)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as err:
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        pytest.fail(f"no answer within {seconds} s")
    return outcome[0]


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    yield path
    # Frees a reader still blocked on it (only if the code under test opened it blocking).
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("key", ["key_policy_file", "key_identifier_file", "key_metadata_file"])
def test_a_named_pipe_is_refused_at_once(fifo: Path, key: str) -> None:
    if key == "key_policy_file":
        outcome = _answered_within(5, lambda: read_key_policy(str(fifo)))
    else:
        outcome = _answered_within(5, lambda: load_server_id(ServerIdFile(str(fifo), key)))
    assert isinstance(outcome, ConfigError)
    assert outcome.problems == (f'{key} "{fifo}" is a named pipe, not a file',)


def test_a_named_pipe_fails_validation_at_once(fifo: Path) -> None:
    config = config_with(key_policy_file=str(fifo), id_file=str(fifo))
    outcome = _answered_within(5, lambda: check_files(config))
    assert outcome == [
        f'key_policy_file "{fifo}" is a named pipe, not a file',
        f'key_identifier_file "{fifo}" is a named pipe, not a file',
    ]


def test_a_device_that_never_ends_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        read_key_policy("/dev/zero")
    assert caught.value.problems == ('key_policy_file "/dev/zero" is a character device, not a file',)


def test_a_huge_file_is_refused_without_reading_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "policy.json"
    with path.open("wb") as sparse:
        sparse.truncate(256 * 1024 * 1024)
    sizes: list[int] = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: sizes.append(n) or real_read(fd, n))
    with pytest.raises(ConfigError) as caught:
        read_key_policy(str(path))
    assert caught.value.problems == (
        f'key_policy_file "{path}" is too large: KMS key policies may be at most 32768 bytes',
    )
    assert sizes and max(sizes) <= 32769


def test_a_nul_character_in_a_path_names_the_key() -> None:
    # plugin_data given as JSON (which HCL's parser takes) can hold one, as "\u0000".
    config = parse_config('{"region": "us-east-1", "key_policy_file": "/etc/spire/a\\u0000b"}', TD)
    assert config.key_policy_file == "/etc/spire/a\0b"
    assert check_files(config) == ["key_policy_file must not contain a NUL character"]
    assert check_files(config_with(id_file="/var/lib/spire/a\0b")) == [
        "key_identifier_file must not contain a NUL character"
    ]


def test_a_dangling_symlink_as_id_file_fails_validation_as_it_would_fail_configure(tmp_path: Path) -> None:
    link = tmp_path / "server-id"
    link.symlink_to(tmp_path / "gone")
    gone = tmp_path / "gone"
    problem = f'key_identifier_file "{link}" is a symbolic link to "{gone}", which does not exist'
    assert check_files(config_with(id_file=str(link))) == [problem]
    with pytest.raises(ConfigError):
        load_server_id(ServerIdFile(str(link)))


def test_key_metadata_file_problems_are_reported_under_its_own_name(tmp_path: Path) -> None:
    path = tmp_path / "server-id"
    path.write_text("not a uuid")
    config = parse_config(REGION + f'key_metadata_file = "{path}"', TD)
    assert check_files(config) == [f'key_metadata_file "{path}" does not hold a server id (a UUID)']


# --- how the text is written: encoding, expressions, duplicates, size ---------------------------------


@pytest.mark.parametrize(
    ("hcl_text", "problems"),
    [
        pytest.param(
            '{"region": "\\ud800"}',
            ("region: the value is not valid UTF-8 text (unpaired surrogate)",),
            id="JSON escape of a lone surrogate",
        ),
        pytest.param(
            'region = "us-\udfff"',
            ("region: the value is not valid UTF-8 text (unpaired surrogate)",),
            id="lone surrogate in HCL text",
        ),
        pytest.param(
            '{"\\ud800x": "us-east-1"}',
            ('the configuration key "\\ud800x" is not valid UTF-8 text (unpaired surrogate)',),
            id="surrogate in a key",
        ),
        pytest.param(
            '{"region": "us-east-1", "key_tags": {"\\udc00": "v"}, "endpoint": ["\\ud83d"]}',
            (
                "key_tags: the value is not valid UTF-8 text (unpaired surrogate)",
                "endpoint: the value is not valid UTF-8 text (unpaired surrogate)",
            ),
            id="surrogates in a tag name and a list",
        ),
        pytest.param(
            'a + 1 = "x"\n' + REGION,
            ('the configuration is not valid HCL: "a + 1" is an expression, not a key',),
            id="arithmetic as a key",
        ),
        pytest.param(
            REGION + 'key_tags { a + 1 = "x" }',
            ('key_tags key "a + 1" is invalid: tag keys are names or quoted strings, not expressions',),
            id="arithmetic as a tag name",
        ),
        pytest.param(
            REGION + "deletion_window_days = 7 * 2",
            (
                "deletion_window_days must be a whole number of days, not an expression (HCL expressions "
                "are not evaluated)",
            ),
            id="arithmetic as a value",
        ),
        pytest.param(
            "region = us",
            ("region must be a string, not an expression (HCL expressions are not evaluated)",),
            id="bare name as a value",
        ),
        pytest.param(
            REGION + 'key_tags { a = upper("x") }',
            ('key_tags "a" must be a string, not an expression (HCL expressions are not evaluated)',),
            id="function call as a tag value",
        ),
        pytest.param(
            REGION + 'role_arn = x == 1 ? "a" : "b"',
            ("role_arn must be a string, not an expression (HCL expressions are not evaluated)",),
            id="condition as a value",
        ),
        pytest.param(REGION + 'region = "us-east-2"', ("region is given twice",), id="key given twice"),
        pytest.param(
            REGION + "deletion_window_days = 7\n" * 3,
            ("deletion_window_days is given 3 times",),
            id="key given three times",
        ),
        pytest.param(
            '{"region": "us-east-1", "region": "us-east-1"}', ("region is given twice",), id="JSON key twice"
        ),
        pytest.param(
            '{"region": "us-east-1", "key_tags": {"a": "1", "a": "2"}}',
            ('key_tags "a" is given twice',),
            id="JSON tag twice",
        ),
        pytest.param(
            '{"region": ' + "[" * 17 + "]" * 17 + "}",
            ("region: the value is nested more than 16 levels deep",),
            id="deep nesting",
        ),
        pytest.param(
            '{"region": ' + "[" * 20_000 + "]" * 20_000 + "}",
            ("the configuration is not valid HCL: it is nested too deeply",),
            id="nesting beyond the JSON parser",
        ),
        pytest.param(
            'region = "' + "x" * 100 + '"',
            (
                f'region "{"x" * 64}..." (100 characters) is invalid: expected a region name such as '
                "us-east-1",
            ),
            id="long values are quoted cut",
        ),
        pytest.param(
            'region = "a\\"b\nc"',
            ('region "a\\"b\\nc" is invalid: expected a region name such as us-east-1',),
            id="quoted values are escaped onto one line",
        ),
    ],
)
def test_how_the_text_is_written(hcl_text: str, problems: tuple[str, ...]) -> None:
    found = problems_of(hcl_text)
    assert found == problems
    for problem in found:
        problem.encode("utf-8")


def test_an_oversized_configuration_is_refused_in_bytes_not_characters() -> None:
    text = REGION + "# " + "é" * 40_000  # 40,023 characters, 80,023 bytes
    assert problems_of(text) == (
        "the configuration is too large: 80023 bytes, at most 65536 (64 KiB) are accepted",
    )


def test_a_huge_configuration_is_refused_at_once() -> None:
    started = time.monotonic()
    assert problems_of("region = [" + "1," * 2_000_000 + "]") == (
        "the configuration is too large: 4000011 bytes, at most 65536 (64 KiB) are accepted",
    )
    assert time.monotonic() - started < 0.5


def test_a_configuration_at_the_size_limit_is_parsed() -> None:
    text = REGION + "#" + "x" * (64 * 1024 - len(REGION) - 1)
    assert len(text.encode()) == 64 * 1024
    assert parse_config(text, TD) == expected()
    assert problems_of(text + "x") == (
        "the configuration is too large: 65537 bytes, at most 65536 (64 KiB) are accepted",
    )


@pytest.mark.parametrize(
    ("hcl_text", "trust_domain", "problems"),
    [
        pytest.param(
            '{"region": "us-east-1", "key_prefix": "a\\nb\\"c"}',
            TD,
            (f'key_prefix "a\\nb\\"c" is invalid: {CHARSET}',),
            id="key_prefix with a newline and a quote",
        ),
        pytest.param(
            '{"region": "us-east-1", "key_identifier_value": "s\\t1"}',
            TD,
            (f'key_identifier_value "s\\t1" is invalid: {CHARSET}',),
            id="server id with a tab",
        ),
        pytest.param(
            REGION + 'key_prefix = "' + "é" * 300 + '"',
            TD,
            (
                f'key_prefix "{"é" * 64}..." (300 characters) is invalid: alias names may only contain a-z, '
                "A-Z, 0-9, /, _ and -",
                f'key_prefix "{"é" * 64}..." (300 characters) is invalid: alias names may be at most 256 '
                "characters, and the alias for key JWT-Signer-A would have 318",
            ),
            id="a long key_prefix is cut",
        ),
        pytest.param(
            REGION + 'key_identifier_value = "s"',
            "example\n.org",
            (f'trust_domain "example\\n.org" is invalid: {CHARSET}',),
            id="trust domain with a newline",
        ),
    ],
)
def test_alias_problems_quote_their_value_escaped_and_cut(
    hcl_text: str, trust_domain: str, problems: tuple[str, ...]
) -> None:
    assert problems_of(hcl_text, trust_domain) == problems


def test_the_message_of_many_problems_is_cut_and_counts_the_rest() -> None:
    text = REGION + "".join(f"k{i} = 1\n" for i in range(100))
    with pytest.raises(ConfigError) as caught:
        parse_config(text, TD)
    assert len(caught.value.problems) == 100
    shown = "; ".join(f'unknown configuration key "k{i}"' for i in range(31))
    assert str(caught.value) == shown + "; and 69 more problems (spire-server validate lists every one)"
    assert len(shown) == 1011


def test_a_long_first_problem_is_given_whole() -> None:
    err = ConfigError(["x" * 2000, "second"])
    assert str(err) == "x" * 2000 + "; and 1 more problem (spire-server validate lists every one)"


def test_the_message_holds_problems_up_to_exactly_1024_characters() -> None:
    # Two problems of 511 joined by "; ": 1024 characters, every one shown; one more character is counted.
    problems = ["a" * 511, "b" * 511]
    assert summary(problems) == "; ".join(problems)
    assert (
        summary([*problems[:1], "b" * 512])
        == "a" * 511 + "; and 1 more problem (spire-server validate lists every one)"
    )
    assert summary([]) == ""
