"""Wraps the PyInstaller one-file binary with staticx's loader and C library, reproducibly.

    python packaging/staticx_wrap.py IN OUT      (SOURCE_DATE_EPOCH must be set)

staticx stores its bundle as a tar archive whose members carry the build machine's file times and owners
(its copies of the libraries are made at build time); they are clamped here, so two builds of the same
sources give the same bytes. The archive is not compressed: xz costs every start 300 ms or more of unpacking.
"""

from __future__ import annotations

import os
import sys
import tarfile
from typing import IO, Any

from staticx.api import generate


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: staticx_wrap.py IN OUT\n")
        return 2
    epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    add_member = tarfile.TarFile.addfile

    def add_reproducibly(
        self: tarfile.TarFile, info: tarfile.TarInfo, fileobj: IO[bytes] | None = None
    ) -> Any:
        info.mtime = min(int(info.mtime), epoch)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return add_member(self, info, fileobj)

    tarfile.TarFile.addfile = add_reproducibly  # type: ignore[method-assign]
    generate(argv[0], argv[1], compress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
