"""The plugin's configuration: SPIRE's HCL1 ``plugin_data`` text -> a frozen Config, or every problem.

Configure and Validate share parse_config, so both report the same problems with the same words. Only
read_key_policy, load_server_id and check_files touch the file system.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import stat
import threading
import types
import unicodedata
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hcl.parser import HclParser  # type: ignore[import-untyped]

from plugin import hcl_lr
from plugin.errors import escaped, quoted
from plugin.naming import (
    DEFAULT_KEY_PREFIX,
    SPIRE_TAGS,
    AliasScheme,
    BuiltinScheme,
    CommunityScheme,
    alias_problems,
)

DEFAULT_DELETION_WINDOW_DAYS = 7
MIN_DELETION_WINDOW_DAYS = 7
MAX_DELETION_WINDOW_DAYS = 30
MAX_TAGS = 50
MAX_TAG_KEY_LENGTH = 128
MAX_TAG_VALUE_LENGTH = 256
MAX_KEY_POLICY_BYTES = 32 * 1024
# A real plugin_data block is under 2 KiB. The limit keeps a parse well under a second (pyhcl's parser is
# pure Python) and a hostile text from holding a gRPC worker.
MAX_CONFIG_BYTES = 64 * 1024
# key_tags is the deepest documented setting (a block of strings); anything nested far deeper is a mistake,
# and a bound keeps the walk over the parsed text shallow.
MAX_CONFIG_DEPTH = 16
# Values and keys quoted back in problems are cut as errors.quoted cuts them; paths to this many characters.
PATH_QUOTE_LIMIT = 256
# Configure's refusal travels as a gRPC status message, a header, and clients and proxies cap headers
# (grpc's C core at 8 KiB soft, 16 KiB hard: past that its client sees RESOURCE_EXHAUSTED and none of the
# problems). Past this many characters the message counts the problems it leaves out; Validate's notes
# carry every one.
MAX_MESSAGE_CHARS = 1024
# A server id is a UUID; a hand-edited file may add a newline or spaces, not kilobytes.
MAX_SERVER_ID_FILE_BYTES = 1024
RESERVED_TAG_PREFIX_PLUGIN = "spire-"

KNOWN_KEYS = (
    "region",
    "access_key_id",
    "secret_access_key",
    "key_prefix",
    "key_identifier_file",
    "key_identifier_value",
    "key_metadata_file",
    "key_policy_file",
    "key_tags",
    "deletion_window_days",
    "enable_tag_based_key_discovery",
    "role_arn",
    "role_external_id",
    "role_session_name",
    "endpoint",
    "use_fips_endpoint",
)
_BUILTIN_KEYS = ("key_identifier_file", "key_identifier_value", "key_metadata_file")

# Server ids read from a file are UUIDs, so only the trust domain decides whether their aliases fit.
_SERVER_ID_STAND_IN = str(uuid.UUID(int=0))

# What botocore accepts as a region name (one host label); checked here so a typo is reported against
# "region" at configuration time rather than as an endpoint error on the first KMS call.
_REGION = re.compile(r"(?![0-9]+$)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)")

_TAG_PUNCTUATION = frozenset("_.:/=+-@")

# IAM's own patterns for AssumeRole's parameters.
_ROLE_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:iam::\d{12}:role/[\w+=,.@/-]{1,512}", re.ASCII)
_EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}", re.ASCII)
_SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)
_TAG_CHARSET = "letters, digits, spaces and _ . : / = + - @"

# pyhcl's lexer quotes the offending input character in its messages; that character could belong to
# secret_access_key, so it is dropped (the line and column still point at it).
_ECHOED_CHARACTER = re.compile(r"(?<=Illegal character) '[^']*'|, got '[^']*'")

DEPRECATED_KEY_METADATA_FILE = "key_metadata_file is deprecated: use key_identifier_file instead"


@dataclass(frozen=True)
class StaticCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)


@dataclass(frozen=True)
class AssumeRole:
    role_arn: str
    external_id: str | None = None
    session_name: str = "spire-server-keymanager"


@dataclass(frozen=True)
class ServerIdFile:
    path: str
    key: str = "key_identifier_file"  # or its deprecated spelling, key_metadata_file, as configured


@dataclass(frozen=True)
class ServerIdValue:
    value: str


@dataclass(frozen=True)
class Config:
    region: str
    credentials: StaticCredentials | None
    trust_domain: str
    key_prefix: str | None
    server_id: ServerIdFile | ServerIdValue | None
    key_policy_file: str | None
    # Read-only view; left out of the hash because a mapping proxy cannot be hashed.
    key_tags: Mapping[str, str] = field(hash=False)
    deletion_window_days: int
    warnings: tuple[str, ...]
    enable_tag_based_key_discovery: bool = False
    assume_role: AssumeRole | None = None
    endpoint: str | None = None
    use_fips_endpoint: bool = False


class ConfigError(Exception):
    """Every problem found, each a sentence naming the configuration key responsible. Its message (what
    Configure answers) is summary(problems); `problems` (what Validate answers) holds them all."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__(summary(self.problems))


