"""The demo: the local federation engine (:mod:`secagg.demo.engine`, what ``secagg simulate`` runs)
on the bundled job (``job_template/``) and the data it makes (:mod:`secagg.demo.data`).

The demo is the one place that sees every site's data, because it made the split; it uses that only to
evaluate (global validation AUC on the union of the held-out splits), never to train the federated
model. The cross-site matrix is the federation's own (the bundled job asks for ``evaluation:
cross_site``): each site measured the global model and the other sites' last local models itself.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import yaml

from secagg.bundle import to_safetensors
from secagg.crossval.matrix import PNG_FILE
from secagg.demo.data import SiteData, write_site
from secagg.demo.engine import RUNNABLE_MODES, Federation, SimSite, dev_policy, run_job
from secagg.errors import SecaggError
from secagg.reasons import Reason

TEMPLATE = Path(__file__).parent / "job_template"
SUBMITTER = "submitter@demo"


#: the demo's site policy: the development policy for the demo submitter. Real sites write their own
#: (see policies/); ``--policy`` overrides it per site, and such a policy must list ``submitter@demo``.
DEMO_POLICY = dev_policy(SUBMITTER)

__all__ = ["DEMO_POLICY", "RUNNABLE_MODES", "SUBMITTER", "TEMPLATE", "DemoFailed", "RunResult"]


class DemoFailed(SecaggError):
    code = Reason.DEMO_FAILED


@dataclass
class RunResult:
    mode: str
    rounds: int
    per_round: list[dict[str, Any]]
    final_auc: float
    final_model: dict[str, np.ndarray]
    seconds: float
    matrix: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the heat map the aggregator drew of the whole matrix (None where none was written)
    matrix_png: Path | None = None
    #: sites that did not share their local model for the matrix, with the reason code
    not_shared: dict[str, str] = field(default_factory=dict)


def _template() -> ModuleType:
    spec = importlib.util.spec_from_file_location("secagg_demo_train", TEMPLATE / "train.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_job(
    folder: Path,
    *,
    mode: str,
    rounds: int,
    min_sites: int,
    params: dict[str, Any],
    strategy: dict[str, Any] | None = None,
    privacy: list[dict[str, Any]] | None = None,
) -> Path:
    """The bundled job as a user's job folder looks (unsigned): the template script, its initial model
    and job.yaml; ``privacy`` is the job's own filter requests (a site adds what its policy requires)."""
    tmpl = _template()
    folder.mkdir(parents=True)
    shutil.copy(TEMPLATE / "train.py", folder / "train.py")
    model = tmpl.make_model()
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    (folder / "model.safetensors").write_bytes(to_safetensors(state))
    spec = {
        "name": "breast-cancer",
        "rounds": rounds,
        "min_sites": min_sites,
        "mode": mode,
        "model": "model.safetensors",
        "entry": "train.py",
        "round_timeout": 120,
        "strategy": strategy or {"name": "fedavg"},
        "params": params,
        # the cross-site matrix comes from the federation itself (secagg.agent.evaluation)
        "evaluation": "cross_site",
    }
    if privacy:
        spec["privacy"] = privacy
    (folder / "job.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def run_federation(
    out: Path,
    *,
    mode: str,
    rounds: int,
    sites: list[SiteData],
    params: dict[str, Any],
    strategy: dict[str, Any] | None = None,
    policies: dict[str, Path] | None = None,
    privacy: list[dict[str, Any]] | None = None,
    default_policy: str = DEMO_POLICY,
    drop: dict[str, int] | None = None,
    log=print,
) -> RunResult:  # noqa: ANN001
    """Write the sites' data and the bundled job, run them through the engine, evaluate centrally.

    ``policies`` gives a site its own policy file; the others get ``default_policy``."""
    if mode not in RUNNABLE_MODES:
        raise DemoFailed(f"mode {mode} cannot run in the demo yet (runnable: {', '.join(RUNNABLE_MODES)})")
    drop = drop or {}
    out.mkdir(parents=True, exist_ok=True)
    for s in sites:
        write_site(s, out / "data" / s.name)
    with tempfile.TemporaryDirectory(prefix="secagg-demo-job-") as tmp:
        job = make_job(
            Path(tmp) / "job",
            mode=mode,
            rounds=rounds,
            min_sites=len(sites),
            params=params,
            strategy=strategy,
            privacy=privacy,
        )
        fed = run_job(
            job,
            out,
            [
                SimSite(s.name, out / "data" / s.name, (policies or {}).get(s.name), drop.get(s.name))
                for s in sites
            ],
            # a dropped site must not stall the round for long: the others go on without it
            min_sites=len(sites) - len(drop),
            round_timeout=20 if drop else None,
            submitter=SUBMITTER,
            default_policy=default_policy,
            project="demo",
            log=log,
            failed=DemoFailed,
        )
    return _collect(fed, sites, exclude=set(drop))


def _collect(fed: Federation, sites: list[SiteData], exclude: set[str] | None = None) -> RunResult:
    """The demo's own evaluation: each round's global model on the union of the held-out splits."""
    tmpl = _template()
    import torch

    xv = torch.from_numpy(np.concatenate([s.x_val for s in sites]))
    yv = torch.from_numpy(np.concatenate([s.y_val for s in sites]))
    holder = next(s.name for s in sites if s.name not in (exclude or set()))  # a site that saw every round
    timing = {r["round"]: r["seconds"] for r in fed.per_round}
    model = tmpl.make_model()
    rounds = fed.spec.rounds
    per_round = []
    final = None
    for r in range(1, rounds + 1):
        bundle = fed.global_model(r, holder)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in bundle.items()})
        per_round.append({"round": r, "auc": tmpl.auc(model, xv, yv), "seconds": timing.get(r, float("nan"))})
        final = bundle
    assert final is not None
    png = fed.state / "aggregator" / "jobs" / fed.job_id / PNG_FILE
    return RunResult(
        fed.spec.mode,
        rounds,
        per_round,
        per_round[-1]["auc"],
        dict(final),
        fed.seconds,
        auc_matrix(fed),
        png if png.is_file() else None,
        dict(fed.cross_site.not_shared) if fed.cross_site is not None else {},
    )


GLOBAL_ROW = "global (federated)"


def auc_matrix(fed: Federation, metric: str = "val_auc") -> dict[str, dict[str, float]]:
    """The federated cross-site matrix of the demo's AUC: rows the global model and each site's last
    local model (``SITE local``), columns the site whose held-out split measured it; NaN where no
    site measured it (a site's own local model is measured only by the others)."""
    if fed.cross_site is None:
        return {}
    table = fed.cross_site.table(metric)
    return {(GLOBAL_ROW if model == "global" else f"{model} local"): row for model, row in table.items()}

