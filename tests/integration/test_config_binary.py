"""Configuration through the frozen binary: both naming schemes, keys made by either predecessor, and
every bad configuration refused with a message naming the key while the plugin keeps running."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import COMMUNITY_CONFIG, REGION, StartPlugin
from tests.support.kms_emulator import DUMMY_SECRET_ACCESS_KEY, EmulatorControl
from tests.support.plugin_host import PluginProcess

DIGEST = hashlib.sha256(b"config tests").digest()


def sign_and_verify(plugin: PluginProcess, key_id: str) -> None:
    key = plugin.get_public_key(key_id).public_key
    signature = plugin.sign_data(key_id, DIGEST, hash_algorithm=km.SHA256).signature
    public = serialization.load_der_public_key(key.pkix_data)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, DIGEST, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def aliases(emulator: EmulatorControl) -> dict[str, str]:
    return {a["AliasName"]: a["TargetKeyId"] for a in emulator.kms_client().list_aliases()["Aliases"]}


def test_builtin_scheme_names_keys_as_spires_builtin(start: StartPlugin, emulator: EmulatorControl) -> None:
    plugin = start()
    plugin.configure(f'region = "{REGION}"\nkey_identifier_value = "server-a"\n', trust_domain="example.org")
    plugin.generate_key("x509-CA-A", km.EC_P256)
    plugin.generate_key("bundle-acme-example.org+1", km.EC_P256)
    names = aliases(emulator)
    assert set(names) == {
        "alias/SPIRE_SERVER/example_org/server-a/x509-CA-A",
        "alias/SPIRE_SERVER/example_org/server-a/bundle-acme-example_2eorg_2b1",
    }
    description = emulator.kms_client().describe_key(
        KeyId=names["alias/SPIRE_SERVER/example_org/server-a/x509-CA-A"]
    )
    assert description["KeyMetadata"]["Description"] == "SPIRE_SERVER_KEY/example_org/x509-CA-A"


def test_key_identifier_file_is_created_private_and_reused(
    start: StartPlugin, emulator: EmulatorControl, tmp_path: Path
) -> None:
    id_file = tmp_path / "server_id"
    config = f'region = "{REGION}"\nkey_identifier_file = "{id_file}"\n'
    first = start()
    first.configure(config)
    first.generate_key("x509-CA-A", km.EC_P256)
    server_id = id_file.read_text().strip()
    assert stat.S_IMODE(id_file.stat().st_mode) == 0o600
    assert f"alias/SPIRE_SERVER/example_org/{server_id}/x509-CA-A" in aliases(emulator)
    first.shutdown()

    second = start()
    second.configure(config)
    assert [k.id for k in second.get_public_keys().public_keys] == ["x509-CA-A"]
    assert id_file.read_text().strip() == server_id


def test_keys_made_by_the_builtin_plugin_are_found(start: StartPlugin, emulator: EmulatorControl) -> None:
    kms = emulator.kms_client()
    made = {}
    for key_id in ("x509-CA-A", "JWT-Signer-B", "bundle-acme-acme.example.org"):
        arn = kms.create_key(
            KeySpec="ECC_NIST_P256",
            KeyUsage="SIGN_VERIFY",
            Description=f"SPIRE_SERVER_KEY/prod_example_org/{key_id}",
        )["KeyMetadata"]["Arn"]
        encoded = key_id.replace(".", "_2e").replace("+", "_2b")
        kms.create_alias(AliasName=f"alias/SPIRE_SERVER/prod_example_org/7b6f/{encoded}", TargetKeyId=arn)
        made[key_id] = kms.get_public_key(KeyId=arn)["PublicKey"]
    # Look-alikes that are not this server's keys.
    other = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    for alias in (
        "alias/SPIRE_SERVER/prod_example_org/7b6f0/x509-CA-A",
        "alias/SPIRE_SERVER/prod_example_org2/7b6f/x509-CA-A",
        "alias/SPIRE_SERVER/prod_example_org/7b6f/nested/x509-CA-A",
        "alias/SPIRE_SERVER_KEY/x509-CA-A",
    ):
        kms.create_alias(AliasName=alias, TargetKeyId=other)

    emulator.reset_calls()
    plugin = start()
    plugin.configure(f'region = "{REGION}"\nkey_identifier_value = "7b6f"\n', trust_domain="prod.example.org")
    assert {k.id: k.pkix_data for k in plugin.get_public_keys().public_keys} == made
    assert "CreateKey" not in emulator.calls()
    sign_and_verify(plugin, "x509-CA-A")


def test_keys_made_by_the_community_plugin_are_found(start: StartPlugin, emulator: EmulatorControl) -> None:
    kms = emulator.kms_client()
    arn = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY", Description="prod/x509-CA-B")[
        "KeyMetadata"
    ]["Arn"]
    kms.create_alias(AliasName="alias/prod/x509-CA-B", TargetKeyId=arn)
    plugin = start()
    plugin.configure(COMMUNITY_CONFIG + 'key_prefix = "prod/"\n')
    assert [k.id for k in plugin.get_public_keys().public_keys] == ["x509-CA-B"]
    sign_and_verify(plugin, "x509-CA-B")


def test_new_keys_get_the_configured_tags_and_policy(
    start: StartPlugin, emulator: EmulatorControl, tmp_path: Path
) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "all", "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}
        ],
    }
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(policy))
    plugin = start()
    plugin.configure(
        COMMUNITY_CONFIG
        + f'key_policy_file = "{policy_file}"\nkey_tags = {{ team = "identity", env = "prod" }}\n'
    )
    plugin.generate_key("x509-CA-A", km.EC_P256)
    kms = emulator.kms_client()
    arn = kms.describe_key(KeyId="alias/SPIRE_SERVER_KEY/x509-CA-A")["KeyMetadata"]["Arn"]
    tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=arn)["Tags"]}
    assert tags == {"team": "identity", "env": "prod"}
    assert json.loads(kms.get_key_policy(KeyId=arn, PolicyName="default")["Policy"]) == policy


BAD_CONFIGS = [
    ("", "region is required"),
    ('region = "us-east-1"\nregoin = "x"', "regoin"),
    ("region = 12", "region"),
    ('region = "us-east-1"\naccess_key_id = "AKIA"', "secret_access_key"),
    (
        'region = "us-east-1"\nkey_prefix = "a"\nkey_identifier_value = "b"',
        "key_prefix and key_identifier_value",
    ),
    (
        'region = "us-east-1"\nkey_identifier_value = "a"\nkey_identifier_file = "/tmp/x"',
        "key_identifier_file and key_identifier_value",
    ),
    ('region = "us-east-1"\nkey_prefix = "bad.prefix/"', "key_prefix"),
    ('region = "us-east-1"\nkey_prefix = "aws/"', "alias/aws/"),
    ('region = "us-east-1"\nkey_identifier_value = "id with space"', "key_identifier_value"),
    (f'region = "us-east-1"\nkey_identifier_value = "{"x" * 240}"', "256"),
    ('region = "us-east-1"\ndeletion_window_days = 3', "deletion_window_days"),
    ('region = "us-east-1"\ndeletion_window_days = 31', "deletion_window_days"),
    ('region = "us-east-1"\nkey_tags = { "aws:owner" = "me" }', "key_tags"),
    ('region = "us-east-1"\nkey_tags = { spire-server-id = "me" }', "key_tags"),
    ('region = "us-east-1"\nkey_policy_file = "/nonexistent/policy.json"', "key_policy_file"),
    ('region = "us-east-1" {', "HCL"),
]


def test_every_bad_configuration_is_refused_naming_the_key(start: StartPlugin) -> None:
    plugin = start()
    for hcl, named in BAD_CONFIGS:
        with pytest.raises(grpc.RpcError) as refused:
            plugin.configure(hcl)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, hcl
        assert named in refused.value.details(), (hcl, refused.value.details())
        notes = plugin.validate(hcl).notes
        assert notes and any(named in note for note in notes), (hcl, notes)
    # Still running, and a good configuration is taken after all of those.
    assert list(plugin.validate(COMMUNITY_CONFIG).notes) == []
    plugin.configure(COMMUNITY_CONFIG)
    plugin.generate_key("x509-CA-A", km.EC_P256)
    sign_and_verify(plugin, "x509-CA-A")


def test_validate_reports_each_problem_once(start: StartPlugin) -> None:
    plugin = start()
    answer = plugin.validate('regoin = "x"\ndeletion_window_days = 99\nkey_prefix = "a.b"')
    assert not answer.valid
    assert len(answer.notes) == 4, list(answer.notes)  # unknown key, region missing, window, prefix


def test_without_any_credentials_configure_says_so(start: StartPlugin) -> None:
    plugin = start(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
    with pytest.raises(grpc.RpcError) as refused:
        plugin.configure(f'region = "{REGION}"')
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no AWS credentials were found" in refused.value.details()


def test_secrets_never_reach_logs_or_errors(start: StartPlugin, emulator: EmulatorControl) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
    plugin = start()
    emulator.add_fault(
        "*", error="UnrecognizedClientException", message=f"bad signature for {secret}", count=-1
    )
    with pytest.raises(grpc.RpcError) as refused:
        plugin.configure(
            f'region = "{REGION}"\naccess_key_id = "AKIAEXAMPLE"\nsecret_access_key = "{secret}"\n'
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert secret not in refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:
        plugin.configure(f'region = "{REGION}"\nsecret_access_key = "{secret}"\nbogus = 1\n')
    assert secret not in refused.value.details()
    plugin.shutdown()
    assert secret not in "\n".join(plugin.raw_stderr())
    assert DUMMY_SECRET_ACCESS_KEY not in refused.value.details()
