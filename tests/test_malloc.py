"""The aggregator's cap on glibc malloc arenas (``secagg.malloc``): its peak memory in ``he`` grew with
the sites because each serving thread kept an arena of its own (RELIABILITY.md, Load)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc arenas only")

# eight threads each allocate and free through malloc (bytearrays past pymalloc's small-object size),
# then glibc's malloc_stats() prints one "Arena N:" block per arena to stderr
_SCRIPT = """
import ctypes, sys, threading
from secagg.malloc import limit_arenas
took = limit_arenas(int(sys.argv[1])) if sys.argv[1] != "none" else None
def work():
    for _ in range(200):
        keep = [bytearray(60_000) for _ in range(8)]
        del keep
barrier = threading.Barrier(8)
def run():
    barrier.wait()
    work()
ts = [threading.Thread(target=run) for _ in range(8)]
for t in ts: t.start()
for t in ts: t.join()
print(took, flush=True)
ctypes.CDLL(None).malloc_stats()
"""


def _arenas(arg: str, **env: str) -> tuple[str, int]:
    e = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    p = subprocess.run(
        [sys.executable, "-c", _SCRIPT, arg], capture_output=True, text=True, timeout=60, env=e, check=True
    )
    return p.stdout.strip(), sum(1 for line in p.stderr.splitlines() if line.startswith("Arena "))


def test_without_the_cap_threads_get_arenas_of_their_own() -> None:
    _, n = _arenas("none")
    assert n > 2  # what the cap is for: one arena a thread, each keeping what it freed


def test_the_cap_holds_the_process_to_its_arenas() -> None:
    took, n = _arenas("2")
    assert took == "True"
    assert n <= 2


def test_an_operators_malloc_arena_max_is_kept() -> None:
    took, _ = _arenas("1", MALLOC_ARENA_MAX="4")
    assert took == "False"


def test_at_least_one_arena() -> None:
    from secagg.malloc import limit_arenas

    with pytest.raises(ValueError, match="at least one"):
        limit_arenas(0)
