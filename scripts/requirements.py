"""Prints the pinned requirements of the binary and of its build, one per line, from setup.cfg.

    python3 scripts/requirements.py            install_requires and the `build` extra

The build root of another architecture (scripts/build_root.sh) installs these with pip: the same pins as
.venv, without the test tools, and without installing the project itself (its sources are read in place).
"""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"


def pinned(text: str) -> list[str]:
    """The requirement lines of a setup.cfg list, skipping comments and the project's own extras."""
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#") and "==" in line]


def build_requirements(setup_cfg: str) -> list[str]:
    config = configparser.ConfigParser()
    config.read_string(setup_cfg)
    return pinned(config["options"]["install_requires"]) + pinned(config["options.extras_require"]["build"])


def main() -> int:
    sys.stdout.write("".join(f"{line}\n" for line in build_requirements(SETUP_CFG.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
