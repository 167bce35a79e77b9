"""Runs a command inside a root file system the way a container runtime runs a container, without one.

    python -m tests.support.container --root ROOT --bind HOST_DIR:/tmp --bind-ro BINARY:/plugins/x \\
        [--pid-namespace] [--uid 1000 --gid 1000] -- /plugins/x ARGS...

As root on the host, in a mount namespace of its own (nothing it mounts is seen outside, and all of it goes
when the last process inside exits):

- ROOT becomes a read-only mount, with a fresh /proc, and a /dev holding only what runtimes give a container
  (null, zero, full, random, urandom, tty; /dev/shm as tmpfs);
- each --bind / --bind-ro is mounted over its destination (created in ROOT if missing, so ROOT itself need
  not be writable), read-only for --bind-ro;
- then it changes root, drops to the uid/gid (no supplementary groups, hence no capabilities) and execs the
  command with this process's environment.

Without --pid-namespace the command replaces this process: the pid a test spawned is the command's, as when
SPIRE spawns a plugin. With it, this process stays outside, and the command runs as pid 1 of a new pid
namespace, as the entrypoint of a container (SPIRE's official image runs spire-server so); this process
forwards SIGTERM and SIGINT to it and exits with its status.

The network is the host's: a command inside reaches services on the host's loopback.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

# What Docker, containerd and CRI-O put in a container's /dev besides pts, mqueue and the console.
CONTAINER_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def encode(text: str | None) -> bytes | None:
        return text.encode() if text is not None else None

    _check(
        _libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)), f"mount {target}"
    )


@dataclass(frozen=True)
class Bind:
    source: Path
    destination: str  # inside the root
    read_only: bool = False

    @classmethod
    def parse(cls, spec: str, read_only: bool) -> Bind:
        source, sep, destination = spec.partition(":")
        if not sep or not destination.startswith("/"):
            raise argparse.ArgumentTypeError(f"{spec!r} is not HOST_PATH:/PATH_IN_ROOT")
        return cls(Path(source).resolve(), destination, read_only)


def _mount_point(root: Path, destination: str, like: Path) -> str:
    target = root / destination.lstrip("/")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        if like.is_dir():
            target.mkdir()
        else:
            target.touch()
    return str(target)


def _bind(source: str, target: str, read_only: bool) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


def _make_container_fs(root: Path, binds: list[Bind]) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Mount points are made before ROOT turns read-only; making them writes into ROOT on the host, which is
    # the test's own directory.
    points = [(bind, _mount_point(root, bind.destination, bind.source)) for bind in binds]
    for name in ("proc", "dev"):
        (root / name).mkdir(exist_ok=True)
    _mount(str(root), str(root), None, MS_BIND | MS_REC)
    _mount("tmpfs", str(root / "dev"), "tmpfs", MS_NOSUID, "mode=0755,size=64k")
    for device in CONTAINER_DEVICES:
        (root / "dev" / device).touch()
        _bind(f"/dev/{device}", str(root / "dev" / device), read_only=False)
    (root / "dev" / "shm").mkdir()
    _mount("shm", str(root / "dev" / "shm"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=64m")
    _mount(None, str(root), None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    for bind, target in points:
        _bind(str(bind.source), target, bind.read_only)


def _enter(root: Path, uid: int, gid: int, command: list[str]) -> None:
    # The /proc of the pid namespace the command will be in: mounted by a process inside it.
    _mount("proc", str(root / "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(root)
    os.chroot(".")
    os.chdir("/")
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    os.execve(command[0], command, dict(os.environ))


def _run_as_pid1(root: Path, uid: int, gid: int, command: list[str]) -> int:
    child = os.fork()
    if child == 0:
        try:
            _enter(root, uid, gid, command)
        finally:
            os._exit(127)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: os.kill(child, number))
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.container", description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--bind", action="append", default=[], type=lambda s: Bind.parse(s, False))
    parser.add_argument("--bind-ro", action="append", default=[], type=lambda s: Bind.parse(s, True))
    parser.add_argument("--uid", type=int, default=1000)
    parser.add_argument("--gid", type=int, default=1000)
    parser.add_argument("--pid-namespace", action="store_true")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    root = args.root.resolve()

    flags = CLONE_NEWNS | (CLONE_NEWPID if args.pid_namespace else 0)
    _check(_libc.unshare(flags), "unshare")
    _make_container_fs(root, [*args.bind, *args.bind_ro])
    if args.pid_namespace:
        return _run_as_pid1(root, args.uid, args.gid, args.command)
    _enter(root, args.uid, args.gid, args.command)
    return 127  # not reached: execve either replaced this process or raised


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
