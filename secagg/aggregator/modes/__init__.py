"""An aggregation mode is one object on the aggregator side; this is the interface the round engine uses.

The round engine (:class:`secagg.aggregator.federation.Federation`) runs what every mode shares: tasks,
readiness, the roster, the upload phase, retries, the strategy and the commit. What differs per mode is
behind these hooks, one file per mode (``plain``, ``he``, ``mask``, ``tee``), each a subclass of
:class:`ModeBase`, and one entry in :data:`MODES`. Adding a mode is adding a file and an entry.

Hooks, in the order a round meets them (``[lock]``: called with the federation's lock held, keep them
short; the others run without it):

- ``check_aggregator(enclave)`` (class method): refuse, before anything is written, a job this
  aggregator cannot run.
- ``payload_header(job, site_has_round)`` / ``payload(job, header)``: what a site gets with its task to
  hold the current global model (the header fields, then the payload bytes).
- ``after_roster(round)`` [lock]: the roster is fixed; a mode with phases of its own starts them.
- ``accept(site, round, header, spooled)``: check one complete spooled upload; raise
  ``UpdateRejected`` to refuse it while the round goes on.
- ``admit(site, round, spooled)`` [lock]: fold an accepted upload into the round's state, if the mode
  keeps one (mask).
- ``step(round, declined, now)`` [lock]: what the round needs next after the roster (:class:`Step`).
- ``combine(round, uploads, out)``: sum the accepted uploads, window by window (every mode: see
  :mod:`secagg.aggregator.modes.windows`); return the plaintext sum (a read-only map of the float64
  sum written to ``out``), or None when the sum is protected and was written to ``out`` for the sites
  to unprotect.
- ``total_weight(round, uploads, weights)``: what the round engine divides the combined sum by: the
  roster's weights of the combined uploads, or (``tee`` under ``distributed_gaussian``) their count,
  since distributed-DP shares average uniformly.
- ``download(job_id, rounds)`` (class method): the files an admin's ``download`` gets for a job.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from threading import Condition
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from secagg.aggregator.modes.windows import DEFAULT_WINDOW_BYTES
from secagg.aggregator.rounds import JobRun, Phase, RoundRun, Signal
from secagg.bundle import BundleSpec
from secagg.errors import ConfigError, UpdateRejected
from secagg.jobs.spec import JobSpec
from secagg.reasons import Reason

if TYPE_CHECKING:
    from secagg.aggregator.global_model import GlobalModel
    from secagg.aggregator.store import RoundRow, StateStore
    from secagg.auditlog import AuditLog


class BadUpload(Exception):
    """One upload that failed while being combined; the round is combined again without it."""

    def __init__(self, path: Path, reason: Exception, site: str | None = None) -> None:
        super().__init__(str(reason))
        self.path = path
        self.reason = reason
        self.site = site


@dataclass(frozen=True)
class Summed:
    """A mode that summed the round itself (mask): the weighted sum, the survivors' total weight."""

    total: np.ndarray
    weight: float
    sites: list[str]


@dataclass(frozen=True)
class Step:
    """What a round needs next, as a mode's ``step`` decides it (the engine acts on it outside the lock).

    ``wait``: nothing changed, wait for news. ``combine``: the upload phase is over, combine the spooled
    uploads. ``audit``: an event (name, fields) to record. ``retry``: this attempt failed, run the round
    again for this reason. ``summed``: the mode has the round's sum already."""

    wait: bool = False
    combine: bool = False
    audit: tuple[str, dict[str, Any]] | None = None
    retry: str | None = None
    summed: Summed | None = None


WAIT = Step(wait=True)
COMBINE = Step(combine=True)
#: a phase advanced, nothing else to do now
ADVANCED = Step()


@dataclass
class ModeContext:
    """What a mode object may use of the aggregator (never the federation itself)."""

    job_id: str
    spec: JobSpec
    bundle_spec: BundleSpec
    store: StateStore
    audit: AuditLog
    #: the federation's lock, held around the ``[lock]`` hooks
    lock: Condition
    #: tee: the in-enclave keys and attester; None outside a TEE
    enclave: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: bytes of float64 accumulator per window of the combine (:mod:`secagg.aggregator.modes.windows`):
    #: peak memory is a few windows, whatever the model's size and the number of sites
    window_bytes: int = DEFAULT_WINDOW_BYTES


class AggregatorMode(Protocol):
    """The aggregator side of one aggregation mode (see the module docstring for the hooks)."""

    name: ClassVar[str]
    #: whether the aggregator holds the global model in the clear and runs the server strategy
    sees_model: ClassVar[bool]
    #: ``Post`` / ``Collect`` topics of the mode's own phases
    post_topics: ClassVar[frozenset[str]]
    collect_topics: ClassVar[frozenset[str]]

    @classmethod
    def check_aggregator(cls, enclave: Any) -> None: ...

    @classmethod
    def download(cls, job_id: str, rounds: Sequence[RoundRow]) -> list[tuple[str, Path | bytes]]: ...

    def payload_header(self, job: JobRun, site_has_round: int) -> dict[str, Any]: ...

    def payload(self, job: JobRun, header: dict[str, Any]) -> Iterator[bytes]: ...

    def after_roster(self, round_: RoundRun) -> None: ...

    def accept(self, site: str, round_: RoundRun, header: dict[str, Any], spooled: Path) -> None: ...

    def admit(self, site: str, round_: RoundRun, spooled: Path) -> None: ...

    def withdraw(self, site: str, round_: RoundRun) -> None: ...

    def step(self, round_: RoundRun, declined: set[str], now: float) -> Step: ...

    def post(self, site: str, topic: str, round_: RoundRun, payload: bytes) -> None: ...

    def collect(self, site: str, topic: str, round_: RoundRun) -> bytes | Signal | None: ...

    def combine(self, round_: int, uploads: Mapping[str, Path], out: Path) -> np.ndarray | None: ...

    def total_weight(
        self, round_: int, uploads: Mapping[str, Path], weights: Mapping[str, float]
    ) -> float: ...


