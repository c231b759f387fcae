"""The global model as the aggregator keeps it between rounds: files and a digest, never an array.

A model-sized float64 vector in memory, plus a float32 copy and its safetensors bytes for every task a
site asked for, was what made a 2 GiB model cost many times that at the aggregator. Instead a round's
global model is:

- ``exact``: the strategy's x, a flat little-endian float64 file: what the next server step starts
  from, the published float32 values widened exactly (every site holds them and a restart reloads
  them, so a restart changes nothing: RELIABILITY.md F2), kept so the step reads float64 windows
  without parsing the bundle;
- ``bundle``: the float32 safetensors bundle the sites download (the round's result file), streamed
  to them from disk in transport-sized pieces;
- ``fingerprint``: :func:`secagg.bundle.fingerprint` of the bundle, computed while it was written
  (a tee aggregator signs it for every task; it is never recomputed from a copy in memory).

Both files are read a window at a time with ``pread`` (through the page cache, which the process's
resident set does not count).
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from secagg.aggregator.modes.windows import (
    BundleReader,
    FileSource,
    Fingerprint,
    Layout,
    window_ranges,
)
from secagg.bundle import BundleSpec, TensorSpec
from secagg.errors import ConfigError, IntegrityError, SecaggError

#: pieces of a bundle streamed to a site (the transport's largest chunk)
PIECE = 4 * 1024 * 1024


def exact_path(bundle: Path) -> Path:
    """Where the float64 values of the global model in ``bundle`` (``round-N.bin``) are kept."""
    return bundle.with_name(f"{bundle.stem}.f64")


@dataclass(frozen=True)
class GlobalModel:
    """One round's global model on disk (see the module docstring)."""

    spec: BundleSpec
    #: the float32 safetensors bundle sites download
    bundle: Path
    #: the float64 values, flat, in bundle order
    exact: Path
    fingerprint: str

    @property
    def nbytes(self) -> int:
        """Bytes of the bundle a site downloads."""
        return self.bundle.stat().st_size

    def chunks(self) -> Iterator[bytes]:
        """The bundle's bytes, in pieces of at most :data:`PIECE`."""
        with self.bundle.open("rb") as fh:
            while piece := fh.read(PIECE):
                yield piece

    def reader(self) -> ExactReader:
        """Random access to the float64 values, a window at a time (close it after use)."""
        return ExactReader(self.exact, self.spec.size)


class ExactReader:
    """A float64 flat vector file read at element offsets; only the window asked for is held."""

    def __init__(self, path: Path, size: int) -> None:
        self.src = FileSource(path)
        if self.src.size != 8 * size:
            self.src.close()
            raise IntegrityError(f"{path.name} holds {self.src.size} bytes, expected {8 * size}")

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.frombuffer(self.src.read(8 * start, 8 * (stop - start)), dtype="<f8")

    def close(self) -> None:
        self.src.close()


def spec_of(layout: Layout) -> BundleSpec:
    """The bundle spec of a safetensors file, from its header (the order ``from_safetensors`` uses)."""
    return BundleSpec(tuple(TensorSpec(n, tuple(layout.entries[n].shape)) for n in layout.order))


def extract_model(pkg: Path, name: str, dest: Path) -> None:
    """Copy the job package's model file ``name`` to ``dest`` (streamed: never whole in memory);
    ``ConfigError`` if the package has no such file."""
    with tarfile.open(pkg, "r:gz") as tar:
        try:
            member = tar.extractfile(name)
        except KeyError:
            member = None
        if member is None:
            raise ConfigError(f"job package has no file {name}")
        tmp = dest.with_name(f".{dest.name}.tmp")
        with member, tmp.open("wb") as out:
            shutil.copyfileobj(member, out, PIECE)
        os.replace(tmp, dest)


def model_spec(model: Path) -> BundleSpec:
    """The spec of a job's model file, read from its header; ``ConfigError`` if it is not safetensors."""
    with FileSource(model) as src:
        try:
            return spec_of(Layout.parse(src))
        except SecaggError as exc:
            raise ConfigError(f"the job's model does not load: {exc}") from None


