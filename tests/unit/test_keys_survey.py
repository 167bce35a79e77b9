"""`keys` against the in-memory KMS: it lists the trust domain's SPIRE keys of either scheme, its dry run
says exactly what this server's disposal sweep then does, and `--prune` does no more than the sweep."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator

import pytest

from plugin.cli.keys import Naming, Outcome, SpireKey, Survey, prune, survey
from plugin.config import Config, parse_config
from plugin.disposal import Step
from plugin.keymanager import KeyManager, KeySettings
from plugin.lifecycle import DeletionQueue
from plugin.naming import BuiltinScheme
from tests.support.fake_clock import ManualClock
from tests.support.fake_kms import FakeKey, FakeKms

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)
TD = "example.org"


def alias_of(server_id: str, key_id: str = "x509-CA-A", td: str = TD) -> str:
    return BuiltinScheme(td, server_id).alias_for(key_id)


def description_of(key_id: str = "x509-CA-A", td: str = TD) -> str:
    return BuiltinScheme(td, "any").description_for(key_id)


World = dict[str, FakeKey]


def alias_world(kms: FakeKms) -> World:
    """Every case of the alias-based sweep, each key labelled."""
    world = {
        "ours": kms.add_key(description_of(), alias=alias_of("server1"), alias_updated=T0 - 20 * DAY),
        "silent": kms.add_key(description_of(), alias=alias_of("server10"), alias_updated=T0 - 20 * DAY),
        "quiet": kms.add_key(description_of(), alias=alias_of("server11"), alias_updated=T0 - 13 * DAY),
        "disabled": kms.add_key(description_of(), alias=alias_of("server12"), alias_updated=T0 - 20 * DAY),
        "shared": kms.add_key(description_of(), alias=alias_of("server13"), alias_updated=T0 - 20 * DAY),
        "pending": kms.add_key(description_of(), alias=alias_of("server14"), alias_updated=T0 - 20 * DAY),
        "orphan": kms.add_key(description_of("x509-CA-B"), created=T0 - 3 * DAY),
        "young orphan": kms.add_key(description_of("x509-CA-B"), created=T0 - 47 * HOUR),
        "community": kms.add_key("SPIRE_SERVER_KEY/x509-CA-A", alias="alias/SPIRE_SERVER_KEY/x509-CA-A"),
        "other td": kms.add_key(
            description_of(td="example.org2"),
            alias=alias_of("s", td="example.org2"),
            alias_updated=T0 - 20 * DAY,
        ),
        "foreign": kms.add_key("an application's key", created=T0 - 90 * DAY),
    }
    world["disabled"].state = "Disabled"
    world["pending"].state = "PendingDeletion"
    kms.aliases["alias/app/signer"] = world["shared"].arn
    kms.alias_updated["alias/app/signer"] = T0 - 90 * DAY
    return world


def tag_world(kms: FakeKms) -> World:
    def tagged(server_id: str, stamped: datetime.timedelta | None, **kwargs: object) -> dict[str, str]:
        tags = BuiltinScheme(TD, server_id).spire_tags("x509-CA-A", 0)
        if stamped is None:
            del tags["spire-last-update"]
        else:
            tags["spire-last-update"] = str(int((T0 - stamped).timestamp()))
        return tags

    old = T0 - 60 * DAY
    world = {
        "ours": kms.add_key(description_of(), tagged("server1", DAY), old, alias_of("server1")),
        "silent": kms.add_key(description_of(), tagged("server10", 15 * DAY), old, alias_of("server10")),
        "never stamped": kms.add_key(description_of(), tagged("server11", None), old, alias_of("server11")),
        "quiet": kms.add_key(description_of(), tagged("server12", 13 * DAY), old, alias_of("server12")),
        "replaced": kms.add_key(description_of(), tagged("server1", 30 * DAY), old),
        "untagged": kms.add_key(description_of(), None, old, alias_of("server13"), T0 - 30 * DAY),
        "untagged orphan": kms.add_key(description_of("x509-CA-B"), None, old),
    }
    return world


def builtin_config(*extra: str) -> Config:
    return parse_config("\n".join(['region = "us-east-1"', 'key_identifier_value = "server1"', *extra]), TD)


def by_label(world: World, found: Survey) -> dict[str, SpireKey]:
    labels = {key.arn: label for label, key in world.items()}
    return {labels[key.arn]: key for key in found.keys}


def outcome(kms: FakeKms, world: World) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each key's state and the aliases pointing at it."""
    return {
        label: (key.state, tuple(sorted(a for a, arn in kms.aliases.items() if arn == key.arn)))
        for label, key in world.items()
    }


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def run_sweep(clock: ManualClock) -> Iterator[Callable[[FakeKms, bool], None]]:
    """This server started once: its start-up heartbeat and disposal, and every deletion they queue."""
    managers: list[KeyManager] = []

    def sweep(kms: FakeKms, tags: bool) -> None:
        deletions = DeletionQueue(wait=lambda event, seconds: event.wait(0.01))
        manager = KeyManager(deletions, clock=clock)
        managers.append(manager)
        manager.configure(KeySettings(BuiltinScheme(TD, "server1"), {}, None, 7, tag_discovery=tags), kms)
        assert manager.housekeeper is not None and manager.housekeeper.wait_idle(10)
        assert deletions.wait_idle(10)

    yield sweep
    for manager in managers:
        manager.stop()


