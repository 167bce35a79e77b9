"""Key lifecycle for HA and cost, against the in-memory KMS and a clock the tests move: the heartbeat keeps
this server's aliases (and tags) fresh, the disposal reclaims what silent servers and crashes left behind
and nothing else, failures are logged and retried while signing goes on, and the background work stops
when the configuration is replaced or the plugin stops."""

from __future__ import annotations

import datetime
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from plugin.algorithms import HashAlgorithm, KeyType
from plugin.errors import ErrorKind, PluginError
from plugin.keymanager import KeyManager, KeySettings
from plugin.kmsapi import Kms
from plugin.lifecycle import DeletionQueue, PeriodicRunner, PeriodicTask
from plugin.naming import (
    TAG_ACTIVE,
    TAG_KEY_ID,
    TAG_LAST_UPDATE,
    TAG_SERVER_ID,
    TAG_TRUST_DOMAIN,
    BuiltinScheme,
    CommunityScheme,
)
from tests.support.fake_clock import ManualClock
from tests.support.fake_kms import ACCOUNT, FakeKey, FakeKms

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
TD = "example.org"
DIGEST = hashlib.sha256(b"to be signed").digest()
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)


def alias_of(server_id: str, key_id: str = "x509-CA-A", td: str = TD) -> str:
    return BuiltinScheme(td, server_id).alias_for(key_id)


def description_of(key_id: str = "x509-CA-A", td: str = TD) -> str:
    return BuiltinScheme(td, "any").description_for(key_id)


class Fleet:
    """Key managers sharing one fake KMS, one clock and one deletion queue; all stopped at the end."""

    def __init__(self, kms: FakeKms, clock: ManualClock, deletions: DeletionQueue) -> None:
        self.kms = kms
        self.clock = clock
        self.deletions = deletions
        self.managers: list[KeyManager] = []

    def start(
        self,
        server_id: str,
        td: str = TD,
        tags: bool = False,
        key_policy: str | None = None,
        default_key_policy: bool = False,
        keys: KeyManager | None = None,
    ) -> KeyManager:
        manager = keys or KeyManager(self.deletions, clock=self.clock)
        manager.configure(
            KeySettings(
                scheme=BuiltinScheme(td, server_id),
                key_tags={"team": "identity"},
                key_policy=key_policy,
                deletion_window_days=7,
                tag_discovery=tags,
                default_key_policy=default_key_policy,
            ),
            self.kms,
        )
        if manager not in self.managers:
            self.managers.append(manager)
        self.settle()
        return manager

    def settle(self, deletions: bool = True) -> None:
        for manager in self.managers:
            housekeeper = manager.housekeeper
            if housekeeper is not None:
                assert housekeeper.wait_idle(10), "background work did not settle"
        if deletions:
            assert self.deletions.wait_idle(10)

    def advance(self, delta: datetime.timedelta, deletions: bool = True) -> None:
        self.clock.advance(delta.total_seconds())
        self.settle(deletions)

    def stop(self, manager: KeyManager) -> None:
        """A server that goes silent: its background work stops, its keys stay."""
        housekeeper = manager.housekeeper
        if housekeeper is not None:
            housekeeper.stop()
            assert housekeeper.wait_idle(10)
        self.managers.remove(manager)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def kms(clock: ManualClock) -> FakeKms:
    return FakeKms(clock)


@pytest.fixture
def deletions() -> Iterator[DeletionQueue]:
    queue = DeletionQueue(wait=lambda event, seconds: event.wait(0.01))
    yield queue
    queue.stop()


@pytest.fixture
def fleet(kms: FakeKms, clock: ManualClock, deletions: DeletionQueue) -> Iterator[Fleet]:
    made = Fleet(kms, clock, deletions)
    yield made
    for manager in made.managers:
        housekeeper = manager.housekeeper
        if housekeeper is not None:
            housekeeper.stop()


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    """Each log line at `level` or above: its message, then its fields."""
    return [
        " ".join([r.getMessage(), *(f"{k}={v}" for k, v in getattr(r, "hclog_fields", {}).items())])
        for r in caplog.records
        if r.levelno >= level
    ]


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_fake_kms_is_a_kms(kms: FakeKms) -> None:
    typed: Kms = kms
    assert typed is kms


# --------------------------------------------------------------------------------------------------
# Heartbeat
# --------------------------------------------------------------------------------------------------


