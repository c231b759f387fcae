"""Run a whole federation on this machine: provision, sign the job, start the aggregator and the
site agents as separate processes on 127.0.0.1 over mTLS, then report.

The demo is the one place that sees every site's data, because it made the split; it uses that only to
evaluate (global validation AUC on the union of the held-out splits, and the cross-site matrix), never
to train the federated model.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import yaml

from secagg.bundle import from_safetensors, to_safetensors
from secagg.demo.data import SiteData, write_site
from secagg.errors import SecaggError
from secagg.provision.project import AdminSpec, AggregatorSpec, Project, SiteSpec
from secagg.provision.writer import provision

TEMPLATE = Path(__file__).parent / "job_template"
SUBMITTER = "submitter@demo"


#: the demo's site policy: trusts the demo submitter, allows every mode this demo runs (the dev-TEE is a
#: software stand-in that protects nothing: demo only). Real sites write their own (see policies/);
#: ``--policy`` overrides it per site, and such a policy must list ``submitter@demo`` as a submitter.
DEMO_POLICY = f"""\
version: 1
signers:
  submitters: [{SUBMITTER}]
modes: [plain, he, mask, tee]
attestation:
  types: [dev-tee]
  allow_insecure_dev_tee: true
  max_age_s: 3600
limits:
  max_rounds: 100
  min_sites_per_round: 2
"""

#: the modes the demo can run end to end
RUNNABLE_MODES = ("plain", "he", "mask", "tee")


class DemoFailed(SecaggError):
    code = "demo_failed"


@dataclass
class RunResult:
    mode: str
    rounds: int
    per_round: list[dict[str, Any]]
    final_auc: float
    final_model: dict[str, np.ndarray]
    seconds: float
    matrix: dict[str, dict[str, float]] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    n_sites: int | None = None,
    round_timeout: float | None = None,
) -> Path:
    """A job folder (unsigned): the template script, its initial model and job.yaml; ``privacy`` is the
    job's own filter requests (a site adds what its policy requires on top)."""
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
    }
    if privacy:
        spec["privacy"] = privacy
    if mode == "mask":
        from secagg.mask.job import mask_config

        cfg = mask_config(None, n_sites or min_sites)
        spec["mask"] = {"threshold": cfg.threshold, "neighbours": cfg.neighbours, "clip": 1.0}
    if round_timeout is not None:
        spec["round_timeout"] = round_timeout
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
    """``policies`` gives a site its own policy file; the others get ``default_policy``."""
    if mode not in RUNNABLE_MODES:
        raise DemoFailed(f"mode {mode} cannot run in the demo yet (runnable: {', '.join(RUNNABLE_MODES)})")
    from secagg.jobs.sign import sign_job
    from secagg.provision.kit import load_kit

    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    project = Project(
        name=f"demo-{mode}",
        aggregator=AggregatorSpec(host="127.0.0.1", port=port),
        sites=[SiteSpec(name=s.name, org=f"org-{s.name}") for s in sites],
        admins=[AdminSpec(name=SUBMITTER, org="demo", role="lead")],
        key_holder=sites[0].name,
    )
    ws = out / "workspace"
    provision(project, ws, force=True)
    for s in sites:
        write_site(s, out / "data" / s.name)
    drop = drop or {}
    job = make_job(
        out / "job",
        mode=mode,
        rounds=rounds,
        # a dropped site must not stall the round for long: the others go on without it
        min_sites=len(sites) - len(drop),
        n_sites=len(sites),
        round_timeout=20 if drop else None,
        params=params,
        strategy=strategy,
        privacy=privacy,
    )
    sign_job(job, load_kit(ws / SUBMITTER))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "secagg.cli"]
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    started = time.monotonic()
    agg_state = out / "state" / "aggregator"
    try:
        procs.append(
            (
                "aggregator",
                subprocess.Popen(
                    [
                        *cli,
                        "aggregator",
                        "serve",
                        "--kit",
                        str(ws / "aggregator"),
                        "--state",
                        str(agg_state),
                        "--job",
                        str(job),
                        "--host",
                        "127.0.0.1",
                        "--exit-when-done",
                        *(["--insecure-dev-tee"] if mode == "tee" else []),
                    ],
                    stdout=(logs / "aggregator.log").open("wb"),
                    stderr=subprocess.STDOUT,
                    env=env,
                ),
            )
        )
        for s in sites:
            policy = (policies or {}).get(s.name)
            if policy is None:
                policy = out / "policies" / f"{s.name}.yaml"
                policy.parent.mkdir(exist_ok=True)
                policy.write_text(default_policy)
            procs.append(
                (
                    s.name,
                    subprocess.Popen(
                        [
                            *cli,
                            "agent",
                            "run",
                            "--kit",
                            str(ws / s.name),
                            "--data",
                            str(out / "data" / s.name),
                            *(["--simulate-dropout", f"{drop[s.name]}:upload"] if s.name in drop else []),
                            "--state",
                            str(out / "state" / s.name),
                            "--policy",
                            str(policy),
                        ],
                        stdout=(logs / f"{s.name}.log").open("wb"),
                        stderr=subprocess.STDOUT,
                        env=env,
                    ),
                )
            )
        _watch(procs, agg_state, rounds, log, logs)
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.terminate()
        for _, p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    seconds = time.monotonic() - started
    return _collect(out, mode, rounds, sites, agg_state, seconds, exclude=set(drop))


