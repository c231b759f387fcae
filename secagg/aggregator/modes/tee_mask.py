"""``tee-mask`` at the aggregator: the ``mask`` server, run inside the attested enclave.

Every message a site posts, and its masked input, arrives sealed to the enclave's bound keys for its
phase and attempt, and is opened here, in the enclave's memory only (the masked input a chunk at a
time, as the windowed unmasking reads it); everything the mask server
publishes (the key roster, each site's share bundle, the unmask request naming the survivors) leaves
signed by the enclave's bound key for its recipient. The masking itself is ``mask``'s, unchanged: the
enclave adds masked vectors and never holds an unmasked single update, so a broken enclave reveals
masked vectors only, and the host plus fewer than ``t`` sites learn nothing. Because the server's code
is measured and its messages are signed, the host can neither show different sites different rosters
nor claim that a site dropped out (the attacks on semi-honest SecAgg servers). The global model goes
out signed as in ``tee``.
"""

from __future__ import annotations

import io
from pathlib import Path

from secagg.aggregator.modes.mask import MaskMode
from secagg.aggregator.modes.tee import TeeMode
from secagg.aggregator.rounds import Phase, RoundRun, Signal
from secagg.errors import UpdateRejected
from secagg.framing import unframe
from secagg.reasons import Reason
from secagg.tee.relaysig import EVERYONE, purpose
from secagg.tee.sealing import ChunkHeader
from secagg.tee.stream import SealedSource

#: the largest protocol message a site may post (key adverts, share bundles and unmask responses are a
#: few KiB per site of the roster)
MAX_MESSAGE = 16 * 1024 * 1024


class TeeMaskMode(TeeMode, MaskMode):
    """``MaskMode``'s phases with ``TeeMode``'s enclave at both ends of every message (``TeeMode``'s
    constructor refuses an aggregator without an enclave)."""

    name = "tee-mask"
    sees_model = True  # the average, inside the enclave; never a single site's update

    def post(self, site: str, topic: str, round_: RoundRun, payload: bytes) -> None:
        opened = self._open(payload, site, round_, purpose(topic, round_.attempt), MAX_MESSAGE)
        super().post(site, topic, round_, opened)

    def admit(self, site: str, round_: RoundRun, spooled: Path) -> None:
        if round_.phase != Phase.UPLOAD:
            raise UpdateRejected("the round is not accepting masked inputs now", code=Reason.LATE)
        limit = 4 * self.ctx.bundle_spec.size + 4096
        enclave, job, rnd = self.ctx.enclave, self.ctx.job_id, round_.round

        def open_chunk(raw: bytes, expect: ChunkHeader) -> bytes:
            return bytes(enclave.open_update_chunk(raw, expect, job, rnd, site))

        # opened whole once now to authenticate it (transient, one upload at a time: admit runs under
        # the round's lock), then read again a window at a time inside the enclave when the round is
        # unmasked; the round keeps no masked vector in memory
        with spooled.open("rb") as fh:
            enclave.open_update(unframe(fh), job, rnd, site, max_bytes=limit)
        self._run(round_).upload_source(site, SealedSource(spooled, open_chunk, max_bytes=limit))

    def collect(self, site: str, topic: str, round_: RoundRun) -> bytes | Signal | None:
        got = super().collect(site, topic, round_)
        if not isinstance(got, bytes):
            return got
        box = self._run(round_).published[topic]
        to = site if site in box else EVERYONE
        return bytes(
            self.ctx.enclave.sign_message(got, self.ctx.job_id, round_.round, round_.attempt, topic, to)
        )

    def _open(self, payload: bytes, site: str, round_: RoundRun, where: str, limit: int) -> bytes:
        if len(payload) > limit + 64 * 1024:
            raise UpdateRejected(f"{where}: message of {len(payload)} bytes", code=Reason.TEE_CHUNK_SIZE)
        return bytes(
            self.ctx.enclave.open_message(
                unframe(io.BytesIO(payload)), self.ctx.job_id, round_.round, site, where, max_bytes=limit
            )
        )


__all__ = ["TeeMaskMode"]
