"""The harness's job: numpy only (no torch at the sites), an update that is a pure function of
(site, round), so a fault-free run's final model is known and any run can be compared with it."""

from __future__ import annotations

import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import yaml

from secagg.bundle import to_safetensors

#: the job's training script (loop form: one worker serves every round). ``params.sleep`` seconds of
#: "training" give the harness a window to kill a process while the sites train; ``params.slow_site``
#: trains ``params.slow_s`` seconds longer (a window between the others' readies and its own).
TRAIN_PY = textwrap.dedent(
    """\
    import hashlib
    import time
    from collections import OrderedDict

    import numpy as np

    from secagg import client


    def delta(site, round_, shapes):
        seed = int.from_bytes(hashlib.sha256(f"{site}/{round_}".encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        return OrderedDict((k, (rng.standard_normal(s) * 0.05).astype(np.float32)) for k, s in shapes.items())


    def main():
        for task in client.tasks():
            g = client.receive_numpy()
            n = int((task.data_dir / "n.txt").read_text())
            metrics = {"val_auc": 0.5 + 0.01 * task.round}
            if task.task == "evaluate":
                # which model was measured, and where (the cross-site matrix is checked cell by cell)
                metrics["weight_sum"] = float(sum(np.asarray(v, np.float64).sum() for v in g.values()))
                metrics["evaluator_n"] = float(n)
                client.send(metrics=metrics)
                continue
            extra = float(task.params.get("slow_s", 0)) if task.site == task.params.get("slow_site") else 0.0
            time.sleep(float(task.params.get("sleep", 0)) + extra)
            d = delta(task.site, task.round, {k: tuple(v.shape) for k, v in g.items()})
            client.send(OrderedDict((k, v + d[k]) for k, v in g.items()), num_samples=n, metrics=metrics)


    if __name__ == "__main__":
        main()
    """
)

INIT = OrderedDict(
    [
        ("layer.weight", np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6)),
        ("layer.bias", np.zeros(4, dtype=np.float32)),
        ("head", np.full((3,), 0.5, dtype=np.float32)),
    ]
)


def samples(site: str) -> int:
    """Each site's sample count: unequal, so the weights matter."""
    return 50 + 25 * (int(site.rpartition("-")[2]) % 7)


def model(big: int = 0) -> OrderedDict[str, np.ndarray]:
    """The job's initial model: :data:`INIT`, with ``big`` more float32 parameters (0.5 each) in a
    tensor ``big`` where a run needs a large model."""
    out = OrderedDict(INIT)
    if big:
        out["big"] = np.full((big,), 0.5, dtype=np.float32)
    return out


def write_job(
    folder: Path,
    *,
    mode: str,
    rounds: int,
    min_sites: int,
    round_timeout: float,
    sleep: float,
    evaluation: str = "global",
    big: int = 0,
    slow_site: str | None = None,
    slow_s: float = 0.0,
) -> Path:
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(TRAIN_PY)
    (folder / "model.safetensors").write_bytes(to_safetensors(model(big)))
    spec = {
        "name": "chaos",
        "rounds": rounds,
        "min_sites": min_sites,
        "mode": mode,
        "model": "model.safetensors",
        "entry": "train.py",
        "round_timeout": round_timeout,
        "params": {"sleep": sleep, **({"slow_site": slow_site, "slow_s": slow_s} if slow_site else {})},
        **({"evaluation": evaluation} if evaluation != "global" else {}),
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def write_data(folder: Path, site: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "n.txt").write_text(str(samples(site)))
    return folder


def _delta(site: str, round_: int, like: OrderedDict[str, np.ndarray] = INIT) -> OrderedDict[str, np.ndarray]:
    """The update TRAIN_PY makes at ``site`` in ``round_`` for a model shaped ``like``."""
    import hashlib

    seed = int.from_bytes(hashlib.sha256(f"{site}/{round_}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    return OrderedDict((k, (rng.standard_normal(v.shape) * 0.05).astype(np.float32)) for k, v in like.items())


def expected_final(
    rounds: int, sites: list[str], participants: dict[int, list[str]] | None = None, big: int = 0
) -> OrderedDict[str, np.ndarray]:
    """FedAvg of the pure updates in float64 (round r over ``participants[r]``, default every site):
    what every mode should come within its bound of. With ``big``, the large tensor too (TRAIN_PY
    draws it after the others, so theirs do not change)."""
    like = model(big)
    g = OrderedDict((k, v.astype(np.float64)) for k, v in like.items())
    for r in range(1, rounds + 1):
        these = (participants or {}).get(r, sites)
        total = sum(samples(s) for s in these)
        for s in these:
            d = _delta(s, r, like)
            for k in g:
                g[k] += samples(s) / total * d[k].astype(np.float64)
    return g
