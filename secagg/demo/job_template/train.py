"""Breast-cancer classifier: a plain PyTorch script; the secagg lines are marked ``# secagg``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

FEATURES = 30


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def load(data_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = np.load(data_dir / f"{split}.npz")
    return torch.from_numpy(d["x"]).float(), torch.from_numpy(d["y"]).float()


def auc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        scores = model(x).squeeze(1).numpy()
    labels = y.numpy()
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float("nan")


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict, extra_loss=None) -> None:
    torch.manual_seed(int(params.get("seed", 0)))
    opt = torch.optim.SGD(model.parameters(), lr=float(params.get("lr", 0.05)))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loader = DataLoader(TensorDataset(x, y), batch_size=int(params.get("batch_size", 32)), shuffle=True)
    model.train()
    for _ in range(int(params.get("epochs", 2))):
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb).squeeze(1), yb)
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            loss.backward()
            opt.step()


def main() -> None:
    from secagg import client  # secagg

    torch.set_num_threads(1)
    for task in client.tasks():  # secagg: one task per round, in one process for the whole job
        model = make_model()
        model.load_state_dict(client.receive())  # secagg
        xv, yv = load(task.data_dir, "val")
        metrics = {"val_auc": auc(model, xv, yv), "n_val": float(len(yv))}
        metrics = {k: v for k, v in metrics.items() if v == v}  # drop NaN (a one-class split)
        if task.task == "evaluate":  # secagg: the final global model, or another site's (task.model)
            client.send(metrics=metrics)  # secagg
            continue
        x, y = load(task.data_dir, "train")
        train(model, x, y, task.params, extra_loss=client.proximal_term)  # secagg: FedProx term
        client.send(model.state_dict(), num_samples=len(y), metrics=metrics)  # secagg


if __name__ == "__main__":
    main()
