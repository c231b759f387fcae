"""``mask`` mode at the aggregator: the Bonawitz/SecAgg+ phases of one round, driven by the round engine.

The aggregator only relays and sums: it forwards signed key advertisements, routes AES-GCM-sealed
shares it cannot read, adds masked vectors in Z_2^32 as they arrive, and asks the survivors for exactly
one kind of share per site. It learns the weighted sum and the surviving sites' total weight, nothing
of any single site's update while fewer than t sites collude with it.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from secagg.errors import SecaggError, UpdateRejected
from secagg.jobs.spec import MaskSpec
from secagg.mask.config import MaskConfig
from secagg.mask.job import mask_config, pack
from secagg.mask.messages import AdvertiseKeys, EncryptedShare, MaskedInput, UnmaskResponse
from secagg.mask.server import MaskServer

# the phases after the roster; "upload" is the round engine's own upload phase
KEYS, SHARES, UPLOAD, UNMASK = "mask-keys", "mask-shares", "upload", "mask-unmask"


@dataclass
class MaskRun:
    config: MaskConfig
    server: MaskServer
    sites: list[str]
    phase: str = KEYS
    phase_started: float = field(default_factory=time.monotonic)
    advertised: set[str] = field(default_factory=set)
    shared: set[str] = field(default_factory=set)
    uploaded: set[str] = field(default_factory=set)
    responses: dict[str, UnmaskResponse] = field(default_factory=dict)
    #: what sites may collect: topic -> {site or "*": payload}
    published: dict[str, dict[str, bytes]] = field(default_factory=dict)

    @classmethod
    def start(cls, spec: MaskSpec | None, sites: list[str], job: str, round_: int, length: int) -> MaskRun:
        cfg = mask_config(spec, len(sites))
        return cls(cfg, MaskServer(cfg, sites, job, round_, length), sorted(sites))

    def post(self, site: str, topic: str, payload: bytes) -> None:
        """A site's message for the current phase (identity from its certificate, never the payload)."""
        if site not in self.sites:
            raise UpdateRejected(f"{site} is not in this round's roster", code="not_in_roster")
        if topic == "mask-keys" and self.phase == KEYS:
            msg = AdvertiseKeys.from_bytes(payload)
            if msg.site != site:
                raise UpdateRejected(f"{site} sent keys in the name of {msg.site}", code="identity_mismatch")
            self.server.collect_keys(msg)
            self.advertised.add(site)
        elif topic == "mask-shares" and self.phase == SHARES:
            raw = json.loads(payload)
            shares = {str(k): EncryptedShare.from_bytes(base64.b64decode(v)) for k, v in raw.items()}
            self.server.collect_shares(site, shares)
            self.shared.add(site)
        elif topic == "mask-unmask-resp" and self.phase == UNMASK:
            resp = UnmaskResponse.from_bytes(payload)
            if resp.site != site:
                raise UpdateRejected(f"{site} answered in the name of {resp.site}", code="identity_mismatch")
            if site in self.responses:
                raise UpdateRejected(f"{site} already answered the unmask request", code="duplicate")
            self.responses[site] = resp
        else:
            raise UpdateRejected(f"{topic} is not accepted in phase {self.phase}", code="late")

    def upload(self, site: str, path: Path) -> None:
        msg = MaskedInput.from_bytes(path.read_bytes())
        if msg.site != site:
            raise UpdateRejected(
                f"{site} uploaded a masked input in the name of {msg.site}", code="identity_mismatch"
            )
        self.server.collect_masked(msg)  # added into one uint32 accumulator: memory flat in sites
        self.uploaded.add(site)

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
            self.published["mask-keyroster"] = {"*": pack([m.to_bytes() for m in self.server.roster()])}
            self.phase = SHARES
        elif self.phase == SHARES:
            routed = self.server.route_shares()
            self.published["mask-myshares"] = {
                s: pack([sh.to_bytes() for sh in routed.get(s, [])]) for s in self.shared
            }
            self.phase = UPLOAD
        elif self.phase == UPLOAD:
            self.published["mask-unmask"] = {"*": self.server.unmask_request().to_bytes()}
            self.phase = UNMASK
        else:
            result = self.server.finish(list(self.responses.values()))
            self.phase = "done"
            return result
        self.phase_started = now
        return None


__all__ = ["MaskRun", "SecaggError"]
