"""The README's IAM permissions table, as data: which permissions a configuration needs, and which of them
a command can try without creating or changing anything."""

from __future__ import annotations

from dataclasses import dataclass

from plugin.config import Config

# Codes AWS answers when a policy does not allow the call (KMS and the tagging API; STS).
DENIED_CODES = frozenset({"AccessDeniedException", "AccessDenied"})


@dataclass(frozen=True)
class Permission:
    action: str
    used_for: str
    # Whether trying it changes nothing (a read, or a Sign): `check` tries those and only those.
    harmless: bool


_KMS_EVERY_MODE = (
    Permission("kms:ListAliases", "finding the keys at start-up", True),
    Permission("kms:DescribeKey", "reading each key's state and type", True),
    Permission("kms:GetPublicKey", "loading each public key", True),
    Permission("kms:Sign", "signing", True),
    Permission("kms:CreateKey", "making keys", False),
    Permission("kms:CreateAlias", "naming new keys", False),
    Permission("kms:UpdateAlias", "rotating keys", False),
    Permission("kms:ScheduleKeyDeletion", "deleting replaced keys", False),
)
_DELETE_ALIAS = Permission("kms:DeleteAlias", "the disposal of silent servers' keys", False)
_LIST_KEYS = Permission("kms:ListKeys", "the disposal of keys no alias points at", True)
_TAG_RESOURCE = Permission("kms:TagResource", "tagging new keys", False)
_GET_RESOURCES = Permission("tag:GetResources", "tag-based key discovery", True)
_ASSUME_ROLE = Permission("sts:AssumeRole", "assuming role_arn", True)


def required(config: Config) -> tuple[Permission, ...]:
    """Every permission the plugin needs with this configuration, in the README's order."""
    needed = list(_KMS_EVERY_MODE)
    builtin = config.key_prefix is None
    if builtin:
        needed.append(_DELETE_ALIAS)
        needed.append(_GET_RESOURCES if config.enable_tag_based_key_discovery else _LIST_KEYS)
    if config.key_tags or (builtin and config.enable_tag_based_key_discovery):
        needed.append(_TAG_RESOURCE)
    if config.assume_role is not None:
        needed.append(_ASSUME_ROLE)
    return tuple(needed)


def for_operation(operation: str) -> str:
    """The IAM action of an AWS operation as the adapter names it ("Sign", "GetResources", "AssumeRole")."""
    service = {"GetResources": "tag", "AssumeRole": "sts", "GetCallerIdentity": "sts"}.get(operation, "kms")
    return f"{service}:{operation}"
