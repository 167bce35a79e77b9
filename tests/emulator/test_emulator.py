"""Self-test of the KMS emulator against the KMS facts (/work/shared/spec/aws-kms-facts.md).

Every signature is checked here with `cryptography` against the public key from GetPublicKey; the
emulator's own Verify is never trusted (moto's Verify shared its Sign bug and hid it). Every KMS patch
is covered: removing any one of them makes at least one test here fail.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.support.kms_emulator import EmulatorControl, EmulatorProcess, start_emulator_process

RSA_ALGORITHMS = [
    "RSASSA_PKCS1_V1_5_SHA_256",
    "RSASSA_PKCS1_V1_5_SHA_384",
    "RSASSA_PKCS1_V1_5_SHA_512",
    "RSASSA_PSS_SHA_256",
    "RSASSA_PSS_SHA_384",
    "RSASSA_PSS_SHA_512",
]
VALID_ALGORITHMS = {
    "RSA_2048": RSA_ALGORITHMS,
    "RSA_4096": RSA_ALGORITHMS,
    "ECC_NIST_P256": ["ECDSA_SHA_256"],
    "ECC_NIST_P384": ["ECDSA_SHA_384"],
}
HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
ACCOUNT = "123456789012"
# Raw HTTP to the emulator, never through an HTTP(S)_PROXY from the environment.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
DAY = 86400


def hash_for(algorithm: str) -> hashes.HashAlgorithm:
    return HASHES[algorithm[-3:]]()


def digest(data: bytes, algorithm: str) -> bytes:
    return hashlib.new(hash_for(algorithm).name, data).digest()


def error_code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return str(excinfo.value.response["Error"]["Code"])


def http_status(excinfo: pytest.ExceptionInfo[ClientError]) -> int:
    return int(excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"])


def epoch(value: datetime) -> float:
    return value.timestamp()


def verify_locally(public_key: Any, algorithm: str, data: bytes, signature: bytes) -> None:
    """Verify a KMS signature over the original data exactly as KMS specifies it (raises if invalid).

    A DIGEST-mode signature must verify over the *original* data hashed once: if the emulator hashed the
    digest again (moto's bug) this fails. PSS is checked with salt length = hash length: OpenSSL enforces
    the exact salt length, so moto's maximum-length salt fails too.
    """
    algorithm_hash = hash_for(algorithm)
    if algorithm.startswith("ECDSA"):
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        public_key.verify(signature, data, ec.ECDSA(algorithm_hash))
        return
    assert isinstance(public_key, rsa.RSAPublicKey)
    pad: padding.AsymmetricPadding
    if "_PSS_" in algorithm:
        pad = padding.PSS(mgf=padding.MGF1(hash_for(algorithm)), salt_length=algorithm_hash.digest_size)
    else:
        pad = padding.PKCS1v15()
    public_key.verify(signature, data, pad, algorithm_hash)


# --------------------------------------------------------------------------------------------------
# Fixtures: one emulator process for the module, always stopped
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    process = start_emulator_process()
    try:
        yield process
    finally:
        status = process.stop()
    assert status == 0, f"emulator did not exit cleanly on SIGTERM (status {status})"


@pytest.fixture(scope="module")
def module_control(emulator: EmulatorProcess) -> EmulatorControl:
    return EmulatorControl(emulator.url)


@pytest.fixture(scope="module")
def kms(module_control: EmulatorControl) -> Any:
    return module_control.kms_client()


@pytest.fixture
def control(module_control: EmulatorControl) -> Iterator[EmulatorControl]:
    """The control client for tests that inject faults or move the clock; undone after each test."""
    yield module_control
    module_control.clear_faults()
    module_control.set_clock_offset(0)


class SigningKeys:
    """One key per spec, created on first use (RSA-4096 generation is slow) and reused by the module."""

    def __init__(self, kms: Any) -> None:
        self._kms = kms
        self._ids: dict[str, str] = {}
        self._public: dict[str, Any] = {}

    def key_id(self, spec: str) -> str:
        if spec not in self._ids:
            meta = self._kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]
            self._ids[spec] = meta["KeyId"]
        return self._ids[spec]

    def public_key(self, spec: str) -> Any:
        if spec not in self._public:
            der = self._kms.get_public_key(KeyId=self.key_id(spec))["PublicKey"]
            self._public[spec] = serialization.load_der_public_key(der)
        return self._public[spec]

    def forget(self) -> None:
        """After an emulator reset the keys are gone."""
        self._ids.clear()
        self._public.clear()


@pytest.fixture(scope="module")
def signing_keys(kms: Any) -> SigningKeys:
    return SigningKeys(kms)


def new_key(kms: Any, spec: str = "ECC_NIST_P256", usage: str = "SIGN_VERIFY") -> dict[str, Any]:
    return dict(kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"])


# --------------------------------------------------------------------------------------------------
# The process
# --------------------------------------------------------------------------------------------------


def test_binds_loopback_only(emulator: EmulatorProcess) -> None:
    assert emulator.url.startswith("http://127.0.0.1:")
    tcp = Path("/proc/net/tcp")
    if not tcp.exists():
        pytest.skip("needs Linux /proc/net/tcp")
    listening = []
    for path in (tcp, Path("/proc/net/tcp6")):
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if state == "0A" and int(port, 16) == emulator.port:  # 0A = LISTEN
                listening.append((path.name, address))
    # 0100007F is 127.0.0.1 in /proc's little-endian hex; 0.0.0.0 or any IPv6 socket would show here.
    assert listening == [("tcp", "0100007F")]


def test_health_and_unknown_control_paths(control: EmulatorControl) -> None:
    with HTTP.open(f"{control.url}/_emulator/health", timeout=5) as response:
        assert json.loads(response.read()) == {"status": "ok"}
    with pytest.raises(urllib.error.HTTPError) as missing:
        HTTP.open(f"{control.url}/_emulator/nothing", timeout=5)
    assert missing.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as wrong_method:
        HTTP.open(urllib.request.Request(f"{control.url}/_emulator/reset"), timeout=5)
    assert wrong_method.value.code == 405


# --------------------------------------------------------------------------------------------------
# Signing
# --------------------------------------------------------------------------------------------------

SIGNING_CASES = [
    (spec, algorithm, message_type)
    for spec, algorithms in VALID_ALGORITHMS.items()
    for algorithm in algorithms
    for message_type in ("RAW", "DIGEST")
]


@pytest.mark.parametrize(("spec", "algorithm", "message_type"), SIGNING_CASES)
def test_sign_every_valid_pair_verifies_with_cryptography(
    kms: Any, signing_keys: SigningKeys, spec: str, algorithm: str, message_type: str
) -> None:
    data = f"to be signed by {spec} with {algorithm}".encode()
    message = digest(data, algorithm) if message_type == "DIGEST" else data
    answer = kms.sign(
        KeyId=signing_keys.key_id(spec), Message=message, MessageType=message_type, SigningAlgorithm=algorithm
    )
    assert answer["SigningAlgorithm"] == algorithm
    assert answer["KeyId"].startswith(f"arn:aws:kms:us-east-1:{ACCOUNT}:key/")
    verify_locally(signing_keys.public_key(spec), algorithm, data, answer["Signature"])


def test_ecdsa_signature_is_der(kms: Any, signing_keys: SigningKeys) -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    message = digest(b"der", "ECDSA_SHA_384")
    answer = kms.sign(
        KeyId=signing_keys.key_id("ECC_NIST_P384"),
        Message=message,
        MessageType="DIGEST",
        SigningAlgorithm="ECDSA_SHA_384",
    )
    r, s = decode_dss_signature(answer["Signature"])  # raises unless DER SEQUENCE{r, s}
    assert r > 0 and s > 0


def test_local_pss_check_rejects_maximum_salt() -> None:
    """Guard for the test above: a PSS signature with moto's maximum salt must not pass verify_locally."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data = b"salted"
    for hash_type in (hashes.SHA256, hashes.SHA512):
        signature = private_key.sign(
            data, padding.PSS(mgf=padding.MGF1(hash_type()), salt_length=padding.PSS.MAX_LENGTH), hash_type()
        )
        algorithm = f"RSASSA_PSS_SHA_{hash_type.digest_size * 8}"
        with pytest.raises(InvalidSignature):
            verify_locally(private_key.public_key(), algorithm, data, signature)


def test_sign_by_alias_and_arn_answers_key_arn(kms: Any, signing_keys: SigningKeys) -> None:
    key_id = signing_keys.key_id("ECC_NIST_P256")
    arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName="alias/sign-by-alias", TargetKeyId=key_id)
    try:
        for reference in (
            key_id,
            arn,
            "alias/sign-by-alias",
            f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/sign-by-alias",
        ):
            answer = kms.sign(KeyId=reference, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
            assert answer["KeyId"] == arn
            verify_locally(
                signing_keys.public_key("ECC_NIST_P256"), "ECDSA_SHA_256", b"m", answer["Signature"]
            )
    finally:
        kms.delete_alias(AliasName="alias/sign-by-alias")


@pytest.mark.parametrize(
    ("spec", "algorithm", "length"),
    [
        ("ECC_NIST_P256", "ECDSA_SHA_256", 48),
        ("ECC_NIST_P256", "ECDSA_SHA_256", 20),
        ("ECC_NIST_P384", "ECDSA_SHA_384", 32),
        ("RSA_2048", "RSASSA_PSS_SHA_384", 32),
        ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_512", 48),
    ],
)
def test_digest_of_wrong_length_is_refused(
    kms: Any, signing_keys: SigningKeys, spec: str, algorithm: str, length: int
) -> None:
    with pytest.raises(ClientError) as excinfo:
        kms.sign(
            KeyId=signing_keys.key_id(spec),
            Message=b"\x01" * length,
            MessageType="DIGEST",
            SigningAlgorithm=algorithm,
        )
    assert error_code(excinfo) == "ValidationException"


def test_raw_message_over_4096_bytes_is_refused(kms: Any, signing_keys: SigningKeys) -> None:
    with pytest.raises(ClientError) as excinfo:
        kms.sign(
            KeyId=signing_keys.key_id("ECC_NIST_P256"), Message=b"x" * 4097, SigningAlgorithm="ECDSA_SHA_256"
        )
    assert error_code(excinfo) == "ValidationException"


@pytest.mark.parametrize(
    ("spec", "algorithm"),
    [
        ("ECC_NIST_P256", "ECDSA_SHA_384"),
        ("ECC_NIST_P256", "ECDSA_SHA_512"),
        ("ECC_NIST_P256", "RSASSA_PSS_SHA_256"),
        ("ECC_NIST_P384", "ECDSA_SHA_256"),
        ("ECC_NIST_P384", "RSASSA_PKCS1_V1_5_SHA_384"),
        ("RSA_2048", "ECDSA_SHA_256"),
        ("RSA_2048", "ECDSA_SHA_384"),
    ],
)
def test_wrong_key_algorithm_pair_is_invalid_key_usage(
    kms: Any, signing_keys: SigningKeys, spec: str, algorithm: str
) -> None:
    message = digest(b"m", algorithm)
    with pytest.raises(ClientError) as excinfo:
        kms.sign(
            KeyId=signing_keys.key_id(spec), Message=message, MessageType="DIGEST", SigningAlgorithm=algorithm
        )
    assert error_code(excinfo) == "InvalidKeyUsageException"


def test_signing_with_an_encryption_key_is_invalid_key_usage(kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]  # KMS default: SYMMETRIC_DEFAULT, ENCRYPT_DECRYPT
    assert key["KeyUsage"] == "ENCRYPT_DECRYPT"
    with pytest.raises(ClientError) as excinfo:
        kms.sign(KeyId=key["KeyId"], Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    assert error_code(excinfo) == "InvalidKeyUsageException"


def test_unknown_signing_algorithm_is_validation_error(kms: Any, signing_keys: SigningKeys) -> None:
    with pytest.raises(ClientError) as excinfo:
        kms.sign(KeyId=signing_keys.key_id("ECC_NIST_P256"), Message=b"m", SigningAlgorithm="ECDSA_SHA_1")
    assert error_code(excinfo) == "ValidationException"


def test_incompatible_key_usage_and_spec_are_refused_at_creation(kms: Any) -> None:
    with pytest.raises(ClientError) as excinfo:
        kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="ENCRYPT_DECRYPT")
    assert error_code(excinfo) == "ValidationException"


def test_emulator_verify_uses_the_same_semantics(kms: Any, signing_keys: SigningKeys) -> None:
    key_id = signing_keys.key_id("RSA_2048")
    message = digest(b"v", "RSASSA_PSS_SHA_256")
    signature = kms.sign(
        KeyId=key_id, Message=message, MessageType="DIGEST", SigningAlgorithm="RSASSA_PSS_SHA_256"
    )["Signature"]
    ok = kms.verify(
        KeyId=key_id,
        Message=message,
        MessageType="DIGEST",
        Signature=signature,
        SigningAlgorithm="RSASSA_PSS_SHA_256",
    )
    assert ok["SignatureValid"] is True
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    with pytest.raises(ClientError) as excinfo:
        kms.verify(
            KeyId=key_id,
            Message=message,
            MessageType="DIGEST",
            Signature=tampered,
            SigningAlgorithm="RSASSA_PSS_SHA_256",
        )
    assert error_code(excinfo) == "KMSInvalidSignatureException"


# --------------------------------------------------------------------------------------------------
# GetPublicKey
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", list(VALID_ALGORITHMS))
def test_get_public_key_fields(kms: Any, signing_keys: SigningKeys, spec: str) -> None:
    key_id = signing_keys.key_id(spec)
    answer = kms.get_public_key(KeyId=key_id)
    assert answer["KeyId"] == kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    assert answer["KeyId"] == f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{key_id}"
    assert answer["KeySpec"] == spec
    assert answer["KeyUsage"] == "SIGN_VERIFY"
    assert sorted(answer["SigningAlgorithms"]) == sorted(VALID_ALGORITHMS[spec])
    assert "EncryptionAlgorithms" not in answer
    public_key = serialization.load_der_public_key(answer["PublicKey"])  # DER SubjectPublicKeyInfo
    if spec.startswith("RSA"):
        assert isinstance(public_key, rsa.RSAPublicKey)
        assert public_key.key_size == int(spec.split("_")[1])
    else:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        expected_curve = {"ECC_NIST_P256": "secp256r1", "ECC_NIST_P384": "secp384r1"}[spec]
        assert public_key.curve.name == expected_curve


# --------------------------------------------------------------------------------------------------
# Key states and deletion
# --------------------------------------------------------------------------------------------------


def test_disabled_key_refuses_sign_and_get_public_key(kms: Any) -> None:
    key = new_key(kms)
    key_id = key["KeyId"]
    kms.disable_key(KeyId=key["Arn"])  # by ARN: moto's own DisableKey only took a bare key id
    with pytest.raises(ClientError) as sign_error:
        kms.sign(KeyId=key_id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    assert error_code(sign_error) == "DisabledException"
    with pytest.raises(ClientError) as public_key_error:
        kms.get_public_key(KeyId=key_id)
    assert error_code(public_key_error) == "DisabledException"
    kms.enable_key(KeyId=key["Arn"])
    kms.sign(KeyId=key_id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")


def test_pending_deletion_lifecycle(kms: Any) -> None:
    key = new_key(kms)
    key_id = key["KeyId"]
    before = time.time()
    scheduled = kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert scheduled["KeyId"] == key["Arn"]
    assert scheduled["KeyState"] == "PendingDeletion"
    assert scheduled["PendingWindowInDays"] == 7
    assert abs(epoch(scheduled["DeletionDate"]) - (before + 7 * DAY)) < 60
    described = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert described["KeyState"] == "PendingDeletion"
    assert described["Enabled"] is False

    calls: list[Callable[[], Any]] = [
        lambda: kms.sign(KeyId=key_id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256"),
        lambda: kms.get_public_key(KeyId=key_id),
        lambda: kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7),  # a second schedule
        lambda: kms.enable_key(KeyId=key_id),
        lambda: kms.disable_key(KeyId=key_id),
    ]
    for call in calls:
        with pytest.raises(ClientError) as excinfo:
            call()
        assert error_code(excinfo) == "KMSInvalidStateException"

    cancelled = kms.cancel_key_deletion(KeyId=key_id)
    assert cancelled["KeyId"] == key["Arn"]
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"  # not Enabled
    with pytest.raises(ClientError) as disabled:
        kms.sign(KeyId=key_id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    assert error_code(disabled) == "DisabledException"
    kms.enable_key(KeyId=key_id)
    kms.sign(KeyId=key_id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")


@pytest.mark.parametrize("days", [1, 6, 31, 365])  # botocore itself refuses < 1
def test_schedule_key_deletion_window_outside_7_to_30_is_refused(kms: Any, days: int) -> None:
    key_id = new_key(kms)["KeyId"]
    with pytest.raises(ClientError) as excinfo:
        kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=days)
    assert error_code(excinfo) == "ValidationException"
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


def test_schedule_key_deletion_defaults_to_30_days(kms: Any) -> None:
    key_id = new_key(kms)["KeyId"]
    before = time.time()
    scheduled = kms.schedule_key_deletion(KeyId=key_id)
    assert scheduled["PendingWindowInDays"] == 30
    assert abs(epoch(scheduled["DeletionDate"]) - (before + 30 * DAY)) < 60
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["PendingDeletionWindowInDays"] == 30


def test_cancel_key_deletion_needs_a_pending_key(kms: Any) -> None:
    key_id = new_key(kms)["KeyId"]
    with pytest.raises(ClientError) as excinfo:
        kms.cancel_key_deletion(KeyId=key_id)
    assert error_code(excinfo) == "KMSInvalidStateException"


def test_key_is_deleted_when_the_clock_passes_its_deletion_date(kms: Any, control: EmulatorControl) -> None:
    key_id = new_key(kms)["KeyId"]
    kms.create_alias(AliasName="alias/doomed", TargetKeyId=key_id)
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    control.set_clock_offset(6 * DAY)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    control.set_clock_offset(7 * DAY + 60)
    with pytest.raises(ClientError) as excinfo:
        kms.describe_key(KeyId=key_id)
    assert error_code(excinfo) == "NotFoundException"
    assert "alias/doomed" not in [a["AliasName"] for a in kms.list_aliases()["Aliases"]]


# --------------------------------------------------------------------------------------------------
# Aliases and listing
# --------------------------------------------------------------------------------------------------


def test_alias_dates_and_update_alias_bumps_last_updated(kms: Any, control: EmulatorControl) -> None:
    first, second = new_key(kms)["KeyId"], new_key(kms)["KeyId"]
    before = time.time()
    kms.create_alias(AliasName="alias/dated", TargetKeyId=first)
    (created,) = kms.list_aliases(KeyId=first)["Aliases"]
    assert created["AliasName"] == "alias/dated"
    assert created["AliasArn"] == f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/dated"
    assert abs(epoch(created["CreationDate"]) - before) < 60
    assert created["LastUpdatedDate"] == created["CreationDate"]

    control.set_clock_offset(3600)  # an hour later, without sleeping
    kms.update_alias(AliasName="alias/dated", TargetKeyId=second)
    assert kms.list_aliases(KeyId=first)["Aliases"] == []
    (updated,) = kms.list_aliases(KeyId=second)["Aliases"]
    assert updated["TargetKeyId"] == second
    assert updated["CreationDate"] == created["CreationDate"]
    assert 3500 < epoch(updated["LastUpdatedDate"]) - epoch(created["LastUpdatedDate"]) < 3700
    kms.delete_alias(AliasName="alias/dated")


def test_update_alias_across_key_types_is_refused(kms: Any) -> None:
    signing, encryption = new_key(kms)["KeyId"], kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/typed", TargetKeyId=signing)
    try:
        with pytest.raises(ClientError) as excinfo:
            kms.update_alias(AliasName="alias/typed", TargetKeyId=encryption)
        assert error_code(excinfo) == "ValidationException"
    finally:
        kms.delete_alias(AliasName="alias/typed")


def test_reserved_and_invalid_alias_names_are_refused(kms: Any) -> None:
    key_id = new_key(kms)["KeyId"]
    with pytest.raises(ClientError) as reserved:
        kms.create_alias(AliasName="alias/aws/mine", TargetKeyId=key_id)
    assert error_code(reserved) == "NotAuthorizedException"
    for name in ("alias/" + "a" * 251, "alias/bad:name", "alias/", "noprefix"):
        with pytest.raises(ClientError) as invalid:
            kms.create_alias(AliasName=name, TargetKeyId=key_id)
        assert error_code(invalid) == "ValidationException", name
    kms.create_alias(AliasName="alias/" + "a" * 250, TargetKeyId=key_id)  # 256 characters in all
    with pytest.raises(ClientError) as duplicate:
        kms.create_alias(AliasName="alias/" + "a" * 250, TargetKeyId=key_id)
    assert error_code(duplicate) == "AlreadyExistsException"


def test_list_aliases_has_no_synthetic_aws_entries(control: EmulatorControl) -> None:
    kms = control.kms_client(region="eu-north-1")  # a region nobody else in this module uses
    assert kms.list_aliases()["Aliases"] == []
    key_id = new_key(kms)["KeyId"]
    kms.create_alias(AliasName="alias/only-one", TargetKeyId=key_id)
    assert [a["AliasName"] for a in kms.list_aliases()["Aliases"]] == ["alias/only-one"]


def test_list_aliases_pages_with_limit_and_marker_and_filters_by_key(control: EmulatorControl) -> None:
    kms = control.kms_client(region="eu-west-1")
    key_id, other_key_id = new_key(kms)["KeyId"], new_key(kms)["KeyId"]
    names = [f"alias/page-{i}" for i in range(5)]
    for name in names:
        kms.create_alias(AliasName=name, TargetKeyId=key_id)
    kms.create_alias(AliasName="alias/other", TargetKeyId=other_key_id)

    seen: list[str] = []
    pages = 0
    request: dict[str, Any] = {"Limit": 1, "KeyId": key_id}
    while True:
        page = kms.list_aliases(**request)
        pages += 1
        assert len(page["Aliases"]) == 1
        seen.extend(a["AliasName"] for a in page["Aliases"])
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        request["Marker"] = page["NextMarker"]
    assert pages == 5
    assert sorted(seen) == names and len(set(seen)) == 5

    assert [a["AliasName"] for a in kms.list_aliases(KeyId=other_key_id)["Aliases"]] == ["alias/other"]
    everything = kms.list_aliases(Limit=100)
    assert not everything["Truncated"]
    assert len(everything["Aliases"]) == 6
    with pytest.raises(ClientError) as excinfo:
        kms.list_aliases(Limit=101)  # botocore itself refuses Limit < 1
    assert error_code(excinfo) == "ValidationException"


def test_list_keys_pages_with_limit_and_marker(control: EmulatorControl) -> None:
    kms = control.kms_client(region="ap-southeast-2")
    # EC keys: moto generates an RSA key pair even for a symmetric key, so those are slow to create.
    created = {new_key(kms)["KeyId"] for _ in range(4)}
    seen: list[str] = []
    request: dict[str, Any] = {"Limit": 1}
    pages = 0
    while True:
        page = kms.list_keys(**request)
        pages += 1
        assert len(page["Keys"]) == 1
        seen.extend(k["KeyId"] for k in page["Keys"])
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        request["Marker"] = page["NextMarker"]
    assert pages == 4
    assert set(seen) == created and len(seen) == 4
    page = kms.list_keys(Limit=3)
    assert page["Truncated"] and len(page["Keys"]) == 3
    rest = kms.list_keys(Limit=3, Marker=page["NextMarker"])
    assert not rest["Truncated"] and len(rest["Keys"]) == 1
    with pytest.raises(ClientError) as excinfo:
        kms.list_keys(Limit=1001)
    assert error_code(excinfo) == "ValidationException"


# --------------------------------------------------------------------------------------------------
# Fault injection, counters, clock, reset
# --------------------------------------------------------------------------------------------------


def test_throttling_for_count_calls_then_success(
    kms: Any, control: EmulatorControl, signing_keys: SigningKeys
) -> None:
    key_id = signing_keys.key_id("ECC_NIST_P256")
    control.reset_calls()
    control.add_fault("Sign", error="ThrottlingException", status=400, message="Rate exceeded", count=3)
    for _ in range(3):
        with pytest.raises(ClientError) as excinfo:
            kms.sign(KeyId=key_id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
        assert error_code(excinfo) == "ThrottlingException"
        assert excinfo.value.response["Error"]["Message"] == "Rate exceeded"
        assert http_status(excinfo) == 400
    kms.sign(KeyId=key_id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    assert control.calls() == {"Sign": 4}
    assert control.faults() == []


def test_internal_error_with_status_500(kms: Any, control: EmulatorControl) -> None:
    control.add_fault("ListKeys", error="KMSInternalException", status=500, message="boom")
    with pytest.raises(ClientError) as excinfo:
        kms.list_keys()
    assert error_code(excinfo) == "KMSInternalException"
    assert http_status(excinfo) == 500
    kms.list_keys()


def test_delay_only_fault_delays_the_real_answer(
    kms: Any, control: EmulatorControl, signing_keys: SigningKeys
) -> None:
    key_id = signing_keys.key_id("ECC_NIST_P256")
    control.add_fault("GetPublicKey", error=None, delay_ms=400)
    started = time.monotonic()
    answer = kms.get_public_key(KeyId=key_id)
    assert time.monotonic() - started >= 0.4
    assert answer["KeySpec"] == "ECC_NIST_P256"
    started = time.monotonic()
    kms.get_public_key(KeyId=key_id)
    assert time.monotonic() - started < 0.4


def test_delay_then_error(kms: Any, control: EmulatorControl) -> None:
    control.add_fault("DescribeKey", error="DependencyTimeoutException", status=503, delay_ms=200)
    started = time.monotonic()
    with pytest.raises(ClientError) as excinfo:
        kms.describe_key(KeyId="alias/whatever")
    assert time.monotonic() - started >= 0.2
    assert error_code(excinfo) == "DependencyTimeoutException"
    assert http_status(excinfo) == 503


def test_wildcard_fault_until_cleared_covers_kms_and_sts(kms: Any, control: EmulatorControl) -> None:
    control.add_fault("*", error="AccessDeniedException", message="no", count=-1)
    sts = control.sts_client()
    for _ in range(3):
        for call in (kms.list_keys, kms.list_aliases, sts.get_caller_identity):
            with pytest.raises(ClientError) as excinfo:
                call()
            assert error_code(excinfo) == "AccessDeniedException"
    assert len(control.faults()) == 1
    control.clear_faults()
    kms.list_keys()
    sts.get_caller_identity()


def test_queued_faults_apply_in_order_and_per_operation(kms: Any, control: EmulatorControl) -> None:
    control.add_fault("ListAliases", error="ThrottlingException", count=1)
    control.add_fault("ListAliases", error="KMSInternalException", status=500, count=1)
    control.add_fault("CreateKey", error="LimitExceededException", count=1)
    kms.list_keys()  # other operations are untouched
    codes = []
    for _ in range(2):
        with pytest.raises(ClientError) as excinfo:
            kms.list_aliases()
        codes.append(error_code(excinfo))
    assert codes == ["ThrottlingException", "KMSInternalException"]
    kms.list_aliases()
    with pytest.raises(ClientError) as excinfo:
        kms.create_key()
    assert error_code(excinfo) == "LimitExceededException"


def test_sts_fault_by_action_name(control: EmulatorControl) -> None:
    sts = control.sts_client()
    control.add_fault("GetCallerIdentity", error="Throttling", message="slow down")
    with pytest.raises(ClientError) as excinfo:
        sts.get_caller_identity()
    assert error_code(excinfo) == "Throttling"
    assert excinfo.value.response["Error"]["Message"] == "slow down"
    assert sts.get_caller_identity()["Account"] == ACCOUNT


def test_invalid_fault_requests_are_rejected(control: EmulatorControl) -> None:
    for body in (
        {"error": "ThrottlingException"},  # no operation
        {"operation": "Sign", "error": "ThrottlingException", "count": 0},
        {"operation": "Sign", "error": "ThrottlingException", "status": 200},
        {"operation": "Sign", "error": None},  # neither error nor delay
        {"operation": "Sign", "error": "X", "delay_ms": -1},
    ):
        request = urllib.request.Request(
            f"{control.url}/_emulator/faults", data=json.dumps(body).encode(), method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            HTTP.open(request, timeout=5)
        assert excinfo.value.code == 400, body
    assert control.faults() == []


def test_call_counters_count_kms_and_sts_calls(kms: Any, control: EmulatorControl) -> None:
    control.reset_calls()
    assert control.calls() == {}
    kms.list_keys()
    kms.list_keys()
    with pytest.raises(ClientError):
        kms.describe_key(KeyId="alias/does-not-exist")  # failed calls count too
    control.sts_client().get_caller_identity()
    assert control.calls() == {"ListKeys": 2, "DescribeKey": 1, "GetCallerIdentity": 1}
    control.reset_calls()
    assert control.calls() == {}


def test_callers_name_the_credentials_each_call_was_signed_with(control: EmulatorControl) -> None:
    """A test can tell which credentials a client used, and which ones STS handed out, never the tokens."""
    control.reset_calls()
    role_arn = "arn:aws:iam::123456789012:role/spire-server"
    issued = control.sts_client().assume_role(RoleArn=role_arn, RoleSessionName="spire")["Credentials"]
    as_role = boto3.session.Session(
        aws_access_key_id=issued["AccessKeyId"],
        aws_secret_access_key=issued["SecretAccessKey"],
        aws_session_token=issued["SessionToken"],
        region_name="us-east-1",
    ).client("kms", endpoint_url=control.url)
    as_role.list_keys()
    token = "eyJhbGciOiJSUzI1NiJ9.irsa-test-token.sig"
    unsigned = boto3.session.Session(region_name="us-east-1").client(
        "sts", endpoint_url=control.url, config=Config(signature_version=UNSIGNED)
    )
    unsigned.assume_role_with_web_identity(RoleArn=role_arn, RoleSessionName="irsa", WebIdentityToken=token)
    callers = control.callers()
    assert [(c["operation"], c["access_key_id"], c["session_token"]) for c in callers] == [
        ("AssumeRole", "testing", False),
        ("ListKeys", issued["AccessKeyId"], True),
        ("AssumeRoleWithWebIdentity", None, False),
    ]
    assert callers[0]["issued_access_key_id"] == issued["AccessKeyId"]
    assert callers[0]["role_arn"] == role_arn
    secret_sha256 = hashlib.sha256(issued["SecretAccessKey"].encode()).hexdigest()
    assert callers[0]["issued_secret_access_key_sha256"] == secret_sha256
    assert callers[2]["web_identity_token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert callers[2]["issued_access_key_id"].startswith("ASIA")
    assert token not in json.dumps(callers)
    assert issued["SecretAccessKey"] not in json.dumps(callers)
    assert control.access_key_ids("ListKeys") == [issued["AccessKeyId"]]
    control.reset_calls()
    assert control.callers() == []


def test_sts_duration_sets_the_lifetime_of_handed_out_role_credentials(control: EmulatorControl) -> None:
    sts = control.sts_client()
    role_arn = "arn:aws:iam::123456789012:role/spire-server"

    def lifetime(**request: Any) -> float:
        expiration = sts.assume_role(RoleArn=role_arn, RoleSessionName="spire", **request)["Credentials"]
        return float(expiration["Expiration"].timestamp() - time.time())

    assert abs(lifetime() - 3600) < 60
    control.set_sts_duration(920)
    try:
        assert abs(lifetime() - 920) < 60
        assert abs(lifetime(DurationSeconds=7200) - 920) < 60
        with HTTP.open(f"{control.url}/_emulator/sts", timeout=5) as response:
            assert json.loads(response.read()) == {"duration_seconds": 920}
        for bad in (899, 43201, "920"):
            request = urllib.request.Request(
                f"{control.url}/_emulator/sts",
                data=json.dumps({"duration_seconds": bad}).encode(),
                method="POST",
            )
            with pytest.raises(urllib.error.HTTPError) as excinfo:
                HTTP.open(request, timeout=5)
            assert excinfo.value.code == 400, bad
    finally:
        control.set_sts_duration(None)
    assert abs(lifetime(DurationSeconds=7200) - 7200) < 60


def test_clock_offset_moves_creation_dates(kms: Any, control: EmulatorControl) -> None:
    two_weeks = 14 * DAY
    control.set_clock_offset(two_weeks)
    assert control.clock_offset() == two_weeks
    with HTTP.open(f"{control.url}/_emulator/clock", timeout=5) as response:
        state = json.loads(response.read())
    assert abs(state["now"] - (time.time() + two_weeks)) < 60
    created = new_key(kms)["CreationDate"]
    assert abs(epoch(created) - (time.time() + two_weeks)) < 60
    control.set_clock_offset(0)
    assert abs(epoch(new_key(kms)["CreationDate"]) - time.time()) < 60


def test_sts_get_caller_identity_and_assume_role(control: EmulatorControl) -> None:
    sts = control.sts_client()
    identity = sts.get_caller_identity()
    assert identity["Account"] == ACCOUNT
    role_arn = "arn:aws:iam::210987654321:role/spire-server"
    credentials = sts.assume_role(RoleArn=role_arn, RoleSessionName="spire")["Credentials"]
    assert credentials["AccessKeyId"] and credentials["SessionToken"]


def test_reset_clears_state_faults_counters_and_clock(
    kms: Any, control: EmulatorControl, signing_keys: SigningKeys
) -> None:
    new_key(kms)
    control.add_fault("Decrypt", error="ThrottlingException", count=-1)
    control.set_clock_offset(DAY)
    control.set_sts_duration(900)
    control.reset()
    signing_keys.forget()
    with HTTP.open(f"{control.url}/_emulator/sts", timeout=5) as response:
        assert json.loads(response.read()) == {"duration_seconds": None}
    assert control.faults() == []
    assert control.calls() == {}
    assert control.clock_offset() == 0
    assert kms.list_keys()["Keys"] == []
    assert control.calls() == {"ListKeys": 1}


def test_raw_http_error_shape(control: EmulatorControl) -> None:
    """What a non-Python client sees: KMS's JSON error body, status and headers."""
    control.add_fault("Sign", error="ThrottlingException", message="Rate exceeded")
    request = urllib.request.Request(
        control.url,
        data=b"{}",
        method="POST",
        headers={"X-Amz-Target": "TrentService.Sign", "Content-Type": "application/x-amz-json-1.1"},
    )
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        HTTP.open(request, timeout=5)
    assert excinfo.value.code == 400
    assert excinfo.value.headers["Content-Type"] == "application/x-amz-json-1.1"
    assert json.loads(excinfo.value.read()) == {"__type": "ThrottlingException", "message": "Rate exceeded"}


def test_emulator_is_not_reachable_on_other_addresses(emulator: EmulatorProcess) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent; this only picks the outbound interface
        address = probe.getsockname()[0]
    except OSError:
        pytest.skip("no non-loopback IPv4 address")
    finally:
        probe.close()
    if address.startswith("127."):
        pytest.skip("no non-loopback IPv4 address")
    with pytest.raises(OSError):
        socket.create_connection((address, emulator.port), timeout=2).close()


def test_probabilistic_fault_hits_about_that_share_of_calls(kms: Any, control: EmulatorControl) -> None:
    control.add_fault("ListKeys", count=-1, probability=0.3)
    before = control.calls().get("ListKeys", 0)
    throttled = 0
    for _ in range(200):
        try:
            kms.list_keys(Limit=1)
        except ClientError as err:
            assert err.response["Error"]["Code"] == "ThrottlingException"
            throttled += 1
    assert 30 <= throttled <= 95, throttled
    assert control.calls()["ListKeys"] - before == 200