def test_heartbeat_at_start_up_and_every_six_hours(fleet: Fleet, kms: FakeKms, clock: ManualClock) -> None:
    first = fleet.start("server1")
    first.generate_key("x509-CA-A", KeyType.EC_P256)
    first.generate_key("JWT-Signer-A", KeyType.EC_P256)
    fleet.stop(first)

    fleet.advance(3 * DAY)
    server = fleet.start("server1")
    aliases = [alias_of("server1"), alias_of("server1", "JWT-Signer-A")]
    assert [kms.alias_updated[a] for a in aliases] == [T0 + 3 * DAY] * 2, "refreshed at start-up"

    fleet.advance(5 * HOUR)
    assert [kms.alias_updated[a] for a in aliases] == [T0 + 3 * DAY] * 2
    fleet.advance(HOUR)
    assert [kms.alias_updated[a] for a in aliases] == [T0 + 3 * DAY + 6 * HOUR] * 2
    # Re-pointed at the keys they already had.
    assert {kms.aliases[a] for a in aliases} == {k.key_arn for k in server.get_public_keys()}


def test_heartbeat_leaves_an_alias_another_replica_moved_and_warns(
    fleet: Fleet, kms: FakeKms, caplog: pytest.LogCaptureFixture
) -> None:
    server = fleet.start("server1")
    key = server.generate_key("x509-CA-A", KeyType.EC_P256)
    replacement = kms.add_key(description_of())
    kms.aliases[key.alias] = replacement.arn
    before = kms.alias_updated[key.alias]
    updates = kms.calls["UpdateAlias"]

    fleet.advance(6 * HOUR)
    assert kms.aliases[key.alias] == replacement.arn
    assert kms.alias_updated[key.alias] == before
    assert kms.calls["UpdateAlias"] == updates
    assert any("points to another key" in m for m in messages(caplog))


def test_heartbeat_puts_back_a_missing_alias(
    fleet: Fleet, kms: FakeKms, caplog: pytest.LogCaptureFixture
) -> None:
    server = fleet.start("server1")
    key = server.generate_key("x509-CA-A", KeyType.EC_P256)
    del kms.aliases[key.alias]
    fleet.advance(6 * HOUR)
    assert kms.aliases[key.alias] == key.key_arn
    assert any("missing" in m for m in messages(caplog))


def test_heartbeat_does_not_wait_for_a_key_being_replaced(fleet: Fleet, kms: FakeKms) -> None:
    server = fleet.start("server1")
    key = server.generate_key("x509-CA-A", KeyType.EC_P256)
    other = server.generate_key("JWT-Signer-A", KeyType.EC_P256)
    generator = threading.Thread(target=server.generate_key, args=("x509-CA-A", KeyType.EC_P256))
    with kms.hold("CreateKey") as entered:
        generator.start()
        assert entered.wait(5)
        before = kms.alias_updated[key.alias]
        fleet.advance(6 * HOUR)  # settles although the replacement holds its key
        assert kms.alias_updated[key.alias] == before
        assert kms.alias_updated[other.alias] == fleet.clock.now()
        server.sign("JWT-Signer-A", DIGEST, HashAlgorithm.SHA256, None)
    generator.join(10)
    replaced = server.get_public_key("x509-CA-A")
    assert replaced is not None and kms.aliases[key.alias] == replaced.key_arn != key.key_arn


# --------------------------------------------------------------------------------------------------
# Disposal of silent servers (aliases)
# --------------------------------------------------------------------------------------------------


def test_a_silent_servers_aliases_and_keys_go_after_14_days_and_nothing_else(
    fleet: Fleet, kms: FakeKms
) -> None:
    servers = {name: fleet.start(name) for name in ("server1", "server10", "server2")}
    other_td = fleet.start("server1", td="example.org2")
    made = {
        (name, key_id): manager.generate_key(key_id, KeyType.EC_P256)
        for name, manager in [*servers.items(), ("td2", other_td)]
        for key_id in ("x509-CA-A", "JWT-Signer-A")
    }
    unrelated = kms.add_key("my own key", alias="alias/unrelated/app")
    fleet.stop(servers["server10"])  # the look-alike of server1 goes silent

    fleet.advance(13 * DAY)
    assert all(kms.keys[k.key_arn].state == "Enabled" for k in made.values())
    assert all(kms.aliases.get(k.alias) == k.key_arn for k in made.values())

    fleet.advance(DAY + HOUR)
    for (name, _), key in made.items():
        if name == "server10":
            assert kms.keys[key.key_arn].state == "PendingDeletion"
            assert kms.keys[key.key_arn].pending_window_days == 7
            assert key.alias not in kms.aliases
        else:
            assert kms.keys[key.key_arn].state == "Enabled"
            assert kms.aliases[key.alias] == key.key_arn
    assert unrelated.state == "Enabled" and kms.aliases["alias/unrelated/app"] == unrelated.arn


