"""``secagg bench --demo-compare``: the demo's round, before and after the per-job worker, beside NVIDIA
FLARE's simulator and Flower's simulation on the same job, in one run on one machine.

What runs (in this order, one at a time):

* ``secagg-plain``, ``secagg-he``: ``secagg demo``'s federation (:func:`secagg.demo.run.run_federation`:
  the aggregator and one agent per site as separate processes on 127.0.0.1 over mTLS, each site's job
  code in its confined worker) with the demo's job as shipped, the loop form
  (``for task in client.tasks()``): one worker per site for the whole job ("after").
* ``secagg-plain-one-round``, ``secagg-he-one-round``: the same federation with the one-round form of
  the same script (:func:`one_round_source`: the demo's ``train.py`` with its ``main`` replaced by the
  body without the loop), which the agent starts afresh, confined, for every round ("before": a new
  interpreter per round, as before the worker). The swap is a bench aid, not a demo option
  (:func:`job_template`). Each site's ``train.log`` says how often its worker started, and the
  one-round script prints its pid per round, both kept in ``results.json``.
* ``nvflare``: NVIDIA FLARE 2.9's simulator (:mod:`secagg.bench.peers.flare_job`).
* ``flower``: Flower 1.x's simulation (:mod:`secagg.bench.peers.flower_sim`).

The peers run in their own virtual environments under ``--peer-venvs`` (default ``bench-out/peers``),
made with ``python -m venv`` and ``pip install`` from the registry on first use (:data:`PEERS`; torch is
pinned to this environment's version, so the CPU wheel is used and both train with the same library).
A peer that cannot be installed or fails is reported ``skipped`` / ``failed`` with the reason; the run
goes on. Every system runs the same job: the demo's ``train.py`` (model, seed-0 initial weights, data
loading, training loop, AUC), the demo's label-skewed split of scikit-learn's breast-cancer set, its
hyper-parameters, FedAvg weighted by training samples, 3 sites, 5 rounds. The bench evaluates every
final model itself: global validation AUC on the union of the sites' held-out splits (as the demo).

A round's seconds: secagg's are the aggregator's, from one aggregation to the next (``secagg demo``'s
``median_round_seconds``); FLARE's from one "Round N started." of its FedAvg controller to the next;
Flower's from one ``aggregate_fit`` to the next. Round 1 of each includes starting its processes, so
medians are compared. Total wall: from the bench starting the system to its end (secagg: provisioning,
signing, the federation, collecting; a peer: its interpreter's whole run).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secagg.errors import ConfigError

SITES = 3
MODES = ("plain", "he")
FORMS = ("loop", "one-round")
PEER_NAMES = ("nvflare", "flower")
PEERS_DIR = Path(__file__).parent / "peers"

#: the goals of issue 17 for the demo
TARGET_MEDIAN_S = 0.5
TARGET_HE_OVER_PLAIN = 1.25
#: two final models whose AUCs differ by less than this count as the same result
AUC_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    script: str
    #: pip requirements, besides torch, numpy and scikit-learn (pinned to this environment's versions)
    requirements: tuple[str, ...]
    module: str  # imported once after installing, to check the install
    note: str  # what its round consists of, for the report


PEERS: dict[str, Peer] = {
    "nvflare": Peer(
        "nvflare",
        "NVIDIA FLARE 2.9 simulator",
        "flare_job.py",
        ("nvflare==2.9.0",),
        "nvflare.app_opt.pt.recipes.fedavg",
        "SimEnv: server and 3 clients in the simulator's processes on this machine, the training script "
        "launched once per site as its own process (client API loop), tasks pulled by polling",
    ),
    "flower": Peer(
        "flower",
        "Flower 1.42 simulation",
        "flower_sim.py",
        ("flwr[simulation]==1.42.0",),
        "flwr.simulation",
        "run_simulation (Ray backend): clients as Ray actors on this machine, messages in memory, no TLS",
    ),
}


class PeerUnavailable(Exception):
    """A peer could not be installed or run; ``reason`` says why, in one line."""


@dataclass
class SystemResult:
    key: str  # secagg-plain, secagg-he, secagg-plain-one-round, secagg-he-one-round, nvflare, flower
    system: str  # secagg, nvflare, flower
    label: str
    mode: str  # plain / he for secagg; the peers send plaintext
    form: str  # loop / one-round (secagg), loop (peers)
    status: str = "ok"  # ok, skipped, failed
    reason: str = ""
    per_round_s: list[float] = field(default_factory=list)
    median_round_s: float | None = None
    total_wall_s: float | None = None
    final_auc: float | None = None
    #: largest absolute difference of a final parameter from secagg-plain's final model
    max_abs_diff_vs_secagg_plain: float | None = None
    #: secagg: worker processes started per site over the job (train.log); one-round: pids per round
    worker_starts: dict[str, int] = field(default_factory=dict)
    worker_pids: dict[str, list[int]] = field(default_factory=dict)
    version: str = ""
    load_avg_before: float | None = None
    output: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------- the one-round form ----
_MAIN = "\ndef main() -> None:"

ONE_ROUND_MAIN = '''def main() -> None:
    """The one-round form (``secagg bench --demo-compare``'s "before"): one task, then exit; the agent
    starts the script again, in the same confinement, for the next round."""
    import os

    from secagg import client  # secagg

    torch.set_num_threads(1)
    print(f"secagg-bench: one-round form, round {client.round} ({client.task}) in pid {os.getpid()}")
    model = make_model()
    model.load_state_dict(client.receive())  # secagg
    xv, yv = load(client.data_dir, "val")
    metrics = {"val_auc": auc(model, xv, yv), "n_val": float(len(yv))}
    metrics = {k: v for k, v in metrics.items() if v == v}  # drop NaN (a one-class split)
    if client.task == "evaluate":  # secagg
        client.send(metrics=metrics)  # secagg
        return
    x, y = load(client.data_dir, "train")
    train(model, x, y, client.params, extra_loss=client.proximal_term)  # secagg: FedProx term
    client.send(model.state_dict(), num_samples=len(y), metrics=metrics)  # secagg


if __name__ == "__main__":
    main()
'''

_PID_LINE = re.compile(r"^secagg-bench: one-round form, round (\d+) \((\w+)\) in pid (\d+)$", re.M)
_WORKER_START = re.compile(r"^secagg worker: (sandbox applied|UNCONFINED)", re.M)


def one_round_source(loop_source: str) -> str:
    """The demo's ``train.py`` with its loop-form ``main`` replaced by the one-round body: everything
    above ``main`` (model, data loading, training, AUC) stays byte for byte the demo's."""
    head, sep, _ = loop_source.partition(_MAIN)
    if not sep or "client.tasks()" in head:
        raise ConfigError("the demo's train.py has no loop-form main(): cannot derive its one-round form")
    return head + "\n" + ONE_ROUND_MAIN


def write_template(form: str, folder: Path) -> Path:
    """A job-template folder holding ``train.py`` in ``form``; the loop form is the demo's own folder."""
    from secagg.demo.run import TEMPLATE

    if form == "loop":
        return TEMPLATE
    if form != "one-round":
        raise ConfigError(f"unknown round form {form!r} (expected one of {', '.join(FORMS)})")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text(one_round_source((TEMPLATE / "train.py").read_text()))
    return folder


@contextlib.contextmanager
def job_template(folder: Path) -> Iterator[None]:
    """Make the demo build its job from ``folder/train.py`` for the duration (a bench aid: the demo's
    job package, and the model it evaluates, come from ``secagg.demo.run.TEMPLATE``)."""
    import secagg.demo.run as demo_run

    saved = demo_run.TEMPLATE
    demo_run.TEMPLATE = folder
    try:
        yield
    finally:
        demo_run.TEMPLATE = saved


def worker_log_facts(state: Path) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Per site: how many worker processes its agent started for the job, and the pids the one-round
    script printed (round order; empty for the loop form), from ``state/SITE/jobs/*/train.log``."""
    starts: dict[str, int] = {}
    pids: dict[str, list[int]] = {}
    for site_dir in sorted(p for p in state.iterdir() if p.is_dir() and p.name != "aggregator"):
        n, found = 0, []
        for log in sorted(site_dir.glob("jobs/*/train.log")):
            text = log.read_text(errors="replace")
            n += len(_WORKER_START.findall(text))
            found += [int(m.group(3)) for m in _PID_LINE.finditer(text)]
        starts[site_dir.name] = n
        pids[site_dir.name] = found
    return starts, pids


# ------------------------------------------------------------------------------ evaluation ----
def _evaluator(sites: Sequence[Any]) -> Callable[[Mapping[str, np.ndarray]], float]:
    import torch

    from secagg.demo.run import _template

    tmpl = _template()
    xv = torch.from_numpy(np.concatenate([s.x_val for s in sites]))
    yv = torch.from_numpy(np.concatenate([s.y_val for s in sites]))

    def evaluate(state: Mapping[str, np.ndarray]) -> float:
        model = tmpl.make_model()
        model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()})
        return float(tmpl.auc(model, xv, yv))

    return evaluate


