"""The benchmark's modes by name: each mode's site side (:class:`~secagg.bench.modes.Mode`) and its
aggregator step (:class:`~secagg.bench.modes.AggregatorStep`, run in the child process).

Kept apart from :mod:`secagg.bench.modes` so that a mode built on another (``tee-mask`` on ``mask``,
in :mod:`secagg.bench.tee_mask`) imports the one it builds on without an import circle.
"""

from __future__ import annotations

from .modes import (
    AggregatorStep,
    HEAggregator,
    HEMode,
    MaskAggregator,
    MaskMode,
    Mode,
    PlainAggregator,
    PlainMode,
    TEEAggregator,
    TEEMode,
)


def make_mode(name: str) -> Mode:
    if name == "nvflare-he":
        from .nvflare_he import NVFlareHEMode

        return NVFlareHEMode()
    if name == "tee-mask":
        from .tee_mask import TeeMaskBenchMode

        return TeeMaskBenchMode()
    modes: dict[str, type[Mode]] = {"plain": PlainMode, "he": HEMode, "mask": MaskMode, "tee": TEEMode}
    return modes[name]()


def make_aggregator(name: str) -> AggregatorStep:
    if name == "nvflare-he":
        from .nvflare_he import NVFlareHEAggregator

        return NVFlareHEAggregator()
    if name == "tee-mask":
        from .tee_mask import TeeMaskAggregator

        return TeeMaskAggregator()
    steps: dict[str, type[AggregatorStep]] = {
        "plain": PlainAggregator,
        "he": HEAggregator,
        "mask": MaskAggregator,
        "tee": TEEAggregator,
    }
    return steps[name]()
