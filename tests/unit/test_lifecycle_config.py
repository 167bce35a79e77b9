"""The configuration and the pure parts of the key lifecycle: enable_tag_based_key_discovery, the default
key policy in every partition, and the prefixes that tell servers and trust domains apart."""

from __future__ import annotations

import json

import pytest

from plugin.config import ConfigError, parse_config
from plugin.keypolicy import default_key_policy, role_arn
from plugin.naming import BuiltinScheme, key_id_of

BUILTIN = 'region = "us-east-1"\nkey_identifier_value = "server1"\n'


def test_tag_based_discovery_is_off_by_default() -> None:
    assert parse_config(BUILTIN, "example.org").enable_tag_based_key_discovery is False


def test_tag_based_discovery_can_be_enabled() -> None:
    config = parse_config(BUILTIN + "enable_tag_based_key_discovery = true\n", "example.org")
    assert config.enable_tag_based_key_discovery is True


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (BUILTIN + 'enable_tag_based_key_discovery = "yes"\n', "must be true or false, not a string"),
        ('region = "us-east-1"\nenable_tag_based_key_discovery = true\n', "needs the built-in naming scheme"),
        (
            'region = "us-east-1"\nkey_prefix = "p/"\nenable_tag_based_key_discovery = true\n',
            "needs the built-in naming scheme",
        ),
        (
            BUILTIN
            + "enable_tag_based_key_discovery = true\nkey_tags = {\n"
            + "".join(f'  t{n} = "v"\n' for n in range(46))
            + "}\n",
            "at most 45 may be given",
        ),
    ],
)
def test_tag_based_discovery_mistakes_are_named(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as failed:
        parse_config(text, "example.org")
    assert any("enable_tag_based_key_discovery" in p and problem in p for p in failed.value.problems), (
        failed.value.problems
    )


def test_45_user_tags_fit_next_to_the_spire_tags() -> None:
    tags = "".join(f'  t{n} = "v"\n' for n in range(45))
    text = BUILTIN + "enable_tag_based_key_discovery = true\nkey_tags = {\n" + tags + "}\n"
    assert len(parse_config(text, "example.org").key_tags) == 45


@pytest.mark.parametrize(
    ("caller", "role"),
    [
        (
            "arn:aws:sts::111122223333:assumed-role/spire-server/i-0abc",
            "arn:aws:iam::111122223333:role/spire-server",
        ),
        (
            "arn:aws-us-gov:sts::111122223333:assumed-role/spire+server@x/session.name",
            "arn:aws-us-gov:iam::111122223333:role/spire+server@x",
        ),
        ("arn:aws-cn:sts::111122223333:assumed-role/r/s", "arn:aws-cn:iam::111122223333:role/r"),
        ("arn:aws:iam::111122223333:user/alice", None),
        ("arn:aws:iam::111122223333:root", None),
        ("arn:aws:sts::111122223333:federated-user/bob", None),
        ("arn:aws:sts::111122223333:assumed-role/no-session", None),
    ],
)
def test_the_role_behind_the_caller_in_its_partition(caller: str, role: str | None) -> None:
    assert role_arn(caller) == role
    policy = default_key_policy(caller)
    if role is None:
        assert policy is None
        return
    assert policy is not None
    document = json.loads(policy)
    partition, account = role.split(":")[1], role.split(":")[4]
    role_statement, console_statement = document["Statement"]
    assert role_statement["Principal"] == {"AWS": role}
    assert role_statement["Action"] == "kms:*"
    assert console_statement["Principal"] == {"AWS": f"arn:{partition}:iam::{account}:root"}
    assert console_statement["Action"] == ["kms:Describe*", "kms:List*", "kms:Get*"]


@pytest.mark.parametrize(
    ("alias", "other_server"),
    [
        ("alias/SPIRE_SERVER/example_org/server10/x509-CA-A", True),
        ("alias/SPIRE_SERVER/example_org/server1/nested/x509-CA-A", True),
        ("alias/SPIRE_SERVER/example_org/server1/x509-CA-A", False),  # ours
        ("alias/SPIRE_SERVER/example_org2/server2/x509-CA-A", False),  # another trust domain
        ("alias/SPIRE_SERVER/example_org", False),
        ("alias/SPIRE_SERVER_KEY/x509-CA-A", False),
    ],
)
def test_other_servers_of_the_trust_domain_are_told_apart(alias: str, other_server: bool) -> None:
    assert BuiltinScheme("example.org", "server1").is_other_servers_alias(alias) is other_server


@pytest.mark.parametrize(
    ("description", "ours"),
    [
        ("SPIRE_SERVER_KEY/example_org/x509-CA-A", True),
        ("SPIRE_SERVER_KEY/example_org2/x509-CA-A", False),
        ("SPIRE_SERVER_KEY/example_org", False),
        ("SPIRE_SERVER_KEY/x509-CA-A", False),
        ("", False),
    ],
)
def test_trust_domain_descriptions_need_the_whole_prefix(description: str, ours: bool) -> None:
    assert BuiltinScheme("example.org", "server1").is_trust_domain_description(description) is ours


def test_key_ids_of_arns_and_ids() -> None:
    arn = "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert key_id_of(arn) == "1234abcd-12ab-34cd-56ef-1234567890ab"
    assert key_id_of("1234abcd-12ab-34cd-56ef-1234567890ab") == "1234abcd-12ab-34cd-56ef-1234567890ab"
