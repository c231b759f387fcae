"""What every gRPC handler of the aggregator shares: who is calling, and how a refusal ends a call."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from secagg import reasons
from secagg.errors import UpdateRejected
from secagg.provision.identity import Identity
from secagg.provision.kit import Kit
from secagg.reasons import Reason
from secagg.transport.generated import secagg_pb2 as pb
from secagg.transport.tls import peer_identity


def caller(context: grpc.ServicerContext, kit: Kit) -> Identity:
    """Invariant 5: identity comes from the mTLS certificate, never from a field in a message.

    The one way the aggregator's handlers (sites in ``service``, admins in ``admin``) learn who calls:
    the peer certificate the TLS layer verified against the project CA. Its name is the site an
    upload is spooled and summed under, the sender of relayed messages, and the admin whose role and
    org decide; no handler reads a name from a request. Raises ``IdentityError``."""
    return peer_identity(context, kit)


def client_stream(pieces: Iterator[pb.Chunk]) -> Iterator[pb.Chunk]:
    """A client stream whose connection dies mid-way: gRPC's request iterator raises a bare
    ``grpc.RpcError`` (the call was cancelled) where a stream that merely stopped ends early. Both are
    an upload cut short, the caller's to send again (RELIABILITY.md F17), not a fault of the handler:
    refused as ``truncated`` with its audit line, not as ``internal`` with a traceback."""
    try:
        yield from pieces
    except grpc.RpcError:
        raise UpdateRejected(
            "stream cut off: the caller's connection was lost mid-stream", code=Reason.TRUNCATED
        ) from None


def abort(context: grpc.ServicerContext, code: str, message: str) -> None:
    """End a call as refused for ``code``: the status from the reason registry, the code in the
    trailing metadata (``secagg-reason``), and details ``"<code>: <message>"`` as before. Raises."""
    context.set_trailing_metadata(reasons.metadata(code))
    context.abort(reasons.grpc_status(code), reasons.details(code, message))


def abort_with(context: grpc.ServicerContext, status: grpc.StatusCode, code: str, message: str) -> None:
    """Like :func:`abort` with an explicit status and the details text as given (no code prefix)."""
    context.set_trailing_metadata(reasons.metadata(code))
    context.abort(status, message)


# ---------------------------------------------------------------------------- typed requests
# Every field of every request the service accepts is parsed here first, into the types and ranges
# the federation works with; anything else is an ``UpdateRejected`` with a registered code, so a
# hostile request ends in a specific status and an audit line, never in ``UNKNOWN``.

#: the longest job id, topic, reason code or metric name a request may carry
MAX_NAME = 256
#: the longest free text (a decline's message) kept from a request
MAX_TEXT = 4096
#: rounds and attempts are small positive integers; anything past this is an attack or a bug
MAX_ROUND = 1 << 31
#: the deepest JSON a site's message may nest (ready, final metrics, declines are all flat or nearly)
MAX_JSON_DEPTH = 16
#: the most entries a metrics object may carry
MAX_METRICS = 256
#: the largest JSON payload of a small message (ready, declined, final)
MAX_JSON_BYTES = 1 << 20
#: finite float range a metric may take (a value past it would not survive RFC 8785 or SQLite)
_FLOAT_MAX = 1.7976931348623157e308


def _refuse(message: str, code: str = Reason.MALFORMED) -> UpdateRejected:
    return UpdateRejected(message, code=code)


def name_field(value: Any, what: str, *, required: bool = True) -> str:
    """A short identifier (job id, topic, code): a string of at most ``MAX_NAME`` characters."""
    if not isinstance(value, str):
        raise _refuse(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > MAX_NAME:
        raise _refuse(f"{what} is longer than {MAX_NAME} characters", Reason.OVERSIZE)
    if required and not value:
        raise _refuse(f"{what} is empty")
    return value


def text_field(value: Any, what: str) -> str:
    """Free text, cut to ``MAX_TEXT`` characters (it is only ever shown and audited)."""
    if not isinstance(value, str):
        raise _refuse(f"{what} must be a string, got {type(value).__name__}")
    return value[:MAX_TEXT]


def int_field(value: Any, what: str, *, lo: int = 0, hi: int = MAX_ROUND) -> int:
    """An integer (not a bool, float or string) in ``lo..hi``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(f"{what} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise _refuse(f"{what} must be between {lo} and {hi}, got {value}", Reason.OUT_OF_RANGE)
    return value


def seconds_field(value: float, *, hi: float) -> float:
    """A wait in seconds from a request: NaN or negative is 0, anything past ``hi`` (inf too) is ``hi``."""
    if not isinstance(value, int | float) or math.isnan(value):
        return 0.0
    return min(max(float(value), 0.0), hi)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _refuse(f"number {text[:40]} is past the float range", Reason.OUT_OF_RANGE)
    return value


def _constant(text: str) -> Any:
    raise _refuse(f"{text} is not a number a message may carry", Reason.OUT_OF_RANGE)


def _depth(obj: Any, limit: int) -> None:
    """Refuse nesting past ``limit`` without recursing (a deep value cannot exhaust the stack)."""
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                raise _refuse(f"message nests deeper than {limit} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children)


def json_object(payload: bytes, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """A small JSON object from a site: bounded in size and depth, numbers finite, no NaN/Infinity."""
    if len(payload) > MAX_JSON_BYTES:
        raise _refuse(f"{what} is larger than {MAX_JSON_BYTES} bytes", Reason.OVERSIZE)
    try:
        obj = json.loads(payload, parse_float=_finite, parse_constant=_constant)
    except UpdateRejected:
        raise
    except RecursionError:
        raise _refuse(f"{what} nests deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _refuse(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _refuse(f"{what} must be a JSON object")
    _depth(obj, max_depth)
    return obj


def metrics_field(value: Any, what: str = "metrics") -> dict[str, float]:
    """A flat map of metric name to finite number (None: no metrics); other values are dropped."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _refuse(f"{what} must be an object of numbers")
    if len(value) > MAX_METRICS:
        raise _refuse(f"{what} has more than {MAX_METRICS} entries", Reason.OVERSIZE)
    out: dict[str, float] = {}
    for k, v in value.items():
        name = name_field(k, f"{what} name")
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue  # only numbers are kept (a note or a label is not a metric)
        if not (abs(v) <= _FLOAT_MAX and math.isfinite(v)):  # a huge int fails the first, no overflow
            raise _refuse(f"{what} {name!r} is past the float range", Reason.OUT_OF_RANGE)
        out[name] = float(v)
    return out


@dataclass(frozen=True)
class UploadHeader:
    """The header of an ``UploadResult`` stream, typed."""

    job_id: str
    round: int
    attempt: int
    bytes: int | None
    metrics: dict[str, float]
    #: the header as sent, for the mode's own checks (its fields above are the parsed ones)
    raw: dict[str, Any]


def upload_header(raw: Any, *, max_bytes: int) -> UploadHeader:
    """Parse an upload header: ids and counts typed and in range, metrics finite, ``bytes`` within
    ``max_bytes`` (an upload announcing more than any upload may be is refused before a byte)."""
    if not isinstance(raw, dict):
        raise _refuse("upload header must be a JSON object")
    _depth(raw, MAX_JSON_DEPTH)
    size = raw.get("bytes")
    if size is not None:
        size = int_field(size, "upload header bytes", lo=0, hi=1 << 62)
        if size > max_bytes:
            raise _refuse(
                f"upload announces {size} bytes, more than the {max_bytes} allowed", Reason.OVERSIZE
            )
    return UploadHeader(
        job_id=name_field(raw.get("job_id"), "upload header job_id"),
        round=int_field(raw.get("round"), "upload header round"),
        attempt=int_field(raw.get("attempt"), "upload header attempt"),
        bytes=size,
        metrics=metrics_field(raw.get("metrics"), "upload metrics"),
        raw=raw,
    )


@dataclass(frozen=True)
class PostFields:
    """The routing fields of a posted ``Message``, typed (the payload is parsed per topic)."""

    topic: str
    job_id: str
    round: int
    reason: str


def post_fields(topic: str, job_id: str, round_: int, reason: str) -> PostFields:
    return PostFields(
        topic=name_field(topic, "topic"),
        job_id=name_field(job_id, "job_id", required=False),
        round=int_field(round_, "round"),
        reason=name_field(reason, "reason", required=False),
    )


@dataclass(frozen=True)
class Declined:
    """A site's decline: its code, message and whether it sits out only this round."""

    code: str
    message: str
    round_only: bool


def declined(payload: bytes, reason: str) -> Declined:
    msg = json_object(payload, "decline message")
    code = reason or msg.get("code") or "declined"
    return Declined(
        code=name_field(str(code) if not isinstance(code, str) else code, "decline code"),
        message=text_field(msg.get("message", ""), "decline message"),
        round_only=msg.get("scope") == "round",
    )


def final_metrics(payload: bytes) -> dict[str, Any]:
    """A site's final metrics: a shallow JSON object of finite values (nesting at most 4 levels)."""
    obj = json_object(payload, "final metrics", max_depth=4)
    if len(obj) > MAX_METRICS:
        raise _refuse(f"final metrics have more than {MAX_METRICS} entries", Reason.OVERSIZE)
    for k in obj:
        name_field(k, "final metric name")
    return obj


__all__ = [
    "Declined",
    "PostFields",
    "UploadHeader",
    "abort",
    "abort_with",
    "caller",
    "declined",
    "final_metrics",
    "int_field",
    "json_object",
    "metrics_field",
    "name_field",
    "post_fields",
    "seconds_field",
    "upload_header",
]
