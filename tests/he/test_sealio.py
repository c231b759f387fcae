"""SEAL bytes are inflated and checked by us before SEAL parses them (secagg/he/sealio.py).

Why it matters: SEAL's own zstd path once aborted the whole aggregator process on hostile bytes, so
hostile input must never reach it; and an inflater without a cap is a decompression bomb.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import zstandard

from secagg.errors import UpdateRejected
from secagg.he import codec, sealio
from secagg.he.context import SecretContext, make_secret_context
from secagg.he.params import SECAGG_DEFAULT
from secagg.reasons import Reason

_HDR = struct.Struct("<HBBBBHQ")
_FRAME_BYTES = codec._FRAME.size


@pytest.fixture(scope="module")
def ctx() -> SecretContext:
    return make_secret_context(SECAGG_DEFAULT)


@pytest.fixture(scope="module")
def frame(ctx: SecretContext) -> bytes:
    return next(codec.encrypt_vector(ctx, np.linspace(-1, 1, 10), 0.5))


def _parts(frame: bytes) -> tuple[tuple[int, ...], bytes]:
    blob = frame[_FRAME_BYTES:]
    return _HDR.unpack_from(blob), blob[_HDR.size :]


def _blob(
    fields: tuple[int, ...], body: bytes, *, compr: int | None = None, size: int | None = None
) -> bytes:
    magic, hsize, major, minor, mode, reserved, _ = fields
    mode = mode if compr is None else compr
    total = _HDR.size + len(body) if size is None else size
    return _HDR.pack(magic, hsize, major, minor, mode, reserved, total) + body


def test_what_sites_send_is_zstd_and_inflates_to_plain_mode_that_seal_reads_alike(
    ctx: SecretContext, frame: bytes
) -> None:
    fields, body = _parts(frame)
    assert fields[4] == 2  # zstd: the path this module takes away from SEAL
    plain = bytes(sealio.uncompressed(frame[_FRAME_BYTES:], 10**6))
    out = _HDR.unpack_from(plain)
    assert out[4] == 0 and out[6] == len(plain)
    assert plain[_HDR.size :] == zstandard.ZstdDecompressor().decompress(body)
    # SEAL reads the re-headed bytes (every load now goes through them): the values come back
    values = codec.decrypt_vector(ctx, [frame], 10)
    assert np.allclose(values, np.linspace(-1, 1, 10) * 0.5, atol=1e-6)


def test_an_uncompressed_body_passes_through_unchanged(frame: bytes) -> None:
    plain = bytes(sealio.uncompressed(frame[_FRAME_BYTES:], 10**6))
    assert bytes(sealio.uncompressed(plain, 10**6)) == plain


def test_a_zstd_bomb_is_refused_at_the_cap_without_inflating_it(frame: bytes) -> None:
    fields, _ = _parts(frame)
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(256 * 2**20))  # 256 MiB of zeros, a few KiB
    assert len(bomb) < 64 * 1024
    with pytest.raises(ValueError, match="inflates past"):
        sealio.uncompressed(_blob(fields, bomb), 2**20)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f, b: _blob(f, b[: len(b) // 2]), "ends inside its zstd frame"),
        (lambda f, b: _blob(f, b + b"\x00junk"), "after the SEAL body"),
        (lambda f, b: _blob(f, b, compr=1), "compression mode 1"),
        (lambda f, b: _blob(f, b, size=_HDR.size + len(b) + 1), "declares"),
        (lambda f, b: _blob((0xBEEF, *f[1:]), b), "not a SEAL object"),
        (lambda f, b: _blob(f, b"not a zstd frame at all" * 4), "not valid zstd"),
        (lambda f, b: b"\x5e\xa1", "shorter than"),
    ],
)
def test_malformed_seal_bytes_are_refused_with_what_is_wrong(frame: bytes, change, message: str) -> None:
    fields, body = _parts(frame)
    with pytest.raises(ValueError, match=message):
        sealio.uncompressed(change(fields, body), 10**6)


def test_the_aggregator_refuses_a_bomb_frame_as_a_bad_ciphertext(ctx: SecretContext, frame: bytes) -> None:
    fields, _ = _parts(frame)
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(64 * 2**20))
    hostile = frame[:_FRAME_BYTES] + _blob(fields, bomb)
    acc = codec.CiphertextAccumulator(ctx.public(), 1)
    with pytest.raises(UpdateRejected) as err:
        acc.add(0, hostile)
    assert err.value.code == Reason.BAD_CIPHERTEXT
