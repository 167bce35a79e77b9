"""SPIRE's server.conf, read as far as the commands need it: the trust domain and the KeyManager plugin
blocks, each with the plugin_data text SPIRE would hand the plugin. plugin_data itself is not parsed here:
it goes, as written, to plugin.config.parse_config, the parser Configure and Validate use.

server.conf holds other plugins' secrets (a DataStore's connection string, say), so no error here quotes
the file's content: problems name a line, a setting or a plugin name.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hcl.lexer import Lexer  # type: ignore[import-untyped]

from plugin.errors import quoted

# A server.conf is a few KiB; the bound keeps a wrong path (a log file, a disk image) from being read whole.
MAX_FILE_BYTES = 1024 * 1024
KEY_MANAGER = "KeyManager"
PLUGIN_DATA = "plugin_data"
PLUGIN_DATA_FILE = "plugin_data_file"


class ServerConfError(Exception):
    """server.conf (or a file it names) cannot be used; the message names what and where, never quotes
    the file's content."""


@dataclass(frozen=True)
class PluginBlock:
    """One `KeyManager "<name>" { ... }` block."""

    name: str
    plugin_cmd: str | None
    plugin_checksum: str | None
    # plugin_data as written (HCL, or JSON in a JSON server.conf); None when plugin_data_file gives it.
    plugin_data: str | None
    plugin_data_file: str | None
    enabled: bool = True


@dataclass(frozen=True)
class ServerConf:
    trust_domain: str | None
    key_managers: tuple[PluginBlock, ...]


@dataclass(frozen=True)
class _Block:
    """An object whose text is kept as written (plugin_data)."""

    text: str


_OBJECT = object()  # marks that an object (block) exists at a path, whatever it holds
_LITERALS = ("STRING", "NUMBER", "FLOAT", "BOOL")


