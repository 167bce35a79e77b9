"""The process that launches this interpreter, and the directory it unpacks.

The release binary is staticx's bootloader: it unpacks its own loader, C library, PyInstaller's program and
that program's `_internal` directory (Python and everything it loads) into `$TMPDIR/staticx-*`, runs the
program there and removes the directory once it exits. SPIRE knows only the bootloader's process. Its SIGKILL
(go-plugin's forced kill, Pdeathsig) reaches that one alone, and then nobody is left to stop the interpreter
or to remove what was unpacked: the plugin watches its launcher itself and cleans up after it.
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


@dataclass(frozen=True)
class Launcher:
    """The process that started this interpreter (the one the host started), and what it unpacked."""

    pid: int
    unpacked: Path | None  # what it removes once its child exits

    @classmethod
    def of_this_process(cls, environ: Mapping[str, str] | None = None) -> Launcher:
        env = os.environ if environ is None else environ
        staticx_dir = Path(env.get(STATICX_BUNDLE_ENV, ""))
        contents = Path(getattr(sys, "_MEIPASS", ""))
        frozen = getattr(sys, "frozen", False)
        if frozen and staticx_dir.name.startswith(_STATICX_PREFIX) and contents.parent == staticx_dir:
            # The interpreter runs from what staticx's bootloader, its parent, unpacked.
            return cls(os.getppid(), staticx_dir)
        return cls(os.getppid(), None)

    def running(self) -> bool:
        """Still our parent: when it dies, the kernel gives us another."""
        return os.getppid() == self.pid

    def remove_if_gone(self) -> None:
        """Removes what a killed launcher would have removed after we exit; a launcher still running
        removes its own. The files stay usable to the processes that mapped them."""
        if self.unpacked is not None and not self.running():
            shutil.rmtree(self.unpacked, ignore_errors=True)
