"""An in-memory `plugin.kmsapi.Kms` for unit tests of the core: real key pairs (so signatures verify),
KMS's key states and alias rules, alias and key dates from a clock the test controls, tags and the tagging
API's GetResources, STS's caller identity, call counting, and failures injected per operation."""

from __future__ import annotations

import datetime
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from plugin.clock import SYSTEM_CLOCK, Clock
from plugin.kmsapi import Alias, CallerIdentity, KeyDescription, KmsError, PublicKey, TaggedResource

ACCOUNT = "111122223333"
REGION = "us-east-1"
_HASHES = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
_CURVES = {
    "ECC_NIST_P256": (ec.SECP256R1(), "ECDSA_SHA_256"),
    "ECC_NIST_P384": (ec.SECP384R1(), "ECDSA_SHA_384"),
}


@dataclass
class FakeKey:
    arn: str
    spec: str
    description: str
    tags: dict[str, str]
    policy: str | None
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    state: str = "Enabled"
    pending_window_days: int | None = None
    created: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    @property
    def der(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class FakeKms:
    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.keys: dict[str, FakeKey] = {}
        self.aliases: dict[str, str] = {}  # alias name -> key ARN
        self.alias_updated: dict[str, datetime.datetime] = {}
        self.calls: Counter[str] = Counter()
        self.caller_arn = f"arn:aws:iam::{ACCOUNT}:user/spire"
        self._failures: dict[str, list[KmsError]] = {}
        self._always: dict[str, str] = {}
        self.hooks: dict[str, Callable[[], None]] = {}
        self._lock = threading.Lock()

    # -- test controls -------------------------------------------------------------------------------

    @contextmanager
    def hold(self, operation: str) -> Iterator[threading.Event]:
        """Within the block, calls of `operation` wait until released; yields the event set once one is
        waiting. Leaving the block releases them."""
        entered, release = threading.Event(), threading.Event()

        def wait() -> None:
            entered.set()
            release.wait(10)

        self.hooks[operation] = wait
        try:
            yield entered
        finally:
            del self.hooks[operation]
            release.set()

    def fail(self, operation: str, code: str, times: int = 1) -> None:
        self._failures.setdefault(operation, []).extend(
            KmsError(operation, code, "injected failure") for _ in range(times)
        )

    def fail_always(self, operation: str, code: str) -> None:
        """Fail every call of the operation until clear_failures()."""
        with self._lock:
            self._always[operation] = code

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()
            self._always.clear()

    def live_keys(self) -> list[FakeKey]:
        return [k for k in list(self.keys.values()) if k.state != "PendingDeletion"]

    def add_key(
        self,
        description: str,
        tags: Mapping[str, str] | None = None,
        created: datetime.datetime | None = None,
        alias: str | None = None,
        alias_updated: datetime.datetime | None = None,
        spec: str = "ECC_NIST_P256",
    ) -> FakeKey:
        """A key as another server (or a crash) left it, with the dates the test chooses."""
        key = self._make_key(spec, description, tags or {}, None)
        if created is not None:
            key.created = created
        if alias is not None:
            self.aliases[alias] = key.arn
            self.alias_updated[alias] = alias_updated or key.created
        return key

    def target(self, alias_name: str) -> FakeKey | None:
        arn = self.aliases.get(alias_name)
        return self.keys.get(arn) if arn else None

    def _enter(self, operation: str) -> None:
        self.calls[operation] += 1
        hook = self.hooks.get(operation)
        if hook:
            hook()
        with self._lock:
            pending = self._failures.get(operation)
            if pending:
                raise pending.pop(0)
            code = self._always.get(operation)
            if code is not None:
                raise KmsError(operation, code, "injected failure")

    def _key(self, operation: str, key_id: str) -> FakeKey:
        arn = self.aliases.get(key_id, key_id)
        if arn not in self.keys:
            matches = [k for k in self.keys.values() if k.arn.endswith("/" + key_id)]
            if not matches:
                raise KmsError(operation, "NotFoundException", f"Key '{key_id}' does not exist")
            return matches[0]
        return self.keys[arn]

    def _usable(self, operation: str, key: FakeKey) -> None:
        if key.state == "Disabled":
            raise KmsError(operation, "DisabledException", f"{key.arn} is disabled.")
        if key.state != "Enabled":
            raise KmsError(operation, "KMSInvalidStateException", f"{key.arn} is pending deletion.")

    # -- Kms ------------------------------------------------------------------------------------------

    def list_aliases(self, key_id: str | None = None) -> Iterator[Alias]:
        self._enter("ListAliases")
        wanted = self._key("ListAliases", key_id).arn if key_id is not None else None
        for name, target in sorted(dict(self.aliases).items()):
            if wanted is None or target == wanted:
                yield Alias(
                    name=name,
                    target_key_id=target.rsplit("/", 1)[1],
                    last_updated=self.alias_updated.get(name),
                )

    def describe_key(self, key_id: str) -> KeyDescription:
        self._enter("DescribeKey")
        key = self._key("DescribeKey", key_id)
        return KeyDescription(key.arn, key.state, key.spec, key.description, key.created)

    def get_public_key(self, key_id: str) -> PublicKey:
        self._enter("GetPublicKey")
        key = self._key("GetPublicKey", key_id)
        self._usable("GetPublicKey", key)
        return PublicKey(key.arn, key.der, key.spec)

    def create_key(
        self, key_spec: str, description: str, tags: Mapping[str, str], policy: str | None
    ) -> KeyDescription:
        self._enter("CreateKey")
        key = self._make_key(key_spec, description, tags, policy)
        return KeyDescription(key.arn, key.state, key_spec, description, key.created)

    def _make_key(
        self, key_spec: str, description: str, tags: Mapping[str, str], policy: str | None
    ) -> FakeKey:
        private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if key_spec in _CURVES:
            private = ec.generate_private_key(_CURVES[key_spec][0])
        else:
            private = rsa.generate_private_key(65537, int(key_spec.split("_")[1]))
        arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{uuid.uuid4()}"
        key = FakeKey(arn, key_spec, description, dict(tags), policy, private, created=self.clock.now())
        self.keys[arn] = key
        return key

    def create_alias(self, alias_name: str, target_key_id: str) -> None:
        self._enter("CreateAlias")
        if alias_name in self.aliases:
            raise KmsError("CreateAlias", "AlreadyExistsException", f"{alias_name} already exists")
        key = self._key("CreateAlias", target_key_id)
        self._not_pending("CreateAlias", key)
        self.aliases[alias_name] = key.arn
        self.alias_updated[alias_name] = self.clock.now()

    def update_alias(self, alias_name: str, target_key_id: str) -> None:
        self._enter("UpdateAlias")
        if alias_name not in self.aliases:
            raise KmsError("UpdateAlias", "NotFoundException", f"{alias_name} does not exist")
        key = self._key("UpdateAlias", target_key_id)
        self._not_pending("UpdateAlias", key)
        self.aliases[alias_name] = key.arn
        self.alias_updated[alias_name] = self.clock.now()

    def _not_pending(self, operation: str, key: FakeKey) -> None:
        if key.state == "PendingDeletion":
            raise KmsError(operation, "KMSInvalidStateException", f"{key.arn} is pending deletion.")

    def schedule_key_deletion(self, key_id: str, pending_window_days: int) -> None:
        self._enter("ScheduleKeyDeletion")
        key = self._key("ScheduleKeyDeletion", key_id)
        if key.state == "PendingDeletion":
            raise KmsError("ScheduleKeyDeletion", "KMSInvalidStateException", "already pending deletion")
        key.state = "PendingDeletion"
        key.pending_window_days = pending_window_days

    def sign(self, key_id: str, digest: bytes, signing_algorithm: str) -> bytes:
        self._enter("Sign")
        key = self._key("Sign", key_id)
        self._usable("Sign", key)
        bits = signing_algorithm.rsplit("_", 1)[1]
        chosen = utils.Prehashed(_HASHES[bits])
        if isinstance(key.private, ec.EllipticCurvePrivateKey):
            if _CURVES[key.spec][1] != signing_algorithm:
                raise KmsError("Sign", "InvalidKeyUsageException", "wrong algorithm for key")
            return key.private.sign(digest, ec.ECDSA(chosen))
        if signing_algorithm.startswith("RSASSA_PSS"):
            pss = padding.PSS(mgf=padding.MGF1(_HASHES[bits]), salt_length=_HASHES[bits].digest_size)
            return key.private.sign(digest, pss, chosen)
        return key.private.sign(digest, padding.PKCS1v15(), chosen)

    def list_keys(self) -> Iterator[str]:
        self._enter("ListKeys")
        yield from sorted(self.keys)

    def delete_alias(self, alias_name: str) -> None:
        self._enter("DeleteAlias")
        if self.aliases.pop(alias_name, None) is None:
            raise KmsError("DeleteAlias", "NotFoundException", f"{alias_name} does not exist")
        self.alias_updated.pop(alias_name, None)

    def tag_resource(self, key_id: str, tags: Mapping[str, str]) -> None:
        self._enter("TagResource")
        key = self._key("TagResource", key_id)
        # KMS refuses to tag a key pending deletion; the plugin must cope with it.
        self._not_pending("TagResource", key)
        key.tags.update(tags)

    def get_resources(self, tag_filter: Mapping[str, Sequence[str]]) -> Iterator[TaggedResource]:
        self._enter("GetResources")
        for arn, key in sorted(dict(self.keys).items()):
            if all(key.tags.get(name) in values for name, values in tag_filter.items()):
                yield TaggedResource(arn, dict(key.tags))

    def caller_identity(self) -> CallerIdentity:
        self._enter("GetCallerIdentity")
        return CallerIdentity(ACCOUNT, self.caller_arn)
