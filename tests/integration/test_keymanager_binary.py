"""SPIRE's KeyManager contract, through the frozen binary, against the KMS emulator. Every signature is
verified here with `cryptography` against the public key the plugin returned, never by the emulator."""

from __future__ import annotations

import functools
import hashlib
import threading

import grpc
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import COMMUNITY_CONFIG, StartPlugin
from tests.support.kms_emulator import EmulatorControl
from tests.support.plugin_host import PluginProcess
from tests.support.signatures import HASHES, KEY_TYPES, digest_of, verify

# Every signing combination SPIRE's own key manager conformance suite uses, all served (ECDSA digests of
# another hash than the curve's are fitted to it), and one KMS cannot serve.
# (key type, hash, pss salt or None) -> served?
SIGNING_CASES = [
    *[(kt, h, None, True) for kt in (km.RSA_2048, km.RSA_4096) for h in HASHES],
    *[(kt, h, -1, True) for kt in (km.RSA_2048, km.RSA_4096) for h in HASHES],
    *[(kt, h, None, True) for kt in (km.EC_P256, km.EC_P384) for h in HASHES],
    (km.RSA_2048, km.SHA224, None, False),
]


def rpc_error(call: object) -> grpc.RpcError:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value


@pytest.mark.parametrize("key_type", list(KEY_TYPES))
def test_generate_key_of_every_type(plugin: PluginProcess, emulator: EmulatorControl, key_type: int) -> None:
    key_id = f"x509-CA-{km.KeyType.Name(key_type)}"
    answer = plugin.generate_key(key_id, key_type).public_key
    assert answer.id == key_id
    assert answer.type == key_type
    assert answer.fingerprint == hashlib.sha256(answer.pkix_data).hexdigest()
    expected_class, size = KEY_TYPES[key_type]
    public = serialization.load_der_public_key(answer.pkix_data)
    assert isinstance(public, expected_class)
    assert (
        public.curve.key_size if isinstance(public, ec.EllipticCurvePublicKey) else public.key_size
    ) == size

    kms = emulator.kms_client()
    (alias,) = [
        a for a in kms.list_aliases()["Aliases"] if a["AliasName"].startswith("alias/SPIRE_SERVER_KEY/")
    ]
    assert alias["AliasName"] == f"alias/SPIRE_SERVER_KEY/{key_id}"
    assert kms.get_public_key(KeyId=alias["TargetKeyId"])["PublicKey"] == answer.pkix_data

    emulator.reset_calls()
    assert plugin.get_public_key(key_id).public_key == answer
    assert list(plugin.get_public_keys().public_keys) == [answer]
    assert emulator.calls() == {}, "public keys must be served from memory"


def test_every_conformance_signing_combination(plugin: PluginProcess, emulator: EmulatorControl) -> None:
    keys = {kt: plugin.generate_key(f"key-{km.KeyType.Name(kt)}", kt).public_key for kt in KEY_TYPES}
    for key_type, hash_algorithm, salt, served in SIGNING_CASES:
        key = keys[key_type]
        case = f"{km.KeyType.Name(key_type)} {km.HashAlgorithm.Name(hash_algorithm)} salt={salt}"
        digest = digest_of(hash_algorithm)
        if salt is None:
            sign = functools.partial(plugin.sign_data, key.id, digest, hash_algorithm=hash_algorithm)
        else:
            sign = functools.partial(plugin.sign_data, key.id, digest, pss=(salt, hash_algorithm))
        if not served:
            error = rpc_error(sign)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
            assert km.HashAlgorithm.Name(hash_algorithm) in error.details(), case
            continue
        answer = sign()
        assert answer.key_fingerprint == key.fingerprint, case
        verify(key.pkix_data, answer.signature, hash_algorithm, salt)
        tampered = answer.signature[:-1] + bytes([answer.signature[-1] ^ 1])
        with pytest.raises(InvalidSignature):
            verify(key.pkix_data, tampered, hash_algorithm, salt)
    fitted = [
        (entry["key_id"], entry["hash_algorithm"], entry["signing_algorithm"])
        for entry in plugin.log_lines()
        if entry.get("@message") == "ECDSA digest fitted to the curve's hash"
    ]
    assert sorted(fitted) == [
        ("key-EC_P256", "SHA384", "ECDSA_SHA_256"),
        ("key-EC_P256", "SHA512", "ECDSA_SHA_256"),
        ("key-EC_P384", "SHA256", "ECDSA_SHA_384"),
        ("key-EC_P384", "SHA512", "ECDSA_SHA_384"),
    ]


