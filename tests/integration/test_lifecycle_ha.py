"""High availability on one KMS: several servers, each a key manager with the real botocore adapter
(plugin.kms.BotocoreKms), on the KMS emulator, with the emulator's clock and the servers' clock moved together
through simulated weeks. Silent servers and crashes leave keys; exactly those are reclaimed, on time."""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

from plugin.algorithms import HashAlgorithm, KeyType
from plugin.awsclient import ClientSettings
from plugin.keymanager import KeyManager, KeySettings, ManagedKey
from plugin.kms import BotocoreKms
from plugin.lifecycle import DeletionQueue
from plugin.naming import TAG_ACTIVE, TAG_LAST_UPDATE, BuiltinScheme
from tests.support.fake_clock import ManualClock
from tests.support.kms_emulator import DUMMY_ACCESS_KEY_ID, DUMMY_SECRET_ACCESS_KEY, EmulatorControl

REGION = "us-east-1"
DIGEST = hashlib.sha256(b"signed while the background work fails").digest()
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)
KEY_IDS = ("x509-CA-A", "JWT-Signer-A")


class Cluster:
    """Servers sharing the emulator. Their clock and the emulator's move together."""

    def __init__(self, emulator: EmulatorControl) -> None:
        self.emulator = emulator
        self.start = datetime.datetime.now(datetime.UTC)
        self.clock = ManualClock(self.start)
        self.deletions = DeletionQueue(wait=lambda event, seconds: event.wait(0.05))
        self.servers: list[KeyManager] = []
        self.aws: Any = emulator.kms_client()

    def kms(self) -> BotocoreKms:
        return BotocoreKms(
            ClientSettings(
                region=REGION, access_key_id=DUMMY_ACCESS_KEY_ID, secret_access_key=DUMMY_SECRET_ACCESS_KEY
            )
        )

    def server(self, server_id: str, td: str = "example.org", tags: bool = False) -> KeyManager:
        keys = KeyManager(self.deletions, clock=self.clock)
        keys.configure(
            KeySettings(
                scheme=BuiltinScheme(td, server_id),
                key_tags={},
                key_policy=None,
                deletion_window_days=7,
                tag_discovery=tags,
                default_key_policy=True,
            ),
            self.kms(),
        )
        self.servers.append(keys)
        self.settle()
        return keys

    def silence(self, keys: KeyManager) -> None:
        """The server stops answering (its process is gone); its keys stay in KMS."""
        housekeeper = keys.housekeeper
        assert housekeeper is not None
        housekeeper.stop()  # not keys.stop(): the deletion queue is the cluster's
        self.servers.remove(keys)

    def settle(self, deletions: bool = True) -> None:
        for keys in self.servers:
            housekeeper = keys.housekeeper
            assert housekeeper is not None
            assert housekeeper.wait_idle(60), "background work did not settle"
        if deletions:
            assert self.deletions.wait_idle(60)

    def advance(self, delta: datetime.timedelta, deletions: bool = True) -> None:
        now = self.clock.now() + delta
        # The emulator first, so that every date it hands out from now on agrees with our clock.
        self.emulator.set_clock_offset((now - self.start).total_seconds())
        self.clock.set(now)
        self.settle(deletions)

    def state(self, key: ManagedKey | str) -> str:
        arn = key if isinstance(key, str) else key.key_arn
        return str(self.aws.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"])

    def aliases(self) -> dict[str, str]:
        listed = self.aws.list_aliases(Limit=100)["Aliases"]
        return {a["AliasName"]: a["TargetKeyId"] for a in listed}

    def stop(self) -> None:
        for keys in self.servers:
            housekeeper = keys.housekeeper
            if housekeeper is not None:
                housekeeper.stop()
        self.deletions.stop()


@pytest.fixture
def cluster(emulator: EmulatorControl, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator.url)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    made = Cluster(emulator)
    yield made
    made.stop()


def key_id(key: ManagedKey) -> str:
    return key.key_arn.rsplit("/", 1)[1]


@pytest.mark.parametrize("tags", [False, True], ids=["aliases", "tags"])
def test_a_silent_servers_keys_and_only_them_are_gone_after_14_days(cluster: Cluster, tags: bool) -> None:
    servers = {
        ("example.org", name): cluster.server(name, tags=tags) for name in ("server1", "server10", "server2")
    }
    servers["example.org2", "server1"] = cluster.server("server1", td="example.org2", tags=tags)
    made = {
        (td, name, k): keys.generate_key(k, KeyType.EC_P256)
        for (td, name), keys in servers.items()
        for k in KEY_IDS
    }
    # server10 (whose name starts like server1's) goes silent, and so does the only server of
    # example.org2 (whose name starts like example.org): nobody of example.org may reclaim the latter.
    cluster.silence(servers["example.org", "server10"])
    cluster.silence(servers["example.org2", "server1"])

    for _ in range(13):
        cluster.advance(DAY)
    assert {cluster.state(key) for key in made.values()} == {"Enabled"}

    cluster.advance(DAY)
    cluster.advance(DAY)
    aliases = cluster.aliases()
    for (td, name, _), key in made.items():
        if (td, name) == ("example.org", "server10"):
            assert cluster.state(key) == "PendingDeletion", key
            assert key.alias not in aliases
        else:
            assert cluster.state(key) == "Enabled", key
            assert aliases[key.alias] == key_id(key)
    all_keys = {k["KeyArn"] for k in cluster.aws.list_keys()["Keys"]}
    assert all_keys == {key.key_arn for key in made.values()}, "no key made or lost on the way"
    if tags:
        tagged = {
            t["TagKey"]: t["TagValue"]
            for t in cluster.aws.list_resource_tags(
                KeyId=made["example.org", "server1", "x509-CA-A"].key_arn
            )["Tags"]
        }
        assert int(tagged[TAG_LAST_UPDATE]) >= int((cluster.clock.now() - DAY).timestamp())
        gone = made["example.org", "server10", "x509-CA-A"].key_arn
        assert {t["TagKey"]: t["TagValue"] for t in cluster.aws.list_resource_tags(KeyId=gone)["Tags"]}[
            TAG_ACTIVE
        ] == "false"

    # Once their waiting period is over KMS deletes them; the others keep signing.
    cluster.advance(8 * DAY)
    remaining = {k["KeyArn"] for k in cluster.aws.list_keys()["Keys"]}
    assert remaining == {key.key_arn for (td, name, _), key in made.items() if name != "server10"}
    signature, _ = servers["example.org", "server1"].sign("x509-CA-A", DIGEST, HashAlgorithm.SHA256, None)
    assert signature


@pytest.mark.parametrize("tags", [False, True], ids=["aliases", "tags"])
def test_a_key_left_by_a_crash_between_create_key_and_alias_goes_after_48_hours_not_before(
    cluster: Cluster, tags: bool
) -> None:
    peer = cluster.server("server1", tags=tags)
    peer.generate_key("x509-CA-A", KeyType.EC_P256)
    # server2 creates its key as GenerateKey does, and dies before CreateAlias.
    scheme = BuiltinScheme("example.org", "server2")
    spire_tags = scheme.spire_tags("x509-CA-A", int(cluster.clock.now().timestamp())) if tags else {}
    crashed = cluster.kms().create_key("ECC_NIST_P256", scheme.description_for("x509-CA-A"), spire_tags, None)
    look_alike = BuiltinScheme("example.org2", "server2")
    other_td = cluster.kms().create_key(
        "ECC_NIST_P256",
        look_alike.description_for("x509-CA-A"),
        look_alike.spire_tags("x509-CA-A", 0) if tags else {},
        None,
    )

    cluster.advance(DAY)
    cluster.advance(23 * HOUR)
    cluster.server("server3", tags=tags)  # a peer starting at 47 hours sweeps at start-up: too young
    assert cluster.state(crashed.arn) == "Enabled"

    cluster.advance(2 * HOUR)
    cluster.advance(DAY)  # the daily sweeps after 48 hours
    assert cluster.state(crashed.arn) == "PendingDeletion"
    assert cluster.state(other_td.arn) == "Enabled"
    assert {cluster.state(key) for key in peer.get_public_keys()} == {"Enabled"}


def test_background_failures_are_logged_and_retried_while_signing_goes_on(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = cluster.server("server1")
    key = server.generate_key("x509-CA-A", KeyType.EC_P256)
    silent = cluster.server("server10")
    silent_key = silent.generate_key("x509-CA-A", KeyType.EC_P256)
    cluster.silence(silent)
    for _ in range(14):
        cluster.advance(DAY)

    emulator = cluster.emulator
    for operation in ("UpdateAlias", "DeleteAlias", "ListKeys"):
        emulator.add_fault(operation, error="AccessDeniedException", message="injected", count=-1)
    cluster.advance(DAY)
    for _ in range(3):
        cluster.advance(datetime.timedelta(minutes=10))
        signature, _ = server.sign("x509-CA-A", DIGEST, HashAlgorithm.SHA256, None)
        assert signature
    logged = " ".join(
        f"{r.getMessage()} {getattr(r, 'hclog_fields', {})}" for r in caplog.records if r.name == "lifecycle"
    )
    for operation in ("UpdateAlias", "DeleteAlias", "ListKeys"):
        assert f"{operation}: AccessDeniedException" in logged
        assert emulator.calls()[operation] >= 4, f"{operation} retried"
    assert cluster.state(silent_key) == "Enabled"

    emulator.clear_faults()
    cluster.advance(HOUR)
    assert cluster.state(silent_key) == "PendingDeletion"
    assert cluster.aliases()[key.alias] == key_id(key)
    updated = [
        a["LastUpdatedDate"] for a in cluster.aws.list_aliases()["Aliases"] if a["AliasName"] == key.alias
    ]
    assert updated[0] >= cluster.clock.now() - HOUR


def test_default_key_policy_for_an_assumed_role_on_the_emulator(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    sts = cluster.emulator.sts_client()
    credentials = sts.assume_role(
        RoleArn="arn:aws:iam::123456789012:role/spire-server", RoleSessionName="spire"
    )["Credentials"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", credentials["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", credentials["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", credentials["SessionToken"])
    keys = KeyManager(cluster.deletions, clock=cluster.clock)
    keys.configure(
        KeySettings(BuiltinScheme("example.org", "server1"), {}, None, 7, default_key_policy=True),
        BotocoreKms(ClientSettings(region=REGION)),
    )
    cluster.servers.append(keys)
    key = keys.generate_key("x509-CA-A", KeyType.EC_P256)
    policy = cluster.aws.get_key_policy(KeyId=key.key_arn, PolicyName="default")["Policy"]
    assert '"arn:aws:iam::123456789012:role/spire-server"' in policy
    assert '"arn:aws:iam::123456789012:root"' in policy
