"""Run the job's training entry point in a subprocess, with only its input folder and the data.

The script never sees the kit, the HE key or the network channel: it reads ``global.safetensors`` and
``task.json`` from its I/O folder and writes ``local.safetensors`` and ``result.json`` there
(``secagg.client`` does this for it). Its environment is cleared down to what Python needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secagg.agent.launch import REFUSAL_FILE, REFUSED
from secagg.bundle import from_safetensors
from secagg.client import IO_ENV
from secagg.errors import PolicyRefusal, SecaggError

_KEEP_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "PYTHONHASHSEED",
)


class TrainingFailed(SecaggError):
    code = "training_failed"


@dataclass(frozen=True)
class RunResult:
    local: dict[str, Any] | None
    num_samples: int | None
    metrics: dict[str, float]
    #: what DP-SGD inside training spent, as the script's Opacus accountant reported it
    training_spends: tuple[dict[str, Any], ...] = ()


def run_entry(
    job_root: Path, entry: str, io_dir: Path, *, task: dict[str, Any], timeout: float, log: Path
) -> RunResult:
    io_dir.mkdir(parents=True, exist_ok=True)
    (io_dir / "task.json").write_text(json.dumps(task))
    for stale in ("local.safetensors", "result.json", REFUSAL_FILE):
        (io_dir / stale).unlink(missing_ok=True)
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")
    env[IO_ENV] = str(io_dir)
    # the script imports secagg.client: make this installation importable without the agent's env
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    script = (job_root / entry).resolve()
    if job_root.resolve() not in script.parents:
        raise TrainingFailed(f"entry point {entry} is outside the job package")
    with log.open("ab") as out:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "secagg.agent.launch", str(script)],
                cwd=job_root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TrainingFailed(f"training script ran past {timeout:.0f} s") from None
    refusal = io_dir / REFUSAL_FILE
    if proc.returncode == REFUSED and refusal.is_file():
        why = json.loads(refusal.read_text())
        raise PolicyRefusal(str(why["reason"]), code=str(why["code"]))
    if proc.returncode != 0:
        raise TrainingFailed(f"training script exited with {proc.returncode}; see {log}")
    result_file = io_dir / "result.json"
    if not result_file.is_file():
        raise TrainingFailed("training script finished without calling client.send()")
    result = json.loads(result_file.read_text())
    local = None
    if task["task"] == "train":
        local = from_safetensors((io_dir / "local.safetensors").read_bytes())
    return RunResult(
        local=local,
        num_samples=result.get("num_samples"),
        metrics=result.get("metrics", {}),
        training_spends=tuple(result.get("training_spends") or ()),
    )
