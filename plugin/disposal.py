"""What the disposal sweep does to a key, and from when: the sweep's rules as pure functions of what KMS
says about the key. The background sweep (plugin.lifecycle) takes the steps they name when they are due;
the `keys` command shows them for every SPIRE key of the trust domain (a dry run), and `keys --prune`
takes those due now.

A sweep pass has two phases, and so do the rules: `stale_step`, the keys of servers silent for too long
(by alias date, or by the spire-last-update tag with tag-based discovery), then `orphan_step`, the keys of
the trust domain no alias points at. `decide` combines them as one pass does.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from plugin.kmsapi import Alias, KeyDescription
from plugin.naming import (
    TAG_ACTIVE,
    TAG_LAST_UPDATE,
    TAG_SERVER_ID,
    TAG_TRUST_DOMAIN,
    BuiltinScheme,
    key_id_of,
)

ENABLED = "Enabled"
PENDING_DELETION = "PendingDeletion"
# Keys in other states (Disabled, PendingImport, Unavailable, ...) were put there by someone, for a reason.
TOUCHABLE_STATES = (ENABLED, PENDING_DELETION)

STALE_AFTER = datetime.timedelta(days=14)
ORPHAN_AFTER = datetime.timedelta(hours=48)


class Step(enum.Enum):
    KEEP = "keep"  # this server's own key: its heartbeat keeps it alive
    NONE = "none"  # the sweep leaves it alone
    DELETE_ALIASES = "delete alias"
    TAG_INACTIVE = "tag inactive"  # already pending deletion: out of every server's active keys
    SCHEDULE_DELETION = "schedule deletion"


ACTING_STEPS = (Step.DELETE_ALIASES, Step.TAG_INACTIVE, Step.SCHEDULE_DELETION)


@dataclass(frozen=True)
class KeyFacts:
    """What the sweep knows about one key when it decides."""

    arn: str
    state: str
    description: str
    created: datetime.datetime | None
    # Every alias pointing at the key, of any scheme.
    aliases: tuple[Alias, ...] = ()
    # Its tags when a tag listing (GetResources) found it; None when none did.
    tags: Mapping[str, str] | None = None

    @classmethod
    def of(
        cls,
        description: KeyDescription,
        aliases: Iterable[Alias] = (),
        tags: Mapping[str, str] | None = None,
    ) -> KeyFacts:
        return cls(
            arn=description.arn,
            state=description.key_state,
            description=description.description,
            created=description.creation_date,
            aliases=tuple(aliases),
            tags=tags,
        )


@dataclass(frozen=True)
class Rules:
    """One server's sweep: its naming, the keys it uses, and its thresholds."""

    scheme: BuiltinScheme
    # Bare key ids of the keys this server uses: never touched.
    ours: frozenset[str]
    tag_discovery: bool = False
    stale_after: datetime.timedelta = STALE_AFTER
    orphan_after: datetime.timedelta = ORPHAN_AFTER


@dataclass(frozen=True)
class Disposal:
    """The next thing the sweep does to a key, from when, and why."""

    step: Step
    reason: str
    # For acting steps: the sweep takes the step at its first pass from then on. None: no date would do.
    due: datetime.datetime | None = None
    # Aliases the step deletes.
    aliases: tuple[str, ...] = ()
    # With tag-based discovery a key scheduled for deletion is then tagged spire-active=false.
    tag_inactive: bool = False

    @property
    def acts(self) -> bool:
        return self.step in ACTING_STEPS and self.due is not None

    def due_by(self, now: datetime.datetime) -> bool:
        return self.acts and self.due is not None and self.due <= now


def alias_stale_since(alias: Alias, stale_after: datetime.timedelta) -> datetime.datetime | None:
    """From when an alias counts as abandoned (no heartbeat moved it for `stale_after`); None: never."""
    return None if alias.last_updated is None else alias.last_updated + stale_after


class BadStamp(ValueError):
    """A spire-last-update tag that is not a number."""


def last_update(tags: Mapping[str, str]) -> int:
    """The spire-last-update stamp (Unix seconds). No stamp at all is as old as can be: every SPIRE key is
    stamped when it is made."""
    stamp = tags.get(TAG_LAST_UPDATE)
    if stamp is None:
        return 0
    try:
        return int(stamp)
    except ValueError:
        raise BadStamp(stamp) from None


def tag_stale_since(stamp: int, stale_after: datetime.timedelta) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC) + stale_after


def stale_step(key: KeyFacts, rules: Rules, now: datetime.datetime) -> Disposal:
    """Phase one: a key of another server of the trust domain that has been silent for too long."""
    early = _untouchable(key, rules)
    if early is not None:
        return early
    if rules.tag_discovery:
        return _stale_tagged(key, rules, now)
    return _stale_aliases(key, rules, now)


