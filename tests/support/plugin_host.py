"""A test host that starts and drives the plugin exactly as SPIRE Server does (wire spec, sections 1-3 and 8).

    with start_plugin([sys.executable, "-m", "plugin"], cwd=REPO) as plugin:
        plugin.configure('region = "us-east-2"')
        key = plugin.generate_key("x509-CA-A", keymanager_pb2.EC_P256).public_key
        pids = plugin.all_pids()
        assert plugin.shutdown() == 0
        assert wait_all_gone(pids, 2.0) == []
        assert hclog_problems(plugin.raw_stderr()) == []

`start_plugin` spawns the command with go-plugin's environment, checks the handshake line strictly, connects,
opens the broker (and stdio) streams and calls Init, as SPIRE's catalog does. `shutdown()` follows SPIRE's
order (Deinit, broker close, GRPCController/Shutdown, 2 s grace, SIGKILL); `kill()` is what SPIRE's
Pdeathsig does when SPIRE dies. Leaving the `with` block (or interpreter exit) SIGKILLs whatever is left of
the process tree, so a test can never leak a plugin.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import random
import re
import select
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any

import grpc
from google.protobuf import empty_pb2

from proto_gen.goplugin import (
    broker_pb2,
    broker_pb2_grpc,
    controller_pb2,
    controller_pb2_grpc,
    stdio_pb2,
    stdio_pb2_grpc,
)
from proto_gen.health import health_pb2_grpc
from proto_gen.spire.config import config_pb2, config_pb2_grpc
from proto_gen.spire.init import init_pb2, init_pb2_grpc
from proto_gen.spire.keymanager import keymanager_pb2, keymanager_pb2_grpc

KEYMANAGER_SERVICE = "spire.plugin.server.keymanager.v1.KeyManager"
CONFIG_SERVICE = "spire.service.common.config.v1.Config"

# What go-plugin adds to SPIRE's own environment (§1); the magic cookie's key and value are the plugin type.
GO_PLUGIN_ENV: Mapping[str, str] = {
    "KeyManager": "KeyManager",
    "PLUGIN_PROTOCOL_VERSIONS": "1",
    "PLUGIN_MIN_PORT": "10000",
    "PLUGIN_MAX_PORT": "25000",
}
# SPIRE turns AutoMTLS off and neither multiplexes nor picks the socket directory.
NEVER_SET_ENV = ("PLUGIN_CLIENT_CERT", "PLUGIN_UNIX_SOCKET_DIR", "PLUGIN_MULTIPLEX_GRPC")

HANDSHAKE_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
INIT_TIMEOUT = 60.0
KEYMANAGER_CALL_TIMEOUT = 30.0
DEINIT_TIMEOUT = 10.0
SHUTDOWN_GRACE = 2.0
# SPIRE sends GRPCController/Shutdown with no deadline; this cap only keeps a stuck plugin from hanging tests.
CONTROLLER_SHUTDOWN_CAP = 10.0
# How long a forced cleanup waits for each step; all cleanup is bounded.
CLEANUP_WAIT = 5.0

HCLOG_LEVELS = frozenset({"trace", "debug", "info", "warn", "error"})
HCLOG_TIMESTAMP_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
# go-plugin reads stderr with a 64 KiB bufio.Reader: a longer line is split and logged raw.
MAX_STDERR_LINE_BYTES = 64 * 1024 - 1

_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.enable_http_proxy", 0),
)
_TIMESTAMP_RE = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.\d{6}(?:Z|[+-](\d{2}):(\d{2}))")

LogEntry = dict[str, Any]


class PluginStartError(AssertionError):
    """The plugin did not come up the way SPIRE needs it to; the message carries its exit code and stderr."""


class HandshakeError(ValueError):
    """The first stdout line is not a handshake line SPIRE (go-plugin) would accept."""


# --------------------------------------------------------------------------------------------------------
# Handshake line (§2)


@dataclass(frozen=True)
class Handshake:
    core_version: int
    app_version: int
    network: str
    address: str
    protocol: str


def parse_handshake(line: bytes) -> Handshake:
    """Parse the first stdout line (without its newline) strictly: `1|1|unix|/path|grpc` with at most an
    empty 6th field."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HandshakeError("not UTF-8") from err
    if text != text.strip():
        raise HandshakeError("leading or trailing whitespace")
    fields = text.split("|")
    if len(fields) == 6 and fields[5] == "":
        fields = fields[:5]
    if len(fields) != 5:
        raise HandshakeError(
            f"{len(fields)} fields; want CORE|APP|NETWORK|ADDRESS|PROTOCOL, optionally with an empty 6th"
        )
    core, app, network, address, protocol = fields
    if core != "1":
        raise HandshakeError(f"core protocol version {core!r}, want '1'")
    if app != "1":
        raise HandshakeError(f"app protocol version {app!r}, want '1'")
    if network not in ("unix", "tcp"):
        raise HandshakeError(f"network {network!r}, want 'unix' or 'tcp'")
    if network == "unix" and not os.path.isabs(address):
        raise HandshakeError(f"unix socket address {address!r} is not an absolute path")
    if network == "tcp":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise HandshakeError(f"tcp address {address!r} is not host:port")
    if protocol != "grpc":
        raise HandshakeError(f"protocol {protocol!r}, want 'grpc' (an omitted protocol means net/rpc)")
    return Handshake(core_version=1, app_version=1, network=network, address=address, protocol=protocol)


