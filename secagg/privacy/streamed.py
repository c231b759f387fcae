"""The filter chain over a spooled update file, a window at a time where the mathematics allows.

The site agent never holds its update in memory: training's result is turned into an update file (a
float32 safetensors bundle, :class:`UpdateFile`), and each filter of the chain reads one file and
writes the next. The result is bit for bit :func:`secagg.privacy.specs.apply_chain` on the same update
(``tests/privacy/test_streamed.py``):

* ``exclude``: per tensor, so per window: the selected tensors' values are written as zeros.
* ``gaussian``: two passes. The first sums the squares over fixed blocks (the norm of
  :func:`secagg.privacy.gaussian.l2_norm`, the same blocks in memory and here), the second scales each
  window by ``clip / norm`` when the norm is over the clip and adds the noise, drawn window after
  window in order (a generator's normal draws do not depend on how they are grouped).
* ``percentile`` and ``svt`` **need the whole update at once**: the percentile's threshold is an order
  statistic of all the magnitudes, and SVT picks its shared entries by a sparse-vector scan over the
  whole vector with one noisy threshold. ``distributed_gaussian`` too: its randomised rounding is
  redrawn until the *whole* integer vector's norm is within the bound. For these the update is loaded
  (one float32 copy of the model), filtered in memory and written back.

Every pass refuses a NaN or infinity in its input as :func:`secagg.privacy.spend.as_update` does (same
reason code, same message), so a chain refuses what the in-memory chain refuses.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from secagg.bundle import BundleSpec
from secagg.bundlefile import BundleReader, open_bundle, window_ranges, write_bundle
from secagg.errors import UpdateRejected
from secagg.privacy.exclude import excluded_names
from secagg.privacy.gaussian import NORM_BLOCK, check_params, receipt, sum_squares
from secagg.privacy.specs import TRAINING_TIME, ExcludeSpec, FilterSpec, GaussianSpec, _as_spec, build_filter
from secagg.privacy.spend import Spend, Update
from secagg.reasons import Reason

#: the filters that run a window at a time; the others load the whole update (module docstring)
WINDOWED = frozenset({"exclude", "gaussian"})
#: values per window of a pass (4 MiB of float32, 8 MiB as float64)
WINDOW_VALUES = 1 << 20


@dataclass(frozen=True)
class UpdateFile:
    """An update as a float32 safetensors file (names and shapes of ``spec``, in its order).

    What a :class:`~secagg.privacy.release.Release` holds at the site: read a window at a time, or whole
    (:meth:`load`) only where a filter or a mode needs it whole."""

    path: Path
    spec: BundleSpec

    def reader(self) -> BundleReader:
        return open_bundle(self.path, self.spec)

    def windows(
        self, elements: int = WINDOW_VALUES, dtype: Any = np.float32
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, values)`` over the flat vector in bundle order, each window a fresh array."""
        reader = self.reader()
        try:
            for start, stop in window_ranges(self.spec.size, elements):
                out = np.empty(stop - start, dtype=dtype)
                reader.read_into(out, start, stop)
                yield start, out
        finally:
            reader.close()

    def load(self) -> Update:
        """The whole update in memory (float32 tensors in bundle order)."""
        flat = np.empty(self.spec.size, dtype=np.float32)
        for start, vals in self.windows():
            flat[start : start + vals.size] = vals
        out: Update = OrderedDict()
        pos = 0
        for t in self.spec.tensors:
            out[t.name] = flat[pos : pos + t.size].reshape(t.shape).copy()
            pos += t.size
        return out

    @classmethod
    def write(cls, path: Path, spec: BundleSpec, windows: Iterator[tuple[int, np.ndarray]]) -> UpdateFile:
        write_bundle(path, spec, windows)
        return cls(path, spec)

    @classmethod
    def of(cls, path: Path, spec: BundleSpec, update: Mapping[str, np.ndarray]) -> UpdateFile:
        """An update in memory written as a file (the in-memory filters' output, tests)."""
        flat = np.concatenate([np.asarray(update[n], dtype=np.float32).reshape(-1) for n in spec.names])
        return cls.write(path, spec, iter([(0, flat)]) if flat.size else iter([]))


def _bounds(spec: BundleSpec) -> list[tuple[int, int, str]]:
    out, pos = [], 0
    for t in spec.tensors:
        out.append((pos, pos + t.size, t.name))
        pos += t.size
    return out


