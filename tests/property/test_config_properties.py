"""Properties of the configuration parser and the files it names: whatever the text, an answer, a refusal
naming its key in UTF-8, and time bounded per call. Examples are derived reproducibly (the "ci" profile
of tests/conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from plugin.config import (
    KNOWN_KEYS,
    Config,
    ConfigError,
    ServerIdFile,
    check_files,
    load_server_id,
    parse_config,
    read_key_policy,
)
from plugin.keymanager import KeyManager
from plugin.lifecycle import DeletionQueue
from plugin.service import ConfigService
from proto_gen.spire.config import config_pb2, config_pb2_grpc
from tests.support.fake_kms import FakeKms

TD = "example.org"
LIMIT = 64 * 1024
# Per call, on a loaded CI runner; the largest accepted text parses in about 0.3 s.
TIME_BOUND = 2.0
# A problem quotes at most two paths of 256 characters, or 512 of a parser's detail: a line, not a page.
PROBLEM_CHARS = 700
# Configure's message is a gRPC header: its problems up to 1024 characters (the first whole), then a count.
MESSAGE_CHARS = 1100
T = TypeVar("T")

# A problem names a documented key (trust_domain is SPIRE's, in the same request), or says the text
# could not be read as a configuration at all.
_NAMES_A_KEY = re.compile(
    r"(?:(?:{keys}|trust_domain)\b"
    r'|unknown configuration key "'
    r'|the configuration key "'
    r"|the configuration is not valid HCL: "
    r"|the configuration is too large: )".format(keys="|".join(KNOWN_KEYS))
)
_SURROGATE = re.compile("[\ud800-\udfff]")
_FILE_KEYS = ("key_policy_file", "key_identifier_file", "key_metadata_file")


def timed(call: Callable[[], T]) -> T:
    started = time.monotonic()
    try:
        return call()
    finally:
        elapsed = time.monotonic() - started
        assert elapsed < TIME_BOUND, f"took {elapsed:.2f} s"


def assert_named(problems: tuple[str, ...] | list[str], limit: int = PROBLEM_CHARS) -> None:
    assert problems, "a refusal says why"
    for problem in problems:
        problem.encode("utf-8")  # what protobuf does with a Validate note
        assert not _SURROGATE.search(problem)
        assert "\n" not in problem
        assert len(problem) <= limit, problem
        assert _NAMES_A_KEY.match(problem), problem


def parse(text: str, trust_domain: str = TD) -> Config | tuple[str, ...]:
    """The Config, or the problems; any other exception fails the property."""
    try:
        return timed(lambda: parse_config(text, trust_domain))
    except ConfigError as err:
        assert_named(err.problems)
        return err.problems


# --- rendering settings as HCL and as JSON ------------------------------------------------------------


def hcl_string(text: str) -> str:
    # pyhcl's lexer cannot end a string with an escaped backslash: backslashes are tried in JSON only.
    return '"' + text.replace("\\", "/").replace('"', '\\"').replace("\n", "\\n") + '"'


def hcl_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return hcl_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(hcl_value(item) for item in value) + "]"
    assert isinstance(value, dict)
    return "{ " + " ".join(f"{hcl_string(k)} = {hcl_value(v)}" for k, v in value.items()) + " }"


def render(pairs: list[tuple[str, object]], as_json: bool) -> str:
    """Keys in order, a key given twice written twice."""
    if as_json:
        return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"
    return "".join(f"{k} = {hcl_value(v)}\n" for k, v in pairs)


# --- strategies ---------------------------------------------------------------------------------------

_REGIONS = st.sampled_from(["us-east-1", "eu-west-3", "ap-southeast-2", "us-gov-west-1", "cn-north-1"])
_NAME = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=20)
_TAG_KEY = _NAME.filter(lambda name: not name.lower().startswith(("aws", "spire")))
_TAG_VALUE = st.text("abc XYZ 019 _.:/=+-@ é値", max_size=30)


@st.composite
def valid_settings(draw: st.DrawFn) -> list[tuple[str, object]]:
    """Settings the README documents, in combinations it allows."""
    settings: dict[str, object] = {"region": draw(_REGIONS)}
    if draw(st.booleans()):
        settings["access_key_id"] = "AKID" + draw(_NAME)
        settings["secret_access_key"] = draw(_NAME)
    builtin = draw(st.booleans())
    if builtin:
        settings["key_identifier_value"] = draw(_NAME)
        if draw(st.booleans()):
            settings["enable_tag_based_key_discovery"] = draw(st.booleans())
    elif draw(st.booleans()):
        settings["key_prefix"] = draw(_NAME) + "/"
    if draw(st.booleans()):
        settings["key_tags"] = draw(st.dictionaries(_TAG_KEY, _TAG_VALUE, max_size=5))
    if draw(st.booleans()):
        settings["deletion_window_days"] = draw(st.integers(7, 30))
    if draw(st.booleans()):
        settings["role_arn"] = f"arn:aws:iam::123456789012:role/{draw(_NAME)}"
        if draw(st.booleans()):
            settings["role_external_id"] = "ext-" + draw(_NAME)
        if draw(st.booleans()):
            settings["role_session_name"] = "s-" + draw(_NAME)
    if draw(st.booleans()):
        settings["endpoint"] = "https://vpce-0123.kms.us-east-1.vpce.amazonaws.com"
    elif draw(st.booleans()):
        settings["use_fips_endpoint"] = draw(st.booleans())
    pairs = list(settings.items())
    return draw(st.permutations(pairs))


_STRING_KEYS = tuple(
    key
    for key in KNOWN_KEYS
    if key not in ("key_tags", "deletion_window_days", "enable_tag_based_key_discovery", "use_fips_endpoint")
)
_SCALARS = st.one_of(st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text())
_WRONG: dict[str, st.SearchStrategy[object]] = {
    **{key: st.one_of(st.booleans(), st.integers(), st.lists(st.text(), max_size=3)) for key in _STRING_KEYS},
    "key_tags": st.one_of(st.integers(), st.text(), st.lists(st.text(), min_size=1, max_size=3)),
    "deletion_window_days": st.one_of(
        st.booleans(), st.text(), st.floats(), st.lists(st.integers(), max_size=2)
    ),
    "enable_tag_based_key_discovery": st.one_of(st.text(), st.integers(), st.lists(st.text(), max_size=2)),
    "use_fips_endpoint": st.one_of(st.text(), st.integers(), st.lists(st.text(), max_size=2)),
}
_WITH_SURROGATES = st.text(
    st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)), max_size=20
)
_ANY_VALUE = st.recursive(
    st.one_of(_SCALARS, _WITH_SURROGATES),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_KEYS = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=12), _WITH_SURROGATES)

# Fragments an HCL text is made of, including the constructs pyhcl evaluates (arithmetic, calls,
# conditions, brackets) and characters it refuses.
_HCL_PIECES = st.sampled_from(
    [*KNOWN_KEYS, "=", ":", "{", "}", "[", "]", "(", ")", ",", '"', '"x"', "\\", "+", "-", "*", "/", "?",
     "==", "<", ">", ".", "*.", "1", "-7", "1e5", "0x1f", "true", "false", "x", "a + 1", "${a}", "<<EOF\n",
     "EOF", "\n", " ", "#", "//", "/*", "*/", "@", "é", "\t", "\0"]
)  # fmt: skip


@st.composite
def hcl_soup(draw: st.DrawFn) -> str:
    return "".join(draw(st.lists(_HCL_PIECES, max_size=40)))


@st.composite
def near_the_limit(draw: st.DrawFn) -> str:
    """A valid configuration padded to a few bytes either side of the limit, with one- to four-byte
    characters, in a comment (HCL) or in spaces (JSON)."""
    as_json = draw(st.booleans())
    text = render(draw(valid_settings()), as_json)
    size = draw(st.integers(LIMIT - 8, LIMIT + 8))
    pad = draw(st.sampled_from(["x", "é", "値", "😀"]))
    room = size - len(text.encode()) - 3
    body = pad * (room // len(pad.encode())) + "x" * (room % len(pad.encode()))
    return text + ("  " + " " * len(body.encode()) + " " if as_json else "#" + body + "\n\n")


# --- the parser ---------------------------------------------------------------------------------------


@given(valid_settings(), st.booleans())
def test_documented_settings_are_accepted_as_hcl_and_as_json(
    pairs: list[tuple[str, object]], as_json: bool
) -> None:
    config = parse(render(pairs, as_json))
    assert isinstance(config, Config), config
    settings = dict(pairs)
    assert config.region == settings["region"]
    assert dict(config.key_tags) == settings.get("key_tags", {})


@given(valid_settings(), st.sampled_from(KNOWN_KEYS), st.data(), st.booleans())
def test_every_documented_key_with_a_wrong_type_is_refused_by_name(
    pairs: list[tuple[str, object]], key: str, data: st.DataObject, as_json: bool
) -> None:
    wrong = data.draw(_WRONG[key])
    pairs = [(k, v) for k, v in pairs if k != key] + [(key, wrong)]
    problems = parse(render(pairs, as_json))
    assert isinstance(problems, tuple)
    assert any(problem.startswith(key) for problem in problems), problems


# Any text, of any length, with the characters that break a line or a quote.
_ANY_STRING = st.one_of(
    st.text(max_size=40),
    st.text(st.sampled_from('a/_-.\n\t"\\ é値😀\x00\x7f'), max_size=40),
    st.integers(65, 600).map(lambda n: "p" * n),
    _WITH_SURROGATES,
)


@given(valid_settings(), st.sampled_from(_STRING_KEYS), _ANY_STRING, st.text(max_size=300))
def test_any_text_in_a_documented_string_key_is_quoted_on_one_bounded_line(
    pairs: list[tuple[str, object]], key: str, value: str, trust_domain: str
) -> None:
    # JSON carries every character (HCL strings cannot end in a backslash), surrogates as escapes.
    pairs = [(k, v) for k, v in pairs if k != key] + [(key, value)]
    parse(render(pairs, as_json=True), trust_domain)


@given(valid_settings(), st.data(), st.booleans())
def test_a_key_given_twice_is_refused_by_name(
    pairs: list[tuple[str, object]], data: st.DataObject, as_json: bool
) -> None:
    key, value = data.draw(st.sampled_from([pair for pair in pairs if pair[0] != "key_tags"]))
    twice = data.draw(st.permutations([*pairs, (key, value)]))
    problems = parse(render(twice, as_json))
    assert isinstance(problems, tuple)
    assert f"{key} is given twice" in problems


@given(st.lists(st.tuples(_KEYS, _ANY_VALUE), max_size=6), st.booleans())
def test_any_keys_and_values_are_answered_by_name(pairs: list[tuple[str, object]], as_json: bool) -> None:
    text = render(pairs, as_json) if as_json else render([(json.dumps(k), v) for k, v in pairs], False)
    parse(text)


@given(st.one_of(hcl_soup(), st.text(), st.text(st.characters(codec="ascii"))))
@example('{"region": "\\ud800"}')
@example('a + 1 = "x"')
@example('key_tags { a + 1 = "x" }')
@example("region = [" + "1," * (LIMIT // 2 - 8) + "]")
@example("key_tags {\n" + "".join(f't{i} = "v"\n' for i in range(LIMIT // 12)) + "}")
@example('region = "' + '\\"' * (LIMIT // 2 - 8) + '"')
@example("deletion_window_days = 1" + " + 1" * (LIMIT // 4 - 10))
@example("region = " + "[" * (LIMIT // 2 - 8) + "]" * (LIMIT // 2 - 8))
@example("{" + ",".join(f'"k{i}": 1' for i in range(LIMIT // 10 - 1)) + "}")
@example("region = [" + "1," * 2_000_000 + "]")
def test_any_text_is_answered_by_name_in_bounded_time(text: str) -> None:
    parse(text)


@settings(max_examples=60)
@given(near_the_limit())
def test_the_size_limit_is_in_bytes(text: str) -> None:
    answer = parse(text)
    too_large = len(text.encode()) > LIMIT
    assert isinstance(answer, Config) is not too_large, answer
    if too_large:
        assert answer == (
            f"the configuration is too large: {len(text.encode())} bytes, at most 65536 (64 KiB) "
            "are accepted",
        )


# --- the files the configuration names ----------------------------------------------------------------

_POLICY = b'{"Version": "2012-10-17", "Statement": []}'
_SERVER_ID = b"0b3f4e0a-6b3c-4d5e-8f70-123456789abc\n"
_KINDS = (
    "missing",
    "good",
    "garbage",
    "huge",
    "fifo",
    "device",
    "directory",
    "dangling",
    "loop",
    "unreadable",
)


def make(path: Path, kind: str, good: bytes) -> str:
    if kind == "good":
        path.write_bytes(good)
    elif kind == "garbage":
        path.write_bytes(b"\xff\xfe not text")
    elif kind == "huge":
        path.write_bytes(b" " * (1 << 20))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        return "/dev/zero"
    elif kind == "directory":
        path.mkdir()
    elif kind == "dangling":
        path.symlink_to(path.parent / "nowhere")
    elif kind == "loop":
        path.symlink_to(path.parent / "loop2")
        (path.parent / "loop2").symlink_to(path)
    elif kind == "unreadable":
        path.write_bytes(good)
        path.chmod(0)
    return str(path)


def outcome(call: Callable[[], object], key: str) -> tuple[str, ...]:
    try:
        timed(call)
    except ConfigError as err:
        assert_named(err.problems)
        assert all(problem.startswith(key) for problem in err.problems), err.problems
        return err.problems
    return ()


# What a file of each kind must come to, as a part of its problem; None: accepted.
_EXPECTED = {
    "good": None,
    "garbage": "",
    "huge": "is too large",
    "fifo": "is a named pipe, not a file",
    "device": "is a character device, not a file",
    "directory": "is a directory, not a file",
    "loop": "Too many levels of symbolic links",
    # Root reads what chmod 000 forbids: then the file is judged on its content.
    "unreadable": None if os.geteuid() == 0 else "cannot be read: Permission denied",
}


@settings(max_examples=80)
@given(st.sampled_from(_FILE_KEYS), st.sampled_from(_KINDS))
def test_files_of_every_kind_are_refused_by_name_in_bounded_time(key: str, kind: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        good = _POLICY if key == "key_policy_file" else _SERVER_ID
        path = make(Path(tmp) / "file", kind, good)
        config = parse(f'region = "us-east-1"\n{key} = {hcl_string(path)}\n')
        assert isinstance(config, Config), config
        checked = outcome(lambda: _validate_files(config), key)
        if key == "key_policy_file":
            loaded = outcome(lambda: read_key_policy(path), key)
        else:
            assert config.server_id == ServerIdFile(path, key)
            loaded = outcome(lambda: load_server_id(ServerIdFile(path, key)), key)
        if kind in _EXPECTED:
            part = _EXPECTED[kind]
            for problems in (checked, loaded):
                assert (problems == ()) is (part is None), problems
                assert part is None or any(part in problem for problem in problems), problems
        elif kind == "missing" and key == "key_policy_file":
            for problems in (checked, loaded):
                assert problems == (f'key_policy_file "{path}" cannot be read: No such file or directory',)
        elif kind == "missing":  # an id file is created by Configure, with a new id
            assert checked == loaded == ()
        elif key == "key_policy_file":  # a dangling symlink
            for problems in (checked, loaded):
                assert problems == (f'key_policy_file "{path}" cannot be read: No such file or directory',)
        else:  # a dangling symlink: Validate says so, and Configure cannot create the id file through it
            target = Path(path).parent / "nowhere"
            assert checked == (f'{key} "{path}" is a symbolic link to "{target}", which does not exist',)
            assert loaded == (f'{key} "{path}" cannot be created: File exists',)


def _validate_files(config: Config) -> None:
    """check_files as Validate uses it, its notes raised as Configure would."""
    problems = check_files(config)
    if problems:
        raise ConfigError(problems)


# --- through the Config servicer, in process ----------------------------------------------------------


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


class Context:
    def time_remaining(self) -> None:
        return None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


@pytest.fixture(scope="module")
def service() -> Iterator[ConfigService]:
    keys = KeyManager(DeletionQueue())
    kms = FakeKms()
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        # chdir: a generated relative key_identifier_file is created here, not in the checkout.
        yield ConfigService(keys, lambda config: kms)
        keys.stop()


_TEXTS = st.one_of(
    valid_settings().map(lambda pairs: render(pairs, False)),
    valid_settings().map(lambda pairs: render(pairs, True)),
    st.lists(st.tuples(_KEYS, _ANY_VALUE), max_size=5).map(lambda pairs: render(pairs, True)),
    hcl_soup(),
    st.text(),
)


@settings(max_examples=150)
@given(_TEXTS, st.one_of(st.sampled_from([TD, "", "a" * 300, "example\n.org"]), st.text(max_size=300)))
@example('{"region": "\\ud800"}', TD)
@example('a + 1 = "x"', TD)
def test_validate_and_configure_answer_deliberately(
    service: ConfigService, text: str, trust_domain: str
) -> None:
    core = config_pb2.CoreConfiguration(trust_domain=trust_domain)
    validated = timed(
        lambda: service.Validate(
            config_pb2.ValidateRequest(core_configuration=core, hcl_configuration=text), Context()
        )
    )
    validated.SerializeToString()  # the step that failed on a surrogate: INTERNAL through the wire
    for note in validated.notes:
        note.encode("utf-8")
    assert validated.valid is (not validated.notes)
    request = config_pb2.ConfigureRequest(core_configuration=core, hcl_configuration=text)
    try:
        timed(lambda: service.Configure(request, Context()))
    except Aborted as aborted:
        assert aborted.code is grpc.StatusCode.INVALID_ARGUMENT, aborted
        # The problems joined with "; ", which a parser's detail may hold too: the first names its key.
        assert_named([aborted.details], MESSAGE_CHARS)
    else:
        assert validated.valid, validated.notes


# --- through a gRPC channel, in process ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stub() -> Iterator[config_pb2_grpc.ConfigStub]:
    keys = KeyManager(DeletionQueue())
    kms = FakeKms()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    config_pb2_grpc.add_ConfigServicer_to_server(ConfigService(keys, lambda config: kms), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield config_pb2_grpc.ConfigStub(channel)
    finally:
        server.stop(None)
        keys.stop()


@settings(max_examples=25)
# Names distinct within the 64 characters a problem quotes; non-ASCII goes over the wire percent-encoded.
@given(st.integers(0, 3000), st.sampled_from(["k", "é" * 40, "値" * 56]))
def test_configure_refusals_of_any_length_reach_a_grpc_client(
    stub: config_pb2_grpc.ConfigStub, count: int, name: str
) -> None:
    # Unknown keys, as many as fit the size limit: each is a problem, and the message is a header that
    # grpc's clients refuse past 16 KiB (RESOURCE_EXHAUSTED, the problems lost).
    text = json.dumps({"region": "us-east-1", **{f"{name}{i}": 1 for i in range(count)}}, ensure_ascii=False)
    if len(text.encode()) > LIMIT:
        text = text[: LIMIT // 4].rpartition(",")[0] + "}"
    try:
        timed(lambda: stub.Configure(config_pb2.ConfigureRequest(hcl_configuration=text), timeout=10))
    except grpc.RpcError as err:
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err
        assert_named([err.details()], MESSAGE_CHARS)
        assert err.details().startswith("unknown configuration key"), err.details()
    else:
        assert count == 0
    validated = timed(lambda: stub.Validate(config_pb2.ValidateRequest(hcl_configuration=text), timeout=10))
    assert len(validated.notes) == len(json.loads(text)) - 1