def plugin_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment SPIRE gives the plugin: its own (a copy of `base`, default os.environ) plus go-plugin's
    variables, and never the ones SPIRE leaves unset."""
    env = dict(os.environ if base is None else base)
    for name in NEVER_SET_ENV:
        env.pop(name, None)
    env.update(GO_PLUGIN_ENV)
    return env


# --------------------------------------------------------------------------------------------------------
# hclog JSON on stderr (§7)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json_object(line: str) -> LogEntry | None:
    """The line as a JSON object, or None if it is not one (NaN and Infinity are not JSON for Go either)."""
    try:
        value = json.loads(line, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _valid_timestamp(value: str) -> bool:
    match = _TIMESTAMP_RE.fullmatch(value)
    if match is None:
        return False
    try:
        datetime.datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return False
    offset_hours, offset_minutes = match[2], match[3]
    return offset_hours is None or (int(offset_hours) < 24 and int(offset_minutes) < 60)


def hclog_line_problems(line: str) -> list[str]:
    """What is wrong with one stderr line as an hclog JSON entry SPIRE can use (empty if nothing)."""
    if len(line.encode("utf-8", "surrogatepass")) > MAX_STDERR_LINE_BYTES:
        return ["longer than 64 KiB: SPIRE splits it and logs the pieces raw"]
    entry = _parse_json_object(line)
    if entry is None:
        return ["not a JSON object: SPIRE logs it raw at DEBUG"]
    problems: list[str] = []
    for key in ("@level", "@message", "@timestamp"):
        if key not in entry:
            problems.append(f"no {key}")
        elif not isinstance(entry[key], str):
            problems.append(f"{key} is {_json_type(entry[key])}, not a string: SPIRE panics")
    level = entry.get("@level")
    if isinstance(level, str) and level not in HCLOG_LEVELS:
        problems.append(f"@level {level!r} is not one of trace|debug|info|warn|error")
    timestamp = entry.get("@timestamp")
    if isinstance(timestamp, str) and not _valid_timestamp(timestamp):
        problems.append(f"@timestamp {timestamp!r} does not follow {HCLOG_TIMESTAMP_LAYOUT}")
    return problems


def hclog_problems(lines: Sequence[str]) -> list[str]:
    """One description per problem for every stderr line that is not hclog JSON as SPIRE needs it."""
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        preview = line if len(line) <= 200 else line[:200] + "..."
        problems.extend(
            f"stderr line {number}: {problem}: {preview!r}" for problem in hclog_line_problems(line)
        )
    return problems


# --------------------------------------------------------------------------------------------------------
# Processes (/proc)


@dataclass(frozen=True)
class _ProcStat:
    pid: int
    ppid: int
    state: str
    start_time: int  # clock ticks after boot: tells a pid apart from a later process reusing it


def _read_stat(pid: int) -> _ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            raw = stat_file.read().decode("utf-8", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces and parentheses.
    rest = raw[raw.rfind(")") + 2 :].split()
    try:
        return _ProcStat(pid=pid, ppid=int(rest[1]), state=rest[0], start_time=int(rest[19]))
    except (IndexError, ValueError):
        return None


def _process_table() -> dict[int, _ProcStat]:
    table: dict[int, _ProcStat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _read_stat(int(name))) is not None:
            table[stat.pid] = stat
    return table


def _descendants(root: int, table: Mapping[int, _ProcStat]) -> list[_ProcStat]:
    children: dict[int, list[_ProcStat]] = {}
    for stat in table.values():
        children.setdefault(stat.ppid, []).append(stat)
    found: list[_ProcStat] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child.pid)
    return found


def _is_alive(pid: int) -> bool:
    """A zombie has exited; only its parent (maybe a PID 1 that never reaps) keeps its /proc entry."""
    stat = _read_stat(pid)
    return stat is not None and stat.state not in ("Z", "X", "x")


def wait_all_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until none of `pids` is alive (zombies count as gone); returns the survivors."""
    deadline = time.monotonic() + timeout
    while True:
        survivors = [pid for pid in pids if _is_alive(pid)]
        if not survivors or time.monotonic() >= deadline:
            return survivors
        time.sleep(0.02)


