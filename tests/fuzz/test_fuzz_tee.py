"""Fuzz: TEE sealed chunks (secagg/tee/sealing.py) and the TEE protocol's JSON messages
(secagg/tee/messages.py: key announcement, evidence message).

Seeds: uploads the code itself seals (both HPKE suites, small chunks so that one upload has several)
and messages it encodes. A sealed-stream input is split into chunks at a separator, so mutations
also drop, duplicate, reorder and splice whole chunks.
"""

from __future__ import annotations

import contextlib
import functools
import random

from hypothesis import example, given

from secagg.errors import SecaggError
from secagg.tee import messages, sealing, suites
from tests.fuzz._harness import Target, deep_json, inputs, nested

_SEP = b"\n==chunk==\n"
CTX = sealing.Context(job="job-1", round=2, site="site-1", keys_sha256=b"\x05" * 32)


@functools.cache
def _keys() -> dict[str, tuple[suites.PrivateKey, bytes]]:
    return {name: suites.generate(name) for name in (suites.MLKEM768_X25519, suites.P384)}


def _private() -> dict[str, suites.PrivateKey]:
    return {name: k for name, (k, _) in _keys().items()}


@functools.cache
def _sealed_seeds() -> list[bytes]:
    out = []
    for name, (_priv, pub) in _keys().items():
        key = suites.load_public(name, pub)
        size = 1400 if name == suites.MLKEM768_X25519 else 400
        for payload in (b"", b"u" * 700):
            out.append(_SEP.join(sealing.seal_chunks(payload, key, name, CTX, chunk_size=size)))
    return out


def _open(data: bytes) -> None:
    sealing.open_chunks(data.split(_SEP), _private(), CTX, max_bytes=4096)


def _reorder(rng: random.Random) -> bytes:
    parts = rng.choice(_sealed_seeds()).split(_SEP)
    op = rng.randrange(3)
    if op == 0:
        rng.shuffle(parts)
    elif op == 1:
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(parts))
    else:
        del parts[rng.randrange(len(parts))]
    return _SEP.join(parts)


@functools.cache
def _message_seeds() -> list[bytes]:
    from cryptography.hazmat.primitives.asymmetric import ec

    from attestation.devtee import make_dev_evidence

    ann = messages.KeyAnnouncement(
        hpke_keys=tuple((name, pub) for name, (_k, pub) in _keys().items()), model_key=b"\x30" * 120
    )
    ev = make_dev_evidence(ec.generate_private_key(ec.SECP384R1()), b"\x11" * 32, ann.digest())
    msg = messages.EvidenceMessage(ev, ann, b"\x01" * 32, b"\x02" * 32, (b"cert-a", b"cert-b"))
    return [ann.to_bytes(), msg.to_bytes()]


def _parse_messages(data: bytes) -> None:
    for cls in (messages.KeyAnnouncement, messages.EvidenceMessage):
        with contextlib.suppress(SecaggError):
            cls.from_bytes(data)


def _deep_message(rng: random.Random) -> bytes:
    inner = nested(b"[", b"]", rng.choice((1000, 10_000, 100_000)))
    return b'{"format":"secagg-tee-keys/1","hpke":' + inner + b',"model_key":""}'


TARGETS = [
    Target("tee_sealed_chunks", _open, _sealed_seeds, (SecaggError,), extra=(_reorder,) * 3),
    Target("tee_messages", _parse_messages, _message_seeds, (), extra=(_deep_message, deep_json)),
]
_T = {t.name: t for t in TARGETS}


@given(inputs(_T["tee_sealed_chunks"]))
def test_tee_sealed_chunks(data: bytes) -> None:
    _T["tee_sealed_chunks"].check(data)


@given(inputs(_T["tee_messages"]))
@example(b'{"format":"secagg-tee-keys/1","hpke":' + b"[" * 5000 + b"]" * 5000 + b',"model_key":""}')
@example(b'{"format":"secagg-tee-keys/1","hpke":[],"model_key":NaN}')
@example(b'{"format":"secagg-tee-keys/1","hpke":[],"model_key":' + b"9" * 20 + b"}")
def test_tee_messages(data: bytes) -> None:
    _T["tee_messages"].check(data)


def test_seeds_open() -> None:
    for s in _sealed_seeds():
        assert sealing.open_chunks(s.split(_SEP), _private(), CTX) in (b"", b"u" * 700)
    assert len(_sealed_seeds()[1].split(_SEP)) > 1
    ann, msg = _message_seeds()
    assert messages.KeyAnnouncement.from_bytes(ann).to_bytes() == ann
    assert messages.EvidenceMessage.from_bytes(msg).to_bytes() == msg
