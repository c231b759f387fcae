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

import json
import math
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from secagg.aggregator.global_model import GlobalModel, write_global
from secagg.aggregator.modes.windows import FileSource, Layout, window_ranges
from secagg.errors import IntegrityError, SecaggError
from secagg.strategy import Strategy
from secagg.strategy.state import FORMAT, META_KEY, canonical_json

#: the average update's values ``[start, stop)``, float64
AverageWindows = Callable[[int, int], np.ndarray]


def state_header(strategy: str, step: int, dim: int, params: dict[str, float], names: list[str]) -> bytes:
    meta = {
        "format": FORMAT,
        "strategy": strategy,
        "step": step,
        "dim": dim,
        "params": params,
        "buffers": names,
    }
    header: dict[str, object] = {"__metadata__": {META_KEY: canonical_json(meta)}}
    for i, name in enumerate(names):
        header[name] = {"dtype": "F64", "shape": [dim], "data_offsets": [8 * dim * i, 8 * dim * (i + 1)]}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


@dataclass(frozen=True)
class StateFile:
    """A strategy state file, its header parsed and checked; buffers read a window at a time."""

    path: Path
    strategy: str
    step: int
    dim: int
    params: dict[str, float]
    #: buffer name -> byte offset of its first value in the file
    offsets: dict[str, int]

    @classmethod
    def read(cls, path: Path) -> StateFile:
        """Parse ``path``'s header; ``IntegrityError`` for anything ``StrategyState.from_bytes`` refuses
        (but a NaN in a buffer, which :meth:`window` refuses when it reaches it)."""
        with FileSource(path) as src:
            try:
                layout = Layout.parse(src)
                (n,) = struct.unpack("<Q", src.read(0, 8))
                raw = json.loads(src.read(8, n)).get("__metadata__", {}).get(META_KEY)
                meta = json.loads(raw) if isinstance(raw, str) else None
            except (SecaggError, ValueError, AttributeError) as exc:
                raise IntegrityError(f"strategy state {path.name} is not readable: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise IntegrityError(f"strategy state {path.name}: format is not {FORMAT!r}")
        strategy, step, dim = meta.get("strategy"), meta.get("step"), meta.get("dim")
        params, names = meta.get("params"), meta.get("buffers")
        if not isinstance(strategy, str) or not strategy:
            raise IntegrityError("strategy state: 'strategy' must be a non-empty string")
        for key, val in (("step", step), ("dim", dim)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 0:
                raise IntegrityError(f"strategy state: {key!r} must be an integer >= 0")
        assert isinstance(step, int) and isinstance(dim, int)
        if not isinstance(params, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in params.values()
        ):
            raise IntegrityError("strategy state: 'params' must map names to finite numbers")
        if not isinstance(names, list) or sorted(map(str, names)) != sorted(layout.entries):
            raise IntegrityError("strategy state: buffer list does not match the stored tensors")
        for e in layout.entries.values():
            if e.dtype != np.dtype("<f8") or e.shape != (dim,):
                raise IntegrityError(
                    f"strategy state: buffer {e.name!r} is {e.dtype}{list(e.shape)}, expected float64[{dim}]"
                )
        return cls(
            path,
            strategy,
            step,
            dim,
            {str(k): float(v) for k, v in params.items()},
            {e.name: e.start for e in layout.entries.values()},
        )


class StateReader:
    def __init__(self, state: StateFile) -> None:
        self.state = state
        self.src = FileSource(state.path)

    def window(self, name: str, start: int, stop: int) -> np.ndarray:
        vals = np.frombuffer(
            self.src.read(self.state.offsets[name] + 8 * start, 8 * (stop - start)), dtype="<f8"
        )
        if not np.isfinite(vals).all():
            raise IntegrityError(f"strategy state: buffer {name!r} holds NaN or infinity")
        return vals

    def close(self) -> None:
        self.src.close()


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


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    view = data.cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


__all__ = ["AverageWindows", "StateFile", "StateReader", "pwrite_all", "server_step", "state_header"]
