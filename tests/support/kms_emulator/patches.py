"""Patches that make moto's KMS backend behave like AWS KMS where moto 5.2.5 is known to be wrong.

See /work/shared/spec/aws-kms-facts.md for the facts and the list of moto deviations. The patches replace
moto's request handlers (``KmsResponse.<operation>``) and wrap a few backend/model methods. They are
applied once, process-wide, at emulator start-up; the emulator process runs nothing else.

moto is pinned (5.2.5). These patches reach into its internals (``Key.private_key.private_key``,
``Alias`` attributes, handler names), so a moto upgrade that changes them must fail loudly: the
emulator self-test (tests/emulator) checks every behaviour below against the facts with
``cryptography`` rather than trusting the emulator's own Verify.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from moto.core.exceptions import JsonRESTError
from moto.core.responses import BaseResponse
from moto.core.utils import unix_time
from moto.kms.models import Alias, Key, KmsBackend
from moto.kms.responses import KmsResponse
from moto.utilities.utils import get_partition

from .clock import CLOCK

# --------------------------------------------------------------------------------------------------
# Errors, shaped as KMS sends them: HTTP 400 {"__type": ..., "message": ...}
# --------------------------------------------------------------------------------------------------


def _kms_error(error_type: str, message: str) -> JsonRESTError:
    return JsonRESTError(error_type, message)


def _validation_error(message: str) -> JsonRESTError:
    return _kms_error("ValidationException", message)


# --------------------------------------------------------------------------------------------------
# Signing algorithms
# --------------------------------------------------------------------------------------------------

_T = TypeVar("_T")

_MAX_MESSAGE_BYTES = 4096
_MESSAGE_TYPES = ("RAW", "DIGEST")


@dataclass(frozen=True)
class _Scheme:
    family: str  # "PKCS1", "PSS" or "ECDSA"
    hash_type: type[hashes.HashAlgorithm]

    def new_hash(self) -> hashes.HashAlgorithm:
        return self.hash_type()

    @property
    def digest_size(self) -> int:
        return self.new_hash().digest_size


_SCHEMES: dict[str, _Scheme] = {
    "RSASSA_PKCS1_V1_5_SHA_256": _Scheme("PKCS1", hashes.SHA256),
    "RSASSA_PKCS1_V1_5_SHA_384": _Scheme("PKCS1", hashes.SHA384),
    "RSASSA_PKCS1_V1_5_SHA_512": _Scheme("PKCS1", hashes.SHA512),
    "RSASSA_PSS_SHA_256": _Scheme("PSS", hashes.SHA256),
    "RSASSA_PSS_SHA_384": _Scheme("PSS", hashes.SHA384),
    "RSASSA_PSS_SHA_512": _Scheme("PSS", hashes.SHA512),
    "ECDSA_SHA_256": _Scheme("ECDSA", hashes.SHA256),
    "ECDSA_SHA_384": _Scheme("ECDSA", hashes.SHA384),
    "ECDSA_SHA_512": _Scheme("ECDSA", hashes.SHA512),
}

# The SigningAlgorithm enum KMS validates against (SM2DSA exists in the API but moto cannot do SM2).
_SIGNING_ALGORITHM_ENUM = [*_SCHEMES, "SM2DSA"]


def _rsa_padding(scheme: _Scheme) -> padding.AsymmetricPadding:
    if scheme.family == "PSS":
        # KMS always uses salt length = hash length and MGF1 with the same hash (moto used the maximum
        # salt length, which strict verifiers such as Go's crypto/rsa with a fixed salt refuse).
        return padding.PSS(mgf=padding.MGF1(scheme.new_hash()), salt_length=scheme.digest_size)
    return padding.PKCS1v15()


def _signing_hash(scheme: _Scheme, message_type: str) -> hashes.HashAlgorithm | Prehashed:
    # MessageType=DIGEST means the caller already hashed: sign the bytes as the digest instead of
    # hashing them again (moto's bug: it hashed the digest a second time).
    return Prehashed(scheme.new_hash()) if message_type == "DIGEST" else scheme.new_hash()


def _crypto_private_key(key: Key) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """The ``cryptography`` private key inside moto's key wrapper (moto 5.2.5 layout)."""
    inner = getattr(key.private_key, "private_key", None)
    if isinstance(inner, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return inner
    # Reaching this means moto's key model changed: fail loudly (HTTP 500) rather than sign wrongly.
    raise RuntimeError(f"kms_emulator: unexpected moto private key type {type(key.private_key)!r}")


def _sign_bytes(key: Key, scheme: _Scheme, message: bytes, message_type: str) -> bytes:
    private_key = _crypto_private_key(key)
    algorithm = _signing_hash(scheme, message_type)
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(message, _rsa_padding(scheme), algorithm)
    # ECDSA: cryptography already answers DER SEQUENCE{r, s}, the format KMS returns.
    return private_key.sign(message, ec.ECDSA(algorithm))


def _verify_bytes(key: Key, scheme: _Scheme, message: bytes, message_type: str, signature: bytes) -> bool:
    public_key = _crypto_private_key(key).public_key()
    algorithm = _signing_hash(scheme, message_type)
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, message, _rsa_padding(scheme), algorithm)
        else:
            public_key.verify(signature, message, ec.ECDSA(algorithm))
    except InvalidSignature:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Request validation shared by Sign and Verify
