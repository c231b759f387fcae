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


def _keystream_words(seed: bytes, n: int) -> np.ndarray:
    """The PRG's definition, computed the plain way: AES-256-CTR keystream from a zero counter block."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(enc.update(bytes(4 * n)), dtype="<u4").astype(np.uint32)


# lengths around the PRG's and quantiser's internal step (65,536 elements) and odd sizes
LENGTHS = [0, 1, 5, 65_535, 65_536, 65_537, 2 * 65_536 + 3]


@pytest.mark.parametrize("n", LENGTHS)
def test_prg_output_is_the_aes_ctr_keystream(n):
    seed = bytes(range(32))
    assert np.array_equal(expand(seed, n), _keystream_words(seed, n))


@pytest.mark.parametrize("n", LENGTHS)
def test_apply_masks_adds_and_subtracts_exactly_the_expanded_vectors(n):
    from secagg.mask.prg import apply_masks

    rng = np.random.default_rng(n)
    seeds = [bytes([i]) * 32 for i in range(1, 5)]
    base = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    want = base.copy()
    want += expand(seeds[0], n) + expand(seeds[1], n)
    want -= expand(seeds[2], n) + expand(seeds[3], n)
    got = base.copy()
    assert apply_masks(got, seeds[:2], seeds[2:]) is got
    assert np.array_equal(got, want)
    # adding then subtracting the same seeds gives the input back: what makes pairwise masks cancel
    assert np.array_equal(apply_masks(got, seeds[2:], seeds[:2]), base)


def test_apply_masks_refuses_bad_input():
    from secagg.mask.prg import apply_masks

    with pytest.raises(ValueError, match="uint32"):
        apply_masks(np.zeros(4, dtype=np.int64), [b"\x01" * 32])
    with pytest.raises(ValueError, match="uint32"):
        apply_masks(np.zeros((2, 2), dtype=np.uint32), [b"\x01" * 32])
    with pytest.raises(ValueError, match="32 bytes"):
        apply_masks(np.zeros(4, dtype=np.uint32), [b"short"])


def _quantize_reference(x, clip, frac_bits):
    x = np.asarray(x, dtype=np.float64).ravel()
    q = np.rint(np.clip(x, -clip, clip) * float(2**frac_bits)).astype(np.int64)
    return np.mod(q, 2**32).astype(np.uint32)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_quantize_matches_the_reference_encoding(n, dtype):
    rng = np.random.default_rng(n + 7)
    x = rng.normal(0, 0.4, n).astype(dtype)
    if n >= 4:
        x[:4] = [0.3, -0.3, 2.5 / 16, -1.5 / 16]  # beyond the clip, and exact ties at 4 bits
    for clip, bits in [(0.3, 27), (1.0, 4), (1.0, 30)]:
        assert np.array_equal(quantize(x, clip, bits), _quantize_reference(x, clip, bits))
    out = np.full(n + 1, 7, dtype=np.uint32)
    quantize(x, 0.3, 27, out=out[:n])
    assert np.array_equal(out[:n], _quantize_reference(x, 0.3, 27)) and out[n] == 7


def test_quantize_other_inputs_and_refusals():
    assert np.array_equal(quantize([[1, -2], [3, 0]], 2.0, 3), _quantize_reference([1, -2, 3, 0], 2.0, 3))
    late_nan = np.zeros(3 * 65_536)
    late_nan[-1] = np.inf
    with pytest.raises(UpdateRejected):
        quantize(late_nan, 1.0, 4)
    with pytest.raises(ValueError, match="out must be"):
        quantize(np.zeros(4), 1.0, 4, out=np.zeros(3, dtype=np.uint32))
    with pytest.raises(ValueError, match="out must be"):
        quantize(np.zeros(4), 1.0, 4, out=np.zeros(4, dtype=np.int32))


def test_wire_fields_of_any_bytes_like_type_encode_the_same():
    from secagg.mask.wire import pack

    raw = bytes(range(40))
    assert pack("t", 3, raw) == pack("t", 3, bytearray(raw)) == pack("t", 3, memoryview(raw))
    assert pack(b"", "", 0) == b"B\x00\x00\x00\x00S\x00\x00\x00\x00I" + bytes(8)
