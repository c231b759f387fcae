"""The aggregator step in a process of its own: ``python -m secagg.bench.child MODE WORK SITES OUT``.

A fresh interpreter (not a fork) so that the peak RSS (VmHWM) is the aggregator's own, not the parent's
inherited one. ``prepare`` (imports, loading the public context: once per job) runs before the clock
starts; the RSS after it is reported as the baseline the round's work adds to.

After the step (and after its peak RSS is read), the same process measures the floor the step is held
against: one read of every file the sites uploaded and one write of a file the size of the result,
fsynced (the step's result is fsynced too), in 16 MiB blocks, as ``dd`` would, on the same machine in
the same page-cache state.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import psutil

from secagg.bench.clock import clock, lap


def peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM, which starts afresh at exec.

    Not ``ru_maxrss``: Linux carries that across fork and exec, so a child started from a large
    parent would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Start this process's VmHWM afresh (``5`` to ``/proc/self/clear_refs``, Linux 4.0+), so the
    next :func:`peak_rss_bytes` is the peak since now; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


#: block size of the floor's reads and writes
FLOOR_BLOCK = 16 * 1024 * 1024


def uploaded_files(work: Path, sites: int) -> list[Path]:
    """Every file the sites uploaded (``up-N`` and its ``up-N.<part>`` messages)."""
    names = {f"up-{i}" for i in range(sites)}
    return sorted(p for p in work.iterdir() if p.name in names or p.name.split(".")[0] in names)


def floor_seconds(inputs: list[Path], result_bytes: int, scratch: Path) -> float:
    """Seconds to read every input once and write (and fsync) ``result_bytes`` bytes."""
    buf = bytearray(FLOOR_BLOCK)
    block = bytes(FLOOR_BLOCK)
    out = scratch / "floor.out"
    t0 = clock()
    for path in inputs:
        with path.open("rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    with out.open("wb", buffering=0) as fh:
        left = result_bytes
        while left > 0:
            left -= fh.write(memoryview(block)[: min(left, FLOOR_BLOCK)])
        os.fsync(fh.fileno())
    took = lap(t0).wall
    out.unlink()
    return took


def measure(mode: str, work: Path, sites: int) -> dict[str, float | int]:
    from secagg.bench.registry import make_aggregator

    step = make_aggregator(mode)
    step.prepare(work, sites)
    baseline = psutil.Process().memory_info().rss
    t0 = clock()
    step.run()
    took = lap(t0)
    peak = peak_rss_bytes()
    inputs = uploaded_files(work, sites)
    result = (work / "down-0").stat().st_size
    return {
        "aggregate_s": took.wall,
        "aggregate_cpu_s": took.cpu,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "floor_s": floor_seconds(inputs, result, work),
        "floor_read_bytes": sum(p.stat().st_size for p in inputs),
        "floor_write_bytes": result,
    }


def main(argv: list[str]) -> int:
    mode, work, sites, out = argv
    result = measure(mode, Path(work), int(sites))
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
