"""``tee-mask``: the mask protocol with its server inside the attested aggregator.

The site first does everything ``tee`` does (fresh evidence for its own nonce, accepted by its policy,
and the global model signed by the bound key: invariant 4), then runs the ``mask`` protocol with every
message it posts, and its masked input, sealed to the enclave's bound keys for that phase and attempt,
and believes only what the enclave signed for it. So a broken enclave reveals masked vectors, never a
single update; the host relaying the messages learns nothing, and cannot show different sites
different key rosters or invent dropouts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from secagg.agent.modes.base import Outgoing, Sent, file_pieces
from secagg.agent.modes.mask import BROADCAST, run_protocol
from secagg.agent.modes.tee import TeeMode
from secagg.errors import IntegrityError
from secagg.framing import frame
from secagg.tee.relaysig import EVERYONE, purpose
from secagg.tee.site import TrustedAggregator


class EnclaveEnvelope:
    """Seals what the site posts to the enclave; opens only what the enclave signed for this site."""

    def __init__(self, trusted: TrustedAggregator, out: Outgoing, site: str) -> None:
        self.trusted, self.out, self.site = trusted, out, site

    def posted(self, topic: str, payload: bytes) -> bytes:
        out = self.out
        where = purpose(topic, out.attempt)
        return b"".join(frame(self.trusted.seal_message(payload, out.job_id, out.round, self.site, where)))

    def collected(self, topic: str, message: bytes) -> bytes:
        out = self.out
        to = EVERYONE if topic in BROADCAST else self.site
        return self.trusted.open_message(message, out.job_id, out.round, out.attempt, topic, to)

    def uploaded(self, masked: Path) -> Iterable[bytes]:
        out = self.out
        size = masked.stat().st_size
        return frame(
            self.trusted.seal_update(file_pieces(masked), out.job_id, out.round, self.site, size=size)
        )


class TeeMaskMode(TeeMode):
    name = "tee-mask"

    def protect_and_send(self, out: Outgoing) -> Sent:
        trusted = self._trusted
        if trusted is None:  # only check_global of this very round may set it
            raise IntegrityError("no attested aggregator for this round: refusing to send mask messages")
        self._trusted = None
        return run_protocol(self.ctx, out, self.name, EnclaveEnvelope(trusted, out, self.ctx.site))
