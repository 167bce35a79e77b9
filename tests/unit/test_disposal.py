"""The disposal sweep's rules as pure functions: what it does to a key, and from when (the sweep itself is
tests/unit/test_lifecycle.py; that `keys` agrees with it is tests/unit/test_keys_survey.py)."""

from __future__ import annotations

import datetime

import pytest

from plugin.disposal import KeyFacts, Rules, Step, decide
from plugin.kmsapi import Alias
from plugin.naming import BuiltinScheme

NOW = datetime.datetime(2030, 1, 15, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)
TD = "example.org"
ME = BuiltinScheme(TD, "server1")
OURS_ARN = "arn:aws:kms:us-east-1:111122223333:key/0000-ours"
ARN = "arn:aws:kms:us-east-1:111122223333:key/1111-other"
DESCRIPTION = ME.description_for("x509-CA-A")


def alias(server_id: str, age: datetime.timedelta | None, key_id: str = "x509-CA-A", td: str = TD) -> Alias:
    name = BuiltinScheme(td, server_id).alias_for(key_id)
    return Alias(name, "1111-other", None if age is None else NOW - age)


def key(
    *aliases: Alias,
    state: str = "Enabled",
    description: str = DESCRIPTION,
    age: datetime.timedelta = 60 * DAY,
    tags: dict[str, str] | None = None,
    arn: str = ARN,
) -> KeyFacts:
    return KeyFacts(arn, state, description, NOW - age, tuple(aliases), tags)


def tags(
    server_id: str, stamped: datetime.timedelta | None, td: str = TD, active: str = "true"
) -> dict[str, str]:
    made = BuiltinScheme(td, server_id).spire_tags("x509-CA-A", 0)
    made["spire-active"] = active
    if stamped is None:
        del made["spire-last-update"]
    else:
        made["spire-last-update"] = str(int((NOW - stamped).timestamp()))
    return made


RULES = Rules(ME, frozenset({"0000-ours"}))
TAG_RULES = Rules(ME, frozenset({"0000-ours"}), tag_discovery=True)


@pytest.mark.parametrize(
    ("facts", "step", "due", "aliases"),
    [
        pytest.param(
            key(alias("server1", 30 * DAY), arn=OURS_ARN), Step.KEEP, None, (), id="ours, however old"
        ),
        pytest.param(
            key(alias("server10", 15 * DAY)),
            Step.SCHEDULE_DELETION,
            NOW - DAY,
            (alias("server10", 0 * DAY).name,),
            id="silent 15 days: alias and key go",
        ),
        pytest.param(
            key(alias("server10", 13 * DAY)),
            Step.SCHEDULE_DELETION,
            NOW + DAY,
            (alias("server10", DAY).name,),
            id="silent 13 days: goes in a day",
        ),
        pytest.param(key(alias("server10", 15 * DAY), state="Disabled"), Step.NONE, None, (), id="disabled"),
        pytest.param(
            key(alias("server10", 15 * DAY), state="PendingDeletion"),
            Step.DELETE_ALIASES,
            NOW - DAY,
            (alias("server10", DAY).name,),
            id="pending deletion: only its alias goes",
        ),
        pytest.param(
            key(alias("server10", 15 * DAY), Alias("alias/app/signer", "1111-other", NOW - 90 * DAY)),
            Step.DELETE_ALIASES,
            NOW - DAY,
            (alias("server10", DAY).name,),
            id="also aliased by an application: the key stays",
        ),
        pytest.param(
            key(alias("server10", 20 * DAY), alias("server11", 10 * DAY)),
            Step.DELETE_ALIASES,
            NOW - 6 * DAY,
            (alias("server10", DAY).name,),
            id="two servers' aliases: the stale one goes first",
        ),
        pytest.param(
            key(alias("s", 30 * DAY, td="example.org2")), Step.NONE, None, (), id="other trust domain"
        ),
        pytest.param(key(alias("server10", None)), Step.NONE, None, (), id="alias without a date"),
        pytest.param(key(age=47 * HOUR), Step.SCHEDULE_DELETION, NOW + HOUR, (), id="no alias, 47 hours old"),
        pytest.param(key(age=48 * HOUR), Step.SCHEDULE_DELETION, NOW, (), id="no alias, 48 hours old"),
        pytest.param(
            key(description=BuiltinScheme("example.org2", "x").description_for("x509-CA-A")),
            Step.NONE,
            None,
            (),
            id="no alias, another trust domain's description",
        ),
        pytest.param(key(description="SPIRE_SERVER_KEY/x509-CA-A"), Step.NONE, None, (), id="community key"),
        pytest.param(key(state="PendingDeletion"), Step.NONE, None, (), id="no alias, pending already"),
    ],
)
def test_alias_based_disposal(
    facts: KeyFacts, step: Step, due: datetime.datetime | None, aliases: tuple[str, ...]
) -> None:
    disposal = decide(facts, RULES, NOW)
    assert (disposal.step, disposal.due, disposal.aliases) == (step, due, aliases)
    assert disposal.reason, "every decision says why"
    assert disposal.due_by(NOW) == (due is not None and due <= NOW)


