"""SPIRE key ids <-> KMS alias names, for both naming schemes, and the KMS alias rules."""

from __future__ import annotations

import dataclasses

import pytest

from plugin.naming import (
    AliasScheme,
    BuiltinScheme,
    CommunityScheme,
    alias_name_problem,
    alias_problems,
    decode_key_id,
    encode_key_id,
    key_id_problem,
    sanitize_trust_domain,
)

CHARSET = "alias names may only contain a-z, A-Z, 0-9, /, _ and -"
RESERVED = "alias names must not start with alias/aws/ (reserved for AWS managed keys)"
SPIRE_KEY_IDS = ["x509-CA-A", "x509-CA-B", "JWT-Signer-A", "JWT-Signer-B", "WIT-Signer-A", "WIT-Signer-B"]
UUID = "0b3f4e0a-6b3c-4d5e-8f70-123456789abc"


def length_rule(length: int) -> str:
    return (
        f"alias names may be at most 256 characters, and the alias for key JWT-Signer-A would have {length}"
    )


@pytest.mark.parametrize(
    ("key_id", "encoded"),
    [
        ("x509-CA-A", "x509-CA-A"),
        ("JWT-Signer-B", "JWT-Signer-B"),
        ("WIT-Signer-A", "WIT-Signer-A"),
        ("bundle-acme-example.org", "bundle-acme-example_2eorg"),
        ("bundle-acme-a+b", "bundle-acme-a_2bb"),
        ("bundle-acme-a.b+c.d++", "bundle-acme-a_2eb_2bc_2ed_2b_2b"),
        ("", ""),
    ],
)
def test_key_ids_encode_like_spire_builtin_and_decode_back(key_id: str, encoded: str) -> None:
    assert encode_key_id(key_id) == encoded
    assert decode_key_id(encoded) == key_id


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("a_2e_2b", "a.+"),
        ("_2E", "_2E"),  # upper-case hex is not an escape: SPIRE never writes it
        ("a_2", "a_2"),
        ("a__2eb", "a_.b"),
    ],
)
def test_decode_key_id(encoded: str, decoded: str) -> None:
    assert decode_key_id(encoded) == decoded


@pytest.mark.parametrize(
    ("trust_domain", "sanitized"),
    [
        ("example.org", "example_org"),
        ("a.b.c", "a_b_c"),
        ("td-with_dash", "td-with_dash"),
        ("", ""),
    ],
)
def test_sanitize_trust_domain(trust_domain: str, sanitized: str) -> None:
    assert sanitize_trust_domain(trust_domain) == sanitized


def test_community_scheme_defaults_to_the_community_plugin_prefix() -> None:
    scheme = CommunityScheme()
    assert scheme.key_prefix == "SPIRE_SERVER_KEY/"
    assert scheme.alias_prefix == "alias/SPIRE_SERVER_KEY/"
    assert scheme.alias_for("x509-CA-A") == "alias/SPIRE_SERVER_KEY/x509-CA-A"
    assert scheme.description_for("x509-CA-A") == "SPIRE_SERVER_KEY/x509-CA-A"


@pytest.mark.parametrize(
    ("key_prefix", "key_id", "alias", "alias_prefix", "description"),
    [
        (
            "SPIRE_SERVER_KEY/",
            "JWT-Signer-B",
            "alias/SPIRE_SERVER_KEY/JWT-Signer-B",
            "alias/SPIRE_SERVER_KEY/",
            "SPIRE_SERVER_KEY/JWT-Signer-B",
        ),
        (
            "prod/spire/",
            "bundle-acme-a.b+c",
            "alias/prod/spire/bundle-acme-a_2eb_2bc",
            "alias/prod/spire/",
            "prod/spire/bundle-acme-a.b+c",
        ),
        # A prefix without "/" is used as written, as the community plugin did.
        ("spire-", "x509-CA-A", "alias/spire-x509-CA-A", "alias/spire-", "spire-x509-CA-A"),
    ],
)
def test_community_scheme_names(
    key_prefix: str, key_id: str, alias: str, alias_prefix: str, description: str
) -> None:
    scheme = CommunityScheme(key_prefix)
    assert scheme.alias_for(key_id) == alias
    assert scheme.alias_prefix == alias_prefix
    assert scheme.description_for(key_id) == description


