"""tinyjob_train with the job's ``params.salt`` in the seed: two jobs on one site train different
updates, so a round of one job counted in the other changes that job's result."""

import hashlib
from collections import OrderedDict

import numpy as np

from secagg import client


def delta(salt: str, site: str, round_: int, shapes: dict) -> "OrderedDict[str, np.ndarray]":
    seed = int.from_bytes(hashlib.sha256(f"{salt}/{site}/{round_}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    return OrderedDict((k, (rng.standard_normal(s) * 0.05).astype(np.float32)) for k, s in shapes.items())


def main() -> None:
    g = client.receive_numpy()
    n = int((client.data_dir / "n.txt").read_text())
    if client.task == "evaluate":
        client.send(metrics={"val_auc": 0.5})
        return
    d = delta(
        str(client.params["salt"]), client.site, client.round, {k: tuple(v.shape) for k, v in g.items()}
    )
    local = OrderedDict((k, v + d[k]) for k, v in g.items())
    client.send(local, num_samples=n, metrics={"val_auc": 0.5 + 0.01 * client.round})


if __name__ == "__main__":
    main()
