"""Tensor bundles: ordered named tensors, the unit every mode protects and the wire carries.

A bundle's *spec* (names, shapes, dtypes, in order) is fixed by the job's initial model. Everything that
crosses a trust boundary is checked against it once, here, so that later code can assume a well-formed
flat vector: missing, extra or wrongly shaped tensors and non-finite values are refused with a specific
reason code.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from secagg.errors import ConfigError, UpdateRejected
from secagg.reasons import Reason

Bundle = "OrderedDict[str, np.ndarray]"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(frozen=True)
class BundleSpec:
    """Names and shapes in bundle order; all tensors travel as float32."""

    tensors: tuple[TensorSpec, ...]

    @classmethod
    def of(cls, bundle: Mapping[str, np.ndarray]) -> BundleSpec:
        return cls(tuple(TensorSpec(k, tuple(int(d) for d in v.shape)) for k, v in bundle.items()))

    @property
    def size(self) -> int:
        return sum(t.size for t in self.tensors)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def to_json(self) -> str:
        return json.dumps([[t.name, list(t.shape)] for t in self.tensors], separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BundleSpec:
        """The spec :meth:`to_json` wrote; :class:`ConfigError` for anything else."""
        try:
            items = json.loads(text)
            if not isinstance(items, list):
                raise TypeError("not a list")
            out = []
            for item in items:
                name, shape = item  # ValueError/TypeError unless a pair
                if not isinstance(name, str) or not isinstance(shape, list):
                    raise TypeError("each tensor is [name, [dims]]")
                if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                    raise TypeError(f"tensor {name!r} has a shape that is not a list of sizes")
                out.append(TensorSpec(name, tuple(shape)))
        except (ValueError, TypeError, RecursionError) as exc:
            raise ConfigError(f"not a bundle spec ([[name, [dims]], ...]): {exc}") from None
        return cls(tuple(out))

    def check(self, bundle: Mapping[str, np.ndarray]) -> None:
        """Refuse a bundle that does not match this spec exactly, naming every difference."""
        self.check_shapes({n: tuple(a.shape) for n, a in bundle.items()})
        for t in self.tensors:
            if not np.all(np.isfinite(bundle[t.name])):
                raise UpdateRejected(f"tensor {t.name} contains NaN or Inf", code=Reason.NON_FINITE)

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Refuse tensor names and shapes (in the order given) that differ from this spec, naming every
        difference; shared by a bundle in memory and one read from its safetensors header."""
        want = {t.name: t.shape for t in self.tensors}
        missing = [n for n in want if n not in shapes]
        extra = [n for n in shapes if n not in want]
        wrong = [f"{n} {shapes[n]} != {want[n]}" for n in want if n in shapes and shapes[n] != want[n]]
        problems = []
        if missing:
            problems.append(f"missing tensors: {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected tensors: {', '.join(extra)}")
        if wrong:
            problems.append(f"wrong shapes: {'; '.join(wrong)}")
        if problems:
            raise UpdateRejected("; ".join(problems), code=Reason.BAD_SHAPE)

    def flatten(self, bundle: Mapping[str, np.ndarray]) -> np.ndarray:
        """All tensors concatenated in bundle order, float64 (the slot stream's input)."""
        self.check(bundle)
        out = np.empty(self.size, dtype=np.float64)
        pos = 0
        for t in self.tensors:
            out[pos : pos + t.size] = np.asarray(bundle[t.name], dtype=np.float64).reshape(-1)
            pos += t.size
        return out

    def unflatten(self, vec: np.ndarray, dtype: type = np.float32) -> OrderedDict[str, np.ndarray]:
        if vec.shape != (self.size,):
            raise UpdateRejected(
                f"flat vector has {vec.size} values, spec has {self.size}", code=Reason.BAD_SHAPE
            )
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        pos = 0
        for t in self.tensors:
            out[t.name] = vec[pos : pos + t.size].astype(dtype).reshape(t.shape)
            pos += t.size
        return out


def to_safetensors(bundle: Mapping[str, np.ndarray], order: Iterable[str] | None = None) -> bytes:
    names = list(order) if order is not None else list(bundle)
    data = {n: np.ascontiguousarray(bundle[n], dtype=np.float32) for n in names}
    return st_save(data, metadata={"order": json.dumps(names)})


def from_safetensors(data: bytes) -> OrderedDict[str, np.ndarray]:
    """Parse safetensors bytes into a bundle in the order recorded by the sender."""
    try:
        tensors = st_load(data)
        header_len = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + header_len])
    except Exception as exc:  # safetensors raises its own error types for malformed input
        raise UpdateRejected(f"not a valid safetensors bundle: {exc}", code=Reason.MALFORMED) from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict | None):
        raise UpdateRejected("safetensors metadata is not an object", code=Reason.MALFORMED)
    order: object = sorted(tensors)
    if meta and "order" in meta:
        try:
            order = json.loads(meta["order"])
        except (TypeError, ValueError, RecursionError):
            raise UpdateRejected("safetensors order metadata is not JSON", code=Reason.MALFORMED) from None
    if (
        not isinstance(order, list)
        or not all(isinstance(n, str) for n in order)
        or sorted(order) != sorted(tensors)
    ):
        raise UpdateRejected("safetensors order metadata does not match its tensors", code=Reason.MALFORMED)
    return OrderedDict((n, tensors[n]) for n in order)


def bundle_header(spec: BundleSpec, dtype: str = "F32", metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors header of a bundle of 4-byte values (``F32``, or ``U32`` for the residues of a
    distributed-DP share) with ``spec``'s tensors laid out in bundle order (8-byte length, JSON
    padded with spaces to 8 bytes, as the safetensors writer pads it); ``metadata`` adds string
    entries beside ``order`` (never over it)."""
    if dtype not in ("F32", "U32"):
        raise ValueError(f"bundle_header writes 4-byte values, not {dtype}")
    header: dict[str, object] = {"__metadata__": {**(metadata or {}), "order": json.dumps(spec.names)}}
    pos = 0
    for t in spec.tensors:
        header[t.name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [pos, pos + 4 * t.size]}
        pos += 4 * t.size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def fingerprint(bundle: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over a canonical encoding (name, shape, float32 little-endian bytes, in bundle order).

    Canonical so that two sites holding the same model compute the same digest whatever library
    serialised it; used to prove every site of a round got the same global model.
    """
    h = hashlib.sha256(b"secagg-bundle-v1\0")
    for name, arr in bundle.items():
        a = np.ascontiguousarray(arr, dtype="<f4")
        h.update(struct.pack("<I", len(name.encode())) + name.encode())
        h.update(struct.pack("<I", a.ndim) + b"".join(struct.pack("<Q", d) for d in a.shape))
        h.update(a.reshape(-1).data)  # same bytes as tobytes(), without a model-sized copy
    return h.hexdigest()
