"""gRPC handlers: authenticate the caller from its certificate, then hand over to ``Federation``.

Every refusal is an audit line and a specific gRPC status; no handler trusts a name in a message.
A refusal's status comes from the reason registry (:mod:`secagg.reasons`), and its reason code travels
in the trailing metadata key ``secagg-reason`` as well as at the start of the details text.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from secagg.aggregator.federation import Federation
from secagg.aggregator.modes import COLLECT_TOPICS, POST_TOPICS
from secagg.aggregator.rounds import Signal
from secagg.aggregator.rpc import abort, abort_with, caller
from secagg.errors import IdentityError, SecaggError, UpdateRejected
from secagg.events import Event
from secagg.provision.identity import Identity
from secagg.provision.kit import Kit
from secagg.reasons import Reason
from secagg.transport.chunks import encode_stream, read_header
from secagg.transport.generated import secagg_pb2 as pb
from secagg.transport.generated import secagg_pb2_grpc as rpc
from secagg.transport.tls import SERVER_OPTIONS, server_credentials

MAX_POLL_S = 30.0

#: legacy payload of a signal message (agents that predate ``Message.signal`` look for these keys)
_SIGNAL_PB = {Signal.CANCELLED: pb.Message.CANCELLED, Signal.NOT_FOR_YOU: pb.Message.NOT_FOR_YOU}


class FederationService(rpc.FederationServicer):
    def __init__(self, fed: Federation, *, sent: Callable[[str, int], None] | None = None) -> None:
        self.fed = fed
        self.kit = fed.kit
        #: byte counter: called with (mode, bytes) for every piece of a task payload sent to a site
        self.sent = sent

    # -- identity
    def _site(self, context: grpc.ServicerContext) -> Identity:
        try:
            ident = caller(context, self.kit)
        except IdentityError as exc:
            self.fed.audit.append(Event.REFUSED_IDENTITY, reason=str(exc))
            abort_with(context, grpc.StatusCode.UNAUTHENTICATED, Reason.IDENTITY, str(exc))
        if ident.role != "site" or ident.name not in self.fed.sites:
            msg = f"{ident.name} ({ident.role}) is not a site of project {self.kit.config.project}"
            self.fed.audit.append(Event.REFUSED_IDENTITY, peer=ident.name, role=ident.role, reason=msg)
            abort_with(context, grpc.StatusCode.PERMISSION_DENIED, Reason.NOT_A_SITE, msg)
        return ident

    def _refuse(self, context: grpc.ServicerContext, site: str, exc: SecaggError, **fields: Any) -> None:
        self.fed.audit.append(Event.REFUSED, site=site, code=exc.code, reason=str(exc), **fields)
        abort(context, exc.code, str(exc))

    def _counted(self, mode: str, payload: Iterable[bytes]) -> Iterator[bytes]:
        if self.sent is None:
            yield from payload
            return
        for piece in payload:
            self.sent(mode, len(piece))
            yield piece

    # -- handlers
    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.RegisterReply:
        site = self._site(context)
        self.fed.heartbeat(site.name)
        self.fed.audit.append(Event.SITE_REGISTERED, site=site.name, agent=request.agent_version or None)
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
        mode = str(header.get("mode") or self.fed.current_mode)
        yield from encode_stream(header, self._counted(mode, self.fed.payload(header)))

    def FetchJob(self, request: pb.JobRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        self._site(context)
        job = self.fed.job
        if job is None or job.job_id != request.job_id:
            abort_with(context, grpc.StatusCode.NOT_FOUND, Reason.NO_SUCH_JOB, f"no job {request.job_id}")
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
            self.fed.accept_upload(site.name, header, request_iterator)
        except SecaggError as exc:
            self._refuse(context, site.name, exc, job=header.get("job_id"), round=header.get("round"))
        return pb.UploadReply(accepted=True, code=Reason.OK, message="accepted")

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
                    request.reason or str(msg.get("code", "declined")),
                    str(msg.get("message", "")),
                    round_only=msg.get("scope") == "round",
                )
            elif request.topic == "final":
                self.fed.post_final(site.name, request.job_id, request.payload)
            elif request.topic == "audit-head":
                self.fed.accept_audit_head(site, request.job_id, request.payload)
            elif request.topic == "he-key":
                self.fed.accept_key_release(site.name, request.payload)
            elif request.topic in POST_TOPICS:
                self.fed.mode_post(site.name, request.topic, request.job_id, request.round, request.payload)
            else:
                raise UpdateRejected(f"unknown topic {request.topic!r}", code=Reason.MALFORMED)
        except SecaggError as exc:
            self._refuse(context, site.name, exc, topic=request.topic)
        except ValueError as exc:
            self._refuse(
                context, site.name, UpdateRejected(str(exc), code=Reason.MALFORMED), topic=request.topic
            )
        return pb.Ack(ok=True, code=Reason.OK)

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
                    signal=pb.Message.CANCELLED if roster.get(Signal.CANCELLED) else pb.Message.NONE,
                )
        elif request.topic == "he-key":
            blob = self.fed.key_release(wait)
            if blob is not None:
                yield pb.Message(topic="he-key", sender=self.kit.config.key_holder, payload=blob)
        elif request.topic in COLLECT_TOPICS:
            site_name = self._site(context).name
            data = self.fed.mode_collect(
                site_name, request.topic, request.job_id, request.round, request.attempt, wait
            )
            if data is not None:
                if isinstance(data, Signal):
                    # also as the JSON payload that agents before the ``signal`` field look for
                    signal, payload = _SIGNAL_PB[data], json.dumps({str(data): True}).encode()
                else:
                    signal, payload = pb.Message.NONE, data
                yield pb.Message(
                    topic=request.topic,
                    job_id=request.job_id,
                    round=request.round,
                    sender=self.kit.name,
                    payload=payload,
                    signal=signal,
                )
        else:
            abort(context, Reason.MALFORMED, f"unknown topic {request.topic!r}")

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
        from secagg.aggregator.observers import observe  # metrics and TensorBoard, fed by the audit log

        self.metrics = observe(self.fed)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=SERVER_OPTIONS)
        service = FederationService(self.fed, sent=self.metrics.sent)
        rpc.add_FederationServicer_to_server(service, self.server)
        bind = f"{host}:{port if port is not None else kit.config.aggregator_port}"
        self.port = self.server.add_secure_port(bind, server_credentials(kit))
        self._driver = threading.Thread(target=self._drive, name="round-driver", daemon=True)

    def _drive(self) -> None:
        while not self.fed.stopping:
            self.fed.step()

    def start(self) -> None:
        self.server.start()
        self._driver.start()
        self.metrics.serve(self.fed.kit.config.metrics_port)
        self.fed.audit.append(Event.AGGREGATOR_STARTED, port=self.port)

    def stop(self, grace: float = 2.0) -> None:
        with self.fed.cond:
            self.fed.stopping = True
            self.fed.cond.notify_all()
        self.server.stop(grace).wait()
        self._driver.join(timeout=5)
        self.metrics.close()
        self.fed.store.close()