def _sigkill(pid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------------------
# Pipes and streams


class _PipeReader:
    """Reads one pipe on a daemon thread and hands each line (without its newline) to `on_line`; the
    unterminated tail, if any, goes to `on_end`. `stop()` ends the thread even if the pipe stays open."""

    def __init__(
        self,
        pipe: IO[bytes],
        name: str,
        on_line: Callable[[bytes, float], None],
        on_end: Callable[[bytes], None],
    ) -> None:
        self._pipe = pipe
        self._on_line = on_line
        self._on_end = on_end
        self._stop = threading.Event()
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        fd = self._pipe.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        pending = b""
        try:
            while not self._stop.is_set():
                events = poller.poll(100)
                if not events:
                    continue
                if any(event & select.POLLNVAL for _, event in events):
                    break
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                now = time.monotonic()
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._on_line(line, now)
        except OSError:
            pass
        finally:
            self._on_end(pending)
            self.ended.set()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            with suppress(OSError):
                self._pipe.close()


class _StreamWatch:
    """Consumes a server-streaming call's answers on a daemon thread and records how the stream ended."""

    def __init__(self, call: Any, name: str) -> None:
        self.call = call
        self.messages: list[Any] = []
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.ended = threading.Event()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            for message in self.call:
                self.messages.append(message)
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            self.code = err.code()
            self.details = err.details() or ""
        except Exception as err:
            self.code = grpc.StatusCode.UNKNOWN
            self.details = repr(err)
        finally:
            self.ended.set()

    def cancel(self) -> None:
        with suppress(Exception):
            self.call.cancel()


@dataclass(frozen=True)
class _Stubs:
    broker: broker_pb2_grpc.GRPCBrokerStub
    stdio: stdio_pb2_grpc.GRPCStdioStub
    controller: controller_pb2_grpc.GRPCControllerStub
    health: health_pb2_grpc.HealthStub
    init: init_pb2_grpc.InitStub
    config: config_pb2_grpc.ConfigStub
    keymanager: keymanager_pb2_grpc.KeyManagerStub


def _rpc_code(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


# --------------------------------------------------------------------------------------------------------
# The plugin process

_LIVE: weakref.WeakSet[PluginProcess] = weakref.WeakSet()


@dataclass(eq=False)
class PluginProcess:
    """A plugin started by `start_plugin`; use it as a context manager."""

    command: list[str]
    process: subprocess.Popen[bytes]
    spawned_at: float  # time.monotonic() just before the spawn
    call_timeout: float = KEYMANAGER_CALL_TIMEOUT  # SPIRE's deadline on every KeyManager call
    # Where a path the plugin names is on the host (a plugin in a container names paths inside it).
    path_on_host: Callable[[str], str] = os.path.abspath

    # Filled in by start_plugin.
    handshake_line: str = ""
    handshake: Handshake | None = None
    handshake_seconds: float | None = None  # spawn to the handshake line
    socket_path: str | None = None  # unix network only
    socket_dir: str | None = None
    broker_address: str = ""  # the host-services address announced on the broker stream (fake by default)
    host_service_names: list[str] = field(default_factory=list)  # what Init says the host serves
    plugin_service_names: list[str] = field(default_factory=list)

    # Filled in by shutdown().
    deinit_code: grpc.StatusCode | None = None
    deinit_details: str = ""
    controller_shutdown_code: grpc.StatusCode | None = None
    shutdown_seconds: float | None = None  # GRPCController/Shutdown sent to process exit

    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _stderr_raw: list[str] = field(default_factory=list, repr=False)
    _stderr_logs: list[LogEntry] = field(default_factory=list, repr=False)
    _stdout_rest: list[str] = field(default_factory=list, repr=False)
    _first_stdout: bytes | None = field(default=None, repr=False)
    _first_stdout_complete: bool = field(default=False, repr=False)
    _first_stdout_at: float = field(default=0.0, repr=False)
    _first_stdout_ready: threading.Event = field(default_factory=threading.Event, repr=False)
    _readers: list[_PipeReader] = field(default_factory=list, repr=False)
    _channel: Any = field(default=None, repr=False)
    _stubs: _Stubs | None = field(default=None, repr=False)
    _broker_close: threading.Event = field(default_factory=threading.Event, repr=False)
    _broker: _StreamWatch | None = field(default=None, repr=False)
    _stdio: _StreamWatch | None = field(default=None, repr=False)
    _seen: dict[int, int] = field(default_factory=dict, repr=False)  # descendant pid -> start time
    _client_released: bool = field(default=False, repr=False)
    _host_killed: bool = field(default=False, repr=False)
    _closed: bool = field(default=False, repr=False)

    # ---- process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def is_running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """The exit code; raises subprocess.TimeoutExpired if the process is still running after `timeout`."""
        return self.process.wait(timeout)

    def descendant_pids(self) -> list[int]:
        """Pids of every process descended from the spawned one (the binary's Python child, ...).

        While the process runs this is read from /proc now; once it has exited, the descendants seen while it
        ran (at the handshake, after Init, at shutdown/kill and at every call of this method)."""
        if self.is_running():
            return [stat.pid for stat in self._snapshot_tree()]
        with self._cond:
            return list(self._seen)

    def all_pids(self) -> list[int]:
        """The spawned process and all its descendants: what must be gone after shutdown or kill."""
        return [self.pid, *self.descendant_pids()]

    def _snapshot_tree(self) -> list[_ProcStat]:
        # An unreaped root keeps its pid, so a pid reused by another process cannot be walked by mistake.
        if self.process.poll() is not None:
            return []
        found = _descendants(self.process.pid, _process_table())
        with self._cond:
            for stat in found:
                self._seen.setdefault(stat.pid, stat.start_time)
        return found

    # ---- output

    def raw_stderr(self) -> list[str]:
        """Every stderr line so far, without its newline."""
        with self._cond:
            return list(self._stderr_raw)

    def log_lines(self) -> list[LogEntry]:
        """The stderr lines that are JSON objects, parsed."""
        with self._cond:
            return list(self._stderr_logs)

    def stdout_after_handshake(self) -> list[str]:
        """What the plugin wrote to stdout after the handshake line (SPIRE throws it away)."""
        with self._cond:
            return list(self._stdout_rest)

    def wait_for_log(self, match: str | Callable[[LogEntry], bool], timeout: float = 10.0) -> LogEntry:
        """The first log entry whose @message contains `match` (or for which `match` is true), waiting for
        it up to `timeout`; AssertionError if none comes."""

        def matches(entry: LogEntry) -> bool:
            if isinstance(match, str):
                message = entry.get("@message")
                return isinstance(message, str) and match in message
            return match(entry)

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for entry in self._stderr_logs:
                    if matches(entry):
                        return entry
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no log line matching {match!r} within {timeout:g} s")
                self._cond.wait(remaining)

    def _on_stdout_line(self, line: bytes, at: float) -> None:
        with self._cond:
            if self._first_stdout is None:
                self._first_stdout, self._first_stdout_complete, self._first_stdout_at = line, True, at
                self._first_stdout_ready.set()
            else:
                self._stdout_rest.append(line.decode("utf-8", "replace"))

    def _on_stdout_end(self, tail: bytes) -> None:
        with self._cond:
            if self._first_stdout is None:
                self._first_stdout = tail
            elif tail:
                self._stdout_rest.append(tail.decode("utf-8", "replace"))
        self._first_stdout_ready.set()

    def _on_stderr_line(self, line: bytes, at: float = 0.0) -> None:
        text = line.decode("utf-8", "replace")
        entry = _parse_json_object(text)
        with self._cond:
            self._stderr_raw.append(text)
            if entry is not None:
                self._stderr_logs.append(entry)
            self._cond.notify_all()

    def _on_stderr_end(self, tail: bytes) -> None:
        if tail:
            self._on_stderr_line(tail)

    def _start_readers(self) -> None:
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            _PipeReader(
                self.process.stdout, f"plugin-{self.pid}-stdout", self._on_stdout_line, self._on_stdout_end
            ),
            _PipeReader(
                self.process.stderr, f"plugin-{self.pid}-stderr", self._on_stderr_line, self._on_stderr_end
            ),
        ]
        for reader in self._readers:
            reader.start()

    def _wait_output_ended(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(reader.ended.wait(max(0.0, deadline - time.monotonic())) for reader in self._readers)

    # ---- gRPC

    def _require_stubs(self) -> _Stubs:
        if self._stubs is None:
            raise RuntimeError("the plugin is not connected")
        return self._stubs

    @property
    def channel(self) -> grpc.Channel:
        self._require_stubs()
        return self._channel

    @property
    def keymanager(self) -> keymanager_pb2_grpc.KeyManagerStub:
        return self._require_stubs().keymanager

    @property
    def config(self) -> config_pb2_grpc.ConfigStub:
        return self._require_stubs().config

    @property
    def init(self) -> init_pb2_grpc.InitStub:
        return self._require_stubs().init

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return self._require_stubs().health

    @property
    def controller(self) -> controller_pb2_grpc.GRPCControllerStub:
        return self._require_stubs().controller

    def broker_stream_open(self) -> bool:
        return self._broker is not None and not self._broker.ended.is_set()

    def stdio_data(self) -> list[stdio_pb2.StdioData]:
        """What the plugin sent on the GRPCStdio stream (SPIRE's go-plugin opens it; nothing is expected)."""
        return list(self._stdio.messages) if self._stdio is not None else []

    def _connect(self, timeout: float) -> None:
        assert self.handshake is not None
        target = f"unix:{self.socket_path}" if self.handshake.network == "unix" else self.handshake.address
        self._channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise self._start_error(f"cannot connect to {target} within {timeout:g} s") from None
        channel = self._channel
        self._stubs = _Stubs(
            broker=broker_pb2_grpc.GRPCBrokerStub(channel),
            stdio=stdio_pb2_grpc.GRPCStdioStub(channel),
            controller=controller_pb2_grpc.GRPCControllerStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            init=init_pb2_grpc.InitStub(channel),
            config=config_pb2_grpc.ConfigStub(channel),
            keymanager=keymanager_pb2_grpc.KeyManagerStub(channel),
        )
        # As go-plugin's gRPC client: the broker stream, then the stdio stream (UNIMPLEMENTED is tolerated).
        if not self.broker_address:
            self.broker_address = os.path.join(tempfile.gettempdir(), f"plugin{random.randrange(10**9)}")
        self._broker = _StreamWatch(
            self._stubs.broker.StartStream(self._broker_requests()), f"plugin-{self.pid}-broker"
        )
        self._stdio = _StreamWatch(
            self._stubs.stdio.StreamStdio(empty_pb2.Empty()), f"plugin-{self.pid}-stdio"
        )

    def _broker_requests(self) -> Iterator[broker_pb2.ConnInfo]:
        # SPIRE announces its host-services server once, then keeps the stream open until shutdown.
        yield broker_pb2.ConnInfo(service_id=1, network="unix", address=self.broker_address)
        self._broker_close.wait()

    def _init(self, timeout: float) -> None:
        stubs = self._require_stubs()
        try:
            answer = stubs.init.Init(
                init_pb2.InitRequest(host_service_names=self.host_service_names), timeout=timeout
            )
        except grpc.RpcError as err:
            raise self._start_error(f"Init failed: {err.code().name}: {err.details()}") from None
        self.plugin_service_names = list(answer.plugin_service_names)
        if KEYMANAGER_SERVICE not in self.plugin_service_names:
            raise self._start_error(
                f"Init answered {self.plugin_service_names} without {KEYMANAGER_SERVICE} "
                "(SPIRE: no supported plugin interface found)"
            )
        if self._broker is not None and self._broker.ended.is_set():
            raise self._start_error(
                f"the plugin ended the broker stream ({self._broker.code}: {self._broker.details}); "
                "SPIRE would fail to load it"
            )
        self._snapshot_tree()

    def _close_broker(self) -> None:
        """As go-plugin's broker client: stop sending (half-close), then cancel the stream."""
        self._broker_close.set()
        if self._broker is not None:
            self._broker.ended.wait(0.1)
            self._broker.cancel()

    def _release_client(self) -> None:
        if self._client_released:
            return
        self._client_released = True
        self._close_broker()
        if self._stdio is not None:
            self._stdio.cancel()
        if self._channel is not None:
            self._channel.close()

    # ---- SPIRE's calls

    def configure(
        self, hcl: str, trust_domain: str = "example.org", timeout: float = 60.0
    ) -> config_pb2.ConfigureResponse:
        request = config_pb2.ConfigureRequest(
            core_configuration=config_pb2.CoreConfiguration(trust_domain=trust_domain), hcl_configuration=hcl
        )
        return self.config.Configure(request, timeout=timeout)

    def validate(
        self, hcl: str, trust_domain: str = "example.org", timeout: float = 60.0
    ) -> config_pb2.ValidateResponse:
        request = config_pb2.ValidateRequest(
            core_configuration=config_pb2.CoreConfiguration(trust_domain=trust_domain), hcl_configuration=hcl
        )
        return self.config.Validate(request, timeout=timeout)

    def generate_key(
        self, key_id: str, key_type: keymanager_pb2.KeyType
    ) -> keymanager_pb2.GenerateKeyResponse:
        request = keymanager_pb2.GenerateKeyRequest(key_id=key_id, key_type=key_type)
        return self.keymanager.GenerateKey(request, timeout=self.call_timeout)

    def get_public_key(self, key_id: str) -> keymanager_pb2.GetPublicKeyResponse:
        request = keymanager_pb2.GetPublicKeyRequest(key_id=key_id)
        return self.keymanager.GetPublicKey(request, timeout=self.call_timeout)

    def get_public_keys(self) -> keymanager_pb2.GetPublicKeysResponse:
        return self.keymanager.GetPublicKeys(keymanager_pb2.GetPublicKeysRequest(), timeout=self.call_timeout)

    def sign_data(
        self,
        key_id: str,
        data: bytes,
        hash_algorithm: keymanager_pb2.HashAlgorithm | None = None,
        pss: tuple[int, keymanager_pb2.HashAlgorithm] | None = None,
    ) -> keymanager_pb2.SignDataResponse:
        """Sign a digest. `hash_algorithm` selects ECDSA or PKCS#1 v1.5, `pss=(salt_length, hash_algorithm)`
        RSASSA-PSS; with neither, the request has no signer opts."""
        if hash_algorithm is not None and pss is not None:
            raise ValueError("signer opts is a oneof: give hash_algorithm or pss, not both")
        request = keymanager_pb2.SignDataRequest(key_id=key_id, data=data)
        if pss is not None:
            salt_length, pss_hash = pss
            request.pss_options.CopyFrom(
                keymanager_pb2.SignDataRequest.PSSOptions(salt_length=salt_length, hash_algorithm=pss_hash)
            )
        elif hash_algorithm is not None:
            request.hash_algorithm = hash_algorithm
        return self.keymanager.SignData(request, timeout=self.call_timeout)

    # ---- ending

    def shutdown(self, timeout: float = SHUTDOWN_GRACE) -> int:
        """Stop the plugin in SPIRE's order: Deinit (10 s; UNIMPLEMENTED counts as success), close the broker
        stream, GRPCController/Shutdown (error ignored), wait `timeout` for the exit, else SIGKILL and
        AssertionError. Returns the exit code; AssertionError after the exit if Deinit failed."""
        stubs = self._require_stubs()
        if not self.is_running():
            raise AssertionError(f"the plugin already exited with code {self.returncode} before shutdown")
        self._snapshot_tree()
        self.deinit_code, self.deinit_details = _rpc_code(
            lambda: stubs.init.Deinit(init_pb2.DeinitRequest(), timeout=DEINIT_TIMEOUT)
        )
        self._close_broker()
        shutdown_sent = time.monotonic()
        self.controller_shutdown_code = self._controller_shutdown(stubs)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._host_killed = True
            self.process.kill()
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(CLEANUP_WAIT)
            raise AssertionError(f"plugin did not exit within {timeout:g} s after Shutdown") from None
        finally:
            self.shutdown_seconds = time.monotonic() - shutdown_sent
            self._release_client()
        self._wait_output_ended(SHUTDOWN_GRACE)
        if self.deinit_code not in (grpc.StatusCode.OK, grpc.StatusCode.UNIMPLEMENTED):
            raise AssertionError(f"Deinit failed: {self.deinit_code}: {self.deinit_details}")
        return code

    def _controller_shutdown(self, stubs: _Stubs) -> grpc.StatusCode:
        # No deadline, as SPIRE; stop waiting once the process is gone (go-plugin's doneCtx) or at the cap.
        future = stubs.controller.Shutdown.future(controller_pb2.Empty())
        answered = threading.Event()
        future.add_done_callback(lambda _: answered.set())
        deadline = time.monotonic() + CONTROLLER_SHUTDOWN_CAP
        while not answered.wait(0.01):
            if self.process.poll() is not None or time.monotonic() > deadline:
                future.cancel()
                break
        try:
            future.result(timeout=1.0)
        except grpc.RpcError as err:
            return err.code()
        except grpc.FutureCancelledError:
            return grpc.StatusCode.CANCELLED
        except grpc.FutureTimeoutError:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.OK

    def kill(self) -> None:
        """SIGKILL the spawned process only, as SPIRE's Pdeathsig does when SPIRE dies: no Deinit, no
        Shutdown. Its descendants are left to fend for themselves (check them with wait_all_gone)."""
        self._snapshot_tree()
        if self.is_running():
            self.process.send_signal(signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(CLEANUP_WAIT)
        self._release_client()
        self._wait_output_ended(0.5)

    def remove_socket_dir(self) -> bool:
        """Remove a unix socket directory the plugin left behind (only the socket and an empty directory, so
        nothing else can be deleted by mistake); True if something was removed."""
        removed = False
        if self.socket_path and os.path.exists(self.socket_path) and not os.path.isdir(self.socket_path):
            with suppress(OSError):
                os.unlink(self.socket_path)
                removed = True
        if self.socket_dir and os.path.isdir(self.socket_dir):
            with suppress(OSError):
                os.rmdir(self.socket_dir)
                removed = True
        return removed

    def close(self) -> None:
        """SIGKILL whatever is left of the process tree, stop every thread and close the pipes; idempotent
        and bounded in time. If this (or a shutdown that timed out) had to SIGKILL the plugin, its leftover
        socket directory is removed; after `kill()` it is left for the test to check (`remove_socket_dir`)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        killed = self._host_killed or self.is_running()
        current = {stat.pid: stat.start_time for stat in self._snapshot_tree()}
        with self._cond:
            candidates = {**self._seen, **current}
        for pid, start_time in candidates.items():
            stat = _read_stat(pid)
            if stat is not None and stat.start_time == start_time and stat.state not in ("Z", "X", "x"):
                _sigkill(pid)
                killed = True
        if self.is_running():
            self.process.send_signal(signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(CLEANUP_WAIT)
        wait_all_gone(list(candidates), CLEANUP_WAIT)
        self._release_client()
        self._wait_output_ended(0.5)
        for reader in self._readers:
            reader.stop(1.0)
        if killed:
            self.remove_socket_dir()
        _LIVE.discard(self)

    def __enter__(self) -> PluginProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ---- start-up

    def _await_handshake(self, timeout: float) -> None:
        if not self._first_stdout_ready.wait(timeout):
            raise self._start_error(f"no handshake line on stdout within {timeout:g} s")
        with self._cond:
            line, complete, at = self._first_stdout, self._first_stdout_complete, self._first_stdout_at
        assert line is not None
        if not complete:
            raise self._start_error(f"stdout closed before a complete handshake line (got {line!r})")
        self.handshake_seconds = at - self.spawned_at
        self.handshake_line = line.decode("utf-8", "replace")
        try:
            self.handshake = parse_handshake(line)
        except HandshakeError as err:
            raise self._start_error(
                f"the first stdout line {line!r} is not a go-plugin handshake line: {err} "
                "(nothing may reach stdout before it)"
            ) from None
        if self.handshake.network == "unix":
            self.socket_path = self.path_on_host(self.handshake.address)
            self.socket_dir = os.path.dirname(self.socket_path)
        self._snapshot_tree()

    def _start_error(self, problem: str) -> PluginStartError:
        # Give an exiting process a moment, so its exit code and last words make it into the message.
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(0.3)
        if not self.is_running():
            self._wait_output_ended(1.0)
        status = "still running" if self.is_running() else f"exit code {self.returncode}"
        tail = self.raw_stderr()[-30:]
        stderr = "\n".join(f"    {line}" for line in tail) if tail else "    (nothing)"
        return PluginStartError(
            f"{problem}\n  plugin: {self.command} ({status})\n  stderr (last lines):\n{stderr}"
        )


def start_plugin(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    path_on_host: Callable[[str], str] = os.path.abspath,
    host_services_address: str = "",
    host_service_names: Sequence[str] = (),
) -> PluginProcess:
    """Start the plugin as SPIRE does and return it connected and initialised (see the module docstring).

    By default the broker announces an address nobody serves and Init names no host service. A test that
    serves host services (tests.support.host_services) passes its unix socket path and their names.

    `command` is spawned without a shell and without PATH lookup (argv[0] is made absolute against the
    current directory, as SPIRE does with plugin_cmd), in `cwd`, with `env` (default: a copy of os.environ)
    plus go-plugin's variables; stdin is /dev/null, stdout and stderr are read by the host. Raises
    PluginStartError (an AssertionError) if anything SPIRE needs is missing; the process is killed then.
    `path_on_host` maps the socket path of the handshake line to the host's, for a plugin in a container."""
    if isinstance(command, str | bytes):
        raise TypeError("command must be a sequence of arguments (no shell)")
    argv = list(command)
    if not argv:
        raise ValueError("empty command")
    argv[0] = os.path.abspath(argv[0])
    child_env = plugin_environment(env)

    spawned_at = time.monotonic()
    process = subprocess.Popen(
        argv,
        env=child_env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,
    )
    plugin = PluginProcess(
        command=argv,
        process=process,
        spawned_at=spawned_at,
        path_on_host=path_on_host,
        broker_address=host_services_address,
        host_service_names=list(host_service_names),
    )
    _LIVE.add(plugin)
    try:
        plugin._start_readers()
        plugin._await_handshake(handshake_timeout)
        plugin._connect(CONNECT_TIMEOUT)
        plugin._init(INIT_TIMEOUT)
    except BaseException:
        plugin.close()
        raise
    return plugin


@atexit.register
def _close_leftover_plugins() -> None:
    for plugin in list(_LIVE):
        plugin.close()
