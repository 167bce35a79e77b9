"""The KMS adapter. One method per KMS operation the core needs; botocore failures become `KmsError`
with the AWS error code, and nothing else leaks upward. The client itself (credentials, endpoints, retry
and deadline policy) comes from `plugin.awsclient`, and Sign takes the lean path of `plugin.signpath`; these
three are the only modules that import botocore."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from plugin import config as plugin_config
from plugin import metrics as plugin_metrics
from plugin.awsclient import AssumeRole, AwsClients, ClientSettings, translate
from plugin.kmsapi import (
    UNPARSEABLE,
    Alias,
    CallerIdentity,
    KeyDescription,
    KmsError,
    PublicKey,
    TaggedResource,
)
from plugin.metrics import NO_METRICS, Metrics
from plugin.signpath import LeanSigner

T = TypeVar("T")

LIST_PAGE_SIZE = 100
LIST_KEYS_PAGE_SIZE = 1000


# The status of a call that failed with something other than a KMS error (a bug).
UNKNOWN = "Unknown"


def _required(answer: Mapping[str, Any], field: str, operation: str) -> Any:
    """A field every real answer of the operation has: one without it (an empty 200 from a proxy) is no
    KMS answer either."""
    try:
        return answer[field]
    except KeyError:
        raise KmsError(operation, UNPARSEABLE, f"the answer has no {field}: it is not a KMS answer") from None


class BotocoreKms:
    """Implements `plugin.kmsapi.Kms` against AWS KMS (or any endpoint botocore is pointed at)."""

    def __init__(self, settings: ClientSettings, metrics: Metrics = NO_METRICS) -> None:
        self._settings = settings
        self._metrics = metrics
        self._lock = threading.Lock()
        self._built: tuple[AwsClients, LeanSigner | None] | None = None

    def _build(self) -> tuple[AwsClients, LeanSigner | None]:
        """The clients and the lean Sign path, made by the first call that needs them. botocore resolves
        the default chain's credentials when it makes a client, and some sources are asked there and
        then (the Pod Identity agent, ECS): made inside a call, a refusal is that call's error, coded as
        any other (`translate`), and the next call asks again."""
        built = self._built
        if built is not None:
            return built
        with self._lock:
            if self._built is None:
                clients = AwsClients(self._settings, self._metrics)
                signer = LeanSigner.for_client(
                    clients.kms, clients.credentials(), clients.kms_breaker, self._metrics
                )
                self._built = (clients, signer)
            return self._built

    @property
    def _clients(self) -> AwsClients:
        return self._build()[0]

    @property
    def _client(self) -> Any:
        return self._build()[0].kms

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        """One AWS call, its failures as `KmsError`, reported as a call of `operation` (retries included)."""
        start = plugin_metrics.now()
        code = UNKNOWN
        try:
            result: T = translate(operation, fn)
            code = plugin_metrics.OK
            return result
        except KmsError as err:
            code = err.code
            raise
        finally:
            plugin_metrics.observe_call(self._metrics, plugin_metrics.operation_key(operation), start, code)

    @property
    def endpoint_url(self) -> str:
        """Where KMS calls go (the operator commands show it)."""
        return str(translate("KMS client", lambda: self._client.meta.endpoint_url))

    def credential_method(self) -> str | None:
        """How botocore found the credentials (`AwsClients.credential_method`); a source that refuses or
        cannot be reached is a `KmsError` naming it."""
        method: str | None = translate("credentials", lambda: self._clients.credential_method())
        return method

    def list_aliases(self, key_id: str | None = None) -> Iterator[Alias]:
        request: dict[str, Any] = {"Limit": LIST_PAGE_SIZE}
        if key_id:
            request["KeyId"] = key_id
        while True:
            page = self._call("ListAliases", lambda: self._client.list_aliases(**request))
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
        answer = self._call("DescribeKey", lambda: self._client.describe_key(KeyId=key_id))
        return _description(_required(answer, "KeyMetadata", "DescribeKey"))

    def get_public_key(self, key_id: str) -> PublicKey:
        answer = self._call("GetPublicKey", lambda: self._client.get_public_key(KeyId=key_id))
        arn, der = (_required(answer, field, "GetPublicKey") for field in ("KeyId", "PublicKey"))
        return PublicKey(arn=arn, der=der, key_spec=answer.get("KeySpec", ""))

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
        answer = self._call("CreateKey", lambda: self._client.create_key(**request))
        return _description(_required(answer, "KeyMetadata", "CreateKey"))

    def create_alias(self, alias_name: str, target_key_id: str) -> None:
        self._call(
            "CreateAlias", lambda: self._client.create_alias(AliasName=alias_name, TargetKeyId=target_key_id)
        )

    def update_alias(self, alias_name: str, target_key_id: str) -> None:
        self._call(
            "UpdateAlias", lambda: self._client.update_alias(AliasName=alias_name, TargetKeyId=target_key_id)
        )

    def schedule_key_deletion(self, key_id: str, pending_window_days: int) -> None:
        self._call(
            "ScheduleKeyDeletion",
            lambda: self._client.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=pending_window_days),
        )

    def sign(self, key_id: str, digest: bytes, signing_algorithm: str) -> bytes:
        def call() -> Any:
            signer = self._build()[1]
            if signer is not None:
                return signer.sign(key_id, digest, signing_algorithm)
            return self._client.sign(
                KeyId=key_id, Message=digest, MessageType="DIGEST", SigningAlgorithm=signing_algorithm
            )

        answer = self._call("Sign", call)
        if isinstance(answer, bytes):
            return answer
        signature: bytes = _required(answer, "Signature", "Sign")
        return signature

    # -- key lifecycle: heartbeat, disposal, tag-based discovery, default key policy --------------------

    def list_keys(self) -> Iterator[str]:
        request: dict[str, Any] = {"Limit": LIST_KEYS_PAGE_SIZE}
        while True:
            page = self._call("ListKeys", lambda: self._client.list_keys(**request))
            for entry in page.get("Keys", []):
                yield entry["KeyArn"]
            if not page.get("Truncated") or not page.get("NextMarker"):
                return
            request["Marker"] = page["NextMarker"]

    def delete_alias(self, alias_name: str) -> None:
        self._call("DeleteAlias", lambda: self._client.delete_alias(AliasName=alias_name))

    def tag_resource(self, key_id: str, tags: Mapping[str, str]) -> None:
        pairs = [{"TagKey": k, "TagValue": v} for k, v in tags.items()]
        self._call("TagResource", lambda: self._client.tag_resource(KeyId=key_id, Tags=pairs))

    def get_resources(self, tag_filter: Mapping[str, Sequence[str]]) -> Iterator[TaggedResource]:
        tagging = self._clients.client("resourcegroupstaggingapi")
        request: dict[str, Any] = {
            "ResourceTypeFilters": ["kms:key"],
            "TagFilters": [{"Key": key, "Values": list(values)} for key, values in tag_filter.items()],
            "ResourcesPerPage": LIST_PAGE_SIZE,
        }
        while True:
            page = self._call("GetResources", lambda: tagging.get_resources(**request))
            for entry in page.get("ResourceTagMappingList", []):
                tags = {tag["Key"]: tag.get("Value", "") for tag in entry.get("Tags", [])}
                yield TaggedResource(arn=entry["ResourceARN"], tags=tags)
            token = page.get("PaginationToken")
            if not token:
                return
            request["PaginationToken"] = token

    def caller_identity(self) -> CallerIdentity:
        sts = self._clients.client("sts")
        answer = self._call("GetCallerIdentity", lambda: sts.get_caller_identity())
        return CallerIdentity(account=str(answer["Account"]), arn=str(answer["Arn"]))


def settings_for(config: plugin_config.Config) -> ClientSettings:
    """The client settings a plugin configuration asks for: credentials, region, endpoint, FIPS, role."""
    credentials = config.credentials
    role = config.assume_role
    return ClientSettings(
        region=config.region,
        access_key_id=credentials.access_key_id if credentials else None,
        secret_access_key=credentials.secret_access_key if credentials else None,
        endpoint=config.endpoint,
        use_fips_endpoint=config.use_fips_endpoint,
        assume_role=AssumeRole(role.role_arn, role.external_id, role.session_name) if role else None,
    )


def _description(metadata: Mapping[str, Any]) -> KeyDescription:
    created = metadata.get("CreationDate")
    deleted = metadata.get("DeletionDate")
    return KeyDescription(
        arn=metadata["Arn"],
        key_state=metadata.get("KeyState", ""),
        key_spec=metadata.get("KeySpec") or metadata.get("CustomerMasterKeySpec", ""),
        description=metadata.get("Description", ""),
        creation_date=created if isinstance(created, datetime.datetime) else None,
        deletion_date=deleted if isinstance(deleted, datetime.datetime) else None,
    )
