"""Benchmark: start-up of the portable binary next to PyInstaller's output alone, in one run.

scripts/build.sh makes dist/aws-kms-keymanager-linux-amd64 by packing PyInstaller's program and its
directory (which need the build machine's glibc; they stay in build/pyinstaller/amd64/onedir) with
staticx's loader and C library into one file. This prints both sizes and, for each, the time from spawn
to the go-plugin handshake line and to a completed Shutdown, started alternately as SPIRE starts a
plugin, with TMPDIR on the same disk.
Run: .venv/bin/python scripts/bench_startup.py [--starts N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import BINARY  # noqa: E402
from tests.support.plugin_host import start_plugin  # noqa: E402

DYNAMIC = ROOT / "build" / "pyinstaller" / "amd64" / "onedir" / "aws-kms-keymanager.dynamic"


def _size(path: Path) -> int:
    """The binary's size; for PyInstaller's program, with the directory beside it."""
    if path != DYNAMIC:
        return path.stat().st_size
    return sum(entry.stat().st_size for entry in path.parent.rglob("*") if entry.is_file())


def one_start(binary: Path, tmpdir: str) -> tuple[float, float]:
    """(spawn to handshake line, spawn to exit after Shutdown), in ms."""
    with start_plugin([str(binary)], env={"TMPDIR": tmpdir, "PATH": "/usr/bin:/bin"}) as plugin:
        handshake = (plugin.handshake_seconds or 0.0) * 1000
        plugin.shutdown()
        whole = (time.monotonic() - plugin.spawned_at) * 1000
    return handshake, whole


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--starts", type=int, default=20, help="starts of each binary (default 20)")
    args = parser.parse_args()
    builds = {"portable (staticx)": BINARY, "PyInstaller only": DYNAMIC}
    for path in builds.values():
        if not path.is_file():
            print(f"{path} is missing: run scripts/build.sh first", file=sys.stderr)
            return 1

    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in builds}
    with tempfile.TemporaryDirectory(prefix="akm-bench-") as tmpdir:
        for _ in range(args.starts):
            for name, path in builds.items():  # alternated, so machine load falls on both alike
                samples[name].append(one_start(path, tmpdir))

    print(f"{args.starts} starts each, medians")
    print(f"{'build':<20} {'size':>8} {'to handshake':>14} {'p90':>8} {'to exit':>9}")
    for name, path in builds.items():
        handshakes = sorted(h for h, _ in samples[name])
        wholes = [w for _, w in samples[name]]
        p90 = handshakes[min(len(handshakes) - 1, int(len(handshakes) * 0.9))]
        print(
            f"{name:<20} {_size(path) / 1e6:>6.1f} MB {statistics.median(handshakes):>11.0f} ms "
            f"{p90:>5.0f} ms {statistics.median(wholes):>6.0f} ms"
        )
    extra = statistics.median(h for h, _ in samples["portable (staticx)"]) - statistics.median(
        h for h, _ in samples["PyInstaller only"]
    )
    print(f"\nthe portable binary's start-up costs {extra:+.0f} ms (median, to the handshake line)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
