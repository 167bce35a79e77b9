"""Runs a command inside a root file system the way a container runtime runs a container, without one.

    python -m tests.support.container --root ROOT --bind HOST_DIR:/tmp --bind-ro BINARY:/plugins/x \\
        [--pid-namespace] [--uid 1000 --gid 1000] [--bind-noexec HOST_DIR:/DIR] [--proc-options OPTIONS] \\
        [--no-new-privileges] [--memory-deny-write-execute] -- /plugins/x ARGS...

As root on the host, in a mount namespace of its own (nothing it mounts is seen outside, and all of it goes
when the last process inside exits):

- ROOT becomes a read-only mount, with a fresh /proc, and a /dev holding only what runtimes give a container
  (null, zero, full, random, urandom, tty; /dev/shm as tmpfs);
- each --bind / --bind-ro is mounted over its destination (created in ROOT if missing, so ROOT itself need
  not be writable), read-only for --bind-ro;
- then it changes root, drops to the uid/gid (no supplementary groups, hence no capabilities) and execs the
  command with this process's environment.

What systemd's sandbox adds, for its units (packaging/systemd): --bind-noexec mounts a writable bind
`noexec` (NoExecPaths=); --proc-options mounts /proc with those options (ProtectProc=invisible is
`hidepid=invisible`, ProcSubset=pid is `subset=pid`); --no-new-privileges sets no_new_privs
(NoNewPrivileges=yes); --memory-deny-write-execute also installs the seccomp filter systemd installs for
MemoryDenyWriteExecute=yes (x86-64): mmap asking for writable and executable memory at once, mprotect and
pkey_mprotect asking for executable memory, and shmat with SHM_EXEC fail with EPERM.

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
import platform
import signal
import struct
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

PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

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
    no_exec: bool = False

    @classmethod
    def parse(cls, spec: str, read_only: bool, no_exec: bool = False) -> Bind:
        source, sep, destination = spec.partition(":")
        if not sep or not destination.startswith("/"):
            raise argparse.ArgumentTypeError(f"{spec!r} is not HOST_PATH:/PATH_IN_ROOT")
        return cls(Path(source).resolve(), destination, read_only, no_exec)


def _mount_point(root: Path, destination: str, like: Path) -> str:
    target = root / destination.lstrip("/")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        if like.is_dir():
            target.mkdir()
        else:
            target.touch()
    return str(target)


def _bind(source: str, target: str, read_only: bool, no_exec: bool = False) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    if read_only or no_exec:
        flags = (MS_RDONLY | MS_NOSUID if read_only else 0) | (MS_NOEXEC if no_exec else 0)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | flags)


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
        _bind(str(bind.source), target, bind.read_only, bind.no_exec)


@dataclass(frozen=True)
class Sandbox:
    """What systemd adds to a unit's processes beyond the file system (see the module docstring)."""

    proc_options: str | None = None
    no_new_privileges: bool = False
    memory_deny_write_execute: bool = False


