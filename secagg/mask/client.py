"""The site side of one masked round, as a state machine with one method per phase.

Phases (Bonawitz et al. 2017, with SecAgg+ neighbourhoods):
  1. ``advertise``: two fresh X25519 key pairs (c for mask seeds, s for share encryption), signed.
  2. ``share_keys``: verify neighbours' signed keys; Shamir-share the self-mask seed b and the mask
     secret key c among the neighbourhood and oneself; seal each neighbour's shares with AES-GCM.
  3. ``masked_input``: quantise, append the weight, add PRG(b) and +/- PRG(pair seed) per neighbour
     that sent us shares.
  4. ``unmask``: reveal b-shares of sites the aggregator says uploaded, c-shares of those it says
     dropped, and never both kinds for one site, across all requests of the round.
Every check that protects this site's update happens here, not at the aggregator.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import BinaryIO

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg.errors import ConfigError, IdentityError, IntegrityError, UpdateRejected
from secagg.mask import keys
from secagg.mask.config import MaskConfig, graph_seed, neighbourhood
from secagg.mask.errors import ProtocolViolation, RoundAborted, UnmaskRefused
from secagg.mask.messages import (
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    Share,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.mask.prg import apply_masks
from secagg.mask.quantize import quantize
from secagg.provision.identity import verify_cert
from secagg.reasons import Reason


class _Phase(Enum):
    NEW = 0
    ADVERTISED = 1
    SHARED = 2
    UPLOADED = 3


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def holders_of(owner: str, graph: dict[str, list[str]]) -> list[str]:
    """Who holds shares of ``owner``'s secrets, in share-index order (index = position + 1)."""
    return sorted([owner, *graph[owner]])


