"""The aggregator side of one masked round: it relays, checks shape and sums, nothing more.

It holds no key that opens a share, sees each site's input only with that site's self mask and
pairwise masks on it, and adds masked inputs into one uint32 accumulator as they arrive (memory flat
in the number of sites). It strips masks only in :meth:`MaskServer.finish`, from shares the sites chose
to reveal, and only as a whole: if any needed secret cannot be rebuilt it raises and returns nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg.errors import IntegrityError
from secagg.mask import keys
from secagg.mask.config import MaskConfig, graph_seed, neighbourhood
from secagg.mask.errors import ProtocolViolation, RoundAborted
from secagg.mask.messages import (
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    Share,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.mask.prg import apply_masks
from secagg.mask.quantize import dequantize


class _Phase(Enum):
    KEYS = 1
    SHARES = 2
    MASKED = 3
    UNMASK = 4
    DONE = 5


class MaskServer:
    def __init__(self, config: MaskConfig, sites: Sequence[str], job: str, round: int, length: int) -> None:
        config.check_sites(len(sites))
        if length < 1:
            raise ValueError(f"vector length must be >= 1, got {length}")
        self.config = config
        self.sites = list(sites)
        self.job = job
        self.round = round
        self.length = length
        self._graph = neighbourhood(
            self.sites, config.effective_neighbours(len(sites)), graph_seed(job, round)
        )
        self._phase = _Phase.KEYS
        self._keys: dict[str, AdvertiseKeys] = {}
        self._shares: dict[str, dict[str, EncryptedShare]] = {}
        self._masked_pairs: dict[str, set[str]] = {}
        self._uploaded: set[str] = set()
        self._acc = np.zeros(length + 1, dtype=np.uint32)  # the update, then the weight
        self._request: UnmaskRequest | None = None

    def _expect(self, phase: _Phase, what: str) -> None:
        if self._phase is not phase:
            raise ProtocolViolation(f"aggregator: {what} in phase {self._phase.name}")

    def _check(self, job: str, round: int, site: str, what: str) -> None:
        if (job, round) != (self.job, self.round):
            raise ProtocolViolation(f"{what} from {site!r} is for job {job!r} round {round}")
        if site not in self.sites:
            raise ProtocolViolation(f"{what} from {site!r}, which is not a site of this round")

    def _need(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            raise RoundAborted(
                f"round aborted: {count} sites {what}, below threshold {self.config.threshold}; "
                "nothing is unmasked"
            )

    @property
    def survivors(self) -> list[str]:
        return sorted(self._uploaded)

    # -- phase 1 -------------------------------------------------------------------------------------
    def collect_keys(self, msg: AdvertiseKeys) -> None:
        self._expect(_Phase.KEYS, "collect_keys")
        self._check(msg.job, msg.round, msg.site, "key advertisement")
        if msg.site in self._keys:
            raise ProtocolViolation(f"{msg.site!r} advertised keys twice")
        self._keys[msg.site] = msg

    def roster(self) -> list[AdvertiseKeys]:
        """Close key collection; every site gets the same roster (it verifies the signatures itself)."""
        if self._phase is _Phase.KEYS:
            self._need(len(self._keys), "advertised keys")
            self._phase = _Phase.SHARES
        return [self._keys[s] for s in sorted(self._keys)]

    # -- phase 2 -------------------------------------------------------------------------------------
    def collect_shares(self, sender: str, shares: Mapping[str, EncryptedShare]) -> None:
        self._expect(_Phase.SHARES, "collect_shares")
        if sender not in self._keys:
            raise ProtocolViolation(f"shares from {sender!r}, which did not advertise keys")
        if sender in self._shares:
            raise ProtocolViolation(f"{sender!r} sent shares twice")
        for recipient, sh in shares.items():
            self._check(sh.job, sh.round, sender, "share")
            if sh.sender != sender or sh.recipient != recipient:
                raise ProtocolViolation(
                    f"share from {sender!r} is labelled {sh.sender!r} -> {sh.recipient!r}"
                )
            if recipient not in self._graph[sender] or recipient not in self._keys:
                raise ProtocolViolation(
                    f"share from {sender!r} to {recipient!r}, not an advertised neighbour"
                )
        self._shares[sender] = dict(shares)

    def route_shares(self) -> dict[str, list[EncryptedShare]]:
        """Close share collection; hand each site the shares addressed to it by sites that finished."""
        self._expect(_Phase.SHARES, "route_shares")
        senders = set(self._shares)
        self._need(len(senders), "distributed shares")
        out: dict[str, list[EncryptedShare]] = {s: [] for s in sorted(senders)}
        for sender in sorted(senders):
            for recipient, sh in self._shares[sender].items():
                if recipient in senders:
                    out[recipient].append(sh)
        self._masked_pairs = {r: {sh.sender for sh in lst} for r, lst in out.items()}
        self._phase = _Phase.MASKED
        return out

    # -- phase 3 -------------------------------------------------------------------------------------
    def collect_masked(self, msg: MaskedInput) -> None:
        self._expect(_Phase.MASKED, "collect_masked")
        self._check(msg.job, msg.round, msg.site, "masked input")
        if msg.site not in self._masked_pairs:
            raise ProtocolViolation(f"masked input from {msg.site!r}, which did not distribute shares")
        if msg.site in self._uploaded:
            raise ProtocolViolation(f"{msg.site!r} uploaded twice")
        vec = msg.vector
        if vec.size != self.length + 1:
            raise ProtocolViolation(
                f"masked input from {msg.site!r} has {vec.size} elements, expected {self.length + 1}"
            )
        np.add(self._acc, vec, out=self._acc, casting="unsafe")
        self._uploaded.add(msg.site)

    def unmask_request(self) -> UnmaskRequest:
        """Close uploads. The same request goes to every survivor; it names each site exactly once."""
        if self._phase is _Phase.MASKED:
            self._need(len(self._uploaded), "uploaded masked inputs")
            dropped = set(self._masked_pairs) - self._uploaded
            self._request = UnmaskRequest(self.job, self.round, tuple(self.survivors), tuple(sorted(dropped)))
            self._phase = _Phase.UNMASK
        self._expect(_Phase.UNMASK, "unmask_request")
        assert self._request is not None
        return self._request

    # -- phase 4 -------------------------------------------------------------------------------------
    def finish(self, responses: Sequence[UnmaskResponse]) -> tuple[np.ndarray, float]:
        """Rebuild the secrets, strip the masks and return (weighted sum, total weight of survivors)."""
        self._expect(_Phase.UNMASK, "finish")
        assert self._request is not None
        got: dict[str, UnmaskResponse] = {}
        for r in responses:
            self._check(r.job, r.round, r.site, "unmask response")
            if r.site not in self._uploaded:
                raise ProtocolViolation(f"unmask response from {r.site!r}, which did not upload")
            if r.site in got:
                raise ProtocolViolation(f"two unmask responses from {r.site!r}")
            got[r.site] = r
        self._need(len(got), "answered the unmask request")
        # seeds of the masks still on the sum: every survivor's self mask, and the pairwise masks
        # between survivors and the dropped sites they masked with
        added: list[bytes] = []
        subtracted: list[bytes] = []
        for owner in self._request.survivors:
            shares = [r.self_mask_shares[owner] for r in got.values() if owner in r.self_mask_shares]
            added.append(self._rebuild(owner, shares, "self-mask seed"))
        for owner in self._request.dropped:
            peers = [p for p in sorted(self._uploaded) if owner in self._masked_pairs[p]]
            if not peers:
                continue  # no survivor masked with it: nothing to strip, so learn nothing about it
            shares = [r.mask_key_shares[owner] for r in got.values() if owner in r.mask_key_shares]
            c = X25519PrivateKey.from_private_bytes(self._rebuild(owner, shares, "mask key"))
            pk = c.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            if pk != self._keys[owner].mask_pk:
                raise IntegrityError(f"rebuilt mask key of {owner!r} does not match its advertised key")
            for peer in peers:
                seed = keys.pair_seed(
                    keys.agree(c, self._keys[peer].mask_pk), self.job, self.round, peer, owner
                )
                # the survivor added +PRG if its name sorts first, else -PRG
                (added if peer < owner else subtracted).append(seed)
        # strip them: subtract what was added and add back what was subtracted
        total = apply_masks(self._acc.copy(), add=subtracted, subtract=added)
        k = len(self._uploaded)
        vec = dequantize(total[:-1], k, self.config.clip, self.config.frac_bits)
        weight = float(dequantize(total[-1:], k, self.config.max_weight, self.config.frac_bits)[0])
        self._phase = _Phase.DONE
        return vec, weight

    def _rebuild(self, owner: str, shares: list[Share], what: str) -> bytes:
        if len({i for i, _ in shares}) != len(shares):
            raise IntegrityError(f"duplicate share indices for the {what} of {owner!r}")
        if len(shares) < self.config.threshold:
            raise RoundAborted(
                f"round aborted: {len(shares)} shares of the {what} of {owner!r}, below threshold "
                f"{self.config.threshold}; nothing is unmasked"
            )
        t = self.config.threshold
        ordered = sorted(shares)
        secret = keys.combine_secret(ordered[:t], t)
        # with spare shares, a second reconstruction from the other end catches a corrupted share
        if len(ordered) > t and keys.combine_secret(ordered[-t:], t) != secret:
            raise IntegrityError(
                f"the shares of the {what} of {owner!r} are inconsistent (a corrupted share)"
            )
        return secret