# Classic BPF, as seccomp takes it: struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}.
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JSET_K, _BPF_AND_K, _BPF_RET_K = 0x20, 0x15, 0x45, 0x54, 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_EPERM = 0x00050000 | 1
_AUDIT_ARCH_X86_64 = 0xC000003E
_X86_64_MMAP, _X86_64_MPROTECT, _X86_64_SHMAT, _X86_64_PKEY_MPROTECT = 9, 10, 30, 329
_PROT_WRITE, _PROT_EXEC, _SHM_EXEC = 0x2, 0x4, 0o100000
_ARCH_OFFSET, _NR_OFFSET, _ARG2_OFFSET = 4, 0, 16 + 2 * 8  # struct seccomp_data; args are u64, little-endian


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def memory_deny_write_execute_filter() -> list[bytes]:
    """systemd's MemoryDenyWriteExecute=yes rules (src/shared/seccomp-util.c), for x86-64. Jumps are
    relative: to instruction i + 1 + offset."""
    deny, allow = 15, 16
    return [
        _insn(_BPF_LD_W_ABS, _ARCH_OFFSET),  # 0
        _insn(_BPF_JEQ_K, _AUDIT_ARCH_X86_64, 0, allow - 2),  # 1: another ABI is not filtered
        _insn(_BPF_LD_W_ABS, _NR_OFFSET),  # 2
        _insn(_BPF_JEQ_K, _X86_64_MMAP, 8 - 4, 0),  # 3 -> 8
        _insn(_BPF_JEQ_K, _X86_64_MPROTECT, 11 - 5, 0),  # 4 -> 11
        _insn(_BPF_JEQ_K, _X86_64_PKEY_MPROTECT, 11 - 6, 0),  # 5 -> 11
        _insn(_BPF_JEQ_K, _X86_64_SHMAT, 13 - 7, 0),  # 6 -> 13
        _insn(_BPF_RET_K, _SECCOMP_RET_ALLOW),  # 7
        _insn(_BPF_LD_W_ABS, _ARG2_OFFSET),  # 8: mmap's prot
        _insn(_BPF_AND_K, _PROT_WRITE | _PROT_EXEC),  # 9
        _insn(_BPF_JEQ_K, _PROT_WRITE | _PROT_EXEC, deny - 11, allow - 11),  # 10
        _insn(_BPF_LD_W_ABS, _ARG2_OFFSET),  # 11: mprotect's prot
        _insn(_BPF_JSET_K, _PROT_EXEC, deny - 13, allow - 13),  # 12
        _insn(_BPF_LD_W_ABS, _ARG2_OFFSET),  # 13: shmat's flags
        _insn(_BPF_JSET_K, _SHM_EXEC, deny - 15, allow - 15),  # 14
        _insn(_BPF_RET_K, _SECCOMP_RET_EPERM),  # 15 deny
        _insn(_BPF_RET_K, _SECCOMP_RET_ALLOW),  # 16 allow
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _prctl(option: int, arg: int, what: str) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), what)


def apply_sandbox(sandbox: Sandbox) -> None:
    """Sets no_new_privs and installs the seccomp filter in this process, for good and for what it execs."""
    if sandbox.no_new_privileges or sandbox.memory_deny_write_execute:
        # An unprivileged process may install a seccomp filter only under no_new_privs.
        _prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")
    if sandbox.memory_deny_write_execute:
        if platform.machine() != "x86_64":
            raise OSError(
                f"--memory-deny-write-execute knows x86-64's system calls, not {platform.machine()}'s"
            )
        program = memory_deny_write_execute_filter()
        buffer = ctypes.create_string_buffer(b"".join(program))
        fprog = _SockFprog(len(program), ctypes.cast(buffer, ctypes.c_void_p))
        _check(
            _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0),
            "prctl(PR_SET_SECCOMP)",
        )


def _enter(root: Path, uid: int, gid: int, command: list[str], sandbox: Sandbox) -> None:
    # The /proc of the pid namespace the command will be in: mounted by a process inside it.
    _mount("proc", str(root / "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, sandbox.proc_options)
    os.chdir(root)
    os.chroot(".")
    os.chdir("/")
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    # Last: the filter applies to every system call from here on, this process's execve included.
    apply_sandbox(sandbox)
    os.execve(command[0], command, dict(os.environ))


def _run_as_pid1(root: Path, uid: int, gid: int, command: list[str], sandbox: Sandbox) -> int:
    child = os.fork()
    if child == 0:
        try:
            _enter(root, uid, gid, command, sandbox)
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
    parser.add_argument(
        "--bind-noexec", action="append", default=[], type=lambda s: Bind.parse(s, False, no_exec=True)
    )
    parser.add_argument("--proc-options")
    parser.add_argument("--no-new-privileges", action="store_true")
    parser.add_argument("--memory-deny-write-execute", action="store_true")
    parser.add_argument("--uid", type=int, default=1000)
    parser.add_argument("--gid", type=int, default=1000)
    parser.add_argument("--pid-namespace", action="store_true")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    root = args.root.resolve()

    flags = CLONE_NEWNS | (CLONE_NEWPID if args.pid_namespace else 0)
    _check(_libc.unshare(flags), "unshare")
    sandbox = Sandbox(args.proc_options, args.no_new_privileges, args.memory_deny_write_execute)
    _make_container_fs(root, [*args.bind, *args.bind_ro, *args.bind_noexec])
    if args.pid_namespace:
        return _run_as_pid1(root, args.uid, args.gid, args.command, sandbox)
    _enter(root, args.uid, args.gid, args.command, sandbox)
    return 127  # not reached: execve either replaced this process or raised


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
