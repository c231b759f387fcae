"""Starting jobs for ``secagg job init DIR [--template NAME]``: a training script with the client API
lines marked, a job.yaml, and the initial ``model.safetensors`` made from the script's own model.

Each template is a folder here holding ``train.py`` with a ``make_model()`` (a torch module, or a dict
of numpy arrays) and a ``main()`` in the loop form. Every template reads the same data layout, so
:func:`write_example_data` serves them all: ``SITE/train.npz`` and ``SITE/val.npz`` with ``x``
(float32, ``[n, FEATURES]``) and ``y`` (0 or 1).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from secagg.errors import ConfigError

HERE = Path(__file__).parent
#: name -> what it is (``--template`` choices)
TEMPLATES = {
    "tabular": "a small PyTorch classifier (torch)",
    "logreg": "logistic regression in plain numpy (no torch)",
}
DEFAULT = "tabular"

JOB_YAML = """\
# What this job asks of the federation; every site's policy checks it before anything runs.
name: {name}
rounds: 3
min_sites: 2
mode: he              # he | mask | tee | plain: how updates are protected (a site's policy must allow it)
model: model.safetensors   # the initial global model (safetensors, made from train.py's make_model)
entry: train.py
round_timeout: 120    # seconds a site may take for a round
strategy: fedavg      # fedavg | fedprox | fedavgm | fedadagrad | fedadam | fedyogi
params:               # handed to train.py as task.params
  lr: 0.5
  epochs: 5
  batch_size: 32
  seed: 0
"""


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("secagg_job_template_train", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_state(train_py: Path) -> dict[str, np.ndarray]:
    """The initial weights of a script's ``make_model()``, as float32 arrays in state_dict order."""
    model = _load(train_py).make_model()
    state = model.state_dict() if hasattr(model, "state_dict") else model
    return {
        k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)).astype(np.float32)
        for k, v in state.items()
    }


def job_name(folder: Path) -> str:
    """A job name (job.yaml's pattern) from the folder's name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-._")[:128]
    return name if name and name[0].isalnum() else "my-job"


def init_job(folder: Path, template: str = DEFAULT) -> list[Path]:
    """Write the starting job into ``folder`` (new or empty); the files written."""
    from secagg.bundle import to_safetensors

    if template not in TEMPLATES:
        raise ConfigError(f"no job template {template!r} (templates: {', '.join(TEMPLATES)})")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"{folder} exists and is not an empty folder; name a new one")
    folder.mkdir(parents=True, exist_ok=True)
    train = folder / "train.py"
    shutil.copy(HERE / template / "train.py", train)
    (folder / "job.yaml").write_text(JOB_YAML.format(name=job_name(folder)))
    model = folder / "model.safetensors"
    model.write_bytes(to_safetensors(model_state(train)))
    return [train, folder / "job.yaml", model]


def write_example_data(root: Path, n_sites: int = 3, features: int = 8, seed: int = 0) -> list[Path]:
    """Synthetic data in the templates' layout, one folder per site (``site-1`` ...): a shared linear
    rule with noise, each site's features shifted differently (sites differ, as real ones do)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=features)
    out = []
    for i in range(1, n_sites + 1):
        folder = root / f"site-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        shift = rng.normal(scale=0.5, size=features)
        for split, n in (("train", 160), ("val", 60)):
            x = rng.normal(size=(n, features)) + shift
            y = (x @ w + rng.normal(scale=0.5, size=n) > shift @ w).astype(np.float32)
            np.savez(folder / f"{split}.npz", x=x.astype(np.float32), y=y)
        out.append(folder)
    return out
