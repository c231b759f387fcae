"""The window size setting of the aggregator's windowed combine and server step, in one place.

The aggregator reads every upload (and the global model, and the strategy's state) a window at a time:
its peak memory is a few windows whatever the model's size (:mod:`secagg.aggregator.modes.windows`).
The project file sets it (``aggregator.window_bytes``); the kit carries it to the aggregator. It lives
here, not in the aggregator package, so that provisioning can validate it without importing the
aggregator.
"""

from __future__ import annotations

#: the default window: 16 MiB of float64 accumulator (2M parameters); reads of this size run at disk
#: speed, and a few of them are small beside any model worth windowing
DEFAULT_WINDOW_BYTES = 16 * 1024 * 1024
#: one float64
MIN_WINDOW_BYTES = 8
#: 1 GiB: a larger window buys nothing (reads are already long) and costs its size several times over
MAX_WINDOW_BYTES = 1 << 30

__all__ = ["DEFAULT_WINDOW_BYTES", "MAX_WINDOW_BYTES", "MIN_WINDOW_BYTES"]