def write_global(spec: BundleSpec, windows: Iterator[tuple[int, np.ndarray]], bundle: Path) -> GlobalModel:
    """Write a global model from its float64 windows (in order): the exact file and the float32
    bundle side by side, each to a temporary file renamed once whole, and the fingerprint hashed as
    the bundle is written."""
    from secagg.aggregator.modes.windows import bundle_header

    exact = exact_path(bundle)
    fp = Fingerprint(spec)
    tmp_exact, tmp_bundle = exact.with_name(f".{exact.name}.tmp"), bundle.with_name(f".{bundle.name}.tmp")
    try:
        with tmp_exact.open("wb") as fx, tmp_bundle.open("wb") as fb:
            fb.write(bundle_header(spec))
            for start, win in windows:
                f32 = np.ascontiguousarray(win, dtype="<f4")
                # the next round starts from the model as published (what every site holds and a
                # restart reloads), not from the unrounded values: RELIABILITY.md F2
                fx.write(f32.astype("<f8").data)
                fp.update(start, f32)
                fb.write(f32.data)
            for fh in (fx, fb):
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp_exact, exact)
        os.replace(tmp_bundle, bundle)
    except BaseException:
        tmp_exact.unlink(missing_ok=True)
        tmp_bundle.unlink(missing_ok=True)
        raise
    return GlobalModel(spec, bundle, exact, fp.hexdigest())


def from_model_file(model: Path, spec: BundleSpec, bundle: Path, elements: int) -> GlobalModel:
    """The global model a job starts from (or resumes from, given a round's float32 bundle): the
    file's values widened to float64 exactly, a window at a time; ``UpdateRejected`` (``non_finite``,
    ``bad_shape``, ``malformed``) for a file that does not fit ``spec`` or holds NaN or infinity."""
    with FileSource(model) as src:
        reader = BundleReader(src, spec)

        def windows() -> Iterator[tuple[int, np.ndarray]]:
            acc = np.empty(min(elements, max(spec.size, 1)), dtype=np.float64)
            for start, stop in window_ranges(spec.size, elements):
                reader.check(start, stop)
                part = acc[: stop - start]
                part.fill(0.0)
                reader.add_into(part, start, stop)
                yield start, part

        return write_global(spec, windows(), bundle)


def resume(spec: BundleSpec, bundle: Path, elements: int) -> GlobalModel:
    """A committed round's global model, its bundle left as it was committed: the exact file where it
    was kept (and fits), else one written now from the float32 bundle (a round committed before exact
    files were kept); both hold the bundle's values. The fingerprint is hashed in the same pass."""
    exact = exact_path(bundle)
    keep = exact.is_file() and exact.stat().st_size == 8 * spec.size
    fp = Fingerprint(spec)
    tmp = exact.with_name(f".{exact.name}.tmp")
    try:
        with FileSource(bundle) as src, open(os.devnull, "wb") if keep else tmp.open("wb") as out:
            reader = BundleReader(src, spec)
            acc = np.empty(min(elements, max(spec.size, 1)), dtype=np.float64)
            for start, stop in window_ranges(spec.size, elements):
                part = acc[: stop - start]
                part.fill(0.0)
                reader.add_into(part, start, stop)
                fp.update(start, part.astype("<f4"))
                if not keep:
                    out.write(part.data)
            if not keep:
                out.flush()
                os.fsync(out.fileno())
        if not keep:
            os.replace(tmp, exact)
    finally:
        tmp.unlink(missing_ok=True)
    return GlobalModel(spec, bundle, exact, fp.hexdigest())


__all__ = [
    "PIECE",
    "ExactReader",
    "GlobalModel",
    "exact_path",
    "extract_model",
    "from_model_file",
    "model_spec",
    "resume",
    "spec_of",
    "write_global",
]
