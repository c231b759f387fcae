"""The local federation engine behind ``secagg simulate`` and ``secagg demo``: any job folder, N sites
on this machine, every part a real process on 127.0.0.1 over mTLS.

It does what an operator and a submitter would do by hand, with throwaway material: provision a project
(one aggregator, N sites, one submitter), copy the job folder and sign the copy with the submitter's
kit, write permissive development policies for the sites not given one, then start
``secagg aggregator serve`` and N ``secagg agent run`` processes and watch them until the job ends. The
user's job folder is only read: what runs is a signed copy under ``OUT/job`` (with the run's mode and
rounds written into its ``job.yaml``), so the same folder can be signed and submitted to a real
deployment unchanged.

The demo is this engine on its bundled job and data (:func:`secagg.demo.run.run_federation`); it adds
only what needs the data it made (the central AUC). Its cross-site matrix is the federated one: the
bundled job asks for ``evaluation: cross_site`` and the engine reads what the aggregator wrote.

A new user's mistakes end the run early with one line (:class:`SecaggError` subclasses, each with its
reason code): no ``job.yaml``, a model file that is not safetensors, a missing data folder, a script that
raises (its traceback's last lines and the log), a script that never calls ``client.send``. The last two
are what a site's agent records when it declines a round (``round_declined`` in its audit log); the
engine reads those records instead of waiting for the round to time out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from secagg import safeyaml
from secagg.crossval.matrix import Matrix
from secagg.crossval.matrix import read as read_matrix
from secagg.errors import ConfigError, SecaggError
from secagg.events import Event
from secagg.jobs.spec import JobSpec
from secagg.modes import NAMES, traits
from secagg.reasons import Reason

JOB_FILE = "job.yaml"
#: the signer of the simulator's throwaway job signature (a site's own ``--policy`` must trust it)
SIMULATE_SUBMITTER = "submitter@simulate"
#: the modes a local federation can run end to end (attested ones with the INSECURE software dev-TEE)
RUNNABLE_MODES: tuple[str, ...] = NAMES
#: files of a signed folder that the copy is re-signed without
_SIGNATURE_FILES = ("manifest.json", "manifest.sig", "manifest.sigstore.json")
SAVE_HINT = 'safetensors.torch.save_file(model.state_dict(), "model.safetensors")'


def dev_policy(submitter: str) -> str:
    """A permissive development site policy: trusts ``submitter``, allows every runnable mode (the
    dev-TEE is a software stand-in that protects nothing: local runs only) and shares the site's local
    model for a job's cross-site evaluation. Real sites write their own (see policies/)."""
    return f"""\
version: 1
signers:
  submitters: [{submitter}]
modes: [{", ".join(RUNNABLE_MODES)}]
privacy:
  share_local_model_for_evaluation: true
attestation:
  types: [dev-tee]
  allow_insecure_dev_tee: true
  max_age_s: 3600
limits:
  max_rounds: 100
  min_sites_per_round: 2
"""


# ----------------------------------------------------------------------------------- errors ----
class SimulationFailed(SecaggError):
    """The local federation did not finish (a process died, a site refused, time ran out)."""

    code = Reason.SIMULATION_FAILED


class NoJobFile(ConfigError):
    code = Reason.NO_JOB_FILE


class ModelNotSafetensors(ConfigError):
    code = Reason.MODEL_NOT_SAFETENSORS


class DataMissing(ConfigError):
    code = Reason.DATA_MISSING


class ScriptFailed(SecaggError):
    """The job's training script raised (or exited non-zero) at a site."""

    code = Reason.SCRIPT_FAILED


class NoUpdate(SecaggError):
    """The job's training script finished a training task without calling ``client.send``."""

    code = Reason.NO_UPDATE


# ------------------------------------------------------------------------------ the inputs ----
@dataclass(frozen=True)
class SimSite:
    """One simulated site: its data folder, its own policy (None: the development policy) and, for
    mask-mode demos, the round in which it vanishes before uploading."""

    name: str
    data: Path
    policy: Path | None = None
    drop_round: int | None = None