@pytest.mark.parametrize(
    ("facts", "step", "due", "aliases"),
    [
        pytest.param(
            key(alias("server10", 30 * DAY), tags=tags("server10", 15 * DAY)),
            Step.SCHEDULE_DELETION,
            NOW - DAY,
            (alias("server10", DAY).name,),
            id="not stamped for 15 days: key and alias go",
        ),
        pytest.param(
            key(alias("server10", 30 * DAY), tags=tags("server10", 13 * DAY)),
            Step.SCHEDULE_DELETION,
            NOW + DAY,
            (alias("server10", DAY).name,),
            id="stamped 13 days ago, whatever the alias date",
        ),
        pytest.param(
            key(alias("server10", DAY), tags=tags("server10", None)),
            Step.SCHEDULE_DELETION,
            datetime.datetime.fromtimestamp(0, datetime.UTC) + 14 * DAY,
            (alias("server10", DAY).name,),
            id="never stamped: as old as can be",
        ),
        pytest.param(
            key(alias("server10", DAY), tags={**tags("server10", None), "spire-last-update": "soon"}),
            Step.NONE,
            None,
            (),
            id="malformed stamp",
        ),
        pytest.param(
            key(alias("server10", 15 * DAY), tags=tags("server10", 15 * DAY), state="PendingDeletion"),
            Step.TAG_INACTIVE,
            NOW - DAY,
            (alias("server10", DAY).name,),
            id="pending deletion: tagged inactive, its alias goes",
        ),
        pytest.param(
            key(alias("server1", DAY, key_id="x509-CA-B"), tags=tags("server1", 30 * DAY)),
            Step.NONE,
            None,
            (),
            id="tagged as this server's, still aliased",
        ),
        pytest.param(
            key(tags=tags("server1", 30 * DAY)),
            Step.SCHEDULE_DELETION,
            NOW - 60 * DAY + 48 * HOUR,
            (),
            id="tagged as this server's, no alias: swept as an orphan",
        ),
        pytest.param(
            key(tags=tags("server10", 13 * DAY), age=47 * HOUR),
            Step.SCHEDULE_DELETION,
            NOW + HOUR,
            (),
            id="fresh stamp but no alias: the orphan rule comes first",
        ),
        pytest.param(key(age=30 * DAY), Step.NONE, None, (), id="not tagged: not found by tag"),
        pytest.param(
            key(alias("server10", 30 * DAY), tags=tags("server10", 30 * DAY, td="example.org2")),
            Step.NONE,
            None,
            (),
            id="tagged for another trust domain",
        ),
    ],
)
def test_tag_based_disposal(
    facts: KeyFacts, step: Step, due: datetime.datetime | None, aliases: tuple[str, ...]
) -> None:
    disposal = decide(facts, TAG_RULES, NOW)
    assert (disposal.step, disposal.due, disposal.aliases) == (step, due, aliases)
    assert disposal.reason
    assert disposal.tag_inactive == (step in (Step.SCHEDULE_DELETION, Step.TAG_INACTIVE))


def test_reasons_name_what_keeps_a_key() -> None:
    assert "Disabled" in decide(key(state="Disabled"), RULES, NOW).reason
    assert "alias/app/signer" in decide(key(Alias("alias/app/signer", "1111-other", NOW)), RULES, NOW).reason
    assert "heartbeat" in decide(key(arn=OURS_ARN), RULES, NOW).reason
    assert (
        "not a number"
        in decide(
            key(alias("s", DAY), tags={**tags("s", None), "spire-last-update": "x"}), TAG_RULES, NOW
        ).reason
    )
