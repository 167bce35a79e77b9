"""The processes that launch this interpreter, and the directories they unpack.

The release binary is staticx's bootloader: it unpacks its own loader, C library and PyInstaller's one-file
binary into `$TMPDIR/staticx-*` and runs that; PyInstaller's bootloader unpacks Python into `$TMPDIR/_MEI*`
and runs it. SPIRE knows only the outermost process. Its SIGKILL (go-plugin's forced kill, Pdeathsig)
reaches that one alone, and then nobody is left to stop the interpreter or to remove what was unpacked: the
plugin watches the whole chain itself and cleans up after it.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Set by staticx's bootloader in the environment of the program it unpacked and runs.
STATICX_BUNDLE_ENV = "STATICX_BUNDLE_DIR"
_STATICX_PREFIX = "staticx-"
_PYINSTALLER_PREFIX = "_MEI"


def parent_of(pid: int) -> int | None:
    """The parent pid of `pid`, or None when it is gone (or /proc cannot tell)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ")".
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 2 or fields[0] in ("Z", "X"):
        return None
    return int(fields[1])


@dataclass(frozen=True)
class Launcher:
    pid: int
    unpacked: Path | None  # what it removes once its child exits


@dataclass(frozen=True)
class Launchers:
    """The processes between the one the host started and this interpreter, outermost first."""

    chain: tuple[Launcher, ...]

    @classmethod
    def of_this_process(cls, environ: Mapping[str, str] | None = None) -> Launchers:
        env = os.environ if environ is None else environ
        parent = os.getppid()
        meipass = getattr(sys, "_MEIPASS", "")
        if not (getattr(sys, "frozen", False) and Path(meipass).name.startswith(_PYINSTALLER_PREFIX)):
            return cls(chain=(Launcher(parent, None),))
        chain = [Launcher(parent, Path(meipass))]
        staticx_dir = env.get(STATICX_BUNDLE_ENV, "")
        staticx_pid = parent_of(parent)
        if staticx_dir and Path(staticx_dir).name.startswith(_STATICX_PREFIX) and staticx_pid is not None:
            # PyInstaller's bootloader runs under staticx's: that one is what the host started.
            chain.insert(0, Launcher(staticx_pid, Path(staticx_dir)))
        return cls(chain=tuple(chain))

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(launcher.pid for launcher in self.chain)

    def _gone(self, index: int) -> bool:
        pid = self.chain[index].pid
        if index == len(self.chain) - 1:
            return os.getppid() != pid
        # A launcher's child is reparented when the launcher dies; a zombie launcher has no parent to show.
        childs_parent = parent_of(self.chain[index + 1].pid)
        if childs_parent is not None:
            return childs_parent != pid
        return parent_of(pid) is None

    def intact(self) -> bool:
        """Every launcher still runs and is still the parent of the next."""
        return not any(self._gone(i) for i in range(len(self.chain)))

    def remove_orphaned(self) -> None:
        """Removes what a killed launcher would have removed after we exit; a launcher still running
        removes its own. The files stay usable to the processes that mapped them."""
        for index, launcher in enumerate(self.chain):
            if launcher.unpacked is not None and self._gone(index):
                shutil.rmtree(launcher.unpacked, ignore_errors=True)