def load_job_folder(folder: Path) -> JobSpec:
    """The job's settings, with a new user's usual mistakes refused as one line each."""
    from secagg.bundle import from_safetensors
    from secagg.jobs.job import parse_spec

    if not folder.is_dir():
        raise NoJobFile(f"{folder} is not a job folder (make one with: secagg job init {folder})")
    if not (folder / JOB_FILE).is_file():
        raise NoJobFile(
            f"{folder} has no {JOB_FILE}: a job folder holds job.yaml, the training script and the "
            f"model (start one with: secagg job init DIR)"
        )
    spec = parse_spec((folder / JOB_FILE).read_bytes(), source=str(folder / JOB_FILE))
    entry = folder / spec.entry
    if not entry.is_file():
        raise ConfigError(f"{folder / JOB_FILE}: entry {spec.entry!r} is not a file of {folder}")
    model = folder / spec.model
    if not model.is_file():
        raise ModelNotSafetensors(
            f"{folder / JOB_FILE}: model {spec.model!r} is not a file of {folder}; make it from your "
            f"model with {SAVE_HINT}"
        )
    data = model.read_bytes()
    try:
        bundle = from_safetensors(data)
    except SecaggError:
        kind = " (it looks like a torch.save pickle)" if data[:2] == b"PK" or data[:1] == b"\x80" else ""
        raise ModelNotSafetensors(
            f"{model} is not a safetensors file{kind}; make one from a state_dict with {SAVE_HINT}"
        ) from None
    if not bundle:
        raise ModelNotSafetensors(f"{model} holds no tensors; write the model's state_dict into it")
    return spec


def check_data(sites: Sequence[SimSite]) -> None:
    """Every site's data folder exists (the agent would refuse it only after every process started)."""
    for s in sites:
        if not s.data.is_dir():
            what = "is not a folder" if s.data.exists() else "does not exist"
            raise DataMissing(f"data folder for {s.name} {what}: {s.data}")


def prepare_job(
    src: Path,
    dest: Path,
    *,
    n_sites: int,
    mode: str | None = None,
    rounds: int | None = None,
    min_sites: int | None = None,
    round_timeout: float | None = None,
) -> JobSpec:
    """Copy the job folder to ``dest`` (without an old signature) and write the run's settings into the
    copy's job.yaml: ``mode`` and ``rounds`` when given, ``min_sites`` at most the sites there are, and
    mask settings sized for ``n_sites`` when the job runs in a masked mode without its own."""
    from secagg.jobs.job import parse_spec

    spec = load_job_folder(src)
    # links stay links: signing the copy refuses them as signing the folder for a deployment would
    ignore = shutil.ignore_patterns(*_SIGNATURE_FILES, "__pycache__", "*.pyc")
    shutil.copytree(src, dest, symlinks=True, ignore=ignore)
    raw: dict[str, Any] = safeyaml.load_file(src / JOB_FILE, what=JOB_FILE)  # parse_spec checked it
    changes: dict[str, Any] = {}
    if mode is not None and mode != spec.mode:
        changes["mode"] = mode
    if rounds is not None and rounds != spec.rounds:
        changes["rounds"] = rounds
    want_min = min(spec.min_sites, n_sites) if min_sites is None else min_sites
    if want_min != spec.min_sites:
        changes["min_sites"] = want_min
    if round_timeout is not None and round_timeout != spec.round_timeout:
        changes["round_timeout"] = round_timeout
    if traits(mode or spec.mode).masked and spec.mask is None:
        from secagg.mask.job import mask_config

        cfg = mask_config(None, n_sites)
        changes["mask"] = {"threshold": cfg.threshold, "neighbours": cfg.neighbours, "clip": 1.0}
    if not changes:
        return spec
    raw.update(changes)
    text = yaml.safe_dump(raw, sort_keys=False)
    (dest / JOB_FILE).write_text(text)
    return parse_spec(text.encode(), source=str(dest / JOB_FILE))