def read_file(path: str, what: str) -> str:
    """The UTF-8 text of a regular file of at most MAX_FILE_BYTES. Opened without blocking and refused
    unless it is a regular file, so a named pipe or /dev/zero cannot hold the command."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ServerConfError(f"{what} {quoted(path, 256)} cannot be read: {err.strerror or err}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ServerConfError(f"{what} {quoted(path, 256)} is not a regular file")
        data = os.read(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise ServerConfError(f"{what} {quoted(path, 256)} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ServerConfError(f"{what} {quoted(path, 256)} is not UTF-8 text") from None


_ENV_REFERENCE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*|[0-9*#$@!?-]))")


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    """$NAME and ${NAME} replaced by their values, unset ones by nothing: what `spire-server run
    -expandEnv` does to server.conf (Go's os.ExpandEnv)."""
    return _ENV_REFERENCE.sub(lambda match: environ.get(match.group(1) or match.group(2), ""), text)


def parse_server_conf(text: str) -> ServerConf:
    """The trust domain and KeyManager blocks of a server.conf in HCL or JSON."""
    entries = _json_entries(text) if text.lstrip().startswith("{") else _hcl_entries(text)
    values: dict[tuple[str, ...], object] = {}
    for path, value in entries:
        if value is _OBJECT:
            values.setdefault(path, _OBJECT)
            continue
        if values.get(path, _OBJECT) is not _OBJECT:
            raise ServerConfError(f"{'.'.join(path)} is given twice in server.conf")
        values[path] = value
    trust_domain = values.get(("server", "trust_domain"))
    if trust_domain is not None and not isinstance(trust_domain, str):
        raise ServerConfError("server.trust_domain in server.conf must be a string")
    names = dict.fromkeys(
        path[2] for path in values if len(path) > 2 and path[:2] == ("plugins", KEY_MANAGER)
    )
    return ServerConf(
        trust_domain=trust_domain,
        key_managers=tuple(_plugin_block(name, values) for name in names),
    )


def _plugin_block(name: str, values: Mapping[tuple[str, ...], object]) -> PluginBlock:
    prefix = ("plugins", KEY_MANAGER, name)
    where = f'KeyManager "{name}"'

    def setting(key: str, kind: type) -> Any:
        value = values.get((*prefix, key))
        if value is not None and not isinstance(value, kind):
            raise ServerConfError(f"{key} of {where} in server.conf must be a {kind.__name__}")
        return value

    plugin_data = values.get((*prefix, PLUGIN_DATA))
    if plugin_data is _OBJECT:
        plugin_data = None
    if plugin_data is not None and not isinstance(plugin_data, _Block):
        raise ServerConfError(f"plugin_data of {where} in server.conf must be a block")
    data_file = setting(PLUGIN_DATA_FILE, str)
    if plugin_data is not None and data_file is not None:
        raise ServerConfError(f"{where} in server.conf has both plugin_data and plugin_data_file: give one")
    enabled = setting("enabled", bool)
    return PluginBlock(
        name=name,
        plugin_cmd=setting("plugin_cmd", str),
        plugin_checksum=setting("plugin_checksum", str),
        plugin_data=plugin_data.text if plugin_data is not None else None,
        plugin_data_file=data_file,
        enabled=enabled is not False,
    )


def choose_key_manager(conf: ServerConf, name: str | None, program: str | None) -> PluginBlock:
    """The KeyManager block to check: the one named, else the one whose plugin_cmd is this program, else
    the only one."""
    blocks = [block for block in conf.key_managers if block.enabled]
    names = ", ".join(f'"{block.name}"' for block in conf.key_managers) or "none"
    if name is not None:
        for block in conf.key_managers:
            if block.name == name:
                return block
        raise ServerConfError(f"server.conf has no KeyManager {quoted(name)} (it has: {names})")
    if program is not None:
        ours = [block for block in blocks if block.plugin_cmd and same_file(block.plugin_cmd, program)]
        if len(ours) == 1:
            return ours[0]
    if len(blocks) == 1:
        return blocks[0]
    if not blocks:
        raise ServerConfError(f"server.conf has no enabled KeyManager plugin (KeyManager blocks: {names})")
    raise ServerConfError(
        f"server.conf has several KeyManager plugins ({names}): choose one with --plugin-name"
    )


def same_file(one: str, other: str) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return os.path.realpath(one) == os.path.realpath(other)


def bare_plugin_data(text: str) -> str:
    """A bare plugin_data file's text, for the plugin: its content, also when it is wrapped in a
    `plugin_data { ... }` block of its own."""
    try:
        tokens = _Tokens(text).tokens
    except ServerConfError:
        return text  # the plugin's parser says what is wrong with it
    kinds = [token.type for token in tokens]
    opening = 2 if kinds[1:2] == ["EQUAL"] else 1
    wrapped = (
        len(tokens) > opening + 1
        and kinds[0] == "IDENTIFIER"
        and tokens[0].value == PLUGIN_DATA
        and kinds[opening] == "LEFTBRACE"
        and kinds[-1] == "RIGHTBRACE"
        and _closing(kinds, opening) == len(tokens) - 1
    )
    return text[tokens[opening].lexpos + 1 : tokens[-1].lexpos] if wrapped else text


def _closing(kinds: list[str], opening: int) -> int:
    """The index of the brace closing the one at `opening`."""
    depth = 0
    for index in range(opening, len(kinds)):
        depth += {"LEFTBRACE": 1, "RIGHTBRACE": -1}.get(kinds[index], 0)
        if depth == 0:
            return index
    return -1


# -- HCL ----------------------------------------------------------------------------------------------


class _Tokens:
    def __init__(self, text: str) -> None:
        lexer = Lexer()
        lexer.input(text)
        self.tokens: list[Any] = []
        try:
            while (token := lexer.token()) is not None:
                self.tokens.append(token)
        except ValueError as err:
            # pyhcl names the offending character, which could belong to a secret: keep its position.
            where, _, what = str(err).partition(": ")
            raise ServerConfError(
                f"server.conf is not valid HCL: {where.split(', index')[0].lower()}: "
                f"{what.split(chr(39))[0].strip()}"
            ) from None
        self.position = 0

    def peek(self) -> Any:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> Any:
        token = self.peek()
        if token is None:
            raise ServerConfError("server.conf is not valid HCL: it ends inside a block or list")
        self.position += 1
        return token


def _unexpected(token: Any) -> ServerConfError:
    if token is None:
        return ServerConfError("server.conf is not valid HCL: it ends too early")
    kind = {"RIGHTBRACE": "}", "LEFTBRACE": "{", "EQUAL": "="}.get(token.type, token.type.lower())
    return ServerConfError(f"server.conf is not valid HCL: unexpected {kind} on line {token.lineno}")


def _hcl_entries(text: str) -> Iterator[tuple[tuple[str, ...], object]]:
    tokens = _Tokens(text)
    yield from _items(tokens, text, ())
    if tokens.peek() is not None:
        raise _unexpected(tokens.peek())


def _items(tokens: _Tokens, text: str, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], object]]:
    while (token := tokens.peek()) is not None and token.type != "RIGHTBRACE":
        keys: list[str] = []
        while (token := tokens.peek()) is not None and token.type in ("IDENTIFIER", "STRING"):
            keys.append(str(tokens.take().value))
        if not keys:
            raise _unexpected(token)
        token = tokens.peek()
        if token is not None and token.type == "EQUAL":
            tokens.take()
            yield from _value(tokens, text, (*path, *keys))
        elif token is not None and token.type == "LEFTBRACE":
            yield from _object(tokens, text, (*path, *keys))
        else:
            raise _unexpected(token)
        if (token := tokens.peek()) is not None and token.type == "COMMA":
            tokens.take()


