"""Both binaries are frozen from the same pins: .venv (x86-64) installs setup.cfg's, and the arm64 build root
installs what scripts/requirements.py prints from it. A dependency left unpinned would let the two
architectures, or two builds a month apart, bundle different code under the same commit."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def _printed_requirements() -> list[Requirement]:
    printed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "requirements.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [Requirement(line) for line in printed.splitlines()]


def _name(text: str) -> str:
    return text.lower().replace("_", "-")


def test_every_requirement_is_pinned_to_one_version() -> None:
    for requirement in _printed_requirements():
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", requirement


def test_the_build_root_gets_what_the_x86_64_build_has_installed() -> None:
    printed = {_name(r.name): str(r.specifier) for r in _printed_requirements()}
    for name in ("grpcio", "protobuf", "botocore", "pyhcl", "pyinstaller", "staticx"):
        assert printed[name] == f"=={metadata.version(name)}", name


def test_everything_the_bundled_packages_need_is_pinned_too() -> None:
    pinned = {_name(r.name) for r in _printed_requirements()}
    unpinned = set()
    for name in ("grpcio", "protobuf", "botocore", "python-dateutil", "pyhcl"):
        for line in metadata.requires(name) or []:
            needed = Requirement(line)
            applies = needed.marker is None or needed.marker.evaluate({"extra": ""})
            if applies and _name(needed.name) not in pinned:
                unpinned.add(f"{needed.name} (needed by {name})")
    assert sorted(unpinned) == []
