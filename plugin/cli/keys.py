"""`keys`: the SPIRE keys of the trust domain in the account and region, under either naming scheme or by
tag, with what this server's disposal sweep would do to each and from when (plugin.disposal, the rules the
sweep itself follows), and what they cost. `prune` takes the steps due now, after reading each key again.

Reads are the sweep's own (ListAliases; ListKeys, or GetResources with tag-based discovery) plus a
DescribeKey per key listed; nothing is changed unless `prune` is called.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from plugin import config as plugin_config
from plugin.algorithms import key_type_for_spec
from plugin.cli import output
from plugin.cli.permissions import DENIED_CODES, for_operation
from plugin.disposal import ENABLED, PENDING_DELETION, Disposal, KeyFacts, Rules, Step, decide, last_update
from plugin.kmsapi import ALREADY_GONE, Alias, KeyDescription, Kms, KmsError
from plugin.lifecycle import Timings
from plugin.naming import (
    DEFAULT_KEY_PREFIX,
    TAG_ACTIVE,
    TAG_KEY_ID,
    TAG_SERVER_ID,
    AliasScheme,
    BuiltinScheme,
    CommunityScheme,
    decode_key_id,
    key_id_of,
)

# AWS KMS pricing: each customer managed key costs 1 USD a month (prorated hourly), asymmetric keys the same
# as symmetric ones; keys pending deletion cost nothing. API requests are charged apart and not counted here.
MONTHLY_KEY_PRICE = Decimal("1.00")
PRICE_NOTE = "KMS charges 1.00 USD a month per key, except keys pending deletion; requests are extra"
# Stands for the server id of a server whose id file is not written yet: no alias can hold it.
_NO_SERVER_ID = "(none yet)"
INVALID_STATE = "KMSInvalidStateException"


class Naming(enum.Enum):
    BUILTIN = "built-in"
    COMMUNITY = "community"
    TAGS = "tags only"
    NONE = "no alias"


@dataclass(frozen=True)
class SpireKey:
    facts: KeyFacts
    key_spec: str
    deletion_date: datetime.datetime | None
    naming: Naming
    server_id: str | None
    spire_key_id: str | None
    # What the sweep judges liveness by: spire-last-update with tag-based discovery, else the alias date.
    heartbeat: datetime.datetime | None
    disposal: Disposal

    @property
    def arn(self) -> str:
        return self.facts.arn

    @property
    def monthly_cost(self) -> Decimal:
        return Decimal("0.00") if self.facts.state == PENDING_DELETION else MONTHLY_KEY_PRICE


@dataclass
class Survey:
    now: datetime.datetime
    server_id: str | None
    # The sweep's rules for this server; None with the community naming scheme, which has no sweep.
    rules: Rules | None
    keys: list[SpireKey] = field(default_factory=list)
    # Reads that failed: the listing may be incomplete.
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)

    @property
    def monthly_cost(self) -> Decimal:
        return sum((key.monthly_cost for key in self.keys), Decimal("0.00"))


def survey(
    kms: Kms,
    config: plugin_config.Config,
    server_id: str | None,
    now: datetime.datetime,
    timings: Timings | None = None,
) -> Survey:
    """Every SPIRE key of the trust domain (and under the community key prefix) with its disposal."""
    timings = timings or Timings()
    tag_discovery = config.enable_tag_based_key_discovery
    td_scheme = (
        BuiltinScheme(config.trust_domain, server_id or _NO_SERVER_ID) if config.trust_domain else None
    )
    community = CommunityScheme(config.key_prefix or DEFAULT_KEY_PREFIX)
    result = Survey(now=now, server_id=server_id, rules=None)

    aliases = list(kms.list_aliases())  # without it there is nothing to show: the caller reports it
    by_target: dict[str, list[Alias]] = {}
    for alias in aliases:
        if alias.target_key_id:
            by_target.setdefault(key_id_of(alias.target_key_id), []).append(alias)

    def spire_alias(alias: Alias) -> bool:
        in_td = td_scheme is not None and alias.name.startswith(td_scheme.trust_domain_alias_prefix)
        return in_td or community.key_id_for(alias.name) is not None

    wanted = {target for target, named in by_target.items() if any(spire_alias(a) for a in named)}
    tags: dict[str, Mapping[str, str]] = {}
    if td_scheme is not None:
        try:
            for resource in kms.get_resources(td_scheme.trust_domain_tag_filter(active_only=False)):
                tags[key_id_of(resource.arn)] = resource.tags
        except KmsError as err:
            _failed(
                result,
                err,
                "keys tagged for the trust domain but without an alias are not listed",
                tag_discovery,
            )
    wanted.update(tags)

    descriptions: dict[str, KeyDescription] = {}
    if not tag_discovery:
        # As the sweep finds keys no alias points at: every key, described once.
        try:
            for arn in kms.list_keys():
                key = key_id_of(arn)
                if key in by_target or key in wanted:
                    continue
                description = _describe(kms, arn, result)
                if description is not None and _spire_description(
                    description.description, td_scheme, community
                ):
                    descriptions[key] = description
                    wanted.add(key)
        except KmsError as err:
            _failed(result, err, "keys without an alias are not listed", True)

    for key in sorted(wanted - descriptions.keys()):
        description = _describe(kms, key, result)
        if description is not None:
            descriptions[key] = description

    ours = _ours(config, server_id, td_scheme, community, aliases, tags, descriptions)
    if config.key_prefix is None and td_scheme is not None:
        result.rules = Rules(
            td_scheme,
            frozenset(ours),
            tag_discovery,
            stale_after=timings.stale_after,
            orphan_after=timings.orphan_after,
        )
    for key, description in descriptions.items():
        facts = KeyFacts.of(description, by_target.get(key, ()), tags.get(key))
        result.keys.append(_spire_key(facts, description, td_scheme, community, result.rules, ours, now))
    result.keys.sort(
        key=lambda k: (k.disposal.step is not Step.KEEP, k.server_id or "~", k.spire_key_id or "", k.arn)
    )
    return result


def _spire_description(description: str, td: BuiltinScheme | None, community: CommunityScheme) -> bool:
    if td is not None and td.is_trust_domain_description(description):
        return True
    rest = description[len(community.key_prefix) :]
    return description.startswith(community.key_prefix) and bool(rest) and "/" not in rest


def _ours(
    config: plugin_config.Config,
    server_id: str | None,
    td: BuiltinScheme | None,
    community: CommunityScheme,
    aliases: Iterable[Alias],
    tags: Mapping[str, Mapping[str, str]],
    descriptions: Mapping[str, KeyDescription],
) -> set[str]:
    """The keys this server would load at start-up (read only: nothing is tagged or created here)."""
    own: AliasScheme | None = community if config.key_prefix is not None else td
    if own is None or (config.key_prefix is None and server_id is None):
        return set()
    loaded: dict[str, str] = {}
    for alias in aliases:
        key_id = own.key_id_for(alias.name)
        if key_id is not None and alias.target_key_id:
            loaded[key_id] = key_id_of(alias.target_key_id)
    ours = set(loaded.values())
    if config.enable_tag_based_key_discovery and config.key_prefix is None:
        # Start-up also uses the newest usable key tagged as this server's for an id no alias names.
        newest: dict[str, KeyDescription] = {}
        for key, key_tags in tags.items():
            key_id = key_tags.get(TAG_KEY_ID)
            description = descriptions.get(key)
            if (
                key_tags.get(TAG_SERVER_ID) != server_id
                or key_tags.get(TAG_ACTIVE) != "true"
                or not key_id
                or key_id in loaded
                or description is None
                or description.key_state != ENABLED
                or key_type_for_spec(description.key_spec) is None
            ):
                continue
            known = newest.get(key_id)
            if known is None or _created(description) > _created(known):
                newest[key_id] = description
        ours.update(key_id_of(description.arn) for description in newest.values())
    return ours


def _created(description: KeyDescription) -> datetime.datetime:
    return description.creation_date or datetime.datetime.min.replace(tzinfo=datetime.UTC)


def _spire_key(
    facts: KeyFacts,
    description: KeyDescription,
    td: BuiltinScheme | None,
    community: CommunityScheme,
    rules: Rules | None,
    ours: set[str],
    now: datetime.datetime,
) -> SpireKey:
    naming, server_id, spire_key_id, alias_date = Naming.NONE, None, None, None
    for alias in facts.aliases:
        if td is not None and alias.name.startswith(td.trust_domain_alias_prefix):
            rest = alias.name[len(td.trust_domain_alias_prefix) :]
            server_part, _, encoded = rest.rpartition("/")
            naming, server_id, spire_key_id = Naming.BUILTIN, server_part or None, decode_key_id(encoded)
            if alias.last_updated is not None and (alias_date is None or alias.last_updated > alias_date):
                alias_date = alias.last_updated
        elif naming is Naming.NONE and community.key_id_for(alias.name) is not None:
            naming, spire_key_id = Naming.COMMUNITY, community.key_id_for(alias.name)
    key_tags = facts.tags or {}
    if naming is Naming.NONE and key_tags:
        naming = Naming.TAGS
    server_id = server_id or key_tags.get(TAG_SERVER_ID)
    spire_key_id = (
        spire_key_id or key_tags.get(TAG_KEY_ID) or _key_id_from_description(facts.description, td, community)
    )
    heartbeat = alias_date
    if rules is not None and rules.tag_discovery:
        try:
            stamp = last_update(key_tags) if key_tags else None
        except ValueError:
            stamp = None
        heartbeat = datetime.datetime.fromtimestamp(stamp, datetime.UTC) if stamp else None
    if rules is not None:
        disposal = decide(facts, rules, now)
        if naming is Naming.COMMUNITY and disposal.step is Step.NONE:
            # Named without trust domain or server id: no sweep can tell whose it is.
            disposal = Disposal(Step.NONE, "community naming scheme: no sweep deletes it; delete it yourself")
    elif key_id_of(facts.arn) in ours:
        disposal = Disposal(Step.KEEP, "named under this server's key_prefix")
    else:
        disposal = Disposal(
            Step.NONE,
            "the community naming scheme has no disposal sweep: delete keys no server uses yourself",
        )
    return SpireKey(
        facts=facts,
        key_spec=description.key_spec,
        deletion_date=description.deletion_date,
        naming=naming,
        server_id=server_id,
        spire_key_id=spire_key_id,
        heartbeat=heartbeat,
        disposal=disposal,
    )


def _key_id_from_description(
    description: str, td: BuiltinScheme | None, community: CommunityScheme
) -> str | None:
    for prefix in (td.trust_domain_description_prefix if td else None, community.key_prefix):
        if prefix and description.startswith(prefix) and len(description) > len(prefix):
            return description[len(prefix) :]
    return None


def _describe(kms: Kms, key: str, result: Survey) -> KeyDescription | None:
    try:
        return kms.describe_key(key)
    except KmsError as err:
        _failed(result, err, f"key {key} is not listed", True)
        return None


def _failed(result: Survey, err: KmsError, consequence: str, needed: bool) -> None:
    operation = err.operation.split(" ")[0]
    line = f"{operation} failed ({err.code}): {consequence}"
    if err.code in DENIED_CODES:
        permission = for_operation(operation)
        line += f"; grant {permission}"
        if needed:
            result.grants.append(permission)
    (result.problems if needed else result.notes).append(line)


# -- prune --------------------------------------------------------------------------------------------


class Outcome(enum.Enum):
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Pruned:
    key: SpireKey
    outcome: Outcome
    detail: str
    code: str | None = None


def prune(kms: Kms, found: Survey, window_days: int) -> list[Pruned]:
    """Take the steps the sweep would take now, each key read again first: a key whose step is no longer
    due (its server came back, an alias appeared) is left as it is."""
    rules = found.rules
    if rules is None:
        return []
    results: list[Pruned] = []
    for key in found.keys:
        if not key.disposal.due_by(found.now):
            continue
        try:
            description = kms.describe_key(key.arn)
            aliases = tuple(kms.list_aliases(key_id=description.arn))
        except KmsError as err:
            results.append(Pruned(key, Outcome.FAILED, _failure(err), err.code))
            continue
        fresh = decide(KeyFacts.of(description, aliases, key.facts.tags), rules, found.now)
        if not fresh.due_by(found.now) or fresh.step is not key.disposal.step:
            results.append(
                Pruned(key, Outcome.SKIPPED, f"changed since it was listed: now {fresh.step.value}")
            )
            continue
        try:
            results.append(Pruned(key, Outcome.DONE, _take(kms, description.arn, fresh, rules, window_days)))
        except KmsError as err:
            results.append(Pruned(key, Outcome.FAILED, _failure(err), err.code))
    return results


def _take(kms: Kms, arn: str, step: Disposal, rules: Rules, window_days: int) -> str:
    """One key's step, in the sweep's order: with tag-based discovery schedule, tag and then delete its
    aliases; without, delete the aliases first and schedule only once they are gone."""
    done: list[str] = []
    if not rules.tag_discovery:
        done.extend(_delete_aliases(kms, step.aliases))
    if step.step is Step.SCHEDULE_DELETION:
        try:
            kms.schedule_key_deletion(arn, window_days)
            done.append(f"scheduled for deletion in {window_days} days")
        except KmsError as err:
            if err.code not in ALREADY_GONE:
                raise
            done.append("already pending deletion")
    if step.tag_inactive:
        try:
            kms.tag_resource(arn, {TAG_ACTIVE: "false"})
            done.append(f"tagged {TAG_ACTIVE}=false")
        except KmsError as err:
            # KMS may refuse to tag a key pending deletion; every server ignores such a key anyway.
            if err.code != INVALID_STATE:
                raise
    if rules.tag_discovery:
        done.extend(_delete_aliases(kms, step.aliases))
    return ", ".join(done) or "nothing left to do"


def _delete_aliases(kms: Kms, names: Iterable[str]) -> list[str]:
    done = []
    for name in names:
        try:
            kms.delete_alias(name)
            done.append(f"deleted {name}")
        except KmsError as err:
            if err.code != "NotFoundException":
                raise
    return done


def _failure(err: KmsError) -> str:
    operation = err.operation.split(" ")[0]
    grant = f": grant {for_operation(operation)}" if err.code in DENIED_CODES else ""
    return f"{operation} failed ({err.code}){grant}"


# -- output -------------------------------------------------------------------------------------------


def failure_text(err: KmsError) -> str:
    return f"{_failure(err)}: {err.message}" if err.message else _failure(err)


def when(key: SpireKey, now: datetime.datetime) -> str:
    disposal = key.disposal
    if disposal.step is Step.KEEP:
        return "-"
    if not disposal.acts or disposal.due is None:
        return "never"
    return "now" if disposal.due <= now else output.short_time(disposal.due)


def why(key: SpireKey) -> str:
    reason = key.disposal.reason
    if key.facts.state == PENDING_DELETION and key.deletion_date is not None:
        reason += f"; KMS deletes it {output.short_time(key.deletion_date)}"
    return reason


def _header(found: Survey, config: plugin_config.Config) -> str:
    if config.key_prefix is not None:
        scheme = f"community naming scheme, key_prefix {config.key_prefix}: no disposal sweep"
    else:
        discovery = ", tag-based discovery" if config.enable_tag_based_key_discovery else ""
        scheme = f"built-in naming scheme{discovery}; this server: {found.server_id or 'no id yet'}"
    trust_domain = config.trust_domain or "(none given)"
    as_of = output.short_time(found.now)
    return f"trust domain {trust_domain}, region {config.region}, {scheme}; as of {as_of}\n"


def render(found: Survey, config: plugin_config.Config) -> str:
    headers = (
        "SERVER",
        "SPIRE KEY",
        "ALIAS",
        "KEY ARN",
        "SPEC",
        "CREATED",
        "HEARTBEAT",
        "STATE",
        "SWEEP",
        "WHEN",
        "USD/MONTH",
        "WHY",
    )
    rows = [
        (
            key.server_id or "-",
            key.spire_key_id or "-",
            _alias_text(key),
            key.arn,
            key.key_spec or "-",
            output.short_time(key.facts.created),
            output.short_time(key.heartbeat),
            key.facts.state,
            key.disposal.step.value,
            when(key, found.now),
            f"{key.monthly_cost:.2f}",
            why(key),
        )
        for key in found.keys
    ]
    text = _header(found, config)
    text += output.table(headers, rows) if rows else "no SPIRE keys\n"
    due = sum(1 for key in found.keys if key.disposal.due_by(found.now))
    text += f"\n{len(found.keys)} keys, {found.monthly_cost:.2f} USD a month ({PRICE_NOTE})"
    if due:
        text += f"; {due} due for the sweep now (keys --prune --yes takes those steps)"
    text += "\n"
    for line in found.problems:
        text += f"FAIL: {line}\n"
    for line in found.notes:
        text += f"note: {line}\n"
    return output.redact_text(text)


def _alias_text(key: SpireKey) -> str:
    names = [alias.name for alias in key.facts.aliases]
    if not names:
        return "-"
    return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1})"


def to_json(found: Survey, config: plugin_config.Config) -> dict[str, Any]:
    return {
        "trust_domain": config.trust_domain,
        "region": config.region,
        "naming_scheme": "community" if config.key_prefix is not None else "built-in",
        "tag_based_key_discovery": config.enable_tag_based_key_discovery,
        "server_id": found.server_id,
        "now": found.now,
        "keys": [_key_json(key, found.now) for key in found.keys],
        "monthly_cost_usd": f"{found.monthly_cost:.2f}",
        "price": PRICE_NOTE,
        "problems": found.problems,
        "notes": found.notes,
        "missing_permissions": list(dict.fromkeys(found.grants)),
    }


def _key_json(key: SpireKey, now: datetime.datetime) -> dict[str, Any]:
    disposal = key.disposal
    return {
        "server_id": key.server_id,
        "spire_key_id": key.spire_key_id,
        "naming": key.naming.value,
        "aliases": [{"name": a.name, "last_updated": a.last_updated} for a in key.facts.aliases],
        "key_arn": key.arn,
        "key_spec": key.key_spec,
        "created": key.facts.created,
        "last_heartbeat": key.heartbeat,
        "state": key.facts.state,
        "deletion_date": key.deletion_date,
        "tags": dict(key.facts.tags) if key.facts.tags is not None else None,
        "sweep": {
            "step": disposal.step.value,
            "due": disposal.due if disposal.acts else None,
            "due_now": disposal.due_by(now),
            "reason": disposal.reason,
            "deletes_aliases": list(disposal.aliases),
        },
        "monthly_cost_usd": f"{key.monthly_cost:.2f}",
    }


def pruned_json(pruned: Pruned) -> dict[str, Any]:
    return {
        "key_arn": pruned.key.arn,
        "spire_key_id": pruned.key.spire_key_id,
        "server_id": pruned.key.server_id,
        "outcome": pruned.outcome.name.lower(),
        "detail": pruned.detail,
        "code": pruned.code,
    }


def render_pruned(pruned: list[Pruned], found: Survey) -> str:
    if found.rules is None:
        return "nothing to prune: the community naming scheme has no disposal sweep\n"
    if not pruned:
        return "nothing to prune: no step of the sweep is due now\n"
    rows = [
        (p.outcome.value, p.key.server_id or "-", p.key.spire_key_id or "-", p.key.arn, p.detail)
        for p in pruned
    ]
    return output.table(("PRUNE", "SERVER", "SPIRE KEY", "KEY ARN", "DONE"), rows)
