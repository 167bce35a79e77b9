"""What an operator notices about the binary: it starts, answers --version/--help, refuses to run
without SPIRE, fits its size budget, has the checksum our script prints, starts in any locale, speaks the
go-plugin handshake, and leaves nothing behind in TMPDIR."""

from __future__ import annotations

import datetime
import hashlib
import io
import re
import shutil
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from plugin import PLUGIN_NAME, __version__
from tests.packaging.conftest import REPO, Runner, unpack_dirs

pytestmark = pytest.mark.binary

# Measured: 50,917,840 bytes with staticx's loader and C library (PyInstaller 6.22.3, CPython 3.11.7, grpcio
# 1.85.1, botocore 1.44.8), nothing compressed (compressed, 21 MB, it started 0.2 s slower). 55 MB is the
# promise to operators; going over it means a trim stopped working (botocore's models alone would add
# hundreds of MB) or something new got bundled.
SIZE_BUDGET_BYTES = 55_000_000

NOT_A_COMMAND_HINT = "This binary is a plugin"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


# How --version names each architecture: as SPIRE's release files and container platforms do.
PLATFORM = {"amd64": "static, any x86-64 Linux", "arm64": "static, any arm64 Linux"}


def _version_line(arch: str) -> str:
    """What --version must say for a build of this work tree: scripts/build.sh's commit and date."""
    commit = _git("rev-parse", "--short=12", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += "-modified"
    epoch = int(_git("log", "-1", "--format=%ct"))
    built = datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{PLUGIN_NAME} {__version__} (commit {commit}, built {built}, {PLATFORM[arch]})\n"


def test_version_names_the_commit_the_date_and_the_platform(run: Runner, arch: str) -> None:
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == _version_line(arch)
    assert result.stderr == ""


def test_help(run: Runner) -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{PLUGIN_NAME} {__version__}")
    for expected in ("plugin_cmd", "plugin_checksum", "--version"):
        assert expected in result.stdout


@pytest.mark.parametrize("cookie", [None, "wrong"], ids=["no-cookie", "wrong-cookie"])
def test_without_the_magic_cookie_it_says_it_is_a_plugin(run: Runner, cookie: str | None) -> None:
    result = run(env={"KeyManager": cookie} if cookie is not None else None)
    assert result.returncode == 1
    assert NOT_A_COMMAND_HINT in result.stderr
    assert result.stdout == ""


# e_machine in the ELF header (2 bytes, little-endian, at offset 18): EM_X86_64 and EM_AARCH64.
ELF_MACHINE = {"amd64": 62, "arm64": 183}


def test_is_a_static_executable_for_its_architecture(binary: Path, arch: str) -> None:
    header = binary.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == ELF_MACHINE[arch]
    program_headers = subprocess.run(
        ["readelf", "--program-headers", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    assert "INTERP" not in program_headers, "it asks for a loader the machine may not have"


def test_size_is_within_budget(binary: Path) -> None:
    size = binary.stat().st_size
    assert size < SIZE_BUDGET_BYTES, (
        f"{binary} is {size:,} bytes, over the {SIZE_BUDGET_BYTES:,} budget: check build.spec's trims "
        "and packaging/hooks/"
    )


def _run_checksum_script(path: Path) -> str:
    result = subprocess.run(
        [str(REPO / "scripts" / "checksum.sh"), str(path)], capture_output=True, text=True, check=True
    )
    return result.stdout


def test_checksum_script_prints_the_sha256_of_the_binary(binary: Path) -> None:
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    assert _run_checksum_script(binary) == f'plugin_checksum = "{digest}"\n'


def test_checksum_script_works_for_any_file(tmp_path: Path) -> None:
    sample = tmp_path / "name with spaces"
    sample.write_bytes(b"abc")
    # The SHA-256 test vector for "abc".
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert _run_checksum_script(sample) == f'plugin_checksum = "{expected}"\n'


@pytest.fixture(scope="session")
def euc_jp_locale_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """LANG/LC_ALL for ja_JP.EUC-JP. The locale is compiled into a private LOCPATH when localedef can, so
    that setlocale() really succeeds and Python would see EUC-JP without UTF-8 mode."""
    env = {"LANG": "ja_JP.EUC-JP", "LC_ALL": "ja_JP.EUC-JP", "LC_CTYPE": "ja_JP.EUC-JP"}
    localedef = shutil.which("localedef")
    if localedef:
        locpath = tmp_path_factory.mktemp("locale")
        made = subprocess.run(
            [localedef, "-i", "ja_JP", "-f", "EUC-JP", str(locpath / "ja_JP.EUC-JP")],
            capture_output=True,
            check=False,
        )
        if made.returncode == 0:
            env["LOCPATH"] = str(locpath)
    return env


def test_starts_in_a_non_utf8_locale(run: Runner, euc_jp_locale_env: dict[str, str]) -> None:
    # Without UTF-8 mode (and without the CJK codecs, which are not bundled) the interpreter dies at start.
    result = run("--version", env=euc_jp_locale_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{PLUGIN_NAME} {__version__} (commit ")
    no_cookie = run(env=euc_jp_locale_env)
    assert no_cookie.returncode == 1
    assert NOT_A_COMMAND_HINT in no_cookie.stderr


@pytest.mark.parametrize(
    ("args", "expected_rc"),
    [(["--version"], 0), (["--help"], 0), ([], 1)],
    ids=["version", "help", "no-cookie"],
)
def test_no_unpack_dir_is_left_after_exit(
    run: Runner, private_tmpdir: Path, args: list[str], expected_rc: int
) -> None:
    result = run(*args)
    assert result.returncode == expected_rc, result.stderr
    assert unpack_dirs(private_tmpdir) == []
    assert list(private_tmpdir.iterdir()) == []


@dataclass
class Bundle:
    program: Path  # PyInstaller's program, as staticx runs it
    files: set[str]  # what staticx unpacks beside the program at start (its _internal directory)
    modules: set[str]  # modules in the PYZ archive and base_library.zip


@pytest.fixture(scope="module")
def bundle(binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    from elftools.elf.elffile import ELFFile
    from PyInstaller.archive.readers import CArchiveReader
    from staticx.constants import ARCHIVE_SECTION

    # Read with pyelftools: staticx's own reader runs the host's objcopy, which knows no arm64 file.
    with binary.open("rb") as elf:
        packed = ELFFile(elf).get_section_by_name(ARCHIVE_SECTION).data()
    with tarfile.open(fileobj=io.BytesIO(packed), mode="r") as archive:
        files = {
            name.removeprefix("_internal/") for name in archive.getnames() if name.startswith("_internal/")
        }
        program = tmp_path_factory.mktemp("program") / "program"
        program.write_bytes(_member(archive, f"{PLUGIN_NAME}.dynamic"))
        base_library = _member(archive, "_internal/base_library.zip")
    modules = set(CArchiveReader(str(program)).open_embedded_archive("PYZ.pyz").toc)
    with zipfile.ZipFile(io.BytesIO(base_library)) as library:
        for name in library.namelist():
            modules.add(name.removesuffix(".pyc").removesuffix("/__init__").replace("/", "."))
    return Bundle(program=program, files=files, modules=modules)


def _member(archive: tarfile.TarFile, name: str) -> bytes:
    member = archive.extractfile(name)
    assert member is not None, f"{name} is not a file in the staticx archive"
    return member.read()


def test_utf8_mode_and_optimization_are_baked_in(bundle: Bundle) -> None:
    from PyInstaller.archive.readers import CArchiveReader

    # Frozen programs ignore PYTHONUTF8/PYTHONOPTIMIZE: only the options stored in the program count.
    options = list(CArchiveReader(str(bundle.program)).options)
    assert "X utf8" in options
    assert options.count("O") == 2


def test_botocore_data_is_trimmed_to_what_the_plugin_uses(bundle: Bundle) -> None:
    data = {name for name in bundle.files if name.startswith("botocore/")}
    services = {name.split("/")[2] for name in data if name.count("/") == 4}
    # kms, sts and the tagging API for the plugin; sso, sso-oidc and signin for botocore's default
    # credential chain.
    assert services == {"kms", "sts", "resourcegroupstaggingapi", "sso", "sso-oidc", "signin"}
    for needed in ("endpoints.json", "partitions.json", "sdk-default-configuration.json", "_retry.json"):
        assert f"botocore/data/{needed}" in data
    assert "botocore/cacert.pem" in data
    for service in services:
        assert any(re.fullmatch(rf"botocore/data/{service}/[^/]+/service-2\.json(\.gz)?", n) for n in data)
    assert not [name for name in data if name.endswith("examples-1.json")]


def test_dropped_data_stays_dropped(bundle: Bundle) -> None:
    # The plugin speaks to AWS through botocore alone: boto3 (and the s3transfer it imports) cost 0.1 s.
    assert not [m for m in bundle.modules if m.split(".")[0] in ("boto3", "s3transfer")]
    assert not [n for n in bundle.files if n.startswith("dateutil/zoneinfo/")]
    assert not [n for n in bundle.files if n.endswith((".pyi", ".h", ".cc"))]
    assert not [n for n in bundle.files if "_codecs_" in n or "_multibytecodec" in n]


def test_runtime_modules_are_bundled(bundle: Bundle) -> None:
    # The plugin imports these lazily (after the handshake), so nothing else would notice them missing.
    needed = {"plugin.service", "plugin.kms", "plugin.config", "botocore.credentials", "hcl", "grpc"}
    assert needed <= bundle.modules


@pytest.mark.parametrize(
    "module",
    # cryptography: no runtime dependency imports it (urllib3's pyOpenSSL shim is excluded); if plugin code
    # starts importing it, it belongs in the bundle and out of this list.
    [
        *("cryptography", "certifi", "setuptools", "pkg_resources", "moto", "pytest", "PyInstaller"),
        *("tkinter", "unittest", "pydoc", "sqlite3", "tarfile", "encodings.euc_jp", "encodings.shift_jis"),
    ],
)
def test_unneeded_modules_are_not_bundled(bundle: Bundle, module: str) -> None:
    assert not {m for m in bundle.modules if m == module or m.startswith(f"{module}.")}