# --------------------------------------------------------------------------------------------------


def _validated_message(message: Any, message_type: str) -> bytes:
    if message is None:
        raise _validation_error(
            "1 validation error detected: Value null at 'message' failed to satisfy constraint: "
            "Member must not be null"
        )
    if isinstance(message, str):
        message = message.encode("utf-8")
    if not 1 <= len(message) <= _MAX_MESSAGE_BYTES:
        raise _validation_error(
            "1 validation error detected: Value at 'message' failed to satisfy constraint: "
            f"Member must have length between 1 and {_MAX_MESSAGE_BYTES}"
        )
    if message_type not in _MESSAGE_TYPES:
        raise _validation_error(
            f"1 validation error detected: Value '{message_type}' at 'messageType' failed to satisfy "
            f"constraint: Member must satisfy enum value set: [{', '.join(_MESSAGE_TYPES)}]"
        )
    return bytes(message)


def _validated_algorithm_name(signing_algorithm: Any) -> str:
    if signing_algorithm not in _SIGNING_ALGORITHM_ENUM:
        raise _validation_error(
            f"1 validation error detected: Value '{signing_algorithm}' at 'signingAlgorithm' failed to "
            f"satisfy constraint: Member must satisfy enum value set: [{', '.join(_SIGNING_ALGORITHM_ENUM)}]"
        )
    return str(signing_algorithm)


def _scheme_for_key(key: Key, signing_algorithm: str) -> _Scheme:
    """KMS refuses a key/algorithm mismatch with InvalidKeyUsageException (moto: ValidationException)."""
    if key.key_usage != "SIGN_VERIFY":
        raise _kms_error(
            "InvalidKeyUsageException",
            f"{key.arn} key usage is {key.key_usage} which is not valid for signing.",
        )
    allowed = key.signing_algorithms or []
    scheme = _SCHEMES.get(signing_algorithm)
    if signing_algorithm not in allowed or scheme is None:
        raise _kms_error(
            "InvalidKeyUsageException",
            f"Algorithm {signing_algorithm} is incompatible with key spec {key.key_spec}. "
            f"Valid signing algorithms for {key.arn}: {', '.join(allowed)}.",
        )
    return scheme


def _check_digest_length(message: bytes, message_type: str, scheme: _Scheme, signing_algorithm: str) -> None:
    if message_type == "DIGEST" and len(message) != scheme.digest_size:
        raise _validation_error(f"Digest is invalid length for algorithm {signing_algorithm}.")


# --------------------------------------------------------------------------------------------------
# Key states
# --------------------------------------------------------------------------------------------------


def _resolve_key(response: KmsResponse, key_id: Any) -> Key:
    """Resolve a key id, key ARN, alias name or alias ARN; NotFoundException as moto does."""
    if not isinstance(key_id, str) or not key_id:
        raise _validation_error(
            "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: "
            "Member must not be null"
        )
    response._validate_key_id(key_id)
    return response.kms_backend.describe_key(key_id)


def _ensure_enabled(key: Key) -> None:
    """Cryptographic operations need an Enabled key (moto signed with Disabled and pending keys)."""
    if key.key_state == "Enabled":
        return
    if key.key_state == "Disabled":
        raise _kms_error("DisabledException", f"{key.arn} is disabled.")
    if key.key_state == "PendingDeletion":
        raise _kms_error("KMSInvalidStateException", f"{key.arn} is pending deletion.")
    raise _kms_error("KMSInvalidStateException", f"{key.arn} is {key.key_state}.")


