"""Windowed combination: every mode sums its spooled uploads a fixed-size window at a time.

The aggregator never holds an upload, nor the sum of the uploads, in memory: it reads the same
window (a range of the flat model vector, in bundle order) of every upload in lockstep, adds them into
one float64 accumulator the size of a window, and writes the window out before it reads the next one.
Peak memory is a constant plus a few windows, flat in the number of sites and in the model's size (the
``he`` path does the same with ciphertexts, :class:`secagg.aggregator.modes.he.HECombiner`).

Uploads are read through a :class:`ByteSource` (``read(offset, n)``): a spooled file read with
``pread`` (not a memory map: mapped pages count towards the process's resident set, reads through the
page cache do not), or, in ``tee``, a sealed upload opened a chunk at a time inside the enclave
(:class:`secagg.tee.stream.SealedSource`). A safetensors upload is parsed from its header alone
(:class:`Layout`: names, dtypes, shapes and byte offsets), checked against the model's spec, and its
tensors are read at their offsets, one window's worth at a time.

The arithmetic is the one the in-memory sum did, element for element: the accumulator starts at zero,
every site's value (widened to float64 exactly) is added in sorted site order, so the result is bit
for bit the same whatever the window size.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from secagg.bundle import bundle_header
from secagg.bundlefile import (  # moved there: the site agent reads bundles too
    DTYPES,
    MAX_HEADER,
    BundleReader,
    ByteSource,
    BytesSource,
    Entry,
    FileSource,
    Fingerprint,
    Layout,
    window_elements,
    window_ranges,
    write_bundle,
    write_windows,
)
from secagg.errors import UpdateRejected
from secagg.windowsize import DEFAULT_WINDOW_BYTES


# -------------------------------------------------------------------------------------------- sum
def sum_windows(
    readers: Sequence[BundleReader],
    size: int,
    elements: int,
    blame: Callable[[int, Exception], Exception],
    dtype: npt.DTypeLike = np.float64,
) -> Iterator[tuple[int, np.ndarray]]:
    """The float64 sum of the uploads, one window at a time: ``(start, window)``; the window buffer is
    reused, so a consumer must use it before asking for the next. ``blame(i, exc)`` turns an upload's
    refusal into the exception that names it (:class:`~secagg.aggregator.modes.BadUpload`).

    A NaN or infinity in any upload makes the window's sum non-finite, so the sum is checked once per
    window; only then is each upload's window checked, to name the one at fault (a sum that overflows
    from finite float64 values stays as the in-memory sum would have it).

    ``dtype`` ``uint32``: the uploads are residues mod 2^32 (distributed-DP shares, every one ``U32``)
    and the accumulator adds them with wrap-around, as the mask protocol does."""
    acc = np.empty(min(elements, max(size, 1)), dtype=dtype)
    floats = acc.dtype.kind == "f"
    for start, stop in window_ranges(size, elements):
        part = acc[: stop - start]
        part.fill(0)
        for i, reader in enumerate(readers):
            try:
                reader.add_into(part, start, stop)
            except UpdateRejected as exc:
                raise blame(i, exc) from exc
        if floats and not np.isfinite(part).all():
            for i, reader in enumerate(readers):
                try:
                    reader.check(start, stop)
                except UpdateRejected as exc:
                    raise blame(i, exc) from exc
        yield start, part


def write_f64(path: Path, windows: Iterable[tuple[int, np.ndarray]]) -> None:
    """The windows, as little-endian float64 in order, to ``path`` (temporary file, then renamed)."""
    write_windows(path, b"", windows, "<f8")


def f64_view(path: Path, size: int) -> np.ndarray:
    """A read-only memory map of a float64 sum file, then the file's name is removed: the map keeps
    the data (the kernel reads it back on demand, so it need not stay resident), and no round leaves
    a file behind."""
    view: np.ndarray = np.memmap(path, dtype="<f8", mode="r", shape=(size,)) if size else np.zeros(0)
    path.unlink(missing_ok=True)
    return view


def mapped_window(arr: np.ndarray, start: int, stop: int) -> np.ndarray:
    """A copy of ``arr[start:stop]``; where ``arr`` is a file map (:func:`f64_view`), the pages read
    are then dropped from this process's resident set (the page cache keeps them), so reading a
    mapped sum from end to end costs a window of memory, not the sum's size."""
    out = np.array(arr[start:stop], dtype=np.float64)
    mm = getattr(arr, "_mmap", None)
    if isinstance(arr, np.memmap) and mm is not None and hasattr(mm, "madvise"):
        page, delta = mmap.PAGESIZE, int(arr.offset) % mmap.ALLOCATIONGRANULARITY  # where arr begins in mm
        lo = (delta + start * arr.itemsize) // page * page
        hi = (delta + stop * arr.itemsize) // page * page
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    return out


def f64_scratch(
    windows: Iterable[tuple[int, np.ndarray]], size: int, folder: Path | None = None
) -> np.ndarray:
    """The windows written to an anonymous scratch file and mapped read-only (see :func:`f64_view`)."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=".secagg-sum-", suffix=".f64")
    os.close(fd)
    path = Path(name)
    try:
        write_f64(path, windows)
        return f64_view(path, size)
    finally:
        path.unlink(missing_ok=True)


__all__ = [
    "DEFAULT_WINDOW_BYTES",
    "DTYPES",
    "BundleReader",
    "ByteSource",
    "BytesSource",
    "FileSource",
    "Fingerprint",
    "Layout",
    "bundle_header",
    "f64_scratch",
    "f64_view",
    "mapped_window",
    "sum_windows",
    "window_elements",
    "window_ranges",
    "write_bundle",
    "write_f64",
    "Entry",
    "MAX_HEADER",
]
