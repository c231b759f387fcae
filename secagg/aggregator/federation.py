"""Round orchestration: the state machine the gRPC handlers feed and the driver thread advances.

A round has two phases. *Ready*: sites train, then post their sample count (and signed model
fingerprint); the aggregator waits for every site or, after the round timeout, for at least
``min_sites``. It then fixes the round's *roster* and announces normalised weights, so sites can
pre-weight their updates and the aggregator only ever adds. *Upload*: protected updates stream in and
are spooled to disk; after all roster sites (or the timeout with at least ``min_sites``) the spooled
uploads are combined. Sites that vanish after the roster is fixed do not bias the result: the
announced scale 1 / (sum of the uploaded weights) renormalises it. A round that ends with fewer
than ``min_sites`` uploads is run again as a new attempt; nothing of it is kept.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import tarfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secagg.aggregator.combine import (
    BadUpload,
    Combiner,
    HECombiner,
    PlainCombiner,
    TeeCombiner,
    plain_result_bundle,
)
from secagg.aggregator.masking import MaskRun
from secagg.aggregator.store import StateStore
from secagg.auditlog import AuditLog
from secagg.bundle import BundleSpec, fingerprint, from_safetensors
from secagg.errors import ConfigError, SecaggError, UpdateRejected
from secagg.fsio import atomic_write
from secagg.jobs.spec import JobSpec
from secagg.provision.kit import Kit
from secagg.roster import BadSampleCount, expected_weights, sample_count
from secagg.strategy import StrategyState, make_strategy

HE_KEY_BLOB = "he-key-release"


@dataclass
class RoundRun:
    round: int
    attempt: int
    started: float = field(default_factory=time.monotonic)
    phase: str = "ready"  # ready -> upload -> combining
    ready: dict[str, dict[str, Any]] = field(default_factory=dict)
    roster: dict[str, Any] | None = None
    uploads: dict[str, Path] = field(default_factory=dict)
    phase_started: float = field(default_factory=time.monotonic)
    mask: MaskRun | None = None  # mask mode: the masking phases after the roster
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # per site, sent with the upload


@dataclass
class JobRun:
    job_id: str
    spec: JobSpec
    package: Path
    bundle_spec: BundleSpec
    global_model: np.ndarray | None  # plaintext modes only
    strategy_state: StrategyState | None = None  # plaintext modes: the server optimizer's state
    completed: int = 0
    current: RoundRun | None = None
    state: str = "running"  # running -> finalizing -> finished | aborted | failed
    final_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    declined: set[str] = field(default_factory=set)  # sites that refused the job: not waited for
    finalize_started: float = 0.0


def package_bytes(job_dir: Path) -> bytes:
    """A deterministic tar.gz of a job folder (sorted, no owners, fixed mtimes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path in sorted(p for p in job_dir.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(path.relative_to(job_dir).as_posix())
            info.size = path.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


class Federation:
    """The aggregator's whole mutable state, guarded by one condition variable."""

    def __init__(
        self, kit: Kit, state_dir: Path, *, max_upload_bytes: int = 64 << 30, enclave: Any = None
    ) -> None:
        self.kit = kit
        #: tee mode: the in-enclave keys and attester (``secagg.tee.enclave.Enclave``); None outside a TEE
        self.enclave = enclave
        self.sites = list(kit.config.sites)
        self.state_dir = state_dir
        self.store = StateStore(state_dir)
        self.audit = AuditLog(state_dir / "audit.jsonl")
        self.max_upload_bytes = max_upload_bytes
        self.cond = threading.Condition()
        self.job: JobRun | None = None
        self.combiner: Combiner | None = None
        self.heartbeats: dict[str, float] = {}
        self.stopping = False
        self._resume()

    # ---------------------------------------------------------------- jobs
    def _resume(self) -> None:
        for row in self.store.jobs():
            if row.state == "running":
                spec = JobSpec.model_validate_json(row.spec_json)
                self._activate(row.job_id, spec, Path(row.package_path), resumed=True)
                return

    def submit(self, job_dir: Path, submitter: str, source: Path | None = None) -> str:
        """Accept a verified job folder and make it the running job; sites get the original package
        (``source``, a folder or .tar.gz with its signature) and verify it again themselves."""
        with self.cond:
            if self.job is not None and self.job.state in ("running", "finalizing"):
                raise ConfigError(f"job {self.job.job_id} is still running; abort it first")
        spec = JobSpec.model_validate(_load_yaml(job_dir / "job.yaml"))
        self._require_mode(spec.mode)
        job_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        job_root = self.state_dir / "jobs" / job_id
        job_root.mkdir(parents=True)
        pkg = job_root / "package.tar.gz"
        src = source or job_dir
        atomic_write(pkg, src.read_bytes() if src.is_file() else package_bytes(src))
        self.store.add_job(job_id, spec.name, submitter, spec.model_dump_json(), str(pkg))
        self.audit.append(
            "job_submitted", job=job_id, submitter=submitter, mode=spec.mode, rounds=spec.rounds
        )
        self._activate(job_id, spec, pkg, resumed=False)
        return job_id

    def _activate(self, job_id: str, spec: JobSpec, pkg: Path, *, resumed: bool) -> None:
        init = _read_member(pkg, spec.model)
        bundle = from_safetensors(init)
        bspec = BundleSpec.of(bundle)
        rounds = self.store.rounds(job_id)
        global_model: np.ndarray | None = None
        strategy_state: StrategyState | None = None
        if spec.mode != "he":
            global_model = bspec.flatten(bundle)
            if rounds:
                last = Path(rounds[-1].result_path)
                global_model = bspec.flatten(from_safetensors(last.read_bytes()))
                state_file = last.with_name(f"strategy-{rounds[-1].round}.bin")
                strategy_state = (
                    StrategyState.from_bytes(state_file.read_bytes()) if state_file.is_file() else None
                )
        combiner: Combiner
        if spec.mode == "he":
            release = self.store.get_blob(HE_KEY_BLOB)
            combiner = _LazyHE(bspec, self) if release is None else _he_combiner(bspec, release)
        elif spec.mode in ("plain", "mask"):
            combiner = PlainCombiner(bspec)  # mask: the masked sum lives in the round's MaskRun
        elif spec.mode == "tee":
            self._require_mode(spec.mode)
            combiner = TeeCombiner(bspec, self.enclave, job_id, round_of=_spool_round)
        else:
            raise ConfigError(f"mode {spec.mode!r} is not supported by this aggregator yet")
        with self.cond:
            self.job = JobRun(job_id, spec, pkg, bspec, global_model, strategy_state, completed=len(rounds))
            self.combiner = combiner
            if self.job.completed >= spec.rounds:
                self.job.state = "finalizing"
                self.job.finalize_started = time.monotonic()
            else:
                attempt = 1 + (1 if resumed else 0)
                self.job.current = RoundRun(self.job.completed + 1, attempt)
            self.cond.notify_all()
        self.audit.append(
            "job_resumed" if resumed else "job_started", job=job_id, round=self.job.completed + 1
        )

    def _require_mode(self, mode: str) -> None:
        """Refuse, before anything is written, a job this aggregator cannot run."""
        if mode == "tee" and self.enclave is None:
            raise ConfigError(
                "a tee job needs an aggregator started in a TEE (aggregator serve --tee configfs, "
                "or --insecure-dev-tee for demos)"
            )
        if mode not in ("plain", "he", "tee", "mask"):
            raise ConfigError(f"mode {mode!r} is not supported by this aggregator yet")

    def attest(self, site: str, job_id: str, nonce: bytes) -> bytes:
        """Evidence for ``site``'s fresh nonce, bound to the enclave keys and our TLS certificate."""
        if self.enclave is None:
            raise UpdateRejected("this aggregator does not run in a TEE", code="no_tee")
        from cryptography.hazmat.primitives.serialization import Encoding

        msg = self.enclave.answer_challenge(nonce, self.kit.cert.public_bytes(Encoding.DER))
        self.audit.append("attested", site=site, job=job_id)
        return bytes(msg.to_bytes())

    def abort(self, job_id: str, by: str) -> None:
        with self.cond:
            if self.job is None or self.job.job_id != job_id:
                raise ConfigError(f"no running job {job_id}")
            self.job.state = "aborted"
            self.job.current = None
            self.cond.notify_all()
        self.store.set_job_state(job_id, "aborted", reason=f"aborted by {by}")
        self.audit.append("job_aborted", job=job_id, by=by)

    # ---------------------------------------------------------------- site-facing operations
    def heartbeat(self, site: str) -> str:
        with self.cond:
            self.heartbeats[site] = time.time()
            return self.job.state if self.job else "idle"

    def next_task(
        self, site: str, after_round: int, after_attempt: int, has_global: int, wait_s: float
    ) -> dict[str, Any]:
        """Block until this site has something to do; return the task header (payload: see ``payload``)."""
        deadline = time.monotonic() + wait_s
        with self.cond:
            while True:
                task = self._task_for(site, after_round, after_attempt, has_global)
                if task is not None:
                    return task
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping:
                    return {"kind": "wait", "job_state": self.job.state if self.job else "idle"}
                self.cond.wait(timeout=min(left, 1.0))

    def _task_for(
        self, site: str, after_round: int, after_attempt: int, has_global: int
    ) -> dict[str, Any] | None:
        job = self.job
        if job is None:
            return None
        base = {"job_id": job.job_id, "mode": job.spec.mode, "rounds": job.spec.rounds}
        if job.state == "aborted":
            return {**base, "kind": "stop", "reason": "job aborted"}
        if job.state == "finished":
            return {**base, "kind": "stop", "reason": "job finished"} if after_round >= 0 else None
        if job.state == "finalizing":
            if site in job.final_metrics or after_round > job.spec.rounds:
                return None
            return {
                **base,
                "kind": "finalize",
                "round": job.spec.rounds + 1,
                "attempt": 1,
                **self._payload_header(has_global),
            }
        cur = job.current
        if cur is None or cur.phase != "ready" or site in cur.ready:
            return None
        if (after_round, after_attempt) >= (cur.round, cur.attempt):
            return None
        return {
            **base,
            "kind": "train",
            "round": cur.round,
            "attempt": cur.attempt,
            "min_sites": job.spec.min_sites,
            **self._payload_header(has_global),
        }

    def _payload_header(self, site_has_round: int) -> dict[str, Any]:
        """What the site needs to hold the current global model, given the last round it holds."""
        job = self.job
        assert job is not None
        rounds = self.store.rounds(job.job_id)
        if job.spec.mode == "he":
            have = max(site_has_round, 0)
            needed = [r for r in rounds if r.round > have]
            return {
                "base_round": have,
                "updates": [
                    {"round": r.round, "bytes": Path(r.result_path).stat().st_size, "scale": r.scale}
                    for r in needed
                ],
            }
        header: dict[str, Any] = {
            "base_round": job.completed,
            "global_bytes": len(self._plain_global_bytes()),
        }
        if job.spec.mode == "tee" and self.enclave is not None and job.global_model is not None:
            # sites check this signature, by a key bound into the evidence, before using the model
            fp = fingerprint(job.bundle_spec.unflatten(job.global_model))
            sig = self.enclave.sign_model(fp, job.job_id, job.completed)
            header["model_signature"] = base64.b64encode(sig).decode()
        return header

    def payload(self, header: dict[str, Any]) -> Any:
        """Yield the payload bytes for a task header made by ``_task_for``."""
        job = self.job
        if job is None or header.get("kind") not in ("train", "finalize"):
            return
        if job.spec.mode == "he":
            rows = {r.round: r for r in self.store.rounds(job.job_id)}
            for u in header["updates"]:
                with open(rows[u["round"]].result_path, "rb") as fh:
                    while piece := fh.read(1 << 22):
                        yield piece
        else:
            yield self._plain_global_bytes()

    def _plain_global_bytes(self) -> bytes:
        job = self.job
        assert job is not None and job.global_model is not None
        return plain_result_bundle(job.bundle_spec, job.global_model)

    def post_ready(self, site: str, job_id: str, round_: int, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
            raw_n = msg["n_samples"]
            attempt = int(msg["attempt"])
            signed = msg["fingerprint"]
        except (ValueError, KeyError, TypeError):
            raise UpdateRejected(
                "ready message is not valid JSON with n_samples, attempt and fingerprint", code="malformed"
            ) from None
        try:
            n = sample_count(raw_n)
        except BadSampleCount as exc:
            raise UpdateRejected(str(exc), code="bad_weight") from None
        if not isinstance(signed, dict) or signed.get("n_samples") != n:
            # the count sites weigh by is the signed one: a ready message saying another is malformed
            raise UpdateRejected(
                "ready message's n_samples differs from its signed sample count", code="malformed"
            )
        with self.cond:
            cur = self._current(job_id, round_)
            if cur.attempt != attempt or cur.phase != "ready":
                raise UpdateRejected(
                    f"round {round_} attempt {attempt} is not collecting readiness", code="late"
                )
            if site in cur.ready:
                raise UpdateRejected(f"{site} already declared ready in round {round_}", code="duplicate")
            cur.ready[site] = msg
            self.cond.notify_all()
        self.audit.append("site_ready", job=job_id, round=round_, site=site, n_samples=n)

    def decline(self, site: str, job_id: str, round_: int, code: str, message: str) -> None:
        self.store.add_declined(job_id, round_, site, code, message)
        with self.cond:
            if self.job is not None and self.job.job_id == job_id:
                self.job.declined.add(site)
                self.cond.notify_all()
        self.audit.append("task_declined", job=job_id, round=round_, site=site, code=code, reason=message)

    def roster(self, job_id: str, round_: int, wait_s: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + wait_s
        with self.cond:
            while True:
                cur = self._current(job_id, round_, strict=False)
                if cur is not None and cur.roster is not None:
                    return cur.roster
                if cur is None:
                    return {"cancelled": True}
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(timeout=min(left, 1.0))

    def _current(self, job_id: str, round_: int, strict: bool = True) -> RoundRun:
        job = self.job
        if job is None or job.job_id != job_id or job.state != "running":
            if strict:
                raise UpdateRejected(f"job {job_id} is not running", code="no_such_job")
            return None  # type: ignore[return-value]
        cur = job.current
        if cur is None or cur.round != round_:
            if strict:
                raise UpdateRejected(f"round {round_} is not the current round", code="wrong_round")
            return None  # type: ignore[return-value]
        return cur

    def begin_upload(self, site: str, header: dict[str, Any]) -> RoundRun:
        job_id, round_ = str(header.get("job_id")), int(header.get("round", -1))
        done = {r.round: r for r in self.store.rounds(job_id)}
        if round_ in done and site in done[round_].participants:
            raise UpdateRejected(f"{site} already uploaded in round {round_}", code="duplicate_upload")
        with self.cond:
            cur = self._current(job_id, round_)
            if site in cur.uploads:
                raise UpdateRejected(f"{site} already uploaded in round {round_}", code="duplicate_upload")
            if cur.phase != "upload" or cur.roster is None or header.get("attempt") != cur.attempt:
                raise UpdateRejected(f"round {round_} is not accepting uploads now", code="late")
            if site not in cur.roster["weights"]:
                raise UpdateRejected(f"{site} is not in the roster of round {round_}", code="not_in_roster")
            if site in cur.uploads:
                raise UpdateRejected(f"{site} already uploaded in round {round_}", code="duplicate_upload")
            return cur

    def finish_upload(
        self, site: str, cur: RoundRun, spooled: Path, metrics: dict[str, Any] | None = None
    ) -> None:
        assert self.combiner is not None
        if isinstance(metrics, dict):
            cur.metrics[site] = {str(k): float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        if cur.mask is not None:
            with self.cond:
                if cur.phase != "upload":
                    raise UpdateRejected("the round is not accepting masked inputs now", code="late")
                cur.mask.upload(site, spooled)
                cur.uploads[site] = spooled
                self.cond.notify_all()
            return
        self.combiner.check(spooled)
        with self.cond:
            if self.job is None or self.job.current is not cur or cur.phase != "upload":
                raise UpdateRejected("the round closed while the upload was streaming", code="late")
            if site in cur.uploads:
                raise UpdateRejected(f"{site} already uploaded in round {cur.round}", code="duplicate_upload")
            cur.uploads[site] = spooled
            self.cond.notify_all()

    def post_final(self, site: str, job_id: str, payload: bytes) -> None:
        try:
            metrics = json.loads(payload)
            if not isinstance(metrics, dict):
                raise ValueError
        except ValueError:
            raise UpdateRejected("final metrics must be a JSON object", code="malformed") from None
        with self.cond:
            if self.job is None or self.job.job_id != job_id or self.job.state != "finalizing":
                raise UpdateRejected(f"job {job_id} is not finalizing", code="late")
            self.job.final_metrics[site] = metrics
            self.cond.notify_all()
        self.audit.append("site_final", job=job_id, site=site)

    # ---------------------------------------------------------------- the driver
    def step(self) -> None:
        """Advance the state machine once (called in a loop by the driver thread)."""
        with self.cond:
            job = self.job
            if job is None:
                self.cond.wait(timeout=0.5)
                return
            if job.state == "finalizing":
                done = len(job.final_metrics) >= len(self.sites) - len(job.declined) or (
                    time.monotonic() - job.finalize_started > job.spec.round_timeout
                    and len(job.final_metrics) >= 1
                )
                if not done:
                    self.cond.wait(timeout=0.5)
                    return
                job.state = "finished"
                self.cond.notify_all()
                final = dict(job.final_metrics)
            else:
                final = None
        if final is not None:
            self.store.set_round_metrics(
                job.job_id, job.spec.rounds, {"final": final, **self._round_metrics(job.spec.rounds)}
            )
            self.store.set_job_state(job.job_id, "finished")
            self.audit.append("job_finished", job=job.job_id, rounds=job.spec.rounds)
            return
        with self.cond:
            cur = job.current
            if job.state != "running" or cur is None:
                self.cond.wait(timeout=0.5)
                return
            now = time.monotonic()
            timeout = job.spec.round_timeout
            mask_step = False
            if cur.phase == "ready":
                everyone = len(cur.ready) >= len(set(self.sites) - job.declined)
                enough = len(cur.ready) >= job.spec.min_sites and now - cur.phase_started > timeout
                if not (everyone or enough):
                    self.cond.wait(timeout=0.5)
                    return
                signed = {s: m["fingerprint"] for s, m in sorted(cur.ready.items())}
                cur.roster = {
                    "round": cur.round,
                    "attempt": cur.attempt,
                    # the same function every site checks these with, over the same signed counts
                    "weights": expected_weights(signed, signed),
                    "ready": signed,
                }
                cur.phase, cur.phase_started = "upload", now
                if job.spec.mode == "mask":
                    sites = sorted(cur.roster["weights"])
                    cur.mask = MaskRun.start(
                        job.spec.mask, sites, job.job_id, cur.round, job.bundle_spec.size
                    )
                    cur.phase = "mask"
                self.cond.notify_all()
                roster = cur.roster
            elif cur.mask is not None and cur.phase in ("mask", "upload"):
                roster = None
                mask_step = True
            elif cur.phase == "upload":
                assert cur.roster is not None
                everyone = len(cur.uploads) >= len(set(cur.roster["weights"]) - job.declined)
                expired = now - cur.phase_started > timeout
                if not (everyone or expired):
                    self.cond.wait(timeout=0.5)
                    return
                cur.phase = "combining"
                roster = None
            else:
                return
        if mask_step:
            self._step_mask(job, cur)
            return
        if roster is not None:
            self.audit.append(
                "roster",
                job=job.job_id,
                round=cur.round,
                attempt=cur.attempt,
                sites=sorted(roster["weights"]),
            )
            return
        self._combine(job, cur)

    def _combine(self, job: JobRun, cur: RoundRun) -> None:
        assert cur.roster is not None and self.combiner is not None
        uploads = dict(cur.uploads)
        result = self.state_dir / "jobs" / job.job_id / f"round-{cur.round}.bin"
        tmp = result.with_suffix(".partial")
        while len(uploads) >= job.spec.min_sites:
            try:
                self.combiner.combine([uploads[s] for s in sorted(uploads)], tmp)
                break
            except BadUpload as bad:
                site = next(s for s, p in uploads.items() if p == bad.path)
                del uploads[site]
                self.audit.append(
                    "upload_rejected",
                    job=job.job_id,
                    round=cur.round,
                    site=site,
                    code=getattr(bad.reason, "code", "error"),
                    reason=str(bad.reason),
                )
        if len(uploads) < job.spec.min_sites:
            self._retry(job, cur, f"{len(uploads)} valid uploads, the job needs {job.spec.min_sites}")
            return
        scale = 1.0 / sum(cur.roster["weights"][s] for s in uploads)
        if job.spec.mode == "he":
            atomic_write(result, source=tmp)
            self._complete(job, cur, result, scale, sorted(uploads), None)
            return
        assert isinstance(self.combiner, PlainCombiner)
        avg = self.combiner.load_sum(tmp) * scale
        tmp.unlink()
        self._complete(job, cur, result, scale, sorted(uploads), avg)

    def _retry(self, job: JobRun, cur: RoundRun, why: str) -> None:
        """Nothing of a failed round is kept; it runs again as a new attempt."""
        self.audit.append("round_retry", job=job.job_id, round=cur.round, attempt=cur.attempt, reason=why)
        self._discard_spool(job, cur)
        with self.cond:
            job.current = RoundRun(cur.round, cur.attempt + 1)
            self.cond.notify_all()

    def _complete(
        self, job: JobRun, cur: RoundRun, result: Path, scale: float, sites: list[str], avg: np.ndarray | None
    ) -> None:
        """Apply the strategy to the average update (where this aggregator may see it) and commit."""
        new_global = None
        if avg is not None:
            assert job.global_model is not None
            strategy = make_strategy(job.spec.strategy)
            state = job.strategy_state or strategy.init_state(job.global_model)
            new_global, state = strategy.apply(job.global_model, avg, state)
            atomic_write(result.with_name(f"strategy-{cur.round}.bin"), state.to_bytes())
            atomic_write(result, plain_result_bundle(job.bundle_spec, new_global))
            job.strategy_state = state
        seconds = time.monotonic() - cur.started
        self.store.add_round(
            job.job_id,
            cur.round,
            cur.attempt,
            str(result),
            scale,
            sites,
            self._round_metrics(cur.round - 1, cur),
            seconds,
        )
        self._discard_spool(job, cur)
        self.audit.append(
            "round_completed",
            job=job.job_id,
            round=cur.round,
            attempt=cur.attempt,
            sites=sites,
            seconds=round(seconds, 3),
        )
        with self.cond:
            job.completed = cur.round
            if new_global is not None:
                job.global_model = new_global
            if cur.round >= job.spec.rounds:
                job.current = None
                job.state = "finalizing"
                job.finalize_started = time.monotonic()
            else:
                job.current = RoundRun(cur.round + 1, 1)
            self.cond.notify_all()

    # ---------------------------------------------------------------- mask mode
    def _step_mask(self, job: JobRun, cur: RoundRun) -> None:
        """Advance the masking phases: every site of the phase, or the timeout with at least t."""
        m = cur.mask
        assert m is not None
        with self.cond:
            arrived, expected = m.arrived(), m.expected()
            expired = time.monotonic() - m.phase_started > job.spec.round_timeout
            if not (arrived >= expected or expired):
                self.cond.wait(timeout=0.5)
                return
            phase = m.phase
            try:
                if len(arrived) < m.config.threshold:
                    raise UpdateRejected(
                        f"only {len(arrived)} sites in phase {phase}, threshold {m.config.threshold}"
                    )
                outcome = m.advance()
            except SecaggError as exc:
                cur.phase = "combining"
                failed: str | None = f"{phase}: {exc}"
            else:
                failed = None
                if outcome is None:
                    cur.phase = "upload" if m.phase == "upload" else "mask"
                else:
                    cur.phase = "combining"
            self.cond.notify_all()
        self.audit.append("mask_phase", job=job.job_id, round=cur.round, phase=phase, sites=sorted(arrived))
        if failed is not None:
            self._retry(job, cur, failed)
            return
        if outcome is not None:
            total, weight = outcome
            if not weight > 0:
                self._retry(job, cur, "total weight of the survivors is zero")
                return
            result = self.state_dir / "jobs" / job.job_id / f"round-{cur.round}.bin"
            self._complete(job, cur, result, 1.0 / weight, sorted(m.uploaded), total / weight)

    def mask_post(self, site: str, topic: str, job_id: str, round_: int, payload: bytes) -> None:
        with self.cond:
            cur = self._current(job_id, round_)
            if cur.mask is None:
                raise UpdateRejected(f"round {round_} is not in a masking phase", code="late")
            cur.mask.post(site, topic, payload)
            self.cond.notify_all()

    def mask_collect(
        self, site: str, topic: str, job_id: str, round_: int, attempt: int, wait_s: float
    ) -> bytes | None:
        deadline = time.monotonic() + wait_s
        with self.cond:
            while True:
                cur = self._current(job_id, round_, strict=False)
                if cur is None or cur.mask is None or cur.attempt != attempt:
                    # the caller's attempt of this round is over (retried, or finished without it)
                    return json.dumps({"cancelled": True}).encode()
                box = cur.mask.published.get(topic)
                if box is not None and (site in box or "*" in box):
                    return box.get(site, box.get("*"))
                if box is not None:
                    return json.dumps({"not_for_you": True}).encode()
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(timeout=min(left, 1.0))

    def _round_metrics(self, of_round: int, cur: RoundRun | None = None) -> dict[str, Any]:
        """Site-reported validation metrics of the global model after ``of_round``."""
        if cur is None:
            return {}
        return {"evaluated_round": of_round, "sites": dict(cur.metrics)}

    def _discard_spool(self, job: JobRun, cur: RoundRun) -> None:
        shutil.rmtree(self.spool_dir(job.job_id, cur.round, cur.attempt), ignore_errors=True)

    def spool_dir(self, job_id: str, round_: int, attempt: int) -> Path:
        return self.state_dir / "spool" / job_id / f"{round_}-{attempt}"

    # ---------------------------------------------------------------- HE key custody relay
    def accept_key_release(self, site: str, payload: bytes) -> None:
        """Only the key holder may publish; the aggregator keeps the sealed release and the public part."""
        if site != self.kit.config.key_holder:
            raise UpdateRejected(f"{site} is not the project's HE key holder", code="not_key_holder")
        from secagg.he.custody import KeyRelease, verify_public_context

        release = KeyRelease.from_bytes(payload)
        verify_public_context(
            release.public_context,
            release.public_context_sig,
            release.holder_cert,
            self.kit.ca_cert,
            self.kit.config.key_holder,
            self.kit.config.project,
        )
        if self.store.get_blob(HE_KEY_BLOB) is not None:
            raise UpdateRejected("the HE key release is already published", code="duplicate")
        self.store.put_blob(HE_KEY_BLOB, payload)
        self.audit.append("he_key_published", holder=site, recipients=sorted(release.envelopes))
        with self.cond:
            self.cond.notify_all()

    def key_release(self, wait_s: float) -> bytes | None:
        deadline = time.monotonic() + wait_s
        with self.cond:
            while (blob := self.store.get_blob(HE_KEY_BLOB)) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(timeout=min(left, 1.0))
            return blob


class _LazyHE:
    """An ``he`` combiner that waits for the key holder to publish the public context."""

    mode = "he"

    def __init__(self, spec: BundleSpec, fed: Federation) -> None:
        self.spec, self.fed = spec, fed
        self._inner: HECombiner | None = None

    def _get(self) -> HECombiner:
        if self._inner is None:
            blob = self.fed.store.get_blob(HE_KEY_BLOB)
            if blob is None:
                raise UpdateRejected("no HE public context published yet", code="no_he_key")
            self._inner = _he_combiner(self.spec, blob)
        return self._inner

    def check(self, path: Path) -> None:
        self._get().check(path)

    def combine(self, uploads: Sequence[Path], out: Path) -> None:
        self._get().combine(uploads, out)


def _he_combiner(spec: BundleSpec, release_blob: bytes) -> HECombiner:
    from secagg.he.custody import KeyRelease

    return HECombiner(spec, KeyRelease.from_bytes(release_blob).public_context)


def _spool_round(path: Path) -> int:
    """Spool files live in ``spool/<job>/<round>-<attempt>/<site>.upload``."""
    return int(path.parent.name.split("-")[0])


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _read_member(pkg: Path, name: str) -> bytes:
    with tarfile.open(pkg, "r:gz") as tar:
        member = tar.extractfile(name)
        if member is None:
            raise ConfigError(f"job package has no file {name}")
        return member.read()


__all__ = ["Federation", "SecaggError"]
