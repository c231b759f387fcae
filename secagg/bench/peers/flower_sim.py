"""Flower 1.x's simulation on the demo's job; run by ``secagg bench --demo-compare`` in the ``flower``
peer venv as ``python flower_sim.py --work DIR --rounds R --sites N --out DIR``.

The job: Flower's ``FedAvg`` strategy (weighted by the ``num_examples`` each client returns: the site's
training samples, as secagg and FLARE weigh), initial parameters from the demo's ``make_model()``, a
``NumPyClient`` whose ``fit`` is the demo's round body (evaluate the global model on the site's
validation split, the demo's ``train``), 3 supernodes (``partition-id`` i is ``site-(i+1)``), no
federated evaluation, run by ``flwr.simulation.run_simulation`` (Ray backend: clients run in Ray actor
processes on this machine, messages stay in memory). Round seconds are taken in the strategy's
``aggregate_fit``: round r is from the aggregation of r-1 (for round 1: ``initialize_parameters``) to
the aggregation of r, as secagg's is from one aggregation to the next.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--sites", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    work, out = args.work.resolve(), args.out.resolve()
    sys.path.insert(0, str(work))
    import flwr
    import numpy as np
    import torch
    from demo_train import make_model
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    params = json.loads((work / "params.json").read_text())
    data_root = work / "data"
    names = list(make_model().state_dict())

    class DemoClient(NumPyClient):
        def __init__(self, site: str) -> None:
            self.data_dir = data_root / site

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            from demo_train import auc, load, train

            torch.set_num_threads(1)
            model = make_model()
            model.load_state_dict(
                {k: torch.from_numpy(np.array(v)) for k, v in zip(names, parameters, strict=True)}
            )
            xv, yv = load(self.data_dir, "val")
            metrics = {"val_auc": auc(model, xv, yv), "n_val": float(len(yv))}
            metrics = {k: v for k, v in metrics.items() if v == v}
            x, y = load(self.data_dir, "train")
            train(model, x, y, params)
            return [v.detach().numpy() for v in model.state_dict().values()], len(y), metrics

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        site = f"site-{int(context.node_config['partition-id']) + 1}"
        return DemoClient(site).to_client()

    marks: list[float] = []
    final: dict[str, np.ndarray] = {}

    class TimedFedAvg(FedAvg):
        def initialize_parameters(self, client_manager):  # type: ignore[no-untyped-def]
            marks.append(time.monotonic())
            return super().initialize_parameters(client_manager)

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            agg = super().aggregate_fit(server_round, results, failures)
            marks.append(time.monotonic())
            if agg[0] is not None:
                final.clear()
                final.update(zip(names, parameters_to_ndarrays(agg[0]), strict=True))
            return agg

    initial = [v.detach().numpy() for v in make_model().state_dict().values()]

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = TimedFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=args.sites,
            min_available_clients=args.sites,
            initial_parameters=ndarrays_to_parameters(initial),
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=args.rounds))

    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=args.sites,
    )
    if len(marks) != args.rounds + 1 or not final:
        print(f"Flower finished {len(marks) - 1} of {args.rounds} rounds", file=sys.stderr)
        return 1
    np.savez(out / "final.npz", **{k: np.asarray(v, dtype=np.float32) for k, v in final.items()})  # type: ignore[arg-type]
    result = {
        "system": "flower",
        "version": str(flwr.__version__),
        "torch": torch.__version__,
        "per_round_s": [b - a for a, b in zip(marks, marks[1:], strict=False)],
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