def summary(problems: Iterable[str], limit: int = MAX_MESSAGE_CHARS) -> str:
    """The problems joined with "; " up to `limit` characters, those past it counted instead. The first
    is always given whole: every problem is a line of a few hundred characters at most (its quotes are
    bounded), and a refusal must say at least one thing that is wrong."""
    given = tuple(problems)
    shown = list(given[:1])
    length = len(shown[0]) if shown else 0
    for problem in given[1:]:
        length += 2 + len(problem)
        if length > limit:
            break
        shown.append(problem)
    left_out = len(given) - len(shown)
    if not left_out:
        return "; ".join(shown)
    more = "1 more problem" if left_out == 1 else f"{left_out} more problems"
    return f"{'; '.join(shown)}; and {more} (spire-server validate lists every one)"


def parse_config(hcl_text: str, trust_domain: str) -> Config:
    data, problems = _parse_hcl(hcl_text)
    problems.extend(_unknown_key(key) for key in data if key not in KNOWN_KEYS)

    region = _string(data, "region", problems)
    if "region" not in data:
        problems.append("region is required")
    elif region is not None and not _blank(region, "region", problems) and not _REGION.fullmatch(region):
        problems.append(f"region {quoted(region)} is invalid: expected a region name such as us-east-1")

    credentials = _credentials(data, problems)
    key_prefix, server_id = _naming(data, trust_domain, problems)
    key_policy_file = _string(data, "key_policy_file", problems)
    if key_policy_file is not None and _blank(key_policy_file, "key_policy_file", problems):
        key_policy_file = None
    key_tags = _key_tags(data["key_tags"].values, problems) if "key_tags" in data else {}
    deletion_window_days = _deletion_window_days(data, problems)
    tag_discovery = _tag_discovery(data, key_tags, problems)
    assume_role = _assume_role(data, problems)
    endpoint, use_fips_endpoint = _endpoint(data, problems)

    if problems:
        # Two settings can lead to the same finding (key_metadata_file and key_identifier_file both
        # check the trust domain); say it once.
        raise ConfigError(dict.fromkeys(problems))
    assert region is not None  # for mypy: a missing or bad region is a problem above
    return Config(
        region=region,
        credentials=credentials,
        trust_domain=trust_domain,
        key_prefix=key_prefix,
        server_id=server_id,
        key_policy_file=key_policy_file,
        key_tags=types.MappingProxyType(key_tags),
        deletion_window_days=deletion_window_days,
        warnings=(DEPRECATED_KEY_METADATA_FILE,) if "key_metadata_file" in data else (),
        enable_tag_based_key_discovery=tag_discovery,
        assume_role=assume_role,
        endpoint=endpoint,
        use_fips_endpoint=use_fips_endpoint,
    )


def read_key_policy(path: str) -> str:
    """The key policy text, verbatim, once it is known to be a JSON object KMS could accept."""
    too_large = f"KMS key policies may be at most {MAX_KEY_POLICY_BYTES} bytes"
    text = _read_small_file(
        "key_policy_file", path, MAX_KEY_POLICY_BYTES, too_large, "cannot be read: it is not UTF-8 text"
    )
    if text is None:
        raise ConfigError([f"key_policy_file {_path(path)} cannot be read: No such file or directory"])
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError([f"key_policy_file {_path(path)} is not valid JSON: {err}"]) from None
    if not isinstance(document, dict):
        raise ConfigError(
            [
                f"key_policy_file {_path(path)} must hold a JSON object (a key policy), "
                f"not {_json_kind(document)}"
            ]
        )
    return text


