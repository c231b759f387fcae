"""gRPC handlers: authenticate the caller from its certificate, then hand over to ``Federation``.

Every refusal is an audit line and a specific gRPC status; no handler trusts a name in a message.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from secagg.aggregator.federation import Federation
from secagg.errors import IdentityError, SecaggError, UpdateRejected
from secagg.provision.identity import Identity
from secagg.provision.kit import Kit
from secagg.transport.chunks import copy_payload, encode_stream, read_header
from secagg.transport.generated import secagg_pb2 as pb
from secagg.transport.generated import secagg_pb2_grpc as rpc
from secagg.transport.tls import SERVER_OPTIONS, peer_identity, server_credentials

MAX_POLL_S = 30.0


class FederationService(rpc.FederationServicer):
    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self.kit = fed.kit

    # -- identity
    def _site(self, context: grpc.ServicerContext) -> Identity:
        try:
            ident = peer_identity(context, self.kit)
        except IdentityError as exc:
            self.fed.audit.append("refused_identity", reason=str(exc))
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        if ident.role != "site" or ident.name not in self.fed.sites:
            msg = f"{ident.name} ({ident.role}) is not a site of project {self.kit.config.project}"
            self.fed.audit.append("refused_identity", peer=ident.name, role=ident.role, reason=msg)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, msg)
        return ident

    def _refuse(self, context: grpc.ServicerContext, site: str, exc: SecaggError, **fields: Any) -> None:
        self.fed.audit.append("refused", site=site, code=exc.code, reason=str(exc), **fields)
        status = grpc.StatusCode.FAILED_PRECONDITION
        if exc.code in ("malformed", "bad_shape", "non_finite", "corrupt", "truncated", "oversize"):
            status = grpc.StatusCode.INVALID_ARGUMENT
        elif exc.code in ("duplicate", "duplicate_upload"):
            status = grpc.StatusCode.ALREADY_EXISTS
        context.abort(status, f"{exc.code}: {exc}")

    # -- handlers
    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.RegisterReply:
        site = self._site(context)
        self.fed.heartbeat(site.name)
        self.fed.audit.append("site_registered", site=site.name, agent=request.agent_version or None)
        job = self.fed.job
        return pb.RegisterReply(
            project=self.kit.config.project, site=site.name, job_id=job.job_id if job else ""
        )

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatReply:
        site = self._site(context)
        return pb.HeartbeatReply(ok=True, job_state=self.fed.heartbeat(site.name))

    def FetchTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        site = self._site(context)
        self.fed.heartbeat(site.name)
        wait = min(max(request.poll_seconds, 0.0), MAX_POLL_S)
        header = self.fed.next_task(
            site.name, request.after_round, request.after_attempt, request.has_global_round, wait
        )
        yield from encode_stream(header, self.fed.payload(header))

    def FetchJob(self, request: pb.JobRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        self._site(context)
        job = self.fed.job
        if job is None or job.job_id != request.job_id:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
            return
        data = job.package.read_bytes()
        yield from encode_stream({"job_id": job.job_id, "bytes": len(data)}, [data])

    def UploadResult(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> pb.UploadReply:
        site = self._site(context)
        header: dict[str, Any] = {}
        try:
            header = read_header(request_iterator)
            cur = self.fed.begin_upload(site.name, header)
            spool = self.fed.spool_dir(header["job_id"], cur.round, cur.attempt)
            spool.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=spool, prefix=f".{site.name}-", suffix=".part")
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as fh:
                    expected = header.get("bytes")
                    copy_payload(
                        request_iterator,
                        fh,
                        max_bytes=self.fed.max_upload_bytes,
                        expected_bytes=int(expected) if expected is not None else None,
                    )
                final = spool / f"{site.name}.upload"
                tmp.rename(final)
                self.fed.finish_upload(site.name, cur, final, header.get("metrics"))
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except SecaggError as exc:
            self._refuse(context, site.name, exc, job=header.get("job_id"), round=header.get("round"))
        self.fed.audit.append(
            "upload_accepted",
            site=site.name,
            job=header["job_id"],
            round=header["round"],
            bytes=header.get("bytes"),
        )
        return pb.UploadReply(accepted=True, code="ok", message="accepted")

    def Attest(self, request: pb.AttestRequest, context: grpc.ServicerContext) -> pb.AttestReply:
        site = self._site(context)
        try:
            return pb.AttestReply(evidence_message=self.fed.attest(site.name, request.job_id, request.nonce))
        except SecaggError as exc:
            self._refuse(context, site.name, exc, job=request.job_id)
            raise  # unreachable: abort raises

    def Post(self, request: pb.Message, context: grpc.ServicerContext) -> pb.Ack:
        site = self._site(context)
        try:
            if request.topic == "ready":
                self.fed.post_ready(site.name, request.job_id, request.round, request.payload)
            elif request.topic == "declined":
                msg = json.loads(request.payload)
                self.fed.decline(
                    site.name,
                    request.job_id,
                    request.round,
                    str(msg.get("code", "declined")),
                    str(msg.get("message", "")),
                )
            elif request.topic == "final":
                self.fed.post_final(site.name, request.job_id, request.payload)
            elif request.topic == "he-key":
                self.fed.accept_key_release(site.name, request.payload)
            elif request.topic in ("mask-keys", "mask-shares", "mask-unmask-resp"):
                self.fed.mask_post(site.name, request.topic, request.job_id, request.round, request.payload)
            else:
                raise UpdateRejected(f"unknown topic {request.topic!r}", code="malformed")
        except SecaggError as exc:
            self._refuse(context, site.name, exc, topic=request.topic)
        except ValueError as exc:
            self._refuse(context, site.name, UpdateRejected(str(exc), code="malformed"), topic=request.topic)
        return pb.Ack(ok=True, code="ok")

    def Collect(self, request: pb.CollectRequest, context: grpc.ServicerContext) -> Iterator[pb.Message]:
        self._site(context)
        wait = min(max(request.timeout_seconds, 0.0), MAX_POLL_S)
        if request.topic == "roster":
            roster = self.fed.roster(request.job_id, request.round, wait)
            if roster is not None:
                yield pb.Message(
                    topic="roster",
                    job_id=request.job_id,
                    round=request.round,
                    sender=self.kit.name,
                    payload=json.dumps(roster).encode(),
                )
        elif request.topic == "he-key":
            blob = self.fed.key_release(wait)
            if blob is not None:
                yield pb.Message(topic="he-key", sender=self.kit.config.key_holder, payload=blob)
        elif request.topic in ("mask-keyroster", "mask-myshares", "mask-unmask"):
            site_name = self._site(context).name
            data = self.fed.mask_collect(
                site_name, request.topic, request.job_id, request.round, request.attempt, wait
            )
            if data is not None:
                yield pb.Message(
                    topic=request.topic,
                    job_id=request.job_id,
                    round=request.round,
                    sender=self.kit.name,
                    payload=data,
                )
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown topic {request.topic!r}")

    def Admin(self, request: pb.AdminRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        """Admin console; the role comes from the admin certificate (see ``secagg.aggregator.admin``)."""
        from secagg.aggregator.admin import AdminConsole

        yield from AdminConsole(self.fed).handle(request, context)

    def AdminUpload(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        """Admin commands with a large payload (submit)."""
        from secagg.aggregator.admin import AdminConsole

        yield from AdminConsole(self.fed).handle_upload(request_iterator, context)


class AggregatorServer:
    """The gRPC server plus the driver thread that advances rounds."""

    def __init__(
        self,
        kit: Kit,
        state_dir: Path,
        *,
        port: int | None = None,
        host: str = "0.0.0.0",  # noqa: S104
        enclave: Any = None,
    ) -> None:
        self.fed = Federation(kit, state_dir, enclave=enclave)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=SERVER_OPTIONS)
        rpc.add_FederationServicer_to_server(FederationService(self.fed), self.server)
        bind = f"{host}:{port if port is not None else kit.config.aggregator_port}"
        self.port = self.server.add_secure_port(bind, server_credentials(kit))
        self._driver = threading.Thread(target=self._drive, name="round-driver", daemon=True)
        from secagg.metrics import observe_aggregator  # metrics and TensorBoard, driven by the audit log

        self.metrics = observe_aggregator(self.fed)

    def _drive(self) -> None:
        while not self.fed.stopping:
            self.fed.step()

    def start(self) -> None:
        self.server.start()
        self._driver.start()
        self.metrics.serve(self.fed.kit.config.metrics_port)
        self.fed.audit.append("aggregator_started", port=self.port)

    def stop(self, grace: float = 2.0) -> None:
        with self.fed.cond:
            self.fed.stopping = True
            self.fed.cond.notify_all()
        self.server.stop(grace).wait()
        self._driver.join(timeout=5)
        self.metrics.close()
        self.fed.store.close()