class ModeBase:
    """Defaults shared by the modes: no phases of their own, nothing kept per round."""

    name: ClassVar[str] = ""
    sees_model: ClassVar[bool] = True
    post_topics: ClassVar[frozenset[str]] = frozenset()
    collect_topics: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, ctx: ModeContext) -> None:
        self.ctx = ctx

    @classmethod
    def check_aggregator(cls, enclave: Any) -> None:
        """Every aggregator can run this mode."""

    @classmethod
    def download(cls, job_id: str, rounds: Sequence[RoundRow]) -> list[tuple[str, Path | bytes]]:
        """The job's files for an admin's ``download`` (before its audit lines): the last global model."""
        return [("model.safetensors", Path(rounds[-1].result_path))]

    def payload_header(self, job: JobRun, site_has_round: int) -> dict[str, Any]:
        raise NotImplementedError

    def payload(self, job: JobRun, header: dict[str, Any]) -> Iterator[bytes]:
        raise NotImplementedError

    def combine(self, round_: int, uploads: Mapping[str, Path], out: Path) -> np.ndarray | None:
        raise NotImplementedError

    def total_weight(self, round_: int, uploads: Mapping[str, Path], weights: Mapping[str, float]) -> float:
        """The total the combined sum of ``uploads`` is divided by: their roster weights (``weights``
        are the roster's, by site), called right after :meth:`combine` summed exactly these uploads."""
        return sum(weights[s] for s in uploads)

    def max_upload_bytes(self) -> int | None:
        """The most bytes one site's upload of this job's model can take (None: no bound known yet).

        Plain, tee and mask uploads carry 4 bytes per parameter (float32 or a Z_2^32 residue); the
        allowance covers safetensors headers, sealing frames and tensor names, so an upload far
        larger than its model is refused while it streams, not after it is spooled."""
        spec = self.ctx.bundle_spec
        names = sum(len(t.name) for t in spec.tensors)
        return 4 * spec.size + 256 * len(spec.tensors) + 4 * names + spec.size // 16 + (1 << 20)

    def after_roster(self, round_: RoundRun) -> None:
        """No phases of its own: the round goes straight to its upload phase."""

    def accept(self, site: str, round_: RoundRun, header: dict[str, Any], spooled: Path) -> None:
        """Nothing to check before the combine."""

    def admit(self, site: str, round_: RoundRun, spooled: Path) -> None:
        """Nothing kept per round: uploads are read when the round is combined."""

    def withdraw(self, site: str, round_: RoundRun) -> None:
        """Undo :meth:`admit` (its audit line could not be written): nothing was kept."""

    def step(self, round_: RoundRun, declined: set[str], now: float) -> Step:
        """The upload phase: every roster site that has not declined has uploaded, or the round timed out."""
        if round_.phase != Phase.UPLOAD:
            return WAIT
        assert round_.roster is not None
        everyone = len(round_.uploads) >= len(set(round_.roster["weights"]) - declined)
        expired = now - round_.phase_started > self.ctx.spec.round_timeout
        if not (everyone or expired):
            return WAIT
        round_.phase = Phase.COMBINING
        return COMBINE

    def post(self, site: str, topic: str, round_: RoundRun, payload: bytes) -> None:
        raise UpdateRejected(f"{topic} is not a message of {self.name} mode", code=Reason.MALFORMED)

    def collect(self, site: str, topic: str, round_: RoundRun) -> bytes | Signal | None:
        return Signal.CANCELLED  # no phases of its own: nothing will be published

    # plaintext-model helpers (every mode whose aggregator sees the model)
    def global_model(self, job: JobRun) -> GlobalModel:
        """The current global model, on disk (its bundle is what a site downloads)."""
        assert job.global_model is not None
        return job.global_model


def _registry() -> dict[str, type[ModeBase]]:
    from secagg.aggregator.modes.he import HEMode
    from secagg.aggregator.modes.mask import MaskMode
    from secagg.aggregator.modes.plain import PlainMode
    from secagg.aggregator.modes.tee import TeeMode
    from secagg.aggregator.modes.tee_mask import TeeMaskMode

    return {m.name: m for m in (PlainMode, HEMode, MaskMode, TeeMode, TeeMaskMode)}


#: the modes this aggregator runs, by the job's ``mode`` string
MODES: dict[str, type[ModeBase]] = _registry()
#: every topic a mode's own phases post or collect (the service routes these to the running mode)
POST_TOPICS: frozenset[str] = frozenset().union(*(m.post_topics for m in MODES.values()))
COLLECT_TOPICS: frozenset[str] = frozenset().union(*(m.collect_topics for m in MODES.values()))


def mode_class(name: str) -> type[ModeBase]:
    """The mode named by a job, or :class:`ConfigError` for one this aggregator does not run."""
    cls = MODES.get(name)
    if cls is None:
        raise ConfigError(f"mode {name!r} is not supported by this aggregator yet")
    return cls


__all__ = [
    "ADVANCED",
    "COLLECT_TOPICS",
    "COMBINE",
    "MODES",
    "POST_TOPICS",
    "WAIT",
    "AggregatorMode",
    "BadUpload",
    "ModeBase",
    "ModeContext",
    "Step",
    "Summed",
    "mode_class",
]
