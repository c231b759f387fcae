"""Safetensors bundles on disk, read and written a window at a time: never whole in memory.

A bundle file is read through a :class:`ByteSource` (``read(offset, n)``): a file read with ``pread``
(not a memory map: mapped pages count towards the process's resident set, reads through the page cache
do not). :class:`Layout` parses and checks its header alone (names, dtypes, shapes and byte offsets),
:class:`BundleReader` reads a window of the flat (bundle-order) vector at its offsets, and
:func:`write_bundle` writes one from windows with :class:`Fingerprint` seeing every value as it passes.
Shared by the aggregator's windowed combination (:mod:`secagg.aggregator.modes.windows`) and the site
agent's streamed round (:mod:`secagg.agent.roundfiles`), which must not import each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from secagg.bundle import BundleSpec, bundle_header
from secagg.errors import UpdateRejected
from secagg.reasons import Reason

#: safetensors refuses headers above 100 MB; so do we (a header is names, shapes and offsets)
MAX_HEADER = 100_000_000

#: the safetensors dtypes an upload may carry (all little-endian); each is widened to float64 exactly
#: (integers above 2^53 round as ``astype(float64)`` rounds them)
DTYPES: dict[str, np.dtype] = {
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
}


def window_elements(window_bytes: int, itemsize: int = 8) -> int:
    """Elements per window for a window of ``window_bytes`` of accumulator (at least one)."""
    if window_bytes < 1:
        raise ValueError(f"window must be at least one byte, got {window_bytes}")
    return max(1, int(window_bytes) // itemsize)


def window_ranges(size: int, elements: int) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` of each window over a flat vector of ``size`` elements."""
    for start in range(0, size, elements):
        yield start, min(size, start + elements)


class ByteSource(Protocol):
    """Random-access reads of one upload's bytes (its plaintext, for a sealed upload)."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, n: int) -> bytes: ...

    def close(self) -> None: ...


class FileSource:
    """A spooled file read at offsets (``os.pread``): nothing but the bytes asked for is held."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > self._size:
            raise UpdateRejected(
                f"read of {n} bytes at {offset} outside an upload of {self._size}", code=Reason.TRUNCATED
            )
        first = os.pread(self._fd, n, offset)
        if len(first) == n:
            return first  # the usual case: one read, no copy
        out = bytearray(first)
        while len(out) < n:
            piece = os.pread(self._fd, n - len(out), offset + len(out))
            if not piece:
                raise UpdateRejected("upload shorter than its header says", code=Reason.TRUNCATED)
            out += piece
        return bytes(out)

    def read_into(self, offset: int, out: np.ndarray) -> None:
        """Fill the contiguous array ``out`` with the bytes at ``offset``: straight into its memory,
        no intermediate ``bytes``."""
        view = out.data.cast("B")
        if offset < 0 or offset + view.nbytes > self._size:
            raise UpdateRejected(
                f"read of {view.nbytes} bytes at {offset} outside a file of {self._size}",
                code=Reason.TRUNCATED,
            )
        done = 0
        while done < view.nbytes:
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n <= 0:
                raise UpdateRejected("file shorter than its header says", code=Reason.TRUNCATED)
            done += n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BytesSource:
    """An upload already in memory (a library caller's message): the same reads, no file."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data).cast("B")

    @property
    def size(self) -> int:
        return self._view.nbytes

    def read(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > self._view.nbytes:
            raise UpdateRejected(
                f"read of {n} bytes at {offset} outside {self._view.nbytes}", code=Reason.TRUNCATED
            )
        return bytes(self._view[offset : offset + n])

    def close(self) -> None:
        """Nothing to release."""


# ------------------------------------------------------------------------------------ safetensors
@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file: where its bytes are (absolute offsets in the file)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def _malformed(why: str) -> UpdateRejected:
    return UpdateRejected(f"not a valid safetensors bundle: {why}", code=Reason.MALFORMED)


@dataclass(frozen=True)
class Layout:
    """A safetensors file's header, parsed and checked without reading its tensor data."""

    entries: dict[str, Entry]
    order: tuple[str, ...]
    #: the string entries of ``__metadata__`` (the order among them; a distributed-DP share's kind
    #: and fixed point, :mod:`secagg.privacy.shares`)
    meta: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, src: ByteSource) -> Layout:
        """The layout of ``src``; refuses (``malformed``) what the safetensors loader refuses: a
        header that does not parse, an unknown dtype, offsets that overlap, leave gaps, disagree with
        the shape, or do not end exactly at the end of the file; and order metadata that does not
        name exactly the file's tensors."""
        if src.size < 8:
            raise _malformed("shorter than its header length")
        (n,) = struct.unpack("<Q", src.read(0, 8))
        if n > MAX_HEADER or 8 + n > src.size:
            raise _malformed(f"header length {n} out of range")
        try:
            header = json.loads(src.read(8, n))
        except (UnicodeDecodeError, ValueError):
            raise _malformed("header is not JSON") from None
        if not isinstance(header, dict):
            raise _malformed("header is not an object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict):
            raise _malformed("__metadata__ is not an object")
        base = 8 + n
        entries: dict[str, Entry] = {}
        for name, info in header.items():
            entries[name] = _entry(name, info, base)
        pos = base
        for e in sorted(entries.values(), key=lambda e: (e.start, e.end)):
            if e.start != pos:
                raise _malformed(f"tensor {e.name} starts at {e.start - base}, expected {pos - base}")
            pos = e.end
        if pos != src.size:
            raise _malformed(f"tensor data ends at {pos - base}, the file at {src.size - base}")
        if "order" in meta:
            try:
                order = json.loads(meta["order"])
            except (TypeError, ValueError):
                raise _malformed("order metadata is not JSON") from None
            if not isinstance(order, list) or sorted(map(str, order)) != sorted(entries):
                raise UpdateRejected(
                    "safetensors order metadata does not match its tensors", code=Reason.MALFORMED
                )
            names = tuple(str(o) for o in order)
        else:
            names = tuple(sorted(entries))
        return cls(entries, names, {str(k): v for k, v in meta.items() if isinstance(v, str)})

    def check(self, spec: BundleSpec) -> None:
        """Refuse a layout whose names or shapes differ from the spec (as :meth:`BundleSpec.check`)."""
        spec.check_shapes({n: tuple(self.entries[n].shape) for n in self.order})


def _entry(name: str, info: object, base: int) -> Entry:
    if not isinstance(info, dict):
        raise _malformed(f"tensor {name} is not described by an object")
    dtype = DTYPES.get(str(info.get("dtype")))
    if dtype is None:
        raise _malformed(f"tensor {name} has dtype {info.get('dtype')!r}, not one of {', '.join(DTYPES)}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _malformed(f"tensor {name} has shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offsets)
        or offsets[1] < offsets[0]
    ):
        raise _malformed(f"tensor {name} has data offsets {offsets!r}")
    e = Entry(name, dtype, tuple(shape), base + offsets[0], base + offsets[1])
    if e.end - e.start != e.size * dtype.itemsize:
        raise _malformed(f"tensor {name}: {e.end - e.start} bytes for {e.size} values of {dtype}")
    return e


