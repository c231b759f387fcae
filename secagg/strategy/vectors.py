"""Flat float64 vectors <-> ordered named tensors.

The aggregator works on one flat slot stream (all tensors concatenated in bundle order, no padding),
so the strategy API takes and returns flat float64 vectors. These helpers are the only place that
knows how a model's named tensors map onto that stream; the :class:`Layout` travels with the vector
so the mapping is never guessed from sizes alone.

float32 -> float64 is exact, so ``unflatten(flatten(t))`` gives back ``t`` bit for bit; a float64
vector produced by a strategy is rounded once, to each tensor's own dtype, on the way back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from secagg.errors import ConfigError, UpdateRejected
from secagg.reasons import Reason

#: dtypes a model tensor may have; anything else (ints, bools) is not a trainable weight
_FLOAT_DTYPES = ("float16", "float32", "float64")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class Layout:
    """Where each named tensor lives in the flat vector, in bundle order."""

    entries: tuple[TensorEntry, ...]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def to_dict(self) -> list[dict[str, object]]:
        """JSON-ready form, so the layout can ride in a job config or checkpoint header."""
        return [{"name": e.name, "shape": list(e.shape), "dtype": e.dtype} for e in self.entries]

    @classmethod
    def from_dict(cls, data: object) -> Layout:
        if not isinstance(data, list):
            raise ConfigError("tensor layout must be a list of {name, shape, dtype} objects")
        entries = []
        seen: set[str] = set()
        for i, item in enumerate(data):
            if not isinstance(item, dict) or set(item) != {"name", "shape", "dtype"}:
                raise ConfigError(f"tensor layout entry {i}: expected exactly the keys name, shape, dtype")
            name, shape, dtype = item["name"], item["shape"], item["dtype"]
            if not isinstance(name, str) or not name:
                raise ConfigError(f"tensor layout entry {i}: name must be a non-empty string")
            if name in seen:
                raise ConfigError(f"tensor layout entry {i}: duplicate tensor name {name!r}")
            if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
            ):
                raise ConfigError(f"tensor layout entry {i} ({name}): shape must be a list of ints >= 0")
            if dtype not in _FLOAT_DTYPES:
                raise ConfigError(f"tensor layout entry {i} ({name}): dtype must be one of {_FLOAT_DTYPES}")
            seen.add(name)
            entries.append(TensorEntry(name, tuple(shape), dtype))
        return cls(tuple(entries))


def layout_of(tensors: Mapping[str, np.ndarray]) -> Layout:
    """The layout of an ordered mapping of tensors (insertion order is bundle order)."""
    entries = []
    for name, t in tensors.items():
        arr = np.asarray(t)
        if arr.dtype.name not in _FLOAT_DTYPES:
            raise ConfigError(f"tensor {name!r}: dtype {arr.dtype} is not a float dtype {_FLOAT_DTYPES}")
        entries.append(TensorEntry(str(name), tuple(int(d) for d in arr.shape), arr.dtype.name))
    return Layout(tuple(entries))


def flatten(tensors: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Layout]:
    """Concatenate tensors in mapping order into one float64 vector (C order within each tensor)."""
    layout = layout_of(tensors)
    if not layout.entries:
        return np.zeros(0, dtype=np.float64), layout
    parts = [np.asarray(t, dtype=np.float64).reshape(-1) for t in tensors.values()]
    return np.concatenate(parts), layout


def unflatten(vec: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """Split a flat vector back into named tensors of the layout's shapes and dtypes."""
    vec = np.asarray(vec)
    if vec.ndim != 1:
        raise UpdateRejected(f"expected a flat vector, got shape {vec.shape}", code=Reason.BAD_SHAPE)
    if vec.shape[0] != layout.size:
        raise UpdateRejected(
            f"vector has {vec.shape[0]} values but the layout needs {layout.size}", code=Reason.BAD_SHAPE
        )
    out: dict[str, np.ndarray] = {}
    offset = 0
    for e in layout.entries:
        n = e.size
        out[e.name] = vec[offset : offset + n].astype(e.dtype).reshape(e.shape)
        offset += n
    return out
