"""The API a training script uses. A plain PyTorch script changes a few lines::

    from secagg import client

    for task in client.tasks():                           # one task per round, in one process
        model.load_state_dict(client.receive())          # the round's global model
        metrics = {"val_auc": evaluate(model)}            # optional: how good the global model is here
        if task.task == "evaluate":                       # the final round: report only
            client.send(metrics=metrics)
            continue
        train(model, task.data_dir, task.params)         # unchanged training code
        client.send(model.state_dict(), num_samples=n_train, metrics=metrics)

Evaluation is the ``evaluate`` task: it hands over a model (``client.receive()``) and asks only for
metrics (``client.send(metrics=...)``: numbers). It comes after the last round with the final global
model and, in a job with ``evaluation: cross_site``, again with each other site's last local model
(``task.model`` names whose; ``"global"`` for the global one): the same lines above evaluate all of
them, on this site's held-out data. Such metrics leave the site bounded: at most 32, finite, rounded.

``client.tasks()`` blocks until the agent hands over the next round and ends when the job is over, so
the interpreter, the imports and the data set stay loaded for the whole job. The one-round form, the
same body without the loop (module attributes ``client.task``, ``client.round``, ... instead of
``task.``), still works: such a script handles one task and exits, and the agent starts it again for
the next round. Inside the loop the module attributes and functions follow the current task too.
Call ``send`` exactly once per task.

The script runs in the job's training worker, a process the site agent starts and confines before any
job code runs (:mod:`secagg.agent.sandbox`: no network, no file of the agent, resource limits); the
agent owns the aggregator channel, the policy and the protection, and what the script hands to
``send`` is filtered and protected by the agent before it leaves. The model travels by file in the
worker's I/O folder; :mod:`secagg.agent.worker_main` serves the tasks to this module.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from secagg.bundle import BundleSpec, TensorSpec, bundle_header
from secagg.bundlefile import read_bundle
from secagg.reasons import Reason

IO_ENV = "SECAGG_IO_DIR"


class ClientError(RuntimeError):
    """The script was not started by a site agent, or sent something unusable."""


class NotSent(ClientError):
    """The script finished a task (asked for the next one, or ended) without calling ``send``."""


class TrainingRefused(RuntimeError):
    """What the script did cannot be released under the site's policy (e.g. DP-SGD could not account
    for it): the agent declines the round with ``code`` and the message. Defined here, not beside the
    DP-SGD runtime, so that the launcher can catch it without importing torch."""

    code: str = Reason.REFUSED


@dataclass(frozen=True)
class Task:
    """One round's task, as :func:`tasks` yields it."""

    task: str  #: ``"train"`` or ``"evaluate"`` (the final round: report metrics only)
    round: int
    site: str
    data_dir: Path
    params: dict[str, Any]
    #: the model ``receive`` returns: ``"global"``, or in a job with ``evaluation: cross_site`` the
    #: name of the site whose last local model this ``evaluate`` task measures on this site's data
    model: str = "global"

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> Task:
        return cls(
            str(spec["task"]),
            int(spec["round"]),
            str(spec["site"]),
            Path(spec["data_dir"]),
            dict(spec.get("params") or {}),
            str(spec.get("model") or "global"),
        )


class _Driver(Protocol):
    """Where tasks come from in a training worker (:mod:`secagg.agent.worker_main`)."""

    def next_task(self, finished: _Current) -> dict[str, Any] | None:
        """Report ``finished`` (sent) to the agent; block for the next task (None: the job is over)."""
        ...


@dataclass
class _Current:
    spec: dict[str, Any]
    #: what ``send`` handed back (metrics, num_samples, training_spends); None until it is called
    result: dict[str, Any] | None = None
    #: handed to a ``tasks()`` loop already: the loop's next step finishes it
    yielded: bool = False
    #: size of the local.safetensors that send wrote
    local_bytes: int | None = None


#: set by the training worker; None: a single task read from ``task.json`` (``secagg.agent.launch``)
_driver: _Driver | None = None
_current: _Current | None = None
_over = False


def _serve(driver: _Driver, first: dict[str, Any]) -> None:
    """Called by the training worker before it runs the script: tasks come from ``driver``."""
    global _driver
    _driver = driver
    _begin(first)


def _begin(spec: dict[str, Any]) -> None:
    global _current
    _current = _Current(dict(spec))
    _global_params.cache_clear()


def _now() -> _Current:
    """The task being served, which every module attribute and function refers to."""
    if _current is None:
        if _over:
            raise ClientError("there is no current task: the job is over")
        if _driver is not None:
            raise ClientError("there is no current task")
        _begin(json.loads((_io() / "task.json").read_text()))  # one task, read once
    assert _current is not None
    return _current