@pytest.mark.parametrize("salt", [0, 32])
def test_pss_salt_lengths_kms_can_honour(plugin: PluginProcess, salt: int) -> None:
    key = plugin.generate_key("JWT-Signer-A", km.RSA_2048).public_key
    answer = plugin.sign_data(key.id, digest_of(km.SHA256), pss=(salt, km.SHA256))
    verify(key.pkix_data, answer.signature, km.SHA256, salt)


def test_requests_kms_cannot_serve_are_invalid_argument(plugin: PluginProcess) -> None:
    rsa_key = plugin.generate_key("JWT-Signer-A", km.RSA_2048).public_key
    ec_key = plugin.generate_key("x509-CA-A", km.EC_P256).public_key
    cases = [
        (
            lambda: plugin.sign_data(rsa_key.id, digest_of(km.SHA256), pss=(20, km.SHA256)),
            "PSS salt length 20",
        ),
        (lambda: plugin.sign_data(ec_key.id, digest_of(km.SHA256), pss=(-1, km.SHA256)), "PSS options"),
        (lambda: plugin.sign_data(ec_key.id, b"short", hash_algorithm=km.SHA256), "digest is 5 bytes"),
        (lambda: plugin.sign_data(rsa_key.id, b"x" * 28, hash_algorithm=km.SHA224), "SHA224"),
        (lambda: plugin.sign_data(ec_key.id, digest_of(km.SHA256)), "signer opts is required"),
        (
            lambda: plugin.sign_data(ec_key.id, digest_of(km.SHA256), hash_algorithm=0),
            "hash algorithm is required",
        ),
        (lambda: plugin.sign_data("", digest_of(km.SHA256), hash_algorithm=km.SHA256), "key id is required"),
        (lambda: plugin.generate_key("", km.EC_P256), "key id is required"),
        (lambda: plugin.generate_key("x509-CA-B", 0), "key type is required"),
        (lambda: plugin.get_public_key(""), "key id is required"),
    ]
    for call, message in cases:
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in error.details()


def test_unknown_keys(plugin: PluginProcess) -> None:
    assert not plugin.get_public_key("bundle-acme-example.org").HasField("public_key")
    error = rpc_error(lambda: plugin.sign_data("x509-CA-B", digest_of(km.SHA256), hash_algorithm=km.SHA256))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == 'no such key "x509-CA-B"'


def test_before_configure_every_key_call_is_failed_precondition(start: StartPlugin) -> None:
    plugin = start()
    error = rpc_error(lambda: plugin.generate_key("x509-CA-A", km.EC_P256))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not configured" in error.details()


def test_regenerating_replaces_the_key_and_retires_the_old_one(
    start: StartPlugin, emulator: EmulatorControl
) -> None:
    plugin = start()
    plugin.configure(COMMUNITY_CONFIG + "deletion_window_days = 12\n")
    first = plugin.generate_key("x509-CA-A", km.EC_P256).public_key
    second = plugin.generate_key("x509-CA-A", km.EC_P256).public_key
    assert second.fingerprint != first.fingerprint
    answer = plugin.sign_data("x509-CA-A", digest_of(km.SHA256), hash_algorithm=km.SHA256)
    assert answer.key_fingerprint == second.fingerprint
    verify(second.pkix_data, answer.signature, km.SHA256, None)

    kms = emulator.kms_client()
    states = {}
    for key in kms.list_keys()["Keys"]:
        metadata = kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
        states[metadata["KeyState"]] = metadata
    assert set(states) == {"Enabled", "PendingDeletion"}
    pending = states["PendingDeletion"]
    assert kms.get_public_key(KeyId=states["Enabled"]["Arn"])["PublicKey"] == second.pkix_data
    window = (pending["DeletionDate"] - pending["CreationDate"]).days
    assert window in (11, 12), f"deletion window {window} days, configured 12"


def test_a_restart_finds_the_same_keys_without_creating_any(
    start: StartPlugin, emulator: EmulatorControl
) -> None:
    first = start()
    first.configure(COMMUNITY_CONFIG)
    made = {
        k: first.generate_key(k, t).public_key
        for k, t in [("x509-CA-A", km.RSA_2048), ("JWT-Signer-A", km.EC_P384)]
    }
    first.shutdown()

    emulator.reset_calls()
    second = start()
    second.configure(COMMUNITY_CONFIG)
    assert {k.id: k for k in second.get_public_keys().public_keys} == made
    assert "CreateKey" not in emulator.calls()
    answer = second.sign_data("JWT-Signer-A", digest_of(km.SHA384), hash_algorithm=km.SHA384)
    verify(made["JWT-Signer-A"].pkix_data, answer.signature, km.SHA384, None)