class MaskClient:
    def __init__(
        self,
        name: str,
        identity_key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
        ca_cert: x509.Certificate,
        config: MaskConfig,
        job: str,
        round: int,
        *,
        sites: Sequence[str],
    ) -> None:
        ident = verify_cert(cert, ca_cert)
        if ident.name != name or ident.role != "site":
            raise IdentityError(f"certificate is for {ident.name!r} ({ident.role}), not site {name!r}")
        if name not in sites:
            raise ConfigError(f"{name!r} is not one of the round's sites")
        config.check_sites(len(sites))
        self.name = name
        self.job = job
        self.round = round
        self.config = config
        self._identity_key = identity_key
        self._cert = cert
        self._ca = ca_cert
        self._graph = neighbourhood(
            list(sites), config.effective_neighbours(len(sites)), graph_seed(job, round)
        )
        self.neighbours: list[str] = self._graph[name]
        self._phase = _Phase.NEW
        self._c = X25519PrivateKey.generate()
        self._s = X25519PrivateKey.generate()
        self._peer_mask_pk: dict[str, bytes] = {}
        self._peer_share_pk: dict[str, bytes] = {}
        self._own_shares: tuple[Share, Share] | None = None
        self._self_seed: bytes | None = None
        # shares others sent us: owner -> (b-share, c-share)
        self._held: dict[str, tuple[Share, Share]] = {}
        self._masked_with: list[str] = []
        # what we have revealed so far this round, per owner: never both kinds for one site
        self._revealed_self: set[str] = set()
        self._revealed_key: set[str] = set()

    def _expect(self, phase: _Phase, what: str) -> None:
        if self._phase is not phase:
            raise ProtocolViolation(f"{self.name}: {what} called in phase {self._phase.name}")

    def _check_round(self, job: str, round: int, what: str) -> None:
        if job != self.job or round != self.round:
            raise ProtocolViolation(
                f"{what} is for job {job!r} round {round}, this is job {self.job!r} round {self.round}"
            )

    # -- phase 1 -------------------------------------------------------------------------------------
    def advertise(self) -> AdvertiseKeys:
        self._expect(_Phase.NEW, "advertise")
        c_pk, s_pk = _raw_public(self._c), _raw_public(self._s)
        payload = keys.advert_payload(self.job, self.round, self.name, c_pk, s_pk)
        self._phase = _Phase.ADVERTISED
        return AdvertiseKeys(
            site=self.name,
            job=self.job,
            round=self.round,
            mask_pk=c_pk,
            share_pk=s_pk,
            cert_der=self._cert.public_bytes(serialization.Encoding.DER),
            signature=keys.sign(self._identity_key, payload),
        )

    # -- phase 2 -------------------------------------------------------------------------------------
    def share_keys(self, roster: list[AdvertiseKeys]) -> dict[str, EncryptedShare]:
        """Verify the neighbours' keys (a substituted or unsigned key is refused, not skipped) and
        return one sealed share per neighbour that advertised."""
        self._expect(_Phase.ADVERTISED, "share_keys")
        seen: set[str] = set()
        for msg in roster:
            if msg.site in seen:
                raise ProtocolViolation(f"roster lists {msg.site!r} twice")
            seen.add(msg.site)
            if msg.site == self.name:
                if (msg.mask_pk, msg.share_pk) != (_raw_public(self._c), _raw_public(self._s)):
                    raise IntegrityError(f"roster carries keys for {self.name!r} that it did not advertise")
                continue
            if msg.site not in self.neighbours:
                continue  # SecAgg+: only neighbours' keys matter to us
            self._check_round(msg.job, msg.round, f"keys of {msg.site!r}")
            payload = keys.advert_payload(self.job, self.round, msg.site, msg.mask_pk, msg.share_pk)
            keys.verify_advert(msg.cert_der, msg.signature, payload, msg.site, self._ca)
            self._peer_mask_pk[msg.site] = msg.mask_pk
            self._peer_share_pk[msg.site] = msg.share_pk
        t = self.config.threshold
        if len(self._peer_mask_pk) + 1 < t:
            raise RoundAborted(
                f"{self.name}: only {len(self._peer_mask_pk)} neighbours advertised keys; threshold {t} "
                "cannot be met"
            )
        holders = holders_of(self.name, self._graph)
        self._self_seed = os.urandom(32)
        c_raw = self._c.private_bytes_raw()
        b_shares = keys.split_secret(self._self_seed, t, len(holders))
        c_shares = keys.split_secret(c_raw, t, len(holders))
        me = holders.index(self.name)
        self._own_shares = (b_shares[me], c_shares[me])
        out: dict[str, EncryptedShare] = {}
        for peer, s_pk in self._peer_share_pk.items():
            i = holders.index(peer)
            k = keys.share_key(keys.agree(self._s, s_pk), self.job, self.round, self.name, peer)
            nonce, ct = keys.seal_share(k, self.name, peer, self.job, self.round, b_shares[i], c_shares[i])
            out[peer] = EncryptedShare(self.name, peer, self.job, self.round, nonce, ct)
        self._phase = _Phase.SHARED
        return out

    # -- phase 3 -------------------------------------------------------------------------------------
    def masked_input(
        self,
        vec: np.ndarray,
        weight: float,
        shares_for_me: list[EncryptedShare],
        *,
        integers: np.ndarray | None = None,
    ) -> MaskedInput:
        """Mask the (already weight-scaled) update. Pairwise masks go to exactly the neighbours whose
        shares reached us: those are the sites the aggregator can later unmask if they drop.

        ``integers`` (distributed DP, :mod:`secagg.privacy.distributed`): the site's noised integer
        share, already in the fixed point; it is reduced mod 2^32 as it is, never clipped (clipping a
        noised entry would change the honest sum's noise), and ``vec`` is ignored."""
        cfg = self.config
        held = self._open_shares(weight, shares_for_me, "masked_input")
        w = float(weight)
        # the weight rides as one more element, so it is masked like the update and only the
        # survivors' total is ever revealed
        size = int(np.size(vec))
        y = np.empty(size + 1, dtype=np.uint32)
        if integers is None:
            quantize(vec, cfg.clip, cfg.frac_bits, out=y[:size])
        else:
            size = int(np.size(integers))
            y = np.empty(size + 1, dtype=np.uint32)
            from secagg.privacy.shares import residues

            # two's complement mod 2^32, as every mode that sums shares reduces them
            y[:size] = residues(integers)
        quantize(np.array([w]), cfg.max_weight, cfg.frac_bits, out=y[size:])
        plus, minus = self._commit_masks(held)  # a refused update (above) leaves the phase as it was
        apply_masks(y, plus, minus)
        return MaskedInput(self.name, self.job, self.round, y.astype("<u4", copy=False).tobytes())

    def masked_input_to(
        self,
        out: BinaryIO,
        windows: Iterable[tuple[int, np.ndarray]],
        size: int,
        weight: float,
        shares_for_me: list[EncryptedShare],
    ) -> int:
        """:meth:`masked_input` written to ``out`` as it is made: ``windows`` are the (weight-scaled)
        update's values in order, ``(start, values)``, ``size`` of them in all; each is quantised and
        masked at its offset (the masks' keystreams are seekable) and written before the next is
        read, so neither the update nor the masked vector is ever whole in memory. The bytes are
        :meth:`MaskedInput.to_bytes` of what :meth:`masked_input` returns for the whole vector.
        Returns the bytes written. A value refused while streaming (NaN, infinity) leaves ``out``
        partial and this client past its upload (its self-mask seed is spent): the round is lost for
        it, as for a site that dropped; the caller discards ``out``."""
        cfg = self.config
        if 4 * (size + 1) >= 1 << 32:
            raise UpdateRejected(
                f"a masked input of {size} values exceeds the message format's 4 GiB vector",
                code=Reason.BAD_SHAPE,
            )
        plus, minus = self._commit_masks(self._open_shares(weight, shares_for_me, "masked_input_to"))
        head = MaskedInput.header_bytes(self.name, self.job, self.round, 4 * (size + 1))
        out.write(head)
        written, pos = len(head), 0
        for start, vals in windows:
            if start != pos:
                raise ValueError(f"window at {start}, expected {pos}")
            y = quantize(np.asarray(vals).ravel(), cfg.clip, cfg.frac_bits)
            apply_masks(y, plus, minus, offset=start)
            out.write(y.astype("<u4", copy=False).data)
            pos += y.size
            written += 4 * y.size
        if pos != size:
            raise ValueError(f"windows hold {pos} values, expected {size}")
        y = quantize(np.array([float(weight)]), cfg.max_weight, cfg.frac_bits)
        apply_masks(y, plus, minus, offset=size)
        out.write(y.astype("<u4", copy=False).data)
        return written + 4

    def _open_shares(
        self, weight: float, shares_for_me: list[EncryptedShare], what: str
    ) -> dict[str, tuple[Share, Share]]:
        """Open the shares addressed to us and check the weight (nothing changes yet)."""
        self._expect(_Phase.SHARED, what)
        held: dict[str, tuple[Share, Share]] = {}
        for sh in shares_for_me:
            if sh.recipient != self.name:
                raise ProtocolViolation(f"{self.name} was handed a share addressed to {sh.recipient!r}")
            self._check_round(sh.job, sh.round, f"share from {sh.sender!r}")
            if sh.sender in held:
                raise ProtocolViolation(f"two shares from {sh.sender!r}")
            if sh.sender not in self._peer_share_pk:
                raise ProtocolViolation(
                    f"share from {sh.sender!r}, which is not a neighbour with verified keys"
                )
            k = keys.share_key(
                keys.agree(self._s, self._peer_share_pk[sh.sender]),
                self.job,
                self.round,
                sh.sender,
                self.name,
            )
            b_sh, c_sh = keys.open_share(
                k, sh.sender, self.name, self.job, self.round, sh.nonce, sh.ciphertext
            )
            expect = holders_of(sh.sender, self._graph).index(self.name) + 1
            if b_sh[0] != expect:
                raise IntegrityError(f"share from {sh.sender!r} has index {b_sh[0]}, expected {expect}")
            held[sh.sender] = (b_sh, c_sh)
        t = self.config.threshold
        if len(held) + 1 < t:
            raise RoundAborted(
                f"{self.name}: only {len(held)} neighbours completed share distribution; with threshold {t} "
                "uploading could expose this site's update"
            )
        w = float(weight)
        if not (np.isfinite(w) and 0 <= w <= self.config.max_weight):
            raise UpdateRejected(
                f"weight {weight!r} outside [0, max_weight={self.config.max_weight}]", code=Reason.BAD_WEIGHT
            )
        return held

    def _commit_masks(self, held: dict[str, tuple[Share, Share]]) -> tuple[list[bytes], list[bytes]]:
        """Leave the upload phase: the seeds to add and subtract (the self-mask's, and one per
        neighbour whose shares reached us)."""
        assert self._self_seed is not None
        plus: list[bytes] = [self._self_seed]
        minus: list[bytes] = []
        for peer in sorted(held):
            seed = keys.pair_seed(
                keys.agree(self._c, self._peer_mask_pk[peer]), self.job, self.round, self.name, peer
            )
            # the pair's two sites add and subtract the same vector, so it cancels in the sum
            (plus if self.name < peer else minus).append(seed)
        self._held = held
        self._masked_with = sorted(held)
        self._self_seed = None  # only its shares may outlive the upload
        self._phase = _Phase.UPLOADED
        return plus, minus

    # -- phase 4 -------------------------------------------------------------------------------------
    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        self._expect(_Phase.UPLOADED, "unmask")
        self._check_round(request.job, request.round, "unmask request")
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = survivors & dropped
        if both:
            raise UnmaskRefused(f"unmask request lists {sorted(both)} as both uploaded and dropped")
        if self.name in dropped or self.name not in survivors:
            raise UnmaskRefused(f"unmask request says {self.name!r} dropped, but it uploaded")
        flipped = (dropped & self._revealed_self) | (survivors & self._revealed_key)
        if flipped:
            raise UnmaskRefused(
                f"unmask request contradicts an earlier one for {sorted(flipped)}: a site's self-mask and "
                "mask-key shares are never both revealed"
            )
        if len(survivors) < self.config.threshold:
            raise RoundAborted(
                f"only {len(survivors)} sites uploaded, below threshold {self.config.threshold}"
            )
        assert self._own_shares is not None
        self_out: dict[str, Share] = {self.name: self._own_shares[0]}
        key_out: dict[str, Share] = {}
        for owner, (b_sh, c_sh) in self._held.items():
            if owner in survivors:
                self_out[owner] = b_sh
            elif owner in dropped:
                key_out[owner] = c_sh
        self._revealed_self |= set(self_out)
        self._revealed_key |= set(key_out)
        return UnmaskResponse(self.name, self.job, self.round, self_out, key_out)