def load_server_id(source: ServerIdFile | ServerIdValue) -> str:
    """The server id; a missing id file is created with a new random UUID, readable only by us."""
    if isinstance(source, ServerIdValue):
        return source.value
    text = _read_id_file(source)
    if text is None:
        try:
            return _create_id_file(source)
        except FileExistsError:
            # Another server process sharing the file created it first: use its id.
            text = _read_id_file(source)
            if text is None:
                raise ConfigError(
                    [f"{source.key} {_path(source.path)} cannot be created: File exists"]
                ) from None
    return _parse_server_id(source, text)


def read_server_id(source: ServerIdFile | ServerIdValue) -> str | None:
    """The server id as it stands, creating nothing: None when the id file does not exist yet (Configure
    would create it). For the operator commands, which must not change the machine they inspect."""
    if isinstance(source, ServerIdValue):
        return source.value
    text = _read_id_file(source)
    return None if text is None else _parse_server_id(source, text)


def check_files(config: Config) -> list[str]:
    """What Configure would find wrong with the files the configuration names; creates nothing."""
    problems: list[str] = []
    if config.key_policy_file is not None:
        try:
            read_key_policy(config.key_policy_file)
        except ConfigError as err:
            problems.extend(err.problems)
    if isinstance(config.server_id, ServerIdFile):
        source = config.server_id
        try:
            text = _read_id_file(source)
            if text is None:
                problems.extend(_creatable_problems(source))
            else:
                _parse_server_id(source, text)
        except ConfigError as err:
            problems.extend(err.problems)
    return problems


def naming_scheme(config: Config, server_id: str | None) -> AliasScheme:
    """The alias scheme for a parsed config; server_id is load_server_id's answer (built-in scheme)."""
    if config.key_prefix is not None:
        return CommunityScheme(config.key_prefix)
    if server_id is None:
        raise ValueError("the built-in naming scheme needs the server id from load_server_id")
    return BuiltinScheme(config.trust_domain, server_id)


_NOT_HCL = "the configuration is not valid HCL"
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Pairs:
    """An HCL or JSON object as written: its (key, value) pairs in order, a key given twice kept twice.
    pyhcl itself merges them (last wins, blocks merged), which would hide a mistake."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[object, object]]) -> None:
        self.pairs = pairs


@dataclass(frozen=True)
class _Expression:
    """What pyhcl would evaluate or keep as text (arithmetic, a bare name, a function call, a condition):
    HCL1 as SPIRE reads it has none of these, so no setting may be one. `text` is only kept for keys."""

    text: str = ""


_EXPRESSION = _Expression()


class _Name(str):
    """A bare identifier: a key when left of `=`, an expression when right of it."""

    __slots__ = ()


def _text(part: object) -> str:
    return part.text if isinstance(part, _Expression) else str(part)


def _appended(items: list[object], item: object) -> list[object]:
    # pyhcl builds its lists as `items + [item]`, quadratic in their length.
    items.append(item)
    return items


def _rule(parent: Any, action: Callable[[Any], object]) -> Any:
    """A grammar action replacing pyhcl's `parent`, for the same productions."""

    def rule(self: Any, p: Any) -> None:
        p[0] = action(p)

    rule.__doc__ = parent.__doc__
    # ply orders productions by their first line, which picks the start symbol and settles conflicts:
    # keep pyhcl's order, so the grammar is pyhcl's exactly.
    rule.co_firstlineno = parent.__code__.co_firstlineno  # type: ignore[attr-defined]
    return rule


def _expression(p: Any) -> _Expression:
    return _EXPRESSION


def _bare(p: Any, index: int) -> object:
    return _Name(p[index]) if p.slice[index].type == "IDENTIFIER" else p[index]


