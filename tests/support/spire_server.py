"""A real SPIRE Server for end-to-end tests and benchmarks: install it, write its server.conf, start and stop
it with a private data dir, TMPDIR and admin socket, and drive it with its own CLI.

    binary = install_spire()                     # scripts/install_spire.sh: cached outside the repository
    with SpireServer(binary, workdir, KeyManagerBlock.external(plugin, {"region": "us-east-1"}),
                     env=aws_env(emulator_url)) as server:
        server.start()                           # waits until healthy, as `spire-server healthcheck` says
        bundle = server.bundle()
        svid = server.mint_x509("spiffe://example.org/workload")
        verify_x509_svid(svid.chain, bundle.x509_authorities, "spiffe://example.org/workload")

Every server runs in its own process group. `close()` (and leaving the `with` block, and interpreter exit)
stops the server and SIGKILLs whatever is left of its group, so a test can never leak a SPIRE server or a
plugin, even when it fails half-way. The leak checks of the tests look before that clean-up.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from proto_gen.health import health_pb2, health_pb2_grpc
from tests.support.rootfs import OFFICIAL_IMAGE_SPIRE_SERVER, Container

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "install_spire.sh"
# The oldest SPIRE release we support, and the current one.
SPIRE_VERSIONS = ("v1.13.3", "v1.15.3")
SPIRE_VERSION = SPIRE_VERSIONS[0]
# The first install compiles SPIRE (minutes on a small machine); later ones only print the cached path.
INSTALL_TIMEOUT = 60 * 60.0
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
CLI_TIMEOUT = 60.0
REGION = "us-east-1"
TRUST_DOMAIN = "example.org"
KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-4096")

LogEntry = dict[str, Any]


class SpireError(AssertionError):
    """SPIRE could not be installed or started, or a CLI command failed; the message carries the evidence."""


# --------------------------------------------------------------------------------------------------------
# Installation


@dataclass(frozen=True)
class Installed:
    binary: Path
    seconds: float


def version_of(binary: Path) -> str:
    """What `spire-server --version` says, e.g. "1.13.3-dev-unk" for a build from the module proxy."""
    command = [str(binary), "--version"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    return (result.stdout + result.stderr).strip()


def install_spire(
    version: str = SPIRE_VERSION,
    timeout: float = INSTALL_TIMEOUT,
    progress: Callable[[str], None] | None = None,
    arch: str = "amd64",
) -> Installed:
    """Runs scripts/install_spire.sh (idempotent) for `version` and returns the spire-server it printed.

    `progress` gets the installer's own messages as they come (a cold install takes minutes).
    SPIRE_SERVER_BINARY, when it is a spire-server of `version`, is used instead (for amd64).
    `arch` arm64 cross-compiles one that runs here under qemu-user.
    """
    override = os.environ.get("SPIRE_SERVER_BINARY")
    if arch == "amd64" and override and version_of(Path(override)).startswith(version.removeprefix("v")):
        return Installed(Path(override), 0.0)
    started = time.monotonic()
    stderr_tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(
        [str(INSTALL_SCRIPT)],
        cwd=ROOT,
        env={**os.environ, "SPIRE_VERSION": version, "SPIRE_ARCH": arch},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as installer:
        assert installer.stdout is not None and installer.stderr is not None
        stdout_lines: list[str] = []
        reader = threading.Thread(target=lambda: stdout_lines.extend(installer.stdout or []), daemon=True)
        reader.start()
        for line in installer.stderr:
            stderr_tail.append(line.rstrip("\n"))
            if progress is not None and line.startswith("install_spire:"):
                progress(line.rstrip("\n"))
        try:
            returncode = installer.wait(max(1.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            installer.kill()
            raise SpireError(f"{INSTALL_SCRIPT} did not finish within {timeout} s") from None
        reader.join(10)
    seconds = time.monotonic() - started
    if returncode != 0:
        tail = "\n".join(stderr_tail)
        raise SpireError(f"{INSTALL_SCRIPT} failed with exit status {returncode}:\n{tail}")
    binary = Path(stdout_lines[-1].strip()) if stdout_lines else Path()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise SpireError(f"{INSTALL_SCRIPT} printed {stdout_lines!r}, not the path of an executable")
    return Installed(binary, seconds)


# --------------------------------------------------------------------------------------------------------
# Configuration


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (SPIRE refuses bind_port = 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sha256_file(path: Path) -> str:
    with path.open("rb") as data:
        return hashlib.file_digest(data, "sha256").hexdigest()


def hcl_value(value: Any, indent: str = "") -> str:
    """An HCL rendering of a Python value (strings, whole numbers, booleans, lists, and maps as blocks)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # HCL strings use JSON's escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(hcl_value(item, indent) for item in value) + "]"
    if isinstance(value, Mapping):
        inner = indent + "    "
        body = "".join(f"{inner}{json.dumps(str(k))} = {hcl_value(v, inner)}\n" for k, v in value.items())
        return "{\n" + body + indent + "}"
    raise TypeError(f"no HCL rendering for {type(value).__name__}")


