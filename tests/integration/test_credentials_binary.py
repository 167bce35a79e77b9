"""The frozen binary given nothing but the region, as on EKS and EC2: botocore's default chain finds the
credentials. EKS IRSA (a web identity token file and a role, exchanged at STS), EKS Pod Identity (the pod
identity agent's endpoint and a token file) and an EC2 instance role (IMDSv2), each from a source on
127.0.0.1 (the emulator's STS, or tests/support/credential_sources.py). For each: keys are made and their
signatures verify, every KMS call is signed with the credentials that source handed out, credentials near
expiry are fetched again (with the rotated token) and used (IRSA, Pod Identity), and no secret reaches the
plugin's log."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import REGION, plugin_env
from tests.integration.test_commands_binary import builtin, server_conf
from tests.support.credential_sources import (
    BOTOCORE_REFRESH_WINDOW,
    INSTANCE_ROLE,
    CredentialSet,
    FakeContainerCredentials,
    FakeIMDS,
)
from tests.support.kms_emulator import EmulatorControl
from tests.support.plugin_host import PluginProcess, start_plugin
from tests.support.signatures import digest_of, verify

ACCOUNT = "123456789012"
IRSA_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/spire-server-irsa"
STS_OPERATIONS = {"AssumeRoleWithWebIdentity", "AssumeRole", "GetCallerIdentity"}
KEY_ID = "x509-CA-A"
# How long the first set of short-lived credentials is used before botocore's refresh window opens: long
# enough for start-up, Configure, GenerateKey and SignData on a busy machine.
FIRST_SET_USE = timedelta(seconds=20)
# moto's session tokens start so (moto/sts/utils.py); the secret keys it hands out are random.
MOTO_SESSION_TOKEN_PREFIX = "FQoGZXIvYXdzEBYaD"

StartChain = Callable[..., PluginProcess]


def chain_env(emulator_url: str, tmpdir: Path, **extra: str) -> dict[str, str]:
    """What a pod or instance gives spire-server: no access keys anywhere, KMS and STS on the emulator
    through the SDK's per-service endpoint variables, and the instance metadata service off unless a test
    turns it on (it is never reached but on 127.0.0.1)."""
    env = plugin_env(emulator_url, tmpdir)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        del env[name]
    env.update(AWS_ENDPOINT_URL_KMS=emulator_url, AWS_ENDPOINT_URL_STS=emulator_url, AWS_REGION=REGION)
    env.update(extra)
    return env


@pytest.fixture
def start_chain(plugin_binary: Path, emulator: EmulatorControl, plugin_tmpdir: Path) -> Iterator[StartChain]:
    """Starts plugins with `chain_env`; every one started is stopped at the end of the test."""
    started: list[PluginProcess] = []

    def _start(**extra_env: str) -> PluginProcess:
        plugin = start_plugin([str(plugin_binary)], env=chain_env(emulator.url, plugin_tmpdir, **extra_env))
        started.append(plugin)
        return plugin

    yield _start
    for plugin in started:
        plugin.__exit__(None, None, None)


def sign_and_verify(plugin: PluginProcess, pkix_der: bytes) -> None:
    digest = digest_of(km.SHA256)
    signature = plugin.sign_data(KEY_ID, digest, hash_algorithm=km.SHA256).signature
    verify(pkix_der, signature, km.SHA256, None)


def generate_and_sign(plugin: PluginProcess, config: str = f'region = "{REGION}"\n') -> bytes:
    """What SPIRE does first with a new key manager: Configure, GenerateKey, SignData. Returns the key."""
    plugin.configure(config)
    key = plugin.generate_key(KEY_ID, km.EC_P256).public_key
    assert key.id == KEY_ID
    sign_and_verify(plugin, key.pkix_data)
    return bytes(key.pkix_data)


def kms_callers(emulator: EmulatorControl) -> list[dict[str, Any]]:
    return [c for c in emulator.callers() if c["operation"] not in STS_OPERATIONS]


def signed_with(callers: Iterable[dict[str, Any]]) -> set[tuple[str | None, bool]]:
    """The (access key id, session token sent) pairs the calls were signed with."""
    return {(c["access_key_id"], c["session_token"]) for c in callers}


def stderr_of(plugin: PluginProcess) -> str:
    return "\n".join(plugin.raw_stderr())


def assert_not_logged(log: str, *secrets_: str) -> None:
    assert log, "the plugin logged nothing: nothing was checked"
    for secret in secrets_:
        assert secret and secret not in log, f"a secret ({len(secret)} characters) is in the plugin's log"


def assert_refused_cleanly(plugin: PluginProcess, raised: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.Call:
    """The failure SPIRE sees and logs for credentials a source refused: PERMISSION_DENIED, and in the
    plugin's log no "Unexpected failure", no traceback and nothing but hclog JSON lines."""
    return assert_failed_cleanly(plugin, raised, grpc.StatusCode.PERMISSION_DENIED)