class LiteralHclParser(HclParser):  # type: ignore[misc]
    """pyhcl's grammar with actions that keep what was written instead of merging and evaluating it."""

    def objectlist_flat(self, lt: list[tuple[object, object]], replace: bool) -> _Pairs:
        return _Pairs(lt)

    p_objectlist_1 = _rule(HclParser.p_objectlist_1, lambda p: _appended(p[1], p[2]))
    p_objectlist_2 = _rule(HclParser.p_objectlist_2, lambda p: _appended(p[1], p[3]))
    p_listitems_1 = _rule(HclParser.p_listitems_1, lambda p: _appended(p[1], p[3]))
    p_objectkey_0 = _rule(HclParser.p_objectkey_0, lambda p: _bare(p, 1))
    p_objectkey_1 = _rule(HclParser.p_objectkey_1, lambda p: _Expression(" ".join(map(_text, p[1:]))))
    p_objectitem_0 = _rule(HclParser.p_objectitem_0, lambda p: (p[1], _bare(p, 3)))
    p_objectitem_2 = _rule(HclParser.p_objectitem_2, lambda p: (p[1], _EXPRESSION))
    p_objectbrackets_0 = _rule(HclParser.p_objectbrackets_0, _expression)
    p_objectbrackets_1 = _rule(HclParser.p_objectbrackets_1, _expression)
    p_booleanexp_0 = _rule(HclParser.p_booleanexp_0, _expression)
    p_function_0 = _rule(HclParser.p_function_0, _expression)
    p_function_1 = _rule(HclParser.p_function_1, _expression)
    p_function_2 = _rule(HclParser.p_function_2, _expression)
    p_function_3 = _rule(HclParser.p_function_3, _expression)
    p_list_2 = _rule(HclParser.p_list_2, _expression)
    p_listitem_1 = _rule(HclParser.p_listitem_1, _expression)
    p_listitems_3 = _rule(HclParser.p_listitems_3, lambda p: [p[1], _EXPRESSION])
    p_number_4 = _rule(HclParser.p_number_4, _expression)
    p_number_5 = _rule(HclParser.p_number_5, _expression)
    p_number_6 = _rule(HclParser.p_number_6, _expression)
    p_number_7 = _rule(HclParser.p_number_7, _expression)


# A ply parser keeps its state on itself while parsing: one per gRPC worker thread.
_parsers = threading.local()


def _hcl_parser() -> Any:
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        from plugin.hcl_tables import TABLES

        if TABLES.pyhcl_version == hcl_lr.pyhcl_version():
            parser = hcl_lr.parser(LiteralHclParser, TABLES)
        else:
            # Tables of another pyhcl (tests/unit/test_hcl_lr.py fails until they are regenerated).
            parser = LiteralHclParser()
        _parsers.parser = parser
    return parser


def _parse_hcl(text: str) -> tuple[dict[str, Any], list[str]]:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            [
                f"the configuration is too large: {size} bytes, at most {MAX_CONFIG_BYTES} (64 KiB) "
                "are accepted"
            ]
        )
    # pyhcl refuses whitespace-only input, which SPIRE may send for an empty plugin_data block.
    if not text.strip():
        return {}, []
    try:
        # As pyhcl decides: text opening with { is JSON.
        if text.lstrip().startswith("{"):
            parsed = json.loads(text, object_pairs_hook=_Pairs)
        else:
            parsed = _hcl_parser().parse(text)
    except RecursionError:
        raise ConfigError([f"{_NOT_HCL}: it is nested too deeply"]) from None
    except ValueError as err:
        # JSONDecodeError is a ValueError, and so are pyhcl's syntax errors.
        detail = escaped(_ECHOED_CHARACTER.sub("", str(err)))[:512]
        raise ConfigError([f"{_NOT_HCL}: {detail}"]) from None
    except Exception as err:
        # Other failures inside pyhcl may quote input (a secret, perhaps): name the failure only.
        raise ConfigError([f"{_NOT_HCL}: the parser failed with {type(err).__name__}"]) from None
    if not isinstance(parsed, _Pairs):
        raise ConfigError([f"{_NOT_HCL}: expected key = value settings"])
    return _settings(parsed)