def _value(tokens: _Tokens, text: str, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], object]]:
    token = tokens.peek()
    if token is None:
        raise _unexpected(token)
    if token.type == "LEFTBRACE":
        yield from _object(tokens, text, path)
    elif token.type == "LEFTBRACKET":
        yield path, _list(tokens, text, path)
    elif token.type in _LITERALS:
        value = tokens.take().value
        # pyhcl lexes 1e3 as a number, an exponent sign and a number.
        while (token := tokens.peek()) is not None and token.type in ("EPLUS", "EMINUS"):
            tokens.take()
            tokens.take()
        yield path, value
    else:
        # SPIRE's HCL has no expressions: a bare name or an operator here is a mistake.
        raise _unexpected(token)


def _list(tokens: _Tokens, text: str, path: tuple[str, ...]) -> list[object]:
    tokens.take()
    items: list[object] = []
    while (token := tokens.peek()) is not None and token.type != "RIGHTBRACKET":
        for item_path, value in _value(tokens, text, path):
            if item_path == path:
                items.append(value)
        if (token := tokens.peek()) is not None and token.type == "COMMA":
            tokens.take()
        elif token is None or token.type != "RIGHTBRACKET":
            raise _unexpected(token)
    tokens.take()
    return items


def _object(tokens: _Tokens, text: str, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], object]]:
    opening = tokens.take()
    yield path, _OBJECT
    if path and path[-1] == PLUGIN_DATA:
        # Kept as written, between its braces: the plugin's own parser judges it. Braces inside strings,
        # heredocs and comments are inside their tokens, so counting brace tokens finds its end.
        depth = 1
        while depth:
            token = tokens.take()
            depth += {"LEFTBRACE": 1, "RIGHTBRACE": -1}.get(token.type, 0)
        yield path, _Block(text[opening.lexpos + 1 : token.lexpos])
        return
    yield from _items(tokens, text, path)
    token = tokens.peek()
    if token is None or token.type != "RIGHTBRACE":
        raise _unexpected(token)
    tokens.take()


# -- JSON ---------------------------------------------------------------------------------------------


class _JsonObject:
    """A JSON object as written, a key given twice kept twice (as plugin.config reads plugin_data)."""

    def __init__(self, pairs: list[tuple[str, object]]) -> None:
        self.pairs = pairs


def _json_entries(text: str) -> Iterator[tuple[tuple[str, ...], object]]:
    try:
        document = json.loads(text, object_pairs_hook=_JsonObject)
    except RecursionError:
        raise ServerConfError("server.conf is not valid JSON: it is nested too deeply") from None
    except json.JSONDecodeError as err:
        raise ServerConfError(
            f"server.conf is not valid JSON: line {err.lineno}, column {err.colno}"
        ) from None
    if not isinstance(document, _JsonObject):
        raise ServerConfError("server.conf is not valid JSON: expected an object")
    yield from _json_object(document, ())


def _json_object(document: _JsonObject, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], object]]:
    yield path, _OBJECT
    for key, value in document.pairs:
        yield from _json_value(value, (*path, key))


def _json_value(value: object, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], object]]:
    # HCL's JSON form may give a block as a list of objects; they merge.
    if isinstance(value, list) and value and all(isinstance(item, _JsonObject) for item in value):
        for item in value:
            yield from _json_value(item, path)
    elif isinstance(value, _JsonObject) and path[-1] == PLUGIN_DATA:
        yield path, _OBJECT
        yield path, _Block(_json_text(value))
    elif isinstance(value, _JsonObject):
        yield from _json_object(value, path)
    else:
        yield path, value


def _json_text(value: object) -> str:
    if isinstance(value, _JsonObject):
        return "{" + ", ".join(f"{json.dumps(key)}: {_json_text(item)}" for key, item in value.pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_json_text(item) for item in value) + "]"
    return json.dumps(value)
