"""A site's round on files: the global model, the trained model, the update, the weighted stream.

Why: a site agent that loads the global model, parses it, reads the trained model back, subtracts,
filters, flattens and weights holds seven or eight float32 copies of the model at once; at 7B
parameters that is over 200 GB. Here every one of those is a file in the job's folder, read a window
at a time with ``pread`` (:mod:`secagg.bundlefile`: no memory map, whose pages would count towards the
agent's resident set), so the agent holds a few windows whatever the model's size.

Every function computes, element for element, what the in-memory round computed (``from_safetensors``
then ``fingerprint``; ``(local.astype(float64) - global).astype(float32)``; ``bspec.flatten(update) *
weight``), with the same refusals (reason code and message): ``tests/agent/test_roundfiles.py``.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from secagg.bundle import BundleSpec
from secagg.bundlefile import (
    FileSource,
    Fingerprint,
    Layout,
    open_bundle,
    spec_of,
    window_ranges,
    write_bundle,
)
from secagg.errors import UpdateRejected
from secagg.fsio import atomic_write
from secagg.privacy.streamed import WINDOW_VALUES, UpdateFile
from secagg.reasons import Reason


def spool_path(folder: Path, what: str) -> Path:
    """A fresh name for one of the round's files in ``folder`` (the job's own, which the job's code
    cannot reach), of the form a restarted agent sweeps (:func:`secagg.fsio.remove_stale_temps`)."""
    return folder / f".{what}.{secrets.token_hex(8)}.tmp"


def atomic_copy(src: Path, dst: Path) -> None:
    """``src`` copied to ``dst`` atomically, by the kernel (``copyfile`` uses ``sendfile``): a model
    file copied without a copy of it in memory."""
    tmp = spool_path(dst.parent, dst.name)
    try:
        shutil.copyfile(src, tmp)
        atomic_write(dst, source=tmp)
    finally:
        tmp.unlink(missing_ok=True)


def model_spec(path: Path) -> BundleSpec:
    """The spec of the safetensors model at ``path``, from its header alone; refuses (``malformed``)
    what ``from_safetensors`` refuses."""
    with FileSource(path) as src:
        return spec_of(Layout.parse(src))


def fingerprint_file(path: Path, spec: BundleSpec, elements: int = WINDOW_VALUES) -> str:
    """:func:`secagg.bundle.fingerprint` of the model at ``path``, hashed as its values stream past."""
    fp = Fingerprint(spec)
    reader = open_bundle(path, spec)
    try:
        for start, stop in window_ranges(spec.size, elements):
            out = np.empty(stop - start, dtype="<f4")
            reader.read_into(out, start, stop)
            fp.update(start, out)
    finally:
        reader.close()
    return fp.hexdigest()


def write_update(
    local: Path, global_: Path, spec: BundleSpec, dst: Path, elements: int = WINDOW_VALUES
) -> UpdateFile:
    """The update ``local - global`` (float64 difference, rounded to float32) written to ``dst``.

    The trained model is checked as ``BundleSpec.check`` checks it (names and shapes, then no NaN or
    infinity, naming the first tensor at fault), before anything is written under ``dst``'s name."""
    loc = open_bundle(local, spec)
    glob = open_bundle(global_, spec)

    def windows() -> Iterator[tuple[int, np.ndarray]]:
        for start, stop in window_ranges(spec.size, elements):
            a = np.empty(stop - start, dtype=np.float64)
            b = np.empty(stop - start, dtype=np.float64)
            loc.read_into(a, start, stop)
            if not np.isfinite(a).all():
                loc.check(start, stop)  # raises, naming the tensor
            glob.read_into(b, start, stop)
            a -= b
            yield start, a.astype(np.float32)

    try:
        return UpdateFile.write(dst, spec, windows())
    finally:
        loc.close()
        glob.close()


def write_local_model(global_: Path, update: UpdateFile, dst: Path, elements: int = WINDOW_VALUES) -> None:
    """The released local model ``global + update`` (float64 sum, rounded to float32) to ``dst``: what
    cross-site evaluation keeps of the last round (:func:`secagg.agent.evaluation.keep_local_model`)."""
    spec = update.spec
    glob = open_bundle(global_, spec)

    def windows() -> Iterator[tuple[int, np.ndarray]]:
        for start, upd in update.windows(elements, dtype=np.float64):
            g = np.empty(upd.size, dtype=np.float64)
            glob.read_into(g, start, start + upd.size)
            g += upd
            yield start, g.astype(np.float32)

    try:
        write_bundle(dst, spec, windows())
    finally:
        glob.close()


@dataclass(frozen=True)
class WeightedFile:
    """The released update times the site's weight, as float64 windows: what every mode protects.

    The in-memory round made ``bspec.flatten(release.update) * weight`` (a float64 copy of the
    model); the windows are that vector's, value for value, and a NaN or infinity is refused as
    ``flatten`` refused it."""

    update: UpdateFile
    weight: float
    #: values per window (a setting for tests; the default is 8 MiB of float64)
    elements: int = WINDOW_VALUES

    @property
    def size(self) -> int:
        return self.update.spec.size

    def windows(self, elements: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        elements = elements or self.elements
        reader = self.update.reader()
        try:
            for start, stop in window_ranges(self.size, elements):
                out = np.empty(stop - start, dtype=np.float64)
                reader.read_into(out, start, stop)
                if not np.isfinite(out).all():
                    reader.check(start, stop)
                    raise UpdateRejected("update contains NaN or Inf", code=Reason.NON_FINITE)
                out *= self.weight
                yield start, out
        finally:
            reader.close()

    def array(self) -> np.ndarray:
        """The whole weighted vector (``he`` encrypts one flat vector; distributed DP's shares)."""
        out = np.empty(self.size, dtype=np.float64)
        for start, vals in self.windows():
            out[start : start + vals.size] = vals
        return out


@dataclass(frozen=True)
class WeightedArray:
    """A weighted vector already in memory (library callers and tests): the same interface."""

    values: np.ndarray

    @property
    def size(self) -> int:
        return int(self.values.size)

    def windows(self, elements: int = WINDOW_VALUES) -> Iterator[tuple[int, np.ndarray]]:
        for start, stop in window_ranges(self.size, elements):
            yield start, np.asarray(self.values[start:stop], dtype=np.float64)

    def array(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float64)


__all__ = [
    "WeightedArray",
    "atomic_copy",
    "WeightedFile",
    "fingerprint_file",
    "model_spec",
    "spool_path",
    "write_local_model",
    "write_update",
]
