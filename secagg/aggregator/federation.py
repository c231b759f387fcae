"""Round orchestration: the state machine the gRPC handlers feed and the driver thread advances.

A round has two phases. *Ready*: sites train, then post their sample count (and signed model
fingerprint); the aggregator waits for every site or, after the round timeout, for at least
``min_sites``. It then fixes the round's *roster* and announces normalised weights, so sites can
pre-weight their updates and the aggregator only ever adds. *Upload*: protected updates stream in and
are spooled to disk; after all roster sites (or the timeout with at least ``min_sites``) the spooled
uploads are combined. Sites that vanish after the roster is fixed do not bias the result: the
announced scale 1 / (sum of the uploaded weights) renormalises it. A round that ends with fewer
than ``min_sites`` uploads is run again as a new attempt; nothing of it is kept.

What differs per aggregation mode (what a task carries, how an upload is checked, how a round is
summed, phases of its own) is the mode object's (:mod:`secagg.aggregator.modes`); this module has no
branch on the mode. Uploads are spooled by :mod:`secagg.aggregator.spool`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from secagg import safeyaml
from secagg.aggregator.evaluation import CrossSite, cross_site, receive_sealed
from secagg.aggregator.global_model import GlobalModel, extract_model, model_spec
from secagg.aggregator.global_model import from_model_file as global_from_file
from secagg.aggregator.global_model import resume as resume_global
from secagg.aggregator.modes import BadUpload, ModeBase, ModeContext, Step, mode_class
from secagg.aggregator.modes.he import HE_KEY_BLOB
from secagg.aggregator.modes.windows import mapped_window, window_elements
from secagg.aggregator.rounds import JobRun, JobState, Phase, RoundRun, Signal, refused_for_good, retry_delay
from secagg.aggregator.rpc import UploadHeader, final_metrics, int_field, json_object, upload_header
from secagg.aggregator.server_step import AverageWindows, StateFile, server_step
from secagg.aggregator.shared import Shared
from secagg.aggregator.store import JobRow
from secagg.auditlog import check_head_signature, parse_head
from secagg.crossval import wire
from secagg.errors import ConfigError, SecaggError, StorageFull, UpdateRejected, is_storage_full
from secagg.events import Event
from secagg.fsio import atomic_write, remove_stale_temps
from secagg.jobs.job import JOB_FILE, JOB_YAML_MAX_BYTES, parse_spec
from secagg.jobs.spec import JobSpec
from secagg.provision.identity import Identity
from secagg.provision.kit import Kit
from secagg.reasons import Reason
from secagg.roster import BadSampleCount, expected_weights, sample_count
from secagg.strategy import make_strategy
from secagg.transport.chunks import copy_payload

log = logging.getLogger(__name__)


def write_package(job_dir: Path, out: BinaryIO) -> None:
    """A deterministic tar.gz of a job folder (sorted, no owners, fixed mtimes), written to ``out`` as
    it is made (a job with a large model is never whole in memory)."""
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=6) as tar:
        for path in sorted(p for p in job_dir.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(path.relative_to(job_dir).as_posix())
            info.size = path.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            with path.open("rb") as fh:
                tar.addfile(info, fh)


class Federation:
    """One job's mutable state (its rounds, roster, mode object, combiner), guarded by a condition
    variable. Built over a :class:`~secagg.aggregator.shared.Shared` (the store, audit log, spool and
    lock every job of the aggregator shares), one Federation runs per job and the scheduler
    (:mod:`secagg.aggregator.scheduler`) decides which run; built without one, it opens its own and
    resumes the job that was running (a single-job aggregator)."""

    def __init__(
        self,
        kit: Kit,
        state_dir: Path,
        *,
        max_upload_bytes: int = 64 << 30,
        enclave: Any = None,
        shared: Shared | None = None,
    ) -> None:
        self.kit = kit
        #: tee mode: the in-enclave keys and attester (``secagg.tee.enclave.Enclave``); None outside a TEE
        self.enclave = enclave
        self.sites = list(kit.config.sites)
        self.state_dir = state_dir
        own = shared is None
        shared = shared or Shared.open(kit, state_dir)
        self.store = shared.store
        self.audit = shared.audit
        self.max_upload_bytes = max_upload_bytes
        self.spool = shared.spool
        self.cond = shared.cond
        self.job: JobRun | None = None
        #: the running job's mode object (see ``secagg.aggregator.modes``)
        self.mode: ModeBase | None = None
        self.heartbeats = shared.heartbeats
        #: set when the service stops: the driver and every long wait end at once (an Event, not a sleep)
        self.stop_event = shared.stop_event
        #: audit lines of committed steps that a full disk held back (written first once it has space)
        self._deferred: list[tuple[Event, dict[str, Any]]] = []
        if own:
            self._resume()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    @stopping.setter
    def stopping(self, value: bool) -> None:
        if value:
            self.stop_event.set()
        else:
            self.stop_event.clear()

    # ---------------------------------------------------------------- jobs
    def _resume(self) -> None:
        for row in self.store.jobs():
            if row.state == JobState.RUNNING:
                with contextlib.suppress(ConfigError):  # failed and audited by resume
                    self.resume(row)
                return

    def resume(self, row: JobRow) -> None:
        """Take up a job the store says was running when the aggregator stopped. One that cannot go
        on here (a tee job whose sealed keys this enclave cannot open) fails, with its reason and
        audit line, and the aggregator serves on (raises the ``ConfigError`` that says so); a full disk
        is not such a reason."""
        spec = JobSpec.model_validate_json(row.spec_json)
        try:
            self._activate(row.job_id, spec, Path(row.package_path), resumed=True)
        except Exception as exc:  # noqa: BLE001 - recorded and audited: the job failed, not the aggregator
            if is_storage_full(exc):
                raise  # passing: the aggregator starts again once there is space, the job intact
            raise self._start_failed(row.job_id, exc) from None

    def start_queued(self, row: JobRow) -> None:
        """Start a job that waited in the queue (the scheduler calls this when a slot is free). A job
        that cannot start fails, with its reason and audit line, as at submission."""
        self.store.set_job_state(row.job_id, JobState.RUNNING)
        try:
            self._activate(
                row.job_id, JobSpec.model_validate_json(row.spec_json), Path(row.package_path), resumed=False
            )
        except Exception as exc:  # noqa: BLE001 - recorded and audited: the job failed, not the aggregator
            raise self._start_failed(row.job_id, exc) from None

    def live_job(self, job_id: str) -> JobRun | None:
        """This Federation's job if it is ``job_id`` (the admin console's view of a running job)."""
        job = self.job
        return job if job is not None and job.job_id == job_id else None

    def submit(self, job_dir: Path, submitter: str, source: Path | None = None, *, start: bool = True) -> str:
        """Accept a verified job folder and make it the running job; sites get the original package
        (``source``, a folder or .tar.gz with its signature) and verify it again themselves. With
        ``start`` False the job is recorded as queued (``job_queued``) and started later by
        :meth:`start_queued`: it is checked and kept exactly as a job that starts at once."""
        with self.cond:
            if self.job is not None and self.job.state in (JobState.RUNNING, JobState.FINALIZING):
                raise ConfigError(f"job {self.job.job_id} is still running; abort it first")
        # through the one hardened loader and the job.yaml ranges (an alias bomb is refused here)
        spec = parse_spec(safeyaml.read_file(job_dir / JOB_FILE, JOB_YAML_MAX_BYTES, JOB_FILE), JOB_FILE)
        self._require_mode(spec.mode)
        job_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        job_root = self.state_dir / "jobs" / job_id
        job_root.mkdir(parents=True)
        pkg = job_root / "package.tar.gz"
        src = source or job_dir
        try:
            tmp = pkg.with_name(f".{pkg.name}.tmp")
            if src.is_file():
                shutil.copyfile(src, tmp)
            else:
                with tmp.open("wb") as out:
                    write_package(src, out)
            atomic_write(pkg, source=tmp)  # streamed: the package is never whole in memory
            _read_model(pkg, spec.model)  # a model that does not load is refused before anything is kept
        except BaseException:
            shutil.rmtree(job_root, ignore_errors=True)
            raise
        self._record_submission(
            job_id, spec, submitter, pkg, job_root, JobState.RUNNING if start else JobState.QUEUED
        )
        if not start:
            self.audit.append(Event.JOB_QUEUED, job=job_id)
            return job_id
        try:
            self._activate(job_id, spec, pkg, resumed=False)
        except Exception as exc:  # noqa: BLE001 - recorded and audited: the job failed, not the aggregator
            raise self._start_failed(job_id, exc) from None
        return job_id

    def _start_failed(self, job_id: str, exc: Exception) -> ConfigError:
        """A job that cannot start fails (store and audit line); returns the error to raise."""
        with self.cond:
            if self.job is not None and self.job.job_id == job_id:
                self.job, self.mode = None, None
        reason = f"{type(exc).__name__}: {_short(exc)}"
        self.store.set_job_state(job_id, JobState.FAILED, reason=reason)
        with contextlib.suppress(Exception):
            self.audit.append(
                Event.JOB_FAILED, job=job_id, code=getattr(exc, "code", Reason.ERROR), reason=reason
            )
        return ConfigError(f"job {job_id} cannot start: {reason}")

    def _record_submission(
        self,
        job_id: str,
        spec: JobSpec,
        submitter: str,
        pkg: Path,
        job_root: Path,
        state: JobState = JobState.RUNNING,
    ) -> None:
        """The ``job_submitted`` line and the store row are one step, the line first: if it cannot be
        written (a value RFC 8785 refuses, a full disk) nothing is kept; if the row then cannot be
        written, a ``job_failed`` line follows it. So no job is ever "running" in the store without
        its submission in the log, and a crash between the two leaves only a line (a restart resumes
        nothing the log never saw)."""
        try:
            self.audit.append(
                Event.JOB_SUBMITTED, job=job_id, submitter=submitter, mode=spec.mode, rounds=spec.rounds
            )
        except Exception as exc:  # noqa: BLE001 - reported as the submission's refusal
            shutil.rmtree(job_root, ignore_errors=True)
            raise ConfigError(
                f"job {spec.name} cannot be recorded in the audit log ({type(exc).__name__}: "
                f"{_short(exc)}); nothing was kept"
            ) from None
        try:
            self.store.add_job(job_id, spec.name, submitter, spec.model_dump_json(), str(pkg), state)
        except Exception as exc:  # noqa: BLE001 - the line above is closed by a job_failed line
            shutil.rmtree(job_root, ignore_errors=True)
            reason = f"{type(exc).__name__}: {_short(exc)}"
            with contextlib.suppress(Exception):
                self.audit.append(Event.JOB_FAILED, job=job_id, code=Reason.ERROR, reason=reason)
            raise ConfigError(f"job {job_id} cannot be stored ({reason}); nothing was kept") from None

    def _activate(self, job_id: str, spec: JobSpec, pkg: Path, *, resumed: bool) -> None:
        """Make a job the running one. The global model is kept on disk (:mod:`.global_model`): the
        package's model file is extracted and read a window at a time, never whole in memory."""
        mode_cls = self._require_mode(spec.mode)
        if resumed:
            self._clear_dead_attempts(job_id)
        window = self.kit.config.window_bytes
        model_file = pkg.with_name("model.safetensors")
        extract_model(pkg, spec.model, model_file)
        bspec = model_spec(model_file)
        rounds = self.store.rounds(job_id)
        global_model: GlobalModel | None = None
        strategy_state: StateFile | None = None
        elements = window_elements(window)
        if mode_cls.sees_model:
            if rounds:
                last = Path(rounds[-1].result_path)
                global_model = resume_global(bspec, last, elements)
                state_file = last.with_name(f"strategy-{rounds[-1].round}.bin")
                strategy_state = StateFile.read(state_file) if state_file.is_file() else None
            else:
                global_model = global_from_file(model_file, bspec, pkg.with_name("round-0.bin"), elements)
        mode = mode_cls(
            ModeContext(
                job_id, spec, bspec, self.store, self.audit, self.cond, self.enclave, window_bytes=window
            )
        )
        taken_up: dict[str, Any] | None = None
        with self.cond:
            self.job = JobRun(job_id, spec, pkg, bspec, global_model, strategy_state, completed=len(rounds))
            self.mode = mode
            if self.job.completed >= spec.rounds:
                self.job.state = JobState.FINALIZING
                self.job.finalize_started = time.monotonic()
                if resumed and spec.evaluation == "cross_site":
                    taken_up = self._resume_evaluation(self.job)
            else:
                attempt = self._resumed_attempt(job_id, self.job.completed + 1) if resumed else 1
                self.job.current = RoundRun(self.job.completed + 1, attempt)
            self.cond.notify_all()
        self.audit.append(
            Event.JOB_RESUMED if resumed else Event.JOB_STARTED, job=job_id, round=self.job.completed + 1
        )
        if taken_up is not None:
            self.audit.append(Event.XSITE_RESUMED, job=job_id, **taken_up)

    def _resume_evaluation(self, job: JobRun) -> dict[str, Any] | None:
        """A killed aggregator's cross-site evaluation, taken up where its state file left it (with the
        sites' final metrics it had): nothing it holds is asked for again. Under the lock; returns the
        fields of its audit line (None where there was nothing to take up)."""
        root = self.state_dir / "jobs" / job.job_id
        try:
            xsite = CrossSite.load(job.job_id, root, job.spec.round_timeout, time.monotonic())
        except Exception as exc:  # noqa: BLE001 - the job's model is done; its evaluation starts again
            log.exception(
                "job %s: the cross-site state does not load; the evaluation starts again", job.job_id
            )
            self._discard_evaluation(job.job_id)
            return {"fresh": True, "reason": _short(exc)}
        if xsite is None:
            return None
        job.evaluation = xsite
        job.final_metrics.update(xsite.final)
        return {
            "consents": sorted(xsite.consents),
            "fixed": xsite.fixed is not None,
            "relayed": len(xsite.envelopes),
            "metrics": sorted(xsite.results),
            "final": sorted(xsite.final),
        }

    def _resumed_attempt(self, job_id: str, round_: int) -> int:
        """The attempt a resumed round runs as: past every attempt of it this log records (a roster
        or a retry), so a site that uploaded in an earlier resumed attempt is offered this one too
        (a site is offered only an attempt after the last it uploaded in). At least 2."""
        seen = 1
        if self.audit.path.is_file():
            with self.audit.path.open("rb") as fh:
                for raw in fh:
                    if b'"attempt"' not in raw:
                        continue
                    try:
                        rec = json.loads(raw)
                    except ValueError:
                        continue
                    ours = rec.get("job") == job_id and rec.get("round") == round_
                    if ours and rec.get("event") in (Event.ROSTER, Event.ROUND_RETRY):
                        attempt = rec.get("attempt")
                        if isinstance(attempt, int):
                            seen = max(seen, attempt)
        return seen + 1

    def _clear_dead_attempts(self, job_id: str) -> None:
        """A restart runs the round in flight again as a new attempt: what the killed process spooled
        (uploads, a half-received temp file) and its partial round result are never read again, and
        would otherwise stay on disk for good (RELIABILITY.md F1)."""
        self.spool.discard_job(job_id)
        job_root = self.state_dir / "jobs" / job_id
        for partial in job_root.glob("round-*.partial"):
            partial.unlink(missing_ok=True)
        remove_stale_temps(job_root)  # a round result or strategy state whose atomic write was cut

    def _require_mode(self, mode: str) -> type[ModeBase]:
        """Refuse, before anything is written, a job this aggregator cannot run."""
        cls = mode_class(mode)
        cls.check_aggregator(self.enclave)
        return cls

    @property
    def current_mode(self) -> str:
        """The running job's mode, ``none`` without a job (a metrics label)."""
        job = self.job
        return job.spec.mode if job is not None else "none"

    def mode_of(self, job_id: str) -> str:
        """This Federation's job's mode if it is ``job_id``, else ``none`` (a metrics label)."""
        job = self.live_job(job_id)
        return job.spec.mode if job is not None else "none"

    def attest(self, site: str, job_id: str, nonce: bytes) -> bytes:
        """Evidence for ``site``'s fresh nonce, bound to the enclave keys and our TLS certificate."""
        if self.enclave is None:
            raise UpdateRejected("this aggregator does not run in a TEE", code=Reason.NO_TEE)
        if self.store.job(job_id) is None:  # before the enclave looks for the job's keys
            raise UpdateRejected(f"no job {job_id[:80]!r}", code=Reason.NO_SUCH_JOB)
        from cryptography.hazmat.primitives.serialization import Encoding

        msg = self.enclave.answer_challenge(nonce, self.kit.cert.public_bytes(Encoding.DER), job_id)
        self.audit.append(Event.ATTESTED, site=site, job=job_id)
        return bytes(msg.to_bytes())

    def abort(self, job_id: str, by: str) -> None:
        with self.cond:
            if self.job is None or self.job.job_id != job_id:
                raise ConfigError(f"no running job {job_id}")
            self.job.state = JobState.ABORTED
            self.job.current = None
            self.cond.notify_all()
        self.store.set_job_state(job_id, JobState.ABORTED, reason=f"aborted by {by}")
        self._job_ended(job_id)
        self._discard_evaluation(job_id)
        self.audit.append(Event.JOB_ABORTED, job=job_id, by=by)

    def _job_ended(self, job_id: str) -> None:
        """What a job that ended (finished, aborted, failed; already so in the store) leaves: nothing
        in the spool, and no sealed enclave keys at rest (a restart never resumes an ended job, so
        they could only serve someone who later gets the sealing key; this process keeps them in
        memory for a site still owed the final model)."""
        self.spool.discard_job(job_id)
        close = getattr(self.enclave, "close_job", None)
        if close is not None:
            try:
                close(job_id)
            except OSError as exc:  # the job has ended all the same; the file is sealed
                log.warning("sealed tee keys of job %s not removed: %s", job_id, exc)

    def owed_final(self, seen_within_s: float) -> list[str]:
        """Sites of a finished job that are still owed its final model: not declined, no final
        metrics from them, and in contact within ``seen_within_s`` (a site restarting after a crash,
        not one gone for good). An aggregator about to exit waits, bounded, for these (F4)."""
        with self.cond:
            job = self.job
            if job is None or job.state != JobState.FINISHED:
                return []
            now = time.time()
            return sorted(
                s
                for s in self.sites
                if s not in job.final_metrics
                and s not in job.declined
                and now - self.heartbeats.get(s, float("-inf")) <= seen_within_s
            )

    # ---------------------------------------------------------------- site-facing operations
    def heartbeat(self, site: str) -> str:
        with self.cond:
            self.heartbeats[site] = time.time()
            return str(self.job.state if self.job else JobState.IDLE)

    def next_task(
        self, site: str, after_round: int, after_attempt: int, has_global: int, wait_s: float
    ) -> dict[str, Any]:
        """Block until this site has something to do; return the task header (payload: see ``payload``)."""
        deadline = time.monotonic() + wait_s
        with self.cond:
            self.heartbeats[site] = time.time()  # last contact: see ``owed_final``
            while True:
                task = self._task_for(site, after_round, after_attempt, has_global)
                if task is not None:
                    return task
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping:
                    return {"kind": "wait", "job_state": str(self.job.state if self.job else JobState.IDLE)}
                self.cond.wait(timeout=min(left, 1.0))

    def _task_for(
        self, site: str, after_round: int, after_attempt: int, has_global: int
    ) -> dict[str, Any] | None:
        job = self.job
        if job is None:
            return None
        base = {"job_id": job.job_id, "mode": job.spec.mode, "rounds": job.spec.rounds}
        if job.state in (JobState.ABORTED, JobState.FAILED):
            return {**base, "kind": "stop", "reason": f"job {job.state}"}
        if job.state == JobState.FINISHED:
            if after_round < 0:
                return None
            if site in job.final_metrics or site in job.declined or after_round > job.spec.rounds:
                return {**base, "kind": "stop", "reason": "job finished"}
            # a site that came back after the job finished without it (restarted late): it still
            # gets the final model, which every site of the job is owed (RELIABILITY.md F4)
            return {
                **base,
                "kind": "finalize",
                "round": job.spec.rounds + 1,
                "attempt": 1,
                **self._payload_header(has_global),
            }
        if job.state == JobState.FINALIZING:
            xsite = cross_site(job, self.state_dir, job.finalize_started)
            owed = xsite is not None and xsite.owes(site)  # a site back after a restart, mid-evaluation
            if after_round > job.spec.rounds or (site in job.final_metrics and not owed):
                return None
            return {
                **base,
                "kind": "finalize",
                "round": job.spec.rounds + 1,
                "attempt": 1,
                **({"xsite": xsite.held(site)} if xsite is not None else {}),
                **self._payload_header(has_global),
            }
        cur = job.current
        if cur is None or cur.phase != Phase.READY or site in cur.ready or site in cur.declined:
            return None
        if cur.not_before > time.monotonic():
            return None  # a retried round waits out its backoff
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
        job, mode = self.job, self.mode
        assert job is not None and mode is not None
        return mode.payload_header(job, site_has_round)

    def payload(self, header: dict[str, Any]) -> Iterator[bytes]:
        """Yield the payload bytes for a task header made by ``_task_for``."""
        job, mode = self.job, self.mode
        if job is None or mode is None or header.get("kind") not in ("train", "finalize"):
            return
        yield from mode.payload(job, header)

    def post_ready(self, site: str, job_id: str, round_: int, payload: bytes) -> None:
        msg = json_object(payload, "ready message")
        try:
            raw_n = msg["n_samples"]
            attempt = int_field(msg["attempt"], "ready message attempt")
            signed = msg["fingerprint"]
        except KeyError:
            raise UpdateRejected(
                "ready message is not valid JSON with n_samples, attempt and fingerprint",
                code=Reason.MALFORMED,
            ) from None
        try:
            n = sample_count(raw_n)
        except BadSampleCount as exc:
            raise UpdateRejected(str(exc), code=Reason.BAD_WEIGHT) from None
        if not isinstance(signed, dict) or signed.get("n_samples") != n:
            # the count sites weigh by is the signed one: a ready message saying another is malformed
            raise UpdateRejected(
                "ready message's n_samples differs from its signed sample count", code=Reason.MALFORMED
            )
        with self.cond:
            cur = self._current(job_id, round_)
            if cur.attempt != attempt or cur.phase != Phase.READY:
                raise UpdateRejected(
                    f"round {round_} attempt {attempt} is not collecting readiness", code=Reason.LATE
                )
            if site in cur.ready:
                raise UpdateRejected(
                    f"{site} already declared ready in round {round_}", code=Reason.DUPLICATE
                )
            # logged before it counts, under the lock: the driver cannot close the phase with a ready
            # whose line is not written yet (a full disk, StorageFull, leaves it uncounted; the site
            # posts again once there is space; a kill leaves no roster naming an unlogged ready)
            self.audit.append(Event.SITE_READY, job=job_id, round=round_, site=site, n_samples=n)
            cur.ready[site] = msg
            self.cond.notify_all()

    def decline(
        self, site: str, job_id: str, round_: int, code: str, message: str, *, round_only: bool = False
    ) -> None:
        """A site refuses the job (not waited for again), or with ``round_only`` sits out just this
        round (its training failed; it takes part again from the next round)."""
        self.store.add_declined(job_id, round_, site, code, message)
        with self.cond:
            job = self.job
            if job is not None and job.job_id == job_id:
                if not round_only:
                    job.declined.add(site)
                    job.refusals[site] = code
                elif job.current is not None and job.current.round == round_:
                    job.current.declined.add(site)
                self.cond.notify_all()
        self.audit.append(Event.TASK_DECLINED, job=job_id, round=round_, site=site, code=code, reason=message)

    def roster(self, job_id: str, round_: int, wait_s: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + wait_s
        with self.cond:
            while True:
                cur = self._current(job_id, round_, strict=False)
                if cur is not None and cur.roster is not None:
                    return cur.roster
                if cur is None:
                    return {str(Signal.CANCELLED): True}
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping:  # a stopping service answers its long polls at once
                    return None
                self.cond.wait(timeout=min(left, 1.0))

    def _current(self, job_id: str, round_: int, strict: bool = True) -> RoundRun:
        job = self.job
        if job is None or job.job_id != job_id or job.state != JobState.RUNNING:
            if strict:
                raise UpdateRejected(f"job {job_id} is not running", code=Reason.NO_SUCH_JOB)
            return None  # type: ignore[return-value]
        cur = job.current
        if cur is None or cur.round != round_:
            if strict:
                raise UpdateRejected(f"round {round_} is not the current round", code=Reason.WRONG_ROUND)
            return None  # type: ignore[return-value]
        return cur

    def accept_upload(self, site: str, header: dict[str, Any], chunks: Iterator[Any]) -> None:
        """One site's protected update, from its header to its acceptance (or a refusal).

        ``site`` is the uploader's mTLS identity (never a header field); ``chunks`` is the rest of the
        stream after the header. The upload must be for the current round and attempt, from a roster
        site that has not uploaded yet; it is spooled whole (trailer checked), checked by the mode, and
        only then counted. A refused upload leaves nothing in the spool. Raises ``UpdateRejected``."""
        bound = self.upload_bound()
        head = upload_header(header, max_bytes=bound)
        cur = self._open_upload(site, head.job_id, head.round, head.attempt)
        spooled = self.spool.receive(
            site,
            head.job_id,
            cur.round,
            cur.attempt,
            lambda fh: copy_payload(chunks, fh, max_bytes=bound, expected_bytes=head.bytes),
        )
        try:
            self._admit_upload(site, cur, head, spooled.path)
        except BaseException:  # StorageFull included: not logged, so not counted; nothing is kept
            self.spool.remove(spooled)
            raise

    def upload_bound(self) -> int:
        """The most bytes one upload may stream: what the running mode says its model implies (plain,
        tee, mask: about the model's bytes; he: its ciphertexts), never more than the aggregator's cap."""
        mode = self.mode
        implied = mode.max_upload_bytes() if mode is not None else None
        return self.max_upload_bytes if implied is None else min(self.max_upload_bytes, implied)

    def _open_upload(self, site: str, job_id: str, round_: int, attempt: int) -> RoundRun:
        """The round an upload with this header may go into, before a byte of it is spooled."""
        done = {r.round: r for r in self.store.rounds(job_id)}
        if round_ in done and site in done[round_].participants:
            raise UpdateRejected(f"{site} already uploaded in round {round_}", code=Reason.DUPLICATE_UPLOAD)
        with self.cond:
            cur = self._current(job_id, round_)
            if site in cur.uploads:
                raise UpdateRejected(
                    f"{site} already uploaded in round {round_}", code=Reason.DUPLICATE_UPLOAD
                )
            if cur.phase != Phase.UPLOAD or cur.roster is None or attempt != cur.attempt:
                raise UpdateRejected(f"round {round_} is not accepting uploads now", code=Reason.LATE)
            if site not in cur.roster["weights"]:
                raise UpdateRejected(
                    f"{site} is not in the roster of round {round_}", code=Reason.NOT_IN_ROSTER
                )
            return cur

    def _admit_upload(self, site: str, cur: RoundRun, head: UploadHeader, spooled: Path) -> None:
        """The mode checks the spooled upload; then, if the round is still open, it is logged and
        counted in one step under the lock: the driver cannot commit a round with an upload whose
        ``upload_accepted`` line is not written yet (a full disk would then refuse it to the site
        after the round had used it, and a kill would leave it unlogged)."""
        mode = self.mode
        assert mode is not None
        mode.accept(site, cur, head.raw, spooled)
        with self.cond:
            if self.job is None or self.job.current is not cur or cur.phase != Phase.UPLOAD:
                raise UpdateRejected("the round closed while the upload was streaming", code=Reason.LATE)
            if site in cur.uploads:
                raise UpdateRejected(
                    f"{site} already uploaded in round {cur.round}", code=Reason.DUPLICATE_UPLOAD
                )
            mode.admit(site, cur, spooled)
            try:
                self.audit.append(
                    Event.UPLOAD_ACCEPTED, site=site, job=head.job_id, round=head.round, bytes=head.bytes
                )
            except BaseException:  # StorageFull: not logged, so the mode must not keep it either
                mode.withdraw(site, cur)
                raise
            if head.metrics:
                cur.metrics[site] = dict(head.metrics)
            cur.uploads[site] = spooled
            self.cond.notify_all()

    def post_final(self, site: str, job_id: str, payload: bytes) -> None:
        metrics = final_metrics(payload)
        with self.cond:
            job = self.job
            ending = (JobState.FINALIZING, JobState.FINISHED)
            if job is None or job.job_id != job_id or job.state not in ending:
                raise UpdateRejected(f"job {job_id} is not finalizing", code=Reason.LATE)
            # after the job finished (a site restarted late): it holds the final model now; its
            # metrics come too late for the stored final evaluation, which is never rewritten
            late = job.state == JobState.FINISHED
            job.final_metrics[site] = metrics
            xsite = cross_site(job, self.state_dir, job.finalize_started) if not late else None
            if xsite is not None:
                xsite.note_final(site, metrics)  # kept across a restart, as the evaluation is
            self.cond.notify_all()
        self.audit.append(Event.SITE_FINAL, job=job_id, site=site, late=late or None)

    # ---------------------------------------------------------------- cross-site evaluation
    def xsite_post(self, site: Identity, topic: str, job_id: str, payload: bytes) -> None:
        """A site's consent or metrics for the finalizing job's cross-site evaluation (a sealed model
        is uploaded: :meth:`xsite_upload`; :mod:`secagg.aggregator.evaluation`)."""
        with self.cond:
            _, xsite = self._evaluation(job_id)
            event, fields = xsite.post(site.name, site.cert, self.kit.config.project, topic, payload)
            self.cond.notify_all()
        self.audit.append(event, job=job_id, **fields)

    def _evaluation(self, job_id: str) -> tuple[JobRun, CrossSite]:
        """The finalizing job's cross-site evaluation (under the lock), or the refusal."""
        job = self.job
        if job is None or job.job_id != job_id or job.state != JobState.FINALIZING:
            raise UpdateRejected(f"job {job_id} is not finalizing", code=Reason.LATE)
        xsite = cross_site(job, self.state_dir, job.finalize_started)
        if xsite is None:
            raise UpdateRejected(
                f"job {job_id} asks for no cross-site evaluation", code=Reason.XSITE_PROTOCOL
            )
        return job, xsite

    def xsite_upload(self, site: Identity, header: dict[str, Any], chunks: Iterator[Any]) -> None:
        """A site's local model sealed to another site, streamed as a round's upload is: its envelope
        checked first, its ciphertext received into a temporary file (never whole in memory), checked
        against the signed digest, then kept and recorded (:mod:`secagg.aggregator.evaluation`)."""
        job_id = header.get("job_id")
        if not isinstance(job_id, str):
            raise UpdateRejected("sealed model upload without a job_id", code=Reason.MALFORMED)
        with self.cond:
            job, xsite = self._evaluation(job_id)
            max_plain = wire.max_model_bytes(job.bundle_spec)
            env = xsite.begin_model(site.name, site.cert, self.kit.config.project, header, max_plain)
            folder = xsite.folder
        received = receive_sealed(folder, env, chunks)
        try:
            with self.cond:
                _, xsite2 = self._evaluation(job_id)
                if xsite2 is not xsite:
                    raise UpdateRejected("the evaluation ended while the upload streamed", code=Reason.LATE)
                event, fields = xsite.store_model(site.name, env, received)
                self.cond.notify_all()
        except BaseException:
            received.unlink(missing_ok=True)
            raise
        self.audit.append(event, job=job_id, **fields)

    def xsite_fetch(self, site: str, job_id: str, sender: str) -> tuple[dict[str, Any], BinaryIO] | Signal:
        """The ciphertext ``sender`` sealed to ``site``, opened for streaming (with its stream header)."""
        with self.cond:
            job = self.job
            if job is None or job.job_id != job_id or job.state != JobState.FINALIZING:
                return Signal.CANCELLED
            xsite = cross_site(job, self.state_dir, job.finalize_started)
            if xsite is None:
                return Signal.CANCELLED
            got = xsite.sealed_for(site, sender)
        if isinstance(got, Signal):
            return got
        env, fh = got
        return {"job_id": job_id, "from": sender, "bytes": env.sealed_bytes}, fh

    def _discard_evaluation(self, job_id: str) -> None:
        shutil.rmtree(self.state_dir / "jobs" / job_id / "xsite", ignore_errors=True)

    def _write_matrix(self, job: JobRun, final: dict[str, dict[str, Any]]) -> None:
        """The cross-site matrix into the job's output; a failure to draw it does not fail the job."""
        try:
            _, written = job.evaluation.finish(list(self.sites), final)
        except Exception as exc:  # noqa: BLE001 - the job's model is done; its matrix is an extra
            log.exception("job %s: cannot write the cross-site matrix", job.job_id)
            self.audit.append(Event.XSITE_MATRIX, job=job.job_id, files=[], reason=_short(exc))
            return
        self.audit.append(Event.XSITE_MATRIX, job=job.job_id, files=[p.name for p in written])

    def xsite_collect(self, site: str, topic: str, job_id: str, wait_s: float) -> bytes | Signal | None:
        """What the cross-site evaluation published for ``site`` under ``topic``; a :class:`Signal`
        when there is nothing for it (it is over, or the site is left out); None after ``wait_s``."""
        deadline = time.monotonic() + wait_s
        with self.cond:
            while True:
                job = self.job
                if job is None or job.job_id != job_id or job.state != JobState.FINALIZING:
                    return Signal.CANCELLED
                xsite = cross_site(job, self.state_dir, job.finalize_started)
                if xsite is None:
                    return Signal.CANCELLED
                got = xsite.collect(site, topic)
                if got is not None:
                    return got
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping:
                    return None
                self.cond.wait(timeout=min(left, 1.0))

    def accept_audit_head(self, site: Identity, job_id: str, payload: bytes) -> None:
        """A site's audit head at the end of a job, signed by its certificate key: recorded here, so the
        aggregator's own log anchors how far that site's log reached (a later truncation shows)."""
        if self.store.job(job_id) is None:
            raise UpdateRejected(f"no such job {job_id}", code=Reason.NO_SUCH_JOB)
        head = parse_head(payload, f"audit head of {site.name}")
        check_head_signature(head, site.cert, where=f"audit head of {site.name}")
        self.audit.append(
            Event.SITE_AUDIT_HEAD, job=job_id, site=site.name, head_seq=head["seq"], head_hash=head["hash"]
        )

    # ---------------------------------------------------------------- the driver
    def step(self) -> None:
        """Advance the state machine once (called in a loop by the driver thread)."""
        self._flush_deferred()
        with self.cond:
            job = self.job
            if job is None:
                self.cond.wait(timeout=0.5)
                return
            notes: list[tuple[Event, dict[str, Any]]] = []
            if job.state == JobState.FINALIZING:
                done = len(job.final_metrics) >= len(self.sites) - len(job.declined) or (
                    time.monotonic() - job.finalize_started > job.spec.round_timeout
                    and len(job.final_metrics) >= 1
                )
                xsite = cross_site(job, self.state_dir, job.finalize_started)
                if xsite is not None:  # evaluation: cross_site: finished only when its matrix is
                    xdone, notes = xsite.advance(set(self.sites) - job.declined, time.monotonic())
                    done = done and xdone
                if not done:
                    if notes:
                        self.cond.notify_all()
                    else:
                        self.cond.wait(timeout=0.5)
                    final = None
                else:
                    final = dict(job.final_metrics)
                    if job.evaluation is None:  # else finished once its matrix is written, below
                        job.state = JobState.FINISHED
                        self.cond.notify_all()
            else:
                final = None
        for event, fields in notes:
            self.audit.append(event, job=job.job_id, **fields)
        if final is None and job.state == JobState.FINALIZING:
            return
        if final is not None:
            if job.evaluation is not None:
                # written before the sites are told to stop, so a download after the job sees it
                self._write_matrix(job, final)
                with self.cond:
                    if job.state != JobState.FINALIZING:
                        return  # aborted while the matrix was being written
                    job.state = JobState.FINISHED
                    self.cond.notify_all()
            # the last round's row already holds the sites' evaluation of the model after the round
            # before it: the final evaluation goes beside it, never over it
            last = [r for r in self.store.rounds(job.job_id) if r.round == job.spec.rounds]
            kept = last[-1].metrics if last else {}
            self.store.set_round_metrics(job.job_id, job.spec.rounds, {**kept, "final": final})
            self.store.set_job_state(job.job_id, JobState.FINISHED)
            self._job_ended(job.job_id)
            if job.evaluation is not None:
                job.evaluation.discard()  # its state was kept until the job is recorded finished
            self.audit.append(Event.JOB_FINISHED, job=job.job_id, rounds=job.spec.rounds)
            return
        with self.cond:
            cur, mode = job.current, self.mode
            if job.state != JobState.RUNNING or cur is None or mode is None:
                self.cond.wait(timeout=0.5)
                return
            now = time.monotonic()
            timeout = job.spec.round_timeout
            if cur.phase == Phase.READY and now < cur.not_before:
                self.cond.wait(timeout=min(cur.not_before - now, 0.5))  # a retried round's backoff
                return
            if cur.phase == Phase.READY:
                everyone = len(cur.ready) >= len(set(self.sites) - job.declined - cur.declined)
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
                cur.phase, cur.phase_started = Phase.UPLOAD, now
                mode.after_roster(cur)  # a mode with phases of its own starts them here
                self.cond.notify_all()
                roster = cur.roster
                next_step = None
            else:
                roster = None
                next_step = mode.step(cur, job.declined | cur.declined, now)
                if next_step.wait:
                    self.cond.wait(timeout=0.5)
                    return
                self.cond.notify_all()
        if roster is not None:
            self.audit.append(
                Event.ROSTER,
                job=job.job_id,
                round=cur.round,
                attempt=cur.attempt,
                sites=sorted(roster["weights"]),
            )
            return
        assert next_step is not None
        try:
            self._follow(job, cur, next_step)
        except Exception as exc:  # noqa: BLE001 - the job cannot go on; the aggregator can
            if not is_storage_full(exc):
                self._fail(job, exc)
                return
            # a full disk is a pause: nothing of the step was committed (writes are atomic, the store
            # row is the commit); the round goes back to wait for its combination, tried again later
            with self.cond:
                if cur.phase == Phase.COMBINING and next_step.combine:
                    cur.phase = Phase.UPLOAD
            raise StorageFull(f"round {cur.round} waits for space to be combined ({exc})") from None

    def _log_or_defer(self, event: Event, **fields: Any) -> None:
        """An audit line of something already committed (a round in the store): if the disk is full it
        is written as soon as there is space again, before the driver does anything else."""
        try:
            self.audit.append(event, **fields)
        except StorageFull:
            log.warning("audit line %s deferred: the state disk is full", event)
            self._deferred.append((event, fields))

    def _flush_deferred(self) -> None:
        while self._deferred:
            event, fields = self._deferred[0]
            self.audit.append(event, **fields, deferred=True)  # StorageFull: the driver waits
            self._deferred.pop(0)

    def _follow(self, job: JobRun, cur: RoundRun, step: Step) -> None:
        """Act, outside the lock, on what the mode said the round needs next."""
        if step.audit is not None:
            event, fields = step.audit
            self.audit.append(event, job=job.job_id, round=cur.round, **fields)
        if step.retry is not None:
            self._retry(job, cur, step.retry)
        elif step.summed is not None:
            s = step.summed
            self._complete(
                job,
                cur,
                self._result_path(job, cur),
                1.0 / s.weight,
                s.sites,
                lambda a, b: mapped_window(s.total, a, b) / s.weight,
            )
        elif step.combine:
            self._combine(job, cur)

    def _result_path(self, job: JobRun, cur: RoundRun) -> Path:
        return self.state_dir / "jobs" / job.job_id / f"round-{cur.round}.bin"

    def _combine(self, job: JobRun, cur: RoundRun) -> None:
        assert cur.roster is not None and self.mode is not None
        uploads = dict(cur.uploads)
        result = self._result_path(job, cur)
        tmp = result.with_suffix(".partial")
        total: np.ndarray | None = None  # a read-only map of the float64 sum written to tmp
        while len(uploads) >= job.spec.min_sites:
            try:
                total = self.mode.combine(cur.round, uploads, tmp)
                break
            except BadUpload as bad:
                site = (
                    bad.site if bad.site is not None else next(s for s, p in uploads.items() if p == bad.path)
                )
                del uploads[site]
                self.audit.append(
                    Event.UPLOAD_REJECTED,
                    job=job.job_id,
                    round=cur.round,
                    site=site,
                    code=getattr(bad.reason, "code", Reason.ERROR),
                    reason=str(bad.reason),
                )
        if len(uploads) < job.spec.min_sites:
            self._retry(job, cur, f"{len(uploads)} valid uploads, the job needs {job.spec.min_sites}")
            return
        weight = self.mode.total_weight(cur.round, uploads, cur.roster["weights"])
        if not (math.isfinite(weight) and weight > 0):  # the roster bounds counts; this must not pass
            raise UpdateRejected(
                f"round {cur.round}: the uploads' weights sum to {weight}", code=Reason.BAD_WEIGHT
            )
        scale = 1.0 / weight
        if total is None:  # a protected sum the sites unprotect (he): relayed as the mode wrote it
            atomic_write(result, source=tmp)
            self._complete(job, cur, result, scale, sorted(uploads), None)
            return
        summed = total
        self._complete(
            job, cur, result, scale, sorted(uploads), lambda a, b: mapped_window(summed, a, b) * scale
        )

    def _fail(self, job: JobRun, exc: BaseException) -> None:
        """The job cannot go on (a round result that cannot be written, state that does not load): it
        fails, sites are told to stop, and the aggregator serves on for the next job."""
        if isinstance(exc, SecaggError) and exc.__traceback__ is None:  # a decision, not a crash
            log.error("job %s failed: %s", job.job_id, exc)
        else:
            log.exception("job %s failed", job.job_id)
        reason = f"{type(exc).__name__}: {_short(exc)}"
        with self.cond:
            if self.job is not job or job.state.terminal:
                return
            job.state = JobState.FAILED
            job.current = None
            self.cond.notify_all()
        self.store.set_job_state(job.job_id, JobState.FAILED, reason=reason)
        self._job_ended(job.job_id)
        self._discard_evaluation(job.job_id)
        self.audit.append(
            Event.JOB_FAILED, job=job.job_id, code=getattr(exc, "code", Reason.ERROR), reason=reason
        )

    def _retry(self, job: JobRun, cur: RoundRun, why: str) -> None:
        """Nothing of a failed round is kept; it runs again as a new attempt, after a backoff that
        grows with each retry in a row (a round every site declines must not spin the audit log).
        Unless too few sites are left that have not refused the job: no retry can fix that, so the
        job fails with their reason (RELIABILITY.md F7) instead of retrying for ever."""
        with self.cond:
            refused = refused_for_good(job, self.sites, cur.round)
        if refused is not None:
            self._fail(job, refused)
            return
        delay = retry_delay(job.retries + 1)
        self.audit.append(
            Event.ROUND_RETRY,
            job=job.job_id,
            round=cur.round,
            attempt=cur.attempt,
            reason=why,
            backoff_s=round(delay, 3),
        )
        self.spool.discard(job.job_id, cur.round, cur.attempt)
        with self.cond:
            if job.current is cur:
                job.retries += 1
                start = time.monotonic() + delay
                job.current = RoundRun(cur.round, cur.attempt + 1, started=start, phase_started=start)
                job.current.not_before = start
            self.cond.notify_all()

    def driver_failed(self, exc: BaseException) -> None:
        """The driver's step raised: the running job fails with the reason (and its audit line), and
        the driver goes on serving whatever comes next. Never raises (the driver thread must live)."""
        try:
            with self.cond:
                job = self.job
            if job is not None and not job.state.terminal:
                self._fail(job, exc)
            else:
                log.exception("round driver error without a running job")
                self.audit.append(
                    Event.DRIVER_ERROR, code=getattr(exc, "code", Reason.ERROR), reason=_short(exc)
                )
        except Exception:  # noqa: BLE001 - the store or log itself is broken; the driver backs off and retries
            log.exception("round driver could not record an error")

    def _complete(
        self,
        job: JobRun,
        cur: RoundRun,
        result: Path,
        scale: float,
        sites: list[str],
        avg: AverageWindows | None,
    ) -> None:
        """Apply the strategy to the average update (where this aggregator may see it; ``avg`` reads
        it a window at a time) and commit. The step runs window by window (:mod:`.server_step`): the
        new global model and strategy state are written as files, never held whole."""
        new_global = None
        previous = job.global_model
        if avg is not None:
            assert previous is not None
            strategy = make_strategy(job.spec.strategy)
            new_global, state = server_step(
                strategy,
                previous,
                avg,
                job.strategy_state,
                result,
                result.with_name(f"strategy-{cur.round}.bin"),
                window_elements(self.kit.config.window_bytes),
            )
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
        self.spool.discard_round(job.job_id, cur.round)
        self._log_or_defer(
            Event.ROUND_COMPLETED,
            job=job.job_id,
            round=cur.round,
            attempt=cur.attempt,
            sites=sites,
            seconds=round(seconds, 3),
        )
        with self.cond:
            job.completed = cur.round
            job.retries = 0
            if new_global is not None:
                job.global_model = new_global
            if job.state != JobState.RUNNING:
                pass  # aborted (or failed) while the round was being committed: it stays so
            elif cur.round >= job.spec.rounds:
                job.current = None
                job.state = JobState.FINALIZING
                job.finalize_started = time.monotonic()
            else:
                job.current = RoundRun(cur.round + 1, 1)
            self.cond.notify_all()
        if new_global is not None and previous is not None:
            # only the latest exact values are needed (to step from, or resume from); a round's
            # float32 bundle stays, as every round's result did
            previous.exact.unlink(missing_ok=True)

    # ---------------------------------------------------------------- a mode's own phases
    def mode_post(self, site: str, topic: str, job_id: str, round_: int, payload: bytes) -> None:
        """A site's message for the running mode's own phases (mask: keys, shares, unmask responses)."""
        with self.cond:
            cur = self._current(job_id, round_)
            assert self.mode is not None
            self.mode.post(site, topic, cur, payload)
            self.cond.notify_all()

    def mode_collect(
        self, site: str, topic: str, job_id: str, round_: int, attempt: int, wait_s: float
    ) -> bytes | Signal | None:
        """What the running mode published for ``site`` under ``topic``; a :class:`Signal` when there
        is nothing for it (the attempt is over, or the site was left out); None after ``wait_s``."""
        deadline = time.monotonic() + wait_s
        with self.cond:
            while True:
                cur = self._current(job_id, round_, strict=False)
                if cur is None or cur.attempt != attempt or self.mode is None:
                    # the caller's attempt of this round is over (retried, or finished without it)
                    return Signal.CANCELLED
                got = self.mode.collect(site, topic, cur)
                if got is not None:
                    return got
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping:
                    return None
                self.cond.wait(timeout=min(left, 1.0))

    def _round_metrics(self, of_round: int, cur: RoundRun | None = None) -> dict[str, Any]:
        """Site-reported validation metrics of the global model after ``of_round``."""
        if cur is None:
            return {}
        return {"evaluated_round": of_round, "sites": dict(cur.metrics)}

    # ---------------------------------------------------------------- HE key custody relay
    def accept_key_release(self, site: str, payload: bytes) -> None:
        """Only the key holder may publish; the aggregator keeps the sealed release and the public part."""
        if site != self.kit.config.key_holder:
            raise UpdateRejected(f"{site} is not the project's HE key holder", code=Reason.NOT_KEY_HOLDER)
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
            raise UpdateRejected("the HE key release is already published", code=Reason.DUPLICATE)
        self.store.put_blob(HE_KEY_BLOB, payload)
        self.audit.append(Event.HE_KEY_PUBLISHED, holder=site, recipients=sorted(release.envelopes))
        with self.cond:
            self.cond.notify_all()

    def key_release(self, wait_s: float) -> bytes | None:
        deadline = time.monotonic() + wait_s
        with self.cond:
            while (blob := self.store.get_blob(HE_KEY_BLOB)) is None:
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping:
                    return None
                self.cond.wait(timeout=min(left, 1.0))
            return blob


def _short(exc: BaseException, limit: int = 500) -> str:
    """An exception's text for a reason field, cut (a hostile value must not fill the log)."""
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


def _read_model(pkg: Path, name: str) -> None:
    """Refuse (``ConfigError``) a package whose model is missing or not safetensors (its header is
    read from a streamed copy: the model is never whole in memory)."""
    scratch = pkg.with_name(".model-check.safetensors")
    try:
        extract_model(pkg, name, scratch)
        model_spec(scratch)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the model's bytes do, the submission is refused
        raise ConfigError(f"the job's model {name} does not load: {_short(exc)}") from None
    finally:
        scratch.unlink(missing_ok=True)


__all__ = ["Federation", "SecaggError"]
