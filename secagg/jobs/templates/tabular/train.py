"""A starting job: a small PyTorch classifier on tabular data, trained federated with secagg.

Replace the model, the data loading and the training with your own; the lines marked ``# secagg`` are
the client API and stay. After changing ``make_model``, remake the initial model (the file job.yaml
names) from it: ``safetensors.torch.save_file(make_model().state_dict(), "model.safetensors")``.

Data: each site's folder holds ``train.npz`` and ``val.npz``, each with ``x`` (float32, ``[n, FEATURES]``)
and ``y`` (0 or 1, ``[n]``). Try it: ``secagg simulate . --data-root DATA --sites 2``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

FEATURES = 8


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)  # every site and the initial model.safetensors start from the same weights
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


def load(data_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = np.load(data_dir / f"{split}.npz")
    return torch.from_numpy(d["x"]).float(), torch.from_numpy(d["y"]).float()


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        logits = model(x).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        accuracy = ((logits > 0).float() == y).float().mean()
    return {"val_loss": float(loss), "val_accuracy": float(accuracy)}


def train(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    params: dict[str, Any],
    extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None,
) -> None:
    torch.manual_seed(int(params.get("seed", 0)))
    opt = torch.optim.SGD(model.parameters(), lr=float(params.get("lr", 0.1)))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batch = int(params.get("batch_size", 32))
    model.train()
    for _ in range(int(params.get("epochs", 2))):
        order = torch.randperm(len(y))
        for i in range(0, len(y), batch):
            idx = order[i : i + batch]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]).squeeze(1), y[idx])
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            loss.backward()
            opt.step()


def main() -> None:
    from secagg import client  # secagg: the client API

    torch.set_num_threads(1)
    for task in client.tasks():  # secagg: one task per round, in one process for the whole job
        model = make_model()
        model.load_state_dict(client.receive())  # secagg: this round's global model
        xv, yv = load(task.data_dir, "val")
        metrics = evaluate(model, xv, yv)  # how good the global model is on this site's data
        if task.task == "evaluate":  # secagg: after the last round, report metrics only
            client.send(metrics=metrics)  # secagg
            continue
        x, y = load(task.data_dir, "train")
        train(model, x, y, task.params, extra_loss=client.proximal_term)  # secagg: FedProx term (0 otherwise)
        client.send(model.state_dict(), num_samples=len(y), metrics=metrics)  # secagg: the update


if __name__ == "__main__":
    main()
