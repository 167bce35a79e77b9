"""The core's contract, against an in-memory KMS: caching, replacement, roll-back, concurrency, states."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from plugin.algorithms import HashAlgorithm, KeyType
from plugin.errors import ErrorKind, FailedPrecondition, NotFound, PluginError
from plugin.keymanager import KeyManager, KeySettings
from plugin.lifecycle import DeletionQueue
from plugin.naming import BuiltinScheme, CommunityScheme
from tests.support.fake_kms import FakeKms

DIGEST = hashlib.sha256(b"to be signed").digest()


def settings(scheme: CommunityScheme | BuiltinScheme | None = None, window: int = 7) -> KeySettings:
    return KeySettings(
        scheme=scheme or CommunityScheme(),
        key_tags={"team": "identity"},
        key_policy='{"Version": "2012-10-17"}',
        deletion_window_days=window,
    )


@pytest.fixture
def kms() -> FakeKms:
    return FakeKms()


@pytest.fixture
def deletions() -> Iterator[DeletionQueue]:
    queue = DeletionQueue(wait=lambda event, seconds: event.wait(0.01))
    yield queue
    queue.stop()


@pytest.fixture
def manager(kms: FakeKms, deletions: DeletionQueue) -> KeyManager:
    keys = KeyManager(deletions)
    keys.configure(settings(), kms)
    return keys


def verify(der: bytes, signature: bytes, digest: bytes = DIGEST) -> None:
    public = serialization.load_der_public_key(der)
    prehashed = utils.Prehashed(hashes.SHA256())
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, digest, ec.ECDSA(prehashed))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(signature, digest, padding.PKCS1v15(), prehashed)


def test_requests_before_configure_fail_with_not_configured(deletions: DeletionQueue) -> None:
    keys = KeyManager(deletions)
    for call in (
        lambda: keys.get_public_keys(),
        lambda: keys.get_public_key("x509-CA-A"),
        lambda: keys.generate_key("x509-CA-A", KeyType.EC_P256),
        lambda: keys.sign("x509-CA-A", DIGEST, HashAlgorithm.SHA256, None),
    ):
        with pytest.raises(FailedPrecondition, match="not configured"):
            call()


def test_generated_key_is_created_as_asked_and_served_from_memory(manager: KeyManager, kms: FakeKms) -> None:
    key = manager.generate_key("x509-CA-A", KeyType.EC_P256)
    (stored,) = kms.keys.values()
    assert stored.spec == "ECC_NIST_P256"
    assert stored.description == "SPIRE_SERVER_KEY/x509-CA-A"
    assert stored.tags == {"team": "identity"}
    assert stored.policy == '{"Version": "2012-10-17"}'
    assert kms.aliases == {"alias/SPIRE_SERVER_KEY/x509-CA-A": stored.arn}
    assert key.pkix_der == stored.der
    assert key.fingerprint == hashlib.sha256(stored.der).hexdigest()

    calls_before = sum(kms.calls.values())
    assert manager.get_public_key("x509-CA-A") == key
    assert manager.get_public_keys() == [key]
    assert manager.get_public_key("JWT-Signer-A") is None
    assert sum(kms.calls.values()) == calls_before


def test_sign_uses_the_key_and_returns_its_fingerprint(manager: KeyManager, kms: FakeKms) -> None:
    key = manager.generate_key("JWT-Signer-A", KeyType.RSA_2048)
    signature, fingerprint = manager.sign("JWT-Signer-A", DIGEST, HashAlgorithm.SHA256, None)
    verify(key.pkix_der, signature)
    assert fingerprint == key.fingerprint
    assert kms.calls["Sign"] == 1


def test_sign_unknown_key_is_not_found(manager: KeyManager) -> None:
    with pytest.raises(NotFound, match='no such key "x509-CA-B"'):
        manager.sign("x509-CA-B", DIGEST, HashAlgorithm.SHA256, None)


def test_regenerating_replaces_the_key_and_schedules_the_old_one_for_deletion(
    kms: FakeKms, deletions: DeletionQueue
) -> None:
    keys = KeyManager(deletions)
    keys.configure(settings(window=9), kms)
    first = keys.generate_key("x509-CA-A", KeyType.EC_P384)
    second = keys.generate_key("x509-CA-A", KeyType.EC_P384)
    assert second.fingerprint != first.fingerprint
    assert kms.aliases["alias/SPIRE_SERVER_KEY/x509-CA-A"] == second.key_arn
    assert deletions.wait_idle(5)
    assert kms.keys[first.key_arn].state == "PendingDeletion"
    assert kms.keys[first.key_arn].pending_window_days == 9
    assert kms.keys[second.key_arn].state == "Enabled"


def test_a_restart_finds_the_same_keys(manager: KeyManager, kms: FakeKms, deletions: DeletionQueue) -> None:
    made = {
        k: manager.generate_key(k, t)
        for k, t in [("x509-CA-A", KeyType.RSA_4096), ("JWT-Signer-A", KeyType.EC_P256)]
    }
    restarted = KeyManager(deletions)
    restarted.configure(settings(), kms)
    assert {k.key_id: k for k in restarted.get_public_keys()} == made


@pytest.mark.parametrize("failing", ["GetPublicKey", "CreateAlias"])
def test_failure_after_create_key_rolls_the_new_key_back(
    manager: KeyManager, kms: FakeKms, failing: str
) -> None:
    kms.fail(failing, "ThrottlingException")
    with pytest.raises(PluginError) as failed:
        manager.generate_key("x509-CA-A", KeyType.EC_P256)
    assert failed.value.kind is ErrorKind.UNAVAILABLE
    assert '"x509-CA-A"' in failed.value.message and "ThrottlingException" in failed.value.message
    assert kms.live_keys() == []
    assert manager.get_public_keys() == []


def test_failed_replacement_keeps_the_old_key_and_rolls_back_the_new(
    manager: KeyManager, kms: FakeKms
) -> None:
    old = manager.generate_key("x509-CA-A", KeyType.EC_P256)
    kms.fail("UpdateAlias", "AccessDeniedException")
    with pytest.raises(PluginError) as failed:
        manager.generate_key("x509-CA-A", KeyType.EC_P256)
    assert failed.value.kind is ErrorKind.PERMISSION_DENIED
    assert [k.arn for k in kms.live_keys()] == [old.key_arn]
    assert manager.get_public_key("x509-CA-A") == old


def test_roll_back_that_fails_is_retried_in_the_background(
    manager: KeyManager, kms: FakeKms, deletions: DeletionQueue
) -> None:
    kms.fail("CreateAlias", "KMSInternalException")
    kms.fail("ScheduleKeyDeletion", "ThrottlingException", times=2)
    with pytest.raises(PluginError):
        manager.generate_key("x509-CA-A", KeyType.EC_P256)
    assert deletions.wait_idle(5)
    assert kms.live_keys() == []
    assert kms.calls["ScheduleKeyDeletion"] == 3


def test_an_alias_taken_since_loading_is_taken_over_and_its_key_retired(
    manager: KeyManager, kms: FakeKms, deletions: DeletionQueue
) -> None:
    stray = kms.create_key("ECC_NIST_P256", "SPIRE_SERVER_KEY/x509-CA-A", {}, None)
    kms.create_alias("alias/SPIRE_SERVER_KEY/x509-CA-A", stray.arn)
    key = manager.generate_key("x509-CA-A", KeyType.EC_P256)
    assert kms.aliases["alias/SPIRE_SERVER_KEY/x509-CA-A"] == key.key_arn
    assert deletions.wait_idle(5)
    assert kms.keys[stray.arn].state == "PendingDeletion"


@pytest.mark.parametrize(
    ("state", "shown"), [("Disabled", "Disabled"), ("PendingDeletion", "PendingDeletion")]
)
def test_configure_refuses_a_key_that_cannot_be_used(
    manager: KeyManager, kms: FakeKms, deletions: DeletionQueue, state: str, shown: str
) -> None:
    key = manager.generate_key("x509-CA-A", KeyType.EC_P256)
    kms.keys[key.key_arn].state = state
    with pytest.raises(FailedPrecondition, match=f'alias "alias/SPIRE_SERVER_KEY/x509-CA-A".*{shown}'):
        KeyManager(deletions).configure(settings(), kms)


def test_only_this_servers_aliases_are_loaded(kms: FakeKms, deletions: DeletionQueue) -> None:
    servers = {name: KeyManager(deletions) for name in ("server1", "server10", "server1-b")}
    for server_id, keys in servers.items():
        keys.configure(settings(BuiltinScheme("example.org", server_id)), kms)
        keys.generate_key("x509-CA-A", KeyType.EC_P256)
    other_td = KeyManager(deletions)
    other_td.configure(settings(BuiltinScheme("example.org2", "server1")), kms)
    other_td.generate_key("x509-CA-A", KeyType.EC_P256)

    reloaded = KeyManager(deletions)
    reloaded.configure(settings(BuiltinScheme("example.org", "server1")), kms)
    (only,) = reloaded.get_public_keys()
    assert only == servers["server1"].get_public_key("x509-CA-A")
    assert only.alias == "alias/SPIRE_SERVER/example_org/server1/x509-CA-A"
    for keys in (*servers.values(), other_td, reloaded):
        housekeeper = keys.housekeeper
        assert housekeeper is not None, "the built-in scheme runs the heartbeat and disposal"
        housekeeper.stop()


def test_acme_key_ids_round_trip_through_alias_encoding(
    manager: KeyManager, kms: FakeKms, deletions: DeletionQueue
) -> None:
    key_id = "bundle-acme-example.org+extra"
    manager.generate_key(key_id, KeyType.EC_P256)
    assert "alias/SPIRE_SERVER_KEY/bundle-acme-example_2eorg_2bextra" in kms.aliases
    reloaded = KeyManager(deletions)
    reloaded.configure(settings(), kms)
    assert [k.key_id for k in reloaded.get_public_keys()] == [key_id]


def test_generating_one_key_does_not_block_signing_with_another(manager: KeyManager, kms: FakeKms) -> None:
    manager.generate_key("JWT-Signer-A", KeyType.EC_P256)
    generator = threading.Thread(target=manager.generate_key, args=("x509-CA-A", KeyType.EC_P256))
    with kms.hold("CreateKey") as entered:
        generator.start()
        assert entered.wait(5)
        manager.sign("JWT-Signer-A", DIGEST, HashAlgorithm.SHA256, None)
        assert manager.get_public_key("JWT-Signer-A") is not None
        assert generator.is_alive()
    generator.join(10)
    assert manager.get_public_key("x509-CA-A") is not None


def test_reconfigure_while_generating_keeps_the_new_key(manager: KeyManager, kms: FakeKms) -> None:
    generator = threading.Thread(target=manager.generate_key, args=("x509-CA-A", KeyType.EC_P256))
    with kms.hold("CreateAlias") as entered:
        generator.start()
        assert entered.wait(5)
        manager.configure(settings(), kms)
    generator.join(10)
    key = manager.get_public_key("x509-CA-A")
    assert key is not None and kms.aliases["alias/SPIRE_SERVER_KEY/x509-CA-A"] == key.key_arn


def test_sign_errors_name_the_key_and_the_aws_code(manager: KeyManager, kms: FakeKms) -> None:
    manager.generate_key("x509-CA-A", KeyType.EC_P256)
    kms.fail("Sign", "DisabledException")
    with pytest.raises(PluginError) as failed:
        manager.sign("x509-CA-A", DIGEST, HashAlgorithm.SHA256, None)
    assert failed.value.kind is ErrorKind.FAILED_PRECONDITION
    assert failed.value.message.startswith(
        'failed to sign with key "x509-CA-A": KMS Sign returned DisabledException'
    )


def test_a_key_generated_while_configure_loads_is_the_one_served(
    manager: KeyManager, kms: FakeKms, deletions: DeletionQueue
) -> None:
    old = manager.generate_key("x509-CA-A", KeyType.EC_P256)
    loader_waits, generated = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def configure() -> None:
        try:
            manager.configure(settings(), kms)
        except BaseException as err:
            failures.append(err)

    loading = threading.Thread(target=configure)

    def describe_key_after_the_rotation() -> None:
        # Configure has listed the alias (still at the old key) and reads that key, still enabled, only
        # once GenerateKey has moved the alias.
        if threading.current_thread() is loading:
            loader_waits.set()
            generated.wait(10)

    kms.hooks["DescribeKey"] = describe_key_after_the_rotation
    with kms.hold("ScheduleKeyDeletion"):
        loading.start()
        assert loader_waits.wait(5)
        new = manager.generate_key("x509-CA-A", KeyType.EC_P256)
        generated.set()
        loading.join(10)
    assert not loading.is_alive() and failures == []
    assert manager.get_public_key("x509-CA-A") == new
    signature, fingerprint = manager.sign("x509-CA-A", DIGEST, HashAlgorithm.SHA256, None)
    verify(new.pkix_der, signature)
    assert fingerprint == new.fingerprint
    assert deletions.wait_idle(5) and kms.keys[old.key_arn].state == "PendingDeletion"


@pytest.mark.parametrize(
    ("between", "rotations"),
    [
        ("ListAliases and DescribeKey", 1),
        ("DescribeKey and GetPublicKey", 1),
        ("DescribeKey and GetPublicKey", 2),
    ],
)
def test_configure_reads_again_an_alias_another_replica_rotated_meanwhile(
    manager: KeyManager, kms: FakeKms, deletions: DeletionQueue, between: str, rotations: int
) -> None:
    manager.generate_key("x509-CA-A", KeyType.EC_P256)
    replica = KeyManager(deletions)
    replica.configure(settings(), kms)
    rotated: list[str] = []
    rotating = threading.Lock()

    def rotate() -> None:
        # The other replica rotates the key after the loader has looked at the current one (`rotations`
        # times in a row; the replica's own calls come through here too and pass).
        if len(rotated) < rotations and rotating.acquire(blocking=False):
            try:
                before = kms.target("alias/SPIRE_SERVER_KEY/x509-CA-A")
                rotated.append(replica.generate_key("x509-CA-A", KeyType.EC_P256).key_arn)
                assert before is not None and deletions.wait_idle(5)
                assert kms.keys[before.arn].state == "PendingDeletion"
            finally:
                rotating.release()

    kms.hooks["DescribeKey" if between.endswith("DescribeKey") else "GetPublicKey"] = rotate
    manager.configure(settings(), kms)
    key = manager.get_public_key("x509-CA-A")
    assert key is not None and len(rotated) == rotations and key.key_arn == rotated[-1]


@pytest.mark.parametrize(
    ("scheme", "key_id", "message"),
    [
        (
            CommunityScheme(),
            "x509 CA",
            'key id "x509 CA" cannot be stored in KMS: alias names may only contain a-z, A-Z, 0-9, /, _ '
            "and -",
        ),
        (
            BuiltinScheme("example.org", "server1"),
            "team/x509-CA-A",
            'key id "team/x509-CA-A" cannot be stored in KMS: its alias would not read back as the same key '
            "id (it holds / or an encoded _2e or _2b)",
        ),
        (
            CommunityScheme(),
            "k" * 1_000_000,
            f'key id "{"k" * 64}..." (1000000 characters) cannot be stored in KMS: alias names may be at '
            "most 256 characters, not 1000023",
        ),
    ],
)
def test_a_key_id_that_can_never_get_its_alias_is_refused_before_any_key_is_made(
    kms: FakeKms, deletions: DeletionQueue, scheme: CommunityScheme | BuiltinScheme, key_id: str, message: str
) -> None:
    keys = KeyManager(deletions)
    keys.configure(settings(scheme), kms)
    with pytest.raises(PluginError) as refused:
        keys.generate_key(key_id, KeyType.EC_P256)
    assert (refused.value.kind, refused.value.message) == (ErrorKind.INVALID_ARGUMENT, message)
    assert kms.calls["CreateKey"] == 0
    if keys.housekeeper is not None:
        keys.housekeeper.stop()


def test_an_unknown_huge_key_id_is_not_echoed_whole(manager: KeyManager) -> None:
    with pytest.raises(NotFound) as failed:
        manager.sign("x" * 1_000_000, DIGEST, HashAlgorithm.SHA256, None)
    assert failed.value.message == f'no such key "{"x" * 64}..." (1000000 characters)'


def test_no_per_key_state_is_kept_for_ids_once_their_request_is_over(
    manager: KeyManager, kms: FakeKms
) -> None:
    manager.generate_key("x509-CA-A", KeyType.EC_P256)
    kms.fail("CreateKey", "KMSInternalException", times=3)
    for attempt in range(3):
        with pytest.raises(PluginError):
            manager.generate_key(f"bundle-acme-{attempt}", KeyType.EC_P256)
    for attempt in range(3):
        with pytest.raises(PluginError):
            manager.generate_key(f"bad id {attempt}", KeyType.EC_P256)
    assert manager._generation_locks == {}