# ------------------------------------------------------------------------------ the result ----
@dataclass
class Federation:
    """A finished local federation: where everything is, and what the aggregator recorded."""

    out: Path
    job: Path  #: the signed copy that ran
    spec: JobSpec
    sites: list[str]
    job_id: str
    #: per round: ``round``, ``participants``, ``seconds`` and ``metrics`` (the mean over the sites of
    #: what each reported for the global model after that round; empty where none reported)
    per_round: list[dict[str, Any]]
    seconds: float
    #: each site's training log, copied to ``OUT/logs/SITE.train.log``
    train_logs: dict[str, Path] = field(default_factory=dict)
    #: the mean over the sites of what each reported for the initial model (round 1's evaluation)
    initial_metrics: dict[str, float] = field(default_factory=dict)
    #: ``evaluation: cross_site``: the matrix the aggregator wrote (None for other jobs, or none written)
    cross_site: Matrix | None = None

    @property
    def state(self) -> Path:
        return self.out / "state"

    def site_job_dir(self, site: str) -> Path:
        return self.state / site / "jobs" / self.job_id

    def global_model(self, round_: int, site: str | None = None) -> OrderedDict[str, np.ndarray]:
        """The global model after ``round_`` as ``site`` (default: the first) holds it."""
        from secagg.bundle import from_safetensors

        d = self.site_job_dir(site or self.sites[0])
        name = "final.safetensors" if round_ >= self.spec.rounds else f"global-{round_}.safetensors"
        return from_safetensors((d / name).read_bytes())

    @property
    def final_model(self) -> OrderedDict[str, np.ndarray]:
        return self.global_model(self.spec.rounds)


