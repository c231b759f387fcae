"""tinyjob_train.py in the loop form: one process serves every round (numpy only, starts fast).

The update is the same pure function of (site, round) as tinyjob_train.py's, so a test can compute the
exact expected FedAvg; the metrics also carry the worker's pid, so a test can see that one process
served every round.
"""

import os
from collections import OrderedDict

from tinyjob_train import delta

from secagg import client


def main() -> None:
    for task in client.tasks():
        g = client.receive_numpy()
        n = int((task.data_dir / "n.txt").read_text())
        metrics = {"val_auc": 0.5 + 0.01 * task.round, "pid": float(os.getpid())}
        if task.task == "evaluate":
            client.send(metrics=metrics)
            continue
        d = delta(task.site, task.round, {k: tuple(v.shape) for k, v in g.items()})
        local = OrderedDict((k, v + d[k]) for k, v in g.items())
        client.send(local, num_samples=n, metrics=metrics)


if __name__ == "__main__":
    main()
