"""packaging/systemd/spire-server.service: spire-server with the plugin beside it, in systemd's sandbox.

systemd is not PID 1 here, so the unit cannot be started; instead:
- systemd itself checks the unit (`systemd-analyze verify`) and rates its sandbox (`systemd-analyze
  security`);
- the unit's sandbox settings are read from the file and turned into what they do to the processes, and a
  real spire-server with the real plugin runs under them (tests/support/container.py): the whole file
  system read-only but the data directory and a private /tmp (ProtectSystem=strict, ReadWritePaths=,
  PrivateTmp=), as uid 1000 (User=spire), a /dev of null, zero, full, random, urandom and tty
  (PrivateDevices=), /proc mounted `hidepid=invisible,subset=pid` (ProtectProc=invisible, ProcSubset=pid),
  no new privileges (NoNewPrivileges=), systemd's MemoryDenyWriteExecute= seccomp filter, the unit's
  Environment=, stopped by SIGTERM to spire-server alone (KillMode=mixed);
- every system call spire-server and the plugin make, as uid 1000, is in the unit's SystemCallFilter=, as
  systemd expands it, every socket is of a family RestrictAddressFamilies= allows, and none asks for a
  namespace (strace, through a plugin session of its own and through spire-server's start, a mint and its
  stop);
- a /tmp mounted noexec (what NoExecPaths=/tmp would do) stops the plugin from starting: the unit must not.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import COMMUNITY_CONFIG, REGION
from tests.support.container import Bind, Sandbox
from tests.support.kms_emulator import DUMMY_ACCESS_KEY_ID, DUMMY_SECRET_ACCESS_KEY, EmulatorControl
from tests.support.plugin_host import PluginStartError, start_plugin
from tests.support.rootfs import SPIRE_GID, SPIRE_UID, Container, empty_root, spire_tmp, uid_of
from tests.support.signatures import digest_of, verify
from tests.support.spire_server import (
    SPIRE_VERSIONS,
    KeyManagerBlock,
    SpireServer,
    alias_public_key,
    aws_env,
    descendants,
    install_spire,
    sha256_file,
    spki_der,
    verify_x509_svid,
    wait_gone,
)

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "spire-server.service"
# Where the unit's ExecStart has spire-server and where its comments and the README put the plugin.
SPIRE_SERVER_PATH = "/opt/spire/bin/spire-server"
PLUGIN_PATH = "/opt/spire/plugins/aws-kms-keymanager"
WORKLOAD = "spiffe://example.org/workload"
EXIT_WAIT = 10.0


def service_settings(unit: Path = UNIT) -> dict[str, list[str]]:
    """The [Service] section: each key's values in order (keys such as Environment= repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not Key=Value: {raw!r}"
        if section == "[Service]":
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}= {values}"
    return values[0]


