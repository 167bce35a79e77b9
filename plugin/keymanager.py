"""The key manager core: SPIRE's keys, cached in memory, generated, replaced and used through KMS.

No gRPC and no botocore here. Public keys are answered from memory; only signing and key generation reach
KMS. Signing and reading never wait for a lock held across a KMS call: the only such lock is the one per
key id that serialises generating that key with generating it again, or with its heartbeat.

With the built-in naming scheme each configuration also runs the background heartbeat and disposal
(plugin.lifecycle); Configure-again replaces them, stop() ends them.
"""

from __future__ import annotations

import datetime
import hashlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from plugin import metrics as plugin_metrics
from plugin.algorithms import KeyType, SignRequest, key_spec_for, key_type_for_spec, plan_signature
from plugin.clock import SYSTEM_CLOCK, Clock
from plugin.errors import ErrorKind, FailedPrecondition, InvalidArgument, NotFound, PluginError, quoted
from plugin.keypolicy import NOT_A_ROLE_WARNING, default_key_policy
from plugin.kmsapi import KeyDescription, Kms, KmsError, plugin_error
from plugin.lifecycle import DeletionQueue, Housekeeper, Timings, mark_inactive
from plugin.log import get_logger
from plugin.metrics import NO_METRICS, Metrics
from plugin.naming import TAG_KEY_ID, AliasScheme, BuiltinScheme, key_id_of, key_id_problem

log = get_logger("keymanager")

ENABLED = "Enabled"
# How often start-up reads an alias that keeps moving to a new key while it reads (rotations in a row).
ALIAS_READS = 3


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

    @classmethod
    def of(cls, key_id: str, key_type: KeyType, key_arn: str, alias: str, pkix_der: bytes) -> ManagedKey:
        """The key as KMS describes it, with the fingerprint SPIRE will remember it by."""
        return cls(key_id, key_type, key_arn, alias, pkix_der, fingerprint(pkix_der))


@dataclass(frozen=True)
class KeySettings:
    """What the core needs from the plugin configuration."""

    scheme: AliasScheme
    key_tags: Mapping[str, str]
    key_policy: str | None
    deletion_window_days: int
    # Built-in naming scheme only: find keys by their SPIRE tags (enable_tag_based_key_discovery).
    tag_discovery: bool = False
    # Without key_policy, give new keys the built-in's default policy (for the role we run as).
    default_key_policy: bool = False

    @property
    def discovers_by_tag(self) -> bool:
        return self.tag_discovery and isinstance(self.scheme, BuiltinScheme)


@dataclass
class _Load:
    """A Configure loading keys: what GenerateKey commits meanwhile under the same naming, which the
    loaded view may predate."""

    scheme: AliasScheme
    committed: dict[str, ManagedKey] = field(default_factory=dict)


@dataclass
class _KeyLock:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


@dataclass
class _State:
    """One configuration's view of the world. Configure replaces the whole state at once, so a request
    in flight keeps using the client and keys it started with."""

    settings: KeySettings
    kms: Kms
    keys: dict[str, ManagedKey]
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The default key policy once STS told us who we are: (policy,), the policy being None for KMS's own.
    default_policy: tuple[str | None] | None = None


def load_keys(
    kms: Kms, scheme: AliasScheme, tag_discovery: bool = False, now: datetime.datetime | None = None
) -> dict[str, ManagedKey]:
    """Every key this server owns: the aliases under its prefix, each with its public key; with tag-based
    discovery (built-in scheme) also the keys tagged as this server's, and keys found only by alias are
    tagged (migration)."""
    keys = _load_by_alias(kms, scheme)
    if tag_discovery and isinstance(scheme, BuiltinScheme):
        _load_by_tag(kms, scheme, keys, now or SYSTEM_CLOCK.now())
    return keys


def _load_by_alias(kms: Kms, scheme: AliasScheme) -> dict[str, ManagedKey]:
    keys: dict[str, ManagedKey] = {}
    try:
        for alias in kms.list_aliases():
            key_id = scheme.key_id_for(alias.name)
            if key_id is None or not alias.target_key_id:
                continue
            key: ManagedKey | None = None
            target = alias.target_key_id
            for attempt in range(1, ALIAS_READS + 1):
                try:
                    key = _load_alias(kms, key_id, alias.name, target, last_try=attempt == ALIAS_READS)
                    break
                except _RotatedMeanwhile:
                    # A rotation (ours or another replica's) retired the key since it was read: what
                    # the alias points at now decides, and only a key unusable now stops the start-up.
                    target = alias.name
            if key is not None:
                keys[key_id] = key
                log.debug("Key loaded", key_id=key_id, key_arn=key.key_arn, alias=alias.name)
    except KmsError as err:
        raise plugin_error(err, f'load the keys under "{scheme.alias_prefix}"') from None
    return keys


