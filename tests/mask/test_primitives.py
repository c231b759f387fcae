from __future__ import annotations

import numpy as np
import pytest

from secagg.errors import ConfigError, IntegrityError, UpdateRejected
from secagg.mask import keys
from secagg.mask.errors import ProtocolViolation
from secagg.mask.messages import AdvertiseKeys, EncryptedShare, MaskedInput, UnmaskRequest, UnmaskResponse
from secagg.mask.prg import expand
from secagg.mask.quantize import dequantize, quantisation_bound, quantize


def test_quantized_sum_within_bound_and_negative_values_survive():
    rng = np.random.default_rng(1)
    vecs = [rng.uniform(-2, 2, 1000) for _ in range(7)]
    acc = np.zeros(1000, dtype=np.uint32)
    for v in vecs:
        acc += quantize(v, 2.0, 12)
    out = dequantize(acc, 7, 2.0, 12)
    err = np.max(np.abs(out - np.sum(vecs, axis=0)))
    assert err <= quantisation_bound(7, 12)
    assert err > 0  # the bound is not vacuous at this precision


def test_quantize_clips_and_refuses_non_finite():
    q = quantize(np.array([5.0, -5.0]), 1.0, 4)
    assert list(q.view(np.int32)) == [16, -16]
    with pytest.raises(UpdateRejected):
        quantize(np.array([1.0, np.nan]), 1.0, 4)
    with pytest.raises(ConfigError, match="headroom"):
        dequantize(np.zeros(2, dtype=np.uint32), 4, 1.0, 30)


def test_prg_deterministic_seed_dependent_and_uniform():
    a, b = expand(b"\x01" * 32, 50_000), expand(b"\x02" * 32, 50_000)
    assert a.dtype == np.uint32 and a.size == 50_000
    assert np.array_equal(a, expand(b"\x01" * 32, 50_000))
    assert np.array_equal(a[:10], expand(b"\x01" * 32, 10))
    assert not np.array_equal(a, b)
    hist = np.bincount(a.view(np.uint8), minlength=256)
    expected = a.size * 4 / 256
    assert ((hist - expected) ** 2 / expected).sum() < 400  # chi-square, 255 dof
    with pytest.raises(ValueError):
        expand(b"short", 4)


def test_shamir_32_byte_secret_needs_t_shares():
    secret = bytes(range(32))
    shares = keys.split_secret(secret, 3, 5)
    assert keys.combine_secret([shares[4], shares[0], shares[2]], 3) == secret
    assert keys.combine_secret(shares[:2], 2) != secret  # too few (mis-stated t) gives garbage
    with pytest.raises(ValueError):
        keys.combine_secret(shares[:2], 3)


def test_share_sealing_detects_tampering_and_relabelling():
    k = b"\x07" * 32
    nonce, ct = keys.seal_share(k, "a", "b", "job", 1, (2, b"x" * 32), (2, b"y" * 32))
    assert keys.open_share(k, "a", "b", "job", 1, nonce, ct) == ((2, b"x" * 32), (2, b"y" * 32))
    bad = bytes([ct[0] ^ 1]) + ct[1:]
    for args in [
        ("a", "b", "job", 1, nonce, bad),
        ("c", "b", "job", 1, nonce, ct),
        ("a", "b", "job", 2, nonce, ct),
    ]:
        with pytest.raises(IntegrityError):
            keys.open_share(k, *args)


MESSAGES = [
    AdvertiseKeys("site-1", "job", 3, b"c" * 32, b"s" * 32, b"cert", b"sig"),
    EncryptedShare("site-1", "site-2", "job", 3, b"n" * 12, b"ciphertext"),
    MaskedInput("site-1", "job", 3, np.arange(5, dtype="<u4").tobytes()),
    UnmaskRequest("job", 3, ("site-1", "site-2"), ("site-3",)),
    UnmaskResponse("site-1", "job", 3, {"site-1": (1, b"a" * 32)}, {"site-3": (2, b"b" * 32)}),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_round_trip_and_reject_garbage(msg):
    data = msg.to_bytes()
    assert type(msg).from_bytes(data) == msg
    with pytest.raises(ProtocolViolation):
        type(msg).from_bytes(data + b"\x00")
    with pytest.raises(ProtocolViolation):
        type(msg).from_bytes(data[:-1])
    other = MESSAGES[(MESSAGES.index(msg) + 1) % len(MESSAGES)]
    with pytest.raises(ProtocolViolation, match="expected"):
        type(msg).from_bytes(other.to_bytes())