def orphan_step(key: KeyFacts, rules: Rules, now: datetime.datetime) -> Disposal:
    """Phase two: a key of the trust domain that no alias points at, older than `orphan_after` (a crash
    between CreateKey and CreateAlias, or a replaced key whose deletion was lost)."""
    early = _untouchable(key, rules)
    if early is not None:
        return early
    if rules.tag_discovery and (
        key.tags is None or key.tags.get(TAG_TRUST_DOMAIN) != rules.scheme.trust_domain
    ):
        return Disposal(
            Step.NONE, "not tagged for this trust domain: with tag-based discovery keys are found by tag"
        )
    if key.aliases:
        names = ", ".join(alias.name for alias in key.aliases)
        return Disposal(Step.NONE, f"an alias points at it ({names})")
    if not rules.scheme.is_trust_domain_description(key.description):
        return Disposal(Step.NONE, "its description is not this trust domain's")
    if key.state != ENABLED:
        return Disposal(Step.NONE, "its deletion is already scheduled")
    if key.created is None:
        return Disposal(Step.NONE, "KMS gives no creation date")
    return Disposal(
        Step.SCHEDULE_DELETION,
        f"no alias points at it (a key of the trust domain without one goes {_hours(rules.orphan_after)} "
        "after its creation)",
        due=key.created + rules.orphan_after,
        tag_inactive=rules.tag_discovery,
    )


def decide(key: KeyFacts, rules: Rules, now: datetime.datetime) -> Disposal:
    """What this server's sweep does to the key: what a pass now would do, else the earliest step it will
    take if nothing changes meanwhile (its server stays silent, no alias is made)."""
    first = stale_step(key, rules, now)
    if first.step is Step.KEEP or first.due_by(now):
        return first
    # A pass that takes no step in phase one leaves every alias in place for phase two.
    second = orphan_step(key, rules, now)
    if second.due_by(now):
        return second
    coming = [disposal for disposal in (first, second) if disposal.acts]
    if coming:
        return min(coming, key=lambda disposal: disposal.due or now)
    reasons = [disposal.reason for disposal in (first, second) if disposal.reason]
    return Disposal(Step.NONE, "; ".join(dict.fromkeys(reasons)))


def _untouchable(key: KeyFacts, rules: Rules) -> Disposal | None:
    if key_id_of(key.arn) in rules.ours:
        return Disposal(Step.KEEP, "this server's key: its heartbeat keeps it")
    if key.state not in TOUCHABLE_STATES:
        return Disposal(Step.NONE, f"it is {key.state}: keys put in that state are left alone")
    return None


def _stale_aliases(key: KeyFacts, rules: Rules, now: datetime.datetime) -> Disposal:
    others = [alias for alias in key.aliases if rules.scheme.is_other_servers_alias(alias.name)]
    if not others:
        return Disposal(Step.NONE, "")
    since = {alias.name: alias_stale_since(alias, rules.stale_after) for alias in others}
    dated = {name: when for name, when in since.items() if when is not None}
    if not dated:
        return Disposal(Step.NONE, "its aliases carry no LastUpdatedDate")
    silent = f"its server's alias has had no heartbeat for {_days(rules.stale_after)}"
    stale_now = [name for name, when in dated.items() if when <= now]
    if stale_now:
        names = tuple(stale_now)
        # The key goes too once every alias pointing at it is gone with its silent server.
        if key.state == ENABLED and len(names) == len(key.aliases):
            return Disposal(Step.SCHEDULE_DELETION, silent, max(dated[n] for n in names), names)
        return Disposal(Step.DELETE_ALIASES, silent, min(dated[n] for n in names), names)
    first = min(dated.values())
    names = tuple(name for name, when in dated.items() if when == first)
    coming = f"if its server stays silent: {_days(rules.stale_after)} after its alias's last heartbeat"
    if key.state == ENABLED and len(names) == len(key.aliases):
        return Disposal(Step.SCHEDULE_DELETION, coming, first, names)
    return Disposal(Step.DELETE_ALIASES, coming, first, names)


def _stale_tagged(key: KeyFacts, rules: Rules, now: datetime.datetime) -> Disposal:
    tags = key.tags
    scheme = rules.scheme
    # The sweep lists the active keys tagged for the trust domain; others are phase two's or nobody's.
    if tags is None or tags.get(TAG_TRUST_DOMAIN) != scheme.trust_domain or tags.get(TAG_ACTIVE) != "true":
        return Disposal(Step.NONE, "")
    if tags.get(TAG_SERVER_ID) == scheme.server_id:
        return Disposal(Step.NONE, "tagged as this server's key (one it replaced)")
    try:
        stamp = last_update(tags)
    except BadStamp:
        return Disposal(Step.NONE, f"its {TAG_LAST_UPDATE} tag is not a number")
    aliases = tuple(alias.name for alias in key.aliases if scheme.is_other_servers_alias(alias.name))
    due = tag_stale_since(stamp, rules.stale_after)
    if due <= now:
        reason = f"its server has not stamped {TAG_LAST_UPDATE} for {_days(rules.stale_after)}"
    else:
        reason = f"if its server stays silent: {_days(rules.stale_after)} after its last {TAG_LAST_UPDATE}"
    step = Step.SCHEDULE_DELETION if key.state == ENABLED else Step.TAG_INACTIVE
    return Disposal(step, reason, due, aliases, tag_inactive=True)


def _days(delta: datetime.timedelta) -> str:
    return f"{delta.days} days" if delta.days * 86400 == delta.total_seconds() else f"{delta}"


def _hours(delta: datetime.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:g} hours"
