"""Run a job's training script for one task given as files, under the round's DP-SGD if required.

``python -m secagg.agent.launch SCRIPT`` runs SCRIPT once, as ``python SCRIPT`` would (same
``__main__``, ``sys.argv`` and ``sys.path[0]``), on the task in ``task.json`` of its I/O folder, and
when the task says the site's policy requires ``dpsgd`` the DP-SGD runtime is installed first, so the
script's own code does not change. A refusal (:class:`secagg.client.TrainingRefused`) is written to
``refusal.json`` in the I/O folder and the process exits with :data:`REFUSED`.

The agent does not use it: it runs each job in a confined, long-lived worker
(:mod:`secagg.agent.worker_main`, with the same conventions); this single-task form remains for tools
and for tests of the DP-SGD runtime in a process of its own. A loop-form script
(``for task in client.tasks()``) gets the one task here.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

from secagg.client import TrainingRefused, _io, _task

#: exit status of a script stopped by a DP-SGD refusal
REFUSED = 3
REFUSAL_FILE = "refusal.json"


def main(argv: list[str]) -> int:
    script = Path(argv[0]).resolve()
    task = _task()
    if task["task"] == "train" and task.get("dpsgd"):
        from secagg.privacy.dpsgd_runtime import DpSgdSettings, install

        install(DpSgdSettings.of(task["dpsgd"]))
    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except TrainingRefused as exc:
        tmp = _io() / f".{REFUSAL_FILE}.tmp"
        tmp.write_text(json.dumps({"code": exc.code, "reason": str(exc)}))
        tmp.replace(_io() / REFUSAL_FILE)
        print(f"secagg: {exc}", file=sys.stderr)
        return REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