def test_a_failure_after_create_key_leaves_no_key_behind(
    plugin: PluginProcess, emulator: EmulatorControl
) -> None:
    emulator.add_fault("CreateAlias", error="AccessDeniedException", message="not allowed", count=1)
    error = rpc_error(lambda: plugin.generate_key("x509-CA-A", km.EC_P256))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert '"x509-CA-A"' in error.details() and "AccessDeniedException" in error.details()
    kms = emulator.kms_client()
    states = [kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]["KeyState"] for k in kms.list_keys()["Keys"]]
    assert states == ["PendingDeletion"]
    assert not plugin.get_public_key("x509-CA-A").HasField("public_key")
    # The plugin keeps working once KMS does.
    key = plugin.generate_key("x509-CA-A", km.EC_P256).public_key
    verify(
        key.pkix_data,
        plugin.sign_data(key.id, digest_of(km.SHA256), hash_algorithm=km.SHA256).signature,
        km.SHA256,
        None,
    )


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("ThrottlingException", grpc.StatusCode.UNAVAILABLE),
        ("AccessDeniedException", grpc.StatusCode.PERMISSION_DENIED),
        ("DisabledException", grpc.StatusCode.FAILED_PRECONDITION),
        ("NotFoundException", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_kms_errors_reach_spire_as_actionable_codes(
    plugin: PluginProcess, emulator: EmulatorControl, fault: str, code: grpc.StatusCode
) -> None:
    plugin.generate_key("x509-CA-A", km.EC_P256)
    emulator.add_fault("Sign", error=fault, count=-1)
    plugin.call_timeout = 4.0  # a persistent throttle is retried until the deadline
    error = rpc_error(lambda: plugin.sign_data("x509-CA-A", digest_of(km.SHA256), hash_algorithm=km.SHA256))
    assert error.code() == code
    assert '"x509-CA-A"' in error.details() and fault in error.details()


@pytest.mark.parametrize("state", ["Disabled", "PendingDeletion"])
def test_configure_refuses_a_key_it_cannot_use(
    start: StartPlugin, emulator: EmulatorControl, state: str
) -> None:
    first = start()
    first.configure(COMMUNITY_CONFIG)
    key = first.generate_key("x509-CA-A", km.EC_P256).public_key
    kms = emulator.kms_client()
    arn = kms.describe_key(KeyId="alias/SPIRE_SERVER_KEY/x509-CA-A")["KeyMetadata"]["Arn"]
    if state == "Disabled":
        kms.disable_key(KeyId=arn)
    else:
        kms.schedule_key_deletion(KeyId=arn, PendingWindowInDays=7)
    assert key.pkix_data

    second = start()
    error = rpc_error(lambda: second.configure(COMMUNITY_CONFIG))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert '"alias/SPIRE_SERVER_KEY/x509-CA-A"' in error.details() and state in error.details()


def test_keys_behind_many_pages_of_aliases_are_found(start: StartPlugin, emulator: EmulatorControl) -> None:
    first = start()
    first.configure(COMMUNITY_CONFIG)
    key = first.generate_key("x509-CA-A", km.EC_P256).public_key
    kms = emulator.kms_client()
    target = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    # Sorted before ours, so our alias sits beyond the first two pages of 100.
    for n in range(230):
        kms.create_alias(AliasName=f"alias/AAA-unrelated-{n:03}", TargetKeyId=target)
    emulator.reset_calls()
    second = start()
    second.configure(COMMUNITY_CONFIG)
    assert list(second.get_public_keys().public_keys) == [key]
    assert emulator.calls()["ListAliases"] >= 3


def test_configure_again_while_signing_is_safe(plugin: PluginProcess) -> None:
    key = plugin.generate_key("JWT-Signer-A", km.EC_P256).public_key
    digest = digest_of(km.SHA256)
    failures: list[BaseException] = []

    def sign_repeatedly() -> None:
        for _ in range(25):
            try:
                answer = plugin.sign_data(key.id, digest, hash_algorithm=km.SHA256)
                verify(key.pkix_data, answer.signature, km.SHA256, None)
            except BaseException as err:  # collected and asserted on below
                failures.append(err)

    signers = [threading.Thread(target=sign_repeatedly) for _ in range(4)]
    for thread in signers:
        thread.start()
    for _ in range(5):
        plugin.configure(COMMUNITY_CONFIG)
    for thread in signers:
        thread.join(60)
    assert failures == []
    assert list(plugin.get_public_keys().public_keys) == [key]