def _settings(parsed: _Pairs) -> tuple[dict[str, Any], list[str]]:
    """The settings by key, and the problems in how they are written (a key given twice, an expression as
    a key). key_tags, which HCL lets one give as several blocks, keeps every value given (a _KeyTags). Text
    that cannot be judged at all is a ConfigError."""
    unreadable: list[str] = []
    problems: list[str] = []
    data: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for key, value in parsed.pairs:
        if isinstance(key, _Expression):
            problems.append(f"{_NOT_HCL}: {quoted(key.text)} is an expression, not a key")
            continue
        key = str(key)
        if _SURROGATE.search(key):
            unreadable.append(
                f"the configuration key {quoted(key)} is not valid UTF-8 text (unpaired surrogate)"
            )
            continue
        reason = _unreadable(value, 1)
        if reason is not None:
            unreadable.append(f"{key}: the value {reason}")
            continue
        counts[key] = counts.get(key, 0) + 1
        if key == "key_tags":
            data.setdefault(key, _KeyTags()).values.append(value)
        else:
            data[key] = _plain(value)
    if unreadable:
        # The rest would be judged on text the sender did not mean; these come first and alone.
        raise ConfigError(dict.fromkeys(unreadable))
    for key, count in counts.items():
        if count > 1 and key in KNOWN_KEYS and key != "key_tags":
            problems.append(f"{key} is given {_times(count)}")
    return data, problems


@dataclass
class _KeyTags:
    """Every value given for key_tags, as written."""

    values: list[object] = field(default_factory=list)


def _times(count: int) -> str:
    return "twice" if count == 2 else f"{count} times"


def _unreadable(value: object, depth: int) -> str | None:
    """Why a parsed value cannot be judged at all, or None."""
    if depth > MAX_CONFIG_DEPTH:
        return f"is nested more than {MAX_CONFIG_DEPTH} levels deep"
    if isinstance(value, str):
        return "is not valid UTF-8 text (unpaired surrogate)" if _SURROGATE.search(value) else None
    if isinstance(value, _Expression):
        return _unreadable(value.text, depth)
    if isinstance(value, list):
        children: Iterable[object] = value
    elif isinstance(value, _Pairs):
        children = (part for pair in value.pairs for part in pair)
    elif isinstance(value, dict):
        children = (part for pair in value.items() for part in pair)
    else:
        return None
    for child in children:
        reason = _unreadable(child, depth + 1)
        if reason is not None:
            return reason
    return None