def _watch(
    procs: list[tuple[str, subprocess.Popen[bytes]]],
    agg_state: Path,
    rounds: int,
    log: Any,
    logs: Path,
    timeout: float = 900,
) -> None:
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        done = _rounds(agg_state)
        for r in done[seen:]:
            log(
                f"  round {r['round']}/{rounds} aggregated from {len(r['participants'])} sites "
                f"in {r['seconds']:.1f} s"
            )
        seen = len(done)
        codes = {name: p.poll() for name, p in procs}
        failed = {n: c for n, c in codes.items() if c not in (None, 0)}
        if failed:
            name = next(iter(failed))
            tail = (logs / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise DemoFailed(f"{name} exited with {failed[name]}: {' | '.join(tail)}")
        if all(c == 0 for c in codes.values()):
            return
        time.sleep(0.3)
    raise DemoFailed(f"federation did not finish within {timeout:.0f} s; logs in {logs}")


def _rounds(agg_state: Path) -> list[dict[str, Any]]:
    from secagg.aggregator.store import StoreUnavailable, StoreView

    try:
        with StoreView(agg_state) as store:
            rows = store.rounds()
    except StoreUnavailable:
        return []
    return [{"round": r.round, "participants": r.participants, "seconds": r.seconds} for r in rows]


def _collect(
    out: Path,
    mode: str,
    rounds: int,
    sites: list[SiteData],
    agg_state: Path,
    seconds: float,
    exclude: set[str] | None = None,
) -> RunResult:
    tmpl = _template()
    import torch

    xv = torch.from_numpy(np.concatenate([s.x_val for s in sites]))
    yv = torch.from_numpy(np.concatenate([s.y_val for s in sites]))
    holder = next(s for s in sites if s.name not in (exclude or set()))  # a site that saw every round
    jobs_dir = out / "state" / holder.name / "jobs"
    job_dir = next(jobs_dir.iterdir())
    per_round = []
    timing = {r["round"]: r["seconds"] for r in _rounds(agg_state)}
    model = tmpl.make_model()
    final = None
    for r in range(1, rounds + 1):
        path = job_dir / (f"global-{r}.safetensors" if r < rounds else "final.safetensors")
        bundle = from_safetensors(path.read_bytes())
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in bundle.items()})
        per_round.append({"round": r, "auc": tmpl.auc(model, xv, yv), "seconds": timing.get(r, float("nan"))})
        final = bundle
    assert final is not None
    return RunResult(mode, rounds, per_round, per_round[-1]["auc"], dict(final), seconds)


def cross_site_matrix(
    final: dict[str, np.ndarray], sites: list[SiteData], params: dict[str, Any], rounds: int
) -> dict[str, dict[str, float]]:
    """Rows: each site's local-only model and the global model; columns: each site's held-out split."""
    import torch

    tmpl = _template()
    rows: dict[str, dict[str, float]] = {}
    models: dict[str, Any] = {}
    for s in sites:
        m = tmpl.make_model()
        local_params = {**params, "epochs": int(params.get("epochs", 2)) * rounds}
        tmpl.train(m, torch.from_numpy(s.x_train), torch.from_numpy(s.y_train), local_params)
        models[f"{s.name} local-only"] = m
    g = tmpl.make_model()
    g.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in final.items()})
    models["global (federated)"] = g
    for name, m in models.items():
        rows[name] = {
            s.name: tmpl.auc(m, torch.from_numpy(s.x_val), torch.from_numpy(s.y_val)) for s in sites
        }
    return rows
