"""How SPIRE key ids become KMS alias names, and back.

Two schemes, so that users of either predecessor plugin keep their keys after switching to this one:

- the community scheme: ``alias/<key_prefix><encoded key id>`` (default prefix ``SPIRE_SERVER_KEY/``);
- the built-in scheme of SPIRE's own aws_kms plugin:
  ``alias/SPIRE_SERVER/<sanitized trust domain>/<server id>/<encoded key id>``.

Everything here is pure: no I/O, no AWS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from plugin.errors import quoted

ALIAS_NAME_PREFIX = "alias/"
RESERVED_ALIAS_PREFIX = "alias/aws/"
MAX_ALIAS_LENGTH = 256
DEFAULT_KEY_PREFIX = "SPIRE_SERVER_KEY/"
BUILTIN_ALIAS_ROOT = "alias/SPIRE_SERVER/"
BUILTIN_DESCRIPTION_ROOT = "SPIRE_SERVER_KEY/"

# Tags of SPIRE's built-in aws_kms with enable_tag_based_key_discovery, spelled as it spells them, so that
# both plugins find, keep alive and reclaim each other's keys alike.
TAG_TRUST_DOMAIN = "spire-server-td"  # the trust domain as configured (dots kept)
TAG_SERVER_ID = "spire-server-id"
TAG_KEY_ID = "spire-key-id"  # the SPIRE key id, not encoded
TAG_LAST_UPDATE = "spire-last-update"  # Unix seconds, refreshed by the heartbeat
TAG_ACTIVE = "spire-active"  # "true" while managed; "false" once scheduled for deletion
SPIRE_TAGS = (TAG_TRUST_DOMAIN, TAG_SERVER_ID, TAG_KEY_ID, TAG_LAST_UPDATE, TAG_ACTIVE)

# The longest key id SPIRE itself asks for (x509-CA-A and friends are shorter). ACME bundle keys
# (bundle-acme-<id>) can be longer, so their aliases are checked when they are made, not here.
LONGEST_FIXED_KEY_ID = "JWT-Signer-A"

_ALIAS_CHARS = re.compile(r"[a-zA-Z0-9/_-]*")

CHARSET_RULE = "alias names may only contain a-z, A-Z, 0-9, /, _ and -"
RESERVED_RULE = "alias names must not start with alias/aws/ (reserved for AWS managed keys)"


def encode_key_id(key_id: str) -> str:
    # The same two substitutions, in the same order, as SPIRE's built-in aws_kms plugin, so the aliases
    # it created are found again. Other characters are left alone and may make an invalid alias.
    return key_id.replace(".", "_2e").replace("+", "_2b")


def decode_key_id(encoded: str) -> str:
    # Not a perfect inverse: a key id that itself contains "_2e" or "_2b" comes back altered. SPIRE's
    # built-in plugin has the same ambiguity and SPIRE never asks for such ids.
    return encoded.replace("_2e", ".").replace("_2b", "+")


def sanitize_trust_domain(trust_domain: str) -> str:
    return trust_domain.replace(".", "_")


def alias_name_problem(alias_name: str) -> str | None:
    """The KMS rule an alias name breaks, or None when KMS accepts it."""
    if not alias_name.startswith(ALIAS_NAME_PREFIX) or len(alias_name) == len(ALIAS_NAME_PREFIX):
        return "alias names must be alias/ followed by at least one character"
    if not _ALIAS_CHARS.fullmatch(alias_name):
        return CHARSET_RULE
    if alias_name.startswith(RESERVED_ALIAS_PREFIX):
        return RESERVED_RULE
    if len(alias_name) > MAX_ALIAS_LENGTH:
        return f"alias names may be at most {MAX_ALIAS_LENGTH} characters, not {len(alias_name)}"
    return None


def key_id_problem(scheme: AliasScheme, key_id: str) -> str | None:
    """Why a key id cannot be stored under this scheme, or None when it can. Checked before CreateKey,
    so an id that could never get its alias costs no key: its alias must be one KMS accepts, and must
    read back as the same id, or the key would be lost at the next start."""
    alias = scheme.alias_for(key_id)
    problem = alias_name_problem(alias)
    if problem is not None:
        return problem
    if scheme.key_id_for(alias) != key_id:
        return "its alias would not read back as the same key id (it holds / or an encoded _2e or _2b)"
    return None


@runtime_checkable
class AliasScheme(Protocol):
    """Maps SPIRE key ids to KMS alias names and back, and describes the keys it creates."""

    @property
    def alias_prefix(self) -> str:
        """Every alias of this scheme starts with it; ListAliases results are filtered by it."""
        ...

    def alias_for(self, key_id: str) -> str: ...

    def key_id_for(self, alias_name: str) -> str | None:
        """The SPIRE key id an alias stands for, or None when the alias is not one of this scheme's."""
        ...

    def description_for(self, key_id: str) -> str: ...


@dataclass(frozen=True)
class CommunityScheme:
    """The community plugin's naming. The prefix is the user's; it need not end in "/", in which case
    prefixes such as "spire" and "spire2" overlap, exactly as they did in the community plugin."""

    key_prefix: str = DEFAULT_KEY_PREFIX

    @property
    def alias_prefix(self) -> str:
        return ALIAS_NAME_PREFIX + self.key_prefix

    def alias_for(self, key_id: str) -> str:
        return self.alias_prefix + encode_key_id(key_id)

    def key_id_for(self, alias_name: str) -> str | None:
        prefix = self.alias_prefix
        if not alias_name.startswith(prefix) or len(alias_name) == len(prefix):
            return None
        return decode_key_id(alias_name[len(prefix) :])

    def description_for(self, key_id: str) -> str:
        return self.key_prefix + key_id