def _ensure_not_pending_deletion(key: Key) -> None:
    if key.key_state == "PendingDeletion":
        raise _kms_error("KMSInvalidStateException", f"{key.arn} is pending deletion.")


def purge_expired_keys(backend: KmsBackend) -> None:
    """Delete keys whose deletion date has passed on the emulator clock, as KMS does when the waiting
    period ends (the key, its key material and its aliases go). Lets lifecycle tests jump the clock."""
    now = CLOCK.now()
    for key in list(backend.keys.values()):
        pending = key.key_state == "PendingDeletion" and key.deletion_date is not None
        if pending and unix_time(key.deletion_date) <= now:
            backend.delete_key(key.id)


# --------------------------------------------------------------------------------------------------
# Handlers replacing KmsResponse.<operation>
# --------------------------------------------------------------------------------------------------


def _sign(self: KmsResponse) -> str:
    message_type = self._get_param("MessageType") or "RAW"
    message = _validated_message(self._get_param("Message"), message_type)
    signing_algorithm = _validated_algorithm_name(self._get_param("SigningAlgorithm"))
    key = _resolve_key(self, self._get_param("KeyId"))
    _ensure_enabled(key)
    scheme = _scheme_for_key(key, signing_algorithm)
    _check_digest_length(message, message_type, scheme, signing_algorithm)
    signature = _sign_bytes(key, scheme, message, message_type)
    return json.dumps(
        {
            # KMS answers the key ARN even when asked by alias, so callers see which key signed.
            "KeyId": key.arn,
            "Signature": base64.b64encode(signature).decode("ascii"),
            "SigningAlgorithm": signing_algorithm,
        }
    )


