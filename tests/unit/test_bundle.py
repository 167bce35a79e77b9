"""The launcher: the process between SPIRE and the interpreter, when it is gone, and that its directory is
removed only then (a live one removes its own, and would warn if it were already gone)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugin.bundle import Launcher


def _exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_from_source_the_launcher_is_the_parent_and_nothing_is_unpacked() -> None:
    launcher = Launcher.of_this_process({"STATICX_BUNDLE_DIR": "/tmp/staticx-abc"})
    assert launcher == Launcher(os.getppid(), None)
    assert launcher.running()


def test_frozen_under_staticx_the_launcher_owns_the_directory_python_runs_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", "/tmp/staticx-abc/_internal", raising=False)
    launcher = Launcher.of_this_process({"STATICX_BUNDLE_DIR": "/tmp/staticx-abc"})
    assert launcher == Launcher(os.getppid(), Path("/tmp/staticx-abc"))
    # Python elsewhere than in what staticx unpacked: that directory is not ours to remove.
    monkeypatch.setattr(sys, "_MEIPASS", "/opt/other/_internal", raising=False)
    assert Launcher.of_this_process({"STATICX_BUNDLE_DIR": "/tmp/staticx-abc"}).unpacked is None


def test_a_gone_launchers_directory_is_removed(tmp_path: Path) -> None:
    unpacked = tmp_path / "staticx-gone"
    (unpacked / "_internal").mkdir(parents=True)
    launcher = Launcher(_exited_pid(), unpacked)
    assert not launcher.running()
    launcher.remove_if_gone()
    assert not unpacked.exists()


def test_a_running_launcher_keeps_its_directory(tmp_path: Path) -> None:
    unpacked = tmp_path / "staticx-running"
    unpacked.mkdir()
    launcher = Launcher(os.getppid(), unpacked)
    assert launcher.running()
    launcher.remove_if_gone()
    assert unpacked.is_dir()