def test_stale_aliases_of_other_trust_domains_disabled_keys_and_ours_are_never_touched(
    fleet: Fleet, kms: FakeKms, clock: ManualClock
) -> None:
    old = T0 - 30 * DAY
    keys = {
        "other td": kms.add_key(
            description_of(td="example.org2"), created=old, alias=alias_of("s", td="example.org2")
        ),
        "other td, same sanitised prefix": kms.add_key(
            description_of(td="example.org2"),
            created=old,
            alias="alias/SPIRE_SERVER/example_org2/s/x509-CA-A",
        ),
        "disabled": kms.add_key(description_of(), created=old, alias=alias_of("server3")),
        "root": kms.add_key(description_of(), created=old, alias="alias/SPIRE_SERVER/example_org"),
        "community": kms.add_key("SPIRE_SERVER_KEY/x509-CA-A", created=old, alias="alias/SPIRE_SERVER_KEY/x"),
        "silent": kms.add_key(description_of(), created=old, alias=alias_of("server10")),
        "silent nested": kms.add_key(description_of(), created=old, alias=alias_of("server1/nested")),
    }
    keys["disabled"].state = "Disabled"
    ours = kms.add_key(description_of(), created=old, alias=alias_of("server1"))
    kms.fail_always("UpdateAlias", "AccessDeniedException")  # our heartbeat fails: our alias stays old
    fleet.start("server1")

    gone = {name for name, key in keys.items() if key.state == "PendingDeletion"}
    assert gone == {"silent", "silent nested"}
    assert all(alias in kms.aliases for alias in (alias_of("server3"), alias_of("s", td="example.org2")))
    assert ours.state == "Enabled" and kms.aliases[alias_of("server1")] == ours.arn


# --------------------------------------------------------------------------------------------------
# Disposal of keys no alias points at
# --------------------------------------------------------------------------------------------------


def test_a_key_left_between_create_key_and_alias_goes_after_48_hours_not_before(
    fleet: Fleet, kms: FakeKms
) -> None:
    crashed = kms.add_key(description_of("x509-CA-B"))  # CreateKey, then the server died
    look_alike = kms.add_key(description_of("x509-CA-B", td="example.org2"))
    foreign = kms.add_key("someone else's key")
    disabled = kms.add_key(description_of("JWT-Signer-B"))
    disabled.state = "Disabled"
    fleet.start("server2")

    fleet.advance(47 * HOUR)
    fleet.start("server2b")  # a start-up sweep at 47 hours
    assert crashed.state == "Enabled"

    fleet.advance(HOUR)
    fleet.start("server2c")
    assert crashed.state == "PendingDeletion"
    assert [look_alike.state, foreign.state, disabled.state] == ["Enabled", "Enabled", "Disabled"]


def test_a_replaced_key_whose_deletion_was_lost_is_found_by_the_sweep(
    fleet: Fleet, kms: FakeKms, deletions: DeletionQueue
) -> None:
    fleet.start("server2")  # a peer, sweeping
    server = fleet.start("server1")
    first = server.generate_key("x509-CA-A", KeyType.EC_P256)
    fleet.stop(server)
    lost = DeletionQueue()
    lost.stop()  # restarted, it replaces the key and dies before its queue gets to the old one
    crashing = KeyManager(lost, clock=fleet.clock)
    fleet.start("server1", keys=crashing)
    second = crashing.generate_key("x509-CA-A", KeyType.EC_P256)
    assert kms.keys[first.key_arn].state == "Enabled"
    fleet.stop(crashing)

    fleet.advance(DAY)
    assert kms.keys[first.key_arn].state == "Enabled", "younger than 48 hours"
    fleet.advance(DAY)
    assert kms.keys[first.key_arn].state == "PendingDeletion"
    assert kms.keys[second.key_arn].state == "Enabled"


