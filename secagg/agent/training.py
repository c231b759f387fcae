"""Training: one confined worker per admitted job, alive for the whole job.

The agent hands each round's task to the job's :class:`~secagg.agent.worker.TrainingWorker`; the worker
confines itself (:mod:`secagg.agent.sandbox`, invariant 8) before it imports anything of the job, and
stays up between rounds when the script uses the loop form (``for task in client.tasks()``). A worker
that fails costs one round: the next round gets a fresh one under the same confinement.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from secagg.agent.admission import Admitted
from secagg.agent.sandbox import Confinement, plan
from secagg.agent.state import SiteState
from secagg.agent.worker import RunResult, TrainingWorker
from secagg.fsio import atomic_write
from secagg.policy.model import SitePolicy
from secagg.strategy import make_strategy


class Trainer:
    def __init__(
        self, *, site: str, data_dir: Path, state: SiteState, load_policy: Callable[[], SitePolicy]
    ) -> None:
        self.site, self.data_dir, self.state = site, data_dir, state
        self.load_policy = load_policy
        self._workers: dict[str, tuple[Confinement, TrainingWorker]] = {}

    def confinement(self, adm: Admitted, job_id: str) -> Confinement:
        jdir = self.state.job_dir(job_id)
        io_dir, scratch = jdir / "io", jdir / "scratch"
        io_dir.mkdir(exist_ok=True, mode=0o700)
        scratch.mkdir(exist_ok=True, mode=0o700)
        return plan(
            job_root=adm.job.root,
            data_dir=self.data_dir,
            io_dir=io_dir,
            scratch_dir=scratch,
            settings=self.load_policy().sandbox,
        )

    def _worker(self, adm: Admitted, job_id: str) -> TrainingWorker:
        """The job's worker; a new one when the policy's sandbox settings changed since it started."""
        confinement = self.confinement(adm, job_id)
        current = self._workers.get(job_id)
        if current is not None and current[0] == confinement:
            return current[1]
        if current is not None:
            current[1].close()
        jdir = self.state.job_dir(job_id)
        worker = TrainingWorker(
            adm.job.root,
            adm.job.spec.entry,
            jdir / "io",
            jdir / "scratch",
            jdir / "train.log",
            confinement,
        )
        self._workers[job_id] = (confinement, worker)
        return worker

    def run(
        self,
        adm: Admitted,
        job_id: str,
        task_kind: str,
        round_: int,
        global_model: bytes | Path,
        *,
        model: str = "global",
    ) -> RunResult:
        """One task in the job's worker, on ``global_model`` (a safetensors file, or bytes).
        ``model`` names what ``global_model`` is, for an ``evaluate``
        task: ``global`` (the global model), or the site whose local model is evaluated here
        (cross-site evaluation, :mod:`secagg.agent.evaluation`); the script reads it as ``task.model``."""
        task = {
            "task": task_kind,
            "model": model,
            "round": round_,
            "site": self.site,
            "data_dir": str(self.data_dir),
            "params": adm.job.spec.params,
            "strategy": make_strategy(adm.job.spec.strategy).client_config(),
            "dpsgd": next(
                (f.model_dump() for f in adm.decision.effective_privacy if f.name == "dpsgd"), None
            ),
        }
        worker = self._worker(adm, job_id)
        # the record of what the script was given this round (the worker itself gets it over its channel)
        atomic_write(self.state.job_dir(job_id) / "io" / "task.json", json.dumps(task).encode())
        return worker.run(task, global_model, timeout=adm.job.spec.round_timeout * 10)

    def end_job(self, job_id: str) -> None:
        current = self._workers.pop(job_id, None)
        if current is not None:
            current[1].close()

    def close(self) -> None:
        for job_id in list(self._workers):
            self.end_job(job_id)
