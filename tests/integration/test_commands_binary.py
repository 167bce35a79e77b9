"""The operator commands of the frozen binary, `check` and `keys`, against the KMS emulator: what an
operator reads and the exit status a script sees, with permissions refused through the emulator's faults
(AWS's own error codes), keys the plugin itself made, and no secret ever printed."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import REGION, StartPlugin, plugin_env
from tests.support.kms_emulator import EmulatorControl

DAY = 86400
TD = "example.org"
ALIAS_ROOT = "alias/SPIRE_SERVER/example_org"
# What would make the plugin's life easy for a thief; never to be printed.
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLEsessionTOKENdoNotPrint"
MUTATIONS = {"CreateKey", "CreateAlias", "UpdateAlias", "DeleteAlias", "ScheduleKeyDeletion", "TagResource"}


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def line(self, status: str, check: str) -> str:
        """The one output line with this status and check name."""
        matches = [
            line for line in self.stdout.splitlines() if line.split()[:1] == [status] and f" {check} " in line
        ]
        assert len(matches) == 1, f"no single {status} {check!r} line in:\n{self.stdout}{self.stderr}"
        return matches[0]


Run = Callable[..., Result]


@pytest.fixture
def run(plugin_binary: Path, emulator: EmulatorControl, plugin_tmpdir: Path) -> Run:
    def _run(*args: str, **env: str) -> Result:
        process = subprocess.run(
            [str(plugin_binary), *args],
            env=plugin_env(emulator.url, plugin_tmpdir, **env),
            capture_output=True,
            text=True,
            timeout=120,
        )
        return Result(process.returncode, process.stdout, process.stderr)

    return _run


def server_conf(tmp_path: Path, binary: Path, plugin_data: str, checksum: str | None = None) -> str:
    digest = checksum or hashlib.sha256(binary.read_bytes()).hexdigest()
    path = tmp_path / "server.conf"
    path.write_text(
        f"""
