"""A sealed local model opens only for its recipient, in its job, from its signed sender; a consent
verifies only as signed."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from secagg.crossval.seal import (
    SEAL_CHUNK,
    TAG,
    Consent,
    Envelope,
    EnvelopeError,
    open_model,
    open_stream,
    seal_model,
    sealed_size,
)
from secagg.provision.kit import Kit, load_kit

MODEL = b"safetensors bytes of a local model" * 10
#: past one sealed chunk, so the chunking itself is under test
BIG = bytes(range(256)) * (SEAL_CHUNK // 256 * 2 + 3)


@pytest.fixture(scope="module")
def kits(workspace: Path) -> dict[str, Kit]:
    return {s: load_kit(workspace / s) for s in ("site-1", "site-2", "site-3")}


def _seal(
    kits: dict[str, Kit], sender: str = "site-1", to: str = "site-2", job: str = "job-1", model: bytes = MODEL
) -> tuple[Envelope, bytes]:
    return seal_model(
        model,
        project=kits[sender].config.project,
        job=job,
        sender=sender,
        sender_key=kits[sender].private_key,
        recipient=to,
        recipient_cert=kits[to].cert,
    )


def _open(
    kits: dict[str, Kit],
    env: Envelope,
    sealed: bytes,
    me: str = "site-2",
    job: str = "job-1",
    sender: str = "site-1",
) -> bytes:
    return open_model(
        env,
        sealed,
        project=kits[me].config.project,
        job=job,
        me=me,
        my_key=kits[me].private_key,
        sender_cert=kits[sender].cert,
    )


def test_round_trip_through_bytes(kits: dict[str, Kit]) -> None:
    env, sealed = _seal(kits)
    env = Envelope.from_bytes(env.to_bytes())
    assert MODEL not in sealed and MODEL not in env.to_bytes()
    assert len(sealed) == env.sealed_bytes == sealed_size(len(MODEL))
    assert _open(kits, env, sealed) == MODEL


def test_a_model_of_several_chunks_opens_however_the_wire_cuts_it(kits: dict[str, Kit]) -> None:
    env, sealed = _seal(kits, model=BIG)
    assert len(sealed) == sealed_size(len(BIG)) == len(BIG) + 3 * TAG
    out = io.BytesIO()
    pieces = [sealed[i : i + 4099] for i in range(0, len(sealed), 4099)]  # not the chunk boundaries
    k = kits["site-2"]
    kw = {"project": k.config.project, "job": "job-1", "me": "site-2", "my_key": k.private_key}
    assert open_stream(env, pieces, out, sender_cert=kits["site-1"].cert, **kw) == len(BIG)
    assert out.getvalue() == BIG
    empty_env, empty = _seal(kits, model=b"")
    assert _open(kits, empty_env, empty) == b""


def test_a_cut_reordered_or_extended_stream_is_refused(kits: dict[str, Kit]) -> None:
    env, sealed = _seal(kits, model=BIG)
    c = SEAL_CHUNK + TAG
    first, second, rest = sealed[:c], sealed[c : 2 * c], sealed[2 * c :]
    for bad in (sealed[: 2 * c], second + first + rest, sealed + sealed[-c:], sealed[:-1]):
        with pytest.raises(EnvelopeError):
            _open(kits, env, bad)


def test_only_the_recipient_opens_it(kits: dict[str, Kit]) -> None:
    env, sealed = _seal(kits)
    with pytest.raises(EnvelopeError, match="not site-3"):
        _open(kits, env, sealed, me="site-3")
    readdressed = dataclasses.replace(env, recipient="site-3")  # a relay cannot re-address it either
    with pytest.raises(EnvelopeError, match="not signed by site-1"):
        _open(kits, readdressed, sealed, me="site-3")


def test_another_job_or_a_forged_sender_is_refused(kits: dict[str, Kit]) -> None:
    env, sealed = _seal(kits)
    with pytest.raises(EnvelopeError):
        _open(kits, env, sealed, job="job-2")  # replayed into another job
    # site-3 seals a model of its own and calls it site-1's: site-1's signature is missing
    env3, sealed3 = _seal(kits, sender="site-3")
    with pytest.raises(EnvelopeError, match="not signed by site-1"):
        _open(kits, dataclasses.replace(env3, sender="site-1"), sealed3)


def test_tampered_ciphertext_is_refused(kits: dict[str, Kit]) -> None:
    env, sealed = _seal(kits)
    with pytest.raises(EnvelopeError):
        _open(kits, env, sealed[:-1] + bytes([sealed[-1] ^ 1]))


def test_malformed_envelope_is_one_clear_error(kits: dict[str, Kit]) -> None:
    for data in (b"not json", b"[]", b'{"format": "other"}'):
        with pytest.raises(EnvelopeError):
            Envelope.from_bytes(data)
    doc = _seal(kits)[0].to_dict()
    for bad in ({"plain_bytes": -1}, {"plain_bytes": True}, {"sha256": "x" * 64}, {"extra": 1}):
        with pytest.raises(EnvelopeError):
            Envelope.from_dict({**doc, **bad})


def test_consent_verifies_only_as_signed(kits: dict[str, Kit]) -> None:
    k = kits["site-1"]
    c = Consent("job-1", "site-1", True, "ok").signed(k.private_key, k.config.project)
    again = Consent.from_dict(c.to_dict())
    again.verify(k.cert, k.config.project)
    with pytest.raises(EnvelopeError):
        dataclasses.replace(again, share=False).verify(k.cert, k.config.project)
    with pytest.raises(EnvelopeError):
        again.verify(kits["site-2"].cert, k.config.project)
    with pytest.raises(EnvelopeError):
        Consent.from_dict({**c.to_dict(), "share": "yes"})
