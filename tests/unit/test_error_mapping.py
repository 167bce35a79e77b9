"""AWS error codes become gRPC codes a SPIRE caller can act on, with messages naming key and code."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from botocore.credentials import ContainerProvider
from botocore.utils import ContainerMetadataFetcher

from plugin.awsclient import ClientSettings, translate
from plugin.errors import ErrorKind, PluginError
from plugin.kms import BotocoreKms
from plugin.kmsapi import KmsError, plugin_error
from tests.support.credential_sources import FakeContainerCredentials

CASES = [
    ("NotFoundException", ErrorKind.NOT_FOUND),
    ("AccessDeniedException", ErrorKind.PERMISSION_DENIED),
    ("UnrecognizedClientException", ErrorKind.PERMISSION_DENIED),
    ("ExpiredTokenException", ErrorKind.PERMISSION_DENIED),
    ("NoCredentials", ErrorKind.PERMISSION_DENIED),
    # STS refusing an EKS IRSA web identity token (AssumeRoleWithWebIdentity).
    ("InvalidIdentityToken", ErrorKind.PERMISSION_DENIED),
    ("IDPRejectedClaim", ErrorKind.PERMISSION_DENIED),
    # A credential source (the Pod Identity agent) refusing with a bare status, or failing uncoded.
    ("401", ErrorKind.PERMISSION_DENIED),
    ("403", ErrorKind.PERMISSION_DENIED),
    ("CredentialRetrievalError", ErrorKind.PERMISSION_DENIED),
    ("DisabledException", ErrorKind.FAILED_PRECONDITION),
    ("KMSInvalidStateException", ErrorKind.FAILED_PRECONDITION),
    ("KeyUnavailableException", ErrorKind.FAILED_PRECONDITION),
    ("ThrottlingException", ErrorKind.UNAVAILABLE),
    ("LimitExceededException", ErrorKind.UNAVAILABLE),
    ("KMSInternalException", ErrorKind.UNAVAILABLE),
    ("DependencyTimeoutException", ErrorKind.UNAVAILABLE),
    ("ServiceUnavailable", ErrorKind.UNAVAILABLE),
    ("Unreachable", ErrorKind.UNAVAILABLE),
    ("Timeout", ErrorKind.UNAVAILABLE),
    # STS could not reach the token's issuer to check it.
    ("IDPCommunicationError", ErrorKind.UNAVAILABLE),
    ("503", ErrorKind.UNAVAILABLE),
    (
        "UnparseableResponse",
        ErrorKind.UNAVAILABLE,
    ),  # a proxy's page, a wrong endpoint: like a transport failure
    ("ValidationException", ErrorKind.INVALID_ARGUMENT),
    ("InvalidKeyUsageException", ErrorKind.INVALID_ARGUMENT),
    ("AlreadyExistsException", ErrorKind.INTERNAL),
    ("SomethingNewException", ErrorKind.INTERNAL),
]


@pytest.mark.parametrize(("code", "kind"), CASES)
def test_kms_codes_map_to_actionable_kinds(code: str, kind: ErrorKind) -> None:
    error = plugin_error(KmsError("Sign", code, "went wrong"), 'sign with key "x509-CA-A"')
    assert error.kind is kind
    assert error.message == f'failed to sign with key "x509-CA-A": KMS Sign returned {code}: went wrong'


# -- credential sources: botocore's own failures, through `translate`, as SPIRE sees them --------------

ACTION = 'load the keys under "alias/SPIRE_SERVER_KEY/"'
POD_TOKEN = "eyJhbGciOiJSUzI1NiJ9.the-pods-own-token.signature"


class _Agent(FakeContainerCredentials):
    """The Pod Identity agent, or something in its place answering `answer` to every request."""

    def __init__(self, answer: tuple[int, str, bytes] | None = None) -> None:
        self._fixed = answer
        super().__init__(POD_TOKEN)

    def _answer(self, method: str, path: str, headers: Any) -> tuple[int, str, bytes]:
        return self._fixed if self._fixed is not None else super()._answer(method, path, headers)


class _QuickFetcher(ContainerMetadataFetcher):  # type: ignore[misc]
    TIMEOUT_SECONDS = 0.3


def _container_credentials(full_uri: str, token: str) -> Any:
    """What botocore's default chain does on EKS with Pod Identity (three attempts, without the pauses)."""
    environ = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": full_uri, "AWS_CONTAINER_AUTHORIZATION_TOKEN": token}
    return ContainerProvider(environ=environ, fetcher=_QuickFetcher(sleep=lambda seconds: None)).load()


def _refused(fn: Any) -> PluginError:
    with pytest.raises(KmsError) as raised:
        translate("ListAliases", fn)
    return plugin_error(raised.value, ACTION)


def test_the_pod_identity_agent_refusing_the_token_is_permission_denied_naming_the_source() -> None:
    with _Agent() as agent:
        error = _refused(lambda: _container_credentials(agent.full_uri, "a-stale-token"))
        assert len(agent.requests) == 3
    assert error.kind is ErrorKind.PERMISSION_DENIED
    assert error.message == (
        f"failed to {ACTION}: KMS ListAliases (credentials from container-role) returned "
        "AccessDeniedException: the credentials endpoint answered HTTP 401: "
        "the service account token is not valid"
    )
    assert "a-stale-token" not in error.message