@pytest.mark.parametrize(
    ("trust_domain", "server_id", "key_id", "alias", "description"),
    [
        (
            "example.org",
            "server1",
            "x509-CA-A",
            "alias/SPIRE_SERVER/example_org/server1/x509-CA-A",
            "SPIRE_SERVER_KEY/example_org/x509-CA-A",
        ),
        (
            "example.org",
            UUID,
            "JWT-Signer-A",
            f"alias/SPIRE_SERVER/example_org/{UUID}/JWT-Signer-A",
            "SPIRE_SERVER_KEY/example_org/JWT-Signer-A",
        ),
        # The description keeps the key id unencoded, as SPIRE's built-in plugin writes it.
        (
            "a.b.c",
            "s",
            "bundle-acme-x.y+z",
            "alias/SPIRE_SERVER/a_b_c/s/bundle-acme-x_2ey_2bz",
            "SPIRE_SERVER_KEY/a_b_c/bundle-acme-x.y+z",
        ),
    ],
)
def test_builtin_scheme_names(
    trust_domain: str, server_id: str, key_id: str, alias: str, description: str
) -> None:
    scheme = BuiltinScheme(trust_domain, server_id)
    assert scheme.alias_for(key_id) == alias
    assert scheme.description_for(key_id) == description


def test_builtin_scheme_prefixes() -> None:
    scheme = BuiltinScheme("example.org", "server1")
    assert scheme.alias_prefix == "alias/SPIRE_SERVER/example_org/server1/"
    assert scheme.trust_domain_alias_prefix == "alias/SPIRE_SERVER/example_org/"
    assert scheme.trust_domain_description_prefix == "SPIRE_SERVER_KEY/example_org/"


@pytest.mark.parametrize(
    "scheme",
    [CommunityScheme(), CommunityScheme("x/"), CommunityScheme("nosep"), BuiltinScheme("example.org", UUID)],
    ids=repr,
)
@pytest.mark.parametrize("key_id", [*SPIRE_KEY_IDS, "bundle-acme-1.2+3"])
def test_every_alias_leads_back_to_its_key_id(scheme: AliasScheme, key_id: str) -> None:
    alias = scheme.alias_for(key_id)
    assert alias.startswith(scheme.alias_prefix)
    assert scheme.key_id_for(alias) == key_id


@pytest.mark.parametrize(
    ("alias", "key_id"),
    [
        ("alias/SPIRE_SERVER_KEY/x509-CA-A", "x509-CA-A"),
        ("alias/SPIRE_SERVER_KEY/bundle-acme-a_2eb", "bundle-acme-a.b"),
        ("alias/SPIRE_SERVER_KEY/", None),  # the prefix alone names no key
        ("alias/SPIRE_SERVER_KEY", None),
        ("alias/SPIRE_SERVER_KEY2/x509-CA-A", None),
        ("alias/spire_server_key/x509-CA-A", None),  # alias names are case-sensitive
        ("alias/SPIRE_SERVER/example_org/server1/x509-CA-A", None),
        ("alias/aws/kms", None),
        ("", None),
    ],
)
def test_community_key_id_for(alias: str, key_id: str | None) -> None:
    assert CommunityScheme().key_id_for(alias) == key_id