server {{
    bind_address = "0.0.0.0"
    trust_domain = "{TD}"
    data_dir = "{tmp_path}"
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{tmp_path}/datastore.sqlite3"
        }}
    }}
    KeyManager "aws_kms" {{
        plugin_cmd = "{binary}"
        plugin_checksum = "{digest}"
        plugin_data {{
{plugin_data}
        }}
    }}
}}
""",
        encoding="utf-8",
    )
    return str(path)


def builtin(server_id: str, *extra: str) -> str:
    return "\n".join([f'region = "{REGION}"', f'key_identifier_value = "{server_id}"', *extra]) + "\n"


def made_by_the_plugin(start: StartPlugin, plugin_data: str, *keys: tuple[str, int]) -> None:
    plugin = start()
    plugin.configure(plugin_data)
    for key_id, key_type in keys:
        plugin.generate_key(key_id, key_type)
    plugin.shutdown()


def kms_calls(emulator: EmulatorControl) -> set[str]:
    return {operation for operation, count in emulator.calls().items() if count}


# -- check --------------------------------------------------------------------------------------------


def test_check_passes_for_a_working_configuration_and_changes_nothing(
    start: StartPlugin, run: Run, emulator: EmulatorControl, plugin_binary: Path, tmp_path: Path
) -> None:
    data = builtin("server-a")
    made_by_the_plugin(
        start, data, ("x509-CA-A", km.EC_P256), ("JWT-Signer-A", km.RSA_2048), ("x", km.EC_P384)
    )
    emulator.reset_calls()

    checked = run("check", "--config", server_conf(tmp_path, plugin_binary, data))
    assert checked.code == 0, checked.stdout + checked.stderr
    assert "this program, and plugin_checksum its SHA-256" in checked.line("ok", "server.conf")
    assert "built-in naming scheme, trust domain example.org" in checked.line("ok", "configuration")
    assert "from the environment (AWS_ACCESS_KEY_ID): arn:aws:" in checked.line("ok", "credentials")
    assert f"{emulator.url} answered" in checked.line("ok", "endpoint")
    assert f"3 under {ALIAS_ROOT}/server-a/" in checked.line("ok", "kms:ListAliases")
    for key_id, algorithm in (("x509-CA-A", "ECDSA_SHA_256"), ("JWT-Signer-A", "RSASSA_PKCS1_V1_5_SHA_256")):
        assert f"Sign {algorithm} verified here" in checked.line("ok", f"key {key_id}")
    assert "Sign ECDSA_SHA_384 verified here" in checked.line("ok", "key x")
    assert "would change your keys" in checked.line("untested", "kms:CreateKey")
    assert checked.stdout.endswith("checks, 0 failed\n")

    calls = kms_calls(emulator)
    assert {"GetCallerIdentity", "ListAliases", "ListKeys", "DescribeKey", "GetPublicKey", "Sign"} <= calls
    assert not calls & MUTATIONS, "check changes nothing"
    assert emulator.calls()["Sign"] == 3

    as_json = run("check", "--config", server_conf(tmp_path, plugin_binary, data), "--json")
    report = as_json.json()
    assert as_json.code == 0 and report["ok"] is True and report["missing_permissions"] == []
    assert {c["check"]: c["status"] for c in report["checks"]}["key JWT-Signer-A"] == "ok"
    assert "kms:CreateKey" in report["untested_permissions"]


@pytest.mark.parametrize(
    ("operation", "check", "permission"),
    [
        ("Sign", "key x509-CA-A", "kms:Sign"),
        ("GetPublicKey", "key x509-CA-A", "kms:GetPublicKey"),
        ("DescribeKey", "key x509-CA-A", "kms:DescribeKey"),
        ("ListKeys", "kms:ListKeys", "kms:ListKeys"),
        ("ListAliases", "kms:ListAliases", "kms:ListAliases"),
    ],
)
def test_check_names_the_permission_a_refusal_shows_missing(
    start: StartPlugin,
    run: Run,
    emulator: EmulatorControl,
    plugin_binary: Path,
    tmp_path: Path,
    operation: str,
    check: str,
    permission: str,
) -> None:
    data = builtin("server-a")
    made_by_the_plugin(start, data, ("x509-CA-A", km.EC_P256))
    message = f"User: arn:aws:iam::123456789012:user/spire is not authorized to perform: {permission}"
    emulator.add_fault(operation, error="AccessDeniedException", message=message, count=-1)
    conf = server_conf(tmp_path, plugin_binary, data)

    checked = run("check", "--config", conf)
    assert checked.code == 1
    line = checked.line("FAIL", check)
    assert f"{permission} denied (AccessDeniedException): grant {permission}" in line
    assert f"missing permissions: {permission}" in checked.stdout
    report = run("check", "--config", conf, "--json").json()
    assert report["ok"] is False and report["missing_permissions"] == [permission]
    (failed,) = [c for c in report["checks"] if c["status"] == "fail"]
    assert (failed["code"], failed["grant"]) == ("AccessDeniedException", [permission])


def test_check_with_tag_discovery_needs_tag_get_resources_in_an_iam_policy(
    run: Run, emulator: EmulatorControl, plugin_binary: Path, tmp_path: Path
) -> None:
    emulator.add_fault("GetResources", error="AccessDeniedException", message="not authorized", count=-1)
    data = builtin("server-a", "enable_tag_based_key_discovery = true")
    checked = run("check", "--config", server_conf(tmp_path, plugin_binary, data))
    assert checked.code == 1
    assert "in an identity-based IAM policy (a key policy cannot grant it)" in checked.line(
        "FAIL", "tag:GetResources"
    )
    assert "ListKeys" not in kms_calls(emulator)


def test_check_shows_the_role_it_assumes_and_a_refused_assume_role(
    run: Run, emulator: EmulatorControl, plugin_binary: Path, tmp_path: Path
) -> None:
    role = "arn:aws:iam::123456789012:role/spire-kms"
    data = builtin("server-a", f'role_arn = "{role}"', 'role_session_name = "spire-server-1"')
    conf = server_conf(tmp_path, plugin_binary, data)
    checked = run("check", "--config", conf)
    assert checked.code == 0, checked.stdout
    assert "assumed-role/spire-kms/spire-server-1" in checked.line("ok", "assume role")
    assert "sts:AssumeRole" not in {line.split()[1] for line in checked.stdout.splitlines()[1:] if line}
    assert "new keys get a key policy giving arn:aws:iam::123456789012:role/spire-kms kms:*" in checked.line(
        "ok", "default key policy"
    )

    emulator.add_fault("AssumeRole", error="AccessDenied", message="not authorized to perform sts:AssumeRole")
    refused = run("check", "--config", conf)
    assert refused.code == 1
    line = refused.line("FAIL", "assume role")
    assert "AccessDenied" in line and f"allow sts:AssumeRole on {role}" in line
    assert "not checked without working credentials" in refused.line("skipped", "KMS")


def test_check_says_when_the_credentials_are_refused(
    run: Run, emulator: EmulatorControl, plugin_binary: Path, tmp_path: Path
) -> None:
    emulator.add_fault(
        "GetCallerIdentity",
        error="InvalidClientTokenId",
        message="The security token included in the request is invalid.",
    )
    checked = run("check", "--config", server_conf(tmp_path, plugin_binary, builtin("server-a")))
    assert checked.code == 1
    assert "STS GetCallerIdentity: InvalidClientTokenId" in checked.line("FAIL", "credentials")
    assert kms_calls(emulator) == {"GetCallerIdentity"}


def test_check_says_when_the_endpoint_does_not_answer(
    run: Run, emulator: EmulatorControl, plugin_binary: Path, tmp_path: Path
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{unused.getsockname()[1]}"
    began = time.monotonic()
    checked = run(
        "check",
        "--config",
        server_conf(tmp_path, plugin_binary, builtin("server-a")),
        AWS_ENDPOINT_URL_KMS=closed,
    )
    assert checked.code == 1
    assert f"{closed} did not answer as KMS: Unreachable" in checked.line("FAIL", "endpoint")
    assert time.monotonic() - began < 60


def test_check_verifies_the_signature_itself(
    start: StartPlugin, run: Run, emulator: EmulatorControl, plugin_binary: Path, tmp_path: Path
) -> None:
    data = builtin("server-a")
    made_by_the_plugin(start, data, ("x509-CA-A", km.EC_P256))
    arn = emulator.kms_client().describe_key(KeyId=f"{ALIAS_ROOT}/server-a/x509-CA-A")["KeyMetadata"]["Arn"]
    # A well-formed answer, but signed by another key: what a compromised or wrong endpoint could send.
    forged = ec.generate_private_key(ec.SECP256R1()).sign(b"anything", ec.ECDSA(hashes.SHA256()))
    body = json.dumps(
        {"KeyId": arn, "Signature": base64.b64encode(forged).decode(), "SigningAlgorithm": "ECDSA_SHA_256"}
    )
    emulator.add_fault("Sign", error=None, status=200, body=body, count=-1)
    checked = run("check", "--config", server_conf(tmp_path, plugin_binary, data))
    assert checked.code == 1
    assert "does not verify under its public key" in checked.line("FAIL", "key x509-CA-A")


def test_check_lists_every_configuration_problem_and_calls_no_one(
    run: Run, emulator: EmulatorControl, plugin_binary: Path, tmp_path: Path
) -> None:
    data = 'regoin = "us-east-1"\nkey_prefix = "a/"\nkey_identifier_value = "s"\ndeletion_window_days = 3\n'
    checked = run("check", "--config", server_conf(tmp_path, plugin_binary, data))
    assert checked.code == 1
    problems = [line for line in checked.stdout.splitlines() if line.startswith("FAIL")]
    assert len(problems) == 4, checked.stdout
    for words in (
        'unknown configuration key "regoin" (did you mean "region"?)',
        "region is required",
        "key_prefix and key_identifier_value",
        "between 7",
    ):
        assert any(words in line for line in problems), (words, problems)
    assert "not checked until the configuration is valid" in checked.line("skipped", "AWS")
    assert kms_calls(emulator) == set()


def test_check_refuses_a_plugin_checksum_spire_would_refuse(
    run: Run, plugin_binary: Path, tmp_path: Path
) -> None:
    checked = run("check", "--config", server_conf(tmp_path, plugin_binary, builtin("s"), checksum="0" * 64))
    assert checked.code == 1
    assert "SPIRE refuses to start the plugin" in checked.line("FAIL", "server.conf")


def test_check_of_a_bare_plugin_data_file(run: Run, tmp_path: Path) -> None:
    bare = tmp_path / "kms.hcl"
    bare.write_text(f'plugin_data {{\n  region = "{REGION}"\n  key_identifier_value = "s"\n}}\n')
    checked = run("check", "--plugin-data", str(bare), "--trust-domain", TD)
    assert checked.code == 0, checked.stdout
    assert f"plugin data {bare}: region {REGION}" in checked.line("ok", "configuration")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check"], "one of the arguments --config --plugin-data is required"),
        (["check", "--config", "/nonexistent/server.conf"], "cannot be read: No such file or directory"),
        (["keys", "--config", "/dev/null", "--prune"], "add --yes to confirm"),
    ],
)
def test_bad_command_lines_exit_2(run: Run, args: list[str], message: str) -> None:
    result = run(*args)
    assert result.code == 2 and message in result.stderr and result.stdout == ""


# -- keys ---------------------------------------------------------------------------------------------


def seed_fleet(start: StartPlugin, emulator: EmulatorControl) -> dict[str, str]:
    """Keys as a fleet leaves them: this server's (made by the plugin), those of a server silent for 20
    days and of one silent for 13, and a key left by a crash between CreateKey and CreateAlias 3 days ago.
    The others are made directly, in the emulator's past: a plugin started now would sweep them at once.
    Returns key ARNs by name."""
    made_by_the_plugin(start, builtin("server-a"), ("x509-CA-A", km.EC_P256), ("JWT-Signer-A", km.RSA_2048))
    kms = emulator.kms_client()

    def key(days_ago: int, key_id: str, server: str | None) -> str:
        emulator.set_clock_offset(-days_ago * DAY)
        arn = kms.create_key(
            KeySpec="ECC_NIST_P256",
            KeyUsage="SIGN_VERIFY",
            Description=f"SPIRE_SERVER_KEY/example_org/{key_id}",
        )["KeyMetadata"]["Arn"]
        if server is not None:
            kms.create_alias(AliasName=f"{ALIAS_ROOT}/{server}/{key_id}", TargetKeyId=arn)
        return str(arn)

    made = {"silent": key(20, "x509-CA-A", "server-b"), "quiet": key(13, "x509-CA-A", "server-c")}
    made["orphan"] = key(3, "x509-CA-B", None)
    emulator.set_clock_offset(0)
    ours = kms.describe_key(KeyId=f"{ALIAS_ROOT}/server-a/x509-CA-A")["KeyMetadata"]["Arn"]
    return {"ours": str(ours), **made}


def state_of(emulator: EmulatorControl, arn: str) -> str:
    return str(emulator.kms_client().describe_key(KeyId=arn)["KeyMetadata"]["KeyState"])


def test_keys_lists_the_fleet_with_the_sweeps_dry_run_and_cost(
    start: StartPlugin, run: Run, emulator: EmulatorControl, plugin_binary: Path, tmp_path: Path
) -> None:
    arns = seed_fleet(start, emulator)
    emulator.reset_calls()
    conf = server_conf(tmp_path, plugin_binary, builtin("server-a"))

    listed = run("keys", "--config", conf, "--json")
    assert listed.code == 0, listed.stderr
    document = listed.json()
    keys = {key["key_arn"]: key for key in document["keys"]}
    assert len(keys) == 5 and set(arns.values()) <= set(keys)
    sweep = {name: (keys[arn]["sweep"]["step"], keys[arn]["sweep"]["due_now"]) for name, arn in arns.items()}
    assert sweep == {
        "ours": ("keep", False),
        "silent": ("schedule deletion", True),
        "quiet": ("schedule deletion", False),
        "orphan": ("schedule deletion", True),
    }
    quiet_due = datetime.datetime.fromisoformat(keys[arns["quiet"]]["sweep"]["due"])
    assert (
        abs(quiet_due - (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1))).total_seconds()
        < 600
    )
    assert (
        keys[arns["silent"]]["server_id"] == "server-b"
        and keys[arns["silent"]]["spire_key_id"] == "x509-CA-A"
    )
    assert keys[arns["orphan"]]["spire_key_id"] == "x509-CA-B" and keys[arns["orphan"]]["aliases"] == []
    assert document["monthly_cost_usd"] == "5.00"
    assert not kms_calls(emulator) & MUTATIONS

    table = run("keys", "--config", conf)
    assert table.code == 0
    lines = table.stdout.splitlines()
    header = next(line for line in lines if line.startswith("SERVER"))
    rows = [line for line in lines if line.startswith(("server-", "- "))]
    assert len(rows) == 5
    for column in ("KEY ARN", "STATE", "SWEEP", "WHEN", "USD/MONTH"):
        at = header.index(column)
        assert all(row[at - 2 : at] == "  " and row[at] != " " for row in rows), column
    assert "5 keys, 5.00 USD a month" in table.stdout and "2 due for the sweep now" in table.stdout


def test_keys_prune_takes_only_the_steps_due_now(
    start: StartPlugin, run: Run, emulator: EmulatorControl, plugin_binary: Path, tmp_path: Path
) -> None:
    arns = seed_fleet(start, emulator)
    conf = server_conf(tmp_path, plugin_binary, builtin("server-a", "deletion_window_days = 9"))

    refused = run("keys", "--config", conf, "--prune")
    assert refused.code == 2 and "--yes" in refused.stderr
    assert {state_of(emulator, arn) for arn in arns.values()} == {"Enabled"}

    pruned = run("keys", "--config", conf, "--prune", "--yes", "--json")
    assert pruned.code == 0, pruned.stdout + pruned.stderr
    outcomes = {p["key_arn"]: (p["outcome"], p["detail"]) for p in pruned.json()["pruned"]}
    assert set(outcomes) == {arns["silent"], arns["orphan"]}
    assert outcomes[arns["silent"]] == (
        "done",
        f"deleted {ALIAS_ROOT}/server-b/x509-CA-A, scheduled for deletion in 9 days",
    )
    states = {name: state_of(emulator, arn) for name, arn in arns.items()}
    assert states == {
        "ours": "Enabled",
        "silent": "PendingDeletion",
        "quiet": "Enabled",
        "orphan": "PendingDeletion",
    }

    again = run("keys", "--config", conf, "--prune", "--yes")
    assert again.code == 0 and "nothing to prune: no step of the sweep is due now" in again.stdout
    assert "5 keys, 3.00 USD a month" in again.stdout, "keys pending deletion cost nothing"


def test_keys_says_what_is_refused(
    start: StartPlugin, run: Run, emulator: EmulatorControl, plugin_binary: Path, tmp_path: Path
) -> None:
    arns = seed_fleet(start, emulator)
    conf = server_conf(tmp_path, plugin_binary, builtin("server-a"))
    emulator.add_fault("ListAliases", error="AccessDeniedException", message="not authorized")
    listed = run("keys", "--config", conf)
    assert listed.code == 1 and listed.stdout == ""
    assert "ListAliases failed (AccessDeniedException): grant kms:ListAliases" in listed.stderr

    emulator.add_fault(
        "ScheduleKeyDeletion", error="AccessDeniedException", message="not authorized", count=-1
    )
    pruned = run("keys", "--config", conf, "--prune", "--yes")
    assert pruned.code == 1
    failed = [line for line in pruned.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 2 and all("grant kms:ScheduleKeyDeletion" in line for line in failed)
    assert state_of(emulator, arns["orphan"]) == "Enabled"


def test_keys_with_tag_discovery_shows_the_tags(
    start: StartPlugin, run: Run, emulator: EmulatorControl, plugin_binary: Path, tmp_path: Path
) -> None:
    data = builtin("server-a", "enable_tag_based_key_discovery = true")
    made_by_the_plugin(start, data, ("x509-CA-A", km.EC_P256))
    emulator.reset_calls()
    listed = run("keys", "--config", server_conf(tmp_path, plugin_binary, data), "--json")
    assert listed.code == 0, listed.stderr
    (key,) = listed.json()["keys"]
    assert key["tags"]["spire-server-id"] == "server-a" and key["sweep"]["step"] == "keep"
    assert key["last_heartbeat"] is not None
    assert "ListKeys" not in kms_calls(emulator), "with tags, as the sweep, keys are found by tag"


# -- secrets ------------------------------------------------------------------------------------------


def test_no_command_prints_a_secret(
    start: StartPlugin, run: Run, emulator: EmulatorControl, plugin_binary: Path, tmp_path: Path
) -> None:
    made_by_the_plugin(start, builtin("server-a"), ("x509-CA-A", km.EC_P256))
    data = builtin(
        "server-a", 'access_key_id = "AKIAIOSFODNN7EXAMPLE"', f'secret_access_key = "{SECRET_ACCESS_KEY}"'
    )
    conf = server_conf(tmp_path, plugin_binary, data)
    (tmp_path / "half").mkdir()
    half_configured = server_conf(
        tmp_path / "half", plugin_binary, f'secret_access_key = "{SECRET_ACCESS_KEY}"\n'
    )
    # Answers echoing what they should not: the commands must not pass them on.
    echo = f"bad request: {SECRET_ACCESS_KEY} {SESSION_TOKEN}"
    emulator.add_fault("Sign", error="ValidationException", message=echo, count=-1)
    secret_env = {"AWS_SESSION_TOKEN": SESSION_TOKEN}
    runs = [
        run("check", "--config", conf, **secret_env),
        run("check", "--config", conf, "--json", "--verbose", **secret_env),
        run("check", "--config", half_configured, **secret_env),
        run("keys", "--config", conf, "--json", "--verbose", "--prune", "--yes", **secret_env),
    ]
    emulator.add_fault("ListAliases", error="ValidationException", message=echo)
    runs.append(run("keys", "--config", conf, **secret_env))
    assert [result.code for result in runs] == [1, 1, 1, 0, 1]
    for result in runs:
        for secret in (SECRET_ACCESS_KEY, SESSION_TOKEN):
            assert secret not in result.stdout and secret not in result.stderr
    assert "bad request: [REDACTED] [REDACTED]" in runs[0].line("FAIL", "key x509-CA-A")
    assert "bad request: [REDACTED] [REDACTED]" in runs[4].stderr