def _verify(self: KmsResponse) -> str:
    message_type = self._get_param("MessageType") or "RAW"
    message = _validated_message(self._get_param("Message"), message_type)
    signing_algorithm = _validated_algorithm_name(self._get_param("SigningAlgorithm"))
    raw_signature = self._get_param("Signature")
    try:
        signature = base64.b64decode(raw_signature or "", validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise _validation_error("Signature is not valid base64.") from exc
    if not signature:
        raise _validation_error(
            "1 validation error detected: Value at 'signature' failed to satisfy constraint: "
            "Member must have length greater than or equal to 1"
        )
    key = _resolve_key(self, self._get_param("KeyId"))
    _ensure_enabled(key)
    scheme = _scheme_for_key(key, signing_algorithm)
    _check_digest_length(message, message_type, scheme, signing_algorithm)
    if not _verify_bytes(key, scheme, message, message_type, signature):
        # KMS never answers SignatureValid=false: a bad signature is this error.
        raise _kms_error("KMSInvalidSignatureException", "")
    return json.dumps({"KeyId": key.arn, "SignatureValid": True, "SigningAlgorithm": signing_algorithm})


def _get_public_key(self: KmsResponse) -> str:
    key = _resolve_key(self, self._get_param("KeyId"))
    _ensure_enabled(key)
    if key.key_spec == "SYMMETRIC_DEFAULT" or key.key_spec.startswith("HMAC"):
        raise _kms_error(
            "UnsupportedOperationException", f"{key.arn} key spec {key.key_spec} has no public key."
        )
    public_key_der: bytes = key.private_key.public_key()
    body: dict[str, Any] = {
        "KeyId": key.arn,  # moto answered the bare key id
        "KeySpec": key.key_spec,  # moto omitted it
        "CustomerMasterKeySpec": key.key_spec,
        "KeyUsage": key.key_usage,
        "PublicKey": base64.b64encode(public_key_der).decode("ascii"),
    }
    if key.key_usage == "SIGN_VERIFY":
        body["SigningAlgorithms"] = key.signing_algorithms
    elif key.key_usage == "ENCRYPT_DECRYPT":
        body["EncryptionAlgorithms"] = key.encryption_algorithms
    return json.dumps(body)


_KEY_SPECS_BY_USAGE: dict[str, Callable[[str], bool]] = {
    "SIGN_VERIFY": lambda spec: spec.startswith(("RSA_", "ECC_")) or spec == "SM2",
    "ENCRYPT_DECRYPT": lambda spec: spec == "SYMMETRIC_DEFAULT" or spec.startswith("RSA_") or spec == "SM2",
    "GENERATE_VERIFY_MAC": lambda spec: spec.startswith("HMAC_"),
    "KEY_AGREEMENT": lambda spec: spec.startswith("ECC_") or spec == "SM2",
}

_moto_create_key = KmsResponse.create_key


def _create_key(self: KmsResponse) -> str:
    # moto left KeyUsage null when omitted and accepted any usage/spec pair; KMS defaults to
    # ENCRYPT_DECRYPT and refuses incompatible pairs (e.g. ECC_NIST_P256 for ENCRYPT_DECRYPT).
    params = json.loads(self.body or "{}")
    key_usage = params.get("KeyUsage") or "ENCRYPT_DECRYPT"
    key_spec = params.get("KeySpec") or params.get("CustomerMasterKeySpec") or "SYMMETRIC_DEFAULT"
    spec_check = _KEY_SPECS_BY_USAGE.get(key_usage)
    if spec_check is None:
        raise _validation_error(
            f"1 validation error detected: Value '{key_usage}' at 'keyUsage' failed to satisfy constraint: "
            f"Member must satisfy enum value set: [{', '.join(_KEY_SPECS_BY_USAGE)}]"
        )
    if not spec_check(key_spec):
        raise _validation_error(f"KeyUsage {key_usage} is not compatible with KeySpec {key_spec}")
    if "KeyUsage" not in params:
        params["KeyUsage"] = key_usage
        self.body = json.dumps(params)
    return _moto_create_key(self)


def _schedule_key_deletion(self: KmsResponse) -> str:
    window = self._get_param("PendingWindowInDays")
    if window is None:
        window = 30  # KMS default
    if not isinstance(window, int) or isinstance(window, bool):
        raise _validation_error("PendingWindowInDays must be an integer.")
    # moto silently ignored windows outside 7..30 and left the key untouched.
    if window < 7:
        raise _validation_error(
            f"1 validation error detected: Value '{window}' at 'pendingWindowInDays' failed to satisfy "
            "constraint: Member must have value greater than or equal to 7"
        )
    if window > 30:
        raise _validation_error(
            f"1 validation error detected: Value '{window}' at 'pendingWindowInDays' failed to satisfy "
            "constraint: Member must have value less than or equal to 30"
        )
    key_id = self._get_param("KeyId")
    self._validate_cmk_id(key_id)
    key = self.kms_backend.keys[self.kms_backend.get_key_id(key_id)]
    # moto re-scheduled a pending key; KMS refuses.
    _ensure_not_pending_deletion(key)
    key.enabled = False
    key.key_state = "PendingDeletion"
    key.deletion_date = CLOCK.now_naive_utc() + timedelta(days=window)
    key.emulator_pending_window_days = window  # type: ignore[attr-defined]
    return json.dumps(
        {
            "KeyId": key.arn,
            "DeletionDate": unix_time(key.deletion_date),
            "KeyState": "PendingDeletion",
            "PendingWindowInDays": window,
        }
    )


def _cancel_key_deletion(self: KmsResponse) -> str:
    key_id = self._get_param("KeyId")
    self._validate_cmk_id(key_id)
    key = self.kms_backend.keys[self.kms_backend.get_key_id(key_id)]
    if key.key_state != "PendingDeletion":
        raise _kms_error("KMSInvalidStateException", f"{key.arn} is not pending deletion.")
    # KMS restores a cancelled key as Disabled, never straight to Enabled.
    key.enabled = False
    key.key_state = "Disabled"
    key.deletion_date = None
    return json.dumps({"KeyId": key.arn})


def _enable_key(self: KmsResponse) -> str:
    key_id = self._get_param("KeyId")
    self._validate_cmk_id(key_id)
    key = self.kms_backend.keys[self.kms_backend.get_key_id(key_id)]
    _ensure_not_pending_deletion(key)
    # moto indexed its key table with the raw KeyId parameter, so a key ARN crashed it.
    self.kms_backend.enable_key(key.id)
    return json.dumps(None)


def _disable_key(self: KmsResponse) -> str:
    key_id = self._get_param("KeyId")
    self._validate_cmk_id(key_id)
    key = self.kms_backend.keys[self.kms_backend.get_key_id(key_id)]
    _ensure_not_pending_deletion(key)
    self.kms_backend.disable_key(key.id)
    return json.dumps(None)


# --------------------------------------------------------------------------------------------------
# Aliases
# --------------------------------------------------------------------------------------------------

_ALIAS_NAME = re.compile(r"^alias/[a-zA-Z0-9/_-]+$")
_ALIAS_NAME_MAX = 256


def _key_family(key: Key) -> str:
    if key.key_spec == "SYMMETRIC_DEFAULT":
        return "symmetric"
    if key.key_spec.startswith("HMAC_"):
        return "hmac"
    return "asymmetric"


def _set_alias(self: KmsResponse, update: bool = False) -> str:
    alias_name = self._get_param("AliasName")
    target_key_id = self._get_param("TargetKeyId")
    if (
        not isinstance(alias_name, str)
        or not _ALIAS_NAME.match(alias_name)
        or len(alias_name) > _ALIAS_NAME_MAX
    ):
        raise _validation_error(
            f"1 validation error detected: Value '{alias_name}' at 'aliasName' failed to satisfy constraint: "
            f"Member must satisfy regular expression pattern: ^alias/[a-zA-Z0-9/_-]+$ and have length "
            f"less than or equal to {_ALIAS_NAME_MAX}"
        )
    if alias_name.startswith("alias/aws/"):
        # The whole prefix is reserved for AWS managed keys (moto only refused 14 names).
        raise _kms_error("NotAuthorizedException", f"{alias_name}: the alias/aws/ prefix is reserved.")
    if not isinstance(target_key_id, str) or target_key_id.startswith("alias/") or ":alias/" in target_key_id:
        raise _validation_error("Aliases must refer to keys. Not aliases")
    self._validate_cmk_id(target_key_id)
    backend = self.kms_backend
    target = backend.keys[backend.get_key_id(target_key_id)]
    _ensure_not_pending_deletion(target)
    if update:
        self._validate_alias(alias_name)
        current_key_id = backend.get_key_id_from_alias(alias_name)
        current = backend.keys[current_key_id] if current_key_id else None
        if current is not None and (
            _key_family(current) != _key_family(target) or current.key_usage != target.key_usage
        ):
            raise _validation_error(
                f"{alias_name} can only be moved to a key of the same type and key usage "
                f"({current.key_spec}/{current.key_usage} -> {target.key_spec}/{target.key_usage})."
            )
        backend.update_alias(target_key_id, alias_name)
    else:
        if backend.alias_exists(alias_name):
            raise _kms_error(
                "AlreadyExistsException",
                f"An alias with the name {_alias_arn(self, alias_name)} already exists",
            )
        backend.create_alias(target_key_id, alias_name)
    return json.dumps(None)


def _alias_arn(response: KmsResponse, alias_name: str) -> str:
    return (
        f"arn:{get_partition(response.region)}:kms:{response.region}:{response.current_account}:{alias_name}"
    )


_moto_create_alias = KmsBackend.create_alias
_moto_update_alias = KmsBackend.update_alias


def _backend_create_alias(self: KmsBackend, target_key_id: str, alias_name: str) -> Alias:
    alias = _moto_create_alias(self, target_key_id, alias_name)
    # moto's Alias had no dates; KMS lists CreationDate and LastUpdatedDate.
    now = CLOCK.now()
    alias.emulator_creation_date = now  # type: ignore[attr-defined]
    alias.emulator_last_updated_date = now  # type: ignore[attr-defined]
    return alias


def _backend_update_alias(self: KmsBackend, target_key_id: str, alias_name: str) -> Alias:
    alias = _moto_update_alias(self, target_key_id, alias_name)
    alias.emulator_last_updated_date = CLOCK.now()  # type: ignore[attr-defined]
    return alias


def _alias_entry(alias: Alias) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "AliasName": alias.alias_name,
        "AliasArn": alias.alias_arn,
        "TargetKeyId": alias.target_key_id,
    }
    created = getattr(alias, "emulator_creation_date", None)
    if created is not None:
        entry["CreationDate"] = created
        entry["LastUpdatedDate"] = getattr(alias, "emulator_last_updated_date", created)
    return entry