class BundleReader:
    """One safetensors upload, read one window of the flat (bundle-order) vector at a time."""

    def __init__(self, src: ByteSource, spec: BundleSpec) -> None:
        self.src = src
        self.layout = Layout.parse(src)
        self.layout.check(spec)
        self._pieces: list[tuple[int, int, Entry]] = []  # flat start, flat stop, where it is
        pos = 0
        for t in spec.tensors:
            self._pieces.append((pos, pos + t.size, self.layout.entries[t.name]))
            pos += t.size

    def add_into(self, acc: np.ndarray, start: int, stop: int) -> None:
        """``acc[i - start] += value[i]`` for every ``i`` in ``[start, stop)`` (float64, exactly the
        in-memory sum's operation). Values are not checked here: :func:`sum_windows` checks the
        window's sum once and, only if it is not finite, each upload's window (:meth:`check`)."""
        for lo, hi, e in self._pieces:
            a, b = max(lo, start), min(hi, stop)
            if a >= b:
                continue
            item = e.dtype.itemsize
            vals = np.frombuffer(self.src.read(e.start + (a - lo) * item, (b - a) * item), dtype=e.dtype)
            part = acc[a - start : b - start]
            np.add(part, vals, out=part, casting="unsafe")

    def read_into(self, out: np.ndarray, start: int, stop: int) -> None:
        """``out[i - start] = value[i]`` for every ``i`` in ``[start, stop)``, cast as ``astype`` casts
        (float32 to float64 exactly): the window of the flat vector the in-memory bundle would give."""
        for lo, hi, e in self._pieces:
            a, b = max(lo, start), min(hi, stop)
            if a >= b:
                continue
            item = e.dtype.itemsize
            vals = np.frombuffer(self.src.read(e.start + (a - lo) * item, (b - a) * item), dtype=e.dtype)
            np.copyto(out[a - start : b - start], vals, casting="unsafe")

    def check(self, start: int, stop: int) -> None:
        """Refuse (``non_finite``) an upload whose window ``[start, stop)`` holds NaN or infinity."""
        for lo, hi, e in self._pieces:
            a, b = max(lo, start), min(hi, stop)
            if a >= b or e.dtype.kind != "f":
                continue
            item = e.dtype.itemsize
            vals = np.frombuffer(self.src.read(e.start + (a - lo) * item, (b - a) * item), dtype=e.dtype)
            if not np.isfinite(vals).all():
                raise UpdateRejected(f"tensor {e.name} contains NaN or Inf", code=Reason.NON_FINITE)

    def check_all(self, elements: int, size: int) -> None:
        """Read the whole upload once, a window at a time, so a non-finite value is refused now."""
        for start, stop in window_ranges(size, elements):
            self.check(start, stop)

    def close(self) -> None:
        self.src.close()


