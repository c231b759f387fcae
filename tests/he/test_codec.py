from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tenseal as ts

from secagg.errors import ConfigError, UpdateRejected
from secagg.he.codec import (
    _FRAME,
    CiphertextAccumulator,
    _frame,
    decrypt_vector,
    encrypt_vector,
    n_ciphertexts,
)
from secagg.he.context import PublicContext, SecretContext
from secagg.he.params import SECAGG_DEFAULT

SLOTS = SECAGG_DEFAULT.slots
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
    # well-formed TenSEAL ciphertexts at another scale or under other parameters
    wrong_scale = ts.ckks_vector(secret_ctx.ts_context, [0.01], scale=2.0**30).serialize()
    _refused(acc, 0, _frame(secret_ctx.context_id, 0, wrong_scale), "bad_ciphertext")
    nvflare = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40], n_threads=1)
    nvflare.global_scale = 2.0**40
    other_params = ts.ckks_vector(nvflare, [0.01]).serialize()
    _refused(acc, 0, _frame(secret_ctx.context_id, 0, other_params), "bad_ciphertext")
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
