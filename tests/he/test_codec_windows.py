"""``encrypt_windows`` (the site's update read a window at a time) makes the frames of ``encrypt_vector``.

Encryption is randomised, so frames are compared where they can be exactly: the values encoded into
each ciphertext's plaintext (bit for bit, in the same slots and order), the frames' count, indices and
context, and the decrypted result (within the codec's error bound, against the whole-vector path's).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from secagg.errors import UpdateRejected
from secagg.he import codec
from secagg.he.codec import _FRAME, decrypt_vector, encrypt_vector, encrypt_windows, n_ciphertexts
from secagg.he.context import SecretContext
from secagg.he.params import SECAGG_DEFAULT

SLOTS = SECAGG_DEFAULT.values_per_ciphertext
TOL = 1e-7


def _windows(x: np.ndarray, size: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, x.size, size):
        yield start, x[start : start + size].copy()  # a fresh array each, as a file reader gives


def _encoded(monkeypatch: pytest.MonkeyPatch, frames: Any) -> tuple[list[bytes], list[bytes]]:
    """The frames, and the float64 values each one's plaintext was encoded from (copied as encoded)."""
    seen: list[bytes] = []
    real = codec._encode

    def spy(tools: Any, chunk: np.ndarray, plain: Any) -> None:
        seen.append(np.array(chunk, dtype=np.float64).tobytes())
        real(tools, chunk, plain)

    monkeypatch.setattr(codec, "_encode", spy)
    out = list(frames)
    monkeypatch.setattr(codec, "_encode", real)
    return out, seen


@pytest.mark.parametrize("n", [1, SLOTS - 1, SLOTS, SLOTS + 1, 3 * SLOTS + 17])
@pytest.mark.parametrize("window", [1, 7, 1000, SLOTS, SLOTS + 3, 2 * SLOTS - 1, 10**6])
def test_windows_encode_the_slots_of_the_whole_vector(
    secret_ctx: SecretContext, monkeypatch: pytest.MonkeyPatch, n: int, window: int
) -> None:
    x = np.random.default_rng(n).uniform(-0.05, 0.05, n)
    w = 0.37
    whole, whole_slots = _encoded(monkeypatch, encrypt_vector(secret_ctx, x, w))
    wins, win_slots = _encoded(monkeypatch, encrypt_windows(secret_ctx, _windows(x, window), n, w))
    # the same values in the same slots, ciphertext for ciphertext, bit for bit
    assert win_slots == whole_slots
    assert len(wins) == len(whole) == n_ciphertexts(n, SECAGG_DEFAULT)
    for i, (a, b) in enumerate(zip(wins, whole, strict=True)):  # sizes vary: compressed
        ha, hb = _FRAME.unpack_from(a), _FRAME.unpack_from(b)
        assert ha == hb and ha[3] == i and ha[2] == secret_ctx.context_id
    got, want = decrypt_vector(secret_ctx, wins, n), decrypt_vector(secret_ctx, whole, n)
    assert np.max(np.abs(got - x * w)) <= TOL and np.max(np.abs(got - want)) <= 2 * TOL


def test_a_bad_window_raises_before_any_of_its_frames(secret_ctx: SecretContext) -> None:
    x = np.full(3 * SLOTS, 0.01)
    x[SLOTS + 5] = np.inf
    frames = encrypt_windows(secret_ctx, _windows(x, SLOTS), x.size, 1.0)
    made = []
    with pytest.raises(UpdateRejected) as exc:
        for f in frames:
            made.append(f)
    assert exc.value.code == "non_finite" and len(made) == 1  # only the first, whole-good window's
    too_big = np.full(10, 2 * SECAGG_DEFAULT.max_abs_value)
    with pytest.raises(UpdateRejected) as exc:
        list(encrypt_windows(secret_ctx, _windows(too_big, 3), 10, 1.0))
    assert exc.value.code == "out_of_range"


@pytest.mark.parametrize(
    "windows, size",
    [
        ([(0, np.ones(5) * 0.01), (6, np.ones(5) * 0.01)], 10),  # a gap
        ([(0, np.ones(5) * 0.01)], 10),  # short
        ([(0, np.ones(5) * 0.01), (5, np.ones(6) * 0.01)], 10),  # long
    ],
    ids=["gap", "short", "long"],
)
def test_windows_that_do_not_tile_the_vector_are_refused(
    secret_ctx: SecretContext, windows: list[tuple[int, np.ndarray]], size: int
) -> None:
    with pytest.raises(UpdateRejected) as exc:
        list(encrypt_windows(secret_ctx, iter(windows), size, 1.0))
    assert exc.value.code == "bad_shape"


def test_weight_is_refused_before_iteration(secret_ctx: SecretContext) -> None:
    def never() -> Iterator[tuple[int, np.ndarray]]:
        raise AssertionError("windows read before the weight was checked")
        yield  # pragma: no cover

    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(UpdateRejected) as exc:
            encrypt_windows(secret_ctx, never(), 10, bad)
        assert exc.value.code == "bad_weight"


@pytest.mark.parametrize("n", [1, SLOTS, SLOTS + 1, 3 * SLOTS + 17])
def test_decrypt_windows_are_the_whole_decrypt_a_ciphertext_at_a_time(
    secret_ctx: SecretContext, n: int
) -> None:
    x = np.random.default_rng(n).uniform(-0.05, 0.05, n)
    frames = list(encrypt_vector(secret_ctx, x, 1.0))
    wins = list(codec.decrypt_windows(secret_ctx, frames, n))
    assert [s for s, _ in wins] == [i * SLOTS for i in range(len(frames))]
    assert all(v.size == min(SLOTS, n - s) for s, v in wins)
    # decryption is deterministic: the same frames give the same bits as the whole-vector path
    assert np.concatenate([v for _, v in wins]).tobytes() == decrypt_vector(secret_ctx, frames, n).tobytes()
    with pytest.raises(UpdateRejected) as exc:  # a long stream is refused at the frame too many
        list(codec.decrypt_windows(secret_ctx, frames + frames[-1:], n))
    assert exc.value.code == "bad_length"
