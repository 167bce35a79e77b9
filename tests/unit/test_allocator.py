"""glibc's allocator as the plugin sets it: large blocks go back to the system once freed, whatever came
before, and an operator's own allocator settings are left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from plugin.allocator import settings_to_apply

REPO = Path(__file__).resolve().parents[2]

# Frees a 4 MB block (glibc then raises its mmap threshold to 4 MB), then takes 32 blocks of 1 MB, each
# followed by one of 64 KiB (too large for the bins of freed small blocks, so it comes after it and keeps
# the heap from shrinking), and frees the large ones: prints how many bytes the process still holds.
HELD_AFTER_FREE = """
import ctypes, os, sys
from plugin import allocator
if sys.argv[1] == "set":
    assert allocator.bound_heap_growth({})
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
first = libc.malloc(4 << 20)
ctypes.memset(first, 1, 4 << 20)
libc.free(first)
before = rss()
large, small = [], []
for _ in range(32):
    block = libc.malloc(1 << 20)
    ctypes.memset(block, 1, 1 << 20)
    large.append(block)
    small.append(libc.malloc(64 << 10))
for block in large:
    libc.free(block)
print(rss() - before)
"""


def _held_after_free(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run(
        [sys.executable, "-c", HELD_AFTER_FREE, mode],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return int(out)


def test_freed_large_blocks_go_back_to_the_system_once_the_plugin_sets_the_allocator() -> None:
    held_by_default = _held_after_free("default")
    held_when_set = _held_after_free("set")
    # glibc's default keeps the 32 MB freed (what made the plugin grow under large requests) ...
    assert held_by_default >= 24 << 20
    # ... and with the plugin's settings it keeps none of it.
    assert held_when_set <= 2 << 20


def test_the_settings_are_a_fixed_128_kib_mmap_threshold_and_two_arenas() -> None:
    # mallopt's M_MMAP_THRESHOLD is -3 and M_ARENA_MAX -8 (glibc's malloc.h).
    assert settings_to_apply({}) == {-3: 128 * 1024, -8: 2}


def test_an_operator_who_tunes_the_allocator_keeps_their_own_settings() -> None:
    for name in ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"):
        assert settings_to_apply({name: "2"}) == {}
    assert settings_to_apply({"MALLOC_CHECK_": "3"}) != {}
