"""The KMS adapter: the only module that imports boto3. One method per KMS operation the core needs;
botocore failures become `KmsError` with the AWS error code, and nothing else leaks upward."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from plugin.kmsapi import Alias, KeyDescription, KmsError, PublicKey

T = TypeVar("T")

# SPIRE gives every KeyManager call 30 s. Three attempts with these timeouts, plus the SDK's backoff,
# fit inside it; a call that still fails is reported rather than left to overrun SPIRE's deadline.
CONNECT_TIMEOUT_SECONDS = 3
READ_TIMEOUT_SECONDS = 8
MAX_ATTEMPTS = 3
LIST_PAGE_SIZE = 100


@dataclass(frozen=True)
class ClientSettings:
    region: str
    access_key_id: str | None = None
    secret_access_key: str | None = None


def _call(operation: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except botocore.exceptions.ClientError as err:
        error = err.response.get("Error", {})
        code = str(error.get("Code") or err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        raise KmsError(operation, code or "Unknown", str(error.get("Message", ""))) from None
    except botocore.exceptions.NoCredentialsError:
        raise KmsError(
            operation, "NoCredentials", "no AWS credentials were found in the configuration or environment"
        ) from None
    except (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError) as err:
        raise KmsError(operation, "Timeout", str(err)) from None
    except botocore.exceptions.EndpointConnectionError as err:
        raise KmsError(operation, "Unreachable", str(err)) from None
    except botocore.exceptions.BotoCoreError as err:
        raise KmsError(operation, type(err).__name__, str(err)) from None


class Boto3Kms:
    """Implements `plugin.kmsapi.Kms` against AWS KMS (or any endpoint botocore is pointed at)."""

    def __init__(self, settings: ClientSettings) -> None:
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            region_name=settings.region,
        )
        self._client: Any = session.client(
            "kms",
            config=botocore.config.Config(
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                read_timeout=READ_TIMEOUT_SECONDS,
                retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                max_pool_connections=32,
            ),
        )

    def list_aliases(self, key_id: str | None = None) -> Iterator[Alias]:
        request: dict[str, Any] = {"Limit": LIST_PAGE_SIZE}
        if key_id:
            request["KeyId"] = key_id
        while True:
            page = _call("ListAliases", lambda: self._client.list_aliases(**request))
            for entry in page.get("Aliases", []):
                yield Alias(
                    name=entry["AliasName"],
                    target_key_id=entry.get("TargetKeyId"),
                    last_updated=entry.get("LastUpdatedDate"),
                )
            if not page.get("Truncated") or not page.get("NextMarker"):
                return
            request["Marker"] = page["NextMarker"]

    def describe_key(self, key_id: str) -> KeyDescription:
        answer = _call("DescribeKey", lambda: self._client.describe_key(KeyId=key_id))
        return _description(answer["KeyMetadata"])

    def get_public_key(self, key_id: str) -> PublicKey:
        answer = _call("GetPublicKey", lambda: self._client.get_public_key(KeyId=key_id))
        return PublicKey(arn=answer["KeyId"], der=answer["PublicKey"], key_spec=answer.get("KeySpec", ""))

    def create_key(
        self, key_spec: str, description: str, tags: Mapping[str, str], policy: str | None
    ) -> KeyDescription:
        request: dict[str, Any] = {
            "KeySpec": key_spec,
            "KeyUsage": "SIGN_VERIFY",
            "Description": description,
        }
        if tags:
            request["Tags"] = [{"TagKey": k, "TagValue": v} for k, v in tags.items()]
        if policy is not None:
            request["Policy"] = policy
        answer = _call("CreateKey", lambda: self._client.create_key(**request))
        return _description(answer["KeyMetadata"])

    def create_alias(self, alias_name: str, target_key_id: str) -> None:
        _call(
            "CreateAlias", lambda: self._client.create_alias(AliasName=alias_name, TargetKeyId=target_key_id)
        )

    def update_alias(self, alias_name: str, target_key_id: str) -> None:
        _call(
            "UpdateAlias", lambda: self._client.update_alias(AliasName=alias_name, TargetKeyId=target_key_id)
        )

    def schedule_key_deletion(self, key_id: str, pending_window_days: int) -> None:
        _call(
            "ScheduleKeyDeletion",
            lambda: self._client.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=pending_window_days),
        )

    def sign(self, key_id: str, digest: bytes, signing_algorithm: str) -> bytes:
        answer = _call(
            "Sign",
            lambda: self._client.sign(
                KeyId=key_id, Message=digest, MessageType="DIGEST", SigningAlgorithm=signing_algorithm
            ),
        )
        signature: bytes = answer["Signature"]
        return signature


def _description(metadata: Mapping[str, Any]) -> KeyDescription:
    created = metadata.get("CreationDate")
    return KeyDescription(
        arn=metadata["Arn"],
        key_state=metadata.get("KeyState", ""),
        key_spec=metadata.get("KeySpec") or metadata.get("CustomerMasterKeySpec", ""),
        description=metadata.get("Description", ""),
        creation_date=created if isinstance(created, datetime.datetime) else None,
    )
