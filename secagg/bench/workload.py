"""The synthetic round every mode protects: one update per site, FedAvg weights, float64 truth.

Updates are gaussian with standard deviation 0.05 (the size of a typical per-round weight delta),
float32 as a training loop hands them over; weights come from random sample counts. Each site's update
is regenerated from its own seed whenever it is needed, so a 16-site, 5M-parameter run never holds all
updates at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from secagg.bundle import BundleSpec

UPDATE_STD = 0.05


@dataclass
class Workload:
    spec: BundleSpec
    sites: int
    seed: int = 0
    counts: np.ndarray = field(init=False, repr=False)
    weights: np.ndarray = field(init=False, repr=False)
    _expected: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 0])
        self.counts = rng.integers(100, 10_000, self.sites).astype(np.int64)
        self.weights = self.counts / self.counts.sum()

    @property
    def size(self) -> int:
        return self.spec.size

    @property
    def names(self) -> list[str]:
        return [f"site-{i + 1}" for i in range(self.sites)]

    def update(self, site: int) -> np.ndarray:
        """Site ``site``'s flat float32 update (the same on every call)."""
        rng = np.random.default_rng([self.seed, 1, site])
        return rng.normal(0.0, UPDATE_STD, self.size).astype(np.float32)

    def update_windows(self, site: int, elements: int) -> Iterator[tuple[int, np.ndarray]]:
        """:meth:`update` a window of ``elements`` values at a time, ``(start, float32 window)``: the
        same values (one generator drawn in order), never the whole vector."""
        rng = np.random.default_rng([self.seed, 1, site])
        for start in range(0, self.size, elements):
            n = min(elements, self.size - start)
            yield start, rng.normal(0.0, UPDATE_STD, n).astype(np.float32)

    def expected_windows(self, elements: int) -> Iterator[tuple[int, np.ndarray]]:
        """:meth:`expected` a window at a time (the same sum, in the same order, bit for bit)."""
        if self._expected is not None:
            for start in range(0, self.size, elements):
                yield start, self._expected[start : start + elements]
            return
        streams = [self.update_windows(i, elements) for i in range(self.sites)]
        for start in range(0, self.size, elements):
            acc = np.zeros(min(elements, self.size - start), dtype=np.float64)
            for i, stream in enumerate(streams):
                _, u = next(stream)
                acc += self.weights[i] * u.astype(np.float64)
            yield start, acc

    def max_error(self, windows: Iterator[tuple[int, np.ndarray]], elements: int) -> float:
        """The largest ``|value - expected|`` over ``windows`` (in order, ``elements`` values each)."""
        worst = 0.0
        for (at, got), (start, want) in zip(windows, self.expected_windows(elements), strict=True):
            if at != start:
                raise ValueError(f"window at {at}, expected {start}")
            worst = max(worst, float(np.max(np.abs(np.asarray(got, dtype=np.float64) - want))))
        return worst

    def expected(self) -> np.ndarray:
        """The float64 weighted average every mode should reproduce."""
        if self._expected is None:
            acc = np.zeros(self.size, dtype=np.float64)
            for i in range(self.sites):
                acc += self.weights[i] * self.update(i).astype(np.float64)
            self._expected = acc
        return self._expected
