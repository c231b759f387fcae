"""Server optimizers from Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2,
and server momentum (FedAvgM, Hsu et al. 2019).

The average update Δ is treated as a pseudo-gradient step direction (it points *towards* the sites'
models, so the server adds it):

    m_t = β1·m_{t−1} + (1 − β1)·Δ_t
    FedAdagrad: v_t = v_{t−1} + Δ_t²
    FedAdam:    v_t = β2·v_{t−1} + (1 − β2)·Δ_t²
    FedYogi:    v_t = v_{t−1} − (1 − β2)·Δ_t²·sign(v_{t−1} − Δ_t²)
    x_{t+1} = x_t + η·m_t / (√v_t + τ)

Initial state: m_{−1} = 0 and v_{−1} = τ², the smallest value the paper's analysis allows
(v_{−1} ≥ τ²). Flower starts v at 0 instead; with τ² the first step of every optimizer is bounded
by η·(1 − β1)·|Δ|/(√(τ² + …) + τ) and Yogi's v stays strictly positive. No bias correction, as in
the paper.

Defaults are the paper's: β1 = 0.9, β2 = 0.99 for FedAdam/FedYogi; η and τ from the middle of the
best-performing region of its grids (η = 10^−2, τ = 10^−3 for Adam/Yogi; η = 10^−1, τ = 10^−2 for
Adagrad, which has no decay and so wants a larger step). FedAdagrad defaults to β1 = 0 (classic
Adagrad, as Flower); set beta_1 to add momentum. They are starting points: tune η per task.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from secagg.strategy.base import Strategy, check_param


class FedAvgM(Strategy):
    """Server momentum: v ← β·v + Δ; x ← x + η·v.

    Default η = 0.1 with momentum β = 0.9: the steady-state step η/(1 − β) = 1 equals FedAvg's, so
    switching from FedAvg does not change the effective learning rate, only smooths it.
    """

    name: ClassVar[str] = "fedavgm"
    defaults: ClassVar[Mapping[str, float]] = {"eta": 0.1, "momentum": 0.9}
    buffer_names: ClassVar[tuple[str, ...]] = ("velocity",)

    def __init__(self, eta: float = 0.1, momentum: float = 0.9) -> None:
        self.eta = check_param("eta", eta, low=0.0, low_open=True)
        self.momentum = check_param("momentum", momentum, low=0.0, high=1.0)

    def _step(
        self, x: np.ndarray, delta: np.ndarray, buffers: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        v = self.momentum * buffers["velocity"] + delta
        return x + self.eta * v, {"velocity": v}


class _FedOpt(Strategy):
    """Shared first moment and model step; subclasses define the second-moment rule."""

    buffer_names: ClassVar[tuple[str, ...]] = ("m", "v")

    eta: float
    beta_1: float
    tau: float

    def _initial_buffer(self, name: str, dim: int) -> np.ndarray:
        if name == "v":
            return np.full(dim, self.tau * self.tau, dtype=np.float64)
        return np.zeros(dim, dtype=np.float64)

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _step(
        self, x: np.ndarray, delta: np.ndarray, buffers: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        m = self.beta_1 * buffers["m"] + (1.0 - self.beta_1) * delta
        v = self._second_moment(buffers["v"], delta * delta)
        new_x = x + self.eta * m / (np.sqrt(v) + self.tau)
        return new_x, {"m": m, "v": v}


class FedAdagrad(_FedOpt):
    name: ClassVar[str] = "fedadagrad"
    defaults: ClassVar[Mapping[str, float]] = {"eta": 0.1, "beta_1": 0.0, "tau": 0.01}

    def __init__(self, eta: float = 0.1, beta_1: float = 0.0, tau: float = 0.01) -> None:
        self.eta = check_param("eta", eta, low=0.0, low_open=True)
        self.beta_1 = check_param("beta_1", beta_1, low=0.0, high=1.0)
        self.tau = check_param("tau", tau, low=0.0, low_open=True)

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v + delta_sq


class FedAdam(_FedOpt):
    name: ClassVar[str] = "fedadam"
    defaults: ClassVar[Mapping[str, float]] = {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001}

    def __init__(
        self, eta: float = 0.01, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 0.001
    ) -> None:
        self.eta = check_param("eta", eta, low=0.0, low_open=True)
        self.beta_1 = check_param("beta_1", beta_1, low=0.0, high=1.0)
        self.beta_2 = check_param("beta_2", beta_2, low=0.0, high=1.0)
        self.tau = check_param("tau", tau, low=0.0, low_open=True)

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1.0 - self.beta_2) * delta_sq


class FedYogi(FedAdam):
    """Like FedAdam, but v moves additively towards Δ², so it cannot forget large past updates fast."""

    name: ClassVar[str] = "fedyogi"

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.beta_2) * delta_sq * np.sign(v - delta_sq)
