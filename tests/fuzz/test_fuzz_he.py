"""Fuzz: the HE ciphertext frame format (secagg/he/codec.py): ``SAHC`` header, then SEAL bytes.

Seeds: frames the code itself encrypts (seeded symmetric, as sites send them) and a summed frame (both
halves, as the aggregator returns them). Each input is added to an accumulator as index 0, as the
aggregator does with every frame a site uploads, and decrypted as a one-frame result, as a site does.
"""

from __future__ import annotations

import functools

import numpy as np
from hypothesis import given

from secagg.errors import SecaggError
from secagg.he import codec
from secagg.he.context import PublicContext, SecretContext, make_secret_context
from secagg.he.params import SECAGG_DEFAULT
from tests.fuzz._harness import Target, inputs


@functools.cache
def _ctx() -> SecretContext:
    return make_secret_context(SECAGG_DEFAULT)


@functools.cache
def _public() -> PublicContext:
    """One public context: SEAL's tools are made once per context object (see codec._seal)."""
    return _ctx().public()


@functools.cache
def _seeds() -> list[bytes]:
    ctx = _ctx()
    fresh = list(codec.encrypt_vector(ctx, np.linspace(-1, 1, 10), 0.5))
    acc = codec.CiphertextAccumulator(_public(), 1)
    acc.add(0, fresh[0])
    return [fresh[0], next(acc.result())]


def _this_context(data: bytes) -> bytes:
    """``data`` with its frame's context id set to this process's (a fresh random key every run).

    Why: an input saved from one run would otherwise meet a context id of another key on replay and be
    refused before SEAL sees it (``wrong_context``), which is how a SEAL abort once went unreproduced.
    """
    at = len(codec.FRAME_MAGIC) + 1
    if len(data) < at + len(_public().context_id):
        return data
    return data[:at] + _public().context_id + data[at + len(_public().context_id) :]


def _add(data: bytes) -> None:
    codec.CiphertextAccumulator(_public(), 1).add(0, _this_context(data))


def _decrypt(data: bytes) -> None:
    codec.decrypt_vector(_ctx(), [_this_context(data)], 10)


TARGETS = [
    Target("he_frame_add", _add, _seeds, (SecaggError,)),
    Target("he_frame_decrypt", _decrypt, _seeds, (SecaggError,)),
]
_T = {t.name: t for t in TARGETS}


@given(inputs(_T["he_frame_add"]))
def test_he_frame_add(data: bytes) -> None:
    _T["he_frame_add"].check(data)


@given(inputs(_T["he_frame_decrypt"]))
def test_he_frame_decrypt(data: bytes) -> None:
    _T["he_frame_decrypt"].check(data)


def test_seeds_are_valid() -> None:
    for s in _seeds():
        _add(s)
    out = codec.decrypt_vector(_ctx(), [_seeds()[1]], 10)
    assert np.allclose(out, np.linspace(-1, 1, 10) * 0.5, atol=1e-3)
