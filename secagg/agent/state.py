"""A site's durable state: progress per job, the global model it holds, its HE secret context.

Everything is written atomically, so a killed agent restarts from the last round it completed; the
temporary file of a write a kill cut short is removed when the agent starts again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from secagg.fsio import atomic_write, remove_stale_temps


class SiteState:
    def __init__(self, root: Path) -> None:
        # absolute: the training subprocess runs in the job folder and gets paths below this root
        self.root = root.resolve()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._sweep()

    def _sweep(self) -> None:
        """Atomic writes a killed agent cut short (its progress, task record, kept release, global
        model): temporary files nobody reads, removed before this agent writes anything."""
        remove_stale_temps(self.root)
        for job in (self.root / "jobs").glob("*"):
            remove_stale_temps(job)
            remove_stale_temps(job / "io")

    def last_job(self) -> str:
        f = self.root / "last-job"
        return f.read_text().strip() if f.is_file() else ""

    def set_last_job(self, job_id: str) -> None:
        if self.last_job() != job_id:
            atomic_write(self.root / "last-job", job_id.encode())

    def job_dir(self, job_id: str) -> Path:
        d = self.root / "jobs" / job_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    def progress(self, job_id: str) -> dict[str, Any]:
        f = self.job_dir(job_id) / "progress.json"
        return json.loads(f.read_text()) if f.is_file() else {"round": 0, "attempt": 0, "global_round": 0}

    def set_progress(self, job_id: str, **fields: Any) -> None:
        cur = self.progress(job_id)
        cur.update(fields)
        atomic_write(self.job_dir(job_id) / "progress.json", json.dumps(cur).encode())

    def global_path(self, job_id: str, round_: int) -> Path:
        return self.job_dir(job_id) / f"global-{round_}.safetensors"

    def save_global(self, job_id: str, round_: int, data: bytes) -> None:
        atomic_write(self.global_path(job_id, round_), data)
        self.set_progress(job_id, global_round=round_)

    def adopt_global(self, job_id: str, round_: int, path: Path) -> None:
        """A complete model file (spooled as it arrived, on this file system) becomes the round's
        global model, moved (fsynced, renamed) so it is whole or absent, as :meth:`save_global` writes
        it: the model never passes through memory."""
        atomic_write(self.global_path(job_id, round_), source=path)
        self.set_progress(job_id, global_round=round_)
