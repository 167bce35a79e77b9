"""The launcher chain: which processes stand between SPIRE and the interpreter, when one of them is gone, and
that only a gone launcher's directory is removed (a live one removes its own, and would warn if it were
already gone)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from plugin.bundle import Launcher, Launchers, parent_of


def _exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_parent_of_a_live_process_and_of_one_that_is_gone() -> None:
    assert parent_of(os.getpid()) == os.getppid()
    assert parent_of(_exited_pid()) is None


def test_parent_of_a_zombie_is_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Not reaped yet: a zombie once it has exited.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        assert parent_of(child.pid) is None
    finally:
        child.wait()


def test_from_source_the_only_launcher_is_the_parent_and_nothing_is_unpacked() -> None:
    launchers = Launchers.of_this_process({"STATICX_BUNDLE_DIR": "/tmp/staticx-abc"})
    assert launchers.chain == (Launcher(os.getppid(), None),)
    assert launchers.intact()


def test_a_gone_launcher_breaks_the_chain_and_only_its_directory_is_removed(tmp_path: Path) -> None:
    outer_dir, inner_dir = tmp_path / "staticx-outer", tmp_path / "_MEIinner"
    for directory in (outer_dir, inner_dir):
        (directory / "lib").mkdir(parents=True)
    # Our parent stands for PyInstaller's bootloader; its parent is not the (exited) outer launcher, as when
    # staticx's bootloader was SIGKILLed and the bootloader was reparented.
    launchers = Launchers((Launcher(_exited_pid(), outer_dir), Launcher(os.getppid(), inner_dir)))
    assert not launchers.intact()
    launchers.remove_orphaned()
    assert not outer_dir.exists()
    assert (inner_dir / "lib").is_dir()


def test_an_intact_chain_removes_nothing(tmp_path: Path) -> None:
    inner_dir = tmp_path / "_MEIinner"
    inner_dir.mkdir()
    launchers = Launchers((Launcher(os.getppid(), inner_dir),))
    assert launchers.intact()
    launchers.remove_orphaned()
    assert inner_dir.is_dir()