@pytest.mark.parametrize(
    ("alias", "key_id"),
    [
        ("alias/SPIRE_SERVER/example_org/server1/x509-CA-A", "x509-CA-A"),
        ("alias/SPIRE_SERVER/example_org/server1/bundle-acme-a_2eb_2bc", "bundle-acme-a.b+c"),
        # Another server whose id merely starts with ours.
        ("alias/SPIRE_SERVER/example_org/server10/x509-CA-A", None),
        # Another trust domain whose name merely starts with ours.
        ("alias/SPIRE_SERVER/example_org2/server1/x509-CA-A", None),
        # A deeper path: server "server1/x" of the same trust domain, not a key of ours.
        ("alias/SPIRE_SERVER/example_org/server1/x/x509-CA-A", None),
        ("alias/SPIRE_SERVER/example_org/server1/", None),
        ("alias/SPIRE_SERVER/example_org/server1", None),
        ("alias/SPIRE_SERVER/example_org/x509-CA-A", None),
        ("alias/SPIRE_SERVER_KEY/x509-CA-A", None),
        ("alias/spire_server/example_org/server1/x509-CA-A", None),
        ("", None),
    ],
)
def test_builtin_key_id_for(alias: str, key_id: str | None) -> None:
    assert BuiltinScheme("example.org", "server1").key_id_for(alias) == key_id


def test_schemes_satisfy_the_protocol_and_are_frozen() -> None:
    community = CommunityScheme()
    builtin = BuiltinScheme("example.org", "s")
    assert isinstance(community, AliasScheme)
    assert isinstance(builtin, AliasScheme)
    with pytest.raises(dataclasses.FrozenInstanceError):
        community.key_prefix = "x/"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        builtin.server_id = "t"  # type: ignore[misc]
    assert CommunityScheme("a/") == CommunityScheme("a/")
    assert hash(BuiltinScheme("t", "s")) == hash(BuiltinScheme("t", "s"))


@pytest.mark.parametrize(
    ("alias", "problem"),
    [
        ("alias/SPIRE_SERVER_KEY/x509-CA-A", None),
        ("alias/a", None),
        ("alias/" + "a" * 250, None),
        ("alias/" + "a" * 251, "alias names may be at most 256 characters, not 257"),
        ("alias/", "alias names must be alias/ followed by at least one character"),
        ("SPIRE_SERVER_KEY/x", "alias names must be alias/ followed by at least one character"),
        ("alias/a.b", CHARSET),
        ("alias/a+b", CHARSET),
        ("alias/a b", CHARSET),
        ("alias/é", CHARSET),
        ("alias/aws/x", RESERVED),
        ("alias/awsx", None),
    ],
)
def test_alias_name_problem(alias: str, problem: str | None) -> None:
    assert alias_name_problem(alias) == problem


@pytest.mark.parametrize(
    ("key_prefix", "problems"),
    [
        ("SPIRE_SERVER_KEY/", []),
        ("a", []),
        ("my-org/spire_keys/", []),
        ("aws", []),  # only alias/aws/ is reserved
        ("a" * 238, []),  # alias/ + 238 + JWT-Signer-A = 256
        # Values are quoted as every input is: cut to 64 characters with their length, escaped.
        ("a" * 239, [f'key_prefix "{"a" * 64}..." (239 characters) is invalid: {length_rule(257)}']),
        ("a.b/", [f'key_prefix "a.b/" is invalid: {CHARSET}']),
        ("a b/", [f'key_prefix "a b/" is invalid: {CHARSET}']),
        ("a:b/", [f'key_prefix "a:b/" is invalid: {CHARSET}']),
        ("aws/", [f'key_prefix "aws/" is invalid: {RESERVED}']),
        ("aws/spire", [f'key_prefix "aws/spire" is invalid: {RESERVED}']),
        (
            "aws/." + "a" * 240,
            [
                f'key_prefix "aws/.{"a" * 59}..." (245 characters) is invalid: {CHARSET}',
                f'key_prefix "aws/.{"a" * 59}..." (245 characters) is invalid: {RESERVED}',
                f'key_prefix "aws/.{"a" * 59}..." (245 characters) is invalid: {length_rule(263)}',
            ],
        ),
        ('a\nb"c/', [f'key_prefix "a\\nb\\"c/" is invalid: {CHARSET}']),
    ],
)
def test_alias_problems_community(key_prefix: str, problems: list[str]) -> None:
    assert alias_problems(CommunityScheme(key_prefix), "key_prefix") == problems


