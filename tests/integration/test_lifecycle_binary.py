"""The key lifecycle through the frozen binary, against the KMS emulator: the heartbeat and the disposal
run at start-up, tag-based discovery works with what the bundle carries (the tagging API's model), and
without a role the default key policy falls back to KMS's with a warning."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import REGION, StartPlugin
from tests.support.kms_emulator import EmulatorControl

DAY = 86400


def builtin_config(server_id: str, *extra: str) -> str:
    return "\n".join([f'region = "{REGION}"', f'key_identifier_value = "{server_id}"', *extra]) + "\n"


def eventually(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def tags_of(kms: Any, key_arn: str) -> dict[str, str]:
    return {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=key_arn)["Tags"]}


def test_tag_based_discovery_through_the_binary(start: StartPlugin, emulator: EmulatorControl) -> None:
    config = builtin_config("server1", "enable_tag_based_key_discovery = true")
    first = start()
    first.configure(config)
    key = first.generate_key("x509-CA-A", km.EC_P256).public_key
    kms = emulator.kms_client()
    arn = kms.describe_key(KeyId="alias/SPIRE_SERVER/example_org/server1/x509-CA-A")["KeyMetadata"]["Arn"]
    tags = tags_of(kms, arn)
    assert {k: v for k, v in tags.items() if k != "spire-last-update"} == {
        "spire-server-td": "example.org",
        "spire-server-id": "server1",
        "spire-key-id": "x509-CA-A",
        "spire-active": "true",
    }
    assert int(tags["spire-last-update"]) > time.time() - 600
    first.wait_for_log("does not run as an assumed IAM role")
    assert kms.get_key_policy(KeyId=arn, PolicyName="default")["Policy"], "KMS's default policy"
    first.shutdown()

    emulator.reset_calls()
    second = start()
    second.configure(config)
    assert list(second.get_public_keys().public_keys) == [key]
    assert emulator.calls().get("GetResources", 0) >= 1


def test_the_binary_disposes_and_heartbeats_at_start_up(
    start: StartPlugin, emulator: EmulatorControl
) -> None:
    kms = emulator.kms_client()
    silent_alias = "alias/SPIRE_SERVER/example_org/server10/x509-CA-A"
    our_alias = "alias/SPIRE_SERVER/example_org/server1/x509-CA-A"
    # The binary keeps real time: the past is made by moving the emulator's clock back.
    emulator.set_clock_offset(-15 * DAY)
    silent = start()
    silent.configure(builtin_config("server10"))
    silent.generate_key("x509-CA-A", km.EC_P256)
    silent.shutdown()
    silent_arn = kms.describe_key(KeyId=silent_alias)["KeyMetadata"]["Arn"]

    emulator.set_clock_offset(-DAY)
    server = start()
    server.configure(builtin_config("server1"))
    assert eventually(
        lambda: kms.describe_key(KeyId=silent_arn)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    )
    assert silent_alias not in {a["AliasName"] for a in kms.list_aliases()["Aliases"]}
    server.generate_key("x509-CA-A", km.EC_P256)
    server.shutdown()

    emulator.set_clock_offset(0)
    restarted = start()
    restarted.configure(builtin_config("server1"))

    def refreshed() -> bool:
        (ours,) = [a for a in kms.list_aliases()["Aliases"] if a["AliasName"] == our_alias]
        return bool(ours["LastUpdatedDate"].timestamp() > time.time() - 3600)

    assert eventually(refreshed), "start-up heartbeat"
    assert restarted.sign_data("x509-CA-A", b"\x00" * 32, hash_algorithm=km.SHA256).signature
    restarted.shutdown()