def refuse_nonfinite(spec: BundleSpec, start: int, values: np.ndarray) -> None:
    """As :func:`~secagg.privacy.spend.as_update` refuses: the first tensor holding NaN or infinity."""
    if np.isfinite(values).all():
        return
    stop = start + values.size
    for lo, hi, name in _bounds(spec):
        a, b = max(lo, start), min(hi, stop)
        if a < b and not np.isfinite(values[a - start : b - start]).all():
            raise UpdateRejected(f"tensor {name!r} holds NaN or infinity", code=Reason.NON_FINITE)


def _exclude(src: UpdateFile, dst: Path, spec: ExcludeSpec, elements: int) -> UpdateFile:
    names = set(excluded_names(src.spec.names, spec.tensors, spec.regex))
    zeros = [(lo, hi) for lo, hi, n in _bounds(src.spec) if n in names]

    def windows() -> Iterator[tuple[int, np.ndarray]]:
        for start, vals in src.windows(elements):
            refuse_nonfinite(src.spec, start, vals)
            for lo, hi in zeros:
                a, b = max(lo, start), min(hi, start + vals.size)
                if a < b:
                    vals[a - start : b - start] = 0.0
            yield start, vals

    return UpdateFile.write(dst, src.spec, windows())


def _gaussian(
    src: UpdateFile, dst: Path, spec: GaussianSpec, rng: np.random.Generator, elements: int
) -> tuple[UpdateFile, Spend]:
    check_params(spec.clip, spec.noise_multiplier, spec.sample_rate, spec.delta)
    total = 0.0
    for start, vals in src.windows(NORM_BLOCK):  # pass 1: the norm, over the fixed blocks
        refuse_nonfinite(src.spec, start, vals)
        total += sum_squares(vals)
    norm = float(np.sqrt(total))
    scale = spec.noise_multiplier * spec.clip

    def windows() -> Iterator[tuple[int, np.ndarray]]:  # pass 2: scale and noise, window by window
        for start, vals in src.windows(elements, dtype=np.float64):
            if norm > spec.clip:
                vals *= spec.clip / norm
            vals += rng.normal(scale=scale, size=vals.size)
            yield start, vals

    out = UpdateFile.write(dst, src.spec, windows())
    return out, receipt(spec.noise_multiplier, spec.sample_rate, spec.delta)


def _whole(
    src: UpdateFile, dst: Path, spec: FilterSpec, rng: np.random.Generator
) -> tuple[UpdateFile, Spend | None]:
    """A filter that needs the whole update at once (module docstring): loaded, filtered, written."""
    filtered, spend = build_filter(spec)(src.load(), rng)
    return UpdateFile.of(dst, src.spec, filtered), spend


def _temp(folder: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=folder, prefix=".filtered-", suffix=".tmp")
    os.close(fd)
    return Path(name)


def apply_chain_file(
    specs: Sequence[FilterSpec | Mapping[str, Any] | BaseModel],
    update: UpdateFile,
    dst: Path,
    rng: np.random.Generator,
    elements: int = WINDOW_VALUES,
) -> tuple[UpdateFile, list[Spend]]:
    """:func:`~secagg.privacy.specs.apply_chain` of the chain ``specs`` (training-time ones left out,
    as :func:`~secagg.privacy.specs.build_chain` leaves them) on ``update``; the result is written to
    ``dst`` (intermediate files beside it, removed). ``update`` itself is never changed."""
    parsed = [s for s in (_as_spec(x) for x in specs) if s.name not in TRAINING_TIME]
    current, spends, made = update, [], []
    try:
        # the in-memory chain refuses a NaN or infinity before any filter (as_update): so does this
        for start, vals in update.windows(elements):
            refuse_nonfinite(update.spec, start, vals)
        for i, spec in enumerate(parsed):
            out = dst if i == len(parsed) - 1 else _temp(dst.parent)
            spend: Spend | None = None
            if isinstance(spec, ExcludeSpec):
                nxt = _exclude(current, out, spec, elements)
            elif isinstance(spec, GaussianSpec):
                nxt, spend = _gaussian(current, out, spec, rng, elements)
            else:
                nxt, spend = _whole(current, out, spec, rng)
            if spend is not None:
                spends.append(spend)
            if current is not update:
                current.path.unlink(missing_ok=True)
            made.append(nxt.path)
            current = nxt
        if current is update:  # no update filter: the release is the update as it is
            current = UpdateFile.write(dst, update.spec, update.windows(elements))
        return current, spends
    except BaseException:
        for p in made:
            p.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)
        raise


__all__ = ["WINDOWED", "UpdateFile", "apply_chain_file", "refuse_nonfinite"]
