"""``plain`` mode at the aggregator: plaintext updates, for baselines and benchmarks only.

Uploads are safetensors of w_i * update_i; the round's sum is a flat float64 vector, which the round
engine turns into the new global model with the job's strategy. A site's policy must allow this mode
explicitly: here the aggregator sees every site's update.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from secagg.aggregator.modes import BadUpload, ModeBase, ModeContext
from secagg.aggregator.rounds import JobRun, RoundRun
from secagg.bundle import BundleSpec, from_safetensors
from secagg.errors import SecaggError


class PlainCombiner:
    """Sums safetensors uploads into a flat float64 vector, in the order given."""

    def __init__(self, spec: BundleSpec) -> None:
        self.spec = spec

    def read(self, site: str, round_: int, path: Path) -> bytes:
        """The plaintext safetensors bytes of one upload."""
        return path.read_bytes()

    def check(self, site: str, round_: int, path: Path) -> None:
        self.spec.check(from_safetensors(self.read(site, round_, path)))

    def sum(self, round_: int, uploads: Mapping[str, Path]) -> np.ndarray:
        """Sum in sorted site order; :class:`BadUpload` names the first upload that does not fit."""
        total = np.zeros(self.spec.size, dtype=np.float64)
        for site in sorted(uploads):
            path = uploads[site]
            try:
                total += self.spec.flatten(from_safetensors(self.read(site, round_, path)))
            except SecaggError as exc:
                raise BadUpload(path, exc, site) from exc
        return total


class PlainMode(ModeBase):
    name = "plain"
    sees_model = True

    def __init__(self, ctx: ModeContext) -> None:
        super().__init__(ctx)
        self.combiner = self._combiner()

    def _combiner(self) -> PlainCombiner:
        return PlainCombiner(self.ctx.bundle_spec)

    def payload_header(self, job: JobRun, site_has_round: int) -> dict[str, Any]:
        return {"base_round": job.completed, "global_bytes": len(self.global_bytes(job))}

    def payload(self, job: JobRun, header: dict[str, Any]) -> Iterator[bytes]:
        yield self.global_bytes(job)

    def accept(self, site: str, round_: RoundRun, header: dict[str, Any], spooled: Path) -> None:
        self.combiner.check(site, round_.round, spooled)

    def combine(self, round_: int, uploads: Mapping[str, Path], out: Path) -> np.ndarray:
        return self.combiner.sum(round_, uploads)


__all__ = ["PlainCombiner", "PlainMode"]
