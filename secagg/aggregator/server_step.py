"""The job's server step applied to a model the aggregator never holds: a window at a time.

The strategy's rules are element-wise (:meth:`secagg.strategy.Strategy.step_window`), so the new global
model and the new optimizer buffers can be computed one window of the vector at a time: the old model's
window from its float64 file, the round's average update's window from the combine's sum, each buffer's
window from the previous round's state file. What is written (the new exact file and float32 bundle,
:func:`secagg.aggregator.global_model.write_global`, and the new state file) is bit for bit what
``Strategy.apply`` on whole vectors gives; memory is a few windows, however large the model and
however many buffers (FedAdam's two are twice the model in float64).

The state file is the format of :meth:`secagg.strategy.StrategyState.to_bytes` (safetensors, float64
buffers sorted by name, one canonical-JSON metadata entry), so ``StrategyState.from_bytes`` reads it;
here it is written and read at offsets instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from secagg.aggregator.global_model import GlobalModel, write_global
from secagg.aggregator.modes.windows import window_ranges
from secagg.strategy import Strategy
from secagg.strategy.statefile import StateFile, StateReader, pwrite_all, state_header

#: the average update's values ``[start, stop)``, float64
AverageWindows = Callable[[int, int], np.ndarray]


def server_step(
    strategy: Strategy,
    model: GlobalModel,
    average: AverageWindows,
    state: StateFile | None,
    bundle_out: Path,
    state_out: Path,
    elements: int,
) -> tuple[GlobalModel, StateFile]:
    """One server round, a window of ``elements`` values at a time: the new global model (written
    beside ``bundle_out``) and the new state (``state_out``), every file whole or not there at all.
    ``state`` None starts the strategy's buffers as ``init_state`` does. Raises what
    ``Strategy.apply`` raises (a state of another strategy, NaN or infinity in or out)."""
    dim = model.spec.size
    names = sorted(strategy.buffer_names)
    if state is not None:
        strategy.check_state(state.strategy, state.params, state.dim, set(state.offsets), dim)
    step = (state.step if state is not None else 0) + 1
    head = state_header(strategy.name, step, dim, strategy.params(), names)
    tmp = state_out.with_name(f".{state_out.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    x_reader = model.reader()
    old = StateReader(state) if state is not None else None
    try:
        os.ftruncate(fd, len(head) + 8 * dim * len(names))
        os.pwrite(fd, head, 0)

        def windows() -> Iterator[tuple[int, np.ndarray]]:
            for start, stop in window_ranges(dim, elements):
                x = x_reader.read(start, stop)
                bufs = {
                    n: old.window(n, start, stop) if old else strategy.initial_buffer(n, stop - start)
                    for n in names
                }
                new_x, new_bufs = strategy.step_window(x, average(start, stop), bufs)
                for i, n in enumerate(names):
                    data = np.ascontiguousarray(new_bufs[n], dtype="<f8")
                    pwrite_all(fd, data.data, len(head) + 8 * (dim * i + start))
                yield start, new_x

        new_model = write_global(model.spec, windows(), bundle_out)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, state_out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)
        x_reader.close()
        if old is not None:
            old.close()
    offsets = {n: len(head) + 8 * dim * i for i, n in enumerate(names)}
    return new_model, StateFile(state_out, strategy.name, step, dim, strategy.params(), offsets)


__all__ = ["AverageWindows", "StateFile", "server_step"]