def assert_failed_cleanly(
    plugin: PluginProcess, raised: pytest.ExceptionInfo[grpc.RpcError], code: grpc.StatusCode
) -> grpc.Call:
    error = raised.value
    assert isinstance(error, grpc.Call)
    assert error.code() == code, f"{error.code()}: {error.details()}"
    assert plugin.is_running()
    assert_log_is_clean(plugin)
    return error


def assert_log_is_clean(plugin: PluginProcess) -> None:
    """No "Unexpected failure", no traceback, nothing but hclog JSON lines in the plugin's log so far."""
    lines = plugin.raw_stderr()
    assert lines, "the plugin logged nothing: nothing was checked"
    for line in lines:
        assert "Traceback" not in line and "Unexpected failure" not in line, line
        assert isinstance(json.loads(line), dict), line


def assert_no_secret_key_logged(log: str, secret_sha256: str) -> None:
    """For a secret key known only by its SHA-256: every 40-character run of the characters secret keys are
    made of, anywhere in the log, hashes to something else."""
    for run in re.findall(r"[A-Za-z0-9/+]{40,}", log):
        for start in range(len(run) - 39):
            assert hashlib.sha256(run[start : start + 40].encode()).hexdigest() != secret_sha256


def wait_for_refresh_window(first: CredentialSet) -> None:
    """Until botocore judges the first set due for renewal (its advisory window opens)."""
    opens = first.expiration - BOTOCORE_REFRESH_WINDOW
    time.sleep(max(0.0, (opens - datetime.now(UTC)).total_seconds()) + 1.5)


def jwt_like(subject: str) -> str:
    """A token shaped as Kubernetes projects service account tokens: three base64url parts, no newline."""
    return f"eyJhbGciOiJSUzI1NiIsImtpZCI6I{subject}.{secrets.token_urlsafe(120)}.{secrets.token_urlsafe(64)}"


# -- EKS IRSA: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE ---------------------------------------------------


