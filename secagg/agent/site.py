"""The site agent's loop: register, then for each task admit, train, check, release, protect, upload.

Data flows one way through a round (DESIGN.md): :mod:`~secagg.agent.admission` (invariant 1) -> the
job's confined worker (:mod:`~secagg.agent.training`, invariant 8) -> the roster check
(:mod:`~secagg.agent.consistency`, invariant 7) -> :mod:`~secagg.agent.release` (filters and durable
debit, invariant 3) -> the mode's object (:mod:`~secagg.agent.modes`) -> the relay. This file only
orders those steps; it has no branch on the mode.

Memory (#21): nothing of the model's size is held whole. The task's payload is written to a file as it
arrives and becomes the round's global model by a rename; the fingerprint, the update, the filters
(:mod:`secagg.privacy.streamed`), the weighting and the protection read and write files a window at a
time (:mod:`~secagg.agent.roundfiles`), so the agent's peak is its interpreter plus a few windows
whatever the model's size (``python -m secagg.bench.site_agent``, BENCHMARKS.md "Site agent memory").
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from secagg.agent.admission import Admission, Admitted
from secagg.agent.consistency import BadSampleCount, check_roster, sample_count, sign_fingerprint
from secagg.agent.evaluation import NOTHING_HELD, CrossSiteEvaluation, keep_local_model
from secagg.agent.jobs import JobThreads
from secagg.agent.modes import ModeContext, Outgoing, SiteMode, Task, make_mode
from secagg.agent.outage import Outage
from secagg.agent.relay import TRANSIENT, AggregatorTooOld, Relay, RoundMovedOn, is_stale, reason_of
from secagg.agent.release import Releaser
from secagg.agent.roundfiles import (
    WeightedFile,
    atomic_copy,
    fingerprint_file,
    model_spec,
    spool_path,
    write_update,
)
from secagg.agent.sandbox import require_available
from secagg.agent.state import SiteState
from secagg.agent.training import Trainer
from secagg.agent.worker import RunResult, TrainingFailed
from secagg.auditlog import AuditLog
from secagg.bundle import BundleSpec
from secagg.errors import ConfigError, PolicyRefusal, SecaggError
from secagg.events import SITE_REFUSALS, Event
from secagg.policy.model import SitePolicy
from secagg.privacy.streamed import UpdateFile
from secagg.provision.kit import Kit
from secagg.reasons import Reason
from secagg.topics import Topic
from secagg.transport.generated import secagg_pb2_grpc as rpc
from secagg.transport.tls import channel

log = logging.getLogger("secagg.agent")
AGENT_VERSION = "secagg-agent/0.1"
#: how often the agent asks the aggregator which jobs run (an answer is immediate; this is the pace)
JOBS_POLL_S = 1.0
#: job states (as the aggregator names them) after which a job spends nothing more
_ENDED = frozenset({"finished", "aborted", "failed"})

__all__ = ["AGENT_VERSION", "Admitted", "RoundMovedOn", "SimulatedDropout", "SiteAgent"]


class _ConnectionLost(ConfigError):
    """A job's thread gave up on the aggregator (after ``reconnect_s``)."""


class SimulatedDropout(SecaggError):
    """Demos and tests only: the agent vanishes mid-round as a crashed site would."""

    code: str = Reason.SIMULATED_DROPOUT


