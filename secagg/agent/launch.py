"""Start a job's training script inside the training subprocess, under the round's DP-SGD if required.

``python -m secagg.agent.launch SCRIPT`` is what :func:`secagg.agent.runner.run_entry` runs instead of
``python SCRIPT``: the script gets the same ``__main__``, ``sys.argv`` and ``sys.path[0]``, and when the
task says the site's policy requires ``dpsgd`` the DP-SGD runtime is installed first, so the script's
own code does not change. A refusal (:class:`secagg.client.TrainingRefused`) is written to
``refusal.json`` in the I/O folder (the agent declines the round with that reason) and the process exits
with :data:`REFUSED`.
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
