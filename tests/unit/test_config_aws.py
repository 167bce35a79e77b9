"""Configuration of credentials and endpoints: role_arn, role_external_id, role_session_name, endpoint,
use_fips_endpoint. Checked without touching AWS, each refusal naming the key."""

from __future__ import annotations

import pytest

from plugin.config import AssumeRole, ConfigError, parse_config

BASE = 'region = "us-east-1"\n'
ROLE = "arn:aws:iam::123456789012:role/spire-server"


@pytest.mark.parametrize(
    ("extra", "role"),
    [
        ("", None),
        (f'role_arn = "{ROLE}"', AssumeRole(ROLE)),
        (
            f'role_arn = "{ROLE}"\nrole_external_id = "ext-1234"\nrole_session_name = "spire-a"',
            AssumeRole(ROLE, "ext-1234", "spire-a"),
        ),
        (
            'role_arn = "arn:aws-us-gov:iam::123456789012:role/path/to/spire"',
            AssumeRole("arn:aws-us-gov:iam::123456789012:role/path/to/spire"),
        ),
        (
            'role_arn = "arn:aws-cn:iam::123456789012:role/s"',
            AssumeRole("arn:aws-cn:iam::123456789012:role/s"),
        ),
    ],
)
def test_assume_role_settings(extra: str, role: AssumeRole | None) -> None:
    assert parse_config(BASE + extra, "example.org").assume_role == role


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('role_arn = "spire-server"', 'role_arn "spire-server" is invalid'),
        ('role_arn = "arn:aws:iam::123:role/x"', "12-digit account"),
        ('role_arn = "arn:aws:iam::123456789012:user/x"', "role_arn"),
        ("role_arn = 7", "role_arn must be a string"),
        ('role_external_id = "abc"', "role_external_id is only used with role_arn"),
        ('role_session_name = "abc"', "role_session_name is only used with role_arn"),
        (f'role_arn = "{ROLE}"\nrole_session_name = "has space"', 'role_session_name "has space" is invalid'),
        (f'role_arn = "{ROLE}"\nrole_session_name = "{"x" * 65}"', "role_session_name"),
        (f'role_arn = "{ROLE}"\nrole_external_id = "x"', "role_external_id is invalid"),
        ('endpoint = "kms.internal"', 'endpoint "kms.internal" is invalid'),
        ('endpoint = "ftp://kms.internal"', "endpoint"),
        ('endpoint = "https://kms.internal/?a=b"', "endpoint"),
        ('use_fips_endpoint = "yes"', "use_fips_endpoint must be true or false"),
        ('endpoint = "https://kms.internal"\nuse_fips_endpoint = true', "endpoint and use_fips_endpoint"),
    ],
)
def test_bad_aws_settings_name_the_key(extra: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(BASE + extra, "example.org")
    assert any(problem in p for p in refused.value.problems), refused.value.problems


def test_the_external_id_is_never_repeated_in_a_message() -> None:
    secret = "!!shared-secret!!"
    with pytest.raises(ConfigError) as refused:
        parse_config(BASE + f'role_arn = "{ROLE}"\nrole_external_id = "{secret}"', "example.org")
    assert secret not in str(refused.value)


@pytest.mark.parametrize(
    ("extra", "endpoint", "fips"),
    [
        ("", None, False),
        ('endpoint = "https://vpce-1.kms.aws"', "https://vpce-1.kms.aws", False),
        ('endpoint = "http://127.0.0.1:4566"', "http://127.0.0.1:4566", False),
        ("use_fips_endpoint = true", None, True),
        ("use_fips_endpoint = false", None, False),
    ],
)  # fmt: skip
def test_endpoint_settings(extra: str, endpoint: str | None, fips: bool) -> None:
    config = parse_config(BASE + extra, "example.org")
    assert (config.endpoint, config.use_fips_endpoint) == (endpoint, fips)
