"""NVIDIA FLARE 2.9's simulator on the demo's job; run by ``secagg bench --demo-compare`` in the
``nvflare`` peer venv as ``python flare_job.py --work DIR --rounds R --sites N --out DIR``.

The job: FLARE's own PyTorch ``FedAvgRecipe`` (its FedAvg controller with in-time weighted aggregation,
``PTFileModelPersistor``), the initial model :class:`peer_model.DemoMLP` (the demo's MLP and initial
weights), ``flare_client.py`` as the training script in the client API's loop form, launched once per
site as its own process (``launch_external_process=True``, ``launch_once=True``: one process per site for
the whole job, as secagg's worker), run by ``SimEnv`` (the simulator: server and clients on this
machine, one thread per client). Round seconds come from the FedAvg controller's own log lines
(``Round N started.`` ... ``Finished FedAvg.``), so round r is from the start of round r to the start of
round r+1 (the last: to the end of FedAvg), as secagg's is from one aggregation to the next.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_MARK = re.compile(r"Round (\d+) started\.|Finished FedAvg\.")


def round_seconds(log_text: str) -> list[float]:
    """Per-round seconds from the FedAvg controller's banners in a FLARE log (a banner stands on its own
    lines under the timestamped record that prints it; FLARE counts rounds from 0)."""
    starts: dict[int, dt.datetime] = {}
    end = None
    stamp = None
    for line in log_text.splitlines():
        s = _STAMP.match(line)
        if s:
            stamp = dt.datetime.strptime(s.group(1), "%Y-%m-%d %H:%M:%S,%f")
        m = _MARK.search(line)
        if not m or stamp is None:
            continue
        if m.group(1) is not None:
            starts.setdefault(int(m.group(1)), stamp)
        else:
            end = stamp
    marks = [starts[r] for r in sorted(starts)] + ([end] if end is not None else [])
    return [(b - a).total_seconds() for a, b in zip(marks, marks[1:], strict=False)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--sites", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    work, out = args.work.resolve(), args.out.resolve()
    sys.path.insert(0, str(work))
    import numpy as np
    import nvflare
    import torch
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.recipe.sim_env import SimEnv
    from peer_model import DemoMLP

    recipe = FedAvgRecipe(
        name="breast-cancer",
        model=DemoMLP(),
        min_clients=args.sites,
        num_rounds=args.rounds,
        train_script=str(work / "flare_client.py"),
        train_args=f"--data-root {work / 'data'} --params {work / 'params.json'}",
        launch_external_process=True,
        command=f"{sys.executable} -u",
    )
    recipe.add_client_file(str(work / "demo_train.py"))
    env = SimEnv(num_clients=args.sites, workspace_root=str(out / "workspace"))
    run = recipe.execute(env)
    ws = Path(run.get_result() or out / "workspace")
    # the server's log (the shallowest log.txt that has the controller's banners)
    logs = sorted(
        (p for p in ws.rglob("log.txt") if "Finished FedAvg." in p.read_text(errors="replace")),
        key=lambda p: len(p.parts),
    )
    if not logs:
        print(f"no FedAvg log under {ws}", file=sys.stderr)
        return 1
    models = sorted(ws.rglob("FL_global_model.pt"))
    if not models:
        print(f"no FL_global_model.pt under {ws}", file=sys.stderr)
        return 1
    saved = torch.load(models[0], map_location="cpu", weights_only=False)
    state = saved.get("model", saved) if isinstance(saved, dict) else saved
    np.savez(out / "final.npz", **{k: np.asarray(v, dtype=np.float32) for k, v in state.items()})  # type: ignore[arg-type]
    result = {
        "system": "nvflare",
        "version": str(nvflare.__version__),
        "torch": torch.__version__,
        "per_round_s": round_seconds(logs[0].read_text(errors="replace")),
        "log": str(logs[0]),
        "model_file": str(models[0]),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
