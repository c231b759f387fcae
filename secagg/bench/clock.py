"""Wall-clock and CPU seconds together.

This machine is shared, so wall time swings with whatever else runs; CPU time (all threads of the
process) is the steadier measure of work done. Both are reported. CPU time counts every thread, so
a library that spreads work over cores (TenSEAL contexts made with its default thread count, as
NVFlare's are) would show wall time below CPU time.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Lap:
    wall: float = 0.0
    cpu: float = 0.0

    def __add__(self, other: Lap) -> Lap:
        return Lap(self.wall + other.wall, self.cpu + other.cpu)


def clock() -> Lap:
    """A start mark, to hand to :func:`lap`."""
    return Lap(time.perf_counter(), time.process_time())


def lap(start: Lap) -> Lap:
    """Seconds since ``start``."""
    return Lap(time.perf_counter() - start.wall, time.process_time() - start.cpu)


def settle() -> None:
    """Write dirty pages back before a timed phase, outside the clock.

    A round writes hundreds of MiB of uploads, spool copies and downloads; left to the kernel, their
    writeback lands in whichever phase (of whichever mode) runs seconds later and competes with it
    for this machine's two cores.
    """
    if hasattr(os, "sync"):
        os.sync()
