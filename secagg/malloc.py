"""Bound glibc's malloc arenas in a process that serves many threads (the aggregator).

Why: glibc gives each thread that contends for the heap an arena of its own, up to 8 per core, and an
arena keeps what its thread freed. The aggregator serves every site from a pool of 64 gRPC threads;
in ``he`` each upload's ciphertexts are parsed and freed in whichever thread took it, so its peak RSS
grew with the number of sites (143 -> 224 -> 301 MiB at 10, 25 and 50 sites, RELIABILITY.md) while
the live data did not. The same 25-site he run with two arenas peaked at 141 MiB, as plain does.

``MALLOC_ARENA_MAX`` would do the same but must be set before the process starts; ``mallopt`` takes
effect for arenas made after the call, so it is made before the server's threads exist. A no-op
where the C library is not glibc (musl has no per-thread arenas).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: glibc's ``M_ARENA_MAX`` (malloc.h)
M_ARENA_MAX = -8
#: arenas the aggregator keeps: the main heap and one more for its threads
AGGREGATOR_ARENAS = 2


def limit_arenas(n: int = AGGREGATOR_ARENAS) -> bool:
    """Cap glibc's arenas at ``n`` for this process; True when the C library took the setting.

    An explicit ``MALLOC_ARENA_MAX`` in the environment wins (an operator's choice is kept)."""
    if n < 1:
        raise ValueError("at least one arena")
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, n))
