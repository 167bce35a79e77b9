"""Packs PyInstaller's program and its `_internal` directory with staticx's loader and C library into one
file, reproducibly.

    python packaging/staticx_wrap.py PROGRAM OUT      (SOURCE_DATE_EPOCH must be set)

staticx packs a program and the libraries it links into a tar archive that its bootloader unpacks into
`$TMPDIR/staticx-*` at every start, before it runs the program there with its own loader. Here the archive
also holds the program's `_internal` directory (Python, the extension modules, the data files), and the
system libraries those need, so that one unpacking is all a start costs: PyInstaller's one-file binary inside
staticx was unpacked twice. The members carry the build machine's file times and owners; they are clamped
here, so two builds of the same sources give the same bytes. The archive is not compressed: xz costs every
start 300 ms or more of unpacking.
"""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path
from typing import IO, Any

import staticx.hooks
from staticx.api import generate
from staticx.elf import get_shobj_deps, is_dynamic_elf

CONTENTS = "_internal"  # PyInstaller's contents directory, beside the program


def add_contents(generator: Any) -> None:
    """A staticx hook: the program's contents directory, and the system libraries its ELF files load."""
    contents = Path(generator.orig_prog).parent / CONTENTS
    entries = sorted(contents.rglob("*"))
    bundled = {entry.name for entry in entries}
    for entry in entries:
        if entry.is_file() and not entry.is_symlink() and is_dynamic_elf(str(entry)):
            for dependency in get_shobj_deps(str(entry), libpath=[str(contents)]):
                if os.path.basename(dependency) not in bundled:
                    generator.add_library(dependency, exist_ok=True)
    archive = generator.sxar.tar
    archive.add(str(contents), arcname=CONTENTS, recursive=False)
    for entry in entries:
        archive.add(str(entry), arcname=str(CONTENTS / entry.relative_to(contents)), recursive=False)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: staticx_wrap.py PROGRAM OUT\n")
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
    staticx.hooks.hooks.append(add_contents)
    generate(argv[0], argv[1], compress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