def hcl_body(settings: Mapping[str, Any], indent: str) -> str:
    return "".join(f"{indent}{key} = {hcl_value(value, indent)}\n" for key, value in settings.items())


@dataclass(frozen=True)
class KeyManagerBlock:
    """The KeyManager block of server.conf: SPIRE's built-in plugin, or an external one (plugin_cmd).

    plugin_data is a map rendered to HCL, or raw HCL text (for configurations that are wrong on purpose).
    """

    plugin_data: Mapping[str, Any] | str
    name: str = "aws_kms"
    plugin_cmd: Path | None = None
    plugin_checksum: str | None = None

    @classmethod
    def external(
        cls, binary: Path, plugin_data: Mapping[str, Any] | str, checksum: str | None = None
    ) -> KeyManagerBlock:
        return cls(plugin_data, plugin_cmd=binary, plugin_checksum=checksum or sha256_file(binary))

    @classmethod
    def builtin(cls, plugin_data: Mapping[str, Any] | str) -> KeyManagerBlock:
        return cls(plugin_data)

    def render(self) -> str:
        lines = [f"    KeyManager {json.dumps(self.name)} {{\n"]
        if self.plugin_cmd is not None:
            lines.append(f"        plugin_cmd = {json.dumps(str(self.plugin_cmd))}\n")
        if self.plugin_checksum is not None:
            lines.append(f"        plugin_checksum = {json.dumps(self.plugin_checksum)}\n")
        if isinstance(self.plugin_data, str):
            data = "".join(f"            {line.strip()}\n" for line in self.plugin_data.strip().splitlines())
        else:
            data = hcl_body(self.plugin_data, "            ")
        lines.append("        plugin_data {\n" + data + "        }\n")
        lines.append("    }\n")
        return "".join(lines)


@dataclass(frozen=True)
class ServerSettings:
    trust_domain: str = TRUST_DOMAIN
    ca_key_type: str = "ec-p256"
    jwt_key_type: str = "ec-p256"
    log_level: str = "DEBUG"
    # More settings of the server block, e.g. {"disable_jwt_svids": True}.
    extra: Mapping[str, Any] = field(default_factory=dict)
    # SPIRE's Prometheus telemetry endpoint on 127.0.0.1 at this port (telemetry { Prometheus { ... } }).
    prometheus_port: int | None = None


def aws_env(emulator_url: str, credentials: bool = True) -> dict[str, str]:
    """SPIRE's environment (which its plugins inherit): ours, without anything AWS or proxy, plus the
    emulator's endpoint; dummy credentials for the default chain unless `credentials` is False."""
    drop = ("AWS_", "PYTHON", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(drop)}
    env.update(
        AWS_ENDPOINT_URL=emulator_url,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        NO_PROXY="127.0.0.1,localhost",
    )
    if credentials:
        from tests.support.kms_emulator import DUMMY_ACCESS_KEY_ID, DUMMY_SECRET_ACCESS_KEY

        env.update(AWS_ACCESS_KEY_ID=DUMMY_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=DUMMY_SECRET_ACCESS_KEY)
    return env


# --------------------------------------------------------------------------------------------------------
# Processes (from /proc)


def _ppid_table() -> dict[int, int]:
    table: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        # The command name is in parentheses and may itself contain ") ": split after the last one.
        fields = data[data.rindex(b")") + 2 :].split()
        if fields[0] == b"Z":
            continue  # a zombie is gone for every purpose but its exit status
        table[int(entry)] = int(fields[1])
    return table


