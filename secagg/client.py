"""The API a training script uses. A plain PyTorch script changes a few lines::

    from secagg import client

    model.load_state_dict(client.receive())          # the round's global model
    metrics = {"val_auc": evaluate(model)}            # optional: how good the global model is here
    if client.task == "evaluate":                     # the final round: report only
        client.send(metrics=metrics); raise SystemExit
    train(model, client.data_dir, client.params)     # unchanged training code
    client.send(model.state_dict(), num_samples=n_train, metrics=metrics)

The script runs in a subprocess of the site agent, which owns the aggregator channel, the policy and
the protection: what the script hands to ``send`` is filtered and protected by the agent before it
leaves. The subprocess gets a reduced environment but no OS-level sandbox: deploy the agent under the
hardened systemd unit or container (deploy/) so the job code cannot reach the network or the kit.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from secagg.bundle import from_safetensors, to_safetensors

IO_ENV = "SECAGG_IO_DIR"


class ClientError(RuntimeError):
    """The script was not started by a site agent, or sent something unusable."""


class TrainingRefused(RuntimeError):
    """What the script did cannot be released under the site's policy (e.g. DP-SGD could not account
    for it): the agent declines the round with ``code`` and the message. Defined here, not beside the
    DP-SGD runtime, so that the launcher can catch it without importing torch."""

    code = "refused"


@lru_cache(maxsize=1)
def _io() -> Path:
    value = os.environ.get(IO_ENV)
    if not value:
        raise ClientError(f"{IO_ENV} is not set: run this script through `secagg agent run`")
    return Path(value)


@lru_cache(maxsize=1)
def _task() -> dict[str, Any]:
    task: dict[str, Any] = json.loads((_io() / "task.json").read_text())
    return task


def __getattr__(name: str) -> Any:
    if name == "task":
        return _task()["task"]
    if name == "round":
        return int(_task()["round"])
    if name == "data_dir":
        return Path(_task()["data_dir"])
    if name == "params":
        return dict(_task().get("params", {}))
    if name == "site":
        return str(_task()["site"])
    raise AttributeError(name)


class GlobalModel(OrderedDict[str, Any]):
    """The round's global weights. Its own type so that, where the site requires DP-SGD, the module they
    are loaded into is recognised as the model being trained (:mod:`secagg.privacy.dpsgd_runtime`)."""


def receive() -> GlobalModel:
    """The global model of this round as an ordered state_dict of torch tensors."""
    import torch

    return GlobalModel((k, torch.from_numpy(np.array(v))) for k, v in receive_numpy().items())


def receive_numpy() -> OrderedDict[str, np.ndarray]:
    """The same model as numpy arrays, for training code that does not use torch."""
    return from_safetensors((_io() / "global.safetensors").read_bytes())


def _to_numpy(state: Mapping[str, Any]) -> OrderedDict[str, np.ndarray]:
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for k, v in state.items():
        k = k.removeprefix("_module.")  # Opacus' GradSampleModule wraps the model
        arr = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        out[k] = arr.astype(np.float32)
    return out


def send(
    state_dict: Mapping[str, Any] | None = None,
    *,
    num_samples: int | None = None,
    metrics: Mapping[str, float] | None = None,
) -> None:
    """Hand the trained model (or, for ``evaluate``, only metrics) back to the agent."""
    io = _io()
    clean = {k: float(v) for k, v in (metrics or {}).items()}
    if any(not math.isfinite(v) for v in clean.values()):
        raise ClientError("metrics must be finite numbers")
    result: dict[str, Any] = {"metrics": clean}
    if _task()["task"] == "train":
        if state_dict is None or num_samples is None or num_samples <= 0:
            raise ClientError("a training task must send a state_dict and a positive num_samples")
        dpsgd = sys.modules.get("secagg.privacy.dpsgd_runtime")
        run = dpsgd.active() if dpsgd is not None else None
        if run is not None:  # the agent runs this script under DP-SGD: what did training spend?
            result["training_spends"] = [asdict(sp) for sp in run.receipt(state_dict)]
        bundle = _to_numpy(state_dict)
        tmp = io / ".local.safetensors.tmp"
        tmp.write_bytes(to_safetensors(bundle))
        tmp.replace(io / "local.safetensors")
        result["num_samples"] = int(num_samples)
    tmp = io / ".result.json.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(io / "result.json")


def proximal_term(model: Any) -> Any:
    """FedProx: (mu/2) * ||w - w_global||^2, with mu from the job; zero for other strategies."""
    import torch

    mu = float(_task().get("strategy", {}).get("mu", 0.0))
    if mu == 0.0:
        return torch.zeros(())
    global_state = _global_params()
    total = torch.zeros(())
    for name, param in model.named_parameters():
        if name in global_state:
            total = total + ((param - global_state[name]) ** 2).sum()
    return 0.5 * mu * total


@lru_cache(maxsize=1)
def _global_params() -> dict[str, Any]:
    return dict(receive())
