"""Writes plugin/hcl_tables.py: the LR tables of the HCL grammar plugin.config parses with (pyhcl's, with
the plugin's own actions). pyhcl builds them at every start, which cost the plugin 40 ms of each SPIRE
start; the plugin reads them from that module instead. Run it after changing the grammar or pyhcl's pin:
tests/unit/test_hcl_lr.py fails until the module matches.

    .venv/bin/python scripts/gen_hcl_tables.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plugin.config import LiteralHclParser  # noqa: E402
from plugin.hcl_lr import TABLES_MODULE, Tables  # noqa: E402


def main() -> int:
    (ROOT / TABLES_MODULE).write_text(Tables.built(LiteralHclParser).module_text(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
