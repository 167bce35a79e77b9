"""Background work on keys: keep this server's keys alive, reclaim the keys dead servers and crashes left
behind, and schedule the deletion of keys SPIRE no longer uses.

With the built-in naming scheme every server of a trust domain shares one alias namespace,
``alias/SPIRE_SERVER/<trust domain>/<server id>/<key id>``, and marks its keys' descriptions with the trust
domain. Each server

- **heartbeat** (at start-up, then every 6 hours): re-points each of its aliases at the key it already
  targets, which moves the alias's LastUpdatedDate; with tag-based discovery it also stamps the key's
  ``spire-last-update`` tag (and the other SPIRE tags, which migrates keys made before discovery by tag);
- **disposal** (at start-up, then daily): deletes the aliases of *other* servers of its trust domain that
  no heartbeat touched for 14 days and schedules their keys for deletion (with tag-based discovery: the
  keys whose ``spire-last-update`` is 14 days old); and schedules for deletion the keys of its trust domain
  that no alias points at and that are older than 48 hours: keys left by a crash between CreateKey and
  CreateAlias, or replaced keys whose deletion was lost.

It never touches its own keys, keys of other trust domains, disabled keys, or keys whose names merely
start alike (``example.org2`` for ``example.org``, ``server10`` for ``server1``: every prefix compared
ends in ``/``). Every KMS failure is logged and the pass retried sooner than its period; nothing here holds
a lock that signing takes, and nothing here can stop the plugin.

The community naming scheme has no trust domain and no server id to tell servers apart: there only the
replaced keys of this server are deleted (through the deletion queue).
"""

from __future__ import annotations

import datetime
import queue
import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from plugin import metrics as plugin_metrics
from plugin.clock import SYSTEM_CLOCK, Clock
from plugin.disposal import (
    ORPHAN_AFTER,
    STALE_AFTER,
    BadStamp,
    Disposal,
    KeyFacts,
    Rules,
    Step,
    alias_stale_since,
    last_update,
    orphan_step,
    stale_step,
    tag_stale_since,
)
from plugin.kmsapi import ALREADY_GONE, Alias, Kms, KmsError
from plugin.log import get_logger
from plugin.metrics import NO_METRICS, Metrics
from plugin.naming import TAG_ACTIVE, TAG_SERVER_ID, BuiltinScheme, key_id_of

log = get_logger("lifecycle")

MIN_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0

INVALID_STATE = "KMSInvalidStateException"


@dataclass(frozen=True)
class Timings:
    """How often the background passes run and when a key counts as abandoned. SPIRE's built-in
    aws_kms uses the same thresholds, so servers of both kinds can share a trust domain."""

    heartbeat_every: datetime.timedelta = datetime.timedelta(hours=6)
    dispose_every: datetime.timedelta = datetime.timedelta(days=1)
    stale_after: datetime.timedelta = STALE_AFTER
    orphan_after: datetime.timedelta = ORPHAN_AFTER
    # A pass that met a failure runs again after this, doubling up to its period.
    first_retry: datetime.timedelta = datetime.timedelta(minutes=1)


# --------------------------------------------------------------------------------------------------
# Deletion queue
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Deletion:
    kms: Kms
    key_arn: str
    window_days: int
    reason: str
    mark_inactive: bool


def mark_inactive(kms: Kms, key_arn: str) -> None:
    """Tag-based discovery: drop a key scheduled for deletion from every server's active keys. Only
    after the deletion is scheduled, so a crash in between leaves a key the disposal still finds. Best
    effort: a key pending deletion is ignored by every server whatever its tags say."""
    try:
        _tag_inactive(kms, key_arn)
    except KmsError as err:
        log.warn("Failed to tag a key scheduled for deletion as inactive", key_arn=key_arn, error=str(err))