# --------------------------------------------------------------------------------------------------
# Paging (moto ignored Limit and Marker on ListKeys and ListAliases)
# --------------------------------------------------------------------------------------------------


def _limit(value: Any, maximum: int, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise _validation_error(
            f"1 validation error detected: Value '{value}' at 'limit' failed to satisfy constraint: "
            f"Member must have value between 1 and {maximum}"
        )
    return value


# Markers are opaque to clients (as in KMS); inside they carry the sort key of the last item returned, so a
# page boundary stays valid when items are added or deleted between calls.
def _encode_marker(last_sort_key: str) -> str:
    return base64.urlsafe_b64encode(last_sort_key.encode("utf-8")).decode("ascii")


def _decode_marker(marker: Any) -> str | None:
    if marker is None:
        return None
    try:
        return base64.urlsafe_b64decode(str(marker).encode("ascii")).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeError) as exc:
        raise _kms_error("InvalidMarkerException", "The marker is not valid.") from exc


def _page(
    items: Iterable[_T], sort_key: Callable[[_T], str], marker: Any, limit: int
) -> tuple[list[_T], str | None]:
    after = _decode_marker(marker)
    ordered = sorted(items, key=sort_key)
    if after is not None:
        ordered = [item for item in ordered if sort_key(item) > after]
    page = ordered[:limit]
    next_marker = _encode_marker(sort_key(page[-1])) if len(ordered) > limit else None
    return page, next_marker