def test_foreign_keys_are_described_once_not_every_sweep(fleet: Fleet, kms: FakeKms) -> None:
    for n in range(5):
        kms.add_key(f"application key {n}")
    aliased = kms.add_key("aliased", alias="alias/app")
    fleet.start("server1")
    assert kms.calls["DescribeKey"] == 5
    fleet.advance(DAY)
    fleet.advance(DAY)
    assert kms.calls["DescribeKey"] == 5
    assert kms.calls["ListKeys"] == 3
    assert aliased.state == "Enabled"


# --------------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "code"),
    [
        ("ListAliases", "ThrottlingException"),
        ("ListKeys", "KMSInternalException"),
        ("DescribeKey", "ThrottlingException"),
        ("DeleteAlias", "AccessDeniedException"),
        ("UpdateAlias", "ThrottlingException"),
        ("ScheduleKeyDeletion", "DependencyTimeoutException"),
    ],
)
def test_background_failures_are_logged_and_retried_while_signing_goes_on(
    fleet: Fleet,
    kms: FakeKms,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
    operation: str,
    code: str,
) -> None:
    server = fleet.start("server1")
    key = server.generate_key("JWT-Signer-A", KeyType.EC_P256)
    silent = kms.add_key(description_of(), alias=alias_of("server10"), alias_updated=T0 - 20 * DAY)
    orphan = kms.add_key(description_of("x509-CA-B"), created=T0 - 3 * DAY)
    kms.fail_always(operation, code)
    calls = kms.calls[operation]

    fleet.advance(DAY, deletions=False)
    for _ in range(3):
        fleet.advance(datetime.timedelta(minutes=10), deletions=False)
        server.sign("JWT-Signer-A", DIGEST, HashAlgorithm.SHA256, None)
    # The deletion queue works on its own thread: give it the time to meet the failure.
    assert eventually(lambda: kms.calls[operation] - calls >= 3), "retried"
    assert eventually(lambda: any(code in m and "will retry" in m for m in messages(caplog))), messages(
        caplog
    )
    if operation != "UpdateAlias":
        assert "Enabled" in (silent.state, orphan.state)

    kms.clear_failures()
    fleet.advance(HOUR)
    assert silent.state == "PendingDeletion" and alias_of("server10") not in kms.aliases
    assert orphan.state == "PendingDeletion"
    assert kms.alias_updated[key.alias] >= T0 + DAY
    assert kms.keys[key.key_arn].state == "Enabled"


def test_a_failing_pass_is_retried_with_backoff_up_to_its_period(clock: ManualClock) -> None:
    runs: list[datetime.datetime] = []
    outcome = {"failures": 1}

    def task() -> int:
        runs.append(clock.now())
        return outcome["failures"]

    stop = threading.Event()
    runner = PeriodicRunner([PeriodicTask("t", 8 * HOUR, task)], clock, stop, HOUR)
    try:
        for _ in range(7):
            assert runner.wait_idle(5)
            clock.advance(hours=1)
        assert runner.wait_idle(5)
        # Started at 0, retried after 1, 2 and 4 hours: at 0, 1, 3 and 7.
        assert [(r - T0) / HOUR for r in runs] == [0, 1, 3, 7]
        outcome["failures"] = 0
        clock.advance(hours=8)
        assert runner.wait_idle(5)
        clock.advance(hours=7)
        assert runner.wait_idle(5)
        assert [(r - T0) / HOUR for r in runs] == [0, 1, 3, 7, 15]
    finally:
        stop.set()