def test_irsa_web_identity_token_is_exchanged_at_sts_and_kms_is_used_as_the_role(
    start_chain: StartChain, emulator: EmulatorControl, tmp_path: Path
) -> None:
    # Where EKS's pod identity webhook mounts the projected token, under the test's own directory.
    token_file = tmp_path / "eks.amazonaws.com" / "serviceaccount" / "token"
    token_file.parent.mkdir(parents=True)
    token = jwt_like("irsa")
    token_file.write_text(token)
    # The role's credentials are due for renewal FIRST_SET_USE after STS hands them out.
    emulator.set_sts_duration(int((BOTOCORE_REFRESH_WINDOW + FIRST_SET_USE).total_seconds()))
    plugin = start_chain(
        # What the webhook injects into the pod.
        AWS_ROLE_ARN=IRSA_ROLE_ARN,
        AWS_WEB_IDENTITY_TOKEN_FILE=str(token_file),
        AWS_STS_REGIONAL_ENDPOINTS="regional",
        AWS_DEFAULT_REGION=REGION,
    )
    # The built-in naming scheme: its default key policy names the role the plugin runs as.
    pkix = generate_and_sign(plugin, f'region = "{REGION}"\nkey_identifier_value = "spire-server-0"\n')
    first_round_done = time.monotonic()

    exchanges = [c for c in emulator.callers() if c["operation"] == "AssumeRoleWithWebIdentity"]
    assert len(exchanges) == 1
    exchange = exchanges[0]
    assert exchange["role_arn"] == IRSA_ROLE_ARN
    assert exchange["access_key_id"] is None  # the token is the credential: the request is unsigned
    assert exchange["web_identity_token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    issued = exchange["issued_access_key_id"]
    assert issued.startswith("ASIA")
    calls = kms_callers(emulator)
    assert {"ListAliases", "CreateKey", "GetPublicKey", "CreateAlias", "Sign"} <= {
        c["operation"] for c in calls
    }
    assert signed_with(calls) == {(issued, True)}
    identity = [c for c in emulator.callers() if c["operation"] == "GetCallerIdentity"]
    assert signed_with(identity) == {(issued, True)}

    alias = f"alias/SPIRE_SERVER/example_org/spire-server-0/{KEY_ID}"
    kms = emulator.kms_client()
    key_arn = kms.describe_key(KeyId=alias)["KeyMetadata"]["Arn"]
    policy = json.loads(kms.get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"])
    principals = {json.dumps(s["Principal"], sort_keys=True) for s in policy["Statement"]}
    assert json.dumps({"AWS": IRSA_ROLE_ARN}) in principals

    # Kubernetes rotates the projected token (hourly on EKS); renewal must present the current one.
    rotated = jwt_like("irsa2")
    token_file.write_text(rotated)
    time.sleep(max(0.0, first_round_done + FIRST_SET_USE.total_seconds() + 1.5 - time.monotonic()))
    emulator.reset_calls()
    sign_and_verify(plugin, pkix)
    renewals = [c for c in emulator.callers() if c["operation"] == "AssumeRoleWithWebIdentity"]
    assert len(renewals) == 1
    assert renewals[0]["web_identity_token_sha256"] == hashlib.sha256(rotated.encode()).hexdigest()
    renewed = renewals[0]["issued_access_key_id"]
    assert renewed not in (None, issued)
    assert emulator.access_key_ids("Sign") == [renewed]

    log = stderr_of(plugin)
    assert_not_logged(log, token, rotated, MOTO_SESSION_TOKEN_PREFIX)
    for handed_out in (exchange, renewals[0]):
        assert_no_secret_key_logged(log, handed_out["issued_secret_access_key_sha256"])


def test_irsa_token_refused_by_sts_fails_configure_permission_denied_naming_sts_and_no_secret(
    start_chain: StartChain, emulator: EmulatorControl, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token = jwt_like("untrusted")
    token_file.write_text(token)
    # What STS answers when the role does not trust the cluster's OIDC provider, or the token is stale.
    emulator.add_fault(
        "AssumeRoleWithWebIdentity",
        error="InvalidIdentityToken",
        message="Couldn't retrieve verification key from your identity provider",
        count=-1,
    )
    plugin = start_chain(AWS_ROLE_ARN=IRSA_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE=str(token_file))
    with pytest.raises(grpc.RpcError) as raised:
        plugin.configure(f'region = "{REGION}"\n')
    # What SPIRE logs when it cannot load the plugin: a refusal, the exchange that was refused and its code.
    error = assert_refused_cleanly(plugin, raised)
    assert error.details() == (
        'failed to load the keys under "alias/SPIRE_SERVER_KEY/": '
        "KMS ListAliases (STS AssumeRoleWithWebIdentity) returned InvalidIdentityToken: "
        "Couldn't retrieve verification key from your identity provider"
    )
    assert {c["operation"] for c in emulator.callers()} == {"AssumeRoleWithWebIdentity"}
    assert_not_logged(stderr_of(plugin), token)

    # The plugin serves on: once STS takes the token (the role's trust policy fixed), Configure again works.
    emulator.clear_faults()
    generate_and_sign(plugin)
    exchanges = [c for c in emulator.callers() if c["operation"] == "AssumeRoleWithWebIdentity"]
    assert exchanges[-1]["issued_access_key_id"] is not None
    assert_log_is_clean(plugin)
    assert_not_logged(stderr_of(plugin), token)


def test_irsa_token_file_not_mounted_fails_configure_permission_denied_and_serves_on_once_it_is(
    start_chain: StartChain, emulator: EmulatorControl, tmp_path: Path
) -> None:
    token_file = tmp_path / "eks.amazonaws.com" / "serviceaccount" / "token"
    plugin = start_chain(AWS_ROLE_ARN=IRSA_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE=str(token_file))
    with pytest.raises(grpc.RpcError) as raised:
        plugin.configure(f'region = "{REGION}"\n')
    error = assert_refused_cleanly(plugin, raised)
    assert error.details() == (
        'failed to load the keys under "alias/SPIRE_SERVER_KEY/": KMS ListAliases (credentials from '
        "AWS_WEB_IDENTITY_TOKEN_FILE) returned NoCredentials: "
        f'cannot read AWS_WEB_IDENTITY_TOKEN_FILE "{token_file}": No such file or directory'
    )
    assert emulator.callers() == []

    # The kubelet mounts the token: Configure again works.
    token_file.parent.mkdir(parents=True)
    token_file.write_text(jwt_like("irsa"))
    generate_and_sign(plugin)
    assert_log_is_clean(plugin)


# -- EKS Pod Identity: AWS_CONTAINER_CREDENTIALS_FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE -----------


def test_pod_identity_agent_credentials_are_used_and_renewed_with_the_rotated_token(
    start_chain: StartChain, emulator: EmulatorControl, tmp_path: Path
) -> None:
    token_file = tmp_path / "eks-pod-identity-token"
    token = jwt_like("pod")
    token_file.write_text(token)
    first_lifetime = BOTOCORE_REFRESH_WINDOW + FIRST_SET_USE
    with FakeContainerCredentials(token, first_lifetime=first_lifetime) as agent:
        plugin = start_chain(
            AWS_CONTAINER_CREDENTIALS_FULL_URI=agent.full_uri,
            AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file),
        )
        pkix = generate_and_sign(plugin)
        assert len(agent.served) == 1
        first = agent.served[0]
        assert signed_with(kms_callers(emulator)) == {(first.access_key_id, True)}

        # Kubernetes rotates the projected token; the agent takes only the current one.
        rotated = jwt_like("pod2")
        token_file.write_text(rotated)
        agent.authorization_token = rotated
        wait_for_refresh_window(first)
        emulator.reset_calls()
        sign_and_verify(plugin, pkix)

        assert len(agent.served) == 2
        second = agent.served[1]
        assert emulator.access_key_ids("Sign") == [second.access_key_id]
        assert [r.headers.get("Authorization") for r in agent.requests] == [token, rotated]
        assert [r.path for r in agent.requests] == ["/v1/credentials", "/v1/credentials"]
    assert_not_logged(stderr_of(plugin), token, rotated, *first.secrets, *second.secrets)


def test_pod_identity_agent_refusing_the_token_fails_configure_permission_denied_naming_the_source(
    start_chain: StartChain, emulator: EmulatorControl, tmp_path: Path
) -> None:
    token_file = tmp_path / "eks-pod-identity-token"
    stale = jwt_like("stale")
    token_file.write_text(stale)
    token = jwt_like("pod")
    with FakeContainerCredentials(token) as agent:
        plugin = start_chain(
            AWS_CONTAINER_CREDENTIALS_FULL_URI=agent.full_uri,
            AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file),
        )
        with pytest.raises(grpc.RpcError) as raised:
            plugin.configure(f'region = "{REGION}"\n')
        # botocore asks three times, each with the token from the file.
        assert [r.headers.get("Authorization") for r in agent.requests] == [stale] * 3
        assert agent.served == []
        # What SPIRE logs when it cannot load the plugin: a refusal, where the credentials were to come
        # from, and the code the agent answered with.
        error = assert_refused_cleanly(plugin, raised)
        assert error.details() == (
            'failed to load the keys under "alias/SPIRE_SERVER_KEY/": '
            "KMS ListAliases (credentials from container-role) returned AccessDeniedException: "
            "the credentials endpoint answered HTTP 401: the service account token is not valid"
        )
        assert kms_callers(emulator) == []
        assert_not_logged(stderr_of(plugin), stale)

        # The plugin serves on: with the pod's own token in the file, Configure again works.
        token_file.write_text(token)
        generate_and_sign(plugin)
        assert len(agent.served) == 1
        assert signed_with(kms_callers(emulator)) == {(agent.served[0].access_key_id, True)}
        assert_log_is_clean(plugin)
    assert_not_logged(stderr_of(plugin), stale, token, *agent.served[0].secrets)


def test_pod_identity_agent_unreachable_fails_configure_unavailable(
    start_chain: StartChain, emulator: EmulatorControl, tmp_path: Path
) -> None:
    token_file = tmp_path / "eks-pod-identity-token"
    token = jwt_like("pod")
    token_file.write_text(token)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens there: the agent is not running on the node (yet).
    plugin = start_chain(
        AWS_CONTAINER_CREDENTIALS_FULL_URI=f"http://127.0.0.1:{port}/v1/credentials",
        AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file),
    )
    with pytest.raises(grpc.RpcError) as raised:
        plugin.configure(f'region = "{REGION}"\n')
    error = assert_failed_cleanly(plugin, raised, grpc.StatusCode.UNAVAILABLE)
    assert (error.details() or "").startswith(
        'failed to load the keys under "alias/SPIRE_SERVER_KEY/": '
        "KMS ListAliases (credentials from container-role) returned Unreachable: "
    )
    assert kms_callers(emulator) == []
    assert_not_logged(stderr_of(plugin), token)


