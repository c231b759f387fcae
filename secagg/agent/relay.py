"""The site's end of the aggregator channel: post, collect, decline, upload, and the signals back.

Every piece of the agent talks to the aggregator through one :class:`Relay`, never through the gRPC
stub, so that what counts as "the round moved on" or "stale" is decided in one place, from typed
signals (a ``Message.signal`` field, the ``secagg-reason`` trailing metadata) rather than from the text
of an error.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from secagg import __version__, reasons
from secagg.errors import ConfigError, SecaggError, UpdateRejected
from secagg.reasons import Reason
from secagg.topics import Topic
from secagg.transport.chunks import copy_payload, encode_stream, read_header
from secagg.transport.generated import secagg_pb2 as pb
from secagg.transport.generated import secagg_pb2_grpc as rpc

log = logging.getLogger("secagg.agent")
POLL_S = 10.0
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class AggregatorUnreachable(grpc.RpcError):
    """A connection to the aggregator made outside gRPC (the tee check's own TLS handshake) failed
    for want of the network. It is raised as the ``UNAVAILABLE`` a gRPC call would have given in the
    same moment, so that every loop that rides out a lost aggregator rides out this too, instead of
    the job (and with it the agent) ending on an ``OSError`` (RELIABILITY.md, F16)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self._detail = detail

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._detail

    def trailing_metadata(self) -> tuple[()]:
        return ()


class AggregatorTooOld(ConfigError):
    """The aggregator predates a message this agent relies on (the ``jobs`` listing, a task's job id):
    one line for the operator, not a traceback, and nothing of any job done."""

    code: str = Reason.AGGREGATOR_TOO_OLD

    def __init__(self, what: str) -> None:
        super().__init__(
            f"the aggregator predates several jobs at once ({what}): upgrade it to this site agent's "
            f"version (secagg {__version__}), or run the site agent of the aggregator's version"
        )


class AggregatorRefusedCall(SecaggError):
    """A call the aggregator refused that no part of the agent handles: its reason code (when it sent
    one) and its words, as one line."""

    def __init__(self, exc: grpc.RpcError) -> None:
        code = reason_of(exc)
        status = exc.code().name if hasattr(exc, "code") and exc.code() is not None else "UNKNOWN"
        details = str(exc.details() or "") if hasattr(exc, "details") else ""
        super().__init__(f"the aggregator refused a call ({status}): {details}")
        self.code = code if code is not None and reasons.lookup(code) is not None else Reason.ERROR


def predates_jobs(exc: grpc.RpcError) -> bool:
    """The refusal an aggregator from before several jobs at once gives the ``jobs`` listing."""
    details = str(exc.details() or "") if hasattr(exc, "details") else ""
    return (
        exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        and reason_of(exc) == Reason.MALFORMED
        and "unknown topic" in details
        and Topic.JOBS in details
    )


class RoundMovedOn(SecaggError):
    """The aggregator closed the round this site was in; the next task redoes what is needed."""

    code: str = Reason.ROUND_MOVED_ON


def reason_of(exc: grpc.RpcError) -> str | None:
    """The reason code the aggregator attached to a refusal, from trailing metadata; for an older
    aggregator, the ``code:`` prefix its details text has always carried."""
    code = reasons.of_rpc_error(exc)
    if code is not None:
        return code
    details = str(exc.details() or "") if hasattr(exc, "details") else ""
    head, sep, _ = details.partition(":")
    return head if sep and head.replace("_", "").isalnum() else None


def is_stale(exc: grpc.RpcError) -> bool:
    """A refusal that only says this site is behind the round (restart, close): not an error."""
    return exc.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(exc) in reasons.STALE


def _signal(msg: pb.Message) -> str:
    """CANCELLED / NOT_FOR_YOU from the typed field where the aggregator sets it, else the JSON marker
    older aggregators put in the payload (only ever a short JSON object, never a real payload)."""
    if msg.signal:
        return str(pb.Message.Signal.Name(msg.signal))
    head = bytes(msg.payload[:32])
    if head.startswith(b"{"):
        if b'"cancelled"' in head:
            return "CANCELLED"
        if b'"not_for_you"' in head:
            return "NOT_FOR_YOU"
    return ""


class Relay:
    """One site's calls to the aggregator. Identity is never sent: the aggregator reads it from the
    mTLS certificate (invariant 5)."""

    def __init__(self, stub: rpc.FederationStub, *, max_payload: int) -> None:
        self.stub = stub
        self.max_payload = max_payload

    def register(self, agent_version: str) -> pb.RegisterReply:
        return self.stub.Register(pb.RegisterRequest(agent_version=agent_version), timeout=10)

    def post(
        self, topic: str, payload: bytes, *, job_id: str = "", round_: int = 0, timeout: float = 60
    ) -> None:
        self.stub.Post(pb.Message(topic=topic, job_id=job_id, round=round_, payload=payload), timeout=timeout)

    def post_json(self, topic: str, body: Any, *, job_id: str, round_: int) -> None:
        self.post(topic, json.dumps(body).encode(), job_id=job_id, round_=round_)

    def decline(self, job_id: str, round_: int, code: str, message: str, *, round_only: bool = False) -> None:
        """Tell the aggregator why this site sits the job (or with ``round_only`` just this round) out;
        best effort (the audit log has it)."""
        body = {"code": code, "message": message} | ({"scope": "round"} if round_only else {})
        try:
            self.post_json(Topic.DECLINED, body, job_id=job_id, round_=round_)
        except grpc.RpcError as exc:
            log.warning("could not report the declined task: %s", exc.details())

    def audit_head(self, job_id: str, head: dict[str, Any]) -> None:
        """Relay this site's signed audit head at the end of a job; best effort (the head file has it)."""
        try:
            self.post_json(Topic.AUDIT_HEAD, head, job_id=job_id, round_=0)
        except grpc.RpcError as exc:
            log.warning("could not relay the audit head: %s", exc.details())

    def collect(self, topic: str, *, job_id: str = "", round_: int = 0, attempt: int = 0) -> bytes:
        """Wait for what the aggregator publishes for this site in the current phase."""
        while True:
            for msg in self.stub.Collect(
                pb.CollectRequest(
                    topic=topic, job_id=job_id, round=round_, attempt=attempt, timeout_seconds=POLL_S
                ),
                timeout=POLL_S + 30,
            ):
                signal = _signal(msg)
                if signal == "CANCELLED":
                    raise RoundMovedOn(f"round {round_} of {job_id} was closed during {topic}")
                if signal == "NOT_FOR_YOU":
                    raise RoundMovedOn(f"the aggregator left this site out of {topic} in round {round_}")
                return bytes(msg.payload)

    def jobs(self) -> dict[str, Any]:
        """The aggregator's running jobs (``{"jobs": [{"job_id", "mode", ...}], "queued": n}``), for
        the agent to serve each; answered at once."""
        try:
            for msg in self.stub.Collect(pb.CollectRequest(topic=Topic.JOBS, timeout_seconds=0), timeout=30):
                body = json.loads(bytes(msg.payload))
                if isinstance(body, dict) and isinstance(body.get("jobs"), list):
                    return body
        except grpc.RpcError as exc:
            if predates_jobs(exc):
                raise AggregatorTooOld("it does not know the 'jobs' listing") from None
            raise
        return {"jobs": [], "queued": 0}

    def job_state(self, job_id: str, round_: int) -> str:
        return str(
            self.stub.Heartbeat(pb.HeartbeatRequest(job_id=job_id, round=round_), timeout=30).job_state
        )

    def fetch_task_to(self, job_id: str, progress: dict[str, Any], dest: Path) -> dict[str, Any]:
        """The next task's header; its payload is written to ``dest`` as it arrives (a model is never
        whole in this process's memory)."""
        stream = self.stub.FetchTask(
            pb.TaskRequest(
                job_id=job_id,
                after_round=progress["round"],
                after_attempt=progress["attempt"],
                has_global_round=progress["global_round"],
                poll_seconds=POLL_S,
            ),
            timeout=POLL_S + 60,
        )
        return _spool(iter(stream), dest, self.max_payload)

    def fetch_job_to(self, job_id: str, dest: Path) -> None:
        """The job's package, written to ``dest`` as it arrives (it holds the initial model)."""
        _spool(iter(self.stub.FetchJob(pb.JobRequest(job_id=job_id), timeout=120)), dest, self.max_payload)

    def upload(self, header: dict[str, Any], parts: Iterable[bytes]) -> bool:
        """Stream one upload; ``True`` when the aggregator accepted it."""
        reply = self.stub.UploadResult(encode_stream(header, parts), timeout=600)
        return bool(reply.accepted)

    def fetch_sealed(self, job_id: str, topic: str, sender: str, sink: BinaryIO, *, max_bytes: int) -> int:
        """Stream a payload ``sender`` sealed to this site into ``sink`` (chunks, trailer checked);
        the byte count."""
        stream = iter(
            self.stub.FetchSealed(pb.SealedRequest(job_id=job_id, topic=topic, sender=sender), timeout=600)
        )
        header = read_header(stream)
        expected = header.get("bytes")
        if isinstance(expected, bool) or not isinstance(expected, int) or not 0 <= expected <= max_bytes:
            raise UpdateRejected(
                f"sealed payload of {expected!r} bytes, at most {max_bytes}", code=Reason.OVERSIZE
            )
        return copy_payload(stream, sink, max_bytes=max_bytes, expected_bytes=expected)

    def attest(self, job_id: str, nonce: bytes) -> bytes:
        return bytes(
            self.stub.Attest(pb.AttestRequest(job_id=job_id, nonce=nonce), timeout=60).evidence_message
        )


def _spool(chunks: Iterator[pb.Chunk], dest: Path, max_bytes: int) -> dict[str, Any]:
    """The stream's header; its payload (trailer checked) to ``dest``, removed if the stream fails."""
    header = read_header(chunks)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            copy_payload(chunks, fh, max_bytes=max_bytes)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return header


__all__ = ["POLL_S", "Relay", "RoundMovedOn", "is_stale", "reason_of"]
