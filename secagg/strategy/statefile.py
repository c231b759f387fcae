"""A strategy state file read and written at offsets, a window at a time.

The format is :meth:`secagg.strategy.StrategyState.to_bytes`'s (safetensors, float64 buffers sorted by
name, one canonical-JSON metadata entry), so ``StrategyState.from_bytes`` reads what is written here.
Its own module because both sides step a strategy a window at a time: the aggregator's server step
(:mod:`secagg.aggregator.server_step`) and an he site's step on its decrypted average
(:mod:`secagg.agent.he_step`), and the agent and the aggregator never import each other.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from secagg.bundlefile import FileSource, Layout
from secagg.errors import IntegrityError, SecaggError
from secagg.strategy.state import FORMAT, META_KEY, canonical_json, meta_fields


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
        strategy, step, dim, params, names = meta_fields(meta)
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


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    view = data.cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


__all__ = ["StateFile", "StateReader", "pwrite_all", "state_header"]
