"""Run the job's training entry point once, in a worker process of its own.

Kept for callers that run a single task; the agent itself keeps one
:class:`~secagg.agent.worker.TrainingWorker` per job (:mod:`secagg.agent.training`). The script reads
``global.safetensors`` from its I/O folder and writes ``local.safetensors`` there (``secagg.client``
does this for it); its environment is cleared down to what Python needs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from secagg.agent.worker import _KEEP_ENV, RunResult, TrainingFailed, TrainingWorker

__all__ = ["_KEEP_ENV", "RunResult", "TrainingFailed", "run_entry"]


def run_entry(
    job_root: Path, entry: str, io_dir: Path, *, task: dict[str, Any], timeout: float, log: Path
) -> RunResult:
    """One task in a one-shot worker, unconfined (``confinement=None``): for tests and tools only.
    The model is ``io_dir/global.safetensors`` as the caller wrote it."""
    global_bytes = (io_dir / "global.safetensors").read_bytes()
    with (
        tempfile.TemporaryDirectory(prefix="secagg-scratch-") as scratch,
        TrainingWorker(job_root, entry, io_dir, Path(scratch), log, confinement=None) as worker,
    ):
        return worker.run(task, global_bytes, timeout)
