"""The strategy hook set, after Flower's ``Strategy`` but cut down to what secure aggregation allows.

The aggregator never sees a single site's update, only (in ``he``/``mask`` modes, not even that)
their weighted average Δ = Σ wᵢ (localᵢ − global). So a strategy here is the server step only:
``apply(global, Δ, state)``. It is pure and deterministic: it uses only element-wise IEEE-754
operations (add, multiply, divide, sqrt, sign), each correctly rounded, with no reductions, no
threads and no fused multiply-add, so every site that applies the same step to the same inputs gets
bit-identical bytes, on any platform numpy supports.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from secagg.errors import ConfigError, UpdateRejected
from secagg.reasons import Reason
from secagg.strategy.state import StrategyState


def check_vector(vec: np.ndarray, what: str) -> np.ndarray:
    """A read-only float64 1-D view/copy of ``vec``, refusing NaN/inf (they would poison every site)."""
    arr = np.asarray(vec)
    if arr.ndim != 1:
        raise UpdateRejected(f"{what} must be a flat vector, got shape {arr.shape}", code=Reason.BAD_SHAPE)
    if arr.dtype != np.float64:
        if not np.issubdtype(arr.dtype, np.floating):
            raise UpdateRejected(f"{what} must be a float vector, got {arr.dtype}", code=Reason.DTYPE)
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise UpdateRejected(f"{what} holds NaN or infinity", code=Reason.NON_FINITE)
    return arr


def check_param(
    name: str, value: float, *, low: float, high: float | None = None, low_open: bool = False
) -> float:
    """One hyper-parameter against its range; ConfigError names the parameter and the range."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    bad_low = v <= low if low_open else v < low
    bad_high = high is not None and v >= high
    if bad_low or bad_high:
        lo = f"({low}" if low_open else f"[{low}"
        hi = f"{high})" if high is not None else "inf)"
        raise ConfigError(f"{name} must be in {lo}, {hi}, got {v}")
    return v


class Strategy(ABC):
    """Server update rule: the new global model from the old one and the sites' average update."""

    #: the name used in job configs and in :class:`StrategySpec`
    name: ClassVar[str]
    #: paper defaults for every hyper-parameter this strategy takes (and only those)
    defaults: ClassVar[Mapping[str, float]] = {}
    #: names of the per-coordinate buffers the state carries between rounds
    buffer_names: ClassVar[tuple[str, ...]] = ()

    def params(self) -> dict[str, float]:
        """The resolved hyper-parameters; recorded in the state so a resume cannot change them."""
        return {k: float(getattr(self, k)) for k in self.defaults}

    def client_config(self) -> dict[str, object]:
        """What sites need to train under this strategy (FedProx adds ``mu``)."""
        return {"strategy": self.name}

    def init_state(self, global_vec: np.ndarray) -> StrategyState:
        x = check_vector(global_vec, "global model")
        return StrategyState(
            strategy=self.name,
            step=0,
            dim=x.shape[0],
            params=self.params(),
            buffers={n: self._initial_buffer(n, x.shape[0]) for n in self.buffer_names},
        )

    def apply(
        self, global_vec: np.ndarray, avg_update: np.ndarray, state: StrategyState
    ) -> tuple[np.ndarray, StrategyState]:
        """One server round. Inputs are never modified; the old state stays valid (and resumable)."""
        x = check_vector(global_vec, "global model")
        self.check_state(state.strategy, dict(state.params), state.dim, set(state.buffers), x.shape[0])
        new_x, buffers = self.step_window(x, avg_update, state.buffers)
        new_state = StrategyState(
            strategy=self.name, step=state.step + 1, dim=state.dim, params=self.params(), buffers=buffers
        )
        return new_x, new_state

    def step_window(
        self, global_vec: np.ndarray, avg_update: np.ndarray, buffers: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The server step on one window of the vectors (the same range of each): new model values and
        new buffer values, fresh arrays. Every rule is element-wise, so stepping a vector a window at a
        time gives the bits :meth:`apply` gives for the whole of it; that is how the aggregator steps
        a model it never holds (:mod:`secagg.aggregator.server_step`). Refuses NaN or infinity in, or
        out, as :meth:`apply` does."""
        x = check_vector(global_vec, "global model")
        delta = check_vector(avg_update, "average update")
        if delta.shape != x.shape:
            raise UpdateRejected(
                f"average update has {delta.shape[0]} values, the global model {x.shape[0]}",
                code=Reason.BAD_SHAPE,
            )
        with np.errstate(over="ignore", invalid="ignore"):  # reported below as one clear error
            new_x, new_buffers = self._step(x, delta, buffers)
        if not np.all(np.isfinite(new_x)) or not all(np.all(np.isfinite(b)) for b in new_buffers.values()):
            raise UpdateRejected(f"{self.name} step produced NaN or infinity", code=Reason.NON_FINITE)
        return new_x, new_buffers

    def check_state(
        self, strategy: str, params: Mapping[str, float], dim: int, buffers: set[str], model_dim: int
    ) -> None:
        """Refuse (``ConfigError``) a state of another strategy, other parameters, another model size
        or other buffers: resuming from it would silently change the trajectory."""
        if strategy != self.name:
            raise ConfigError(f"state belongs to strategy {strategy!r}, not {self.name!r}")
        if dict(params) != self.params():
            raise ConfigError(
                f"state was made with {self.name} parameters {dict(params)}, "
                f"this strategy has {self.params()}: resuming would change the trajectory"
            )
        if dim != model_dim:
            raise ConfigError(f"state is for a model of {dim} values, the global model has {model_dim}")
        if buffers != set(self.buffer_names):
            raise ConfigError(
                f"state buffers {sorted(buffers)} do not match {self.name}'s {sorted(self.buffer_names)}"
            )

    def initial_buffer(self, name: str, n: int) -> np.ndarray:
        """``n`` values of buffer ``name`` as a job's first round starts it (constant per element)."""
        return self._initial_buffer(name, n)

    def _initial_buffer(self, name: str, dim: int) -> np.ndarray:
        return np.zeros(dim, dtype=np.float64)

    @abstractmethod
    def _step(
        self, x: np.ndarray, delta: np.ndarray, buffers: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The update rule proper: new model and new buffers (fresh arrays, never the inputs)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"
