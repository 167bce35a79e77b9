"""glibc's allocator, set for a small server that lives as long as SPIRE.

Out of the box glibc raises its mmap threshold each time a large block is freed, so that after the first
large request (a megabyte-long key id, a big gRPC message) later ones come from the heap and stay there,
and it gives each thread that allocates at the same time an arena of its own (up to eight per core). Under
traffic with large requests (tests/integration/test_memory_binary.py) the plugin then held 76 to 80 MiB,
against 63 to 74 MiB with the settings below: a fixed threshold returns every large block to the system
once it is freed, and two arenas are plenty for calls that spend their time waiting on KMS.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

from plugin.log import get_logger

# mallopt's parameters, from glibc's malloc.h.
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENA_MAX = 2
# Where an operator sets glibc's allocator themselves; theirs wins.
OPERATOR_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_")

log = get_logger("allocator")


def settings_to_apply(environ: Mapping[str, str]) -> dict[int, int]:
    """The mallopt settings to make: none when the operator tuned the allocator through the environment."""
    if any(name in environ for name in OPERATOR_SETTINGS):
        return {}
    return {M_MMAP_THRESHOLD: MMAP_THRESHOLD_BYTES, M_ARENA_MAX: ARENA_MAX}


def bound_heap_growth(environ: Mapping[str, str] = os.environ) -> bool:
    """Apply `settings_to_apply`, and say so in the log; False when there was nothing to apply or no glibc
    to apply it to. Call it before the process starts its threads: an arena, once made, stays."""
    settings = settings_to_apply(environ)
    if not settings:
        operator = ",".join(name for name in OPERATOR_SETTINGS if name in environ)
        log.debug("Memory allocator left as the environment sets it", variables=operator)
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        log.debug("Memory allocator left as it is: no glibc mallopt")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    refused = [parameter for parameter, value in settings.items() if mallopt(parameter, value) != 1]
    if refused:
        log.warn("glibc refused memory allocator settings", mallopt_parameters=str(refused))
        return False
    log.debug("Memory allocator set", mmap_threshold_bytes=MMAP_THRESHOLD_BYTES, arena_max=ARENA_MAX)
    return True
