"""FedAvg (McMahan et al., AISTATS 2017) and FedProx (Li et al., MLSys 2020): the same server step.

FedProx differs only at the sites, whose local objective gains (mu/2)·||w − w_global||² (see
:mod:`secagg.strategy.proximal`); the server still adds the average update. So ``FedProx`` is
``FedAvg`` plus ``mu`` in :meth:`client_config`, and it records ``mu`` in its state so a resume
with a different ``mu`` is refused like any other hyper-parameter change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from secagg.strategy.base import Strategy, check_param


class FedAvg(Strategy):
    """x ← x + Δ: the weighted average of the sites' models, expressed as a step."""

    name: ClassVar[str] = "fedavg"

    def _step(
        self, x: np.ndarray, delta: np.ndarray, buffers: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return x + delta, {}


class FedProx(FedAvg):
    """FedAvg at the server; sites add the proximal term with coefficient ``mu`` >= 0.

    Default mu = 0.01: the middle of the grid {0.001, 0.01, 0.1, 1} Li et al. tune over; mu = 0
    is plain FedAvg local training.
    """

    name: ClassVar[str] = "fedprox"
    defaults: ClassVar[Mapping[str, float]] = {"mu": 0.01}

    def __init__(self, mu: float = 0.01) -> None:
        self.mu = check_param("mu", mu, low=0.0)

    def client_config(self) -> dict[str, object]:
        return {"strategy": self.name, "mu": self.mu}