@dataclass(frozen=True)
class BuiltinScheme:
    """SPIRE's built-in aws_kms naming: one alias namespace per trust domain and server id."""

    trust_domain: str
    server_id: str

    @property
    def trust_domain_alias_prefix(self) -> str:
        """Aliases of every server of this trust domain (for finding keys a dead server left behind)."""
        return f"{BUILTIN_ALIAS_ROOT}{sanitize_trust_domain(self.trust_domain)}/"

    @property
    def trust_domain_description_prefix(self) -> str:
        return f"{BUILTIN_DESCRIPTION_ROOT}{sanitize_trust_domain(self.trust_domain)}/"

    @property
    def alias_prefix(self) -> str:
        return f"{self.trust_domain_alias_prefix}{self.server_id}/"

    def alias_for(self, key_id: str) -> str:
        return self.alias_prefix + encode_key_id(key_id)

    def key_id_for(self, alias_name: str) -> str | None:
        prefix = self.alias_prefix
        if not alias_name.startswith(prefix):
            return None
        rest = alias_name[len(prefix) :]
        # A "/" in the rest means a deeper path: the alias of a server whose id starts with ours plus
        # "/", not one of our keys.
        if not rest or "/" in rest:
            return None
        return decode_key_id(rest)

    def description_for(self, key_id: str) -> str:
        # Unencoded key id: this is what SPIRE's built-in plugin writes.
        return self.trust_domain_description_prefix + key_id

    def is_other_servers_alias(self, alias_name: str) -> bool:
        """An alias of another server of this trust domain. Both prefixes end in "/", so neither
        example.org2 nor server10 passes for example.org or server1."""
        return alias_name.startswith(self.trust_domain_alias_prefix) and self.key_id_for(alias_name) is None

    def is_trust_domain_description(self, description: str) -> bool:
        return description.startswith(self.trust_domain_description_prefix)

    def spire_tags(self, key_id: str, last_update: int) -> dict[str, str]:
        """The tags that make a key discoverable by tag (enable_tag_based_key_discovery)."""
        return {
            TAG_TRUST_DOMAIN: self.trust_domain,
            TAG_SERVER_ID: self.server_id,
            TAG_ACTIVE: "true",
            TAG_KEY_ID: key_id,
            TAG_LAST_UPDATE: str(last_update),
        }

    def own_tag_filter(self) -> dict[str, list[str]]:
        """GetResources filter for this server's managed keys."""
        return {TAG_TRUST_DOMAIN: [self.trust_domain], TAG_SERVER_ID: [self.server_id], TAG_ACTIVE: ["true"]}

    def trust_domain_tag_filter(self, active_only: bool) -> dict[str, list[str]]:
        """GetResources filter for the keys of every server of this trust domain."""
        tag_filter = {TAG_TRUST_DOMAIN: [self.trust_domain]}
        if active_only:
            tag_filter[TAG_ACTIVE] = ["true"]
        return tag_filter


def key_id_of(key: str) -> str:
    """The bare key id of a key ARN (arn:<partition>:kms:<region>:<account>:key/<id>) or of a key id."""
    return key.rsplit(":key/", 1)[-1]


def alias_problems(scheme: AliasScheme, setting: str) -> list[str]:
    """Why some alias the scheme can produce for SPIRE's fixed key ids would be refused by KMS.

    Each problem names ``setting`` (the configuration key responsible) and quotes its value, escaped
    onto one line and cut as errors.quoted cuts every quoted input (a key prefix or trust domain can
    hold a newline or kilobytes): the key prefix of a CommunityScheme; for a BuiltinScheme, the server
    id, or the trust domain when ``setting`` is "trust_domain". Characters a trust domain contributes
    are always blamed on "trust_domain", since no plugin setting can fix them.
    """
    problems: list[str] = []
    if isinstance(scheme, BuiltinScheme):
        if not _ALIAS_CHARS.fullmatch(sanitize_trust_domain(scheme.trust_domain)):
            problems.append(_invalid("trust_domain", scheme.trust_domain, CHARSET_RULE))
        value = scheme.trust_domain if setting == "trust_domain" else scheme.server_id
        # Blamed on the trust domain, the server id is a stand-in (a UUID from key_identifier_file).
        own_part = "" if setting == "trust_domain" else scheme.server_id
    elif isinstance(scheme, CommunityScheme):
        value = own_part = scheme.key_prefix
    else:
        value = own_part = scheme.alias_prefix
    if not _ALIAS_CHARS.fullmatch(own_part):
        problems.append(_invalid(setting, value, CHARSET_RULE))
    longest = scheme.alias_for(LONGEST_FIXED_KEY_ID)
    if longest.startswith(RESERVED_ALIAS_PREFIX):
        problems.append(_invalid(setting, value, RESERVED_RULE))
    if len(longest) > MAX_ALIAS_LENGTH:
        problems.append(
            _invalid(
                setting,
                value,
                f"alias names may be at most {MAX_ALIAS_LENGTH} characters, and the alias for key "
                f"{LONGEST_FIXED_KEY_ID} would have {len(longest)}",
            )
        )
    return problems


def _invalid(setting: str, value: str, rule: str) -> str:
    return f"{setting} {quoted(value)} is invalid: {rule}"