# ------------------------------------------------------------------------------------------ sinks
def _temp_beside(path: Path) -> tuple[int, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    return fd, Path(name)


def write_windows(
    path: Path,
    head: bytes,
    windows: Iterable[tuple[int, np.ndarray]],
    dtype: str,
    seen: Callable[[int, np.ndarray], None] | None = None,
) -> None:
    """``head``, then each window as ``dtype``, to a temporary file beside ``path``, fsynced and
    renamed to ``path`` once whole; nothing is left at ``path`` (nor beside it) if a window fails."""
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(head)
            for start, win in windows:
                out = np.ascontiguousarray(win, dtype=dtype)
                if seen is not None:
                    seen(start, out)
                fh.write(out.data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Fingerprint:
    """:func:`secagg.bundle.fingerprint` of a float32 bundle computed as its values stream past in
    bundle order (the same canonical bytes, never the whole bundle at once)."""

    def __init__(self, spec: BundleSpec) -> None:
        self._h = hashlib.sha256(b"secagg-bundle-v1\0")
        self._bounds: list[tuple[int, int, str, tuple[int, ...]]] = []
        pos = 0
        for t in spec.tensors:
            self._bounds.append((pos, pos + t.size, t.name, t.shape))
            pos += t.size
        self._next = 0  # tensors whose name and shape are hashed
        self._pos = 0  # values hashed

    def _heads(self) -> None:
        """Name and shape of every tensor that begins here (a zero-size one has no values to wait for)."""
        while self._next < len(self._bounds) and self._bounds[self._next][0] == self._pos:
            _lo, _hi, name, shape = self._bounds[self._next]
            # as bundle.fingerprint hashes a scalar: np.ascontiguousarray makes it shape (1,)
            shape = shape or (1,)
            raw = name.encode()
            self._h.update(struct.pack("<I", len(raw)) + raw)
            self._h.update(struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape))
            self._next += 1

    def update(self, start: int, values: np.ndarray) -> None:
        """``values`` are float32 elements ``start .. start + len`` of the flat bundle, in order."""
        if start != self._pos:
            raise ValueError(f"values from {start}, expected {self._pos}")
        flat = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
        off = 0
        while True:
            self._heads()
            if off == flat.size:
                return
            take = min(self._bounds[self._next - 1][1] - self._pos, flat.size - off)
            self._h.update(flat[off : off + take].data)
            off += take
            self._pos += take

    def hexdigest(self) -> str:
        self._heads()
        return self._h.hexdigest()


def write_bundle(
    path: Path,
    spec: BundleSpec,
    windows: Iterable[tuple[int, np.ndarray]],
    fingerprint: Fingerprint | None = None,
) -> None:
    """The float32 safetensors bundle of the windows (bundle order) to ``path`` (temporary file, then
    renamed); ``fingerprint`` (if given) sees every float32 value as it is written."""
    write_windows(path, bundle_header(spec), windows, "<f4", fingerprint.update if fingerprint else None)


def spec_of(layout: Layout) -> BundleSpec:
    """The bundle spec (names in bundle order, shapes) a file's header describes."""
    from secagg.bundle import TensorSpec

    return BundleSpec(tuple(TensorSpec(n, layout.entries[n].shape) for n in layout.order))


def open_bundle(path: Path, spec: BundleSpec | None = None) -> BundleReader:
    """A reader of the safetensors file at ``path``, checked against ``spec`` (default: its own)."""
    src = FileSource(path)
    try:
        return BundleReader(src, spec if spec is not None else spec_of(Layout.parse(src)))
    except BaseException:
        src.close()
        raise


def read_bundle(path: Path) -> OrderedDict[str, np.ndarray]:
    """The bundle in the safetensors file at ``path``, each tensor read straight into an array of its
    own (one copy of the model; ``from_safetensors(path.read_bytes())`` held the file's bytes beside
    the parsed tensors, two). Tensors in bundle order, writable, as ``from_safetensors`` orders them;
    a dtype outside :data:`DTYPES` (bfloat16, bool) falls back to ``from_safetensors``."""
    from secagg.bundle import from_safetensors

    with FileSource(path) as src:
        try:
            layout = Layout.parse(src)
        except UpdateRejected:
            return from_safetensors(path.read_bytes())  # refuses what it refuses, as before
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for name in layout.order:
            e = layout.entries[name]
            arr = np.empty(e.size, dtype=e.dtype)  # little-endian, as the file holds it
            src.read_into(e.start, arr)
            out[name] = arr.reshape(e.shape)
        return out
