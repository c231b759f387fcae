"""``mask``: the site's side of pairwise-masking secure aggregation (Bonawitz et al. 2017).

The client object refuses substituted keys, tampered shares and any request for both shares of one
site; this file only moves its messages over the relay, phase by phase.
"""

from __future__ import annotations

import base64
import json

from secagg.agent.modes.base import Outgoing, Sent, StoredGlobal


class MaskMode(StoredGlobal):
    name = "mask"

    def protect_and_send(self, out: Outgoing) -> Sent:
        from secagg.mask.client import MaskClient
        from secagg.mask.job import mask_config, unpack
        from secagg.mask.messages import AdvertiseKeys, EncryptedShare, UnmaskRequest

        ctx, job_id, round_, attempt = self.ctx, out.job_id, out.round, out.attempt
        kit, relay = ctx.kit, ctx.relay
        cfg = mask_config(out.spec.mask, len(out.sites))
        client = MaskClient(
            kit.name, kit.private_key, kit.cert, kit.ca_cert, cfg, job_id, round_, sites=out.sites
        )
        sent = 0

        def post(topic: str, payload: bytes) -> None:
            nonlocal sent
            sent += len(payload)
            relay.post(topic, payload, job_id=job_id, round_=round_)

        def collect(topic: str) -> bytes:
            return relay.collect(topic, job_id=job_id, round_=round_, attempt=attempt)

        post("mask-keys", client.advertise().to_bytes())
        keyroster = [AdvertiseKeys.from_bytes(b) for b in unpack(collect("mask-keyroster"))]
        shares = client.share_keys(keyroster)
        post(
            "mask-shares",
            json.dumps({k: base64.b64encode(v.to_bytes()).decode() for k, v in shares.items()}).encode(),
        )
        ctx.maybe_drop(round_, "upload")
        mine = [EncryptedShare.from_bytes(b) for b in unpack(collect("mask-myshares"))]
        masked = client.masked_input(out.weighted, out.weight, mine).to_bytes()
        header = {
            "job_id": job_id,
            "round": round_,
            "attempt": attempt,
            "bytes": len(masked),
            "mode": self.name,
            "metrics": out.metrics,
        }
        accepted = relay.upload(header, [masked])
        sent += len(masked)
        ctx.maybe_drop(round_, "unmask")
        request = UnmaskRequest.from_bytes(collect("mask-unmask"))
        post("mask-unmask-resp", client.unmask(request).to_bytes())
        return Sent(sent, accepted)
