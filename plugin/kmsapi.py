"""The narrow view of KMS the key manager core needs, and how KMS errors become plugin errors.

The core depends only on this module; `plugin.kms` implements `Kms` with botocore and a fake implements it in
unit tests. Keeping botocore out of this module also keeps it out of the plugin's start-up path.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from plugin.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PluginError,
    Unavailable,
)


@dataclass(frozen=True)
class Alias:
    name: str
    target_key_id: str | None
    last_updated: datetime.datetime | None = None


@dataclass(frozen=True)
class KeyDescription:
    arn: str
    key_state: str
    key_spec: str
    description: str
    creation_date: datetime.datetime | None = None
    # When KMS deletes a key pending deletion.
    deletion_date: datetime.datetime | None = None


@dataclass(frozen=True)
class PublicKey:
    arn: str
    der: bytes
    key_spec: str


@dataclass(frozen=True)
class TaggedResource:
    """One KMS key as the Resource Groups Tagging API lists it."""

    arn: str
    tags: Mapping[str, str]


@dataclass(frozen=True)
class CallerIdentity:
    """STS GetCallerIdentity: who the plugin's credentials are."""

    account: str
    arn: str


# Our code for an answer that is not an AWS answer (a proxy's page, a wrong endpoint): a transport failure.
UNPARSEABLE = "UnparseableResponse"


class KmsError(Exception):
    """A KMS call failed. `code` is the AWS error code (e.g. ThrottlingException, or InvalidIdentityToken
    from the STS exchange on the way), or one of ours for failures that never reached KMS (`NoCredentials`,
    `Unreachable`, `Timeout`, `UnparseableResponse`, a credential source's HTTP status)."""

    def __init__(self, operation: str, code: str, message: str) -> None:
        super().__init__(f"{operation}: {code}: {message}")
        self.operation = operation
        self.code = code
        self.message = message


class Kms(Protocol):
    def list_aliases(self, key_id: str | None = None) -> Iterator[Alias]: ...

    def describe_key(self, key_id: str) -> KeyDescription: ...

    def get_public_key(self, key_id: str) -> PublicKey: ...

    def create_key(
        self, key_spec: str, description: str, tags: Mapping[str, str], policy: str | None
    ) -> KeyDescription: ...

    def create_alias(self, alias_name: str, target_key_id: str) -> None: ...

    def update_alias(self, alias_name: str, target_key_id: str) -> None: ...

    def schedule_key_deletion(self, key_id: str, pending_window_days: int) -> None: ...

    def sign(self, key_id: str, digest: bytes, signing_algorithm: str) -> bytes: ...

    # Key lifecycle (heartbeat, disposal, tag-based discovery, default key policy).

    def list_keys(self) -> Iterator[str]:
        """The ARN of every key in the account and region (every page)."""
        ...

    def delete_alias(self, alias_name: str) -> None: ...

    def tag_resource(self, key_id: str, tags: Mapping[str, str]) -> None: ...

    def get_resources(self, tag_filter: Mapping[str, Sequence[str]]) -> Iterator[TaggedResource]:
        """KMS keys carrying every tag key of `tag_filter` with one of its values (Resource Groups
        Tagging API GetResources, every page)."""
        ...

    def caller_identity(self) -> CallerIdentity: ...


_NOT_FOUND = {"NotFoundException"}
_DENIED = {
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "IncompleteSignature",
    "SignatureDoesNotMatch",
    "ExpiredTokenException",
    "ExpiredToken",
    "NoCredentials",
    # STS refusing a web identity token (EKS IRSA): the role does not trust the issuer, a claim does not
    # match its trust policy, or the token is stale.
    "InvalidIdentityToken",
    "IDPRejectedClaim",
    # A credential source (the EKS Pod Identity agent, ECS's endpoint) refusing with a bare status, or a
    # credential provider failing for a reason it does not code (`plugin.awsclient.credential_failure`).
    "401",
    "403",
    "CredentialRetrievalError",
}
_PRECONDITION = {"DisabledException", "KMSInvalidStateException", "KeyUnavailableException"}
_UNAVAILABLE = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "ThrottledException",
    "InternalServiceException",
    "PaginationTokenExpiredException",
    "KMSInternalException",
    "DependencyTimeoutException",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "Unreachable",
    "Timeout",
    UNPARSEABLE,
    # STS could not reach the web identity token's issuer to check it: the refusal is not final.
    "IDPCommunicationError",
}
_INVALID = {
    "ValidationException",
    "InvalidKeyUsageException",
    "InvalidArnException",
    "InvalidAliasNameException",
    "MalformedPolicyDocumentException",
    "TagException",
    "InvalidParameterException",
}

# KMS (or STS, the tagging API) asking us to slow down; HTTP 429 means the same.
_THROTTLING = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ThrottledException",
    "RequestThrottledException",
    "RequestThrottled",
    "SlowDown",
    "429",
}


def is_throttling(code: str) -> bool:
    return code in _THROTTLING


# Codes that mean a deletion is already done or under way: nothing left to retry.
ALREADY_GONE = {"NotFoundException", "KMSInvalidStateException"}


def plugin_error(err: KmsError, action: str) -> PluginError:
    """Map a KMS failure to an error a SPIRE caller can act on. `action` names what we were doing and for
    which SPIRE key, e.g. 'sign with key "x509-CA-A"'."""
    message = f"failed to {action}: KMS {err.operation} returned {err.code}: {err.message}"
    code = err.code
    if code in _NOT_FOUND:
        return NotFound(message)
    if code in _DENIED:
        return PermissionDenied(message)
    if code in _PRECONDITION:
        return FailedPrecondition(message)
    if code in _UNAVAILABLE or code.startswith("5"):
        return Unavailable(message)
    if code in _INVALID:
        return InvalidArgument(message)
    return Internal(message)