# -- EC2 instance role: IMDSv2 ------------------------------------------------------------------------------


def test_instance_role_credentials_from_imdsv2_are_used(
    start_chain: StartChain, emulator: EmulatorControl
) -> None:
    # Renewal is not shown here: botocore stretches instance credentials that expire within 17 to 25 minutes
    # by a random 2 to 10 minutes (its "static stability"), so the first renewal would come minutes later.
    with FakeIMDS() as imds:
        plugin = start_chain(AWS_EC2_METADATA_DISABLED="false", AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
        generate_and_sign(plugin)
        assert len(imds.served) == 1
        served = imds.served[0]
        assert served.access_key_id == "ASIAIMDS0001XXXXXXXX"
        calls = kms_callers(emulator)
        assert {"ListAliases", "CreateKey", "GetPublicKey", "CreateAlias", "Sign"} <= {
            c["operation"] for c in calls
        }
        assert signed_with(calls) == {(served.access_key_id, True)}
        requests = [(r.method, r.path) for r in imds.requests]
    # IMDSv2: a session token first, then the role, then its credentials.
    assert requests == [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/meta-data/iam/security-credentials/"),
        ("GET", f"/latest/meta-data/iam/security-credentials/{INSTANCE_ROLE}"),
    ]
    assert_not_logged(stderr_of(plugin), *served.secrets)


# -- the operator command `check`, on the same credential sources ------------------------------------------


def run_check(plugin_binary: Path, conf: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(plugin_binary), "check", "--config", conf], env=env, capture_output=True, text=True, timeout=120
    )


