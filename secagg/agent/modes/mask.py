"""``mask``: the site's side of pairwise-masking secure aggregation (Bonawitz et al. 2017).

The client object refuses substituted keys, tampered shares and any request for both shares of one
site; this file only moves its messages over the relay, phase by phase. What wraps each message on its
way is an :class:`Envelope`: nothing in ``mask`` (the server is untrusted and the protocol is built for
that), sealing and the enclave's signature in ``tee-mask`` (:mod:`secagg.agent.modes.tee_mask`).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from secagg.agent.modes.base import ModeContext, Outgoing, Sent, StoredGlobal, file_pieces, upload
from secagg.agent.roundfiles import spool_path
from secagg.errors import ConfigError
from secagg.topics import Topic

#: what every site of the round collects alike; the other collected topic is addressed to one site
BROADCAST = frozenset({Topic.MASK_KEYROSTER, Topic.MASK_UNMASK})


class Envelope(Protocol):
    def posted(self, topic: str, payload: bytes) -> bytes:
        """What goes on the wire for a message this site posts."""
        ...

    def collected(self, topic: str, message: bytes) -> bytes:
        """The payload of a message this site collected, or an error if it must not be believed."""
        ...

    def uploaded(self, masked: Path) -> Iterable[bytes]:
        """The upload's frames for this site's masked input (the file it was written to)."""
        ...


class Clear:
    """``mask``: messages travel as they are (the pairwise shares inside are sealed site to site)."""

    def posted(self, topic: str, payload: bytes) -> bytes:
        return payload

    def collected(self, topic: str, message: bytes) -> bytes:
        return message

    def uploaded(self, masked: Path) -> Iterable[bytes]:
        return file_pieces(masked)


def run_protocol(ctx: ModeContext, out: Outgoing, mode: str, envelope: Envelope) -> Sent:
    """One site's four phases: advertise keys, share them, upload the masked input, answer the unmask."""
    from secagg.mask.client import MaskClient
    from secagg.mask.errors import UnmaskRefused
    from secagg.mask.job import mask_config, unpack
    from secagg.mask.messages import AdvertiseKeys, EncryptedShare, UnmaskRequest

    job_id, round_, attempt = out.job_id, out.round, out.attempt
    kit, relay = ctx.kit, ctx.relay
    cfg = mask_config(out.spec.mask, len(out.sites))
    client = MaskClient(
        kit.name, kit.private_key, kit.cert, kit.ca_cert, cfg, job_id, round_, sites=out.sites
    )
    sent = 0

    def post(topic: str, payload: bytes) -> None:
        nonlocal sent
        wire = envelope.posted(topic, payload)
        sent += len(wire)
        relay.post(topic, wire, job_id=job_id, round_=round_)

    def collect(topic: str) -> bytes:
        return envelope.collected(topic, relay.collect(topic, job_id=job_id, round_=round_, attempt=attempt))

    post(Topic.MASK_KEYS, client.advertise().to_bytes())
    keyroster = [AdvertiseKeys.from_bytes(b) for b in unpack(collect(Topic.MASK_KEYROSTER))]
    shares = client.share_keys(keyroster)
    post(
        Topic.MASK_SHARES,
        json.dumps({k: base64.b64encode(v.to_bytes()).decode() for k, v in shares.items()}).encode(),
    )
    ctx.maybe_drop(round_, "upload")
    mine = [EncryptedShare.from_bytes(b) for b in unpack(collect(Topic.MASK_MYSHARES))]
    masked = spool_path(ctx.state.job_dir(job_id), f"masked-{round_}-{attempt}")  # swept if killed
    try:
        _write_masked(ctx, out, client, mine, cfg.frac_bits, masked)
        up = upload(ctx, out, mode, envelope.uploaded(masked))
    finally:
        masked.unlink(missing_ok=True)
    accepted = up.accepted
    sent += up.bytes
    ctx.maybe_drop(round_, "unmask")
    request = UnmaskRequest.from_bytes(collect(Topic.MASK_UNMASK))
    # the shares this site reveals make the survivors' sum readable: never for fewer sites than the
    # job's min_sites and this site's policy admitted it on (an honest aggregator retries instead)
    need = max(out.spec.min_sites, ctx.load_policy().limits.min_sites_per_round)
    if len(set(request.survivors)) < need:
        raise UnmaskRefused(
            f"unmask request for a sum of {len(set(request.survivors))} sites; this round needs at least "
            f"{need} (the job's min_sites and this site's min_sites_per_round)"
        )
    post(Topic.MASK_UNMASK_RESP, client.unmask(request).to_bytes())
    return Sent(sent, accepted)


def _write_masked(
    ctx: ModeContext, out: Outgoing, client: Any, mine: list[Any], frac_bits: int, dest: Path
) -> None:
    """This site's masked input to ``dest``: streamed from the weighted windows
    (:meth:`~secagg.mask.client.MaskClient.masked_input_to`, the same bytes as ``masked_input`` of the
    whole vector), except under distributed DP, whose integer share needs the whole update (its
    rounding is redrawn until the whole vector's norm is within bound)."""
    vec, weight, integers = _distributed(ctx, out, frac_bits)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        if integers is None:
            client.masked_input_to(fh, out.weighted.windows(), out.weighted.size, weight, mine)
        else:
            fh.write(client.masked_input(vec, weight, mine, integers=integers).to_bytes())


def _distributed(ctx: ModeContext, out: Outgoing, mask_frac_bits: int) -> tuple[Any, float, Any]:
    """What to mask: the weighted update, or (``distributed_gaussian``) the site's integer share
    (:func:`secagg.agent.modes.shares.integer_share`, the same share ``tee`` seals).

    The share is in units of 2^-f (the filter's ``frac_bits``); the mask reads its sum in units of
    2^-F (``mask_frac_bits``). Sending the share as it is with weight 2^-(F - f) makes the sum of
    weights ``n 2^-(F-f)`` and the aggregate ``sum(shares) 2^-f / n``: the uniform mean over the
    survivors, the exact Skellam sum read back, and no entry scaled (scaling would eat the 32-bit
    headroom the noise needs). Sample-count weights would scale each site's share and noise by its
    own weight, so the sum would no longer be Skellam: distributed DP averages uniformly.
    """
    from secagg.agent.modes.shares import integer_share

    share = integer_share(ctx, out)
    if share is None:
        return None, out.weight, None  # the weighted windows are masked as they are read
    shift = mask_frac_bits - share.frac_bits
    if shift < 0:
        raise ConfigError(
            f"distributed_gaussian: frac_bits {share.frac_bits} is finer than the mask's {mask_frac_bits} "
            f"for {len(out.sites)} sites"
        )
    return None, 2.0**-shift, share.integers


class MaskMode(StoredGlobal):
    name = "mask"

    def protect_and_send(self, out: Outgoing) -> Sent:
        return run_protocol(self.ctx, out, self.name, Clear())
