"""The binary in an empty root (what SPIRE's `FROM scratch` image gives a plugin under the hardened Helm
chart), on x86-64 and on arm64 (under qemu-user), and in a Debian 11 root (glibc 2.31, the Ubuntu 20.04
generation): as uid 1000, from a read-only path, it serves all four key types with signatures that verify,
stops cleanly, and leaves nothing behind when SPIRE SIGKILLs the process it started."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import COMMUNITY_CONFIG
from tests.portable.conftest import PLATFORMS, MakeBox, container_env
from tests.support.container import Bind
from tests.support.kms_emulator import EmulatorControl
from tests.support.plugin_host import hclog_problems, wait_all_gone
from tests.support.rootfs import ROOT as REPO
from tests.support.rootfs import Container, glibc_version, spire_tmp, uid_of
from tests.support.signatures import digest_of, verify

# The hash SPIRE uses with each key type for its CA and JWT signatures.
SIGNING = {km.EC_P256: km.SHA256, km.EC_P384: km.SHA384, km.RSA_2048: km.SHA256, km.RSA_4096: km.SHA256}
EXIT_WAIT = 5.0  # the plugin polls the process SPIRE started once a second


def _wait_empty(directory: Path, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := sorted(p.name for p in directory.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.parametrize(("root", "arch"), PLATFORMS)
def test_serves_every_key_type_as_uid_1000(
    make_box: MakeBox, emulator: EmulatorControl, root: str, arch: str
) -> None:
    box = make_box(root, arch=arch)
    with box.start(container_env(emulator.url)) as plugin:
        pids = plugin.all_pids()
        assert len(pids) == 2, "staticx's bootloader and Python"
        assert {uid_of(pid) for pid in pids} == {1000}
        plugin.configure(COMMUNITY_CONFIG)
        for key_type, hash_algorithm in SIGNING.items():
            key_id = f"x509-CA-{km.KeyType.Name(key_type)}"
            public = plugin.generate_key(key_id, key_type).public_key
            signature = plugin.sign_data(key_id, digest_of(hash_algorithm), hash_algorithm).signature
            verify(public.pkix_data, signature, hash_algorithm, None)
        assert sorted(k.id for k in plugin.get_public_keys().public_keys) == [
            "x509-CA-EC_P256",
            "x509-CA-EC_P384",
            "x509-CA-RSA_2048",
            "x509-CA-RSA_4096",
        ]
        assert plugin.shutdown() == 0
        assert wait_all_gone(pids, EXIT_WAIT) == []
        assert hclog_problems(plugin.raw_stderr()) == []
    assert box.leftovers() == [], "left behind in /tmp"


@pytest.mark.parametrize(("root", "arch"), PLATFORMS)
def test_sigkill_of_the_process_spire_started_leaves_nothing_behind(
    make_box: MakeBox, emulator: EmulatorControl, root: str, arch: str
) -> None:
    box = make_box(root, arch=arch)
    with box.start(container_env(emulator.url)) as plugin:
        plugin.configure(COMMUNITY_CONFIG)
        plugin.generate_key("x509-CA-A", km.EC_P256)
        pids = plugin.all_pids()
        assert [name[:4] for name in box.leftovers()] == ["plug", "stat"]
        plugin.kill()  # SIGKILL to the spawned process only, as SPIRE's Pdeathsig and go-plugin's kill
        assert wait_all_gone(pids, EXIT_WAIT) == [], "plugin processes outlived the one SPIRE started"
        assert _wait_empty(box.tmp, EXIT_WAIT) == [], "left behind in /tmp"
        assert hclog_problems(plugin.raw_stderr()) == []


def test_the_debian11_root_is_a_glibc_2_31_system_where_a_plain_build_fails(
    debian11_root: Path, base: Path
) -> None:
    # What makes this root a judge: it is the Debian 11 generation, and PyInstaller's output alone (the
    # program and its directory before staticx packs them, as main shipped it before) cannot start there.
    assert glibc_version(debian11_root) == "2.31"
    onedir = REPO / "build" / "pyinstaller" / "amd64" / "onedir"
    dynamic = onedir / "aws-kms-keymanager.dynamic"
    assert dynamic.is_file(), f"{dynamic} is missing: scripts/build.sh leaves it there"
    binds = (Bind(spire_tmp(base), "/tmp"), Bind(onedir, "/plugins", read_only=True))
    container = Container(debian11_root, binds)
    ran = subprocess.run(
        container.command([f"/plugins/{dynamic.name}", "--version"]),
        cwd=container.cwd,
        env={},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode != 0
    assert "version `GLIBC_2.3" in ran.stderr, ran.stderr