def failed_line(checked: subprocess.CompletedProcess[str], name: str) -> str:
    (line,) = [line for line in checked.stdout.splitlines() if line.split()[:2] == ["FAIL", name]]
    return line


def test_check_names_the_pod_identity_agent_that_refused_the_token(
    plugin_binary: Path, emulator: EmulatorControl, plugin_tmpdir: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "eks-pod-identity-token"
    stale = jwt_like("stale")
    token_file.write_text(stale)
    with FakeContainerCredentials(jwt_like("pod")) as agent:
        env = chain_env(
            emulator.url,
            plugin_tmpdir,
            AWS_CONTAINER_CREDENTIALS_FULL_URI=agent.full_uri,
            AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file),
        )
        checked = run_check(plugin_binary, server_conf(tmp_path, plugin_binary, builtin("server-a")), env)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert failed_line(checked, "credentials").endswith(
        "credentials from container-role: AccessDeniedException: the credentials endpoint answered HTTP 401: "
        "the service account token is not valid"
    )
    assert "Traceback" not in checked.stdout + checked.stderr
    assert stale not in checked.stdout + checked.stderr
    assert kms_callers(emulator) == []


def test_check_names_the_sts_exchange_that_refused_the_irsa_token(
    plugin_binary: Path, emulator: EmulatorControl, plugin_tmpdir: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token = jwt_like("untrusted")
    token_file.write_text(token)
    emulator.add_fault(
        "AssumeRoleWithWebIdentity", error="InvalidIdentityToken", message="Token is not trusted", count=-1
    )
    env = chain_env(
        emulator.url, plugin_tmpdir, AWS_ROLE_ARN=IRSA_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE=str(token_file)
    )
    checked = run_check(plugin_binary, server_conf(tmp_path, plugin_binary, builtin("server-a")), env)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert failed_line(checked, "credentials").endswith(
        "STS GetCallerIdentity (STS AssumeRoleWithWebIdentity): InvalidIdentityToken: Token is not trusted"
    )
    assert "Traceback" not in checked.stdout + checked.stderr
    assert token not in checked.stdout + checked.stderr