def _plain(value: object) -> object:
    """A parsed value as plain data: dicts (last value wins), lists, and _EXPRESSION for expressions."""
    if isinstance(value, _Name | _Expression):
        return _EXPRESSION
    if isinstance(value, _Pairs):
        return {_text(key): _plain(item) for key, item in value.pairs}
    if isinstance(value, dict):
        return {_text(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _path(path: str) -> str:
    return quoted(path, PATH_QUOTE_LIMIT)


def _unknown_key(key: str) -> str:
    guess = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.75)
    hint = f' (did you mean "{guess[0]}"?)' if guess else ""
    return f"unknown configuration key {quoted(key)}{hint}"


def _string(data: Mapping[str, Any], key: str, problems: list[str]) -> str | None:
    """The string under key; None when absent or of another type (then a problem is recorded)."""
    if key not in data:
        return None
    value = data[key]
    if not isinstance(value, str):
        # Never the value itself: it may be a secret given the wrong shape.
        problems.append(f"{key} must be a string, not {_kind(value)}")
        return None
    return value


def _blank(value: str, key: str, problems: list[str]) -> bool:
    if value.strip():
        return False
    problems.append(f"{key} must not be empty")
    return True


def _credentials(data: Mapping[str, Any], problems: list[str]) -> StaticCredentials | None:
    access_key_id = _string(data, "access_key_id", problems)
    secret_access_key = _string(data, "secret_access_key", problems)
    if "access_key_id" in data and "secret_access_key" not in data:
        problems.append("secret_access_key is required when access_key_id is set")
    if "secret_access_key" in data and "access_key_id" not in data:
        problems.append("access_key_id is required when secret_access_key is set")
    if access_key_id is not None and _blank(access_key_id, "access_key_id", problems):
        access_key_id = None
    if secret_access_key is not None and _blank(secret_access_key, "secret_access_key", problems):
        secret_access_key = None
    if access_key_id is None or secret_access_key is None:
        return None
    return StaticCredentials(access_key_id, secret_access_key)


def _naming(
    data: Mapping[str, Any], trust_domain: str, problems: list[str]
) -> tuple[str | None, ServerIdFile | ServerIdValue | None]:
    """(key_prefix, None) for the community scheme, (None, server id source) for the built-in one."""
    builtin_keys = [key for key in _BUILTIN_KEYS if key in data]
    if "key_prefix" in data:
        for key in builtin_keys:
            problems.append(
                f"key_prefix and {key} cannot be used together: key_prefix selects the community naming "
                f"scheme, {key} the built-in one"
            )
    for first, second in (
        ("key_identifier_file", "key_identifier_value"),
        ("key_metadata_file", "key_identifier_file"),
        ("key_metadata_file", "key_identifier_value"),
    ):
        if first in data and second in data:
            problems.append(f"{first} and {second} cannot be used together: give one server id source")

    if not builtin_keys:
        key_prefix = _string(data, "key_prefix", problems) if "key_prefix" in data else DEFAULT_KEY_PREFIX
        if key_prefix is None or _blank(key_prefix, "key_prefix", problems):
            return None, None
        problems.extend(alias_problems(CommunityScheme(key_prefix), "key_prefix"))
        return key_prefix, None

    _string(data, "key_prefix", problems)
    trust_domain_ok = bool(trust_domain.strip())
    if not trust_domain_ok:
        problems.append(
            f"trust_domain is required: the built-in naming scheme ({builtin_keys[0]}) puts it in alias names"
        )
    server_id: ServerIdFile | ServerIdValue | None = None
    for key in builtin_keys:
        value = _string(data, key, problems)
        if value is None or _blank(value, key, problems):
            continue
        if key == "key_identifier_value":
            server_id = ServerIdValue(value)
            if trust_domain_ok:
                problems.extend(alias_problems(BuiltinScheme(trust_domain, value), key))
        else:
            server_id = ServerIdFile(value, key)
            if trust_domain_ok:
                problems.extend(
                    alias_problems(BuiltinScheme(trust_domain, _SERVER_ID_STAND_IN), "trust_domain")
                )
    return None, server_id


def _key_tags(given: list[object], problems: list[str]) -> dict[str, str]:
    # HCL1 allows `key_tags = {...}`, `key_tags { ... }` repeated (the blocks merge) and a list of maps.
    pairs: list[tuple[object, object]] = []
    for raw in given:
        blocks = raw if isinstance(raw, list) else [raw]
        if not all(isinstance(block, _Pairs | dict) for block in blocks):
            problems.append(f"key_tags must be a map of tag names to string values, not {_kind(_plain(raw))}")
            return {}
        for block in blocks:
            if isinstance(block, _Pairs):
                pairs.extend(block.pairs)
            elif isinstance(block, dict):
                pairs.extend(block.items())
    tags: dict[str, str] = {}
    counts: dict[str, int] = {}
    for key, value in pairs:
        if isinstance(key, _Expression):
            problems.append(
                f"key_tags key {quoted(key.text)} is invalid: tag keys are names or quoted strings, "
                "not expressions"
            )
            continue
        key = str(key)
        counts[key] = counts.get(key, 0) + 1
        if counts[key] > 1:
            continue
        tag_problems = _tag_problems(key, _plain(value))
        if tag_problems:
            problems.extend(tag_problems)
        else:
            tags[key] = str(value)
    problems.extend(
        f"key_tags {quoted(key)} is given {_times(count)}" for key, count in counts.items() if count > 1
    )
    if len(counts) > MAX_TAGS:
        problems.append(f"key_tags has {len(counts)} tags: KMS allows at most {MAX_TAGS} tags per key")
    return tags


def _tag_problems(key: str, value: object) -> list[str]:
    problems: list[str] = []
    if not 1 <= len(key) <= MAX_TAG_KEY_LENGTH:
        problems.append(
            f"key_tags key {quoted(key)} is invalid: tag keys must be 1 to {MAX_TAG_KEY_LENGTH} "
            "characters long"
        )
    if not _tag_text_ok(key):
        problems.append(f"key_tags key {quoted(key)} is invalid: tag keys may only contain {_TAG_CHARSET}")
    if key.lower().startswith("aws:"):
        problems.append(f"key_tags key {quoted(key)} is reserved: tag keys starting with aws: belong to AWS")
    if key.startswith(RESERVED_TAG_PREFIX_PLUGIN):
        problems.append(
            f"key_tags key {quoted(key)} is reserved: tag keys starting with {RESERVED_TAG_PREFIX_PLUGIN} "
            "belong to this plugin"
        )
    if not isinstance(value, str):
        problems.append(f"key_tags {quoted(key)} must be a string, not {_kind(value)}")
        return problems
    if len(value) > MAX_TAG_VALUE_LENGTH:
        problems.append(
            f"key_tags {quoted(key)} has an invalid value: tag values may be at most {MAX_TAG_VALUE_LENGTH} "
            f"characters, not {len(value)}"
        )
    if not _tag_text_ok(value):
        problems.append(
            f"key_tags {quoted(key)} has an invalid value: tag values may only contain {_TAG_CHARSET}"
        )
    return problems


def _tag_text_ok(text: str) -> bool:
    # KMS's pattern is [\p{L}\p{Z}\p{N}_.:/=+\-@]*: Unicode letters, separators and numbers count.
    return all(unicodedata.category(char)[0] in "LZN" or char in _TAG_PUNCTUATION for char in text)


def _tag_discovery(data: Mapping[str, Any], key_tags: Mapping[str, str], problems: list[str]) -> bool:
    key = "enable_tag_based_key_discovery"
    enabled = data.get(key, False)
    if not isinstance(enabled, bool):
        problems.append(f"{key} must be true or false, not {_kind(enabled)}")
        return False
    if not enabled:
        return False
    if not any(name in data for name in _BUILTIN_KEYS):
        problems.append(
            f"{key} needs the built-in naming scheme, whose keys carry a trust domain and a server id: set "
            "key_identifier_file or key_identifier_value (and not key_prefix)"
        )
    room = MAX_TAGS - len(SPIRE_TAGS)
    if len(key_tags) > room:
        problems.append(
            f"key_tags has {len(key_tags)} tags: with {key} KMS keys also carry the {len(SPIRE_TAGS)} "
            f"spire-* tags, so at most {room} may be given"
        )
    return True


def _deletion_window_days(data: Mapping[str, Any], problems: list[str]) -> int:
    if "deletion_window_days" not in data:
        return DEFAULT_DELETION_WINDOW_DAYS
    days = data["deletion_window_days"]
    # bool is an int in Python; `deletion_window_days = true` is still a mistake.
    if not isinstance(days, int) or isinstance(days, bool):
        problems.append(f"deletion_window_days must be a whole number of days, not {_kind(days)}")
        return DEFAULT_DELETION_WINDOW_DAYS
    if not MIN_DELETION_WINDOW_DAYS <= days <= MAX_DELETION_WINDOW_DAYS:
        problems.append(
            f"deletion_window_days must be between {MIN_DELETION_WINDOW_DAYS} and "
            f"{MAX_DELETION_WINDOW_DAYS}, not {days}"
        )
    return days


def _assume_role(data: Mapping[str, Any], problems: list[str]) -> AssumeRole | None:
    role_arn = _string(data, "role_arn", problems)
    external_id = _string(data, "role_external_id", problems)
    session_name = _string(data, "role_session_name", problems)
    if "role_arn" not in data:
        for key in ("role_external_id", "role_session_name"):
            if key in data:
                problems.append(f"{key} is only used with role_arn, which is not set")
        return None
    if role_arn is None:
        return None
    if not _ROLE_ARN.fullmatch(role_arn):
        problems.append(
            f"role_arn {quoted(role_arn)} is invalid: expected "
            "arn:<partition>:iam::<12-digit account>:role/<name>"
        )
    if external_id is not None and not _EXTERNAL_ID.fullmatch(external_id):
        # The external id is a shared secret between accounts: never repeat it.
        problems.append("role_external_id is invalid: it must be 2 to 1224 of a-z A-Z 0-9 + = , . @ : / - _")
    if session_name is not None and not _SESSION_NAME.fullmatch(session_name):
        problems.append(
            f"role_session_name {quoted(session_name)} is invalid: it must be 2 to 64 of "
            "a-z A-Z 0-9 + = , . @ - _"
        )
    return AssumeRole(
        role_arn=role_arn,
        external_id=external_id,
        session_name=session_name or AssumeRole.session_name,
    )


def _endpoint(data: Mapping[str, Any], problems: list[str]) -> tuple[str | None, bool]:
    endpoint = _string(data, "endpoint", problems)
    if endpoint is not None:
        parsed = urllib.parse.urlsplit(endpoint)
        if parsed.scheme not in ("https", "http") or not parsed.hostname or parsed.query or parsed.fragment:
            problems.append(
                f"endpoint {quoted(endpoint)} is invalid: expected a URL such as "
                "https://vpce-0123-abcd.kms.us-east-1.vpce.amazonaws.com"
            )
    use_fips = data.get("use_fips_endpoint", False)
    if not isinstance(use_fips, bool):
        problems.append(f"use_fips_endpoint must be true or false, not {_kind(use_fips)}")
        use_fips = False
    if use_fips and "endpoint" in data:
        problems.append(
            "endpoint and use_fips_endpoint cannot be used together: a custom endpoint is used as given, "
            "so point endpoint at a FIPS endpoint instead"
        )
    return endpoint, use_fips


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a block"
    if isinstance(value, _Expression):
        return "an expression (HCL expressions are not evaluated)"
    return type(value).__name__


def _json_kind(value: object) -> str:
    return "an array" if isinstance(value, list) else _kind(value)


def _os_reason(err: OSError) -> str:
    return err.strerror or str(err)


_NOT_A_SERVER_ID = "does not hold a server id (a UUID)"
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _read_small_file(key: str, path: str, limit: int, too_large: str, not_text: str) -> str | None:
    """The UTF-8 text of a regular file of at most `limit` bytes; None when there is no such file. The
    problems name `key`; `too_large` and `not_text` say what is wrong with such a file.

    Opened without blocking (a named pipe with no writer would hold the call, and a gRPC worker, for ever),
    refused unless it is a regular file (/dev/zero never ends), and never read past the limit."""
    if "\0" in path:
        raise ConfigError([f"{key} must not contain a NUL character"])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError([f"{key} {_path(path)} cannot be read: {_os_reason(err)}"]) from None
    try:
        mode = os.fstat(fd).st_mode
        for is_kind, kind in _FILE_KINDS:
            if is_kind(mode):
                raise ConfigError([f"{key} {_path(path)} is {kind}, not a file"])
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError([f"{key} {_path(path)} is too large: {too_large}"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{key} {_path(path)} {not_text}"]) from None


def _read_id_file(source: ServerIdFile) -> str | None:
    """The id file's text, or None when there is no such file."""
    too_large = f"a server id (a UUID) takes 36 bytes, not more than {MAX_SERVER_ID_FILE_BYTES}"
    return _read_small_file(source.key, source.path, MAX_SERVER_ID_FILE_BYTES, too_large, _NOT_A_SERVER_ID)


def _parse_server_id(source: ServerIdFile, text: str) -> str:
    # SPIRE's built-in plugin parses the file as a UUID and uses its canonical (lower-case) form; doing the
    # same keeps its aliases. A trailing newline from a hand edit is forgiven.
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        # The content is not echoed: a mistyped path could point at a file holding secrets.
        raise ConfigError([f"{source.key} {_path(source.path)} {_NOT_A_SERVER_ID}"]) from None


def _create_id_file(source: ServerIdFile) -> str:
    path, key = source.path, source.key
    server_id = str(uuid.uuid4())
    try:
        # O_EXCL: never overwrite an id another process has just written.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise
    except OSError as err:
        raise ConfigError([f"{key} {_path(path)} cannot be created: {_os_reason(err)}"]) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as id_file:
            # The umask may have taken more than we asked for; the file must stay ours to read and fix.
            os.fchmod(id_file.fileno(), 0o600)
            id_file.write(server_id)
            id_file.flush()
            os.fsync(id_file.fileno())
    except OSError as err:
        # An empty id file would stop the next start; leave nothing rather than that.
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise ConfigError([f"{key} {_path(path)} cannot be written: {_os_reason(err)}"]) from None
    return server_id


def _creatable_problems(source: ServerIdFile) -> list[str]:
    path, key = source.path, source.key
    if os.path.islink(path):
        # Creating through it would fail with "File exists" at Configure.
        return [f"{key} {_path(path)} is a symbolic link to {_path(os.readlink(path))}, which does not exist"]
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        return [f"{key} {_path(path)} cannot be created: directory {_path(parent)} does not exist"]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"{key} {_path(path)} cannot be created: directory {_path(parent)} is not writable"]
    return []