def test_the_pod_identity_agent_answers_credentials_for_the_right_token() -> None:
    with _Agent() as agent:
        credentials = translate("ListAliases", lambda: _container_credentials(agent.full_uri, POD_TOKEN))
    assert credentials.access_key == agent.served[0].access_key_id


@pytest.mark.parametrize(
    ("answer", "code", "kind"),
    [
        ((403, "text/plain", b"Forbidden"), "403", ErrorKind.PERMISSION_DENIED),
        ((401, "text/plain", b""), "401", ErrorKind.PERMISSION_DENIED),
        ((500, "text/plain", b"internal error"), "500", ErrorKind.UNAVAILABLE),
        ((503, "application/json", b'{"message": "busy"}'), "503", ErrorKind.UNAVAILABLE),
        ((200, "text/html", b"<html>captive portal</html>"), "UnparseableResponse", ErrorKind.UNAVAILABLE),
    ],
)
def test_a_credential_source_answering_uncoded_is_coded_by_its_status(
    answer: tuple[int, str, bytes], code: str, kind: ErrorKind
) -> None:
    with _Agent(answer) as agent:
        error = _refused(lambda: _container_credentials(agent.full_uri, POD_TOKEN))
    assert error.kind is kind
    assert f"KMS ListAliases (credentials from container-role) returned {code}: " in error.message
    assert POD_TOKEN not in error.message


def test_a_credential_source_nobody_listens_at_is_unavailable_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = _refused(lambda: _container_credentials(f"http://127.0.0.1:{port}/v1/credentials", POD_TOKEN))
    assert error.kind is ErrorKind.UNAVAILABLE
    assert error.message.startswith(
        f"failed to {ACTION}: KMS ListAliases (credentials from container-role) returned Unreachable: "
    )


def test_a_credential_source_that_never_answers_is_unavailable_timeout() -> None:
    with socket.socket() as silent:
        # Connections are queued by the kernel and never answered.
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        error = _refused(lambda: _container_credentials(f"http://127.0.0.1:{port}/v1/credentials", POD_TOKEN))
    assert error.kind is ErrorKind.UNAVAILABLE
    assert "KMS ListAliases (credentials from container-role) returned Timeout: " in error.message


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("InvalidIdentityToken", ErrorKind.PERMISSION_DENIED),
        ("IDPRejectedClaim", ErrorKind.PERMISSION_DENIED),
        ("ExpiredTokenException", ErrorKind.PERMISSION_DENIED),
        ("IDPCommunicationError", ErrorKind.UNAVAILABLE),
    ],
)
def test_sts_refusing_a_web_identity_token_names_the_exchange(code: str, kind: ErrorKind) -> None:
    def exchange() -> None:
        # What botocore raises from the first KMS call when EKS IRSA's exchange at STS fails.
        answer = {"Error": {"Code": code, "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": 400}}
        raise botocore.exceptions.ClientError(answer, "AssumeRoleWithWebIdentity")

    error = _refused(exchange)
    assert error.kind is kind
    assert error.message == (
        f"failed to {ACTION}: KMS ListAliases (STS AssumeRoleWithWebIdentity) returned {code}: no"
    )


@pytest.mark.parametrize(
    ("variable", "others"),
    [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", {"AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/spire-server"}),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/"},
        ),
    ],
)
def test_a_token_file_that_is_not_mounted_is_missing_credentials_and_kms_is_not_blamed(
    variable: str, others: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    missing = tmp_path / "serviceaccount" / "token"
    monkeypatch.setenv(variable, str(missing))
    for name, value in others.items():
        monkeypatch.setenv(name, value)
    kms = BotocoreKms(ClientSettings(region="us-east-1", endpoint="http://127.0.0.1:9"))
    expected = (
        f"KMS {{}} (credentials from {variable}) returned NoCredentials: "
        f'cannot read {variable} "{missing}": No such file or directory'
    )
    # The first call resolves the credentials (ListAliases), and so does each after while none are had:
    # Sign, on its lean path, is not taken for a call that could not reach KMS.
    for operation, call in [
        ("ListAliases", lambda: list(kms.list_aliases())),
        ("Sign", lambda: kms.sign("k", b"0" * 32, "ECDSA_SHA_256")),
    ] * 3:
        with pytest.raises(KmsError) as raised:
            call()
        error = plugin_error(raised.value, ACTION)
        assert error.kind is ErrorKind.PERMISSION_DENIED
        assert error.message == f"failed to {ACTION}: " + expected.format(operation)
    # Made (web identity: botocore defers the exchange) or not (Pod Identity: botocore asks at once).
    assert kms._built is None or not kms._built[0].kms_breaker.is_open


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (
            botocore.exceptions.SSLError(endpoint_url="https://kms", error="CERTIFICATE_VERIFY_FAILED"),
            "Unreachable",
        ),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="https://kms"), "Timeout"),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="https://kms"), "Timeout"),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="https://kms"), "Unreachable"),
    ],
    ids=["ssl", "connect-timeout", "read-timeout", "refused"],
)
def test_transport_failures_are_unavailable_though_botocore_makes_some_of_them_oserrors(
    failure: Exception, code: str
) -> None:
    # botocore's SSL and timeout errors also derive from OSError (through requests' exceptions): they must
    # not be taken for an unreadable token file and escape as an unexpected failure (INTERNAL).
    def fail() -> None:
        raise failure

    with pytest.raises(KmsError) as raised:
        translate("Sign", fail)
    assert raised.value.code == code
    assert plugin_error(raised.value, 'sign with key "x509-CA-A"').kind is ErrorKind.UNAVAILABLE