class _RotatedMeanwhile(Exception):
    """The key an alias pointed at when listed is no longer usable."""


def _load_alias(
    kms: Kms, key_id: str, alias_name: str, target: str, last_try: bool = False
) -> ManagedKey | None:
    """The key behind one alias (`target`: the key it was listed with, or the alias itself), or None
    when it is not a key SPIRE can use."""
    description = kms.describe_key(target)
    if description.key_state != ENABLED:
        if not last_try:
            raise _RotatedMeanwhile
        raise FailedPrecondition(
            f'alias "{alias_name}" points to key {description.arn} whose state is '
            f"{description.key_state}; SPIRE key {key_id!r} cannot be used. Enable the key "
            f"(or cancel its deletion), or delete the alias to let SPIRE create a new key"
        )
    key_type = key_type_for_spec(description.key_spec)
    if key_type is None:
        log.warn(
            "Ignoring alias that points to a key SPIRE cannot use",
            alias=alias_name,
            key_arn=description.arn,
            key_spec=description.key_spec,
        )
        return None
    try:
        public_key = kms.get_public_key(description.arn)
    except KmsError as err:
        if last_try or err.code != "KMSInvalidStateException":
            raise
        raise _RotatedMeanwhile from None
    return ManagedKey.of(key_id, key_type, description.arn, alias_name, public_key.der)


def _load_by_tag(
    kms: Kms, scheme: BuiltinScheme, keys: dict[str, ManagedKey], now: datetime.datetime
) -> None:
    """Adds the keys tagged as this server's whose alias is missing, and tags the keys found by alias
    that lack the tags. Where an alias and a tag disagree the alias wins: it is written last when a key
    is replaced, so a tagged key no alias points at is a replaced one, left to the disposal sweep."""
    try:
        tagged = list(kms.get_resources(scheme.own_tag_filter()))
    except KmsError as err:
        hint = ""
        if plugin_error(err, "").kind is ErrorKind.PERMISSION_DENIED:
            hint = (
                " (tag-based key discovery needs the tag:GetResources permission in an identity-based IAM "
                "policy; a key policy cannot grant it)"
            )
        raise plugin_error(err, f'find the keys of server "{scheme.server_id}" by tag{hint}') from None
    tagged_ids = {key_id_of(resource.arn) for resource in tagged}
    for key in keys.values():
        if key_id_of(key.key_arn) in tagged_ids:
            continue
        try:
            kms.tag_resource(key.key_arn, scheme.spire_tags(key.key_id, int(now.timestamp())))
            log.info(
                "Tagged a key found by alias, for tag-based discovery", key_id=key.key_id, key_arn=key.key_arn
            )
        except KmsError as err:
            # The key works without its tags; the heartbeat tags it again.
            log.warn("Failed to tag a key found by alias; will retry", key_arn=key.key_arn, error=str(err))
    found: dict[str, list[KeyDescription]] = {}
    try:
        for resource in tagged:
            key_id = resource.tags.get(TAG_KEY_ID)
            if not key_id:
                log.warn(
                    "Ignoring a key tagged as this server's without a spire-key-id tag", key_arn=resource.arn
                )
                continue
            if key_id in keys:
                continue
            description = kms.describe_key(resource.arn)
            if description.key_state != ENABLED or key_type_for_spec(description.key_spec) is None:
                log.warn(
                    "Ignoring a key tagged as this server's that SPIRE cannot use",
                    key_id=key_id,
                    key_arn=description.arn,
                    key_state=description.key_state,
                    key_spec=description.key_spec,
                )
                continue
            found.setdefault(key_id, []).append(description)
        for key_id, descriptions in found.items():
            newest = max(
                descriptions,
                key=lambda d: d.creation_date or datetime.datetime.min.replace(tzinfo=datetime.UTC),
            )
            key_type = key_type_for_spec(newest.key_spec)
            assert key_type is not None  # filtered above
            public_key = kms.get_public_key(newest.arn)
            alias = scheme.alias_for(key_id)
            keys[key_id] = ManagedKey.of(key_id, key_type, newest.arn, alias, public_key.der)
            # The heartbeat, which runs right after start-up, gives it its alias back.
            log.warn("Key found by tag has no alias", key_id=key_id, key_arn=newest.arn, alias=alias)
    except KmsError as err:
        raise plugin_error(err, f'load the keys of server "{scheme.server_id}" found by tag') from None


