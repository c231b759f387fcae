"""An upload the aggregator refused as a transient loss is sent again in the same attempt (F12).

The aggregator answers ``UNAVAILABLE`` (``storage_full``) when its state disk is full: nothing of the
upload was kept or counted. Left to the agent's job loop, the site would only send it again in the
round's next attempt, after the aggregator's round timeout (and in ``mask`` the round's masking
phases would not reach their threshold). So the agent sends the *same* file again, with backoff, while
the attempt is open: the bytes are those already protected from the one release of the round (its
noise drawn once, its debit committed once, RELIABILITY.md F3), so a re-send spends no budget and
reveals nothing that the first send did not.

It stops at the first of: accepted; a refusal that is not transient (``late``, ``wrong_round``: the
attempt is over; the agent's next task redoes what is needed); the job no longer running (asked
between re-sends); the round's timeout spent since the first refusal (the attempt is over at the
aggregator by then, or the aggregator is gone: the job loop's reconnect takes over as before).
A ``duplicate_upload`` after a transient refusal means an earlier send was counted and only its reply
was lost: it is the acceptance.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from secagg.agent.relay import TRANSIENT, Relay, RoundMovedOn, reason_of
from secagg.auditlog import AuditLog
from secagg.events import Event
from secagg.reasons import Reason

#: the wait before the first re-send, doubled after each refusal up to RESEND_MAX_S
RESEND_FIRST_S = 0.5
RESEND_MAX_S = 5.0


@dataclass(frozen=True)
class UploadAttempt:
    """The round attempt an upload belongs to, and how long its re-sends may go on."""

    job_id: str
    round: int
    attempt: int
    #: seconds after the first transient refusal past which the re-sends stop (the round timeout)
    give_up_s: float


def _wait(seconds: float) -> None:
    time.sleep(seconds)


def _now() -> float:
    return time.monotonic()


def send_until_taken(relay: Relay, audit: AuditLog, at: UploadAttempt, send: Callable[[], bool]) -> bool:
    """``send()`` (one whole upload of the same bytes each call) until the aggregator takes it; what
    it answered (``accepted``). Raises the refusal that ends the re-sends, or ``RoundMovedOn``."""
    refused_since: float | None = None
    delay = RESEND_FIRST_S
    tries = 0
    while True:
        try:
            return send()
        except grpc.RpcError as exc:
            if tries and exc.code() == grpc.StatusCode.ALREADY_EXISTS and (
                reason_of(exc) == Reason.DUPLICATE_UPLOAD
            ):
                return True  # an earlier send was counted; only its answer was lost
            if exc.code() not in TRANSIENT:
                raise
            now = _now()
            refused_since = now if refused_since is None else refused_since
            if now - refused_since >= at.give_up_s:
                raise
            tries += 1
            audit.append(
                Event.UPLOAD_RETRY,
                job=at.job_id,
                round=at.round,
                attempt=at.attempt,
                tries=tries,
                code=reason_of(exc) or exc.code().name,
                detail=str(exc.details() or "")[:300],
                wait_s=delay,
            )
        _wait(delay)
        delay = min(delay * 2, RESEND_MAX_S)
        _require_running(relay, at)


def _require_running(relay: Relay, at: UploadAttempt) -> None:
    """Between re-sends: a job that stopped (aborted, failed) is not sent to again. An aggregator
    that does not answer is no answer: the next send finds out."""
    try:
        state = relay.job_state(at.job_id, at.round)
    except grpc.RpcError:
        return
    if state != "running":
        raise RoundMovedOn(f"job {at.job_id} is {state}: its upload of round {at.round} is not sent again")


__all__ = ["RESEND_FIRST_S", "RESEND_MAX_S", "UploadAttempt", "send_until_taken"]
