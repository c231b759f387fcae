"""``mask`` mode at the aggregator: the Bonawitz/SecAgg+ phases of one round, driven by the round engine.

The aggregator only relays and sums: it forwards signed key advertisements, routes AES-GCM-sealed
shares it cannot read, checks each masked vector's header as it arrives (the vector stays in the spool),
asks the survivors for exactly one kind of share per site, then sums the masked vectors in Z_2^32 and
strips the masks window by window (:meth:`secagg.mask.server.MaskServer.finish_windows`). It learns
the weighted sum and the surviving sites' total weight, nothing of any single site's update while
fewer than t sites collude with it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secagg.aggregator.modes import WAIT, Step, Summed
from secagg.aggregator.modes.plain import PlainMode
from secagg.aggregator.modes.windows import (
    DEFAULT_WINDOW_BYTES,
    ByteSource,
    FileSource,
    f64_scratch,
    window_elements,
)
from secagg.aggregator.rounds import Phase, RoundRun, Signal
from secagg.aggregator.rpc import json_object
from secagg.errors import SecaggError, UpdateRejected
from secagg.events import Event
from secagg.jobs.spec import MaskSpec
from secagg.mask.config import MaskConfig
from secagg.mask.job import mask_config, pack
from secagg.mask.messages import AdvertiseKeys, EncryptedShare, UnmaskResponse
from secagg.mask.server import MaskServer
from secagg.mask.spooled import MaskedSource
from secagg.reasons import Reason
from secagg.topics import Topic

# the phases after the roster; "upload" is the round engine's own upload phase
KEYS, SHARES, UPLOAD, UNMASK = Topic.MASK_KEYS, Topic.MASK_SHARES, "upload", Topic.MASK_UNMASK
#: what sites post in the phases, and what they collect when a phase closes
POST_TOPICS = frozenset({Topic.MASK_KEYS, Topic.MASK_SHARES, Topic.MASK_UNMASK_RESP})
COLLECT_TOPICS = frozenset({Topic.MASK_KEYROSTER, Topic.MASK_MYSHARES, Topic.MASK_UNMASK})


@dataclass
class MaskRun:
    config: MaskConfig
    server: MaskServer
    sites: list[str]
    #: elements per window of the unmasking
    window: int = window_elements(DEFAULT_WINDOW_BYTES)
    phase: str = KEYS
    phase_started: float = field(default_factory=time.monotonic)
    advertised: set[str] = field(default_factory=set)
    shared: set[str] = field(default_factory=set)
    uploaded: set[str] = field(default_factory=set)
    responses: dict[str, UnmaskResponse] = field(default_factory=dict)
    #: what sites may collect: topic -> {site or "*": payload}
    published: dict[str, dict[str, bytes]] = field(default_factory=dict)

    @classmethod
    def start(
        cls, spec: MaskSpec | None, sites: list[str], job: str, round_: int, length: int, window_bytes: int
    ) -> MaskRun:
        cfg = mask_config(spec, len(sites))
        # the window is counted in float64 values (the unmasked sum's), as in the other modes
        window = window_elements(window_bytes)
        return cls(cfg, MaskServer(cfg, sites, job, round_, length), sorted(sites), window)

    def post(self, site: str, topic: str, payload: bytes) -> None:
        """A site's message for the current phase (identity from its certificate, never the payload)."""
        if site not in self.sites:
            raise UpdateRejected(f"{site} is not in this round's roster", code=Reason.NOT_IN_ROSTER)
        if topic == Topic.MASK_KEYS and self.phase == KEYS:
            msg = AdvertiseKeys.from_bytes(payload)
            if msg.site != site:
                raise UpdateRejected(
                    f"{site} sent keys in the name of {msg.site}", code=Reason.IDENTITY_MISMATCH
                )
            self.server.collect_keys(msg)
            self.advertised.add(site)
        elif topic == Topic.MASK_SHARES and self.phase == SHARES:
            self.server.collect_shares(site, _shares(payload))
            self.shared.add(site)
        elif topic == Topic.MASK_UNMASK_RESP and self.phase == UNMASK:
            resp = UnmaskResponse.from_bytes(payload)
            if resp.site != site:
                raise UpdateRejected(
                    f"{site} answered in the name of {resp.site}", code=Reason.IDENTITY_MISMATCH
                )
            if site in self.responses:
                raise UpdateRejected(f"{site} already answered the unmask request", code=Reason.DUPLICATE)
            self.responses[site] = resp
        else:
            raise UpdateRejected(f"{topic} is not accepted in phase {self.phase}", code=Reason.LATE)

    def upload(self, site: str, path: Path) -> None:
        """A spooled masked input: its header is checked now, its vector read when unmasked."""
        self.upload_source(site, FileSource(path))

    def upload_source(self, site: str, src: ByteSource) -> None:
        """A masked input readable at offsets (``tee-mask``: a sealed upload opened inside the enclave a
        chunk at a time, never written in the clear)."""
        try:
            msg = MaskedSource(src)
            if msg.site != site:
                raise UpdateRejected(
                    f"{site} uploaded a masked input in the name of {msg.site}", code=Reason.IDENTITY_MISMATCH
                )
        except BaseException:
            src.close()
            raise
        self.server.collect_masked_source(msg)  # closes it if refused
        self.uploaded.add(site)

    def withdraw(self, site: str) -> None:
        """Forget a masked input admitted but never logged (a full disk): not counted, its file
        released, so the phase and the unmask see only logged uploads."""
        self.server.withdraw_masked(site)
        self.uploaded.discard(site)

    def expected(self) -> set[str]:
        """Who the current phase waits for."""
        if self.phase == KEYS:
            return set(self.sites)
        if self.phase == SHARES:
            return set(self.advertised)
        if self.phase == UPLOAD:
            return set(self.shared)
        return set(self.server.unmask_request().survivors)

    def arrived(self) -> set[str]:
        return {KEYS: self.advertised, SHARES: self.shared, UPLOAD: self.uploaded}.get(
            self.phase, set(self.responses)
        )

    def advance(self) -> tuple[np.ndarray, float] | None:
        """Close the current phase; returns (weighted sum, total weight) after unmasking."""
        now = time.monotonic()
        if self.phase == KEYS:
            self.published[Topic.MASK_KEYROSTER] = {"*": pack([m.to_bytes() for m in self.server.roster()])}
            self.phase = SHARES
        elif self.phase == SHARES:
            routed = self.server.route_shares()
            self.published[Topic.MASK_MYSHARES] = {
                s: pack([sh.to_bytes() for sh in routed.get(s, [])]) for s in self.shared
            }
            self.phase = UPLOAD
        elif self.phase == UPLOAD:
            self.published[Topic.MASK_UNMASK] = {"*": self.server.unmask_request().to_bytes()}
            self.phase = UNMASK
        else:
            try:
                unmasked = self.server.finish_windows(list(self.responses.values()), self.window)
                # the sum goes to a scratch file window by window; the round engine gets a map of it
                total = f64_scratch(unmasked.windows, unmasked.length)
            finally:
                self.server.close()
            self.phase = "done"
            return total, unmasked.weight
        self.phase_started = now
        return None


