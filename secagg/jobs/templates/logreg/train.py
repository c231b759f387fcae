"""A starting job without a deep-learning framework: logistic regression in numpy, trained federated.

Replace the model, the data loading and the training with your own; the lines marked ``# secagg`` are
the client API and stay. The initial model (the file job.yaml names) holds the arrays ``make_model``
returns; after changing it, remake the file:
``safetensors.numpy.save_file(make_model(), "model.safetensors")``.

Data: each site's folder holds ``train.npz`` and ``val.npz``, each with ``x`` (float32, ``[n, FEATURES]``)
and ``y`` (0 or 1, ``[n]``). Try it: ``secagg simulate . --data-root DATA --sites 2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FEATURES = 8


def make_model() -> dict[str, np.ndarray]:
    return {"weight": np.zeros(FEATURES, np.float32), "bias": np.zeros(1, np.float32)}


def load(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(data_dir / f"{split}.npz")
    return d["x"].astype(np.float64), d["y"].astype(np.float64)


def _prob(model: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x @ model["weight"] + model["bias"][0])))


def evaluate(model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p = np.clip(_prob(model, x), 1e-7, 1 - 1e-7)
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    return {"val_loss": float(loss), "val_accuracy": float(np.mean((p > 0.5) == (y > 0.5)))}


def train(
    model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, params: dict[str, Any]
) -> dict[str, np.ndarray]:
    w, b = model["weight"].astype(np.float64), float(model["bias"][0])
    lr = float(params.get("lr", 0.1))
    for _ in range(int(params.get("epochs", 2)) * 10):  # full-batch gradient steps
        err = 1.0 / (1.0 + np.exp(-(x @ w + b))) - y
        w -= lr * (x.T @ err) / len(y)
        b -= lr * float(err.mean())
    return {"weight": w.astype(np.float32), "bias": np.array([b], np.float32)}


def main() -> None:
    from secagg import client  # secagg: the client API

    for task in client.tasks():  # secagg: one task per round, in one process for the whole job
        model = dict(client.receive_numpy())  # secagg: this round's global model, as numpy arrays
        xv, yv = load(task.data_dir, "val")
        metrics = evaluate(model, xv, yv)  # how good the global model is on this site's data
        if task.task == "evaluate":  # secagg: after the last round, report metrics only
            client.send(metrics=metrics)  # secagg
            continue
        x, y = load(task.data_dir, "train")
        model = train(model, x, y, task.params)
        client.send(model, num_samples=len(y), metrics=metrics)  # secagg: the update


if __name__ == "__main__":
    main()
