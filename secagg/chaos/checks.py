"""What every run is checked for afterwards (issue #18): rounds completed or refused with a reason,
the final model, the sites' privacy ledgers, every audit chain, and what was left behind."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secagg.chaos.job import expected_final
from secagg.chaos.run import Outcome
from secagg.events import Event
from secagg.reasons import Reason

#: how far each mode's final model may be from the exact FedAvg (float64) of the pure updates:
#: plain and tee sum float32 updates in float64; mask quantises to fixed point; he is CKKS
BOUND = {"plain": 1e-6, "tee": 1e-6, "mask": 1e-4, "he": 1e-4}
#: a mode whose result is a deterministic function of the uploads: a faulty run must match the
#: fault-free run bit for bit
DETERMINISTIC = frozenset({"plain", "tee"})
#: names that are never left behind by a finished run: temporary files of atomic writes and spools,
#: partial round results, lock and rollback-journal files
LEFTOVER_GLOBS = ("*.tmp", "*.part", "*.partial", "*.lock", "*-journal")


@dataclass
class Report:
    completed: int = 0
    lost: int = 0
    #: why rounds were lost or retried (refusals, retries, the job's failure) as ``event: reason``
    refusals: list[str] = field(default_factory=list)
    finished: bool = False
    model_ok: bool | None = None
    model_note: str = ""
    max_abs_err: float = float("nan")
    overspent: int = 0
    #: (site, round) debited more than once (each attempt's release is a spend: a cost, not an overspend)
    #: and debited with no upload of that round reaching the aggregator (a crash between the two)
    double_debits: list[str] = field(default_factory=list)
    unuploaded_debits: list[str] = field(default_factory=list)
    audit_ok: int = 0
    audit_total: int = 0
    audit_errors: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    #: processes that ended with an error of their own (not the injected kill): name, code, last line
    exit_errors: list[str] = field(default_factory=list)
    #: audit lines with the reason code ``internal``: a handler's net for an exception nobody
    #: expected, so a bug whatever the fault (RELIABILITY.md F17)
    internal: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.finished
            and self.lost == 0
            and self.model_ok is not False
            and self.overspent == 0
            and self.audit_ok == self.audit_total
            and not self.leftovers
            and not self.internal
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"ok": self.ok}


def records(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "?unreadable"})
    return out


def final_models(o: Outcome) -> dict[str, dict[str, np.ndarray]]:
    from secagg.bundle import from_safetensors

    got = {}
    for site in o.spec.names:
        found = sorted((o.state / site / "jobs").glob("*/final.safetensors"))
        if found:
            got[site] = dict(from_safetensors(found[-1].read_bytes()))
    return got


def check(o: Outcome, reference: dict[str, np.ndarray] | None = None) -> Report:
    r = Report()
    _rounds(o, r)
    _model(o, r, reference)
    _ledgers(o, r)
    _audit(o, r)
    _leftovers(o, r)
    return r


def _rounds(o: Outcome, r: Report) -> None:
    recs = records(o.state / "aggregator" / "audit.jsonl")
    done = {int(x["round"]) for x in recs if x.get("event") == Event.ROUND_COMPLETED}
    r.completed = len(done)
    r.finished = any(x.get("event") == Event.JOB_FINISHED for x in recs)
    r.lost = o.spec.rounds - r.completed
    for x in recs:
        if x.get("event") in (
            Event.ROUND_RETRY,
            Event.JOB_FAILED,
            Event.TASK_DECLINED,
            Event.UPLOAD_REJECTED,
        ):
            r.refusals.append(
                f"{x['event']} r{x.get('round', '?')}: {x.get('code', '')} {x.get('reason', '')}"
            )
    for node in ["aggregator", *o.spec.names]:
        for x in records(o.state / node / "audit.jsonl"):
            if x.get("code") == Reason.INTERNAL:
                r.internal.append(f"{node} {x.get('event')} r{x.get('round', '?')}: {x.get('reason', '')}")
    for site in o.spec.names:
        for x in records(o.state / site / "audit.jsonl"):
            if x.get("event") in (Event.ROUND_DECLINED, Event.JOB_REFUSED):
                r.refusals.append(
                    f"{site} {x['event']} r{x.get('round', '?')}: {x.get('code')} {x.get('reason')}"
                )
    if o.timed_out:
        r.refusals.append(f"run timed out after {o.seconds:.0f} s")
    for name, rc in o.exits:
        if rc in (0, -9) or rc is None:
            continue
        logs = sorted((o.out / "logs").glob(f"{name}.*.log"))
        lines = [x for x in logs[-1].read_text(errors="replace").splitlines() if x.strip()] if logs else []
        r.exit_errors.append(f"{name} exited {rc}: {lines[-1] if lines else '(no output)'}")


def _model(o: Outcome, r: Report, reference: dict[str, np.ndarray] | None) -> None:
    models = final_models(o)
    missing = [s for s in o.spec.names if s not in models]
    if missing:
        r.model_ok, r.model_note = False, f"no final model at {', '.join(missing)}"
        return
    first = next(iter(models.values()))
    if any(any(not np.array_equal(m[k], first[k]) for k in first) for m in models.values()):
        r.model_ok, r.model_note = False, "sites hold different final models"
        return
    if o.spec.dp:
        r.model_ok, r.model_note = None, "n/a: DP noise"
        return
    done = [
        x for x in records(o.state / "aggregator" / "audit.jsonl") if x.get("event") == Event.ROUND_COMPLETED
    ]
    exact = expected_final(
        o.spec.rounds, o.spec.names, {int(x["round"]): list(x["sites"]) for x in done}, o.spec.big
    )
    r.max_abs_err = max(float(np.max(np.abs(first[k].astype(np.float64) - exact[k]))) for k in exact)
    ok = r.max_abs_err <= BOUND[o.spec.mode]
    note = f"max |err| {r.max_abs_err:.2e} (bound {BOUND[o.spec.mode]:.0e})"
    if reference is not None and o.spec.mode in DETERMINISTIC:
        same = all(np.array_equal(first[k], reference[k]) for k in reference)
        ok = ok and same
        note += ", bit-identical to the fault-free run" if same else ", DIFFERS from the fault-free run"
    r.model_ok, r.model_note = ok, note


def _ledgers(o: Outcome, r: Report) -> None:
    from secagg.privacy.ledger import FILENAME, Ledger

    accepted = {
        (str(x.get("site")), str(x.get("job")), int(x["round"]))
        for x in records(o.state / "aggregator" / "audit.jsonl")
        if x.get("event") == Event.UPLOAD_ACCEPTED
    }
    for site in o.spec.names:
        path = o.state / site / FILENAME
        if not path.is_file():
            continue
        uploaded = {(job, rnd) for s, job, rnd in accepted if s == site}
        for dataset in Ledger.datasets(path):
            with Ledger(path, dataset) as ledger:
                eps, delta, _ = ledger.total()
                if eps > ledger.budget_epsilon + 1e-9 or delta > ledger.budget_delta + 1e-15:
                    r.overspent += 1
                debits = Counter((e.job, e.round) for e in {e.debit_id: e for e in ledger.entries()}.values())
                for (job, rnd), n in sorted(debits.items()):
                    if n > 1:
                        r.double_debits.append(f"{site} r{rnd} x{n}")
                    if (job, rnd) not in uploaded:
                        r.unuploaded_debits.append(f"{site} r{rnd}")


def _audit(o: Outcome, r: Report) -> None:
    """What ``secagg audit verify LOG --kit KIT`` checks, on every node's log: the same library call
    (hash chain, signed head, truncation) in this process, without a Python start-up per log. The
    harness calls the library, not the command, so that no layer below the CLI imports a command."""
    from secagg.auditlog import verify_audit
    from secagg.errors import SecaggError
    from secagg.provision.kit import load_kit

    for node in ["aggregator", *o.spec.names]:
        log = o.state / node / "audit.jsonl"
        if not log.exists():
            continue
        r.audit_total += 1
        try:
            verify_audit(log, cert=load_kit(o.workspace / node).cert, allow_missing_head=False)
        except SecaggError as exc:  # what the CLI prints as its one line, exiting non-zero
            r.audit_errors.append(f"{node}: secagg: {exc.code}: {exc}")
        else:
            r.audit_ok += 1


def _leftovers(o: Outcome, r: Report) -> None:
    """Temporary and partial files anywhere in the state folders, spooled uploads of the finished job
    (the spool is emptied as each round commits), and processes of this run still alive."""
    import psutil

    found: set[Path] = set()
    for pattern in LEFTOVER_GLOBS:
        found.update(o.state.rglob(pattern))
    spool = o.state / "aggregator" / "spool"
    if spool.is_dir():
        found.update(p for p in spool.rglob("*") if p.is_file())
    r.leftovers += sorted(str(p.relative_to(o.out)) for p in found)
    marker = str(o.out)
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.info["pid"] in mine:
                continue
            if any(marker in part for part in proc.info["cmdline"] or []):
                r.leftovers.append(f"process {proc.info['pid']} still running")
        except (psutil.Error, TypeError):
            continue