def _task() -> dict[str, Any]:
    return _now().spec


@lru_cache(maxsize=1)
def _io() -> Path:
    value = os.environ.get(IO_ENV)
    if not value:
        raise ClientError(f"{IO_ENV} is not set: run this script through `secagg agent run`")
    return Path(value)


def tasks() -> Iterator[Task]:
    """The job's tasks, one per round, until the job is over: ``for task in client.tasks(): ...``.

    Each task must be answered with exactly one :func:`send` before the loop moves on; the next task
    is fetched from the agent when the loop asks for it. Without a training worker (a script started
    by ``secagg.agent.launch``) it yields the one task of ``task.json``."""
    global _current, _over
    while True:
        if _over:
            return
        cur = _now()
        if not cur.yielded:
            cur.yielded = True
            yield Task.of(cur.spec)
            continue
        if cur.result is None:
            raise NotSent(
                f"the loop asked for its next task without calling client.send() for round "
                f"{cur.spec.get('round')}"
            )
        nxt = _driver.next_task(cur) if _driver is not None else None
        if nxt is None:
            _current, _over = None, True
            return
        _begin(nxt)


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
    if name == "model":
        return str(_task().get("model") or "global")
    raise AttributeError(name)


class GlobalModel(OrderedDict[str, Any]):
    """The round's global weights. Its own type so that, where the site requires DP-SGD, the module they
    are loaded into is recognised as the model being trained (:mod:`secagg.privacy.dpsgd_runtime`)."""


def receive() -> GlobalModel:
    """The global model of this round as an ordered state_dict of torch tensors."""
    import torch

    # the arrays are fresh and writable (read_bundle): torch shares their memory, no second copy
    return GlobalModel((k, torch.from_numpy(v)) for k, v in receive_numpy().items())


def receive_numpy() -> OrderedDict[str, np.ndarray]:
    """The same model as numpy arrays, for training code that does not use torch; each tensor read
    from the file straight into its array (one copy of the model in this process)."""
    return read_bundle(_io() / "global.safetensors")


def _write_local(path: Path, state: Mapping[str, Any]) -> int:
    """The trained model as a float32 safetensors file (names without Opacus' ``_module.`` prefix, in
    the state's order), written a tensor at a time: no float32 copy of the whole model and no serialised
    bundle in memory beside the model itself. Returns the file's size."""
    tensors: OrderedDict[str, Any] = OrderedDict()
    for k, v in state.items():
        tensors[k.removeprefix("_module.")] = v  # Opacus' GradSampleModule wraps the model
    shapes = [(k, tuple(int(d) for d in v.shape)) for k, v in tensors.items()]
    spec = BundleSpec(tuple(TensorSpec(k, s) for k, s in shapes))
    with path.open("wb") as fh:
        size = fh.write(bundle_header(spec))
        for v in tensors.values():
            arr = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
            size += fh.write(np.ascontiguousarray(arr, dtype="<f4").reshape(-1).data)
    return size


def send(
    state_dict: Mapping[str, Any] | None = None,
    *,
    num_samples: int | None = None,
    metrics: Mapping[str, float] | None = None,
) -> None:
    """Hand the trained model (or, for ``evaluate``, only metrics) back to the agent: once per task."""
    cur = _now()
    if cur.result is not None:
        raise ClientError(
            f"client.send() was already called for this task (round {cur.spec.get('round')}): "
            "send once per task"
        )
    io = _io()
    clean = {k: float(v) for k, v in (metrics or {}).items()}
    if any(not math.isfinite(v) for v in clean.values()):
        raise ClientError("metrics must be finite numbers")
    result: dict[str, Any] = {"metrics": clean}
    if cur.spec["task"] == "train":
        if state_dict is None or num_samples is None or num_samples <= 0:
            raise ClientError("a training task must send a state_dict and a positive num_samples")
        dpsgd = sys.modules.get("secagg.privacy.dpsgd_runtime")
        run = dpsgd.active() if dpsgd is not None else None
        if run is not None:  # the agent runs this script under DP-SGD: what did training spend?
            result["training_spends"] = [asdict(sp) for sp in run.receipt(state_dict)]
        tmp = io / ".local.safetensors.tmp"
        cur.local_bytes = _write_local(tmp, state_dict)
        tmp.replace(io / "local.safetensors")
        result["num_samples"] = int(num_samples)
    if _driver is None:  # secagg.agent.launch: the agent reads result.json
        tmp = io / ".result.json.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(io / "result.json")
    cur.result = result


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