def _tag_inactive(kms: Kms, key_arn: str) -> None:
    try:
        kms.tag_resource(key_arn, {TAG_ACTIVE: "false"})
    except KmsError as err:
        # KMS may refuse to tag a key pending deletion; it is out of every server's way all the same.
        if err.code != INVALID_STATE:
            raise
        log.debug("Key pending deletion could not be tagged inactive", key_arn=key_arn)


class DeletionQueue:
    """Schedules key deletions off the request path, retrying with backoff until KMS accepts the request
    or says the key is already gone or pending deletion. A deletion lost to a crash leaves an unaliased key
    that the disposal sweep finds later."""

    def __init__(
        self, wait: Callable[[threading.Event, float], bool] | None = None, metrics: Metrics = NO_METRICS
    ) -> None:
        self._metrics = metrics
        self._queue: queue.Queue[_Deletion | None] = queue.Queue()
        self._stopped = threading.Event()
        self._wait = wait or (lambda event, seconds: event.wait(seconds))
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="key-deletion", daemon=True)
        self._thread.start()

    def enqueue(
        self, kms: Kms, key_arn: str, window_days: int, reason: str, mark_inactive: bool = False
    ) -> None:
        with self._idle:
            self._pending += 1
            pending = self._pending
        self._metrics.set_gauge(plugin_metrics.DELETIONS_PENDING, float(pending))
        self._queue.put(_Deletion(kms, key_arn, window_days, reason, mark_inactive))

    def stop(self) -> None:
        self._stopped.set()
        self._queue.put(None)

    def wait_idle(self, timeout: float) -> bool:
        """True once every enqueued deletion was accepted or given up (tests and orderly shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def report_state(self) -> None:
        with self._idle:
            pending = self._pending
        self._metrics.set_gauge(plugin_metrics.DELETIONS_PENDING, float(pending))

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            pending = self._pending
            self._idle.notify_all()
        self._metrics.set_gauge(plugin_metrics.DELETIONS_PENDING, float(pending))

    def _run(self) -> None:
        while not self._stopped.is_set():
            item = self._queue.get()
            if item is None:
                return
            self._delete(item)
            self._done()

    def _delete(self, item: _Deletion) -> None:
        if self._schedule(item) and item.mark_inactive:
            mark_inactive(item.kms, item.key_arn)

    def _schedule(self, item: _Deletion) -> bool:
        """True once the key is pending deletion; False when it is gone or the plugin stops."""
        backoff = MIN_BACKOFF_SECONDS
        while not self._stopped.is_set():
            try:
                item.kms.schedule_key_deletion(item.key_arn, item.window_days)
                log.info(
                    "Key scheduled for deletion",
                    key_arn=item.key_arn,
                    pending_window_days=item.window_days,
                    reason=item.reason,
                )
                return True
            except KmsError as err:
                if err.code in ALREADY_GONE:
                    log.debug("Key already deleted or pending deletion", key_arn=item.key_arn, code=err.code)
                    return err.code == INVALID_STATE
                log.warn(
                    "Failed to schedule key deletion; will retry",
                    key_arn=item.key_arn,
                    error=str(err),
                    retry_in_seconds=round(backoff, 1),
                )
            if self._wait(self._stopped, backoff * random.uniform(0.5, 1.0)):
                log.error("Key deletion abandoned at shutdown", key_arn=item.key_arn)
                return False
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        return False


# --------------------------------------------------------------------------------------------------
# What the background work needs from the key manager
# --------------------------------------------------------------------------------------------------


class LiveKey(Protocol):
    @property
    def key_id(self) -> str: ...

    @property
    def alias(self) -> str: ...

    @property
    def key_arn(self) -> str: ...


class KeyView(Protocol):
    """This server's keys, as one configuration of the key manager holds them."""

    def live_keys(self) -> Sequence[LiveKey]: ...

    def current(self, key_id: str) -> LiveKey | None: ...

    def hold(self, key_id: str) -> AbstractContextManager[bool]:
        """Keep the key from being replaced while its alias is refreshed; yields False (without waiting)
        when a replacement is already under way."""
        ...


