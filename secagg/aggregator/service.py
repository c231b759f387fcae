"""gRPC handlers: authenticate the caller from its certificate, then hand over to the hub, which
routes each call to its job's ``Federation`` (:mod:`secagg.aggregator.hub`).

Every refusal is an audit line and a specific gRPC status; no handler trusts a name in a message.
A refusal's status comes from the reason registry (:mod:`secagg.reasons`), and its reason code travels
in the trailing metadata key ``secagg-reason`` as well as at the start of the details text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from secagg.aggregator.hub import FederationHub
from secagg.aggregator.modes import COLLECT_TOPICS, POST_TOPICS
from secagg.aggregator.rounds import Signal
from secagg.aggregator.rpc import (
    MAX_NAME,
    abort,
    abort_with,
    caller,
    client_stream,
    declined,
    name_field,
    post_fields,
    seconds_field,
)
from secagg.crossval.wire import COLLECT_TOPICS as XSITE_COLLECT_TOPICS
from secagg.crossval.wire import INBOX as XSITE_INBOX
from secagg.crossval.wire import MODEL as XSITE_MODEL
from secagg.crossval.wire import POST_TOPICS as XSITE_POST_TOPICS
from secagg.errors import IdentityError, SecaggError, StorageFull, UpdateRejected, is_storage_full
from secagg.events import Event
from secagg.provision.identity import Identity
from secagg.provision.kit import Kit
from secagg.reasons import Reason
from secagg.topics import Topic
from secagg.transport.chunks import MAX_CHUNK, encode_stream, read_header
from secagg.transport.generated import secagg_pb2 as pb
from secagg.transport.generated import secagg_pb2_grpc as rpc
from secagg.transport.tls import SERVER_OPTIONS, server_credentials

MAX_POLL_S = 30.0
#: the largest nonce a site may send for attestation (real ones are 32 or 64 bytes)
MAX_NONCE = 1024
#: exceptions that mean the request did not parse: refused as ``malformed``, not as an internal error
_PARSE_ERRORS = (ValueError, TypeError, KeyError, RecursionError, OverflowError, UnicodeError)

log = logging.getLogger(__name__)

#: legacy payload of a signal message (agents that predate ``Message.signal`` look for these keys)
_SIGNAL_PB = {Signal.CANCELLED: pb.Message.CANCELLED, Signal.NOT_FOR_YOU: pb.Message.NOT_FOR_YOU}


class FederationService(rpc.FederationServicer):
    def __init__(self, fed: FederationHub, *, sent: Callable[[str, int], None] | None = None) -> None:
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
        """Audit the refusal (with its fields made safe to log: a hostile value must not break the
        log's canonical JSON), then end the call with the reason's status."""
        message = _cut(str(exc), 1000)
        try:
            self.fed.audit.append(
                Event.REFUSED,
                site=site,
                code=exc.code,
                reason=message,
                **{k: _loggable(v) for k, v in fields.items()},
            )
        except Exception as failed:  # noqa: BLE001 - the caller still gets its specific refusal
            if is_storage_full(failed):  # a pause the round driver reports; one line, no traceback
                log.warning("refusal of %s (%s) not audited: the state disk is full", site, exc.code)
            else:
                log.exception("could not audit a refusal of %s", site)
        abort(context, exc.code, message)

    def _guarded(
        self, context: grpc.ServicerContext, site: str, call: Callable[[], Any], **fields: Any
    ) -> Any:
        """Run one request's work: a ``SecaggError`` is refused with its code, a request that does
        not parse as ``malformed``, anything else as ``internal``; each with an audit line, never
        gRPC's ``UNKNOWN``."""
        try:
            return call()
        except SecaggError as exc:
            self._refuse(context, site, exc, **fields)
        except _PARSE_ERRORS as exc:
            self._refuse(
                context,
                site,
                UpdateRejected(f"request does not parse: {exc}", code=Reason.MALFORMED),
                **fields,
            )
        except Exception as exc:  # noqa: BLE001 - a bug must still end in a specific status and a line
            if is_storage_full(exc):  # a pause: UNAVAILABLE, so the site retries once space returns
                log.warning("request from %s refused: the state disk is full (%s)", site, exc)
                self._refuse(
                    context, site, StorageFull(f"the aggregator's state disk is full ({exc})"), **fields
                )
            log.exception("request from %s failed", site)
            self._refuse(
                context, site, UpdateRejected(f"{type(exc).__name__}", code=Reason.INTERNAL), **fields
            )
        return None  # unreachable: a refusal aborts

    def _stream(
        self, context: grpc.ServicerContext, site: str, pieces: Iterable[pb.Chunk]
    ) -> Iterator[pb.Chunk]:
        """Yield a response stream; a failure while producing it is refused like one before it."""
        it = iter(pieces)
        while True:
            piece = self._guarded(context, site, lambda: next(it, None))
            if piece is None:
                return
            yield piece

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
        agent = _cut(request.agent_version, MAX_NAME) or None
        self.fed.audit.append(Event.SITE_REGISTERED, site=site.name, agent=agent)
        job = self.fed.job
        return pb.RegisterReply(
            project=self.kit.config.project, site=site.name, job_id=job.job_id if job else ""
        )

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatReply:
        site = self._site(context)
        job_id = _cut(request.job_id, MAX_NAME)
        return pb.HeartbeatReply(ok=True, job_state=self.fed.heartbeat(site.name, job_id))

    def FetchTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        site = self._site(context)
        self.fed.heartbeat(site.name)
        wait = seconds_field(request.poll_seconds, hi=MAX_POLL_S)
        header = self._guarded(
            context,
            site.name,
            lambda: self.fed.next_task(
                site.name,
                name_field(request.job_id, "job_id", required=False),
                request.after_round,
                request.after_attempt,
                request.has_global_round,
                wait,
            ),
        )
        mode = str(header.get("mode") or self.fed.current_mode)
        yield from self._stream(
            context, site.name, encode_stream(header, self._counted(mode, self.fed.payload(header)))
        )

    def FetchJob(self, request: pb.JobRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        site = self._site(context)
        job = self.fed.live_job(request.job_id)
        if job is None:
            shown = _cut(request.job_id, MAX_NAME)
            abort_with(context, grpc.StatusCode.NOT_FOUND, Reason.NO_SUCH_JOB, f"no job {shown}")
            return
        data = self._guarded(context, site.name, job.package.read_bytes, job=job.job_id)
        yield from encode_stream({"job_id": job.job_id, "bytes": len(data)}, [data])

    def UploadResult(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> pb.UploadReply:
        site = self._site(context)
        header: dict[str, Any] = {}
        request_iterator = client_stream(request_iterator)

        def upload() -> None:
            nonlocal header
            got = read_header(request_iterator)
            header = got if isinstance(got, dict) else {}
            if got.get("topic") == XSITE_MODEL:  # cross-site evaluation: a local model, sealed to a site
                self.fed.xsite_upload(site, got, request_iterator)
                return
            self.fed.accept_upload(site.name, got, request_iterator)

        self._guarded(
            context, site.name, upload, job=lambda: header.get("job_id"), round=lambda: header.get("round")
        )
        return pb.UploadReply(accepted=True, code=Reason.OK, message="accepted")

    def FetchSealed(self, request: pb.SealedRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        """A local model another site sealed to the caller, in chunks (cross-site evaluation)."""
        site = self._site(context)

        def opened() -> tuple[dict[str, Any], Any]:
            job_id = name_field(request.job_id, "job_id")
            sender = name_field(request.sender, "sender")
            if request.topic != XSITE_INBOX:
                raise UpdateRejected(f"nothing sealed under topic {request.topic!r}", code=Reason.MALFORMED)
            got = self.fed.xsite_fetch(site.name, job_id, sender)
            if isinstance(got, Signal):
                raise UpdateRejected(
                    f"no sealed model from {sender} for {site.name} in {job_id} ({got})", code=Reason.LATE
                )
            return got

        header, fh = self._guarded(context, site.name, opened, topic=request.topic)
        with fh:
            yield from self._stream(context, site.name, encode_stream(header, _read_pieces(fh)))

    def Attest(self, request: pb.AttestRequest, context: grpc.ServicerContext) -> pb.AttestReply:
        site = self._site(context)

        def attest() -> pb.AttestReply:
            job_id = name_field(request.job_id, "job_id")
            if not 16 <= len(request.nonce) <= MAX_NONCE:
                raise UpdateRejected(f"nonce must be 16 to {MAX_NONCE} bytes", code=Reason.MALFORMED)
            return pb.AttestReply(evidence_message=self.fed.attest(site.name, job_id, request.nonce))

        reply: pb.AttestReply = self._guarded(context, site.name, attest, job=request.job_id)
        return reply

    def Post(self, request: pb.Message, context: grpc.ServicerContext) -> pb.Ack:
        site = self._site(context)

        def post() -> None:
            f = post_fields(request.topic, request.job_id, request.round, request.reason)
            if f.topic == Topic.READY:
                self.fed.post_ready(site.name, f.job_id, f.round, request.payload)
            elif f.topic == Topic.DECLINED:
                d = declined(request.payload, f.reason)
                self.fed.decline(site.name, f.job_id, f.round, d.code, d.message, round_only=d.round_only)
            elif f.topic == Topic.FINAL:
                self.fed.post_final(site.name, f.job_id, request.payload)
            elif f.topic == Topic.AUDIT_HEAD:
                self.fed.accept_audit_head(site, f.job_id, request.payload)
            elif f.topic == Topic.HE_KEY:
                self.fed.accept_key_release(site.name, request.payload)
            elif f.topic in XSITE_POST_TOPICS:
                self.fed.xsite_post(site, f.topic, f.job_id, request.payload)
            elif f.topic in POST_TOPICS:
                self.fed.mode_post(site.name, f.topic, f.job_id, f.round, request.payload)
            else:
                raise UpdateRejected(f"unknown topic {f.topic!r}", code=Reason.MALFORMED)

        self._guarded(context, site.name, post, topic=request.topic)
        return pb.Ack(ok=True, code=Reason.OK)

    def Collect(self, request: pb.CollectRequest, context: grpc.ServicerContext) -> Iterator[pb.Message]:
        site = self._site(context)
        wait = seconds_field(request.timeout_seconds, hi=MAX_POLL_S)

        def check() -> None:
            name_field(request.topic, "topic")
            name_field(request.job_id, "job_id", required=False)

        self._guarded(context, site.name, check, topic=request.topic)
        yield from self._stream(context, site.name, self._collect(request, site, wait))

    def _collect(self, request: pb.CollectRequest, site: Identity, wait: float) -> Iterator[pb.Message]:
        if request.topic == Topic.ROSTER:
            roster = self.fed.roster(request.job_id, request.round, wait)
            if roster is not None:
                yield pb.Message(
                    topic=Topic.ROSTER,
                    job_id=request.job_id,
                    round=request.round,
                    sender=self.kit.name,
                    payload=json.dumps(roster).encode(),
                    signal=pb.Message.CANCELLED if roster.get(Signal.CANCELLED) else pb.Message.NONE,
                )
        elif request.topic == Topic.JOBS:
            # the running jobs, for a site to serve each (at once: the agent polls)
            yield pb.Message(
                topic=Topic.JOBS,
                sender=self.kit.name,
                payload=json.dumps(self.fed.jobs_for(site.name)).encode(),
            )
        elif request.topic == Topic.HE_KEY:
            blob = self.fed.key_release(wait)
            if blob is not None:
                yield pb.Message(topic=Topic.HE_KEY, sender=self.kit.config.key_holder, payload=blob)
        elif request.topic in COLLECT_TOPICS or request.topic in XSITE_COLLECT_TOPICS:
            if request.topic in XSITE_COLLECT_TOPICS:
                data = self.fed.xsite_collect(site.name, request.topic, request.job_id, wait)
            else:
                data = self.fed.mode_collect(
                    site.name, request.topic, request.job_id, request.round, request.attempt, wait
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
            raise UpdateRejected(f"unknown topic {request.topic!r}", code=Reason.MALFORMED)

    def Admin(self, request: pb.AdminRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        """Admin console; the role comes from the admin certificate (see ``secagg.aggregator.admin``)."""
        from secagg.aggregator.admin import AdminConsole

        yield from AdminConsole(self.fed).handle(request, context)

    def AdminUpload(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        """Admin commands with a large payload (submit)."""
        from secagg.aggregator.admin import AdminConsole

        yield from AdminConsole(self.fed).handle_upload(client_stream(request_iterator), context)


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
        self.fed = FederationHub(kit, state_dir, enclave=enclave)
        from secagg.aggregator.observers import observe  # metrics and TensorBoard, fed by the audit log

        self.metrics = observe(self.fed)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=SERVER_OPTIONS)
        service = FederationService(self.fed, sent=self.metrics.sent)
        rpc.add_FederationServicer_to_server(service, self.server)
        bind = f"{host}:{port if port is not None else kit.config.aggregator_port}"
        self.port = self.server.add_secure_port(bind, server_credentials(kit))

    def start(self) -> None:
        """Serve, and drive every running job's rounds (one driver thread per job, see
        :mod:`secagg.aggregator.scheduler`)."""
        self.server.start()
        self.fed.start()
        self.metrics.serve(self.fed.kit.config.metrics_port)
        self.fed.audit.append(Event.AGGREGATOR_STARTED, port=self.port)

    def stop(self, grace: float = 2.0) -> None:
        with self.fed.cond:
            self.fed.stopping = True
            self.fed.cond.notify_all()
        self.server.stop(grace).wait()
        self.fed.stop()
        self.metrics.close()
        self.fed.store.close()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _loggable(value: Any) -> Any:
    """A request field as an audit line may hold it: short strings, integers JSON can carry exactly;
    anything else (a 10**30 round, a nested object) as a short description. Callables are read now."""
    if callable(value):
        try:
            value = value()
        except Exception:  # noqa: BLE001
            return None
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else f"<integer of {len(str(abs(value)))} digits>"
    if isinstance(value, str):
        return _cut(value, MAX_NAME)
    return f"<{type(value).__name__}>"


def _read_pieces(fh: Any) -> Iterator[bytes]:
    """A file's bytes in pieces of at most one chunk (never whole in memory)."""
    while piece := fh.read(MAX_CHUNK):
        yield piece
