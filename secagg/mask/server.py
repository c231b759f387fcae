"""The aggregator side of one masked round: it relays, checks shape and sums, nothing more.

It holds no key that opens a share, sees each site's input only with that site's self mask and
pairwise masks on it, and keeps each masked input where it lies (a spooled file, read through a
:class:`~secagg.mask.spooled.MaskedSource`). It strips masks only in :meth:`MaskServer.finish_windows`,
from shares the sites chose to reveal, and only after every needed secret is rebuilt (if one cannot be,
it raises and returns nothing); then it sums the masked inputs one window at a time in lockstep, strips
the masks of that window (the PRG expansions start at the window's element) and hands the window on:
memory is a few windows, flat in the number of sites and in the model's size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
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
from secagg.mask.spooled import MaskedSource

#: elements per window of :meth:`MaskServer.finish` (library callers holding inputs in memory)
DEFAULT_WINDOW = 1 << 21


@dataclass
class Unmasked:
    """The unmasked sum: the survivors' total weight, and the weighted sum as float64 windows
    ``(start, values)`` in order (read lazily: each window is summed and unmasked when it is asked for)."""

    weight: float
    length: int
    windows: Iterator[tuple[int, np.ndarray]]


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
        self._inputs: dict[str, MaskedSource] = {}  # each: the update, then the weight
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
        """A masked input held in memory (library callers, the simulation)."""
        self.collect_masked_source(MaskedSource.of(msg))

    def collect_masked_source(self, src: MaskedSource) -> None:
        """A masked input read where it lies; its header is checked now, its vector read in windows
        when the round is unmasked. The server closes it (:meth:`close`)."""
        try:
            self._expect(_Phase.MASKED, "collect_masked")
            self._check(src.job, src.round, src.site, "masked input")
            if src.site not in self._masked_pairs:
                raise ProtocolViolation(f"masked input from {src.site!r}, which did not distribute shares")
            if src.site in self._uploaded:
                raise ProtocolViolation(f"{src.site!r} uploaded twice")
            if src.elements != self.length + 1:
                raise ProtocolViolation(
                    f"masked input from {src.site!r} has {src.elements} elements, expected {self.length + 1}"
                )
        except BaseException:
            src.close()
            raise
        self._inputs[src.site] = src
        self._uploaded.add(src.site)

    def withdraw_masked(self, site: str) -> None:
        """Drop a collected masked input the aggregator could not record (it was refused to its site,
        which may send it again): as if it had never arrived."""
        self._expect(_Phase.MASKED, "withdraw_masked")
        src = self._inputs.pop(site, None)
        if src is not None:
            src.close()
        self._uploaded.discard(site)

    def close(self) -> None:
        """Release every masked input (open files)."""
        for src in self._inputs.values():
            src.close()

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
        """(weighted sum, total weight of survivors), the sum gathered in memory from
        :meth:`finish_windows` (for library callers with small vectors)."""
        unmasked = self.finish_windows(responses, DEFAULT_WINDOW)
        vec = np.empty(unmasked.length, dtype=np.float64)
        for start, win in unmasked.windows:
            vec[start : start + win.size] = win
        return vec, unmasked.weight

    def finish_windows(self, responses: Sequence[UnmaskResponse], elements: int) -> Unmasked:
        """Rebuild the secrets, then strip the masks window by window (``elements`` per window)."""
        self._expect(_Phase.UNMASK, "finish")
        assert self._request is not None
        if elements < 1:
            raise ValueError(f"a window holds at least one element, got {elements}")
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
        inputs = [self._inputs[s] for s in sorted(self._uploaded)]
        k, cfg = len(inputs), self.config

        def strip(start: int, stop: int) -> np.ndarray:
            # the masked sum of this window (mod 2^32), then subtract what was added and add back
            # what was subtracted: the masks' expansions from this window's first element
            acc = np.zeros(stop - start, dtype=np.uint32)
            for src in inputs:
                np.add(acc, src.window(start, stop), out=acc, casting="unsafe")
            return apply_masks(acc, add=subtracted, subtract=added, offset=start)

        weight = float(dequantize(strip(self.length, self.length + 1), k, cfg.max_weight, cfg.frac_bits)[0])
        dequantize(np.zeros(0, np.uint32), k, cfg.clip, cfg.frac_bits)  # refuses a wrapped sum now
        self._phase = _Phase.DONE

        def windows() -> Iterator[tuple[int, np.ndarray]]:
            for start in range(0, self.length, elements):
                stop = min(self.length, start + elements)
                yield start, dequantize(strip(start, stop), k, cfg.clip, cfg.frac_bits)

        return Unmasked(weight, self.length, windows())

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