# --------------------------------------------------------------------------------------------------
# Heartbeat and disposal
# --------------------------------------------------------------------------------------------------


class Housekeeper:
    """The heartbeat and disposal passes of one server (built-in naming scheme), each a plain method
    that returns how many steps failed; `start` runs them in the background."""

    def __init__(
        self,
        kms: Kms,
        scheme: BuiltinScheme,
        view: KeyView,
        deletions: DeletionQueue,
        window_days: int,
        tag_discovery: bool = False,
        clock: Clock = SYSTEM_CLOCK,
        timings: Timings | None = None,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._kms = kms
        self._metrics = metrics
        self._scheme = scheme
        self._view = view
        self._deletions = deletions
        self._window_days = window_days
        self._tag_discovery = tag_discovery
        self._clock = clock
        self._timings = timings or Timings()
        self._stopped = threading.Event()
        # Keys already described and found to belong to no SPIRE server of this trust domain: a key's
        # description does not change, so each is described once per configuration, not once per sweep.
        self._foreign: set[str] = set()
        self._runner: PeriodicRunner | None = None

    # -- running -----------------------------------------------------------------------------------

    def start(self) -> Housekeeper:
        timings = self._timings
        self._runner = PeriodicRunner(
            [
                PeriodicTask("heartbeat", timings.heartbeat_every, self.heartbeat),
                PeriodicTask("disposal", timings.dispose_every, self.dispose),
            ],
            self._clock,
            self._stopped,
            timings.first_retry,
            name=f"lifecycle-{self._scheme.server_id}",
            metrics=self._metrics,
        )
        return self

    def stop(self) -> None:
        self._stopped.set()

    def wait_idle(self, timeout: float) -> bool:
        """True once every due pass ran and the background thread sleeps until the next (tests)."""
        return self._runner is None or self._runner.wait_idle(timeout)

    def join(self, timeout: float) -> bool:
        """True once the background thread has ended (after stop)."""
        return self._runner is None or self._runner.join(timeout)

    # -- heartbeat ---------------------------------------------------------------------------------

    def heartbeat(self) -> int:
        now = self._clock.now()
        failures = 0
        refreshed = 0
        for key in self._view.live_keys():
            if self._stopped.is_set():
                break
            with self._view.hold(key.key_id) as held:
                if not held:
                    # Being replaced right now: pointing the alias at the new key refreshes it anyway.
                    continue
                current = self._view.current(key.key_id)
                if current is None:
                    continue
                try:
                    refreshed += self._refresh(current, now)
                except KmsError as err:
                    failures += 1
                    log.warn(
                        "Heartbeat failed for a key; will retry",
                        key_id=current.key_id,
                        alias=current.alias,
                        key_arn=current.key_arn,
                        error=str(err),
                    )
        self._metrics.incr_counter(plugin_metrics.HEARTBEAT_KEYS_REFRESHED, float(refreshed))
        log.debug("Heartbeat done", refreshed=refreshed, failures=failures)
        return failures

    def _refresh(self, key: LiveKey, now: datetime.datetime) -> int:
        try:
            target = self._kms.describe_key(key.alias)
        except KmsError as err:
            if err.code != "NotFoundException":
                raise
            # Without its alias our key looks orphaned to every server's sweep: put it back.
            self._kms.create_alias(key.alias, key.key_arn)
            log.warn(
                "Alias of a key in use was missing; created it again", alias=key.alias, key_arn=key.key_arn
            )
        else:
            if key_id_of(target.arn) != key_id_of(key.key_arn):
                log.warn(
                    "Alias points to another key than the one in use (replaced by another server with the "
                    "same server id?); leaving it as it is",
                    key_id=key.key_id,
                    alias=key.alias,
                    key_arn=key.key_arn,
                    alias_target=target.arn,
                )
                return 0
            self._kms.update_alias(key.alias, key.key_arn)
        if self._tag_discovery:
            self._kms.tag_resource(key.key_arn, self._scheme.spire_tags(key.key_id, int(now.timestamp())))
        return 1

    # -- disposal ----------------------------------------------------------------------------------

    def rules(self, ours: frozenset[str]) -> Rules:
        """The disposal rules of this server, `ours` being the keys it uses now."""
        return Rules(
            self._scheme,
            ours,
            self._tag_discovery,
            stale_after=self._timings.stale_after,
            orphan_after=self._timings.orphan_after,
        )

    def dispose(self) -> int:
        now = self._clock.now()
        rules = self.rules(frozenset(key_id_of(key.key_arn) for key in self._view.live_keys()))
        try:
            aliases = list(self._kms.list_aliases())
        except KmsError as err:
            log.warn("Disposal could not list aliases; will retry", error=str(err))
            return 1
        if self._tag_discovery:
            done, failures = self._dispose_stale_tagged(now, rules, aliases)
        else:
            done, failures = self._dispose_stale_aliases(now, rules, aliases)
        failures += self._sweep_orphans(now, rules, rules.ours | done.keys, aliases, done.aliases)
        self._metrics.incr_counter(plugin_metrics.DISPOSAL_KEYS_SCHEDULED, float(len(done.keys)))
        self._metrics.incr_counter(plugin_metrics.DISPOSAL_ALIASES_DELETED, float(len(done.aliases)))
        log.debug("Disposal done", keys=len(done.keys), aliases=len(done.aliases), failures=failures)
        return failures

    def _dispose_stale_aliases(
        self, now: datetime.datetime, rules: Rules, aliases: list[Alias]
    ) -> tuple[_Disposed, int]:
        done = _Disposed()
        failures = 0
        by_target = _by_target(aliases)
        # Described only when one of its aliases looks stale: most keys belong to live servers.
        candidates: dict[str, list[Alias]] = {}
        for alias in aliases:
            if not self._scheme.is_other_servers_alias(alias.name) or not alias.target_key_id:
                continue
            since = alias_stale_since(alias, self._timings.stale_after)
            target = key_id_of(alias.target_key_id)
            if since is not None and since <= now and target not in rules.ours:
                candidates.setdefault(target, []).append(alias)
        for target, stale in candidates.items():
            if self._stopped.is_set():
                break
            try:
                description = self._kms.describe_key(target)
            except KmsError as err:
                failures += 1
                log.warn(
                    "Failed to dispose of a stale alias; will retry", alias=stale[0].name, error=str(err)
                )
                continue
            step = stale_step(KeyFacts.of(description, by_target.get(target, ())), rules, now)
            if not step.due_by(now):
                continue  # disabled by someone, for a reason: never touched
            every_alias_gone = True
            for alias in stale:
                if alias.name not in step.aliases:
                    continue
                try:
                    self._delete_alias(alias.name)
                except KmsError as err:
                    failures += 1
                    every_alias_gone = False
                    log.warn(
                        "Failed to dispose of a stale alias; will retry", alias=alias.name, error=str(err)
                    )
                    continue
                done.aliases.add(alias.name)
                log.info(
                    "Deleted the alias of a server silent for too long",
                    alias=alias.name,
                    key_arn=description.arn,
                    last_updated=alias.last_updated.isoformat() if alias.last_updated else None,
                )
            if step.step is Step.SCHEDULE_DELETION and every_alias_gone:
                done.keys.add(target)
                self._deletions.enqueue(
                    self._kms, description.arn, self._window_days, f"alias {stale[-1].name} stale"
                )
        return done, failures

    def _dispose_stale_tagged(
        self, now: datetime.datetime, rules: Rules, aliases: list[Alias]
    ) -> tuple[_Disposed, int]:
        done = _Disposed()
        try:
            resources = list(self._kms.get_resources(self._scheme.trust_domain_tag_filter(active_only=True)))
        except KmsError as err:
            log.warn("Disposal could not list keys by tag; will retry", error=str(err))
            return done, 1
        failures = 0
        by_target = _by_target(aliases)
        for resource in resources:
            if self._stopped.is_set():
                break
            target = key_id_of(resource.arn)
            if resource.tags.get(TAG_SERVER_ID) == self._scheme.server_id or target in rules.ours:
                continue
            try:
                stamp = last_update(resource.tags)
            except BadStamp:
                log.warn("Skipping a key whose spire-last-update tag is not a number", key_arn=resource.arn)
                continue
            if tag_stale_since(stamp, self._timings.stale_after) > now:
                continue
            try:
                description = self._kms.describe_key(resource.arn)
                step = stale_step(
                    KeyFacts.of(description, by_target.get(target, ()), resource.tags), rules, now
                )
                if not step.due_by(now):
                    continue
                self._retire(resource.arn, step)
            except KmsError as err:
                failures += 1
                log.warn("Failed to dispose of a stale key; will retry", key_arn=resource.arn, error=str(err))
                continue
            done.keys.add(target)
            log.info(
                "Scheduled the key of a server silent for too long for deletion",
                key_arn=resource.arn,
                last_update=stamp,
                pending_window_days=self._window_days,
            )
            # Its server's aliases too, as without tags: a server that comes back then starts afresh
            # instead of finding its alias on a key pending deletion.
            for alias_name in step.aliases:
                try:
                    self._delete_alias(alias_name)
                    done.aliases.add(alias_name)
                except KmsError as err:
                    failures += 1
                    log.warn("Failed to delete the alias of a stale key", alias=alias_name, error=str(err))
        return done, failures

    def _delete_alias(self, alias_name: str) -> None:
        try:
            self._kms.delete_alias(alias_name)
        except KmsError as err:
            if err.code != "NotFoundException":
                raise
            # Another server of the trust domain got there first; its key is scheduled all the same
            # (a second request finds it pending, which is fine).
            log.debug("Stale alias already deleted", alias=alias_name)

    def _retire(self, key_arn: str, step: Disposal) -> None:
        """Schedule deletion (unless the key is pending already), then tag inactive: in that order, see
        `mark_inactive`."""
        if step.step is Step.SCHEDULE_DELETION:
            try:
                self._kms.schedule_key_deletion(key_arn, self._window_days)
            except KmsError as err:
                if err.code != INVALID_STATE:
                    raise
        _tag_inactive(self._kms, key_arn)

    def _sweep_orphans(
        self,
        now: datetime.datetime,
        rules: Rules,
        skip: set[str] | frozenset[str],
        aliases: list[Alias],
        deleted_aliases: set[str],
    ) -> int:
        targeted = {
            key_id_of(alias.target_key_id)
            for alias in aliases
            if alias.target_key_id and alias.name not in deleted_aliases
        }
        failures = 0
        try:
            for arn, tags in self._orphan_candidates():
                if self._stopped.is_set():
                    break
                key_id = key_id_of(arn)
                if key_id in targeted or key_id in skip or key_id in self._foreign:
                    continue
                try:
                    self._sweep_one(arn, tags, rules, now)
                except KmsError as err:
                    failures += 1
                    log.warn("Failed to check a key without alias; will retry", key_arn=arn, error=str(err))
        except KmsError as err:
            failures += 1
            log.warn("Disposal could not list keys; will retry", error=str(err))
        return failures

    def _orphan_candidates(self) -> Iterable[tuple[str, Mapping[str, str] | None]]:
        if self._tag_discovery:
            resources = self._kms.get_resources(self._scheme.trust_domain_tag_filter(active_only=False))
            return ((resource.arn, resource.tags) for resource in resources)
        # Without tags the only way to find a key no alias points at is to list every key; only those
        # without an alias are described, and each foreign one only once.
        return ((arn, None) for arn in self._kms.list_keys())

    def _sweep_one(
        self, arn: str, tags: Mapping[str, str] | None, rules: Rules, now: datetime.datetime
    ) -> None:
        description = self._kms.describe_key(arn)
        if not self._scheme.is_trust_domain_description(description.description):
            self._foreign.add(key_id_of(arn))
            return
        step = orphan_step(KeyFacts.of(description, (), tags), rules, now)
        if not step.due_by(now):
            return
        # The alias list is a snapshot: make sure nothing points at the key now.
        if next(iter(self._kms.list_aliases(key_id=description.arn)), None) is not None:
            return
        log.info(
            "Found a key of this trust domain that no alias points at; scheduling its deletion",
            key_arn=description.arn,
            description=description.description,
            created=description.creation_date.isoformat() if description.creation_date else None,
        )
        self._deletions.enqueue(
            self._kms, description.arn, self._window_days, "no alias points at it", step.tag_inactive
        )


class _Disposed:
    """What one disposal pass removed (bare key ids, alias names), so the orphan sweep skips them."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.aliases: set[str] = set()


def _by_target(aliases: Iterable[Alias]) -> dict[str, list[Alias]]:
    grouped: dict[str, list[Alias]] = {}
    for alias in aliases:
        if alias.target_key_id:
            grouped.setdefault(key_id_of(alias.target_key_id), []).append(alias)
    return grouped


# --------------------------------------------------------------------------------------------------
# Periodic runner
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodicTask:
    name: str
    every: datetime.timedelta
    run: Callable[[], int]


class PeriodicRunner:
    """One thread running each task at start and then once per period. A run that reports failures (or
    raises) is logged and retried after `first_retry`, doubling up to the period. Each run is reported as
    a call named for its task, with status OK or Failed."""

    def __init__(
        self,
        tasks: Sequence[PeriodicTask],
        clock: Clock,
        stopped: threading.Event,
        first_retry: datetime.timedelta,
        name: str = "lifecycle",
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._metrics = metrics
        self._tasks = list(tasks)
        self._clock = clock
        self._stopped = stopped
        self._first_retry = first_retry
        self._state = threading.Condition()
        self._sleeping_until: datetime.datetime | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_idle(self, timeout: float) -> bool:
        def idle() -> bool:
            until = self._sleeping_until
            return not self._thread.is_alive() or (until is not None and until > self._clock.now())

        with self._state:
            return self._state.wait_for(idle, timeout)

    def _run(self) -> None:
        start = self._clock.now()
        due = {task.name: start for task in self._tasks}
        retry = {task.name: self._first_retry for task in self._tasks}
        try:
            while not self._stopped.is_set():
                for task in self._tasks:
                    now = self._clock.now()
                    if self._stopped.is_set() or due[task.name] > now:
                        continue
                    if self._run_once(task):
                        due[task.name] = now + min(retry[task.name], task.every)
                        log.warn(
                            "Background task met failures; will retry",
                            task=task.name,
                            retry_in_seconds=min(retry[task.name], task.every).total_seconds(),
                        )
                        retry[task.name] = min(retry[task.name] * 2, task.every)
                    else:
                        due[task.name] = now + task.every
                        retry[task.name] = self._first_retry
                wake = min(due.values())
                with self._state:
                    self._sleeping_until = wake
                    self._state.notify_all()
                self._clock.sleep((wake - self._clock.now()).total_seconds(), self._stopped)
                with self._state:
                    self._sleeping_until = None
        finally:
            with self._state:
                self._state.notify_all()

    def _run_once(self, task: PeriodicTask) -> bool:
        start = plugin_metrics.now()
        try:
            failed = task.run() > 0
        except Exception:
            # A bug must not end the heartbeat for good: log it and try again later.
            log.exception("Background task failed", task=task.name)
            failed = True
        status = plugin_metrics.FAILED if failed else plugin_metrics.OK
        plugin_metrics.observe_call(self._metrics, (*plugin_metrics.PREFIX, task.name), start, status)
        return failed