def _shares(payload: bytes) -> dict[str, EncryptedShare]:
    """A site's ``mask-shares`` message: a JSON object of recipient to base64 ``EncryptedShare``.

    Anything else is ``malformed`` (issue #18's RPC fuzzing found a JSON list or number here ended in
    an ``internal`` refusal: the handler called ``.items()`` on it)."""
    raw = json_object(payload, "mask shares message", max_depth=1)
    shares = {}
    for recipient, text in raw.items():
        if not isinstance(text, str):
            raise UpdateRejected(
                f"mask share for {recipient[:80]!r} must be a base64 string", code=Reason.MALFORMED
            )
        try:
            blob = base64.b64decode(text, validate=True)
        except ValueError:  # binascii.Error
            raise UpdateRejected(
                f"mask share for {recipient[:80]!r} is not base64", code=Reason.MALFORMED
            ) from None
        shares[recipient] = EncryptedShare.from_bytes(blob)
    return shares


class MaskMode(PlainMode):
    """Masked uploads are folded into the round's :class:`MaskRun` as they arrive (one uint32
    accumulator); the round's sum comes out of the unmasking, never from a combine of the spool."""

    name = "mask"
    sees_model = True  # the average, after unmasking; never a single site's update
    post_topics = POST_TOPICS
    collect_topics = COLLECT_TOPICS

    @staticmethod
    def _run(round_: RoundRun) -> MaskRun:
        run = round_.mode_state
        if not isinstance(run, MaskRun):
            raise UpdateRejected(f"round {round_.round} is not in a masking phase", code=Reason.LATE)
        return run

    def after_roster(self, round_: RoundRun) -> None:
        assert round_.roster is not None
        sites = sorted(round_.roster["weights"])
        ctx = self.ctx
        round_.mode_state = MaskRun.start(
            ctx.spec.mask, sites, ctx.job_id, round_.round, ctx.bundle_spec.size, ctx.window_bytes
        )
        round_.phase = Phase.MASK

    def accept(self, site: str, round_: RoundRun, header: dict[str, Any], spooled: Path) -> None:
        """Checked as it is folded into the round's sum (:meth:`admit`)."""

    def admit(self, site: str, round_: RoundRun, spooled: Path) -> None:
        if round_.phase != Phase.UPLOAD:
            raise UpdateRejected("the round is not accepting masked inputs now", code=Reason.LATE)
        self._run(round_).upload(site, spooled)

    def withdraw(self, site: str, round_: RoundRun) -> None:
        self._run(round_).withdraw(site)

    def step(self, round_: RoundRun, declined: set[str], now: float) -> Step:
        """Advance the masking phases: every site of the phase, or the timeout with at least t."""
        m = self._run(round_)
        arrived, expected = m.arrived(), m.expected()
        expired = now - m.phase_started > self.ctx.spec.round_timeout
        if not (arrived >= expected or expired):
            return WAIT
        phase = m.phase
        outcome: tuple[np.ndarray, float] | None = None
        try:
            # the round's sum is of the sites that upload: fewer than the job's min_sites (which every
            # site's policy admitted the job on) is retried, never unmasked; the unmask phase needs
            # only t of those survivors to answer
            need = m.config.threshold if phase == UNMASK else max(m.config.threshold, self.ctx.spec.min_sites)
            if len(arrived) < need:
                raise UpdateRejected(
                    f"only {len(arrived)} sites in phase {phase}, threshold {m.config.threshold}"
                    + ("" if phase == UNMASK else f", the job needs {self.ctx.spec.min_sites}")
                )
            outcome = m.advance()
        except SecaggError as exc:
            round_.phase = Phase.COMBINING
            failed: str | None = f"{phase}: {exc}"
        else:
            failed = None
            if outcome is None:
                round_.phase = Phase.UPLOAD if m.phase == UPLOAD else Phase.MASK
            else:
                round_.phase = Phase.COMBINING
        audit = (str(Event.MASK_PHASE), {"phase": phase, "sites": sorted(arrived)})
        if failed is not None:
            return Step(audit=audit, retry=failed)
        if outcome is None:
            return Step(audit=audit)
        total, weight = outcome
        if not weight > 0:
            return Step(audit=audit, retry="total weight of the survivors is zero")
        return Step(audit=audit, summed=Summed(total, weight, sorted(m.uploaded)))

    def post(self, site: str, topic: str, round_: RoundRun, payload: bytes) -> None:
        self._run(round_).post(site, topic, payload)

    def collect(self, site: str, topic: str, round_: RoundRun) -> bytes | Signal | None:
        run = round_.mode_state
        if not isinstance(run, MaskRun):
            return Signal.CANCELLED
        box = run.published.get(topic)
        if box is not None and (site in box or "*" in box):
            return box.get(site, box.get("*"))
        if box is not None:
            return Signal.NOT_FOR_YOU
        return None

    def combine(self, round_: int, uploads: Mapping[str, Path], out: Path) -> np.ndarray:
        raise RuntimeError("a mask round is summed by its MaskRun, never combined from the spool")


__all__ = ["COLLECT_TOPICS", "POST_TOPICS", "MaskMode", "MaskRun", "SecaggError"]
