"""AWS error codes become gRPC codes a SPIRE caller can act on, with messages naming key and code."""

from __future__ import annotations

import pytest

from plugin.errors import ErrorKind
from plugin.kmsapi import KmsError, plugin_error

CASES = [
    ("NotFoundException", ErrorKind.NOT_FOUND),
    ("AccessDeniedException", ErrorKind.PERMISSION_DENIED),
    ("UnrecognizedClientException", ErrorKind.PERMISSION_DENIED),
    ("ExpiredTokenException", ErrorKind.PERMISSION_DENIED),
    ("NoCredentials", ErrorKind.PERMISSION_DENIED),
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