def _paged_body(name: str, entries: list[dict[str, Any]], next_marker: str | None) -> str:
    body: dict[str, Any] = {name: entries, "Truncated": next_marker is not None}
    if next_marker is not None:
        body["NextMarker"] = next_marker
    return json.dumps(body)


def _list_keys(self: KmsResponse) -> str:
    limit = _limit(self._get_param("Limit"), maximum=1000, default=100)
    keys, next_marker = _page(self.kms_backend.list_keys(), lambda k: k.id, self._get_param("Marker"), limit)
    return _paged_body("Keys", [{"KeyId": k.id, "KeyArn": k.arn} for k in keys], next_marker)


def _list_aliases(self: KmsResponse) -> str:
    limit = _limit(self._get_param("Limit"), maximum=100, default=50)
    key_id = self._get_param("KeyId")
    if key_id is not None:
        self._validate_key_id(key_id)
        key_id = self.kms_backend.any_id_to_key_id(key_id)
    # Only aliases of keys that exist: moto added 14 synthetic alias/aws/* entries pointing at no key.
    aliases, next_marker = _page(
        self.kms_backend.list_aliases(key_id=key_id), lambda a: a.alias_name, self._get_param("Marker"), limit
    )
    return _paged_body("Aliases", [_alias_entry(a) for a in aliases], next_marker)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------

_moto_key_init = Key.__init__
_moto_key_to_dict = Key.to_dict


def _key_init(self: Key, *args: Any, **kwargs: Any) -> None:
    _moto_key_init(self, *args, **kwargs)
    self.creation_date = CLOCK.now()  # dates follow the emulator clock


def _key_to_dict(self: Key) -> dict[str, Any]:
    body = _moto_key_to_dict(self)
    window = getattr(self, "emulator_pending_window_days", None)
    if self.key_state == "PendingDeletion" and window is not None:
        body["KeyMetadata"]["PendingDeletionWindowInDays"] = window
    return body


def _call_action(self: KmsResponse) -> Any:
    # Expire keys whose deletion window ended before any KMS operation looks at the backend.
    purge_expired_keys(self.kms_backend)
    return BaseResponse.call_action(self)


# --------------------------------------------------------------------------------------------------

_applied = False


def apply_kms_patches() -> None:
    """Patch moto's KMS in this process (idempotent)."""
    global _applied
    if _applied:
        return
    handlers: dict[str, Callable[..., Any]] = {
        "sign": _sign,
        "verify": _verify,
        "get_public_key": _get_public_key,
        "create_key": _create_key,
        "schedule_key_deletion": _schedule_key_deletion,
        "cancel_key_deletion": _cancel_key_deletion,
        "enable_key": _enable_key,
        "disable_key": _disable_key,
        "_set_alias": _set_alias,
        "list_keys": _list_keys,
        "list_aliases": _list_aliases,
        "call_action": _call_action,
    }
    for name, handler in handlers.items():
        # Only replace what exists: moto dispatches to handler methods by name, so a renamed handler
        # in a newer moto would otherwise be silently bypassed.
        if not callable(getattr(KmsResponse, name, None)):
            raise RuntimeError(f"kms_emulator: moto's KmsResponse has no {name}(); re-check the patches")
        setattr(KmsResponse, name, handler)
    setattr(KmsBackend, "create_alias", _backend_create_alias)  # noqa: B010
    setattr(KmsBackend, "update_alias", _backend_update_alias)  # noqa: B010
    setattr(Key, "__init__", _key_init)  # noqa: B010
    setattr(Key, "to_dict", _key_to_dict)  # noqa: B010
    _applied = True
