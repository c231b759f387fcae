"""What every site-side mode is given and must provide.

A mode is the part of a round that differs between ``plain``, ``he``, ``mask`` and ``tee``: how the
global model arrives (in ``he`` the site decrypts and applies the strategy itself), what must be checked
about it before training (``tee``: the enclave's evidence and signature), and how the weighted update
is protected and sent. Everything else of a round (admission, training, the consistency check, the
release) is the same for every mode and lives in :mod:`secagg.agent.site`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from secagg.agent.relay import Relay
from secagg.agent.resend import UploadAttempt, send_until_taken
from secagg.agent.roundfiles import model_spec
from secagg.agent.state import SiteState
from secagg.auditlog import AuditLog
from secagg.bundle import BundleSpec
from secagg.jobs.job import VerifiedJob
from secagg.jobs.spec import JobSpec
from secagg.policy.model import SitePolicy
from secagg.provision.kit import Kit
from secagg.transport.chunks import MAX_CHUNK


@dataclass(frozen=True)
class ModeContext:
    """What a mode may use of its agent: no more, so a mode cannot reach the ledger or the worker."""

    kit: Kit
    state: SiteState
    relay: Relay
    audit: AuditLog
    target: str
    load_policy: Callable[[], SitePolicy]
    #: demos and tests: raises where the agent is told to vanish (``--simulate-dropout``)
    maybe_drop: Callable[[int, str], None] = lambda round_, phase: None

    @property
    def site(self) -> str:
        return self.kit.name


@dataclass(frozen=True)
class Task:
    """One task as the aggregator announced it (``train`` or ``finalize``)."""

    job: VerifiedJob
    job_id: str
    round: int
    header: dict[str, Any]
    #: what came with the task: a file in the job's folder as the agent spooled it (bytes in tests)
    payload: bytes | Path

    def payload_bytes(self) -> bytes:
        """The payload whole in memory (``he``'s ciphertexts; never a plaintext model)."""
        return self.payload if isinstance(self.payload, bytes) else self.payload.read_bytes()


class Weighted(Protocol):
    """The weighted update as float64 windows in bundle order
    (:class:`~secagg.agent.roundfiles.WeightedFile`), or whole where a mode needs it so."""

    @property
    def size(self) -> int: ...

    def windows(self) -> Iterator[tuple[int, np.ndarray]]: ...

    def array(self) -> np.ndarray: ...


@dataclass(frozen=True)
class Outgoing:
    """A released, weighted update ready to be protected; built only from a :class:`Release`."""

    spec: JobSpec
    job_id: str
    round: int
    attempt: int
    bspec: BundleSpec
    weighted: Weighted
    weight: float
    sites: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Sent:
    bytes: int
    accepted: bool


class SiteMode(Protocol):
    """One aggregation mode at a site. An instance lives for one job."""

    name: str

    def receive_global(self, task: Task) -> Path:
        """The round's global model, a safetensors file stored durably in the site's state."""
        ...

    def check_global(self, task: Task, model_fingerprint: str) -> None:
        """Anything the mode must prove about the model or the aggregator before the model is used."""
        ...

    def protect_and_send(self, out: Outgoing) -> Sent:
        """Protect the weighted update as the mode requires and upload it."""
        ...


class StoredGlobal:
    """The global model travels as plaintext safetensors (every mode but ``he``)."""

    def __init__(self, ctx: ModeContext) -> None:
        self.ctx = ctx

    def receive_global(self, task: Task) -> Path:
        """Parse-checked from its header (before it is stored or used), then moved into the state as
        the round's global model: never loaded."""
        job_id, base = task.job_id, int(task.header["base_round"])
        dest = self.ctx.state.global_path(job_id, base)
        if isinstance(task.payload, bytes):
            tmp = dest.with_name(f".{dest.name}.tmp")
            tmp.write_bytes(task.payload)
        else:
            tmp = task.payload
        try:
            model_spec(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.ctx.state.adopt_global(job_id, base, tmp)
        return dest

    def check_global(self, task: Task, model_fingerprint: str) -> None:
        return None


def upload(ctx: ModeContext, out: Outgoing, mode: str, parts: Iterable[bytes]) -> Sent:
    """One upload of frames as made. The header needs the upload's size before its first byte, so the
    frames are spooled to a file in the job's folder as they are made (a large update is never held
    whole, not even as a list of pieces), then streamed from it in transport-sized pieces; the same
    file is streamed again if the aggregator refuses it as a transient loss (F12). The spool is named
    as atomic writes name their temporary files, so that one left by a kill mid-upload is swept when
    the agent starts again (:func:`secagg.fsio.remove_stale_temps`, F14)."""
    spool = ctx.state.job_dir(out.job_id) / f".upload-{out.round}-{out.attempt}.{secrets.token_hex(8)}.tmp"
    try:
        size = 0
        fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as fh:
            for piece in parts:
                fh.write(piece)
                size += len(piece)
        return _send(ctx, out, mode, spool, size)
    finally:
        spool.unlink(missing_ok=True)


def file_pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while piece := fh.read(MAX_CHUNK):
            yield piece


def _send(ctx: ModeContext, out: Outgoing, mode: str, spool: Path, size: int) -> Sent:
    header = {
        "job_id": out.job_id,
        "round": out.round,
        "attempt": out.attempt,
        "bytes": size,
        "mode": mode,
        # metrics of the model as received leave only after every site proved it is the same model
        "metrics": out.metrics,
    }
    # refused as a transient loss (the aggregator's disk full): the same spooled bytes again, in this
    # attempt (secagg.agent.resend); never protected anew, so nothing is drawn or debited twice
    at = UploadAttempt(out.job_id, out.round, out.attempt, give_up_s=float(out.spec.round_timeout))
    accepted = send_until_taken(
        ctx.relay, ctx.audit, at, lambda: ctx.relay.upload(header, file_pieces(spool))
    )
    return Sent(size, accepted)
