"""The binary started the way SPIRE starts it: the go-plugin handshake line, a reachable gRPC socket, and a
clean exit that removes the unpacked bundle, whether SPIRE stops it with SIGTERM or SIGKILLs the one-file
bootloader (SPIRE's Pdeathsig, go-plugin's forced kill)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from proto_gen.health import health_pb2, health_pb2_grpc
from proto_gen.spire.config import config_pb2, config_pb2_grpc
from tests.packaging.conftest import plugin_env, unpack_dirs

pytestmark = pytest.mark.binary

HANDSHAKE = re.compile(r"1\|1\|unix\|(/[^|]+/plugin\.sock)\|grpc")
HANDSHAKE_TIMEOUT = 30.0  # measured ~0.5 s from spawn; the margin is for a loaded CI machine
EXIT_TIMEOUT = 10.0


class PluginProcess:
    def __init__(self, binary: Path, tmpdir: Path) -> None:
        self.tmpdir = tmpdir
        env = plugin_env(tmpdir, {"KeyManager": "KeyManager", "PLUGIN_PROTOCOL_VERSIONS": "1"})
        self.started = time.monotonic()
        # Own session: the cleanup below can reach the bootloader and its Python child, and nothing else.
        self.proc = subprocess.Popen(
            [str(binary)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def read_handshake(self, timeout: float = HANDSHAKE_TIMEOUT) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        os.set_blocking(self.proc.stdout.fileno(), False)
        data = b""
        while b"\n" not in data:
            if time.monotonic() > deadline:
                pytest.fail(f"no handshake line within {timeout} s (stdout so far: {data!r})")
            chunk = self.proc.stdout.read()
            if chunk:
                data += chunk
            elif self.proc.poll() is not None:
                stderr = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                pytest.fail(f"plugin exited with {self.proc.returncode} before its handshake:\n{stderr}")
            else:
                time.sleep(0.01)
        return data.split(b"\n", 1)[0].decode()

    def python_child(self) -> int:
        """The pid of the Python process staticx's bootloader started."""
        for _ in range(100):
            for stat in Path("/proc").glob("[0-9]*/stat"):
                with contextlib.suppress(OSError):
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                    if int(fields[1]) == self.proc.pid:
                        return int(stat.parent.name)
            time.sleep(0.05)
        pytest.fail("the bootloader has no child process")

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(EXIT_TIMEOUT)


@pytest.fixture
def plugin(binary: Path, private_tmpdir: Path) -> Iterator[PluginProcess]:
    process = PluginProcess(binary, private_tmpdir)
    try:
        yield process
    finally:
        process.kill_group()
        for stream in (process.proc.stdout, process.proc.stderr):
            if stream:
                stream.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_handshake_then_sigterm(plugin: PluginProcess) -> None:
    line = plugin.read_handshake()
    elapsed = time.monotonic() - plugin.started
    match = HANDSHAKE.fullmatch(line)
    assert match, f"not a go-plugin handshake line: {line!r}"
    socket_path = Path(match.group(1))
    assert socket_path.is_socket()
    assert socket_path.is_relative_to(plugin.tmpdir)
    print(f"spawn to handshake line: {elapsed * 1000:.0f} ms")

    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        # The socket serves gRPC: go-plugin's health check answers SERVING.
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="plugin"), timeout=10
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        # pyhcl's parser (PLY) is built from docstrings, which optimize=2 strips everywhere else: a valid
        # configuration validates, and a broken one gets the parser's own message.
        config = config_pb2_grpc.ConfigStub(channel)
        core = config_pb2.CoreConfiguration(trust_domain="example.org")
        valid = config.Validate(
            config_pb2.ValidateRequest(core_configuration=core, hcl_configuration='region = "us-east-2"'),
            timeout=10,
        )
        assert (valid.valid, list(valid.notes)) == (True, [])
        broken = config.Validate(
            config_pb2.ValidateRequest(core_configuration=core, hcl_configuration="region = "), timeout=10
        )
        assert not broken.valid
        assert "Unexpected end of file" in " ".join(broken.notes), broken.notes

    plugin.proc.send_signal(signal.SIGTERM)
    assert plugin.proc.wait(EXIT_TIMEOUT) == 0
    assert unpack_dirs(plugin.tmpdir) == []
    assert list(plugin.tmpdir.iterdir()) == [], "the socket directory was left behind"


def test_sigkill_of_the_bootloader_leaves_nothing_behind(plugin: PluginProcess) -> None:
    plugin.read_handshake()
    child = plugin.python_child()
    assert len(unpack_dirs(plugin.tmpdir)) == 1

    plugin.proc.send_signal(signal.SIGKILL)
    plugin.proc.wait(EXIT_TIMEOUT)
    assert _wait_until(lambda: not _alive(child), EXIT_TIMEOUT), "the Python child outlived its bootloader"
    assert _wait_until(lambda: not unpack_dirs(plugin.tmpdir), EXIT_TIMEOUT), (
        f"unpacked bundle leaked: {unpack_dirs(plugin.tmpdir)}"
    )
    assert list(plugin.tmpdir.iterdir()) == [], "the socket directory was left behind"