def descendants(root: int) -> list[int]:
    table = _ppid_table()
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in table.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return sorted(found)


def is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :].split()[0] != b"Z"


def exe_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def listening_unix_sockets(pid: int) -> set[str]:
    """The paths of the unix sockets process `pid` has open (from /proc/net/unix and its fds)."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    paths: set[str] = set()
    with open("/proc/net/unix") as table:
        next(table)  # header: Num RefCount Protocol Flags Type St Inode Path
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[6] in inodes:
                paths.add(fields[7])
    return paths


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """The pids still alive after waiting up to `timeout` seconds for all of them to exit."""
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if is_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if is_alive(pid)]
    return alive


# --------------------------------------------------------------------------------------------------------
# What the CLI hands out


@dataclass(frozen=True)
class Bundle:
    x509_authorities: list[x509.Certificate]
    # key id -> DER SubjectPublicKeyInfo, as `bundle show -output json` gives them
    jwt_authorities: dict[str, bytes]


@dataclass(frozen=True)
class MintedX509:
    chain: list[x509.Certificate]
    root_cas: list[x509.Certificate]


@dataclass(frozen=True)
class AuthorityState:
    """One `localauthority x509|jwt show`: authority ids by slot state (empty when the slot is empty)."""

    active: str
    prepared: str
    old: str


@dataclass(frozen=True)
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def json(self) -> Any:
        return json.loads(self.stdout)


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def spki_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def subject_key_id(cert: x509.Certificate) -> str:
    """The certificate's subject key id in hex: what SPIRE calls an X.509 authority id."""
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


# --------------------------------------------------------------------------------------------------------
# The server


_LIVE_SERVERS: weakref.WeakSet[SpireServer] = weakref.WeakSet()


