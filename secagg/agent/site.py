"""The site agent's main loop: register, obtain the HE key, then for each task admit, train,
protect and upload.

Order of trust (security invariant 1): the job package is verified (signature, chain, digests) and
admitted by the site policy before anything from it is extracted or run.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from secagg.agent.protect import protect_he, protect_plain
from secagg.agent.runner import run_entry
from secagg.agent.state import SiteState
from secagg.auditlog import AuditLog
from secagg.bundle import BundleSpec, from_safetensors, to_safetensors
from secagg.errors import ConfigError, IntegrityError, PolicyRefusal, SecaggError
from secagg.framing import unframe
from secagg.jobs.job import VerifiedJob, verify_job
from secagg.provision.kit import Kit
from secagg.transport.chunks import encode_stream, read_all
from secagg.transport.generated import secagg_pb2 as pb
from secagg.transport.generated import secagg_pb2_grpc as rpc
from secagg.transport.tls import channel

log = logging.getLogger("secagg.agent")
AGENT_VERSION = "secagg-agent/0.1"
POLL_S = 10.0


class JobStopped(SecaggError):
    code = "job_stopped"


class SiteAgent:
    def __init__(
        self,
        kit: Kit,
        data_dir: Path,
        state_dir: Path,
        *,
        policy_path: Path | None = None,
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
        self.channel = channel(kit, target)
        self.stub = rpc.FederationStub(self.channel)
        self._secret_ctx: Any = None
        self._jobs: dict[str, VerifiedJob] = {}

    def close(self) -> None:
        self.channel.close()

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
    def admit(self, job_id: str) -> VerifiedJob:
        if job_id in self._jobs:
            return self._jobs[job_id]
        jdir = self.state.job_dir(job_id)
        pkg = jdir / "package.tar.gz"
        header, data = read_all(
            iter(self.stub.FetchJob(pb.JobRequest(job_id=job_id), timeout=120)), max_bytes=self.max_payload
        )
        pkg.write_bytes(data)
        dest = jdir / "pkg"
        shutil.rmtree(dest, ignore_errors=True)
        try:
            job = verify_job(pkg, self.kit.ca_cert, dest=dest)
        except SecaggError as exc:
            self.audit.append("job_refused", job=job_id, code=exc.code, reason=str(exc))
            self._decline(job_id, 0, "job_unverified", str(exc))
            raise
        self.audit.append(
            "job_admitted", job=job_id, signers=[s.describe() for s in job.signers], mode=job.spec.mode
        )
        self._jobs[job_id] = job
        return job

    def _decline(self, job_id: str, round_: int, code: str, message: str) -> None:
        payload = json.dumps({"code": code, "message": message}).encode()
        try:
            self.stub.Post(
                pb.Message(topic="declined", job_id=job_id, round=round_, payload=payload), timeout=30
            )
        except grpc.RpcError as exc:
            log.warning("could not report the declined task: %s", exc.details())

    # ------------------------------------------------------------ the loop
    def run(self, *, max_idle_s: float | None = None, stop_after_job: bool = True) -> None:
        self.register()
        idle_since = time.monotonic()
        job_id = ""
        while True:
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
            chunks = iter(stream)
            header, payload = read_all(chunks, max_bytes=self.max_payload)
            kind = header.get("kind")
            if kind == "wait":
                if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                    return
                continue
            idle_since = time.monotonic()
            job_id = header["job_id"]
            if kind == "stop":
                self.audit.append("job_stopped", job=job_id, reason=header.get("reason"))
                if stop_after_job:
                    return
                continue
            try:
                if kind == "train":
                    self._train(header, payload)
                elif kind == "finalize":
                    self._finalize(header, payload)
                    if stop_after_job:
                        self.audit.append("job_done", job=job_id)
                        return
            except PolicyRefusal as exc:
                self._decline(job_id, int(header.get("round", 0)), exc.code, str(exc))
                self.audit.append(
                    "round_declined", job=job_id, round=header.get("round"), code=exc.code, reason=str(exc)
                )
                raise

    # ------------------------------------------------------------ one round
    def _global(self, job: VerifiedJob, header: dict[str, Any], payload: bytes, job_id: str) -> bytes:
        """Materialise the global model this task is about, from what the aggregator sent."""
        spec = job.spec
        if spec.mode != "he":
            data = payload
            from_safetensors(data)  # parse check
            self.state.save_global(job_id, int(header["base_round"]), data)
            return data
        base = int(header["base_round"])
        if base == 0:
            data = (job.root / spec.model).read_bytes()
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
        ctx = self.he_context()
        from io import BytesIO

        from secagg.he.codec import decrypt_vector

        offset = 0
        for upd in header["updates"]:
            piece = payload[offset : offset + int(upd["bytes"])]
            offset += int(upd["bytes"])
            avg = decrypt_vector(ctx, unframe(BytesIO(piece)), bspec.size) * float(upd["scale"])
            vec = vec + avg
            data = to_safetensors(bspec.unflatten(vec), order=bspec.names)
            self.state.save_global(job_id, int(upd["round"]), data)
        return data

    def _train(self, header: dict[str, Any], payload: bytes) -> None:
        job_id, round_, attempt = header["job_id"], int(header["round"]), int(header["attempt"])
        job = self.admit(job_id)
        if job.spec.mode == "he":
            self.he_context()
        global_bytes = self._global(job, header, payload, job_id)
        bundle = from_safetensors(global_bytes)
        bspec = BundleSpec.of(bundle)
        jdir = self.state.job_dir(job_id)
        io_dir = jdir / "io"
        io_dir.mkdir(exist_ok=True)
        (io_dir / "global.safetensors").write_bytes(global_bytes)
        task = {
            "task": "train",
            "round": round_,
            "site": self.name,
            "data_dir": str(self.data_dir),
            "params": job.spec.params,
            "strategy": job.spec.strategy.model_dump(),
        }
        result = run_entry(
            job.root,
            job.spec.entry,
            io_dir,
            task=task,
            timeout=job.spec.round_timeout * 10,
            log=jdir / "train.log",
        )
        assert result.local is not None and result.num_samples is not None
        update = bspec.flatten(result.local) - bspec.flatten(bundle)
        ready = {"attempt": attempt, "n_samples": result.num_samples, "metrics": result.metrics}
        self.stub.Post(
            pb.Message(topic="ready", job_id=job_id, round=round_, payload=json.dumps(ready).encode()),
            timeout=60,
        )
        roster = self._roster(job_id, round_)
        if roster is None or roster.get("attempt") != attempt or self.name not in roster["weights"]:
            self.audit.append("not_in_roster", job=job_id, round=round_)
            return
        weighted = update * float(roster["weights"][self.name])
        stream: Iterator[bytes]
        if job.spec.mode == "he":
            stream = protect_he(self.he_context(), weighted)
        else:
            stream = protect_plain(bspec, weighted)
        body = b"".join(stream)
        up_header = {
            "job_id": job_id,
            "round": round_,
            "attempt": attempt,
            "bytes": len(body),
            "mode": job.spec.mode,
        }
        reply = self.stub.UploadResult(encode_stream(up_header, [body]), timeout=600)
        self.state.set_progress(job_id, round=round_, attempt=attempt)
        self.audit.append(
            "uploaded", job=job_id, round=round_, attempt=attempt, bytes=len(body), accepted=reply.accepted
        )

    def _roster(self, job_id: str, round_: int) -> dict[str, Any] | None:
        while True:
            for msg in self.stub.Collect(
                pb.CollectRequest(topic="roster", job_id=job_id, round=round_, timeout_seconds=POLL_S),
                timeout=POLL_S + 30,
            ):
                roster: dict[str, Any] = json.loads(msg.payload)
                if roster.get("cancelled"):
                    return None
                return roster

    def _finalize(self, header: dict[str, Any], payload: bytes) -> None:
        job_id = header["job_id"]
        job = self.admit(job_id)
        global_bytes = self._global(job, header, payload, job_id)
        jdir = self.state.job_dir(job_id)
        (jdir / "final.safetensors").write_bytes(global_bytes)
        io_dir = jdir / "io"
        io_dir.mkdir(exist_ok=True)
        (io_dir / "global.safetensors").write_bytes(global_bytes)
        task = {
            "task": "evaluate",
            "round": header["round"],
            "site": self.name,
            "data_dir": str(self.data_dir),
            "params": job.spec.params,
            "strategy": job.spec.strategy.model_dump(),
        }
        result = run_entry(
            job.root,
            job.spec.entry,
            io_dir,
            task=task,
            timeout=job.spec.round_timeout * 10,
            log=jdir / "train.log",
        )
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


__all__ = ["SiteAgent", "np"]
