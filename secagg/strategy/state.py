"""Server-optimizer state that a site can keep durably and resume from.

In ``he`` and ``mask`` modes every site applies the server step itself (only the sites ever see the
averaged update in the clear), so all of them must hold the same state and get the same bytes out.
The serialised form is therefore deterministic: safetensors (tensors sorted by name, little-endian
float64) with exactly one metadata entry holding canonical JSON. safetensors keeps its metadata in a
hash map whose order changes from process to process, so more than one metadata key would make the
bytes differ between sites that hold identical state.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from secagg.errors import IntegrityError

FORMAT = "secagg.strategy-state/1"
#: the one metadata entry of a serialised state (its canonical JSON header)
META_KEY = "secagg.strategy"
_META_KEY = META_KEY


def canonical_json(obj: object) -> str:
    """The state's metadata as every site serialises it (sorted keys, no spaces, no NaN)."""
    return _canonical_json(obj)


def _canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _frozen(arr: np.ndarray) -> np.ndarray:
    out = np.array(arr, dtype=np.float64, copy=True, order="C")
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class StrategyState:
    """Everything a strategy needs between rounds, besides the global model itself.

    ``params`` are the resolved hyper-parameters the state was built with: resuming with different
    ones would silently change the trajectory, so :meth:`Strategy.apply` refuses a mismatch.
    Buffers are read-only copies, so neither the caller nor ``apply`` can change a state in place.
    """

    strategy: str
    step: int
    dim: int
    params: Mapping[str, float] = field(default_factory=dict)
    buffers: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", dict(sorted(self.params.items())))
        object.__setattr__(self, "buffers", {k: _frozen(v) for k, v in sorted(self.buffers.items())})

    def to_bytes(self) -> bytes:
        meta: dict[str, Any] = {
            "format": FORMAT,
            "strategy": self.strategy,
            "step": self.step,
            "dim": self.dim,
            "params": dict(self.params),
            "buffers": sorted(self.buffers),
        }
        tensors = {k: np.ascontiguousarray(v) for k, v in self.buffers.items()}
        return save(tensors, metadata={_META_KEY: _canonical_json(meta)})

    @classmethod
    def from_bytes(cls, data: bytes) -> StrategyState:
        """Parse and check the structure; whether it suits a strategy is checked by ``apply``."""
        try:
            tensors = load(bytes(data))
            header = _read_metadata(data)
        except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"strategy state is not a readable safetensors blob: {exc}") from None
        raw = header.get(_META_KEY)
        if not isinstance(raw, str):
            raise IntegrityError(f"strategy state has no {_META_KEY!r} metadata")
        try:
            meta = json.loads(raw)
        except ValueError as exc:
            raise IntegrityError(f"strategy state metadata is not JSON: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise IntegrityError(f"strategy state format is not {FORMAT!r}")
        strategy, step, dim, params, names = meta_fields(meta)
        if not isinstance(names, list) or sorted(names) != sorted(tensors):
            raise IntegrityError("strategy state: buffer list does not match the stored tensors")
        for name, arr in tensors.items():
            if arr.dtype != np.float64 or arr.shape != (dim,):
                raise IntegrityError(
                    f"strategy state: buffer {name!r} is {arr.dtype}{list(arr.shape)}, "
                    f"expected float64[{dim}]"
                )
            if not np.all(np.isfinite(arr)):
                raise IntegrityError(f"strategy state: buffer {name!r} holds NaN or infinity")
        return cls(
            strategy=strategy,
            step=step,
            dim=dim,
            params={k: float(v) for k, v in params.items()},
            buffers=tensors,
        )

    def fingerprint(self) -> str:
        """SHA-256 of the serialised state: sites can compare it to confirm they are in lock-step."""
        return hashlib.sha256(self.to_bytes()).hexdigest()


def _read_metadata(data: bytes) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors header (the numpy loader drops it)."""
    if len(data) < 8:
        raise ValueError("too short for a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header length runs past the end of the data")
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    return meta if isinstance(meta, dict) else {}


def meta_fields(meta: dict[str, Any]) -> tuple[str, int, int, dict[str, Any], Any]:
    """The checks of a state's metadata that both readers make (bytes in memory here, a file a window
    at a time in :mod:`secagg.strategy.statefile`): strategy, step, dim and params; the buffer list is
    returned as stored, for the caller to match against the tensors it found."""
    strategy, step, dim = meta.get("strategy"), meta.get("step", -1), meta.get("dim", -1)
    params, names = meta.get("params"), meta.get("buffers")
    if not isinstance(strategy, str) or not strategy:
        raise IntegrityError("strategy state: 'strategy' must be a non-empty string")
    for key, val in (("step", step), ("dim", dim)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 0:
            raise IntegrityError(f"strategy state: {key!r} must be an integer >= 0")
    if not isinstance(params, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in params.values()
    ):
        raise IntegrityError("strategy state: 'params' must map names to finite numbers")
    return strategy, step, dim, params, names
