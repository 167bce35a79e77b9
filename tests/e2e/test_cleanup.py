"""However SPIRE stops, our plugin goes with it and leaves nothing behind in TMPDIR.

SPIRE is given a private TMPDIR, which the plugin inherits: the binary unpacks itself there
(`staticx-*`) and makes its socket directory there. The plugin's processes are SPIRE's descendants in /proc.
SPIRE itself keeps one thing there, the unix socket of go-plugin's broker (`plugin<digits>`): a SIGKILLed
SPIRE cannot remove it, and it is not the plugin's to remove.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import MakeServer, ours
from tests.support.spire_server import exe_of, wait_gone

# How long the plugin may take to notice SPIRE is gone (SIGKILL: parent-death signal, or its 1 s poll).
EXIT_WAIT = 10.0


@pytest.mark.parametrize(
    ("signum", "group"),
    [
        pytest.param(signal.SIGTERM, False, id="SIGTERM"),
        # Ctrl-C in a terminal: SIGINT to the whole process group, the plugin included.
        pytest.param(signal.SIGINT, True, id="SIGINT-to-group"),
        pytest.param(signal.SIGKILL, False, id="SIGKILL"),
    ],
)
def test_nothing_outlives_spire(
    make_server: MakeServer, plugin_binary: Path, signum: int, group: bool
) -> None:
    server = make_server(ours(plugin_binary)).start()
    pids = server.plugin_pids()
    # staticx's bootloader (our binary), and Python, run from the PyInstaller program staticx unpacked.
    assert pids, "no plugin process under spire-server"
    unpacked = [str(path) for path in server.tmpdir.glob("staticx-*/aws-kms-keymanager.dynamic")]
    assert len(unpacked) == 1, "staticx did not unpack into SPIRE's TMPDIR"
    assert sorted(exe_of(pid) for pid in pids) == sorted([str(plugin_binary), *unpacked])
    spire_sockets = server.own_tmpdir_sockets()
    plugin_files = {p.name for p in server.tmpdir.iterdir()} - spire_sockets
    serving = server.wait_for_log(lambda e: e.get("msg") == "Plugin serving")
    assert Path(serving["socket"]).parent.name in plugin_files

    status = server.stop(signum, group=group)

    if signum == signal.SIGKILL:
        assert status == -signal.SIGKILL
    else:
        assert status == 0, server.log_tail()
    assert wait_gone(pids, EXIT_WAIT) == [], "plugin processes outlived SPIRE"
    assert server.processes_in_workdir() == []
    left = {p.name for p in server.tmpdir.iterdir()}
    assert left & plugin_files == set(), "the plugin left these behind in TMPDIR"
    if signum != signal.SIGKILL:
        assert left == set(), "left behind in TMPDIR"
