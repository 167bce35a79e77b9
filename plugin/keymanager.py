"""The key manager core: SPIRE's keys, cached in memory, generated, replaced and used through KMS.

No gRPC and no boto3 here. Public keys are answered from memory; only signing and key generation reach
KMS. No lock is held across a KMS call: generating one key serialises only with other generations of the
same key id, and never blocks signing with, or reading, the others.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from plugin.algorithms import KeyType, SignRequest, key_spec_for, key_type_for_spec, signing_algorithm
from plugin.errors import FailedPrecondition, NotFound, PluginError
from plugin.kmsapi import Kms, KmsError, plugin_error
from plugin.lifecycle import DeletionQueue
from plugin.log import get_logger
from plugin.naming import AliasScheme

log = get_logger("keymanager")

ENABLED = "Enabled"


def fingerprint(pkix_der: bytes) -> str:
    return hashlib.sha256(pkix_der).hexdigest()


@dataclass(frozen=True)
class ManagedKey:
    key_id: str
    key_type: KeyType
    key_arn: str
    alias: str
    pkix_der: bytes
    fingerprint: str


@dataclass(frozen=True)
class KeySettings:
    """What the core needs from the plugin configuration."""

    scheme: AliasScheme
    key_tags: Mapping[str, str]
    key_policy: str | None
    deletion_window_days: int


@dataclass
class _State:
    """One configuration's view of the world. Configure replaces the whole state at once, so a request
    in flight keeps using the client and keys it started with."""

    settings: KeySettings
    kms: Kms
    keys: dict[str, ManagedKey]
    lock: threading.Lock = field(default_factory=threading.Lock)


def load_keys(kms: Kms, scheme: AliasScheme) -> dict[str, ManagedKey]:
    """Every key this server owns: the aliases under its prefix, each with its public key."""
    keys: dict[str, ManagedKey] = {}
    try:
        for alias in kms.list_aliases():
            key_id = scheme.key_id_for(alias.name)
            if key_id is None or not alias.target_key_id:
                continue
            description = kms.describe_key(alias.target_key_id)
            if description.key_state != ENABLED:
                raise FailedPrecondition(
                    f'alias "{alias.name}" points to key {description.arn} whose state is '
                    f"{description.key_state}; SPIRE key {key_id!r} cannot be used. Enable the key "
                    f"(or cancel its deletion), or delete the alias to let SPIRE create a new key"
                )
            key_type = key_type_for_spec(description.key_spec)
            if key_type is None:
                log.warn(
                    "Ignoring alias that points to a key SPIRE cannot use",
                    alias=alias.name,
                    key_arn=description.arn,
                    key_spec=description.key_spec,
                )
                continue
            public_key = kms.get_public_key(description.arn)
            keys[key_id] = ManagedKey(
                key_id=key_id,
                key_type=key_type,
                key_arn=description.arn,
                alias=alias.name,
                pkix_der=public_key.der,
                fingerprint=fingerprint(public_key.der),
            )
            log.debug("Key loaded", key_id=key_id, key_arn=description.arn, alias=alias.name)
    except KmsError as err:
        raise plugin_error(err, f'load the keys under "{scheme.alias_prefix}"') from None
    return keys


class KeyManager:
    def __init__(self, deletions: DeletionQueue) -> None:
        self._deletions = deletions
        self._state: _State | None = None
        self._generation_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def configure(self, settings: KeySettings, kms: Kms) -> None:
        keys = load_keys(kms, settings.scheme)
        self._state = _State(settings=settings, kms=kms, keys=keys)
        log.info("Keys loaded from KMS", count=len(keys), alias_prefix=settings.scheme.alias_prefix)

    def _current(self) -> _State:
        state = self._state
        if state is None:
            raise FailedPrecondition("not configured")
        return state

    def _generation_lock(self, key_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._generation_locks.setdefault(key_id, threading.Lock())

    def get_public_key(self, key_id: str) -> ManagedKey | None:
        return self._current().keys.get(key_id)

    def get_public_keys(self) -> list[ManagedKey]:
        return list(self._current().keys.values())

    def sign(
        self, key_id: str, digest: bytes, hash_algorithm: int, pss_salt_length: int | None
    ) -> tuple[bytes, str]:
        state = self._current()
        key = state.keys.get(key_id)
        if key is None:
            raise NotFound(f'no such key "{key_id}"')
        algorithm = signing_algorithm(SignRequest(key.key_type, hash_algorithm, len(digest), pss_salt_length))
        try:
            signature = state.kms.sign(key.key_arn, digest, algorithm)
        except KmsError as err:
            raise plugin_error(err, f'sign with key "{key_id}"') from None
        return signature, key.fingerprint

    def generate_key(self, key_id: str, key_type: KeyType) -> ManagedKey:
        state = self._current()
        settings = state.settings
        with self._generation_lock(key_id):
            try:
                created = state.kms.create_key(
                    key_spec_for(key_type),
                    settings.scheme.description_for(key_id),
                    settings.key_tags,
                    settings.key_policy,
                )
            except KmsError as err:
                raise plugin_error(err, f'create a key for "{key_id}"') from None
            log.debug("Key created", key_id=key_id, key_arn=created.arn)
            try:
                public_key = state.kms.get_public_key(created.arn)
                alias = settings.scheme.alias_for(key_id)
                replaced_arn = self._point_alias(state, key_id, alias, created.arn)
            except (KmsError, PluginError) as err:
                self._discard(state, created.arn, key_id)
                if isinstance(err, KmsError):
                    raise plugin_error(err, f'make new key {created.arn} the key for "{key_id}"') from None
                raise
            key = ManagedKey(
                key_id=key_id,
                key_type=key_type,
                key_arn=created.arn,
                alias=alias,
                pkix_der=public_key.der,
                fingerprint=fingerprint(public_key.der),
            )
            self._commit(state, key)
        if replaced_arn and replaced_arn != created.arn:
            self._deletions.enqueue(
                state.kms, replaced_arn, settings.deletion_window_days, f"replaced {key_id}"
            )
        log.info("Key generated", key_id=key_id, key_type=key_type.name, key_arn=created.arn, alias=alias)
        return key

    def _point_alias(self, state: _State, key_id: str, alias: str, key_arn: str) -> str | None:
        """Point the alias at the new key; returns the ARN of the key it pointed at before, if any."""
        previous = state.keys.get(key_id)
        if previous is not None:
            try:
                state.kms.update_alias(alias, key_arn)
                return previous.key_arn
            except KmsError as err:
                if err.code != "NotFoundException":
                    raise
                # Someone deleted the alias behind our back: create it afresh below.
        try:
            state.kms.create_alias(alias, key_arn)
            return previous.key_arn if previous else None
        except KmsError as err:
            if err.code != "AlreadyExistsException":
                raise
        # The alias exists but was not ours when we loaded (another process with the same prefix, or a
        # key created since): take it over and retire the key it pointed at, so none is left unmanaged.
        earlier = state.kms.describe_key(alias)
        state.kms.update_alias(alias, key_arn)
        return earlier.arn

    def _discard(self, state: _State, key_arn: str, key_id: str) -> None:
        """Roll back a half-made key so no key is left behind unmanaged."""
        try:
            state.kms.schedule_key_deletion(key_arn, state.settings.deletion_window_days)
            log.warn("Rolled back a key that could not be put in place", key_id=key_id, key_arn=key_arn)
        except KmsError as err:
            log.warn(
                "Roll-back deletion failed; queued for retry", key_id=key_id, key_arn=key_arn, error=str(err)
            )
            self._deletions.enqueue(
                state.kms, key_arn, state.settings.deletion_window_days, f"roll back {key_id}"
            )

    def _commit(self, used: _State, key: ManagedKey) -> None:
        # A Configure may have replaced the state while KMS was creating the key; the new state loaded
        # its keys before this alias moved, so it must learn the new key too when it names keys alike.
        states = [used]
        current = self._state
        if current is not None and current is not used and current.settings.scheme == used.settings.scheme:
            states.append(current)
        for state in states:
            with state.lock:
                state.keys = {**state.keys, key.key_id: key}

    def stop(self) -> None:
        self._deletions.stop()