def max_abs_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    if set(a) != set(b):
        raise ConfigError(f"final models differ in their tensors: {sorted(a)} vs {sorted(b)}")
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)))) for k in a)


def _median(xs: Sequence[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ---------------------------------------------------------------------------------- secagg ----
def run_secagg(
    out: Path,
    *,
    mode: str,
    form: str,
    rounds: int,
    sites: Sequence[Any],
    params: Mapping[str, Any],
    log: Callable[[str], object],
) -> tuple[SystemResult, dict[str, np.ndarray] | None]:
    from secagg.demo.run import run_federation
    from secagg.demo.strategies import preset

    key = f"secagg-{mode}" + ("-one-round" if form == "one-round" else "")
    label = "secagg, " + (
        "one-round form: a new worker per round (before)"
        if form == "one-round"
        else "loop form: one worker per job (after)"
    )
    res = SystemResult(key=key, system="secagg", label=label, mode=mode, form=form, load_avg_before=_load())
    template = write_template(form, out / "template")
    started = time.monotonic()
    try:
        with job_template(template):
            run = run_federation(
                out / "federation",
                mode=mode,
                rounds=rounds,
                sites=list(sites),
                params=dict(params),
                strategy=preset("fedavg"),
                log=lambda line: log(f"  {key}: {line.strip()}"),
            )
    except Exception as exc:  # noqa: BLE001 (reported in results.json; the bench goes on)
        res.status, res.reason = "failed", f"{type(exc).__name__}: {exc}"
        res.total_wall_s = time.monotonic() - started
        return res, None
    res.total_wall_s = time.monotonic() - started
    res.per_round_s = [float(r["seconds"]) for r in run.per_round]
    res.median_round_s = _median(res.per_round_s)
    res.final_auc = float(run.final_auc)
    res.worker_starts, res.worker_pids = worker_log_facts(out / "federation" / "state")
    res.version = _version("secagg")
    res.output = str(out / "federation")
    return res, {k: np.asarray(v) for k, v in run.final_model.items()}


# ----------------------------------------------------------------------------------- peers ----
def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def pinned_requirements(peer: Peer) -> list[str]:
    """The peer's own packages plus torch, numpy and scikit-learn at this environment's versions
    (torch's local label dropped: ``torch==2.13.0`` is met by the CPU wheel on this machine)."""
    base = [f"{d}=={_version(d).split('+')[0]}" for d in ("torch", "numpy", "scikit-learn")]
    return [*peer.requirements, *base]


def ensure_venv(root: Path, peer: Peer, log: Callable[[str], object], timeout: float = 1800) -> Path:
    """The python of ``root/<name>-venv`` with the peer installed; made with ``python -m venv`` and pip
    on first use (or when the requirements changed). Raises :class:`PeerUnavailable`."""
    root = root.absolute()  # the peer runs in its own folder: a relative python path would miss
    venv = root / f"{peer.name}-venv"
    py = venv / "bin" / "python"
    stamp = venv / ".secagg-bench-requirements"
    reqs = pinned_requirements(peer)
    want = "\n".join(reqs) + "\n"
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    root.mkdir(parents=True, exist_ok=True)
    pip_log = root / f"{peer.name}-install.log"
    log(f"  {peer.name}: installing {' '.join(reqs)} into {venv} (log: {pip_log})")
    with pip_log.open("ab") as out:
        try:
            if not py.exists():
                subprocess.run(
                    [sys.executable, "-m", "venv", str(venv)],
                    check=True,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=300,
                )
            subprocess.run(
                [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", *reqs],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
            subprocess.run(
                [str(py), "-c", f"import {peer.module}"],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=300,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PeerUnavailable(
                f"could not install {' '.join(peer.requirements)}: {_why(exc, pip_log)}"
            ) from None
    stamp.write_text(want)
    return py


def _why(exc: BaseException, log: Path) -> str:
    lines = (
        [
            ln
            for ln in log.read_text(errors="replace").splitlines()
            if ln.strip() and not ln.startswith("WARNING: Location")
        ]
        if log.exists()
        else []
    )
    tail = lines[-1].strip() if lines else ""
    return f"{exc}" + (f" ({tail})" if tail else "")


def prepare_peer_work(work: Path, peer: Peer, sites: Sequence[Any], params: Mapping[str, Any]) -> Path:
    """The folder a peer's script reads: the demo's train.py as ``demo_train.py``, the peer scripts, the
    demo's split as ``data/site-N/{train,val}.npz`` and ``params.json``."""
    from secagg.demo.data import write_site
    from secagg.demo.run import TEMPLATE

    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(TEMPLATE / "train.py", work / "demo_train.py")
    for name in ("peer_model.py", "flare_client.py", peer.script):
        shutil.copy(PEERS_DIR / name, work / name)
    for s in sites:
        write_site(s, work / "data" / s.name)
    (work / "params.json").write_text(json.dumps(dict(params)))
    return work


def run_peer(
    out: Path,
    peer: Peer,
    *,
    venvs: Path,
    rounds: int,
    sites: Sequence[Any],
    params: Mapping[str, Any],
    log: Callable[[str], object],
    timeout: float = 1200,
) -> tuple[SystemResult, dict[str, np.ndarray] | None]:
    out = out.absolute()  # the peer runs in this folder: every path it is given must be absolute
    res = SystemResult(key=peer.name, system=peer.name, label=peer.label, mode="plain", form="loop")
    try:
        py = ensure_venv(venvs, peer, log)
    except PeerUnavailable as exc:
        res.status, res.reason = "skipped", str(exc)
        return res, None
    work = prepare_peer_work(out / "work", peer, sites, params)
    run_out = out / "run"
    run_out.mkdir(parents=True, exist_ok=True)
    peer_log = out / "peer.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    res.load_avg_before = _load()
    started = time.monotonic()
    try:
        with peer_log.open("wb") as fh:
            proc = subprocess.run(
                [
                    str(py),
                    str(work / peer.script),
                    "--work",
                    str(work),
                    "--rounds",
                    str(rounds),
                    "--sites",
                    str(len(sites)),
                    "--out",
                    str(run_out),
                ],
                cwd=out,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
    except (OSError, subprocess.SubprocessError) as exc:
        res.status, res.reason = "failed", _why(exc, peer_log)
        return res, None
    res.total_wall_s = time.monotonic() - started
    res.output = str(out)
    result_file, model_file = run_out / "result.json", run_out / "final.npz"
    if proc.returncode != 0 or not result_file.exists() or not model_file.exists():
        res.status = "failed"
        res.reason = f"exited with {proc.returncode}, no result: " + _why(
            RuntimeError("see " + str(peer_log)), peer_log
        )
        return res, None
    data = json.loads(result_file.read_text())
    res.per_round_s = [float(x) for x in data["per_round_s"]]
    res.median_round_s = _median(res.per_round_s)
    res.version = str(data.get("version", ""))
    with np.load(model_file) as npz:
        final = {k: npz[k] for k in npz.files}
    return res, final


# --------------------------------------------------------------------------------- summary ----
def _ok(systems: Sequence[SystemResult], key: str) -> SystemResult | None:
    return next((s for s in systems if s.key == key and s.status == "ok" and s.median_round_s), None)


def _ratio(a: SystemResult | None, b: SystemResult | None) -> float | None:
    if a is None or b is None or not a.median_round_s or not b.median_round_s:
        return None
    return a.median_round_s / b.median_round_s


def _starts_goal(systems: Sequence[SystemResult], form: str, want: int | None, goal: str) -> dict[str, Any]:
    runs = [s for s in systems if s.system == "secagg" and s.form == form and s.status == "ok"]
    counts = [n for s in runs for n in s.worker_starts.values()]
    distinct = all(len(set(p)) == len(p) for s in runs for p in s.worker_pids.values())
    met = None if not counts or want is None else all(n == want for n in counts) and distinct
    return {"goal": goal, "measured": max(counts) if counts else None, "met": met}


def summarize(systems: Sequence[SystemResult], rounds: int | None = None) -> dict[str, Any]:
    """Ratios of median rounds (``x_over_y`` = x's median / y's) and the issue's goals, each with its
    measured value and whether it is met (None where a system is missing). With ``rounds``, also that
    the loop form kept one worker per site for the job and the one-round form started a new one, with
    a new pid, for every task (``rounds`` training rounds and the final evaluation)."""
    get = {k: _ok(systems, k) for k in (s.key for s in systems)}
    plain, he = get.get("secagg-plain"), get.get("secagg-he")
    plain_1, he_1 = get.get("secagg-plain-one-round"), get.get("secagg-he-one-round")
    ratios: dict[str, float | None] = {
        "secagg_he_over_plain": _ratio(he, plain),
        "secagg_he_over_plain_one_round": _ratio(he_1, plain_1),
        "one_round_over_loop_plain": _ratio(plain_1, plain),
        "one_round_over_loop_he": _ratio(he_1, he),
    }
    for peer in PEER_NAMES:
        p = get.get(peer)
        ratios[f"secagg_plain_over_{peer}"] = _ratio(plain, p)
        ratios[f"secagg_he_over_{peer}"] = _ratio(he, p)
    goals: list[dict[str, Any]] = []
    for name, s in (("plain", plain), ("he", he)):
        goals.append(
            {
                "goal": f"secagg {name} median round <= {TARGET_MEDIAN_S} s (loop form)",
                "measured": s.median_round_s if s else None,
                "met": (s.median_round_s <= TARGET_MEDIAN_S) if s and s.median_round_s is not None else None,
            }
        )
    r = ratios["secagg_he_over_plain"]
    goals.append(
        {
            "goal": f"secagg he median round <= {TARGET_HE_OVER_PLAIN}x plain",
            "measured": r,
            "met": None if r is None else r <= TARGET_HE_OVER_PLAIN,
        }
    )
    nv = ratios["secagg_plain_over_nvflare"]
    goals.append(
        {
            "goal": "secagg plain median round <= 0.2x NVIDIA FLARE's (5x faster)",
            "measured": nv,
            "met": None if nv is None else nv <= 0.2,
        }
    )
    aucs = [s.final_auc for s in systems if s.status == "ok" and s.final_auc is not None]
    spread = (max(aucs) - min(aucs)) if aucs else None
    goals.append(
        {
            "goal": f"every system's final AUC within {AUC_TOLERANCE:g} of the others",
            "measured": spread,
            "met": None if spread is None else spread <= AUC_TOLERANCE,
        }
    )
    goals.append(_starts_goal(systems, "loop", 1, "after (loop form): 1 worker per site for the whole job"))
    want = None if rounds is None else rounds + 1
    goals.append(
        _starts_goal(
            systems,
            "one-round",
            want,
            f"before (one-round form): a new worker per task, {want or 'rounds + 1'} per site "
            "(the final evaluation included), distinct pids",
        )
    )
    return {"ratios": ratios, "goals": goals}


def _status(res: SystemResult) -> str:
    if res.status != "ok":
        return f"{res.status}: {res.reason}"
    return f"median round {_f(res.median_round_s)} s, whole run {_f(res.total_wall_s, '.1f')} s"


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def markdown(results: Mapping[str, Any]) -> str:
    systems = [SystemResult(**s) for s in results["systems"]]
    lines = [
        f"# secagg bench --demo-compare: the demo's job, {results['sites']} sites, "
        f"{results['rounds']} rounds",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, Python "
        f"{results['machine']['python']}; one run, systems one at a time ({results['started']}).",
        "",
        "| system | mode | round form | median round s | rounds s | total wall s | final AUC | "
        "max abs diff vs secagg plain | worker starts per site |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in systems:
        if s.status != "ok":
            lines.append(f"| {s.label} | {s.mode} | {s.form} | {s.status}: {s.reason} | | | | | |")
            continue
        starts = ", ".join(f"{k} {v}" for k, v in s.worker_starts.items()) or "-"
        label = s.label + (f" ({s.version})" if s.system != "secagg" and s.version else "")
        per_round = ", ".join(_f(x, ".2f") for x in s.per_round_s)
        diff = _f(s.max_abs_diff_vs_secagg_plain, ".2e")
        lines.append(
            f"| {label} | {s.mode} | {s.form} | **{_f(s.median_round_s)}** | {per_round} | "
            f"{_f(s.total_wall_s, '.1f')} | {_f(s.final_auc, '.5f')} | {diff} | {starts} |"
        )
    lines += ["", "| ratio of median rounds | value |", "|---|---|"]
    lines += [
        f"| {k.replace('_', ' ')} | {'-' if v is None else format(v, '.2f') + 'x'} |"
        for k, v in results["ratios"].items()
    ]
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    for g in results["goals"]:
        met = "-" if g["met"] is None else ("yes" if g["met"] else "**no**")
        lines.append(f"| {g['goal']} | {_f(g['measured'], '.3g')} | {met} |")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "torch": _version("torch"),
    }


# ------------------------------------------------------------------------------------- run ----
def run_demo_compare(
    out: Path,
    *,
    rounds: int,
    params: Mapping[str, Any],
    peers: Sequence[str] = PEER_NAMES,
    venvs: Path = Path("bench-out") / "peers",
    log: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Run every system, write ``results.json`` and ``results.md`` to ``out``; returns the results."""
    from secagg.demo.data import skewed_split

    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ConfigError(f"unknown peer {unknown[0]!r} (known: {', '.join(PEERS)})")
    sites = skewed_split(SITES)
    evaluate = _evaluator(sites)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    systems: list[SystemResult] = []
    finals: dict[str, dict[str, np.ndarray]] = {}
    for form in FORMS:
        for mode in MODES:
            key = f"secagg-{mode}" + ("-one-round" if form == "one-round" else "")
            log(f"{key}: secagg demo, {mode}, {form} form ...")
            res, final = run_secagg(
                out / key, mode=mode, form=form, rounds=rounds, sites=sites, params=params, log=log
            )
            systems.append(res)
            if final is not None:
                finals[key] = final
            log(f"{key}: {_status(res)}")
    for name in peers:
        log(f"{name}: {PEERS[name].label} ...")
        res, final = run_peer(
            out / name, PEERS[name], venvs=venvs, rounds=rounds, sites=sites, params=params, log=log
        )
        if final is not None:
            res.final_auc = evaluate(final)
            finals[name] = final
        systems.append(res)
        log(f"{name}: {_status(res)}")
    ref = finals.get("secagg-plain")
    for s in systems:
        if ref is not None and s.key in finals:
            s.max_abs_diff_vs_secagg_plain = max_abs_diff(finals[s.key], ref)
    results: dict[str, Any] = {
        "kind": "demo-compare",
        "started": started,
        "rounds": rounds,
        "sites": SITES,
        "params": dict(params),
        "machine": machine(),
        "peers": {
            n: {
                "label": PEERS[n].label,
                "requirements": pinned_requirements(PEERS[n]),
                "round": PEERS[n].note,
            }
            for n in peers
        },
        "systems": [s.to_dict() for s in systems],
        **summarize(systems, rounds),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    return results
