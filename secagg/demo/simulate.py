"""The demo's federation as one in-process loop: the same training script, weights, privacy filters and
server strategy, without processes, certificates or the network.

Why it exists: tuning a strategy's step size or picking privacy settings for the sweep takes dozens of
federations, and a real one (``run.run_federation``) spends most of its time starting processes. The
demo's reports come from real federations; this loop chooses what to run, and runs the privacy sweep
where real federations do not fit the machine (``demo --privacy-sweep --in-process``: a real
federation costs about 0.5 GiB of memory per site, so 20 sites need about 10 GiB). A
``distributed_gaussian`` job's mean is formed as ``mask`` mode forms it (the integer shares summed
exactly, divided by the number of sites), and each site's filter receipts are kept, so the epsilon it
reports is what a site's ledger would compose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secagg.demo.data import SiteData
from secagg.demo.run import _template
from secagg.privacy import Spend, apply_chain, build_chain
from secagg.strategy import flatten, make_strategy, unflatten


@dataclass(frozen=True)
class Simulation:
    aucs: list[float]  # global validation AUC after each round
    final_model: dict[str, np.ndarray]
    #: every receipt each site's filters returned, in order (what its ledger would debit)
    receipts: dict[str, list[Spend]] = field(default_factory=dict)


def _share_bits(privacy: Sequence[Mapping[str, Any]]) -> int | None:
    """``frac_bits`` of the job's ``distributed_gaussian`` filter (None without one): its sites send
    integer shares, averaged uniformly as the mask protocol sums them."""
    for f in privacy:
        if f.get("name") == "distributed_gaussian":
            return int(f.get("frac_bits", 16))
    return None


def simulate(
    sites: Sequence[SiteData],
    params: Mapping[str, Any],
    *,
    rounds: int,
    strategy: Mapping[str, Any] | None = None,
    privacy: Sequence[Mapping[str, Any]] = (),
    site_privacy: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    seed: int = 0,
) -> Simulation:
    """``privacy``: the job's filters, at every site; ``site_privacy``: filters a site's own policy adds
    after them (as the agent's effective chain puts a site's required filters after the job's)."""
    import torch

    torch.set_num_threads(1)
    tmpl = _template()
    strat = make_strategy(dict(strategy or {"name": "fedavg"}))
    mu = float(strat.client_config().get("mu", 0.0))  # type: ignore[arg-type]
    chains = {s.name: build_chain([*privacy, *(site_privacy or {}).get(s.name, ())]) for s in sites}
    rng = np.random.default_rng(seed)
    model = tmpl.make_model()
    glob = {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}
    vec, layout = flatten(glob)
    state = strat.init_state(vec)
    total = float(sum(len(s.y_train) for s in sites))
    xv = torch.from_numpy(np.concatenate([s.x_val for s in sites]))
    yv = torch.from_numpy(np.concatenate([s.y_val for s in sites]))
    share_bits = _share_bits(privacy)
    receipts: dict[str, list[Spend]] = {s.name: [] for s in sites}
    aucs = []
    for _ in range(rounds):
        avg = np.zeros_like(vec)
        shares = np.zeros(vec.shape, dtype=np.int64)
        for s in sites:
            local = tmpl.make_model()
            local.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in glob.items()})
            ref = {k: torch.from_numpy(v.astype(np.float32)) for k, v in glob.items()}
            extra = None
            if mu:

                def extra(m: Any, ref: dict[str, Any] = ref) -> Any:
                    return 0.5 * mu * sum(((p - ref[n]) ** 2).sum() for n, p in m.named_parameters())

            tmpl.train(local, torch.from_numpy(s.x_train), torch.from_numpy(s.y_train), dict(params), extra)
            update = {
                k: (v.detach().numpy().astype(np.float64) - glob[k]).astype(np.float32)
                for k, v in local.state_dict().items()
            }
            released, spent = apply_chain(chains[s.name], update, rng)
            receipts[s.name].extend(spent)
            flat = flatten({k: v.astype(np.float64) for k, v in released.items()})[0]
            if share_bits is None:
                avg += flat * (len(s.y_train) / total)
            else:  # the site's integer share, exact (the filter's output is k 2^-f in float32)
                shares += np.rint(flat * 2.0**share_bits).astype(np.int64)
        if share_bits is not None:
            avg = shares.astype(np.float64) * 2.0**-share_bits / len(sites)
        vec, state = strat.apply(vec, avg, state)
        glob = unflatten(vec, layout)
        model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in glob.items()})
        aucs.append(tmpl.auc(model, xv, yv))
    return Simulation(aucs, {k: np.asarray(v, np.float32) for k, v in glob.items()}, receipts)
