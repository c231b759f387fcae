"""The site agent's main loop: register, obtain the HE key, then for each task admit, train,
protect and upload.

Order of trust (security invariant 1): the job package is verified (signature, chain, digests) and
admitted by the site policy before anything from it is extracted or run.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import ssl
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from secagg.agent.consistency import BadSampleCount, check_roster, sample_count, sign_fingerprint
from secagg.agent.protect import protect_he, protect_plain
from secagg.agent.runner import TrainingFailed, run_entry
from secagg.agent.state import SiteState
from secagg.auditlog import AuditLog
from secagg.bundle import BundleSpec, fingerprint, from_safetensors, to_safetensors
from secagg.errors import ConfigError, IdentityError, IntegrityError, PolicyRefusal, SecaggError
from secagg.framing import frame, unframe
from secagg.fsio import atomic_write
from secagg.jobs.filters import DpsgdFilter
from secagg.jobs.job import VerifiedJob
from secagg.policy.admit import admit_job
from secagg.policy.check import load_policy
from secagg.policy.decide import Decision, decide
from secagg.policy.model import SitePolicy
from secagg.privacy.ledger import Ledger
from secagg.privacy.release import Release, prepare_release
from secagg.privacy.specs import apply_chain, build_chain
from secagg.privacy.spend import Spend
from secagg.provision.kit import Kit
from secagg.strategy import StrategyState, make_strategy
from secagg.tee.site import KeyPin, TrustedAggregator, verify_aggregator
from secagg.transport.chunks import coalesce, encode_stream, read_all
from secagg.transport.generated import secagg_pb2 as pb
from secagg.transport.generated import secagg_pb2_grpc as rpc
from secagg.transport.tls import channel

log = logging.getLogger("secagg.agent")
AGENT_VERSION = "secagg-agent/0.1"
POLL_S = 10.0
_STALE = ("late:", "wrong_round:", "not_in_roster:")
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class JobStopped(SecaggError):
    code = "job_stopped"


class RoundMovedOn(SecaggError):
    """The aggregator closed the round this site was in; the next task redoes what is needed."""

    code = "round_moved_on"


class SimulatedDropout(SecaggError):
    """Demos and tests only: the agent vanishes mid-round as a crashed site would."""

    code = "simulated_dropout"


class SiteAgent:
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
        self.audit = AuditLog(state_dir / "audit.jsonl")
        self.policy_path = policy_path
        self.max_payload = max_payload
        self.target = target or kit.target
        #: demos and tests: (round, phase) at which this agent vanishes, as a crashed site would
        self.simulate_dropout: tuple[int, str] | None = None
        self.channel = channel(kit, target)
        self.stub = rpc.FederationStub(self.channel)
        self._secret_ctx: Any = None
        self._jobs: dict[str, Admitted] = {}
        self._ledger: Ledger | None = None
        self._load_policy()  # a site never runs without a policy that loads
        from secagg.metrics import SiteMetrics

        #: Prometheus metrics (rounds, bytes, refusals, privacy budget): never values or data
        self.metrics = SiteMetrics()
        self.audit.listeners.append(self._observe)
        self._round_started = time.monotonic()
        self._mode = ""

    def close(self) -> None:
        self.channel.close()
        self.metrics.close()

    def _observe(self, record: dict[str, Any]) -> None:
        """Metrics follow the audit trail, so they can never say more than the audit log does."""
        event = record["event"]
        if event == "uploaded":
            self.metrics.sent(self._mode, int(record.get("bytes") or 0))
            self.metrics.round_done(self._mode, time.monotonic() - self._round_started)
        elif event in ("round_declined", "job_refused", "aggregator_refused"):
            self.metrics.refused(str(record.get("code", "refused")))

    def _observe_budget(self) -> None:
        if self._ledger is None:
            return
        eps, delta, _ = self._ledger.total()
        eps_left, delta_left = self._ledger.remaining()
        self.metrics.budget(
            epsilon_spent=eps, epsilon_left=eps_left, delta_spent=delta, delta_left=delta_left
        )

    # ------------------------------------------------------------ connection
    def register(self, wait_s: float = 60.0) -> pb.RegisterReply:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                reply = self.stub.Register(pb.RegisterRequest(agent_version=AGENT_VERSION), timeout=10)
                if reply.site != self.name:
                    raise ConfigError(f"aggregator calls this site {reply.site!r}, kit says {self.name!r}")
                self.audit.append("registered", project=reply.project)
                return reply
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and (
                    time.monotonic() < deadline
                ):
                    time.sleep(0.5)
                    continue
                raise ConfigError(
                    f"cannot register with the aggregator at {self.kit.target}: {exc.details()}"
                ) from None

    # ------------------------------------------------------------ HE key custody
    def he_context(self) -> Any:
        """The shared CKKS secret context: made here if this site is the key holder, else received
        sealed to this site's certificate key."""
        if self._secret_ctx is not None:
            return self._secret_ctx
        from secagg.he import store as he_store

        path = self.state.root / "he-secret.ctx"
        if path.is_file():
            self._secret_ctx = he_store.load_secret_context_file(path)
            return self._secret_ctx
        if self.name == self.kit.config.key_holder:
            from secagg.he.context import make_secret_context
            from secagg.he.custody import make_key_envelopes
            from secagg.he.params import SECAGG_DEFAULT

            ctx = make_secret_context(SECAGG_DEFAULT)
            release = make_key_envelopes(
                ctx, self.kit.private_key, self.kit.cert, self.kit.peer_certs(), self.kit.config.project
            )
            he_store.save_secret_context(path, ctx)
            try:
                self.stub.Post(pb.Message(topic="he-key", payload=release.to_bytes()), timeout=60)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
            self.audit.append("he_key_created", recipients=sorted(release.envelopes))
        else:
            from secagg.he.custody import KeyRelease, open_envelope, verify_public_context

            blob = None
            while blob is None:
                for msg in self.stub.Collect(
                    pb.CollectRequest(topic="he-key", timeout_seconds=POLL_S), timeout=POLL_S + 30
                ):
                    blob = msg.payload
            release = KeyRelease.from_bytes(blob)
            holder = self.kit.config.key_holder
            public = verify_public_context(
                release.public_context,
                release.public_context_sig,
                release.holder_cert,
                self.kit.ca_cert,
                holder,
                self.kit.config.project,
            )
            if self.name not in release.envelopes:
                raise IntegrityError(f"the HE key release has no envelope for {self.name}")
            ctx = open_envelope(
                release.envelopes[self.name],
                self.kit.private_key,
                self.name,
                self.kit.config.project,
                public=public,
            )
            he_store.save_secret_context(path, ctx)
            self.audit.append("he_key_received", holder=holder)
        self._secret_ctx = he_store.load_secret_context_file(path)
        return self._secret_ctx

    # ------------------------------------------------------------ admission
    def admit(self, job_id: str) -> Admitted:
        """Verify the package and decide on it with the site policy before anything of it runs."""
        if job_id in self._jobs:
            return self._jobs[job_id]
        jdir = self.state.job_dir(job_id)
        pkg = jdir / "package.tar.gz"
        _, data = read_all(
            iter(self.stub.FetchJob(pb.JobRequest(job_id=job_id), timeout=120)), max_bytes=self.max_payload
        )
        pkg.write_bytes(data)
        dest = jdir / "pkg"
        shutil.rmtree(dest, ignore_errors=True)
        policy = self._load_policy()
        try:
            job, decision = admit_job(pkg, policy, self.kit.ca_cert, dest=dest)
            decision.raise_if_refused()
            if policy.privacy.budget is not None:
                # what this data set has already spent counts too, not only this job's worst case
                self._ledger_for(policy).admission_check(decision.spends)
        except SecaggError as exc:
            shutil.rmtree(dest, ignore_errors=True)
            self.audit.append("job_refused", job=job_id, code=exc.code, reason=str(exc))
            self._decline(job_id, 0, exc.code, str(exc))
            raise
        self.audit.append(
            "job_admitted",
            job=job_id,
            signers=[s.describe() for s in job.signers],
            mode=job.spec.mode,
            filters=[f.name for f in decision.effective_privacy],
        )
        admitted = Admitted(job, decision, self._policy_stamp())
        self._jobs[job_id] = admitted
        return admitted

    def _policy_stamp(self) -> tuple[int, int]:
        st = self.policy_path.stat()
        return (st.st_mtime_ns, st.st_size)

    def _load_policy(self) -> SitePolicy:
        return load_policy(self.policy_path)

    def _recheck_policy(self, job_id: str, round_: int) -> Admitted:
        """A policy changed on disk mid-job takes effect now: the job goes on only if it still passes."""
        adm = self._jobs[job_id]
        try:
            stamp = self._policy_stamp()
        except OSError as exc:
            raise PolicyRefusal(
                f"site policy {self.policy_path} is unreadable: {exc}", code="policy_unreadable"
            ) from None
        if stamp == adm.policy_stamp:
            return adm
        try:
            decision = decide(self._load_policy(), adm.job.spec, list(adm.job.signers), job_root=adm.job.root)
        except SecaggError as exc:
            raise PolicyRefusal(
                f"site policy {self.policy_path} no longer loads: {exc}", code="policy_invalid"
            ) from None
        self.audit.append("policy_reloaded", job=job_id, round=round_, accept=decision.accept)
        if not decision.accept:
            failed = "; ".join(r.text for r in decision.reasons if not r.ok)
            code = next((r.code for r in decision.reasons if not r.ok), "policy")
            raise PolicyRefusal(
                f"the changed site policy refuses job {job_id} from round {round_}: {failed}", code=code
            )
        adm = Admitted(adm.job, decision, stamp)
        self._jobs[job_id] = adm
        return adm

    def _decline(self, job_id: str, round_: int, code: str, message: str) -> None:
        payload = json.dumps({"code": code, "message": message}).encode()
        try:
            self.stub.Post(
                pb.Message(topic="declined", job_id=job_id, round=round_, payload=payload), timeout=30
            )
        except grpc.RpcError as exc:
            log.warning("could not report the declined task: %s", exc.details())

    # ------------------------------------------------------------ the loop
    def run(
        self, *, max_idle_s: float | None = None, stop_after_job: bool = True, reconnect_s: float = 300.0
    ) -> None:
        """Serve tasks until the job ends. A lost connection (aggregator restart, network blip) is
        retried for ``reconnect_s``; the round in flight is then redone under the aggregator's new
        attempt, never uploaded twice (progress is recorded only after an accepted upload)."""
        self.register()
        idle_since = time.monotonic()
        lost_since: float | None = None
        job_id = self.state.last_job()
        while True:
            try:
                done = self._serve_one(job_id, stop_after_job)
                lost_since = None
            except grpc.RpcError as exc:
                if exc.code() not in _TRANSIENT:
                    raise
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > reconnect_s:
                    raise ConfigError(
                        f"lost the aggregator at {self.kit.target} for {reconnect_s:.0f} s: {exc.details()}"
                    ) from None
                self.audit.append("connection_lost", code=str(exc.code()), detail=exc.details())
                time.sleep(1.0)
                continue
            if done is None:
                if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                    return
                continue
            idle_since = time.monotonic()
            job_id, finished = done
            if finished:
                return

    def _serve_one(self, job_id: str, stop_after_job: bool) -> tuple[str, bool] | None:
        """Fetch and do one task; ``None`` when there was nothing to do."""
        prog = self.state.progress(job_id) if job_id else {"round": 0, "attempt": 0, "global_round": 0}
        stream = self.stub.FetchTask(
            pb.TaskRequest(
                job_id=job_id,
                after_round=prog["round"],
                after_attempt=prog["attempt"],
                has_global_round=prog["global_round"],
                poll_seconds=POLL_S,
            ),
            timeout=POLL_S + 60,
        )
        header, payload = read_all(iter(stream), max_bytes=self.max_payload)
        kind = header.get("kind")
        if kind == "wait":
            return None
        job_id = header["job_id"]
        self.state.set_last_job(job_id)
        if kind == "stop":
            self.audit.append("job_stopped", job=job_id, reason=header.get("reason"))
            return job_id, stop_after_job
        try:
            if kind == "train":
                self._train(header, payload)
            elif kind == "finalize":
                self._finalize(header, payload)
                self.audit.append("job_done", job=job_id)
                return job_id, stop_after_job
        except RoundMovedOn as exc:
            self.audit.append("round_abandoned", job=job_id, round=header.get("round"), reason=str(exc))
        except grpc.RpcError as exc:
            # the round moved on without us (aggregator restarted it, or it closed): redo what comes next
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION or not str(exc.details()).startswith(_STALE):
                raise
            self.audit.append("round_abandoned", job=job_id, round=header.get("round"), reason=exc.details())
        except PolicyRefusal as exc:
            self._decline(job_id, int(header.get("round", 0)), exc.code, str(exc))
            self.audit.append(
                "round_declined", job=job_id, round=header.get("round"), code=exc.code, reason=str(exc)
            )
            raise
        return job_id, False

    # ------------------------------------------------------------ one round
    def _global(self, adm: Admitted, header: dict[str, Any], payload: bytes, job_id: str) -> bytes:
        """Materialise the global model this task is about, from what the aggregator sent.

        In ``he`` mode the aggregator only ever holds ciphertexts: the site decrypts each round's
        averaged update and applies the job's strategy itself, from state it keeps durably, so every
        site computes the same model without the aggregator seeing it.
        """
        spec = adm.job.spec
        if spec.mode != "he":
            from_safetensors(payload)  # parse check before it is stored or used
            self.state.save_global(job_id, int(header["base_round"]), payload)
            return payload
        base = int(header["base_round"])
        if base == 0:
            data = (adm.job.root / spec.model).read_bytes()
        else:
            path = self.state.global_path(job_id, base)
            if not path.is_file():
                raise ConfigError(
                    f"site state has no global model of round {base}; cannot resume job {job_id}"
                )
            data = path.read_bytes()
        bundle = from_safetensors(data)
        bspec = BundleSpec.of(bundle)
        vec = bspec.flatten(bundle)
        strategy = make_strategy(spec.strategy)
        state_file = self.state.job_dir(job_id) / f"strategy-{base}.bin"
        st = (
            StrategyState.from_bytes(state_file.read_bytes())
            if state_file.is_file()
            else strategy.init_state(vec)
        )
        from secagg.he.codec import decrypt_vector

        offset = 0
        for upd in header["updates"]:
            piece = payload[offset : offset + int(upd["bytes"])]
            offset += int(upd["bytes"])
            avg = decrypt_vector(self.he_context(), unframe(BytesIO(piece)), bspec.size) * float(upd["scale"])
            vec, st = strategy.apply(vec, avg, st)
            data = to_safetensors(bspec.unflatten(vec), order=bspec.names)
            r = int(upd["round"])
            atomic_write(self.state.job_dir(job_id) / f"strategy-{r}.bin", st.to_bytes())
            self.state.save_global(job_id, r, data)
        return data

    def _run_script(
        self, adm: Admitted, job_id: str, task_kind: str, round_: int, global_bytes: bytes
    ) -> Any:
        jdir = self.state.job_dir(job_id)
        io_dir = jdir / "io"
        io_dir.mkdir(exist_ok=True)
        (io_dir / "global.safetensors").write_bytes(global_bytes)
        task = {
            "task": task_kind,
            "round": round_,
            "site": self.name,
            "data_dir": str(self.data_dir),
            "params": adm.job.spec.params,
            "strategy": make_strategy(adm.job.spec.strategy).client_config(),
            "dpsgd": next(
                (f.model_dump() for f in adm.decision.effective_privacy if f.name == "dpsgd"), None
            ),
        }
        return run_entry(
            adm.job.root,
            adm.job.spec.entry,
            io_dir,
            task=task,
            timeout=adm.job.spec.round_timeout * 10,
            log=jdir / "train.log",
        )

    def _train(self, header: dict[str, Any], payload: bytes) -> None:
        job_id, round_, attempt = header["job_id"], int(header["round"]), int(header["attempt"])
        self._round_started = time.monotonic()
        adm = self.admit(job_id)
        self._mode = adm.job.spec.mode
        self.metrics.received(self._mode, len(payload))
        adm = self._recheck_policy(job_id, round_)
        spec = adm.job.spec
        if spec.mode == "he":
            self.he_context()
        global_bytes = self._global(adm, header, payload, job_id)
        bundle = from_safetensors(global_bytes)
        bspec = BundleSpec.of(bundle)
        fp = fingerprint(bundle)  # hashed once: the tee check and the consistency proof both use it
        trusted = self._attest_and_check_model(job_id, header, fp) if spec.mode == "tee" else None
        result = self._run_script(adm, job_id, "train", round_, global_bytes)
        assert result.local is not None and result.num_samples is not None
        bspec.check(result.local)
        update = OrderedDict(
            (k, (result.local[k].astype(np.float64) - bundle[k]).astype(np.float32)) for k in bspec.names
        )
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
        self.stub.Post(
            pb.Message(topic="ready", job_id=job_id, round=round_, payload=json.dumps(ready).encode()),
            timeout=60,
        )
        roster: dict[str, Any] = json.loads(self._collect(job_id, round_, attempt, "roster"))
        if roster.get("attempt") != attempt or self.name not in roster["weights"]:
            self.audit.append("not_in_roster", job=job_id, round=round_)
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
            "model_consistent", job=job_id, round=round_, fingerprint=fp, sites=sorted(roster["ready"])
        )
        # the policy may have changed while we trained; no budget is spent for a round not uploaded
        adm = self._recheck_policy(job_id, round_)
        state = self.stub.Heartbeat(pb.HeartbeatRequest(job_id=job_id, round=round_), timeout=30).job_state
        if state != "running":
            self.audit.append("round_abandoned", job=job_id, round=round_, reason=f"job is {state}")
            return
        release = self._release(adm, job_id, round_, update, self._training_spends(adm, result))
        weight = weights[self.name]  # recomputed from the signed counts, never the aggregator's number
        weighted = bspec.flatten(release.update) * weight
        if spec.mode == "mask":
            sent = self._mask_round(
                job_id, round_, sorted(weights), weighted, weight, attempt, result.metrics
            )
            if release.debit_id and self._ledger is not None:
                self._ledger.mark_released(release.debit_id)
            self.state.set_progress(job_id, round=round_, attempt=attempt)
            self.audit.append(
                "uploaded", job=job_id, round=round_, attempt=attempt, bytes=sent, accepted=True
            )
            return
        stream: Iterator[bytes]
        if spec.mode == "he":
            stream = protect_he(self.he_context(), weighted)
        elif spec.mode == "tee":
            assert trusted is not None
            sealed = trusted.seal_update(b"".join(protect_plain(bspec, weighted)), job_id, round_, self.name)
            stream = frame(sealed)
        else:
            stream = protect_plain(bspec, weighted)
        parts = list(stream)  # frames as made: no second copy of the whole upload
        size = sum(len(p) for p in parts)
        up_header = {
            "job_id": job_id,
            "round": round_,
            "attempt": attempt,
            "bytes": size,
            "mode": spec.mode,
            # metrics of the model as received leave only after every site proved it is the same model
            "metrics": result.metrics,
        }
        reply = self.stub.UploadResult(encode_stream(up_header, coalesce(parts)), timeout=600)
        if release.debit_id and self._ledger is not None:
            self._ledger.mark_released(release.debit_id)
        self.state.set_progress(job_id, round=round_, attempt=attempt)
        self.audit.append(
            "uploaded",
            job=job_id,
            round=round_,
            attempt=attempt,
            bytes=size,
            accepted=reply.accepted,
            epsilon=sum(sp.epsilon for sp in release.spends) or None,
        )

    def _training_spends(self, adm: Admitted, result: Any) -> list[Spend]:
        """DP-SGD is the one filter a site cannot add after training: refuse an update without it."""
        target = next((f for f in adm.decision.effective_privacy if isinstance(f, DpsgdFilter)), None)
        spends = [Spend(**sp) for sp in result.training_spends]
        if target is not None and not any(sp.mechanism == "dpsgd" and sp.steps for sp in spends):
            raise PolicyRefusal(
                "this site's policy requires DP-SGD, but the training script took no optimizer step "
                "under it (train with a torch optimizer over batches from a DataLoader)",
                code="dpsgd_not_applied",
            )
        spent = sum(sp.epsilon for sp in spends if sp.mechanism == "dpsgd")
        # Opacus calibrates to within 0.01 of the target; more than that was not admitted
        if target is not None and spent > target.target_epsilon + 0.011:
            raise PolicyRefusal(
                f"DP-SGD spent epsilon {spent:.4g} this round, over the {target.target_epsilon} admitted",
                code="dpsgd_overspent",
            )
        return spends

    def _release(
        self,
        adm: Admitted,
        job_id: str,
        round_: int,
        update: OrderedDict[str, np.ndarray],
        training_spends: list[Spend] | None = None,
    ) -> Release:
        """Apply every filter the policy requires, then debit the budget durably (invariant 3)."""
        chain = build_chain(adm.decision.effective_privacy)
        rng = np.random.default_rng()
        policy = self._load_policy()
        budget = policy.privacy.budget
        if budget is None:
            filtered, spends = apply_chain(chain, update, rng)
            spends = [*(training_spends or []), *spends]
            if any(sp.epsilon > 0 for sp in spends):
                self.audit.append("spend_without_budget", job=job_id, round=round_)
            return Release(filtered, spends, "")
        release = prepare_release(
            self._ledger_for(policy), chain, update, rng, job_id, round_, training_spends or ()
        )
        self._observe_budget()
        return release

    def _ledger_for(self, policy: SitePolicy) -> Ledger:
        """The data set's durable ledger, with the budget the current policy declares."""
        budget = policy.privacy.budget
        assert budget is not None
        if self._ledger is None or (self._ledger.budget_epsilon, self._ledger.budget_delta) != (
            budget.epsilon,
            budget.delta,
        ):
            if self._ledger is not None:
                self._ledger.close()
            self._ledger = Ledger(
                self.state.root / "privacy-ledger.sqlite", self.data_dir.name, budget.epsilon, budget.delta
            )
        return self._ledger

    def _mask_round(
        self,
        job_id: str,
        round_: int,
        sites: list[str],
        weighted: np.ndarray,
        weight: float,
        attempt: int,
        metrics: dict[str, float],
    ) -> int:
        """The site's side of the masking protocol; returns the bytes sent. The client object refuses
        substituted keys, tampered shares and any request for both shares of one site."""
        from secagg.mask.client import MaskClient
        from secagg.mask.job import mask_config, unpack
        from secagg.mask.messages import AdvertiseKeys, EncryptedShare, UnmaskRequest

        adm = self._jobs[job_id]
        cfg = mask_config(adm.job.spec.mask, len(sites))
        client = MaskClient(
            self.name, self.kit.private_key, self.kit.cert, self.kit.ca_cert, cfg, job_id, round_, sites=sites
        )
        sent = 0

        def post(topic: str, payload: bytes) -> None:
            nonlocal sent
            sent += len(payload)
            self.stub.Post(pb.Message(topic=topic, job_id=job_id, round=round_, payload=payload), timeout=60)

        post("mask-keys", client.advertise().to_bytes())
        keyroster = [
            AdvertiseKeys.from_bytes(b)
            for b in unpack(self._collect(job_id, round_, attempt, "mask-keyroster"))
        ]
        shares = client.share_keys(keyroster)
        post(
            "mask-shares",
            json.dumps({k: base64.b64encode(v.to_bytes()).decode() for k, v in shares.items()}).encode(),
        )
        self._maybe_drop(round_, "upload")
        mine = [
            EncryptedShare.from_bytes(b)
            for b in unpack(self._collect(job_id, round_, attempt, "mask-myshares"))
        ]
        masked = client.masked_input(weighted, weight, mine).to_bytes()
        header = {
            "job_id": job_id,
            "round": round_,
            "attempt": attempt,
            "bytes": len(masked),
            "mode": "mask",
            "metrics": metrics,
        }
        self.stub.UploadResult(encode_stream(header, [masked]), timeout=600)
        sent += len(masked)
        self._maybe_drop(round_, "unmask")
        request = UnmaskRequest.from_bytes(self._collect(job_id, round_, attempt, "mask-unmask"))
        post("mask-unmask-resp", client.unmask(request).to_bytes())
        return sent

    def _maybe_drop(self, round_: int, phase: str) -> None:
        if self.simulate_dropout == (round_, phase):
            self.audit.append("simulated_dropout", round=round_, phase=phase)
            raise SimulatedDropout(f"{self.name}: simulated dropout in round {round_} before {phase}")

    def _collect(self, job_id: str, round_: int, attempt: int, topic: str) -> bytes:
        """Wait for what the aggregator publishes for this site in the current phase."""
        while True:
            for msg in self.stub.Collect(
                pb.CollectRequest(
                    topic=topic, job_id=job_id, round=round_, attempt=attempt, timeout_seconds=POLL_S
                ),
                timeout=POLL_S + 30,
            ):
                if msg.payload.startswith(b"{") and b'"cancelled"' in msg.payload[:32]:
                    raise RoundMovedOn(f"round {round_} of {job_id} was closed during {topic}")
                if msg.payload.startswith(b"{") and b'"not_for_you"' in msg.payload[:32]:
                    raise RoundMovedOn(f"the aggregator left this site out of {topic} in round {round_}")
                return bytes(msg.payload)

    def _attest_and_check_model(
        self, job_id: str, header: dict[str, Any], model_fp: str
    ) -> TrustedAggregator:
        """Invariant 4: fresh evidence for our own nonce, bound to the keys we will seal to and to the
        TLS certificate we see, accepted by our policy; and the global model signed by the bound key."""
        policy = self._load_policy()
        if policy.attestation is None:
            raise PolicyRefusal(
                "this site's policy has no attestation section: it accepts no TEE", code="attestation_missing"
            )
        nonce = os.urandom(32)
        reply = self.stub.Attest(pb.AttestRequest(job_id=job_id, nonce=nonce), timeout=60)
        pin_file = self.state.root / "tee-key-pins.json"
        pin = KeyPin.from_json(pin_file.read_text()) if pin_file.is_file() else KeyPin()
        try:
            trusted = verify_aggregator(
                reply.evidence_message,
                nonce,
                self._server_cert_der(),
                policy.attestation.validation_options(),
                allow_insecure_dev_tee=policy.attestation.allow_insecure_dev_tee,
                key_pin=pin,
                job=job_id,
            )
        except PolicyRefusal as exc:
            self.audit.append("aggregator_refused", job=job_id, code=exc.code, reason=str(exc))
            raise
        atomic_write(pin_file, pin.to_json().encode())
        if policy.attestation.allow_insecure_dev_tee:
            log.warning(
                "INSECURE dev TEE accepted by this site's policy: the aggregator is NOT hardware-isolated"
            )
        self.audit.append(
            "aggregator_attested",
            job=job_id,
            round=header.get("round"),
            insecure_dev_tee=policy.attestation.allow_insecure_dev_tee or None,
        )
        sig = header.get("model_signature")
        if not isinstance(sig, str):
            raise IntegrityError("the aggregator sent a tee-mode model without a signature")
        trusted.verify_model(base64.b64decode(sig), model_fp, job_id, int(header["base_round"]))
        return trusted

    def _server_cert_der(self) -> bytes:
        """The certificate the aggregator presents on our TLS path (gRPC Python does not expose the
        channel's peer certificate, so a TLS probe to the same address reads it, verified the same way:
        project CA, our client certificate)."""
        host, _, port = self.target.rpartition(":")
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.kit.ca_pem.decode())
        ctx.set_alpn_protocols(["h2"])
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
            cert.write_bytes(self.kit.cert_pem)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.kit.key_pem)
            ctx.load_cert_chain(cert, key)
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        if not der:
            raise IdentityError("the aggregator presented no certificate")
        return der

    def _finalize(self, header: dict[str, Any], payload: bytes) -> None:
        job_id = header["job_id"]
        adm = self.admit(job_id)
        global_bytes = self._global(adm, header, payload, job_id)
        if adm.job.spec.mode == "tee":
            self._attest_and_check_model(job_id, header, fingerprint(from_safetensors(global_bytes)))
        atomic_write(self.state.job_dir(job_id) / "final.safetensors", global_bytes)
        result = self._run_script(adm, job_id, "evaluate", int(header["round"]), global_bytes)
        self.stub.Post(
            pb.Message(
                topic="final",
                job_id=job_id,
                round=int(header["round"]),
                payload=json.dumps(result.metrics).encode(),
            ),
            timeout=60,
        )
        self.state.set_progress(job_id, round=int(header["round"]), attempt=1)


@dataclass(frozen=True)
class Admitted:
    job: VerifiedJob
    decision: Decision
    policy_stamp: tuple[int, int]


__all__ = ["Admitted", "SiteAgent"]
