"""The protocol's messages: plain frozen dataclasses that serialise to opaque bytes for any transport.

Each encoding starts with a type tag naming the message and protocol version, so a payload of one
kind can never be parsed as another. Parsing checks shape only (types, sizes); whether a message is
authentic or allowed is decided by the client and server that receive it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from secagg.mask.errors import ProtocolViolation
from secagg.mask.wire import Reader, pack

KEY_BYTES = 32  # X25519 public keys
NONCE_BYTES = 12  # AES-GCM
SHARE_BYTES = 32  # two 16-byte Shamir shares (pycryptodome works on 16-byte secrets)

#: one Shamir share of a 32-byte secret: (index of the holder, 32 bytes)
Share = tuple[int, bytes]


def _open(data: bytes, tag: str) -> Reader:
    r = Reader(data, tag)
    got = r.text()
    if got != tag:
        raise ProtocolViolation(f"expected a {tag} message, got {got[:64]!r}")
    return r


@dataclass(frozen=True)
class AdvertiseKeys:
    """A site's two fresh X25519 public keys for this round, signed with its certificate key."""

    TAG = "secagg/mask/v1/AdvertiseKeys"
    site: str
    job: str
    round: int
    mask_pk: bytes  # c: pairwise mask seeds
    share_pk: bytes  # s: encryption of Shamir shares
    cert_der: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        return pack(
            self.TAG, self.site, self.job, self.round, self.mask_pk, self.share_pk, self.cert_der,
            self.signature,
        )  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes) -> AdvertiseKeys:
        r = _open(data, cls.TAG)
        msg = cls(r.text(), r.text(), r.u64(), r.blob(KEY_BYTES), r.blob(KEY_BYTES), r.blob(), r.blob())
        r.end()
        return msg


@dataclass(frozen=True)
class EncryptedShare:
    """Shares of the sender's self-mask seed and mask key for one recipient, AES-GCM sealed to it."""

    TAG = "secagg/mask/v1/EncryptedShare"
    sender: str
    recipient: str
    job: str
    round: int
    nonce: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        return pack(self.TAG, self.sender, self.recipient, self.job, self.round, self.nonce, self.ciphertext)

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedShare:
        r = _open(data, cls.TAG)
        msg = cls(r.text(), r.text(), r.text(), r.u64(), r.blob(NONCE_BYTES), r.blob())
        r.end()
        return msg


@dataclass(frozen=True)
class MaskedInput:
    """A site's quantised, masked update in Z_2^32; the last element is its masked weight."""

    TAG = "secagg/mask/v1/MaskedInput"
    site: str
    job: str
    round: int
    data: bytes = field(repr=False)  # little-endian uint32

    @property
    def vector(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype="<u4")

    @classmethod
    def header_bytes(cls, site: str, job: str, round: int, nbytes: int) -> bytes:
        """The bytes of :meth:`to_bytes` before the vector's ``nbytes`` bytes (a streamed writer
        writes these, then the vector: :meth:`secagg.mask.client.MaskClient.masked_input_to`)."""
        return pack(cls.TAG, site, job, round) + b"B" + struct.pack(">I", nbytes)

    def to_bytes(self) -> bytes:
        return pack(self.TAG, self.site, self.job, self.round, self.data)

    @classmethod
    def from_bytes(cls, data: bytes) -> MaskedInput:
        r = _open(data, cls.TAG)
        msg = cls(r.text(), r.text(), r.u64(), r.blob())
        r.end()
        if len(msg.data) % 4:
            raise ProtocolViolation("malformed MaskedInput: data is not a whole number of uint32")
        return msg


def _pack_names(names: tuple[str, ...]) -> bytes:
    return pack(len(names), *names)


def _read_names(r: Reader) -> tuple[str, ...]:
    n = r.u64()
    return tuple(r.text() for _ in range(n))


@dataclass(frozen=True)
class UnmaskRequest:
    """Which sites uploaded (reveal their self-mask shares) and which dropped (reveal mask-key shares)."""

    TAG = "secagg/mask/v1/UnmaskRequest"
    job: str
    round: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def to_bytes(self) -> bytes:
        return pack(self.TAG, self.job, self.round, _pack_names(self.survivors), _pack_names(self.dropped))

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskRequest:
        r = _open(data, cls.TAG)
        job, rnd = r.text(), r.u64()
        survivors = _read_names(Reader(r.blob(), "UnmaskRequest survivors"))
        dropped = _read_names(Reader(r.blob(), "UnmaskRequest dropped"))
        r.end()
        return cls(job, rnd, survivors, dropped)


def _pack_shares(shares: dict[str, Share]) -> bytes:
    fields: list[str | int | bytes] = [len(shares)]
    for owner in sorted(shares):
        idx, value = shares[owner]
        fields += [owner, idx, value]
    return pack(*fields)


def _read_shares(data: bytes, what: str) -> dict[str, Share]:
    r = Reader(data, what)
    out: dict[str, Share] = {}
    for _ in range(r.u64()):
        owner, idx, value = r.text(), r.u64(), r.blob(SHARE_BYTES)
        if owner in out:
            raise ProtocolViolation(f"malformed {what}: two shares for {owner!r}")
        out[owner] = (idx, value)
    r.end()
    return out


@dataclass(frozen=True)
class UnmaskResponse:
    """One site's answer: self-mask shares of survivors, mask-key shares of dropped sites, never both."""

    TAG = "secagg/mask/v1/UnmaskResponse"
    site: str
    job: str
    round: int
    self_mask_shares: dict[str, Share]
    mask_key_shares: dict[str, Share]

    def to_bytes(self) -> bytes:
        return pack(
            self.TAG, self.site, self.job, self.round, _pack_shares(self.self_mask_shares),
            _pack_shares(self.mask_key_shares),
        )  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskResponse:
        r = _open(data, cls.TAG)
        site, job, rnd = r.text(), r.text(), r.u64()
        self_shares = _read_shares(r.blob(), "UnmaskResponse self-mask shares")
        key_shares = _read_shares(r.blob(), "UnmaskResponse mask-key shares")
        r.end()
        return cls(site, job, rnd, self_shares, key_shares)
