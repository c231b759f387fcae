"""What a filter released, in the units an accountant needs.

A ``Spend`` is the receipt a filter hands back with the update it changed. The ledger composes receipts;
it never re-derives them from filter parameters, so a filter is the one place that knows its own cost.
Values are checked on construction because a NaN epsilon compares false against every budget and would
let an overspend through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.errors import ConfigError, UpdateRejected
from secagg.reasons import Reason

#: an update: local model minus global model, as ordered named float32 tensors
Update = dict[str, npt.NDArray[np.float32]]

#: mechanisms whose releases compose by Renyi DP (Gaussian noise with a known noise multiplier;
#: distributed_gaussian's receipt carries the multiplier of a Gaussian whose RDP curve dominates its own)
RDP_MECHANISMS = frozenset({"gaussian", "distributed_gaussian", "dpsgd"})


@dataclass(frozen=True)
class Spend:
    """The privacy one release cost: ``(epsilon, delta)`` and, for Gaussian mechanisms, the RDP triple."""

    mechanism: str
    epsilon: float
    delta: float
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if not self.mechanism or not self.mechanism.replace("-", "_").isidentifier():
            raise ConfigError(f"privacy spend: bad mechanism name {self.mechanism!r}")
        if not (math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise ConfigError(f"privacy spend ({self.mechanism}): epsilon must be finite and >= 0")
        if not (math.isfinite(self.delta) and 0 <= self.delta < 1):
            raise ConfigError(f"privacy spend ({self.mechanism}): delta must be in [0, 1)")
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            raise ConfigError(f"privacy spend ({self.mechanism}): noise_multiplier must be finite and > 0")
        if self.sample_rate is not None and not (0 < self.sample_rate <= 1):
            raise ConfigError(f"privacy spend ({self.mechanism}): sample_rate must be in (0, 1]")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"privacy spend ({self.mechanism}): steps must be >= 1")

    @property
    def rdp(self) -> bool:
        """True when this release composes by RDP (its Gaussian triple is known)."""
        return self.mechanism in RDP_MECHANISMS and self.noise_multiplier is not None

    def rdp_triple(self) -> tuple[float, float, int]:
        """``(noise_multiplier, sample_rate, steps)`` as Opacus' accountant history holds it."""
        if self.noise_multiplier is None:
            raise ConfigError(f"privacy spend ({self.mechanism}) has no noise multiplier for RDP")
        return (
            float(self.noise_multiplier),
            float(self.sample_rate if self.sample_rate is not None else 1.0),
            int(self.steps if self.steps is not None else 1),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Spend:
        try:
            return cls(
                mechanism=str(data["mechanism"]),
                epsilon=float(data["epsilon"]),
                delta=float(data["delta"]),
                noise_multiplier=_opt(data.get("noise_multiplier"), float),
                sample_rate=_opt(data.get("sample_rate"), float),
                steps=_opt(data.get("steps"), int),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"privacy spend: bad record {dict(data)!r}: {exc}") from None


def _opt(value: Any, kind: type[Any]) -> Any:
    return None if value is None else kind(value)


def as_update(update: Mapping[str, Any]) -> Update:
    """Copy ``update`` into fresh float32 arrays, refusing what no filter can treat soundly.

    Filters never mutate their input (the caller may still hold the unfiltered update for metrics), and a
    NaN or infinity would defeat every clipping bound, so it is refused rather than passed on.
    """
    out: Update = {}
    for name, value in update.items():
        arr = np.asarray(value)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise UpdateRejected(f"tensor {name!r} has non-numeric dtype {arr.dtype}", code=Reason.BAD_UPDATE)
        arr32 = np.array(arr, dtype=np.float32, copy=True)
        if not np.isfinite(arr32).all():
            raise UpdateRejected(f"tensor {name!r} holds NaN or infinity", code=Reason.NON_FINITE)
        out[name] = arr32
    return out


def flatten(update: Update) -> npt.NDArray[np.float32]:
    """All entries in bundle order, as one vector (zero-dimensional tensors count as one entry)."""
    if not update:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([v.ravel() for v in update.values()])


def unflatten(flat: npt.NDArray[Any], like: Update) -> Update:
    """Split ``flat`` back into ``like``'s names and shapes, as float32."""
    out: Update = {}
    start = 0
    for name, value in like.items():
        end = start + value.size
        out[name] = flat[start:end].astype(np.float32, copy=False).reshape(value.shape)
        start = end
    return out


def share_count(n: int, fraction: float) -> int:
    """``ceil(n * fraction)`` capped at ``n``; rounded first so that ``0.3 * 10`` is 3, not 4."""
    return min(n, math.ceil(round(n * fraction, 9)))