def unit_environment(settings: dict[str, list[str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in settings.get("Environment", []):
        for assignment in shlex.split(value):
            name, _, val = assignment.partition("=")
            env[name] = val
    return env


def unit_sandbox(settings: dict[str, list[str]]) -> Sandbox:
    """What the unit's process settings do, as the container helper applies them."""
    proc = {
        "invisible": "hidepid=invisible",
        "noaccess": "hidepid=noaccess",
        "ptraceable": "hidepid=ptraceable",
    }
    options = [proc[v] for v in settings.get("ProtectProc", []) if v in proc]
    options += ["subset=pid" for v in settings.get("ProcSubset", []) if v == "pid"]
    return Sandbox(
        proc_options=",".join(options) or None,
        no_new_privileges=settings.get("NoNewPrivileges") == ["yes"],
        memory_deny_write_execute=settings.get("MemoryDenyWriteExecute") == ["yes"],
    )


def syscall_groups() -> dict[str, list[str]]:
    """systemd's own system call groups (`systemd-analyze syscall-filter`): names and nested groups."""
    listed = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in listed.splitlines():
        line = raw.strip()
        if raw.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif current is not None and line and not line.startswith("#"):
            current.append(line)
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    found: set[str] = set()
    for name in names:
        found |= expand(groups[name], groups) if name.startswith("@") else {name}
    return found


def allowed_syscalls(settings: dict[str, list[str]]) -> set[str]:
    """SystemCallFilter= as systemd applies it: allow lists add up, `~` lists take away."""
    groups = syscall_groups()
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in settings["SystemCallFilter"]:
        if value.startswith("~"):
            denied |= expand(value[1:].split(), groups)
        else:
            allowed |= expand(value.split(), groups)
    return allowed - denied


# -- systemd's own checks ---------------------------------------------------------------------------------


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a stand-in executable: `verify` checks that the binary exists."""
    stand_in = tmp_path / "spire-server"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    text = UNIT.read_text()
    assert f"\nExecStart={SPIRE_SERVER_PATH} " in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"\nExecStart={SPIRE_SERVER_PATH} ", f"\nExecStart={stand_in} "))
    return copy


def test_systemd_accepts_every_line_of_the_unit(unit_copy: Path) -> None:
    # verify exits 0 even for unknown keys or bad values, which it only prints: nothing printed is the test.
    checked = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_copy)], capture_output=True, text=True, timeout=60
    )
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


def test_a_misspelt_setting_is_reported_by_the_same_check(unit_copy: Path) -> None:
    unit_copy.write_text(unit_copy.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    checked = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_copy)], capture_output=True, text=True, timeout=60
    )
    assert "Unknown key 'ProtectSystm' in section [Service]" in checked.stderr


def test_systemd_rates_the_sandbox_ok(unit_copy: Path) -> None:
    rated = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    (level,) = re.findall(r"Overall exposure level for spire-server\.service: (\d+\.\d+) (\w+)", rated.stdout)
    # 0 is a unit that can do nothing; systemd calls up to 2.0 "OK", and most distribution units are 9+.
    # What is left: IP and Unix sockets, the host's network, users and root directory, /dev/rtc's ACL.
    assert level == ("1.2", "OK"), rated.stdout


def test_the_unit_keeps_what_the_plugin_needs() -> None:
    settings = service_settings()
    assert one(settings, "User") == "spire"
    assert one(settings, "ExecStart").split()[0] == SPIRE_SERVER_PATH
    assert one(settings, "ProtectSystem") == "strict"
    # The plugin unpacks itself into /tmp and runs what it unpacked: a private /tmp, writable, executable.
    assert one(settings, "PrivateTmp") == "yes"
    assert not any(
        "/tmp" in v
        for k in ("NoExecPaths", "InaccessiblePaths", "TemporaryFileSystem")
        for v in settings.get(k, [])
    )
    assert "TMPDIR" not in unit_environment(settings)
    assert one(settings, "ReadWritePaths") == "/var/lib/spire"
    assert unit_environment(settings) == {"AWS_REGION": "us-east-1"}


# -- the sandbox, on the real binaries --------------------------------------------------------------------


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not under /tmp: the container's /tmp is a directory inside it. Short: unix sockets live under it.
    path = Path(tempfile.mkdtemp(prefix="akm-unit-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def spire_binary() -> Path:
    return install_spire(SPIRE_VERSIONS[-1]).binary


def test_memory_deny_write_execute_filter_refuses_what_systemd_refuses() -> None:
    """The filter the next test runs under does bite: writable+executable memory is refused, as under
    systemd, while mapping executable memory that is not writable (loading a library) is not."""
    probe = (
        "import mmap, sys\n"
        "from tests.support.container import Sandbox, apply_sandbox\n"
        "apply_sandbox(Sandbox(memory_deny_write_execute=True))\n"
        "mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except PermissionError:\n"
        "    print('refused')\n"
    )
    ran = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, "refused\n"), ran.stderr


def test_spire_server_runs_the_plugin_in_the_units_sandbox(
    spire_binary: Path, plugin_binary: Path, emulator: EmulatorControl, workdir: Path
) -> None:
    settings = service_settings()
    sandbox = unit_sandbox(settings)
    assert sandbox == Sandbox(
        "hidepid=invisible,subset=pid", no_new_privileges=True, memory_deny_write_execute=True
    )
    (workdir / "server").mkdir()
    container = Container(
        # ProtectSystem=strict: nothing writable but what the unit names; /proc and /dev as systemd gives.
        empty_root(workdir),
        binds=(
            # The data directory (ReadWritePaths=, StateDirectory=) and the admin socket's directory, at one
            # path so that server.conf holds inside and out.
            Bind(workdir / "server", str(workdir / "server")),
            Bind(workdir / "server" / "tmp", "/tmp"),  # PrivateTmp=yes
            Bind(spire_binary, SPIRE_SERVER_PATH, read_only=True),
            Bind(plugin_binary, PLUGIN_PATH, read_only=True),
        ),
        sandbox=sandbox,
    )
    block = KeyManagerBlock(
        COMMUNITY_CONFIG, plugin_cmd=Path(PLUGIN_PATH), plugin_checksum=sha256_file(plugin_binary)
    )
    env = {k: v for k, v in aws_env(emulator.url, credentials=False).items() if k.startswith(("AWS_", "NO_"))}
    env.update(unit_environment(settings))
    with SpireServer(spire_binary, workdir / "server", block, env=env, container=container) as server:
        for directory in (server.workdir, server.data_dir, server.tmpdir):
            os.chown(directory, SPIRE_UID, SPIRE_GID)
        server.start()
        processes = [server.pid, *descendants(server.pid)]  # spire-server, then the plugin's two
        assert len(processes) == 3, processes
        assert {uid_of(pid) for pid in processes} == {SPIRE_UID}
        for pid in processes:
            status = Path(f"/proc/{pid}/status").read_text()
            assert re.search(r"^NoNewPrivs:\s+1$", status, re.MULTILINE), pid
            assert re.search(r"^Seccomp:\s+2$", status, re.MULTILINE), pid

        kms: Any = emulator.kms_client(REGION)
        bundle = server.bundle()
        (ca,) = bundle.x509_authorities
        assert spki_der(ca.public_key()) == alias_public_key(kms, "alias/SPIRE_SERVER_KEY/x509-CA-A")
        svid = server.mint_x509(WORKLOAD)
        assert verify_x509_svid(svid.chain, bundle.x509_authorities, WORKLOAD) == ca

        # KillMode=mixed: SIGTERM to spire-server alone, which stops its plugin itself.
        assert server.stop(signal.SIGTERM) == 0, server.log_tail()
        assert wait_gone(processes, EXIT_WAIT) == []
        assert sorted(p.name for p in server.tmpdir.iterdir()) == [], "left behind in /tmp"


def test_the_plugin_cannot_start_from_a_noexec_tmp(plugin_binary: Path, emulator: EmulatorControl) -> None:
    """Why the unit has no NoExecPaths=/tmp (and a host whose /tmp is noexec needs TMPDIR elsewhere)."""
    base = Path(tempfile.mkdtemp(prefix="akm-noexec-"))
    try:
        base.chmod(0o755)
        tmp = spire_tmp(base)
        container = Container(
            empty_root(base),
            binds=(Bind(tmp, "/tmp", no_exec=True), Bind(plugin_binary, PLUGIN_PATH, read_only=True)),
        )
        env = {"AWS_ENDPOINT_URL": emulator.url, "AWS_EC2_METADATA_DISABLED": "true"}
        with pytest.raises(PluginStartError) as refused:
            start_plugin(
                container.command([PLUGIN_PATH]), env=env, cwd=container.cwd, path_on_host=container.host_path
            )
        # What SPIRE would log from the plugin's stderr before it gives up on the plugin.
        assert re.search(
            r"Failed to execv\(\) /tmp/staticx-\w+/aws-kms-keymanager\.dynamic: Permission denied",
            str(refused.value),
        )
        assert sorted(p.name for p in tmp.iterdir()) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_every_system_call_of_the_plugin_is_in_the_units_filter(
    plugin_binary: Path, emulator: EmulatorControl, tmp_path: Path
) -> None:
    """strace follows the plugin (both processes) through a whole session SPIRE would have with it."""
    allowed = allowed_syscalls(service_settings())
    trace = tmp_path / "strace.out"
    plugin_tmp = tmp_path / "tmp"
    plugin_tmp.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TMPDIR": str(plugin_tmp),
        "AWS_ENDPOINT_URL": emulator.url,
        "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    strace = shutil.which("strace") or "/usr/bin/strace"
    command = [strace, "-f", "-qq", "-o", str(trace), str(plugin_binary)]
    with start_plugin(command, env=env, handshake_timeout=120) as plugin:
        plugin.configure(COMMUNITY_CONFIG)
        for key_type in (km.EC_P256, km.EC_P384, km.RSA_2048):
            key = plugin.generate_key(f"key-{key_type}", key_type).public_key
            signature = plugin.sign_data(key.id, digest_of(km.SHA256), hash_algorithm=km.SHA256).signature
            verify(key.pkix_data, signature, km.SHA256, None)
        plugin.configure(COMMUNITY_CONFIG)  # SIGUSR1's path: Configure again
        assert plugin.shutdown() == 0
    text = trace.read_text()
    made = set(re.findall(r"^\d+ +(?:<\.\.\. )?([a-z0-9_]+)[( ]", text, re.MULTILINE))
    assert {"execve", "mmap", "socket", "connect", "sendto"} <= made  # the trace saw the session
    assert sorted(made - allowed) == []
    assert_within_address_families_and_namespaces(text)


def assert_within_address_families_and_namespaces(trace: str) -> None:
    """RestrictAddressFamilies= and RestrictNamespaces=yes, as the trace shows them: every socket made is of a
    family the unit allows, and no process asked for a namespace of its own."""
    settings = service_settings()
    families = set(re.findall(r"socket\((AF_[A-Z0-9]+)", trace))
    assert "AF_INET" in families  # KMS was reached
    assert sorted(families - set(one(settings, "RestrictAddressFamilies").split())) == []
    assert one(settings, "RestrictNamespaces") == "yes"
    assert sorted(set(re.findall(r"CLONE_NEW[A-Z]+", trace))) == []


def syscalls_after_exec(trace: str, program: str) -> set[str]:
    """The system calls in an `strace -f` trace from the moment `program` was executed on: what setpriv
    did before, to become uid 1000, is not spire-server's."""
    start = re.search(rf'^\d+ +execve\("{re.escape(program)}".* = 0$', trace, re.MULTILINE)
    assert start, f"no execve of {program} in the trace"
    return set(re.findall(r"^\d+ +(?:<\.\.\. )?([a-z0-9_]+)[( ]", trace[start.start() :], re.MULTILINE))


def test_every_system_call_of_spire_server_and_the_plugin_is_in_the_units_filter(
    spire_binary: Path, plugin_binary: Path, emulator: EmulatorControl, workdir: Path
) -> None:
    allowed = allowed_syscalls(service_settings())
    trace = workdir / "strace.out"
    # Copies in the work directory, which uid 1000 can reach wherever the checkout and the cache are.
    spire_binary = Path(shutil.copy2(spire_binary, workdir / "spire-server-bin"))
    plugin_binary = Path(shutil.copy2(plugin_binary, workdir / "aws-kms-keymanager"))
    # spire-server runs as uid 1000 (User=spire: SQLite, for one, calls fchown only as root) under strace;
    # its CLI calls (healthcheck, mint) run as they are.
    strace = shutil.which("strace") or "/usr/bin/strace"
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    as_spire = f"{setpriv} --reuid={SPIRE_UID} --regid={SPIRE_GID} --clear-groups"
    wrapper = workdir / "spire-server"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = run ] && exec {strace} -f -qq -o {trace} {as_spire} {spire_binary} "$@"\n'
        f'exec {spire_binary} "$@"\n'
    )
    wrapper.chmod(0o755)
    (workdir / "server").mkdir()
    block = KeyManagerBlock.external(plugin_binary, COMMUNITY_CONFIG)
    with SpireServer(wrapper, workdir / "server", block, env=aws_env(emulator.url)) as server:
        for directory in (server.workdir, server.data_dir, server.tmpdir):
            os.chown(directory, SPIRE_UID, SPIRE_GID)
        server.start()
        server.mint_x509(WORKLOAD)
        (traced, *plugin) = descendants(server.pid)  # strace's child, spire-server, then the plugin's two
        assert len(plugin) == 2, plugin
        assert uid_of(traced) == SPIRE_UID
        # KillMode=mixed: SIGTERM to spire-server alone (strace passes its exit status on).
        os.kill(traced, signal.SIGTERM)
        assert server.wait_exit(30) == 0, server.log_tail()
    text = trace.read_text()
    made = syscalls_after_exec(text, str(spire_binary))
    assert {"execve", "mmap", "socket", "connect", "bind", "listen"} <= made  # the trace saw the run
    assert sorted(made - allowed) == []
    assert_within_address_families_and_namespaces(text[text.index(f'execve("{spire_binary}"') :])