class SpireServer:
    """One spire-server with its own directory: server.conf, data/, tmp/ (its and its plugins' TMPDIR),
    api.sock (the admin socket) and spire-N.log (its stdout and stderr: JSON log lines).

    `workdir` must be short: the admin socket and the plugin's socket (under tmp/) are unix socket paths,
    limited to 107 bytes.
    """

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        keymanager: KeyManagerBlock,
        env: Mapping[str, str],
        settings: ServerSettings | None = None,
        container: Container | None = None,
    ) -> None:
        """`container` runs the server inside it as /opt/spire/bin/spire-server, as SPIRE's official image
        does; its binds must show `workdir` at the same path (then every path in server.conf holds inside
        and out) and `workdir`/tmp as /tmp, where the server and its plugins then make their files."""
        if len(str(workdir)) > 60:
            raise ValueError(f"{workdir} is too long for the unix sockets under it")
        self.binary = binary
        workdir = workdir.resolve()  # as /proc shows working directories
        self.workdir = workdir
        self.keymanager = keymanager
        self.settings = settings or ServerSettings()
        self.config_path = workdir / "server.conf"
        self.data_dir = workdir / "data"
        self.tmpdir = workdir / "tmp"
        self.socket_path = workdir / "api.sock"
        # One log per server object: a second server on the same workdir (a restart) gets the next one.
        self.log_path = workdir / f"spire-{len(list(workdir.glob('spire-*.log'))) + 1}.log"
        self.log_path.touch()
        self.container = container
        # In a container, TMPDIR stays unset (as in the official image): its /tmp is self.tmpdir.
        self.env = dict(env) if container else {**env, "TMPDIR": str(self.tmpdir)}
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._seen_pids: set[int] = set()
        for directory in (self.data_dir, self.tmpdir):
            directory.mkdir(parents=True, exist_ok=True)
        _LIVE_SERVERS.add(self)

    # -- configuration ---------------------------------------------------------------------------------

    def render_config(self) -> str:
        s = self.settings
        return (
            "server {\n"
            '    bind_address = "127.0.0.1"\n'
            f"    bind_port = {self.port}\n"
            f"    socket_path = {json.dumps(str(self.socket_path))}\n"
            f"    trust_domain = {json.dumps(s.trust_domain)}\n"
            f"    data_dir = {json.dumps(str(self.data_dir))}\n"
            f"    log_level = {json.dumps(s.log_level)}\n"
            '    log_format = "json"\n'
            f"    ca_key_type = {json.dumps(s.ca_key_type)}\n"
            f"    jwt_key_type = {json.dumps(s.jwt_key_type)}\n"
            f"{hcl_body(s.extra, '    ')}"
            "}\n"
            "plugins {\n"
            '    DataStore "sql" {\n'
            "        plugin_data {\n"
            '            database_type = "sqlite3"\n'
            f"            connection_string = {json.dumps(str(self.data_dir / 'datastore.sqlite3'))}\n"
            "        }\n"
            "    }\n"
            f"{self.keymanager.render()}"
            "}\n"
            f"{self._render_telemetry()}"
        )

    def _render_telemetry(self) -> str:
        port = self.settings.prometheus_port
        if port is None:
            return ""
        return (
            "telemetry {\n"
            "    Prometheus {\n"
            '        host = "127.0.0.1"\n'
            f"        port = {port}\n"
            "    }\n"
            "}\n"
        )

    def prometheus_metrics(self) -> str:
        """The text SPIRE's Prometheus endpoint serves now (no proxy: it is on loopback)."""
        port = self.settings.prometheus_port
        if port is None:
            raise RuntimeError("this server has no Prometheus endpoint (ServerSettings.prometheus_port)")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            return str(answer.read().decode("utf-8"))

    # -- life cycle ------------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("SPIRE server not started")
        return self.process.pid

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self) -> None:
        """Start `spire-server run` without waiting for it (see start())."""
        if self.is_running():
            raise RuntimeError("SPIRE server already running")
        self.config_path.write_text(self.render_config())
        command = [str(self.binary), "run", "-config", str(self.config_path)]
        cwd = str(self.workdir)
        if self.container is not None:
            command = self.container.command([OFFICIAL_IMAGE_SPIRE_SERVER, *command[1:]])
            cwd = self.container.cwd
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self.process = subprocess.Popen(
                command,
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: clean-up reaches plugins it orphaned
            )

    def serving(self) -> bool:
        """What `spire-server healthcheck` asks (gRPC health on the API socket), without a CLI process:
        cheap enough to poll every few milliseconds, so start-up is timed to the millisecond."""
        if not self.socket_path.exists():
            return False
        try:
            with grpc.insecure_channel(f"unix://{self.socket_path}") as channel:
                answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def start(self, timeout: float = START_TIMEOUT) -> SpireServer:
        """Start and wait until the server is healthy (`serving`); SpireError (with the log) otherwise."""
        self.launch()
        deadline = time.monotonic() + timeout
        relaunched = False
        while True:
            returncode = self.process.poll() if self.process else None
            if returncode is not None and not relaunched and "AlreadyExistsException" in self.log_text():
                # Rarely the Go SDK (SPIRE's built-in aws_kms) resends a CreateAlias whose answer it lost on
                # loopback, gets AlreadyExists for its own alias and exits; a real KMS would answer the
                # same. SPIRE's own restart finds the alias; one relaunch stands in for that restart.
                relaunched = True
                self.launch()
                continue
            if returncode is not None:
                raise SpireError(
                    f"spire-server exited with status {returncode} while starting:\n{self.log_tail()}"
                )
            if self.serving():
                self._remember_pids()
                return self
            if time.monotonic() > deadline:
                raise SpireError(f"spire-server was not healthy within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.01)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the server to exit by itself; SpireError if it is still running after `timeout`."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise SpireError(f"spire-server still running after {timeout} s:\n{self.log_tail()}") from None

    def send_signal(self, signum: int, group: bool = False) -> None:
        """Send a signal to the server (group=True: to its process group, as Ctrl-C in a terminal does)."""
        if not self.is_running():
            return
        self._remember_pids()
        if group:
            os.killpg(self.pid, signum)
        else:
            os.kill(self.pid, signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT, group: bool = False) -> int:
        """Stop the server with `signum` and wait for it; returns its exit status. Plugin processes are
        left to exit on their own (the tests check they do); close() kills whatever is left."""
        if self.process is None:
            raise RuntimeError("SPIRE server not started")
        if self.is_running():
            self.send_signal(signum, group=group)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.process.wait(10)
                raise SpireError(
                    f"spire-server ignored signal {signum} for {timeout} s:\n{self.log_tail()}"
                ) from None
        return int(self.process.returncode)

    def plugin_pids(self) -> list[int]:
        """The server's descendant processes (an external plugin: staticx's bootloader, its Python child)."""
        if not self.is_running():
            return []
        pids = descendants(self.pid)
        self._seen_pids.update(pids)
        return pids

    def processes_in_workdir(self) -> list[int]:
        """Every live process whose working directory is this server's workdir: the server and whatever it
        started (plugins inherit it), even after they were orphaned."""
        found: list[int] = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and is_alive(int(entry)):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/cwd") == str(self.workdir):
                        found.append(int(entry))
        return sorted(found)

    def own_tmpdir_sockets(self) -> set[str]:
        """Names in TMPDIR that are unix sockets of spire-server itself (go-plugin's broker listener), as
        opposed to what its plugins made."""
        if not self.is_running():
            return set()
        return {
            Path(path).name for path in listening_unix_sockets(self.pid) if Path(path).parent == self.tmpdir
        }

    def _remember_pids(self) -> None:
        if self.is_running():
            self._seen_pids.update(descendants(self.pid))

    def _kill_group(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in self._seen_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and kill anything left in its process group."""
        if self.process is None:
            return
        if self.is_running():
            with contextlib.suppress(SpireError):
                self.stop(timeout=10)
        self._kill_group()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        wait_gone(sorted(self._seen_pids), 5)

    def __enter__(self) -> SpireServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- log -------------------------------------------------------------------------------------------

    def log_text(self, since_start: bool = True) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[self._log_offset if since_start else 0 :].decode("utf-8", "replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_entries(self, since_start: bool = True) -> list[LogEntry]:
        """The JSON log entries of the current run (or of every run); other lines are left out."""
        entries: list[LogEntry] = []
        for line in self.log_text(since_start).splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    value = json.loads(line)
                    if isinstance(value, dict):
                        entries.append(value)
        return entries

    def wait_for_log(self, match: Callable[[LogEntry], bool], timeout: float = 30.0) -> LogEntry:
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.log_entries():
                if match(entry):
                    return entry
            if time.monotonic() > deadline:
                raise SpireError(f"no matching log entry within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    # -- CLI -------------------------------------------------------------------------------------------

    def cli(
        self,
        *args: str,
        output_json: bool = True,
        check: bool = True,
        timeout: float = CLI_TIMEOUT,
        socket: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> CliResult:
        """Run `spire-server ARGS [-socketPath <ours>] [-output json]` against this server, with the server's
        environment and `env`."""
        command = [str(self.binary), *args]
        if socket:
            command += ["-socketPath", str(self.socket_path)]
        if output_json:
            command += ["-output", "json"]
        result = subprocess.run(
            command,
            cwd=self.workdir,
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        outcome = CliResult(tuple(args), result.returncode, result.stdout, result.stderr)
        if check and not outcome.ok:
            raise self._cli_error(outcome)
        return outcome

    def _cli_error(self, result: CliResult) -> SpireError:
        return SpireError(
            f"spire-server {' '.join(result.args)} failed with exit status {result.returncode}:\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}\nserver log:\n{self.log_tail(30)}"
        )

    def healthcheck(self) -> CliResult:
        return self.cli("healthcheck", output_json=False)

    def bundle(self) -> Bundle:
        data = self.cli("bundle", "show").json()
        return Bundle(
            x509_authorities=[
                x509.load_der_x509_certificate(_b64(a["asn1"])) for a in data["x509_authorities"]
            ],
            jwt_authorities={a["key_id"]: _b64(a["public_key"]) for a in data.get("jwt_authorities", [])},
        )

    def bundle_jwks(self) -> dict[str, Any]:
        """`bundle show -format spiffe`: the bundle as a SPIFFE bundle document (a JWKS)."""
        result = self.cli("bundle", "show", "-format", "spiffe", output_json=False)
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def mint_x509(self, spiffe_id: str) -> MintedX509:
        # Printed as a one-element list up to v1.14, as the object itself from v1.15.
        printed = self.cli("x509", "mint", "-spiffeID", spiffe_id).json()
        (data,) = printed if isinstance(printed, list) else [printed]
        return MintedX509(
            chain=[x509.load_der_x509_certificate(_b64(c)) for c in data["x509_svid"]],
            root_cas=[x509.load_der_x509_certificate(_b64(c)) for c in data["root_cas"]],
        )

    def validate(self) -> CliResult:
        """`spire-server validate -config <ours>` (SPIRE 1.14 and later): checks server.conf, plugins
        included, without starting the server."""
        self.config_path.write_text(self.render_config())
        config = str(self.config_path)
        return self.cli("validate", "-config", config, output_json=False, check=False, socket=False)

    def mint_wit(self, spiffe_id: str) -> str:
        """`spire-server wit mint` (SPIRE 1.14.1 and later; the CLI shows it only with the feature flag)."""
        result = self.cli("wit", "mint", "-spiffeID", spiffe_id, env={"SPIRE_SERVER_FFLAGS": "wit-svid"})
        return str(result.json()["svid"]["token"])

    def mint_jwt(self, spiffe_id: str, audience: str) -> str:
        data = self.cli("jwt", "mint", "-spiffeID", spiffe_id, "-audience", audience).json()
        return str(data["svid"]["token"])

    def authority_state(self, kind: str) -> AuthorityState:
        """`localauthority x509|jwt show`."""
        data = self.cli("localauthority", kind, "show").json()

        def authority(slot: str) -> str:
            return str((data.get(slot) or {}).get("authority_id", ""))

        return AuthorityState(
            active=authority("active"), prepared=authority("prepared"), old=authority("old")
        )

    def localauthority(self, kind: str, action: str, authority_id: str | None = None) -> Any:
        """`localauthority x509|jwt prepare|activate|taint|revoke [-authorityID ID]`, as JSON."""
        args = ["localauthority", kind, action]
        if authority_id is not None:
            args += ["-authorityID", authority_id]
        result = self.cli(*args, check=False)
        if not result.ok and self.keymanager.plugin_cmd is None and "AlreadyExistsException" in result.stderr:
            # The built-in's rare lost CreateAlias answer (see start()), here while preparing a key: it then
            # fails every later attempt, until a restart lists the alias it made. Restart, as its operator
            # would, and ask again.
            self.stop()
            self.start()
            result = self.cli(*args)
        elif not result.ok:
            raise self._cli_error(result)
        return result.json()


def _close_leftover_servers() -> None:
    for server in list(_LIVE_SERVERS):
        with contextlib.suppress(Exception):
            server.close()


atexit.register(_close_leftover_servers)


# --------------------------------------------------------------------------------------------------------
# Verifying what SPIRE hands out, with `cryptography` only


def verify_x509_svid(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], spiffe_id: str
) -> x509.Certificate:
    """Check an X509-SVID chain against the bundle's X.509 authorities; returns the root it chains to.

    Full RFC 5280 path validation as a TLS server validating a client certificate would do it
    (`cryptography`'s client verifier: signatures, names, validity, CA constraints, key and extended key
    usage), and the SVID's one URI SAN must be `spiffe_id`.
    """
    if not chain:
        raise AssertionError("empty X509-SVID chain")
    verifier = PolicyBuilder().store(Store(list(roots))).build_client_verifier()
    try:
        verified = verifier.verify(chain[0], list(chain[1:]))
    except VerificationError as err:
        raise AssertionError(f"the X509-SVID does not verify against the bundle: {err}") from None
    uris = [
        name.value for name in verified.subjects or [] if isinstance(name, x509.UniformResourceIdentifier)
    ]
    if uris != [spiffe_id]:
        raise AssertionError(f"X509-SVID names {uris}, not {spiffe_id}")
    return verified.chain[-1]


_EC_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}
_JWS_HASHES: dict[str, hashes.HashAlgorithm] = {
    "ES256": hashes.SHA256(),
    "ES384": hashes.SHA384(),
    "ES512": hashes.SHA512(),
    "RS256": hashes.SHA256(),
    "RS384": hashes.SHA384(),
    "RS512": hashes.SHA512(),
    "PS256": hashes.SHA256(),
    "PS384": hashes.SHA384(),
    "PS512": hashes.SHA512(),
}


def jwk_public_key(jwk: Mapping[str, Any]) -> PublicKeyTypes:
    if jwk.get("kty") == "EC":
        curve, size = _EC_CURVES[jwk["crv"]]
        x = int.from_bytes(_b64url(jwk["x"]), "big")
        y = int.from_bytes(_b64url(jwk["y"]), "big")
        assert len(_b64url(jwk["x"])) == size
        return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
    if jwk.get("kty") == "RSA":
        n = int.from_bytes(_b64url(jwk["n"]), "big")
        e = int.from_bytes(_b64url(jwk["e"]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    raise AssertionError(f"unsupported JWK key type {jwk.get('kty')!r}")


@dataclass(frozen=True)
class VerifiedJwt:
    header: dict[str, Any]
    claims: dict[str, Any]
    key: PublicKeyTypes = field(repr=False)


def verify_jws(token: str, key: PublicKeyTypes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check a compact JWS's signature with `key` (signatures as JWS has them: ECDSA as r || s); returns
    its header and claims."""
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(_b64url(header_b64))
    claims = json.loads(_b64url(payload_b64))
    alg = str(header.get("alg"))
    signed = f"{header_b64}.{payload_b64}".encode("ascii")
    signature = _b64url(signature_b64)
    hash_algorithm = _JWS_HASHES.get(alg)
    if hash_algorithm is None:
        raise AssertionError(f"unexpected JWS algorithm {alg!r}")
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not alg.startswith("ES"):
            raise AssertionError(f"{alg} token signed by an EC key")
        half = len(signature) // 2
        der = encode_dss_signature(
            int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
        )
        key.verify(der, signed, ec.ECDSA(hash_algorithm))
    elif isinstance(key, rsa.RSAPublicKey):
        if alg.startswith("RS"):
            key.verify(signature, signed, padding.PKCS1v15(), hash_algorithm)
        elif alg.startswith("PS"):
            key.verify(
                signature,
                signed,
                padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.DIGEST_LENGTH),
                hash_algorithm,
            )
        else:
            raise AssertionError(f"{alg} token signed by an RSA key")
    else:
        raise AssertionError(f"unexpected key type {type(key).__name__}")
    return header, claims


def verify_jwt_svid(token: str, jwks: Mapping[str, Any], spiffe_id: str, audience: str) -> VerifiedJwt:
    """Check a JWT-SVID's signature against the JWT keys of a SPIFFE bundle (JWKS), and its claims."""
    kid = json.loads(_b64url(token.split(".")[0])).get("kid")
    keys = [k for k in jwks.get("keys", []) if k.get("use") == "jwt-svid" and k.get("kid") == kid]
    if not keys:
        raise AssertionError(f"no JWT key {kid!r} in the bundle")
    key = jwk_public_key(keys[0])
    header, claims = verify_jws(token, key)
    if claims.get("sub") != spiffe_id:
        raise AssertionError(f"JWT-SVID subject {claims.get('sub')!r}, not {spiffe_id!r}")
    audiences = claims.get("aud")
    if audience not in (audiences if isinstance(audiences, list) else [audiences]):
        raise AssertionError(f"JWT-SVID audience {audiences!r} lacks {audience!r}")
    if not float(claims.get("exp", 0)) > time.time():
        raise AssertionError("JWT-SVID has expired")
    return VerifiedJwt(header=header, claims=claims, key=key)


# --------------------------------------------------------------------------------------------------------
# KMS, as the tests see it (boto3 on the emulator)


def alias_public_key(kms: Any, alias: str) -> bytes:
    """The DER SubjectPublicKeyInfo of the KMS key an alias points at."""
    return bytes(kms.get_public_key(KeyId=alias)["PublicKey"])


def alias_target(kms: Any, alias: str) -> str:
    """The ARN of the key an alias points at."""
    return str(kms.describe_key(KeyId=alias)["KeyMetadata"]["Arn"])


def aliases_under(kms: Any, prefix: str) -> dict[str, str]:
    """alias name -> target key id, for every alias under prefix (all pages)."""
    found: dict[str, str] = {}
    for page in kms.get_paginator("list_aliases").paginate():
        for alias in page["Aliases"]:
            if alias["AliasName"].startswith(prefix):
                found[alias["AliasName"]] = alias.get("TargetKeyId", "")
    return found
