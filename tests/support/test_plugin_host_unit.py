"""Checks of the test host itself, against a small fake go-plugin written to a temporary directory."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.plugin_host import (
    KEYMANAGER_SERVICE,
    HandshakeError,
    PluginProcess,
    PluginStartError,
    hclog_problems,
    parse_handshake,
    plugin_environment,
    start_plugin,
    wait_all_gone,
)

REPO = Path(__file__).resolve().parents[2]

# Behaviour is chosen by FAKE_MODE: ok, junk (prints before the handshake), silent (never shakes hands),
# exit (dies at once), no_keymanager, ignore_shutdown, not_json (one raw stderr line), bootloader (runs
# itself as a child sharing stdout/stderr, like a one-file PyInstaller binary).
FAKE_PLUGIN = r"""
import datetime, json, os, shutil, subprocess, sys, tempfile, threading, time
from concurrent import futures

MODE = os.environ.get("FAKE_MODE", "ok")
if MODE == "bootloader" and not os.environ.get("FAKE_CHILD"):
    child = subprocess.Popen([sys.executable, __file__], env={**os.environ, "FAKE_CHILD": "1"})
    sys.exit(child.wait())
if MODE == "junk":
    sys.stdout.write("starting up\n")
if MODE == "silent":
    time.sleep(60)
if MODE == "exit":
    sys.stderr.write("fatal: cannot start\n")
    sys.exit(3)

import grpc
from proto_gen.goplugin import broker_pb2_grpc, controller_pb2, controller_pb2_grpc
from proto_gen.spire.config import config_pb2, config_pb2_grpc
from proto_gen.spire.init import init_pb2, init_pb2_grpc

stop = threading.Event()

def log(message, **fields):
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    entry = {"@level": "info", "@message": message, "@timestamp": stamp, **fields}
    sys.stderr.write(json.dumps(entry) + "\n")
    sys.stderr.flush()

class Broker(broker_pb2_grpc.GRPCBrokerServicer):
    def StartStream(self, request_iterator, context):
        for info in request_iterator:
            log("conn info", service_id=info.service_id, network=info.network, address=info.address)
        return iter(())

class Controller(controller_pb2_grpc.GRPCControllerServicer):
    def Shutdown(self, request, context):
        if MODE != "ignore_shutdown":
            context.add_callback(stop.set)
        return controller_pb2.Empty()

class Init(init_pb2_grpc.InitServicer):  # no Deinit: UNIMPLEMENTED
    def Init(self, request, context):
        names = ["spire.service.common.config.v1.Config"]
        if MODE != "no_keymanager":
            names.insert(0, "spire.plugin.server.keymanager.v1.KeyManager")
        log("init", host_services=list(request.host_service_names))
        return init_pb2.InitResponse(plugin_service_names=names)

class Config(config_pb2_grpc.ConfigServicer):
    def Validate(self, request, context):
        note = f"{request.core_configuration.trust_domain}:{request.hcl_configuration}"
        return config_pb2.ValidateResponse(valid=False, notes=[note])

socket_dir = tempfile.mkdtemp(prefix="fakeplugin")
socket_path = os.path.join(socket_dir, "plugin.sock")
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
broker_pb2_grpc.add_GRPCBrokerServicer_to_server(Broker(), server)
controller_pb2_grpc.add_GRPCControllerServicer_to_server(Controller(), server)
init_pb2_grpc.add_InitServicer_to_server(Init(), server)
config_pb2_grpc.add_ConfigServicer_to_server(Config(), server)
server.add_insecure_port("unix:" + socket_path)
server.start()
sys.stdout.write(f"1|1|unix|{socket_path}|grpc|\n")
sys.stdout.flush()
names = ["KeyManager", "PLUGIN_PROTOCOL_VERSIONS", "PLUGIN_MIN_PORT", "PLUGIN_MAX_PORT", "PLUGIN_CLIENT_CERT",
         "FAKE_INHERITED"]
devnull = os.fstat(0).st_rdev == os.stat("/dev/null").st_rdev
log("env", cwd=os.getcwd(), pgid=os.getpgid(0), sid=os.getsid(0), stdin_is_devnull=devnull,
    **{n: os.environ.get(n) for n in names})
if MODE == "not_json":
    sys.stderr.write("plain text\n")
    sys.stderr.flush()