@pytest.mark.parametrize(("build", "tags"), [(alias_world, False), (tag_world, True)])
def test_the_dry_run_says_what_the_sweep_then_does(
    clock: ManualClock,
    run_sweep: Callable[[FakeKms, bool], None],
    build: Callable[[FakeKms], World],
    tags: bool,
) -> None:
    kms = FakeKms(clock)
    world = build(kms)
    config = builtin_config("enable_tag_based_key_discovery = true" if tags else "")
    before = outcome(kms, world)
    found = by_label(world, survey(kms, config, "server1", clock.now()))

    run_sweep(kms, tags)
    after = outcome(kms, world)
    for label, key in found.items():
        disposal = key.disposal
        due = disposal.due_by(clock.now())
        scheduled = before[label][0] == "Enabled" and after[label][0] == "PendingDeletion"
        assert scheduled == (due and disposal.step is Step.SCHEDULE_DELETION), label
        gone = set(before[label][1]) - set(after[label][1])
        assert gone == (set(disposal.aliases) if due else set()), label
    for label in set(world) - set(found):
        assert after[label] == before[label], f"{label}: not listed, and not touched either"


def test_what_keys_lists_and_why(clock: ManualClock) -> None:
    kms = FakeKms(clock)
    world = alias_world(kms)
    found = by_label(world, survey(kms, builtin_config(), "server1", clock.now()))
    assert set(found) == set(world) - {"other td", "foreign"}
    steps = {label: (key.disposal.step, key.disposal.due_by(clock.now())) for label, key in found.items()}
    assert steps == {
        "ours": (Step.KEEP, False),
        "silent": (Step.SCHEDULE_DELETION, True),
        "quiet": (Step.SCHEDULE_DELETION, False),
        "disabled": (Step.NONE, False),
        "shared": (Step.DELETE_ALIASES, True),
        "pending": (Step.DELETE_ALIASES, True),
        "orphan": (Step.SCHEDULE_DELETION, True),
        "young orphan": (Step.SCHEDULE_DELETION, False),
        "community": (Step.NONE, False),
    }
    assert found["quiet"].disposal.due == T0 + DAY
    assert found["young orphan"].disposal.due == T0 + HOUR
    assert (found["silent"].server_id, found["silent"].spire_key_id) == ("server10", "x509-CA-A")
    assert found["silent"].heartbeat == T0 - 20 * DAY
    assert (found["orphan"].naming, found["orphan"].spire_key_id) == (Naming.NONE, "x509-CA-B")
    assert found["community"].naming is Naming.COMMUNITY
    assert "community" in found["community"].disposal.reason
    assert [str(found[label].monthly_cost) for label in ("silent", "pending")] == ["1.00", "0.00"]