# ------------------------------------------------------------------------------ the engine ----
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_job(
    job_src: Path,
    out: Path,
    sites: Sequence[SimSite],
    *,
    mode: str | None = None,
    rounds: int | None = None,
    min_sites: int | None = None,
    round_timeout: float | None = None,
    submitter: str = SIMULATE_SUBMITTER,
    default_policy: str | None = None,
    project: str = "simulate",
    log: Callable[[str], object] = print,
    failed: type[SecaggError] = SimulationFailed,
    timeout: float = 900,
) -> Federation:
    """Run ``job_src`` on ``sites`` in ``out`` (workspace/, job/, policies/, logs/, state/).

    ``default_policy`` is the policy text of the sites without their own (default: :func:`dev_policy`
    for ``submitter``); ``failed`` is the error class of a federation that did not finish."""
    from secagg.jobs.sign import sign_job
    from secagg.provision.kit import load_kit
    from secagg.provision.project import AdminSpec, AggregatorSpec, Project, SiteSpec
    from secagg.provision.writer import provision

    if len(sites) < 2:
        raise ConfigError("a federation needs at least 2 sites")
    names = [s.name for s in sites]
    load_job_folder(job_src)
    check_data(sites)
    out.mkdir(parents=True, exist_ok=True)
    drops = {s.name: s.drop_round for s in sites if s.drop_round is not None}
    spec = prepare_job(
        job_src,
        out / "job",
        n_sites=len(sites),
        mode=mode,
        rounds=rounds,
        min_sites=min_sites,
        round_timeout=round_timeout,
    )
    if spec.mode not in RUNNABLE_MODES:
        raise failed(f"mode {spec.mode} cannot run locally (runnable: {', '.join(RUNNABLE_MODES)})")
    org = submitter.partition("@")[2] or "local"
    ws = out / "workspace"
    provision(
        Project(
            name=f"{project}-{spec.mode}",
            aggregator=AggregatorSpec(host="127.0.0.1", port=free_port()),
            sites=[SiteSpec(name=n, org=f"org-{n}") for n in names],
            admins=[AdminSpec(name=submitter, org=org, role="lead")],
            key_holder=names[0],
        ),
        ws,
        force=True,
    )
    sign_job(out / "job", load_kit(ws / submitter))
    policies = write_policies(out / "policies", sites, default_policy or dev_policy(submitter))
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    agg_state = out / "state" / "aggregator"
    cli = [sys.executable, "-m", "secagg.cli"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    started = time.monotonic()
    try:
        agg = [
            *cli,
            "aggregator",
            "serve",
            "--kit",
            str(ws / "aggregator"),
            "--state",
            str(agg_state),
            "--job",
            str(out / "job"),
            "--host",
            "127.0.0.1",
            "--exit-when-done",
            *(["--insecure-dev-tee"] if traits(spec.mode).attested else []),
        ]
        procs.append(("aggregator", start_logged(agg, logs / "aggregator.log", env)))
        for s in sites:
            agent = [
                *cli,
                "agent",
                "run",
                "--kit",
                str(ws / s.name),
                "--data",
                str(s.data),
                *(["--simulate-dropout", f"{drops[s.name]}:upload"] if s.name in drops else []),
                "--state",
                str(out / "state" / s.name),
                "--policy",
                str(policies[s.name]),
            ]
            procs.append((s.name, start_logged(agent, logs / f"{s.name}.log", env)))
        _Watch(out, spec, procs, log, failed, timeout, logs).run()
    finally:
        stop_processes(procs)
        train_logs = _copy_train_logs(out, names)
    seconds = time.monotonic() - started
    job_id = _job_id(agg_state)
    rows = _rounds(agg_state)
    initial = (
        _mean(rows[0].metrics.get("sites")) if rows and rows[0].metrics.get("evaluated_round") == 0 else {}
    )
    per_round = _per_round(agg_state, spec.rounds)
    matrix = read_matrix(agg_state / "jobs" / job_id) if job_id else None
    return Federation(out, out / "job", spec, names, job_id, per_round, seconds, train_logs, initial, matrix)


def write_policies(folder: Path, sites: Sequence[SimSite], default: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for s in sites:
        if s.policy is not None:
            out[s.name] = s.policy
            continue
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{s.name}.yaml"
        path.write_text(default)
        out[s.name] = path
    return out


def start_logged(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)  # noqa: S603


def stop_processes(procs: Sequence[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for _, p in procs:
        if p.poll() is None:
            p.terminate()
    for _, p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _copy_train_logs(out: Path, sites: Sequence[str]) -> dict[str, Path]:
    """Each site's training log (the job's stdout and stderr there) as ``OUT/logs/SITE.train.log``."""
    copied: dict[str, Path] = {}
    for site in sites:
        found = sorted((out / "state" / site / "jobs").glob("*/train.log"))
        if found:
            dest = out / "logs" / f"{site}.train.log"
            dest.write_bytes(b"".join(p.read_bytes() for p in found))
            copied[site] = dest
    return copied


class _Watch:
    """Follow the federation: print each completed round, fail fast on a site's declined round, a dead
    process or the deadline."""

    def __init__(
        self,
        out: Path,
        spec: JobSpec,
        procs: list[tuple[str, subprocess.Popen[bytes]]],
        log: Callable[[str], object],
        failed: type[SecaggError],
        timeout: float,
        logs: Path,
    ) -> None:
        self.out, self.spec, self.procs, self.log = out, spec, procs, log
        self.failed, self.timeout, self.logs = failed, timeout, logs
        self.agg_state = out / "state" / "aggregator"

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        seen = 0
        while time.monotonic() < deadline:
            done = _rounds(self.agg_state)
            for r in done[seen:]:
                self.log(
                    f"  round {r.round}/{self.spec.rounds} aggregated from {len(r.participants)} sites "
                    f"in {r.seconds:.1f} s"
                )
            seen = len(done)
            self._declines()
            codes = {name: p.poll() for name, p in self.procs}
            bad = {n: c for n, c in codes.items() if c not in (None, 0)}
            if bad:
                self._declines()  # a site that refused says why in its audit log before it exits
                name = next(iter(bad))
                tail = (self.logs / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise self.failed(f"{name} exited with {bad[name]}: {' | '.join(tail)}")
            if all(c == 0 for c in codes.values()):
                return
            time.sleep(0.3)
        raise self.failed(f"federation did not finish within {self.timeout:.0f} s; logs in {self.logs}")

    def _declines(self) -> None:
        """A site that declined a round or refused the job: why, as one line."""
        for name, _ in self.procs[1:]:
            audit = self.out / "state" / name / "audit.jsonl"
            if not audit.is_file():
                continue
            for line in audit.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if rec.get("event") in (Event.ROUND_DECLINED, Event.JOB_REFUSED):
                    raise self._explain(name, rec)

    def _explain(self, site: str, rec: dict[str, Any]) -> SecaggError:
        code, reason = str(rec.get("code", "")), str(rec.get("reason", ""))
        if rec.get("event") == Event.JOB_REFUSED:
            return self.failed(f"{site} refused the job: {code}: {reason}")
        if not code.startswith("training_") and code != Reason.NO_UPDATE:
            return self.failed(f"{site} declined round {rec.get('round', '?')}: {code}: {reason}")
        logs = _copy_train_logs(self.out, [site])
        train_log = logs.get(site, self.out / "state" / site / "jobs")
        entry = self.spec.entry
        if code == Reason.NO_UPDATE:
            return NoUpdate(
                f"{site}: {entry} finished round {rec.get('round', '?')} without calling client.send() "
                f"(a training task must end with client.send(model.state_dict(), num_samples=N)); "
                f"log: {train_log}"
            )
        text = train_log.read_text(errors="replace") if train_log.is_file() else ""
        own = [p.name for p in (self.out / "job").rglob("*.py")]
        tail = traceback_tail(text, own) or reason
        return ScriptFailed(f"{site}: {entry} failed: {tail}; log: {train_log}")


_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+)(?:, in (.+))?$')


def traceback_tail(text: str, own_files: Sequence[str] = ()) -> str:
    """The last traceback in a log as one line: the exception and the line of the job's own code that
    raised it (the deepest frame in a file named in ``own_files``; else the deepest frame)."""
    lines = text.splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("Traceback ")), default=None)
    if start is None:
        return ""
    body = lines[start + 1 :]
    exc = next((line for line in body if line and not line.startswith((" ", "\t"))), "")
    frames = [m for m in (_FRAME.match(line) for line in body) if m]
    where = ""
    if frames:
        own = [m for m in frames if Path(m.group(1)).name in own_files]
        f = (own or frames)[-1]
        where = f" at {Path(f.group(1)).name} line {f.group(2)}" + (
            f", in {f.group(3)}" if f.group(3) else ""
        )
    return f"{exc.strip()}{where}"


def _rounds(agg_state: Path) -> list[Any]:
    from secagg.aggregator.store import StoreUnavailable, StoreView

    try:
        with StoreView(agg_state) as store:
            return list(store.rounds())
    except StoreUnavailable:
        return []


def _job_id(agg_state: Path) -> str:
    rows = _rounds(agg_state)
    if rows:
        return str(rows[0].job_id)
    jobs = sorted((agg_state / "jobs").iterdir()) if (agg_state / "jobs").is_dir() else []
    return jobs[0].name if jobs else ""


def _mean(sites: Any) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for m in (sites or {}).values():
        for k, v in (m or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
                values.setdefault(str(k), []).append(float(v))
    return {k: float(np.mean(vs)) for k, vs in sorted(values.items())}


def _per_round(agg_state: Path, rounds: int) -> list[dict[str, Any]]:
    """Rounds as the aggregator recorded them. A site reports metrics of the global model it trains
    from, so round r+1's metrics describe the model after round r; the last model's come from the
    final evaluation."""
    rows = {r.round: r for r in _rounds(agg_state)}
    out = []
    for r in range(1, rounds + 1):
        row = rows.get(r)
        if row is None:
            continue
        nxt = rows.get(r + 1)
        if r == rounds:
            metrics = _mean(row.metrics.get("final"))
        elif nxt is not None and nxt.metrics.get("evaluated_round") == r:
            metrics = _mean(nxt.metrics.get("sites"))
        else:
            metrics = {}
        out.append(
            {"round": r, "participants": list(row.participants), "seconds": row.seconds, "metrics": metrics}
        )
    return out


def check_policy(site: str, path: Path, mode: str, submitter: str = SIMULATE_SUBMITTER) -> None:
    """Refuse (ConfigError) a site's own policy that would refuse the run's job: checked before any
    process starts, instead of a refusal once the federation is up."""
    from secagg.policy import load_policy

    policy = load_policy(path)
    if submitter not in policy.signers.submitters:
        raise ConfigError(
            f"policy {path} for {site} does not trust the local run's job signer: "
            f"add {submitter} to signers.submitters"
        )
    if mode not in policy.modes:
        raise ConfigError(f"policy {path} for {site} does not allow mode {mode} (it allows {policy.modes})")
