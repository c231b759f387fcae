"""The demo's training script in NVIDIA FLARE's client API loop form (a site of ``flare_job.py``).

The body is the demo's (``secagg/demo/job_template/train.py``), line for line, with FLARE's calls in
place of secagg's: evaluate the received global model on the site's validation split, train with the
demo's ``train`` (same seed, lr, epochs, batch size), send the weights with the sample count as the
FedAvg weight (``NUM_STEPS_CURRENT_ROUND``, FLARE's FedAvg weighting), as secagg weighs by samples.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nvflare.client as flare
import torch
from demo_train import auc, load, make_model, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--params", type=Path, required=True)
    args = ap.parse_args()
    params = json.loads(args.params.read_text())
    torch.set_num_threads(1)
    flare.init()
    data_dir = args.data_root / flare.get_site_name()
    while flare.is_running():
        input_model = flare.receive()
        model = make_model()
        model.load_state_dict({k: torch.as_tensor(v) for k, v in input_model.params.items()})
        xv, yv = load(data_dir, "val")
        metrics = {"val_auc": auc(model, xv, yv), "n_val": float(len(yv))}
        metrics = {k: v for k, v in metrics.items() if v == v}
        x, y = load(data_dir, "train")
        train(model, x, y, params)
        flare.send(
            flare.FLModel(
                params={k: v.detach().cpu() for k, v in model.state_dict().items()},
                metrics=metrics,
                meta={"NUM_STEPS_CURRENT_ROUND": len(y)},
            )
        )


if __name__ == "__main__":
    main()
