"""Fuzz: the record framing of spooled uploads (secagg/framing.py) and the chunked stream header,
payload and trailer (secagg/transport/chunks.py).

Seeds: streams the code itself frames (:func:`frame`, :func:`encode_stream`). A stream input is
decoded as: header_json text, then data pieces, then a trailer, split by the fuzzed bytes themselves.
"""

from __future__ import annotations

import hashlib
import io
import random

from hypothesis import example, given

from secagg.errors import SecaggError
from secagg.framing import count_records, frame, unframe
from secagg.transport import chunks as tc
from secagg.transport.generated import secagg_pb2 as pb
from tests.fuzz._harness import Target, deep_json, inputs


def _framed() -> list[bytes]:
    return [
        b"".join(frame([b"a", b"bc" * 100, bytes(range(256))])),
        b"".join(frame([b"\0" * 5000])),
        b"",
    ]


def _unframe(data: bytes) -> None:
    for _ in unframe(io.BytesIO(data)):
        pass


def _count(data: bytes) -> None:
    count_records(io.BytesIO(data))


_SEP = b"\n--\n"


def _stream_seeds() -> list[bytes]:
    payload = b"x" * 300
    header = b'{"job":"j","round":1,"bytes":300}'
    return [_SEP.join([header, payload[:100], payload[100:], hashlib.sha256(payload).hexdigest().encode()])]


def _chunks_of(data: bytes) -> list[pb.Chunk]:
    """Fuzzed bytes as a chunk stream: first part a header, last a trailer, the rest data pieces; a
    part starting ``H:``/``T:`` is a header/trailer out of place."""
    parts = data.split(_SEP)
    out = [pb.Chunk(header_json=parts[0].decode("utf-8", "replace"))]
    for p in parts[1:-1]:
        if p.startswith(b"H:"):
            out.append(pb.Chunk(header_json=p[2:].decode("utf-8", "replace")))
        elif p.startswith(b"T:"):
            out.append(pb.Chunk(trailer_sha256=p[2:].decode("utf-8", "replace")))
        else:
            out.append(pb.Chunk(data=p))
    if len(parts) > 1:
        out.append(pb.Chunk(trailer_sha256=parts[-1].decode("utf-8", "replace")))
    return out


def _stream(data: bytes) -> None:
    it = iter(_chunks_of(data))
    tc.read_header(it)
    tc.copy_payload(it, io.BytesIO(), max_bytes=4096, expected_bytes=300)


def _header_only(data: bytes) -> None:
    tc.read_header(iter([pb.Chunk(header_json=data.decode("utf-8", "replace"))]))


def _huge_length(rng: random.Random) -> bytes:
    return rng.choice((b"\xff\xff\xff\xff", b"\x04\x00\x00\x00ab", b"\x00\x00\x00\x00")) * rng.randint(1, 3)


TARGETS = [
    Target("framing_unframe", _unframe, _framed, (SecaggError,), extra=(_huge_length,)),
    Target("framing_count", _count, _framed, (SecaggError,), extra=(_huge_length,)),
    Target("stream_chunks", _stream, _stream_seeds, (SecaggError,)),
    Target(
        "stream_header", _header_only, lambda: [b'{"job":"j","round":1}'], (SecaggError,), extra=(deep_json,)
    ),
]
_T = {t.name: t for t in TARGETS}


@given(inputs(_T["framing_unframe"]))
def test_framing_unframe(data: bytes) -> None:
    _T["framing_unframe"].check(data)


@given(inputs(_T["framing_count"]))
def test_framing_count(data: bytes) -> None:
    _T["framing_count"].check(data)


@given(inputs(_T["stream_chunks"]))
@example(b"[" * 100_000)  # found: a deeply nested header_json ended in RecursionError
@example(b'{"":"","":0}\n--\n\x80')  # found: a non-ASCII trailer made compare_digest raise TypeError
def test_stream_chunks(data: bytes) -> None:
    _T["stream_chunks"].check(data)


@given(inputs(_T["stream_header"]))
@example(b"[" * 100_000)
@example(b'{"a":' * 5000 + b"1" + b"}" * 5000)
def test_stream_header(data: bytes) -> None:
    _T["stream_header"].check(data)


def test_seeds_are_valid() -> None:
    assert [len(r) for r in unframe(io.BytesIO(_framed()[0]))] == [1, 200, 256]
    it = iter(_chunks_of(_stream_seeds()[0]))
    assert tc.read_header(it)["bytes"] == 300
    assert tc.copy_payload(it, io.BytesIO(), max_bytes=4096, expected_bytes=300) == 300
