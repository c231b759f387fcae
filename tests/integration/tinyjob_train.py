"""A tiny deterministic 'training' script for integration tests (numpy only, starts fast).

The update is a pure function of (site, round), so a test can compute the exact expected FedAvg.
"""

import hashlib
from collections import OrderedDict

import numpy as np

from secagg import client


def delta(site: str, round_: int, shapes: dict) -> "OrderedDict[str, np.ndarray]":
    seed = int.from_bytes(hashlib.sha256(f"{site}/{round_}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    return OrderedDict((k, (rng.standard_normal(s) * 0.05).astype(np.float32)) for k, s in shapes.items())


def main() -> None:
    g = client.receive_numpy()
    n = int((client.data_dir / "n.txt").read_text())
    metrics = {"val_auc": 0.5 + 0.01 * client.round}
    if client.task == "evaluate":
        client.send(metrics=metrics)
        return
    d = delta(client.site, client.round, {k: tuple(v.shape) for k, v in g.items()})
    local = OrderedDict((k, v + d[k]) for k, v in g.items())
    client.send(local, num_samples=n, metrics=metrics)


if __name__ == "__main__":
    main()
