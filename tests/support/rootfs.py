"""Root file systems where operators run SPIRE, made by the tests themselves, and containers to run in them.

    root = empty_root(base)                         # nothing at all: what `FROM scratch` gives
    root = debian_root("bullseye")                  # debootstrap, cached: glibc 2.31
    box = Container(root, binds=(Bind(tmp, "/tmp"), Bind(binary, PLUGIN_PATH, read_only=True)))
    with start_plugin(box.command([PLUGIN_PATH]), env=..., path_on_host=box.host_path) as plugin: ...

A container runs as uid 1000 in a read-only root with its own /proc and /dev (tests/support/container.py
does the mounting); `Container.command` is the argv that starts one. Only root can start them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.container import Bind, Sandbox

ROOT = Path(__file__).resolve().parents[2]
# SPIRE's images run spire-server as this user; it owns /tmp there, and nothing else is writable.
SPIRE_UID = 1000
SPIRE_GID = 1000
# The hardened Helm chart copies the plugin_cmd file alone into a read-only volume mounted here.
HELM_PLUGIN_PATH = "/plugins/aws-kms-keymanager"
# Where SPIRE's official image has spire-server.
OFFICIAL_IMAGE_SPIRE_SERVER = "/opt/spire/bin/spire-server"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_TIMEOUT = 20 * 60.0


def can_make_containers() -> str | None:
    """Why containers cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "containers need root (mount and pid namespaces, chroot)"
    return None


def empty_root(base: Path) -> Path:
    """An empty directory: the container adds only /proc, /dev and the mount points of its binds."""
    root = base / "root"
    root.mkdir(mode=0o755)
    return root


def spire_tmp(base: Path, name: str = "tmp") -> Path:
    """A directory for /tmp as SPIRE's images have it: owned by uid 1000, writable by it alone."""
    path = base / name
    path.mkdir(mode=0o755)
    os.chown(path, SPIRE_UID, SPIRE_GID)
    return path


def cache_dir() -> Path:
    home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(home) / "aws-kms-keymanager" / "rootfs"


def debian_root(suite: str = "bullseye") -> Path:
    """A minimal Debian root made with debootstrap from Debian's archive, cached across runs (about
    30 s to 2 min the first time). Raises RuntimeError with debootstrap's output if it fails."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / f"debian-{suite}"
    stamp = cache / f"debian-{suite}.complete"
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and (root / "usr/lib/os-release").exists():
            return root
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        shutil.rmtree(root, ignore_errors=True)
        made = subprocess.run(
            [debootstrap, "--variant=minbase", suite, str(root), DEBIAN_MIRROR],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DEBOOTSTRAP_TIMEOUT,
            check=False,
        )
        if made.returncode != 0:
            tail = "\n".join((made.stdout + made.stderr).splitlines()[-30:])
            raise RuntimeError(f"debootstrap {suite} failed with exit status {made.returncode}:\n{tail}")
        stamp.touch()
    return root


def glibc_version(root: Path) -> str:
    """The C library version of a Debian root up to bookworm, from the name of its libc (libc-2.31.so)."""
    found = sorted(root.glob("lib/x86_64-linux-gnu/libc-*.so"))
    if not found:
        raise AssertionError(f"no lib/x86_64-linux-gnu/libc-*.so in {root}")
    return found[0].name.removeprefix("libc-").removesuffix(".so")


def uid_of(pid: int) -> int:
    """The real uid process `pid` runs as."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line in /proc/{pid}/status")


@dataclass(frozen=True)
class Container:
    root: Path
    binds: tuple[Bind, ...] = ()
    uid: int = SPIRE_UID
    gid: int = SPIRE_GID
    # The command is pid 1 of a pid namespace of its own (a container's entrypoint); otherwise it replaces
    # the spawned process, so the pid a test spawns is the command's (as when SPIRE spawns a plugin).
    pid_namespace: bool = False
    python: str = field(default=sys.executable)
    # systemd's process sandbox on top (tests/support/container.py): /proc options, no_new_privs, and the
    # MemoryDenyWriteExecute seccomp filter.
    sandbox: Sandbox = field(default_factory=Sandbox)

    def command(self, argv: Sequence[str]) -> list[str]:
        command = [self.python, "-m", "tests.support.container", "--root", str(self.root)]
        command += ["--uid", str(self.uid), "--gid", str(self.gid)]
        for bind in self.binds:
            option = "--bind-ro" if bind.read_only else "--bind-noexec" if bind.no_exec else "--bind"
            command += [option, f"{bind.source}:{bind.destination}"]
        if self.pid_namespace:
            command.append("--pid-namespace")
        if self.sandbox.proc_options is not None:
            command += ["--proc-options", self.sandbox.proc_options]
        if self.sandbox.no_new_privileges:
            command.append("--no-new-privileges")
        if self.sandbox.memory_deny_write_execute:
            command.append("--memory-deny-write-execute")
        return [*command, "--", *argv]

    def host_path(self, inside: str) -> str:
        """Where a path inside the container is on the host."""
        for bind in sorted(self.binds, key=lambda b: len(b.destination), reverse=True):
            if inside == bind.destination or inside.startswith(bind.destination.rstrip("/") + "/"):
                return str(bind.source) + inside[len(bind.destination.rstrip("/")) :]
        return str(self.root) + inside

    @property
    def cwd(self) -> str:
        """The working directory to spawn it from (tests.support.container must be importable)."""
        return str(ROOT)