def test_prune_does_what_the_sweep_does_and_no_more(
    clock: ManualClock, run_sweep: Callable[[FakeKms, bool], None]
) -> None:
    for tags, build in ((False, alias_world), (True, tag_world)):
        swept, pruned = FakeKms(clock), FakeKms(clock)
        swept_world, pruned_world = build(swept), build(pruned)
        config = builtin_config("enable_tag_based_key_discovery = true" if tags else "")
        results = prune(pruned, survey(pruned, config, "server1", clock.now()), 7)
        run_sweep(swept, tags)
        own = "ours"
        expected, got = outcome(swept, swept_world), outcome(pruned, pruned_world)
        # The sweep's heartbeat also refreshes (and with tags, stamps) this server's own key; prune does not.
        assert {k: v for k, v in got.items() if k != own} == {k: v for k, v in expected.items() if k != own}
        assert all(result.outcome is Outcome.DONE for result in results), results
        assert all(key.pending_window_days in (None, 7) for key in pruned.keys.values())


def test_prune_leaves_a_key_whose_server_came_back_meanwhile(clock: ManualClock) -> None:
    kms = FakeKms(clock)
    world = alias_world(kms)
    found = survey(kms, builtin_config(), "server1", clock.now())
    kms.alias_updated[alias_of("server10")] = clock.now()  # its heartbeat, between listing and pruning
    results = {result.key.arn: result for result in prune(kms, found, 7)}
    assert results[world["silent"].arn].outcome is Outcome.SKIPPED
    assert world["silent"].state == "Enabled" and alias_of("server10") in kms.aliases
    assert world["orphan"].state == "PendingDeletion"


def test_prune_reports_a_refused_step_and_goes_on(clock: ManualClock) -> None:
    kms = FakeKms(clock)
    world = alias_world(kms)
    found = survey(kms, builtin_config(), "server1", clock.now())
    kms.fail("ScheduleKeyDeletion", "AccessDeniedException")
    results = {result.key.arn: result for result in prune(kms, found, 7)}
    failed = [result for result in results.values() if result.outcome is Outcome.FAILED]
    assert len(failed) == 1 and failed[0].code == "AccessDeniedException"
    assert "grant kms:ScheduleKeyDeletion" in failed[0].detail
    assert sum(key.state == "PendingDeletion" for key in (world["silent"], world["orphan"])) == 1


def test_the_community_scheme_has_nothing_to_prune(clock: ManualClock) -> None:
    kms = FakeKms(clock)
    mine = kms.add_key("SPIRE_SERVER_KEY/x509-CA-A", alias="alias/SPIRE_SERVER_KEY/x509-CA-A")
    leaked = kms.add_key("SPIRE_SERVER_KEY/JWT-Signer-A", created=T0 - 30 * DAY)
    kms.add_key("an application's key")
    found = survey(kms, parse_config('region = "us-east-1"', TD), None, clock.now())
    steps = {key.arn: key.disposal.step for key in found.keys}
    assert steps == {mine.arn: Step.KEEP, leaked.arn: Step.NONE}
    assert found.rules is None and prune(kms, found, 7) == []
    assert found.monthly_cost == 2


def test_a_server_without_an_id_yet_owns_nothing(clock: ManualClock) -> None:
    kms = FakeKms(clock)
    world = alias_world(kms)
    found = by_label(world, survey(kms, builtin_config(), None, clock.now()))
    assert found["ours"].disposal.step is Step.SCHEDULE_DELETION, "server1's key is another server's to it"


def test_a_refused_read_is_reported_and_the_rest_listed(clock: ManualClock) -> None:
    kms = FakeKms(clock)
    world = alias_world(kms)
    kms.fail_always("ListKeys", "AccessDeniedException")
    kms.fail_always("GetResources", "AccessDeniedException")
    found = survey(kms, builtin_config(), "server1", clock.now())
    assert any(
        "ListKeys failed (AccessDeniedException)" in p and "grant kms:ListKeys" in p for p in found.problems
    )
    assert any("GetResources" in note for note in found.notes), "not needed without tag-based discovery"
    assert "kms:ListKeys" in found.grants and "tag:GetResources" not in found.grants
    assert world["silent"].arn in {key.arn for key in found.keys}
    assert world["orphan"].arn not in {key.arn for key in found.keys}
