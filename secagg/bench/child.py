"""The aggregator step in a process of its own: ``python -m secagg.bench.child MODE WORK SITES OUT``.

A fresh interpreter (not a fork) so that the peak RSS (VmHWM) is the aggregator's own, not the parent's
inherited one. ``prepare`` (imports, loading the public context: once per job) runs before the clock
starts; the RSS after it is reported as the baseline the round's work adds to.
"""

from __future__ import annotations

import json
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


def measure(mode: str, work: Path, sites: int) -> dict[str, float | int]:
    from secagg.bench.modes import make_aggregator

    step = make_aggregator(mode)
    step.prepare(work, sites)
    baseline = psutil.Process().memory_info().rss
    t0 = clock()
    step.run()
    took = lap(t0)
    peak = peak_rss_bytes()
    return {
        "aggregate_s": took.wall,
        "aggregate_cpu_s": took.cpu,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
    }


def main(argv: list[str]) -> int:
    mode, work, sites, out = argv
    result = measure(mode, Path(work), int(sites))
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
