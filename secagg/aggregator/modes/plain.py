"""``plain`` mode at the aggregator: plaintext updates, for baselines and benchmarks only.

Uploads are safetensors of w_i * update_i; the round's sum is a flat float64 vector, which the round
engine turns into the new global model with the job's strategy. A site's policy must allow this mode
explicitly: here the aggregator sees every site's update.

The sum is windowed (:mod:`secagg.aggregator.modes.windows`): every upload is read in lockstep, one
window at a time, and the float64 sum is written to the combine's output file window by window; what
the round engine gets back is a read-only map of that file, not a model-sized array in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from secagg.aggregator.modes import BadUpload, ModeBase, ModeContext
from secagg.aggregator.modes.windows import (
    BundleReader,
    ByteSource,
    FileSource,
    f64_view,
    sum_windows,
    window_elements,
    write_f64,
)
from secagg.aggregator.rounds import JobRun, RoundRun
from secagg.bundle import BundleSpec
from secagg.errors import SecaggError


def blamer(sites: list[str], uploads: Mapping[str, Path]) -> Callable[[int, Exception], Exception]:
    """``blame(i, exc)`` for :func:`sum_windows`: the :class:`BadUpload` of the ``i``-th site."""

    def blame(i: int, exc: Exception) -> Exception:
        return BadUpload(uploads[sites[i]], exc, sites[i])

    return blame


class PlainCombiner:
    """Sums safetensors uploads window by window into float64, in sorted site order."""

    def __init__(self, spec: BundleSpec, window_bytes: int) -> None:
        self.spec = spec
        self.elements = window_elements(window_bytes)

    def source(self, site: str, round_: int, path: Path) -> ByteSource:
        """The plaintext safetensors bytes of one upload, readable at offsets."""
        return FileSource(path)

    def reader(self, stack: ExitStack, site: str, round_: int, path: Path) -> BundleReader:
        src = self.source(site, round_, path)
        stack.callback(src.close)
        return BundleReader(src, self.spec)

    def check(self, site: str, round_: int, path: Path) -> None:
        """The upload's header fits the spec and every value is finite (one windowed pass)."""
        with ExitStack() as stack:
            self.reader(stack, site, round_, path).check_all(self.elements, self.spec.size)

    def readers(
        self, stack: ExitStack, round_: int, uploads: Mapping[str, Path]
    ) -> tuple[list[str], list[BundleReader]]:
        """Every upload's reader, in sorted site order; :class:`BadUpload` names the first that does
        not open or fit."""
        sites = sorted(uploads)
        readers = []
        for site in sites:
            try:
                readers.append(self.reader(stack, site, round_, uploads[site]))
            except (SecaggError, OSError) as exc:
                raise BadUpload(uploads[site], exc, site) from exc
        return sites, readers

    def windows(
        self, stack: ExitStack, round_: int, uploads: Mapping[str, Path]
    ) -> Iterator[tuple[int, np.ndarray]]:
        """The sum's windows; :class:`BadUpload` names the first upload that does not fit."""
        sites, readers = self.readers(stack, round_, uploads)
        return sum_windows(readers, self.spec.size, self.elements, blamer(sites, uploads))

    def sum_to(self, round_: int, uploads: Mapping[str, Path], out: Path) -> None:
        """The float64 sum, written to ``out`` window by window (temporary file, then renamed)."""
        with ExitStack() as stack:
            write_f64(out, self.windows(stack, round_, uploads))

    def sum(self, round_: int, uploads: Mapping[str, Path], out: Path) -> np.ndarray:
        """The float64 sum written to ``out``, returned as a read-only map of it (``out`` removed)."""
        self.sum_to(round_, uploads, out)
        return f64_view(out, self.spec.size)


class PlainMode(ModeBase):
    name = "plain"
    sees_model = True

    def __init__(self, ctx: ModeContext) -> None:
        super().__init__(ctx)
        self.combiner = self._combiner()

    def _combiner(self) -> PlainCombiner:
        return PlainCombiner(self.ctx.bundle_spec, self.ctx.window_bytes)

    def payload_header(self, job: JobRun, site_has_round: int) -> dict[str, Any]:
        return {"base_round": job.completed, "global_bytes": self.global_model(job).nbytes}

    def payload(self, job: JobRun, header: dict[str, Any]) -> Iterator[bytes]:
        """The global model's bundle, streamed from its file (never whole in memory)."""
        yield from self.global_model(job).chunks()

    def accept(self, site: str, round_: RoundRun, header: dict[str, Any], spooled: Path) -> None:
        self.combiner.check(site, round_.round, spooled)

    def combine(self, round_: int, uploads: Mapping[str, Path], out: Path) -> np.ndarray:
        return self.combiner.sum(round_, uploads, out)


__all__ = ["PlainCombiner", "PlainMode", "blamer"]