class _StateView:
    """One configuration's keys, as the background work sees them (plugin.lifecycle.KeyView)."""

    def __init__(self, manager: KeyManager, state: _State) -> None:
        self._manager = manager
        self._state = state

    def live_keys(self) -> Sequence[ManagedKey]:
        return list(self._state.keys.values())

    def current(self, key_id: str) -> ManagedKey | None:
        return self._state.keys.get(key_id)

    def hold(self, key_id: str) -> AbstractContextManager[bool]:
        return self._manager._generating(key_id, blocking=False)


class KeyManager:
    def __init__(
        self,
        deletions: DeletionQueue,
        clock: Clock = SYSTEM_CLOCK,
        timings: Timings | None = None,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._deletions = deletions
        self._metrics = metrics
        self._clock = clock
        self._timings = timings or Timings()
        self._state: _State | None = None
        self._housekeeper: Housekeeper | None = None
        # Guards the state, the housekeeper, the loads in progress and the per-key-id locks.
        self._locks_lock = threading.Lock()
        # Only ids being generated or kept alive right now: a lock map of every id ever asked would grow
        # with each request a caller makes up.
        self._generation_locks: dict[str, _KeyLock] = {}
        self._loads: list[_Load] = []

    def configure(self, settings: KeySettings, kms: Kms) -> None:
        load = _Load(settings.scheme)
        with self._locks_lock:
            self._loads.append(load)
        try:
            keys = load_keys(kms, settings.scheme, settings.discovers_by_tag, self._clock.now())
        except BaseException:
            with self._locks_lock:
                self._loads.remove(load)
            raise
        state = _State(settings=settings, kms=kms, keys=keys)
        housekeeper = None
        scheme = settings.scheme
        if isinstance(scheme, BuiltinScheme):
            housekeeper = Housekeeper(
                kms,
                scheme,
                _StateView(self, state),
                self._deletions,
                settings.deletion_window_days,
                settings.discovers_by_tag,
                self._clock,
                self._timings,
                self._metrics,
            )
        with self._locks_lock:
            self._loads.remove(load)
            # A key committed while loading is newer than what the load may have read for its id.
            state.keys = {**keys, **load.committed}
            self._state = state
            previous, self._housekeeper = self._housekeeper, housekeeper
        if previous is not None:
            previous.stop()
        if housekeeper is not None:
            housekeeper.start()
        self._report_keys()
        log.info(
            "Keys loaded from KMS",
            count=len(state.keys),
            alias_prefix=scheme.alias_prefix,
            tag_discovery=settings.discovers_by_tag,
        )

    def _report_keys(self) -> None:
        state = self._state
        if state is not None:
            self._metrics.set_gauge(plugin_metrics.KEYS, float(len(state.keys)))

    def report_state(self) -> None:
        """Report the gauges as they are now (to a sink connected late)."""
        self._report_keys()
        self._deletions.report_state()

    @property
    def housekeeper(self) -> Housekeeper | None:
        """The current configuration's background heartbeat and disposal (built-in scheme only)."""
        return self._housekeeper

    def _current(self) -> _State:
        state = self._state
        if state is None:
            raise FailedPrecondition("not configured")
        return state

    @contextmanager
    def _generating(self, key_id: str, blocking: bool = True) -> Iterator[bool]:
        """Holds the key id's generation lock (yields False when not blocking and it is taken); the
        entry lives only while someone uses it."""
        with self._locks_lock:
            entry = self._generation_locks.setdefault(key_id, _KeyLock())
            entry.users += 1
        acquired = entry.lock.acquire(blocking)
        try:
            yield acquired
        finally:
            if acquired:
                entry.lock.release()
            with self._locks_lock:
                entry.users -= 1
                if entry.users == 0:
                    del self._generation_locks[key_id]

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
            raise NotFound(f"no such key {quoted(key_id)}")
        plan = plan_signature(SignRequest(key.key_type, hash_algorithm, digest, pss_salt_length))
        if plan.fitted_from is not None:
            log.debug(
                "ECDSA digest fitted to the curve's hash",
                key_id=key_id,
                hash_algorithm=plan.fitted_from.name,
                signing_algorithm=plan.algorithm,
            )
        try:
            signature = state.kms.sign(key.key_arn, plan.digest, plan.algorithm)
        except KmsError as err:
            raise plugin_error(err, f"sign with key {quoted(key_id)}") from None
        return signature, key.fingerprint

    def generate_key(self, key_id: str, key_type: KeyType) -> ManagedKey:
        state = self._current()
        settings = state.settings
        problem = key_id_problem(settings.scheme, key_id)
        if problem is not None:
            raise InvalidArgument(f"key id {quoted(key_id)} cannot be stored in KMS: {problem}")
        with self._generating(key_id):
            try:
                created = state.kms.create_key(
                    key_spec_for(key_type),
                    settings.scheme.description_for(key_id),
                    self._tags_for(settings, key_id),
                    self._policy_for(state, key_id),
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
            key = ManagedKey.of(key_id, key_type, created.arn, alias, public_key.der)
            self._commit(state, key)
        if replaced_arn and replaced_arn != created.arn:
            self._deletions.enqueue(
                state.kms,
                replaced_arn,
                settings.deletion_window_days,
                f"replaced {key_id}",
                settings.discovers_by_tag,
            )
        log.info("Key generated", key_id=key_id, key_type=key_type.name, key_arn=created.arn, alias=alias)
        return key

    def _tags_for(self, settings: KeySettings, key_id: str) -> Mapping[str, str]:
        scheme = settings.scheme
        if not settings.discovers_by_tag or not isinstance(scheme, BuiltinScheme):
            return settings.key_tags
        # Stamped at creation, so a key whose server dies before its first heartbeat still ages.
        return {**settings.key_tags, **scheme.spire_tags(key_id, int(self._clock.now().timestamp()))}

    def _policy_for(self, state: _State, key_id: str) -> str | None:
        settings = state.settings
        if settings.key_policy is not None or not settings.default_key_policy:
            return settings.key_policy
        known = state.default_policy
        if known is not None:
            return known[0]
        try:
            identity = state.kms.caller_identity()
        except KmsError as err:
            raise plugin_error(
                err, f'learn the caller identity for the default key policy of "{key_id}"'
            ) from None
        policy = default_key_policy(identity.arn)
        if policy is None:
            log.warn(NOT_A_ROLE_WARNING, caller_arn=identity.arn)
        else:
            log.info("New keys get the default key policy for the role", caller_arn=identity.arn)
        state.default_policy = (policy,)
        return policy

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
        settings = state.settings
        try:
            state.kms.schedule_key_deletion(key_arn, settings.deletion_window_days)
            log.warn("Rolled back a key that could not be put in place", key_id=key_id, key_arn=key_arn)
        except KmsError as err:
            log.warn(
                "Roll-back deletion failed; queued for retry", key_id=key_id, key_arn=key_arn, error=str(err)
            )
            self._deletions.enqueue(
                state.kms,
                key_arn,
                settings.deletion_window_days,
                f"roll back {key_id}",
                settings.discovers_by_tag,
            )
            return
        if settings.discovers_by_tag:
            mark_inactive(state.kms, key_arn)

    def _commit(self, used: _State, key: ManagedKey) -> None:
        # A Configure may have replaced the state, or be loading one, while KMS was creating the key; what
        # it loaded may predate this alias move, so it must learn the new key too when it names keys alike.
        scheme = used.settings.scheme
        states = [used]
        with self._locks_lock:
            current = self._state
            if current is not None and current is not used and current.settings.scheme == scheme:
                states.append(current)
            for load in self._loads:
                if load.scheme == scheme:
                    load.committed[key.key_id] = key
        for state in states:
            with state.lock:
                state.keys = {**state.keys, key.key_id: key}
        self._report_keys()

    def stop(self) -> None:
        with self._locks_lock:
            housekeeper, self._housekeeper = self._housekeeper, None
        if housekeeper is not None:
            housekeeper.stop()
        self._deletions.stop()
