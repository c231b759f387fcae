"""The demo's MLP as a class, for frameworks that build the initial model from a class path.

``DemoMLP()`` has exactly the state_dict of the demo's ``make_model()`` (same layers, names and the
same seed-0 initial weights; a test checks it).
"""

from __future__ import annotations

import torch

FEATURES = 30


class DemoMLP(torch.nn.Sequential):
    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