@pytest.mark.parametrize(
    ("trust_domain", "server_id", "setting", "problems"),
    [
        ("example.org", "server1", "key_identifier_value", []),
        ("example.org", "a/b", "key_identifier_value", []),
        # alias/SPIRE_SERVER/ + td + / + id + / + JWT-Signer-A: 33 + 223 = 256
        ("t" * 100, "s" * 123, "key_identifier_value", []),
        (
            "t" * 100,
            "s" * 124,
            "key_identifier_value",
            [f'key_identifier_value "{"s" * 64}..." (124 characters) is invalid: {length_rule(257)}'],
        ),
        (
            "example.org",
            "srv.1",
            "key_identifier_value",
            [f'key_identifier_value "srv.1" is invalid: {CHARSET}'],
        ),
        (
            "example.org",
            "srv 1",
            "key_identifier_value",
            [f'key_identifier_value "srv 1" is invalid: {CHARSET}'],
        ),
        # The trust domain's own characters are blamed on it, whatever setting is checked.
        (
            "bad td.org",
            "server1",
            "key_identifier_value",
            [f'trust_domain "bad td.org" is invalid: {CHARSET}'],
        ),
        # With a UUID server id (key_identifier_file), only the trust domain can make aliases too long.
        ("t" * 187, UUID, "trust_domain", []),
        (
            "t" * 188,
            UUID,
            "trust_domain",
            [f'trust_domain "{"t" * 64}..." (188 characters) is invalid: {length_rule(257)}'],
        ),
        ("bad td", UUID, "trust_domain", [f'trust_domain "bad td" is invalid: {CHARSET}']),
        (
            "example\n.org",
            "srv\t1",
            "key_identifier_value",
            [
                f'trust_domain "example\\n.org" is invalid: {CHARSET}',
                f'key_identifier_value "srv\\t1" is invalid: {CHARSET}',
            ],
        ),
    ],
)
def test_alias_problems_builtin(trust_domain: str, server_id: str, setting: str, problems: list[str]) -> None:
    assert alias_problems(BuiltinScheme(trust_domain, server_id), setting) == problems


ROUND_TRIP = "its alias would not read back as the same key id (it holds / or an encoded _2e or _2b)"


@pytest.mark.parametrize(
    ("scheme", "key_id", "problem"),
    [
        (CommunityScheme(), "x509-CA-A", None),
        (CommunityScheme(), "bundle-acme-example.org+1", None),
        (CommunityScheme(), "team/x509-CA-A", None),  # the community scheme reads nested names back
        (BuiltinScheme("example.org", "server1"), "WIT-Signer-B", None),
        (BuiltinScheme("example.org", "server1"), "bundle-acme-a.b", None),
        (BuiltinScheme("example.org", "server1"), "team/x509-CA-A", ROUND_TRIP),
        (CommunityScheme(), "x_2eA", ROUND_TRIP),
        (CommunityScheme(), "x_2bA", ROUND_TRIP),
        (CommunityScheme(), "x509 CA", CHARSET),
        (CommunityScheme(), "clé", CHARSET),
        (CommunityScheme(), "a:b", CHARSET),
        # alias/SPIRE_SERVER_KEY/ is 23 characters: 233 more make the longest alias KMS takes.
        (CommunityScheme(), "k" * 233, None),
        (CommunityScheme(), "k" * 234, "alias names may be at most 256 characters, not 257"),
        (CommunityScheme(""), "aws/x", RESERVED),
    ],
)
def test_key_id_problem(scheme: AliasScheme, key_id: str, problem: str | None) -> None:
    assert key_id_problem(scheme, key_id) == problem
