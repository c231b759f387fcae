from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as sealapi

from secagg.errors import ConfigError, UpdateRejected
from secagg.he import sealio
from secagg.he.codec import (
    _FRAME,
    CiphertextAccumulator,
    StreamRejected,
    _frame,
    decrypt_vector,
    encrypt_vector,
    n_ciphertexts,
    sum_streams,
)
from secagg.he.context import PublicContext, SecretContext
from secagg.he.params import SECAGG_DEFAULT

SLOTS = SECAGG_DEFAULT.values_per_ciphertext  # real values per ciphertext
TOL = 1e-7


def _sites(rng: np.random.Generator, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    xs = rng.uniform(-0.05, 0.05, (k, n))
    counts = rng.integers(10, 1000, k).astype(np.float64)
    return xs, counts / counts.sum()


def _aggregate(
    secret: SecretContext, public: PublicContext, xs: np.ndarray, w: np.ndarray, staged: bool
) -> CiphertextAccumulator:
    n = xs.shape[1]
    total = CiphertextAccumulator(public, n_ciphertexts(n, SECAGG_DEFAULT))
    for x, wi in zip(xs, w, strict=True):
        target = CiphertextAccumulator(public, total.n_ciphertexts) if staged else total
        for i, frame in enumerate(encrypt_vector(secret, x, float(wi))):
            target.add(i, frame)
        if staged:
            assert target.contributions == 1
            total.merge(target)
    return total


@pytest.mark.parametrize("n", [1, SLOTS - 1, SLOTS, SLOTS + 1, 3 * SLOTS + 17])
def test_round_trip_any_length(secret_ctx: SecretContext, n: int) -> None:
    x = np.random.default_rng(n).uniform(-0.05, 0.05, n)
    frames = list(encrypt_vector(secret_ctx, x, 1.0))
    assert len(frames) == n_ciphertexts(n, SECAGG_DEFAULT) == -(-n // SLOTS)
    out = decrypt_vector(secret_ctx, frames, n)
    assert out.dtype == np.float64 and out.shape == (n,)
    assert np.max(np.abs(out - x)) <= TOL


@pytest.mark.parametrize("staged", [False, True])
def test_weighted_sum_of_three_sites(
    secret_ctx: SecretContext, public_ctx: PublicContext, staged: bool
) -> None:
    n = 2 * SLOTS + 333
    xs, w = _sites(np.random.default_rng(3), 3, n)
    total = _aggregate(secret_ctx, public_ctx, xs, w, staged)
    assert total.contributions == 3 and total.counts == (3, 3, 3)
    out = decrypt_vector(secret_ctx, total.result(), n)
    expected = np.average(xs, axis=0, weights=w)
    assert np.max(np.abs(out - expected)) <= TOL


def test_weighted_sum_of_sixteen_sites(secret_ctx: SecretContext, public_ctx: PublicContext) -> None:
    n = SLOTS + 5
    xs, w = _sites(np.random.default_rng(16), 16, n)
    out = decrypt_vector(secret_ctx, _aggregate(secret_ctx, public_ctx, xs, w, False).result(), n)
    assert np.max(np.abs(out - w @ xs)) <= TOL


def test_largest_allowed_values_do_not_wrap(secret_ctx: SecretContext, public_ctx: PublicContext) -> None:
    peak = SECAGG_DEFAULT.max_abs_value
    xs = np.array([[peak, -peak, peak / 2]] * 4)
    w = np.full(4, 0.25)
    out = decrypt_vector(secret_ctx, _aggregate(secret_ctx, public_ctx, xs, w, False).result(), 3)
    assert np.max(np.abs(out - xs[0])) <= 1e-6


@pytest.mark.parametrize("pattern", ["same", "alternating", "random_signs"])
def test_full_slots_at_the_peak_do_not_wrap(
    secret_ctx: SecretContext, public_ctx: PublicContext, pattern: str
) -> None:
    """Both parts of every complex slot at +-peak: slot moduli sqrt(2) x peak, the packing's worst case."""
    peak = SECAGG_DEFAULT.max_abs_value
    if pattern == "same":
        x = np.full(SLOTS, peak)
    elif pattern == "alternating":
        x = np.tile([peak, -peak, -peak, peak], SLOTS // 4)
    else:
        x = peak * np.random.default_rng(7).choice([-1.0, 1.0], SLOTS)
    xs = np.stack([x] * 3)
    w = np.array([0.5, 0.3, 0.2])
    out = decrypt_vector(secret_ctx, _aggregate(secret_ctx, public_ctx, xs, w, False).result(), SLOTS)
    assert np.max(np.abs(out - x)) <= 1e-6


def test_real_and_imaginary_parts_do_not_mix(secret_ctx: SecretContext, public_ctx: PublicContext) -> None:
    """Values in the two parts of one slot, and in neighbouring slots, come back where they went."""
    x = np.zeros(8)
    x[1] = 0.03  # imaginary part of slot 0
    x[6] = -0.02  # real part of slot 3
    out = decrypt_vector(secret_ctx, list(encrypt_vector(secret_ctx, x, 1.0)), 8)
    assert np.max(np.abs(out - x)) <= TOL


@pytest.mark.parametrize(
    ("vec", "weight", "code"),
    [
        (np.array([0.01, np.nan]), 1.0, "non_finite"),
        (np.array([0.01, np.inf]), 1.0, "non_finite"),
        (np.zeros((2, 2)), 1.0, "bad_shape"),
        (np.zeros(0), 1.0, "bad_shape"),
        (np.array(["a"]), 1.0, "bad_shape"),
        (np.array([1 + 1j]), 1.0, "bad_shape"),
        (np.zeros(3), 0.0, "bad_weight"),
        (np.zeros(3), 1.5, "bad_weight"),
        (np.zeros(3), float("nan"), "bad_weight"),
        (np.array([SECAGG_DEFAULT.max_abs_value * 1.01]), 1.0, "out_of_range"),
    ],
)
def test_encrypt_refuses_bad_updates_before_sending(
    secret_ctx: SecretContext, vec: np.ndarray, weight: float, code: str
) -> None:
    with pytest.raises(UpdateRejected) as err:
        encrypt_vector(secret_ctx, vec, weight)  # not iterated: checks are eager
    assert err.value.code == code


def _one(secret: SecretContext, n: int = 10) -> list[bytes]:
    return list(encrypt_vector(secret, np.full(n, 0.01), 1.0))


def _seal_blob(ctx: ts.Context, scale: float, plain: bool = False) -> bytes:
    """SEAL bytes made outside the codec: a symmetric encryption (or the plaintext) of 0.01 at ``scale``."""
    sc = ctx.seal_context().data
    pt = sealapi.Plaintext()
    sealapi.CKKSEncoder(sc).encode([0.01], scale, pt)
    if plain:
        return sealio.to_bytes(pt)
    return sealio.to_bytes(sealapi.Encryptor(sc, ctx.secret_key().data).encrypt_symmetric(pt))


def test_uploads_are_seeded_and_sums_are_whole(secret_ctx: SecretContext, public_ctx: PublicContext) -> None:
    """A fresh upload carries the seed of its uniform half, not the half itself: about half the bytes."""
    n = SECAGG_DEFAULT.poly_modulus_degree
    data_bytes = n * 40 // 8  # one 40-bit data prime, one polynomial
    upload = _one(secret_ctx, SLOTS)[0]
    assert data_bytes < len(upload) < data_bytes * 1.3  # zstd of 40-bit values in 64-bit words
    acc = CiphertextAccumulator(public_ctx, 1)
    acc.add(0, upload)
    (whole,) = list(acc.result())
    assert 1.9 * len(upload) < len(whole) < 2.1 * len(upload)
    # and the seeded upload decrypts to what was sent
    assert abs(decrypt_vector(secret_ctx, [upload], 1)[0] - 0.01) <= TOL


def _refused(acc: CiphertextAccumulator, index: int, data: bytes, code: str) -> None:
    with pytest.raises(UpdateRejected) as err:
        acc.add(index, data)
    assert err.value.code == code
    assert acc.counts == (0,) * acc.n_ciphertexts  # nothing was added


def test_accumulator_refuses_foreign_and_garbage(
    secret_ctx: SecretContext, other_secret_ctx: SecretContext, public_ctx: PublicContext
) -> None:
    acc = CiphertextAccumulator(public_ctx, 1)
    good = _one(secret_ctx)[0]
    header, blob = good[: _FRAME.size], good[_FRAME.size :]
    _refused(acc, 0, _one(other_secret_ctx)[0], "wrong_context")
    _refused(acc, 0, b"garbage", "bad_ciphertext")
    _refused(acc, 0, header + b"\x00" * 64, "bad_ciphertext")
    _refused(acc, 0, header + blob[: len(blob) // 2], "bad_ciphertext")
    _refused(acc, 0, b"XXXX" + good[4:], "bad_ciphertext")
    _refused(acc, 0, good + bytes(10**6), "bad_ciphertext")
    _refused(acc, 1, good, "bad_index")
    _refused(acc, -1, good, "bad_index")
    # well-formed SEAL objects: a ciphertext at another scale, one under other parameters, a plaintext,
    # and TenSEAL's own CKKSVector wrapping
    _refused(
        acc, 0, _frame(secret_ctx.context_id, 0, _seal_blob(secret_ctx.ts_context, 2.0**30)), "bad_ciphertext"
    )
    nvflare = ts.context(
        ts.SCHEME_TYPE.CKKS,
        8192,
        coeff_mod_bit_sizes=[60, 40, 40],
        n_threads=1,
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    _refused(acc, 0, _frame(secret_ctx.context_id, 0, _seal_blob(nvflare, 2.0**40)), "bad_ciphertext")
    _refused(
        acc,
        0,
        _frame(secret_ctx.context_id, 0, _seal_blob(secret_ctx.ts_context, 2.0**36, plain=True)),
        "bad_ciphertext",
    )
    tenseal_vector = ts.ckks_vector(secret_ctx.ts_context, [0.01]).serialize()
    _refused(acc, 0, _frame(secret_ctx.context_id, 0, tenseal_vector), "bad_ciphertext")
    acc.add(0, good)
    assert acc.counts == (1,)


def test_accumulator_index_must_match_frame(secret_ctx: SecretContext, public_ctx: PublicContext) -> None:
    frames = _one(secret_ctx, SLOTS + 1)
    acc = CiphertextAccumulator(public_ctx, 2)
    _refused(acc, 0, frames[1], "bad_index")


def test_accumulator_refuses_secret_context(secret_ctx: SecretContext) -> None:
    with pytest.raises(ConfigError, match="PublicContext"):
        CiphertextAccumulator(secret_ctx, 1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        n_ciphertexts(0, SECAGG_DEFAULT)


def test_incomplete_streams_refused(secret_ctx: SecretContext, public_ctx: PublicContext) -> None:
    frames = _one(secret_ctx, 2 * SLOTS)
    staged = CiphertextAccumulator(public_ctx, 2)
    staged.add(0, frames[0])
    assert staged.contributions == 0
    with pytest.raises(UpdateRejected) as err:
        staged.result()
    assert err.value.code == "incomplete"
    total = CiphertextAccumulator(public_ctx, 2)
    with pytest.raises(UpdateRejected) as err:
        total.merge(staged)
    assert err.value.code == "incomplete" and total.counts == (0, 0)


def test_decrypt_refuses_short_long_reordered_foreign(
    secret_ctx: SecretContext, other_secret_ctx: SecretContext
) -> None:
    n = 2 * SLOTS
    frames = list(encrypt_vector(secret_ctx, np.full(n, 0.01), 1.0))
    cases = [
        (frames[:1], "bad_length"),
        (frames + frames[:1], "bad_length"),
        (frames[::-1], "bad_index"),
        (list(encrypt_vector(other_secret_ctx, np.full(n, 0.01), 1.0)), "wrong_context"),
    ]
    for stream, code in cases:
        with pytest.raises(UpdateRejected) as err:
            decrypt_vector(secret_ctx, stream, n)
        assert err.value.code == code


def test_concurrent_streams_merge_into_one_total(
    secret_ctx: SecretContext, public_ctx: PublicContext
) -> None:
    n = 2 * SLOTS
    xs, w = _sites(np.random.default_rng(7), 6, n)
    streams = [list(encrypt_vector(secret_ctx, x, float(wi))) for x, wi in zip(xs, w, strict=True)]
    total = CiphertextAccumulator(public_ctx, 2)

    def receive(frames: list[bytes]) -> None:
        staged = CiphertextAccumulator(public_ctx, 2)
        for i, frame in enumerate(frames):
            staged.add(i, frame)
        total.merge(staged)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(receive, streams))
    assert total.contributions == 6
    assert np.max(np.abs(decrypt_vector(secret_ctx, total.result(), n) - w @ xs)) <= TOL
    with pytest.raises(ConfigError, match="itself"):
        total.merge(total)


def _streams(frames: list[list[bytes]]) -> list[Iterator[bytes]]:
    return [iter(f) for f in frames]


def test_sum_streams_equals_the_running_sums(secret_ctx: SecretContext, public_ctx: PublicContext) -> None:
    n = 2 * SLOTS + 77
    xs, w = _sites(np.random.default_rng(5), 4, n)
    uploads = [list(encrypt_vector(secret_ctx, x, float(wi))) for x, wi in zip(xs, w, strict=True)]
    k = n_ciphertexts(n, SECAGG_DEFAULT)
    out = decrypt_vector(secret_ctx, sum_streams(public_ctx, _streams(uploads), k), n)
    assert np.max(np.abs(out - w @ xs)) <= TOL


@pytest.mark.parametrize("fault", ["short", "long", "garbage", "swapped", "foreign"])
def test_sum_streams_names_the_bad_stream(
    secret_ctx: SecretContext, other_secret_ctx: SecretContext, public_ctx: PublicContext, fault: str
) -> None:
    n = 3 * SLOTS
    uploads = [list(encrypt_vector(secret_ctx, np.full(n, 0.01), 0.25)) for _ in range(4)]
    bad = uploads[2]
    if fault == "short":
        bad.pop()
    elif fault == "long":
        bad.append(bad[0])
    elif fault == "garbage":
        bad[1] = bad[1][: _FRAME.size] + b"\x00" * 100
    elif fault == "swapped":
        bad[0], bad[1] = bad[1], bad[0]
    else:
        bad[2] = list(encrypt_vector(other_secret_ctx, np.full(n, 0.01), 0.25))[2]
    with pytest.raises(StreamRejected) as err:
        list(sum_streams(public_ctx, _streams(uploads), 3))
    assert err.value.stream == 2
    assert (
        err.value.code
        == {
            "short": "incomplete",
            "long": "bad_length",
            "garbage": "bad_ciphertext",
            "swapped": "bad_index",
            "foreign": "wrong_context",
        }[fault]
    )


def test_sum_streams_refuses_a_secret_context(secret_ctx: SecretContext) -> None:
    with pytest.raises(ConfigError):
        list(sum_streams(secret_ctx, [iter([])], 1))  # type: ignore[arg-type]
