"""The binary as a go-plugin process under SPIRE: handshake, services, logs, signals and a clean exit."""

from __future__ import annotations

import os
import re
import signal
import stat
import time
from pathlib import Path

from proto_gen.health import health_pb2
from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import COMMUNITY_CONFIG, StartPlugin
from tests.support.plugin_host import hclog_problems, wait_all_gone


def test_a_whole_spire_session_leaves_nothing_behind(start: StartPlugin, plugin_tmpdir: Path) -> None:
    plugin = start()
    assert plugin.socket_dir is not None
    assert stat.S_IMODE(os.stat(plugin.socket_dir).st_mode) == 0o700
    assert plugin.stdout_after_handshake() == []
    assert plugin.plugin_service_names == [
        "spire.plugin.server.keymanager.v1.KeyManager",
        "spire.service.common.config.v1.Config",
    ]
    health = plugin.health.Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    plugin.configure(COMMUNITY_CONFIG)
    plugin.generate_key("x509-CA-A", km.EC_P256)
    pids = plugin.all_pids()
    running = sorted(entry.name for entry in plugin_tmpdir.iterdir())
    # staticx unpacks its loader, C library, PyInstaller's program and Python, once.
    kinds = [re.match(r"plugin|staticx-|", name).group() or name for name in running]  # type: ignore[union-attr]
    assert kinds == ["plugin", "staticx-"], running
    assert len(pids) == 2, "staticx's bootloader and the Python program"

    assert plugin.shutdown() == 0
    assert plugin.shutdown_seconds is not None and plugin.shutdown_seconds < 1.0
    assert wait_all_gone(pids, 2) == []
    assert not os.path.exists(plugin.socket_dir)
    assert list(plugin_tmpdir.iterdir()) == [], "the unpacked bundle must be removed"
    assert hclog_problems(plugin.raw_stderr()) == []
    messages = [line["@message"] for line in plugin.log_lines()]
    assert "Configured" in messages and "Key generated" in messages


def test_sigkill_from_spire_takes_the_whole_plugin_down(start: StartPlugin, plugin_tmpdir: Path) -> None:
    plugin = start()
    plugin.configure(COMMUNITY_CONFIG)
    pids = plugin.all_pids()
    plugin.kill()
    assert wait_all_gone(pids, 3) == [], "the plugin must exit when the process SPIRE started is killed"
    deadline = time.monotonic() + 3
    while list(plugin_tmpdir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(plugin_tmpdir.iterdir()) == [], "the unpacked bundle must not leak"


def test_ctrl_c_is_left_to_spire(start: StartPlugin) -> None:
    plugin = start()
    plugin.configure(COMMUNITY_CONFIG)
    for pid in plugin.all_pids():
        os.kill(pid, signal.SIGINT)
    time.sleep(0.5)
    assert plugin.is_running()
    assert plugin.generate_key("x509-CA-A", km.EC_P256).public_key.id == "x509-CA-A"
    assert plugin.shutdown() == 0