stop.wait()
server.stop(0).wait()
shutil.rmtree(socket_dir, ignore_errors=True)  # grpc may have removed the socket already
"""


@pytest.fixture(scope="module")
def fake_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fake") / "fake_plugin.py"
    path.write_text(FAKE_PLUGIN)
    return path


def start_fake(fake_plugin: Path, mode: str, **kwargs: float) -> PluginProcess:
    # TMPDIR keeps the socket directories of fakes that never get to clean up inside pytest's tmp.
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAKE_MODE": mode, "FAKE_INHERITED": "yes"}
    env["TMPDIR"] = str(fake_plugin.parent)
    env["PLUGIN_CLIENT_CERT"] = "must not reach the plugin"
    return start_plugin([sys.executable, str(fake_plugin)], env=env, cwd=str(fake_plugin.parent), **kwargs)


def logged(plugin: PluginProcess, message: str) -> dict[str, object]:
    return plugin.wait_for_log(lambda entry: entry.get("@message") == message, timeout=5.0)


# ---- pure logic


@pytest.mark.parametrize(
    "line",
    [
        b"1|1|unix|/tmp/plugin1/plugin.sock|grpc",
        b"1|1|unix|/tmp/p.sock|grpc|",
        b"1|1|tcp|127.0.0.1:41234|grpc",
    ],
)
def test_parse_handshake_accepts(line: bytes) -> None:
    handshake = parse_handshake(line)
    assert (handshake.core_version, handshake.app_version, handshake.protocol) == (1, 1, "grpc")


@pytest.mark.parametrize(
    "line",
    [
        b"1|1|unix|/tmp/p.sock",  # no protocol: net/rpc
        b"1|1|unix|/tmp/p.sock|netrpc",
        b"1|1|unix|/tmp/p.sock|grpc|MIIBcertificate",
        b"2|1|unix|/tmp/p.sock|grpc",
        b"1|2|unix|/tmp/p.sock|grpc",
        b"1|1|udp|/tmp/p.sock|grpc",
        b"1|1|unix|p.sock|grpc",
        b"1|1|tcp|41234|grpc",
        b"1|1|unix||grpc",
        b"1|1|unix|/tmp/p.sock|grpc\r",
        b"hello1|1|unix|/tmp/p.sock|grpc",
        b"\xff|1|unix|/tmp/p.sock|grpc",
    ],
)
def test_parse_handshake_rejects(line: bytes) -> None:
    with pytest.raises(HandshakeError):
        parse_handshake(line)


def test_plugin_environment_adds_go_plugin_variables_to_a_copy() -> None:
    base = {"PATH": "/bin", "PLUGIN_CLIENT_CERT": "x", "PLUGIN_UNIX_SOCKET_DIR": "/x"}
    env = plugin_environment(base)
    assert env == {
        "PATH": "/bin",
        "KeyManager": "KeyManager",
        "PLUGIN_PROTOCOL_VERSIONS": "1",
        "PLUGIN_MIN_PORT": "10000",
        "PLUGIN_MAX_PORT": "25000",
    }
    assert "PLUGIN_CLIENT_CERT" in base


def _entry(**fields: object) -> str:
    entry = {"@level": "info", "@message": "m", "@timestamp": "2026-08-22T10:11:12.123456Z"} | fields
    return json.dumps({k: v for k, v in entry.items() if v is not None})


def test_hclog_problems_accepts_hclog_json() -> None:
    lines = [_entry(), _entry(**{"@timestamp": "2026-08-22T10:11:12.123456+02:00", "@level": "trace"})]
    assert hclog_problems(lines) == []


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("Traceback (most recent call last):", "not a JSON object"),
        ("", "not a JSON object"),
        ('["@level"]', "not a JSON object"),
        ('{"@level": NaN}', "not a JSON object"),
        (_entry(**{"@level": None}), "no @level"),
        (_entry(**{"@message": 3}), "@message is a number, not a string"),
        (_entry(**{"@timestamp": None}), "no @timestamp"),
        (_entry(**{"@level": "INFO"}), "@level 'INFO'"),
        (_entry(**{"@level": "warning"}), "@level 'warning'"),
        (_entry(**{"@timestamp": "2026-08-22T10:11:12.123Z"}), "@timestamp"),
        (_entry(**{"@timestamp": "2026-08-22T10:11:12.123456"}), "@timestamp"),
        (_entry(**{"@timestamp": "2026-08-22 10:11:12.123456Z"}), "@timestamp"),
        (_entry(**{"@timestamp": "2026-13-22T10:11:12.123456Z"}), "@timestamp"),
        (_entry(**{"@timestamp": 1755857472}), "@timestamp is a number"),
        (_entry(**{"@message": "x" * 70_000}), "longer than 64 KiB"),
    ],
)
def test_hclog_problems_flags(line: str, problem: str) -> None:
    problems = hclog_problems([_entry(), line])
    assert len(problems) >= 1
    assert all(p.startswith("stderr line 2: ") for p in problems)
    assert any(problem in p for p in problems), problems


def test_wait_all_gone_counts_only_live_processes() -> None:
    assert wait_all_gone([os.getpid()], 0.05) == [os.getpid()]
    assert wait_all_gone([2**22 + 12345], 0.05) == []


# ---- against the fake plugin


def test_start_and_shutdown_as_spire(fake_plugin: Path) -> None:
    with start_fake(fake_plugin, "ok") as plugin:
        assert plugin.handshake is not None and plugin.handshake.network == "unix"
        assert plugin.handshake_line == f"1|1|unix|{plugin.socket_path}|grpc|"
        assert plugin.socket_dir is not None and os.path.isdir(plugin.socket_dir)
        assert plugin.handshake_seconds is not None and 0 < plugin.handshake_seconds < 30
        assert plugin.plugin_service_names[0] == KEYMANAGER_SERVICE

        env = logged(plugin, "env")
        assert env["KeyManager"] == "KeyManager"
        assert (env["PLUGIN_PROTOCOL_VERSIONS"], env["PLUGIN_MIN_PORT"], env["PLUGIN_MAX_PORT"]) == (
            "1",
            "10000",
            "25000",
        )
        assert env["PLUGIN_CLIENT_CERT"] is None and env["FAKE_INHERITED"] == "yes"
        assert env["cwd"] == str(fake_plugin.parent) and env["stdin_is_devnull"] is True
        assert env["pgid"] == os.getpgrp() and env["sid"] == os.getsid(0)
        conn = logged(plugin, "conn info")
        assert (conn["service_id"], conn["network"]) == (1, "unix") and conn["address"]
        assert logged(plugin, "init")["host_services"] == []
        assert plugin.broker_stream_open()

        assert list(plugin.validate("a = 1", trust_domain="td.test").notes) == ["td.test:a = 1"]
        with pytest.raises(grpc.RpcError) as raised:
            plugin.get_public_keys()
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED

        pids = plugin.all_pids()
        assert plugin.shutdown() == 0
        assert plugin.deinit_code == grpc.StatusCode.UNIMPLEMENTED
        assert plugin.controller_shutdown_code == grpc.StatusCode.OK
        assert plugin.shutdown_seconds is not None and plugin.shutdown_seconds < 2.0
        assert wait_all_gone(pids, 2.0) == []
        assert not os.path.exists(plugin.socket_dir)
        assert hclog_problems(plugin.raw_stderr()) == []
        assert plugin.stdout_after_handshake() == []
    assert plugin.returncode == 0


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("junk", "is not a go-plugin handshake line"),
        ("exit", "stdout closed before a complete handshake line"),
        ("no_keymanager", "no supported plugin interface found"),
    ],
)
def test_start_failures_raise_and_kill(fake_plugin: Path, mode: str, message: str) -> None:
    with pytest.raises(PluginStartError, match=message) as raised:
        start_fake(fake_plugin, mode)
    if mode == "exit":
        assert "exit code 3" in str(raised.value) and "fatal: cannot start" in str(raised.value)


def test_handshake_timeout(fake_plugin: Path) -> None:
    with pytest.raises(PluginStartError, match=r"no handshake line on stdout within 0\.5 s"):
        start_fake(fake_plugin, "silent", handshake_timeout=0.5)


def test_plugin_ignoring_shutdown_is_killed(fake_plugin: Path) -> None:
    with start_fake(fake_plugin, "ignore_shutdown") as plugin:
        with pytest.raises(AssertionError, match=r"did not exit within 0\.5 s after Shutdown"):
            plugin.shutdown(timeout=0.5)
        assert plugin.returncode == -9


def test_non_json_stderr_is_reported(fake_plugin: Path) -> None:
    with start_fake(fake_plugin, "not_json") as plugin:
        plugin.wait_for_log("env")
        assert plugin.shutdown() == 0
        assert "plain text" in plugin.raw_stderr()
        assert all(entry.get("@message") != "plain text" for entry in plugin.log_lines())
        [problem] = hclog_problems(plugin.raw_stderr())
        assert "not a JSON object" in problem


@pytest.fixture
def bootloader(fake_plugin: Path) -> Iterator[PluginProcess]:
    with start_fake(fake_plugin, "bootloader") as plugin:
        yield plugin


def test_descendants_gone_after_shutdown(bootloader: PluginProcess) -> None:
    [child] = bootloader.descendant_pids()
    assert bootloader.shutdown() == 0
    assert wait_all_gone([bootloader.pid, child], 2.0) == []
    assert bootloader.descendant_pids() == [child]


def test_kill_hits_only_the_spawned_process_and_close_cleans_up(bootloader: PluginProcess) -> None:
    [child] = bootloader.descendant_pids()
    bootloader.kill()
    assert not bootloader.is_running() and bootloader.returncode == -9
    # The fake child has no parent-death handling: it survives the bootloader, as a real orphan would.
    assert wait_all_gone([child], 0.3) == [child]
    bootloader.close()
    assert wait_all_gone([child], 2.0) == []