def test_a_bug_in_a_pass_is_logged_and_the_pass_retried(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[int] = []

    def task() -> int:
        runs.append(1)
        raise RuntimeError("boom")

    stop = threading.Event()
    runner = PeriodicRunner([PeriodicTask("t", DAY, task)], clock, stop, HOUR)
    try:
        assert runner.wait_idle(5)
        clock.advance(hours=1)
        assert runner.wait_idle(5)
        assert len(runs) == 2
        assert any("Background task failed" in m for m in messages(caplog, logging.ERROR))
    finally:
        stop.set()


# --------------------------------------------------------------------------------------------------
# Stopping
# --------------------------------------------------------------------------------------------------


def test_background_work_stops_on_configure_again_and_on_stop(fleet: Fleet, kms: FakeKms) -> None:
    server = fleet.start("server1")
    server.generate_key("x509-CA-A", KeyType.EC_P256)
    first = server.housekeeper
    assert first is not None
    fleet.start("server1", keys=server)
    assert server.housekeeper is not first
    fleet.advance(6 * HOUR)
    # Only the new configuration's heartbeat ran: one refresh, not two.
    updates = kms.calls["UpdateAlias"]
    fleet.advance(6 * HOUR)
    assert kms.calls["UpdateAlias"] == updates + 1

    server.stop()
    assert server.housekeeper is None
    before = sum(kms.calls.values())
    fleet.clock.advance(days=3)
    assert first.wait_idle(5)
    threading.Event().wait(0.1)
    assert sum(kms.calls.values()) == before


def test_the_community_scheme_runs_no_background_work(kms: FakeKms, clock: ManualClock) -> None:
    deletions = DeletionQueue(wait=lambda event, seconds: event.wait(0.01))
    keys = KeyManager(deletions, clock=clock)
    keys.configure(KeySettings(CommunityScheme(), {}, None, 7), kms)
    try:
        assert keys.housekeeper is None
        first = keys.generate_key("x509-CA-A", KeyType.EC_P256)
        keys.generate_key("x509-CA-A", KeyType.EC_P256)
        assert deletions.wait_idle(5)
        assert kms.keys[first.key_arn].state == "PendingDeletion"  # its own replaced key: yes
        assert {"ListKeys", "DeleteAlias", "GetResources", "TagResource"}.isdisjoint(kms.calls)
    finally:
        keys.stop()


# --------------------------------------------------------------------------------------------------
# Tag-based discovery
# --------------------------------------------------------------------------------------------------


def test_new_keys_carry_the_spire_tags_and_the_users(fleet: Fleet, kms: FakeKms, clock: ManualClock) -> None:
    server = fleet.start("server1", tags=True)
    key = server.generate_key("bundle-acme-example.org", KeyType.EC_P256)
    assert kms.keys[key.key_arn].tags == {
        "team": "identity",
        TAG_TRUST_DOMAIN: "example.org",
        TAG_SERVER_ID: "server1",
        TAG_ACTIVE: "true",
        TAG_KEY_ID: "bundle-acme-example.org",
        TAG_LAST_UPDATE: str(int(clock.now().timestamp())),
    }
    assert kms.aliases[key.alias] == key.key_arn, "aliases are kept, as the built-in keeps them"


def test_heartbeat_stamps_spire_last_update(fleet: Fleet, kms: FakeKms, clock: ManualClock) -> None:
    server = fleet.start("server1", tags=True)
    key = server.generate_key("x509-CA-A", KeyType.EC_P256)
    fleet.advance(6 * HOUR)
    assert kms.keys[key.key_arn].tags[TAG_LAST_UPDATE] == str(int(clock.now().timestamp()))
    assert kms.alias_updated[key.alias] == clock.now(), "aliases too, as the built-in does"


def test_keys_found_by_alias_are_migrated_to_tags(fleet: Fleet, kms: FakeKms, clock: ManualClock) -> None:
    legacy = fleet.start("server1")
    key = legacy.generate_key("x509-CA-A", KeyType.EC_P256)
    fleet.stop(legacy)
    fleet.advance(HOUR)
    server = fleet.start("server1", tags=True)
    assert server.get_public_key("x509-CA-A") == key
    tags = kms.keys[key.key_arn].tags
    assert tags[TAG_SERVER_ID] == "server1" and tags[TAG_KEY_ID] == "x509-CA-A" and tags[TAG_ACTIVE] == "true"


def test_a_failed_migration_is_logged_and_the_heartbeat_tags_later(
    fleet: Fleet, kms: FakeKms, caplog: pytest.LogCaptureFixture
) -> None:
    legacy = fleet.start("server1")
    key = legacy.generate_key("x509-CA-A", KeyType.EC_P256)
    fleet.stop(legacy)
    kms.fail("TagResource", "ThrottlingException", times=2)  # migration, then the first heartbeat
    server = fleet.start("server1", tags=True)
    assert server.get_public_key("x509-CA-A") == key
    assert TAG_SERVER_ID not in kms.keys[key.key_arn].tags
    assert any("Failed to tag a key found by alias" in m for m in messages(caplog))
    fleet.advance(datetime.timedelta(minutes=1))
    assert kms.keys[key.key_arn].tags[TAG_SERVER_ID] == "server1"


def test_a_key_found_by_tag_without_alias_is_used_and_its_alias_put_back(fleet: Fleet, kms: FakeKms) -> None:
    server = fleet.start("server1", tags=True)
    key = server.generate_key("x509-CA-A", KeyType.EC_P256)
    fleet.stop(server)
    del kms.aliases[key.alias]
    restarted = fleet.start("server1", tags=True)
    assert restarted.get_public_key("x509-CA-A") == key
    assert kms.aliases[key.alias] == key.key_arn


def test_where_alias_and_tags_disagree_the_alias_wins(fleet: Fleet, kms: FakeKms) -> None:
    server = fleet.start("server1", tags=True)
    key = server.generate_key("x509-CA-A", KeyType.EC_P256)
    scheme = BuiltinScheme(TD, "server1")
    stray = kms.add_key(description_of(), tags=scheme.spire_tags("x509-CA-A", int(T0.timestamp())))
    fleet.stop(server)
    restarted = fleet.start("server1", tags=True)
    assert restarted.get_public_key("x509-CA-A") == key
    assert stray.state == "Enabled"
    fleet.advance(2 * DAY)
    assert stray.state == "PendingDeletion", "an unaliased SPIRE key: swept after 48 hours"
    assert kms.keys[key.key_arn].state == "Enabled"


def stale_tagged(
    kms: FakeKms, server_id: str, last_update: datetime.datetime | None, td: str = TD, **extra: str
) -> FakeKey:
    tags = BuiltinScheme(td, server_id).spire_tags("x509-CA-A", 0)
    if last_update is None:
        del tags[TAG_LAST_UPDATE]
    else:
        tags[TAG_LAST_UPDATE] = str(int(last_update.timestamp()))
    tags.update(extra)
    return kms.add_key(
        description_of(td=td), tags=tags, created=T0 - 60 * DAY, alias=alias_of(server_id, td=td)
    )


def test_tag_disposal_reclaims_keys_not_stamped_for_14_days_and_nothing_else(
    fleet: Fleet, kms: FakeKms, caplog: pytest.LogCaptureFixture
) -> None:
    keys = {
        "stale": stale_tagged(kms, "server10", T0 - 15 * DAY),
        "never stamped": stale_tagged(kms, "server11", None),
        "fresh": stale_tagged(kms, "server12", T0 - 13 * DAY),
        "malformed": stale_tagged(kms, "server13", None, **{TAG_LAST_UPDATE: "yesterday"}),
        "other td": stale_tagged(kms, "server14", T0 - 15 * DAY, td="example.org2"),
        "ours": stale_tagged(kms, "server1", T0 - 15 * DAY),
        "disabled": stale_tagged(kms, "server15", T0 - 15 * DAY),
    }
    keys["disabled"].state = "Disabled"
    fleet.start("server1", tags=True)
    gone = {name for name, key in keys.items() if key.state == "PendingDeletion"}
    assert gone == {"stale", "never stamped"}
    assert alias_of("server10") not in kms.aliases and alias_of("server11") not in kms.aliases
    assert alias_of("server12") in kms.aliases and alias_of("server1") in kms.aliases
    assert any("spire-last-update" in m for m in messages(caplog))
    assert kms.calls["ListKeys"] == 0, "with tags, keys are found by tag only"


def test_a_key_already_pending_deletion_is_tagged_inactive(fleet: Fleet, kms: FakeKms) -> None:
    pending = stale_tagged(kms, "server10", T0 - 15 * DAY)
    pending.state = "PendingDeletion"
    kms.keys[pending.arn] = pending
    original = kms.tag_resource

    def lenient(key_id: str, tags: Any) -> None:  # a KMS that does tag keys pending deletion
        kms.keys[key_id].tags.update(tags)

    kms.tag_resource = lenient  # type: ignore[method-assign]
    try:
        fleet.start("server1", tags=True)
    finally:
        kms.tag_resource = original  # type: ignore[method-assign]
    assert pending.tags[TAG_ACTIVE] == "false"
    assert alias_of("server10") not in kms.aliases


def test_tag_discovery_without_tag_get_resources_permission_says_what_is_missing(
    fleet: Fleet, kms: FakeKms
) -> None:
    kms.fail("GetResources", "AccessDeniedException")
    with pytest.raises(PluginError) as failed:
        fleet.start("server1", tags=True)
    assert failed.value.kind is ErrorKind.PERMISSION_DENIED
    assert "tag:GetResources" in failed.value.message


# --------------------------------------------------------------------------------------------------
# Default key policy
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("partition", ["aws", "aws-us-gov", "aws-cn"])
def test_default_key_policy_is_for_the_role_we_run_as_in_its_partition(
    fleet: Fleet, kms: FakeKms, partition: str
) -> None:
    kms.caller_arn = f"arn:{partition}:sts::{ACCOUNT}:assumed-role/spire-server/i-0123"
    server = fleet.start("server1", default_key_policy=True)
    first = server.generate_key("x509-CA-A", KeyType.EC_P256)
    second = server.generate_key("JWT-Signer-A", KeyType.EC_P256)
    policy = kms.keys[first.key_arn].policy
    assert policy is not None and policy == kms.keys[second.key_arn].policy
    assert f'"arn:{partition}:iam::{ACCOUNT}:role/spire-server"' in policy
    assert f'"arn:{partition}:iam::{ACCOUNT}:root"' in policy
    assert kms.calls["GetCallerIdentity"] == 1


def test_without_a_role_keys_get_kms_default_policy_and_a_warning(
    fleet: Fleet, kms: FakeKms, caplog: pytest.LogCaptureFixture
) -> None:
    server = fleet.start("server1", default_key_policy=True)
    key = server.generate_key("x509-CA-A", KeyType.EC_P256)
    assert kms.keys[key.key_arn].policy is None
    assert any("assumed IAM role" in m for m in messages(caplog))


def test_a_key_policy_file_wins_over_the_default(fleet: Fleet, kms: FakeKms) -> None:
    server = fleet.start("server1", key_policy='{"Version": "2012-10-17"}', default_key_policy=True)
    key = server.generate_key("x509-CA-A", KeyType.EC_P256)
    assert kms.keys[key.key_arn].policy == '{"Version": "2012-10-17"}'
    assert "GetCallerIdentity" not in kms.calls


def test_sts_failure_fails_generation_with_its_code_and_is_tried_again(fleet: Fleet, kms: FakeKms) -> None:
    kms.fail("GetCallerIdentity", "ThrottlingException")
    server = fleet.start("server1", default_key_policy=True)
    with pytest.raises(PluginError) as failed:
        server.generate_key("x509-CA-A", KeyType.EC_P256)
    assert failed.value.kind is ErrorKind.UNAVAILABLE and "GetCallerIdentity" in failed.value.message
    assert kms.live_keys() == []
    server.generate_key("x509-CA-A", KeyType.EC_P256)


# --------------------------------------------------------------------------------------------------
# Wiring: Configure and shutdown
# --------------------------------------------------------------------------------------------------


class _Context:
    def time_remaining(self) -> float:
        return 30.0

    def abort(self, code: object, details: str) -> None:
        raise AssertionError(f"{code}: {details}")


def test_configure_starts_the_background_work_configure_again_replaces_it_and_stop_ends_it(
    kms: FakeKms, clock: ManualClock
) -> None:
    from plugin.service import ConfigService, PluginServices
    from proto_gen.spire.config import config_pb2

    services = PluginServices(keys=KeyManager(DeletionQueue(), clock=clock), kms_factory=lambda config: kms)
    service = ConfigService(services.keys, services.kms_factory)

    def configure(hcl: str) -> None:
        request = config_pb2.ConfigureRequest(
            core_configuration=config_pb2.CoreConfiguration(trust_domain=TD), hcl_configuration=hcl
        )
        service.Configure(request, _Context())

    configure(
        'region = "us-east-1"\nkey_identifier_value = "server1"\nenable_tag_based_key_discovery = true\n'
    )
    first = services.keys.housekeeper
    assert first is not None and first.wait_idle(5)
    assert kms.calls["GetResources"] >= 1, "tag-based discovery, from the configuration"
    key = services.keys.generate_key("x509-CA-A", KeyType.EC_P256)
    assert kms.keys[key.key_arn].tags[TAG_SERVER_ID] == "server1"
    assert kms.calls["GetCallerIdentity"] == 1, "the default key policy, built-in scheme"

    configure('region = "us-east-1"\nkey_identifier_value = "server1"\n')
    second = services.keys.housekeeper
    assert second is not None and second is not first
    assert first.join(5), "the replaced configuration's background work ended"

    services.stop()
    assert services.keys.housekeeper is None
    assert second.join(5)

    configure('region = "us-east-1"\n')
    assert services.keys.housekeeper is None, "the community scheme has no background work"
