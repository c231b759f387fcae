"""Server-side federated optimisation: FedAvg, FedProx, FedAvgM, FedAdagrad, FedAdam, FedYogi.

Pure math on flat float64 vectors, no I/O. A round is::

    strategy = make_strategy({"name": "fedadam", "eta": 0.01})
    state = strategy.init_state(global_vec)               # once per job
    global_vec, state = strategy.apply(global_vec, avg_update, state)   # every round
    blob = state.to_bytes()                               # keep durably; StrategyState.from_bytes to resume

``avg_update`` is the weighted average of the sites' (local − global) updates. Sites train with
``loss + proximal_term(model, global_params, mu)`` when ``client_config()`` carries ``mu``.

``proximal_term`` (torch) is imported on first use: the aggregator and the site agent import this
package and must not pay torch's import (tens of seconds on a loaded machine, hundreds of MiB): a
restarted agent was too slow to rejoin its round (RELIABILITY.md F4, F5).
"""

from typing import Any

from secagg.strategy.base import Strategy
from secagg.strategy.fedavg import FedAvg, FedProx
from secagg.strategy.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from secagg.strategy.spec import STRATEGIES, StrategySpec, make_strategy, parse_spec
from secagg.strategy.state import StrategyState
from secagg.strategy.vectors import Layout, TensorEntry, flatten, layout_of, unflatten

__all__ = [
    "STRATEGIES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "Layout",
    "Strategy",
    "StrategySpec",
    "StrategyState",
    "TensorEntry",
    "flatten",
    "layout_of",
    "make_strategy",
    "parse_spec",
    "proximal_term",
    "unflatten",
]


def __getattr__(name: str) -> Any:
    if name == "proximal_term":
        from secagg.strategy.proximal import proximal_term

        return proximal_term
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