class SiteAgent:
    """One site: serves the aggregator's tasks for the jobs its policy admits, until the job ends.

    It holds the kit, the state folder, the policy and the data folder's name; the job's code never
    sees any of them (it runs in a confined worker that gets the data folder read-only)."""

    def __init__(
        self,
        kit: Kit,
        data_dir: Path,
        state_dir: Path,
        *,
        policy_path: Path,
        max_payload: int = 64 << 30,
        target: str | None = None,
    ) -> None:
        if not data_dir.is_dir():
            raise ConfigError(f"data folder {data_dir} does not exist or is not a folder")
        try:
            next(iter(data_dir.iterdir()), None)
        except PermissionError:
            raise ConfigError(f"data folder {data_dir} is not readable") from None
        self.kit = kit
        self.name = kit.name
        self.data_dir = data_dir.resolve()
        self.state = SiteState(state_dir)
        self.audit = AuditLog(state_dir / "audit.jsonl", key=kit.private_key, node=kit.name)
        self.policy_path = policy_path
        self.target = target or kit.target
        #: demos and tests: (round, phase) at which this agent vanishes, as a crashed site would
        self.simulate_dropout: tuple[int, str] | None = None
        self.channel = channel(kit, target)
        self.stub = rpc.FederationStub(self.channel)
        self.relay = Relay(self.stub, max_payload=max_payload)
        self.releaser = Releaser(state=self.state, audit=self.audit, data_name=self.data_dir.name)
        self.admission = Admission(
            kit=kit,
            state=self.state,
            relay=self.relay,
            audit=self.audit,
            policy_path=policy_path,
            ledger_for=self.releaser.ledger_for,
            sandbox_check=lambda policy: require_available(policy.sandbox),
        )
        self.trainer = Trainer(
            site=self.name, data_dir=self.data_dir, state=self.state, load_policy=self.admission.load_policy
        )
        self._modes: dict[str, SiteMode] = {}
        self.cross_site = CrossSiteEvaluation(
            kit=kit,
            state=self.state,
            relay=self.relay,
            audit=self.audit,
            trainer=self.trainer,
            load_policy=self.admission.load_policy,
        )
        from secagg.metrics import SiteMetrics

        #: Prometheus metrics (rounds, bytes, refusals, privacy budget): never values or data
        self.metrics = SiteMetrics()
        self.audit.listeners.append(self._observe)
        #: per job (several run at once, each in a thread of its own): its mode, for the metrics'
        #: label, and when its current round began here
        self._job_mode: dict[str, str] = {}
        self._round_started: dict[str, float] = {}

    def close(self) -> None:
        self.trainer.close()
        self.channel.close()
        self.metrics.close()

    def _observe(self, record: dict[str, Any]) -> None:
        """Metrics follow the audit trail, so they can never say more than the audit log does."""
        event = record["event"]
        job = str(record.get("job") or "")
        if event == Event.UPLOADED:
            mode = self._job_mode.get(job, "")
            self.metrics.sent(job, mode, int(record.get("bytes") or 0))
            started = self._round_started.get(job, time.monotonic())
            self.metrics.round_done(job, mode, time.monotonic() - started)
        elif event in SITE_REFUSALS:
            self.metrics.refused(job, str(record.get("code", Reason.REFUSED)))

    def _observe_budget(self) -> None:
        ledger = self.releaser.ledger
        if ledger is None:
            return
        eps, delta, _ = ledger.total()
        eps_left, delta_left = ledger.remaining()
        self.metrics.budget(
            epsilon_spent=eps, epsilon_left=eps_left, delta_spent=delta, delta_left=delta_left
        )

    def _load_policy(self) -> SitePolicy:
        return self.admission.load_policy()

    def _mode_for(self, adm: Admitted, job_id: str) -> SiteMode:
        if job_id not in self._modes:
            ctx = ModeContext(
                kit=self.kit,
                state=self.state,
                relay=self.relay,
                audit=self.audit,
                target=self.target,
                load_policy=self._load_policy,
                maybe_drop=self._maybe_drop,
            )
            self._modes[job_id] = make_mode(adm.job.spec.mode, ctx)
        return self._modes[job_id]

    # ------------------------------------------------------------ connection
    def register(self, wait_s: float = 60.0) -> Any:
        """Register, waiting up to ``wait_s`` for an aggregator that does not answer yet.

        Why the agent's whole reconnect window (``run`` passes it): a site is often started before
        its aggregator, and an aggregator on a busy host can take over a minute to listen; a 50-site
        load run lost 4 sites that gave up after 60 s (RELIABILITY.md F15)."""
        deadline = time.monotonic() + wait_s
        waiting = False
        while True:
            try:
                reply = self.relay.register(AGENT_VERSION)
                if reply.site != self.name:
                    raise ConfigError(f"aggregator calls this site {reply.site!r}, kit says {self.name!r}")
                self.audit.append(Event.REGISTERED, project=reply.project)
                return reply
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and (
                    time.monotonic() < deadline
                ):
                    if not waiting:
                        waiting = True
                        print(
                            f"waiting for the aggregator at {self.kit.target} (up to {wait_s:.0f} s)",
                            flush=True,
                        )
                    time.sleep(0.5)
                    continue
                raise ConfigError(
                    f"cannot register with the aggregator at {self.kit.target}: {exc.details()}"
                ) from None

    def admit(self, job_id: str) -> Admitted:
        return self.admission.admit(job_id)

    # ------------------------------------------------------------ the loop
    def run(
        self, *, max_idle_s: float | None = None, stop_after_job: bool = True, reconnect_s: float = 300.0
    ) -> None:
        """Serve every running job the aggregator lists, each in a thread (and training worker) of its
        own, up to the policy's ``limits.max_concurrent_jobs``; with ``stop_after_job``, return once
        this site has served a job and none runs or waits any more. A job that fails here (a refusal,
        a broken consistency proof) ends that job only; with ``stop_after_job`` the first such error
        is raised once the other jobs in flight have ended. A lost connection (aggregator restart,
        network blip) is retried for ``reconnect_s``; a round in flight is then redone under the
        aggregator's new attempt, never uploaded twice (progress is recorded only after an accepted
        upload)."""
        self.register(wait_s=reconnect_s)
        self._settle_reservations()
        jobs = JobThreads(self._serve_job_thread(reconnect_s))
        idle_since = time.monotonic()
        outage = Outage(self.audit)  # one line when the aggregator goes, one when it is back
        try:
            while True:
                jobs.reap()
                if jobs.errors and stop_after_job:
                    if not jobs.active():  # the others in flight end as they would; then the error
                        raise next(iter(jobs.errors.values()))
                    time.sleep(JOBS_POLL_S)
                    continue
                try:
                    listing = self.relay.jobs()
                    outage.answered()
                except grpc.RpcError as exc:
                    if exc.code() not in TRANSIENT:
                        raise
                    jobs.reap()
                    if stop_after_job and jobs.served and not jobs.active() and not jobs.errors:
                        return  # what this site served is over, and the aggregator went (it exits when done)
                    if outage.failed(exc) > reconnect_s:
                        raise ConfigError(
                            f"lost the aggregator at {self.kit.target} for {reconnect_s:.0f} s: "
                            f"{exc.details()}"
                        ) from None
                    time.sleep(1.0)
                    continue
                listed = [str(j["job_id"]) for j in listing["jobs"] if isinstance(j, dict) and "job_id" in j]
                for job_id in listed:
                    if jobs.known(job_id):
                        continue
                    try:
                        self.admission.check_capacity(job_id, len(jobs.active()))
                    except PolicyRefusal:
                        jobs.skip(job_id)  # declined: this site sits the job out
                        continue
                    jobs.start(job_id)
                if jobs.active():
                    idle_since = time.monotonic()
                elif (
                    stop_after_job
                    and jobs.served
                    and all(jobs.known(j) for j in listed)
                    and not listing.get("queued")
                ):
                    return  # served, and nothing runs or waits that this site has not seen
                if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                    return
                time.sleep(JOBS_POLL_S)
        finally:
            jobs.reap()

    def _serve_job_thread(self, reconnect_s: float) -> Callable[[str], None]:
        def serve(job_id: str) -> None:
            self._serve_job(job_id, reconnect_s)

        return serve

    def _serve_job(self, job_id: str, reconnect_s: float) -> None:
        """One job's tasks, until it ends at this site (stop, finalize, or a refusal raised here).
        Its budget reservation is released when it ends, except on a lost connection (the job may
        go on when the agent is back, and keeps what it was admitted with)."""
        outage = Outage(self.audit, job=job_id)  # one line when the aggregator goes, one when back
        lost_since: float | None = None  # since the last task served: how long to keep trying
        try:
            while True:
                try:
                    if outage.since is not None and not outage.refused:
                        # out of reach, tried with a call answered at once (a task's fetch waits for
                        # one): the line that it is over says when it was, not when a task came
                        self.relay.job_state(job_id, 0)
                        outage.answered()
                    done = self._serve_one(job_id, True)
                    outage.answered()  # a refusing aggregator's outage ends when a try gets through
                    lost_since = None
                except grpc.RpcError as exc:
                    if exc.code() not in TRANSIENT:
                        raise
                    outage.failed(exc)
                    lost_since = lost_since or time.monotonic()
                    if time.monotonic() - lost_since > reconnect_s:
                        raise _ConnectionLost(
                            f"lost the aggregator at {self.kit.target} for {reconnect_s:.0f} s: "
                            f"{exc.details()}"
                        ) from None
                    time.sleep(1.0)
                    continue
                if done is not None and done[1]:
                    break
        except _ConnectionLost:
            raise
        except BaseException:
            self._end_reservation(job_id)
            raise
        self._end_reservation(job_id)

    def _end_reservation(self, job_id: str) -> None:
        try:
            self.releaser.release_reservation(job_id)
        except Exception:  # noqa: BLE001 - settled at the next start (see _settle_reservations)
            log.exception("could not release the budget reservation of %s", job_id)

    def _settle_reservations(self) -> None:
        """Release the reservations of jobs that ended while this agent was not running."""
        for job_id in self.releaser.reserved_jobs():
            try:
                state = self.relay.job_state(job_id, 0)
            except grpc.RpcError:
                return  # asked again at the next start
            if state in _ENDED:
                self.releaser.release_reservation(job_id)

    def _serve_one(self, job_id: str, stop_after_job: bool) -> tuple[str, bool] | None:
        """Fetch and do one task; ``None`` when there was nothing to do."""
        prog = self.state.progress(job_id) if job_id else {"round": 0, "attempt": 0, "global_round": 0}
        # the task's payload (a model) goes to a file as it arrives; a mode moves it into the state
        payload = spool_path(self.state.job_dir(job_id) if job_id else self.state.root, "task")
        try:
            return self._do_task(
                job_id, payload, stop_after_job, self.relay.fetch_task_to(job_id, prog, payload)
            )
        finally:
            payload.unlink(missing_ok=True)

    def _do_task(
        self, job_id: str, payload: Path, stop_after_job: bool, header: dict[str, Any]
    ) -> tuple[str, bool] | None:
        kind = header.get("kind")
        if kind == "wait":
            return None
        if not isinstance(header.get("job_id"), str) or not header["job_id"]:
            raise AggregatorTooOld(f"it sent a {kind!r} task without a job id")
        job_id = header["job_id"]
        self.state.set_last_job(job_id)
        if kind == "stop":
            self.audit.append(Event.JOB_STOPPED, job=job_id, reason=header.get("reason"))
            self.relay.audit_head(job_id, self.audit.head())
            self.trainer.end_job(job_id)
            self.releaser.end_job(job_id)
            return job_id, stop_after_job
        try:
            if kind == "train":
                self._train(header, payload)
            elif kind == "finalize":
                self._finalize(header, payload)
                self.audit.append(Event.JOB_DONE, job=job_id)
                self.relay.audit_head(job_id, self.audit.head())
                self.trainer.end_job(job_id)
                self.releaser.end_job(job_id)
                return job_id, stop_after_job
        except RoundMovedOn as exc:
            self.audit.append(Event.ROUND_ABANDONED, job=job_id, round=header.get("round"), reason=str(exc))
        except grpc.RpcError as exc:
            # the round moved on without us (aggregator restarted it, or it closed), or the job ended
            # (aborted) while this site trained: the next task says what comes next
            if not (is_stale(exc) or reason_of(exc) == Reason.NO_SUCH_JOB):
                raise
            self.audit.append(
                Event.ROUND_ABANDONED, job=job_id, round=header.get("round"), reason=exc.details()
            )
        except TrainingFailed as exc:
            # the job's code failed (crash, hang, limit, broken protocol): one round lost, not the agent
            round_ = int(header.get("round", 0))
            self.relay.decline(job_id, round_, exc.code, str(exc), round_only=True)
            self.audit.append(Event.ROUND_DECLINED, job=job_id, round=round_, code=exc.code, reason=str(exc))
        except PolicyRefusal as exc:
            self.relay.decline(job_id, int(header.get("round", 0)), exc.code, str(exc))
            self.audit.append(
                Event.ROUND_DECLINED, job=job_id, round=header.get("round"), code=exc.code, reason=str(exc)
            )
            raise
        return job_id, False

    # ------------------------------------------------------------ one round
    def _task(self, header: dict[str, Any], payload: Path) -> tuple[Admitted, SiteMode, Task, Path]:
        """Admit (once), re-check the policy, and obtain the round's global model through the mode
        (a file in the site's state, never loaded whole)."""
        job_id = header["job_id"]
        adm = self.admit(job_id)
        self._job_mode[job_id] = adm.job.spec.mode
        self.metrics.received(job_id, adm.job.spec.mode, payload.stat().st_size if payload.is_file() else 0)
        adm = self.admission.recheck(job_id, int(header["round"]))
        mode = self._mode_for(adm, job_id)
        task = Task(adm.job, job_id, int(header["round"]), header, payload)
        return adm, mode, task, mode.receive_global(task)

    def _train(self, header: dict[str, Any], payload: Path) -> None:
        job_id, round_ = header["job_id"], int(header["round"])
        self._round_started[job_id] = time.monotonic()
        adm, mode, task, global_path = self._task(header, payload)
        # every model-sized thing of the round is a file read a window at a time (roundfiles)
        bspec = model_spec(global_path)
        fp = fingerprint_file(global_path, bspec)  # once: the mode's check and the consistency proof
        mode.check_global(task, fp)
        result = self.trainer.run(adm, job_id, "train", round_, global_path)
        assert result.local_path is not None
        jdir = self.state.job_dir(job_id)
        try:
            update = write_update(result.local_path, global_path, bspec, spool_path(jdir, "update"))
        finally:
            result.local_path.unlink(missing_ok=True)
        try:
            self._release_and_send(header, adm, mode, result, bspec, fp, global_path, update)
        finally:
            update.path.unlink(missing_ok=True)

    def _release_and_send(
        self,
        header: dict[str, Any],
        adm: Admitted,
        mode: SiteMode,
        result: RunResult,
        bspec: BundleSpec,
        fp: str,
        global_path: Path,
        update: UpdateFile,
    ) -> None:
        job_id, round_, attempt = header["job_id"], int(header["round"]), int(header["attempt"])
        spec = adm.job.spec
        try:
            n_samples = sample_count(result.num_samples)
        except BadSampleCount as exc:
            raise TrainingFailed(f"the training script sent an unusable num_samples: {exc}") from None
        ready = {
            "attempt": attempt,
            "n_samples": n_samples,
            "fingerprint": sign_fingerprint(
                self.kit.private_key, fp, job_id, round_, attempt, self.name, n_samples=n_samples
            ),
        }
        self.relay.post_json(Topic.READY, ready, job_id=job_id, round_=round_)
        roster: dict[str, Any] = json.loads(
            self.relay.collect(Topic.ROSTER, job_id=job_id, round_=round_, attempt=attempt)
        )
        if roster.get("attempt") != attempt or self.name not in roster["weights"]:
            self.audit.append(Event.NOT_IN_ROSTER, job=job_id, round=round_)
            return
        weights = check_roster(
            roster["ready"],
            me=self.name,
            own_fingerprint=fp,
            own_samples=n_samples,
            job=job_id,
            round_=round_,
            attempt=attempt,
            peers=self.kit.peer_certs(),
            ca_cert=self.kit.ca_cert,
            min_sites=spec.min_sites,
            weights=roster["weights"],
            min_weight_share=self._load_policy().limits.min_weight_share,
        )
        self.audit.append(
            Event.MODEL_CONSISTENT, job=job_id, round=round_, fingerprint=fp, sites=sorted(roster["ready"])
        )
        # the policy may have changed while we trained; no budget is spent for a round not uploaded
        adm = self.admission.recheck(job_id, round_)
        state = self.relay.job_state(job_id, round_)
        if state != "running":
            self.audit.append(Event.ROUND_ABANDONED, job=job_id, round=round_, reason=f"job is {state}")
            return
        release = self.releaser.release(
            adm,
            self._load_policy(),
            job_id,
            round_,
            update,
            self.releaser.training_spends(adm, result.training_spends),
        )
        try:
            self._observe_budget()
            weight = weights[self.name]  # recomputed from the signed counts, never the aggregator's number
            assert isinstance(release.update, UpdateFile)
            out = Outgoing(
                spec=spec,
                job_id=job_id,
                round=round_,
                attempt=attempt,
                bspec=bspec,
                # the released update times the weight, window by window as the mode protects it
                weighted=WeightedFile(release.update, weight),
                weight=weight,
                sites=sorted(weights),
                metrics=result.metrics,
            )
            sent = mode.protect_and_send(out)
            self.releaser.uploaded(release, job_id, round_, attempt, size=sent.bytes, accepted=sent.accepted)
            if spec.evaluation == "cross_site" and round_ == spec.rounds and sent.accepted:
                keep_local_model(self.state, job_id, global_path, release.update)
        finally:
            self.releaser.discard(release, job_id, round_)

    def _maybe_drop(self, round_: int, phase: str) -> None:
        if self.simulate_dropout == (round_, phase):
            self.audit.append(Event.SIMULATED_DROPOUT, round=round_, phase=phase)
            raise SimulatedDropout(f"{self.name}: simulated dropout in round {round_} before {phase}")

    def _finalize(self, header: dict[str, Any], payload: Path) -> None:
        job_id, round_ = header["job_id"], int(header["round"])
        adm, mode, task, global_path = self._task(header, payload)
        mode.check_global(task, fingerprint_file(global_path, model_spec(global_path)))
        atomic_copy(global_path, self.state.job_dir(job_id) / "final.safetensors")
        # what a restarted aggregator still holds of this site's part (see secagg.agent.evaluation)
        got = header.get("xsite")
        held: dict[str, Any] = {**NOTHING_HELD, **got} if isinstance(got, dict) else dict(NOTHING_HELD)
        if not held.get("metrics"):
            result = self.trainer.run(adm, job_id, "evaluate", round_, global_path)
            if not held.get("final"):
                self.relay.post_json(Topic.FINAL, result.metrics, job_id=job_id, round_=round_)
            if adm.job.spec.evaluation == "cross_site":
                self.cross_site.run(
                    adm, job_id, round_, global_path, result.metrics, {**NOTHING_HELD, **held}
                )
        self.state.set_progress(job_id, round=round_, attempt=1)
